//! A bounded window of recent request ids and what each one came to: the memory behind
//! exactly-once, kept to a fixed number of entries by forgetting the oldest.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

/// The hasher of the window's index: foldhash, seeded at random per process. The keys are
/// request ids, which clients choose, so a fixed hash would let a client make them collide;
/// SipHash resists that too but costs several times as much on every trade (5-11% of a
/// replica's CPU under load, in `bench/profile.sh`).
pub type Hasher = foldhash::fast::RandomState;

/// The last `capacity` keys inserted, each with its value.
///
/// The entries lie in insertion order in one ring, each with its key's hash, and the index
/// holds only each entry's sequence number (4 bytes): a window of a million request ids
/// indexes in about 10 MB instead of a table of keys and values ten times that size, so that
/// the insert and the eviction every trade makes touch little memory (a replica's index no
/// longer misses the cache on every bucket it visits), and no key is hashed twice.
#[derive(Debug, Clone)]
pub struct RecentWindow<K, V> {
    /// Oldest first; entry `i` has the sequence number `first + i` (wrapping).
    entries: VecDeque<Slot<K, V>>,
    first: u32,
    index: HashTable<u32>,
    hasher: Hasher,
    capacity: usize,
}

/// One entry of the ring.
#[derive(Debug, Clone)]
struct Slot<K, V> {
    hash: u64,
    key: K,
    value: V,
}

impl<K: Clone + Eq + Hash, V> RecentWindow<K, V> {
    /// An empty window holding at most `capacity` keys (at least one, at most `u32::MAX`).
    pub fn new(capacity: usize) -> Self {
        RecentWindow {
            entries: VecDeque::new(),
            first: 0,
            index: HashTable::new(),
            hasher: Hasher::default(),
            capacity: capacity.clamp(1, u32::MAX as usize - 1),
        }
    }

    /// Remembers `key`, forgetting the oldest keys beyond the capacity. A key inserted again
    /// takes the new value and the newest place.
    pub fn insert(&mut self, key: K, value: V) {
        let hash = self.hasher.hash_one(&key);
        if let Some(at) = self.position(hash, &key) {
            // Rare (a request id is logged once): the ring closes up and the index is rebuilt.
            self.entries.remove(at);
            self.reindex();
            self.push(Slot { hash, key, value });
            return;
        }
        self.push(Slot { hash, key, value });
        while self.entries.len() > self.capacity {
            self.evict_oldest();
        }
    }

    /// The value of `key`, if it is still remembered.
    pub fn get(&self, key: &K) -> Option<&V> {
        let at = self.position(self.hasher.hash_one(key), key)?;
        Some(&self.entries[at].value)
    }

    /// Forgets the keys for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let before = self.entries.len();
        self.entries.retain(|slot| keep(&slot.key, &slot.value));
        if self.entries.len() != before {
            self.reindex();
        }
    }

    /// The remembered values, oldest first.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> {
        self.entries.iter().map(|slot| &slot.value)
    }

    /// The remembered values from the first one for which `before` is false on, oldest first.
    /// `before` must be true for a prefix of the values and false after it (values inserted in
    /// the order of what it tests); the start is found by bisection.
    pub fn values_from(&self, before: impl Fn(&V) -> bool) -> impl Iterator<Item = &V> {
        self.entries_from(before).map(|(_, v)| v)
    }

    /// [`RecentWindow::values_from`], each value with its key.
    pub fn entries_from(&self, before: impl Fn(&V) -> bool) -> impl Iterator<Item = (&K, &V)> {
        let start = self.entries.partition_point(|slot| before(&slot.value));
        self.entries
            .range(start..)
            .map(|slot| (&slot.key, &slot.value))
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Where in the ring `key` (of hash `hash`) lies.
    fn position(&self, hash: u64, key: &K) -> Option<usize> {
        let at = |s: u32| s.wrapping_sub(self.first) as usize;
        self.index
            .find(hash, |&s| {
                let slot = &self.entries[at(s)];
                slot.hash == hash && slot.key == *key
            })
            .map(|&s| at(s))
    }

    fn evict_oldest(&mut self) {
        let Some(oldest) = self.entries.pop_front() else {
            return;
        };
        let seq = self.first;
        if let Ok(found) = self.index.find_entry(oldest.hash, |&s| s == seq) {
            found.remove();
        }
        self.first = seq.wrapping_add(1);
    }

    /// Puts `slot` at the newest end of the ring and indexes it.
    fn push(&mut self, slot: Slot<K, V>) {
        let Self {
            entries,
            first,
            index,
            ..
        } = self;
        let seq = first.wrapping_add(entries.len() as u32);
        let hash = slot.hash;
        entries.push_back(slot);
        index.insert_unique(hash, seq, |&s| {
            entries[s.wrapping_sub(*first) as usize].hash
        });
    }

    /// Indexes the ring anew, numbered from `first`.
    fn reindex(&mut self) {
        let entries = std::mem::take(&mut self.entries);
        self.index.clear();
        for slot in entries {
            self.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_keys() {
        let mut window = RecentWindow::new(2);
        window.insert("a", 1);
        window.insert("b", 2);
        window.insert("c", 3);
        assert_eq!(window.get(&"a"), None);
        assert_eq!(window.values().copied().collect::<Vec<_>>(), vec![2, 3]);
        window.insert("b", 4);
        window.insert("d", 5);
        assert_eq!(window.get(&"c"), None);
        assert_eq!(window.values().copied().collect::<Vec<_>>(), vec![4, 5]);
        window.retain(|_, v| *v != 4);
        assert_eq!(window.len(), 1);
    }

    #[test]
    fn values_from_a_point_are_found_by_bisection() {
        let mut window = RecentWindow::new(4);
        for n in 1..=6u64 {
            window.insert(n, n * 10);
        }
        let from = |after: u64| {
            window
                .values_from(|v| *v <= after)
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(from(0), vec![30, 40, 50, 60]);
        assert_eq!(from(40), vec![50, 60]);
        assert_eq!(from(45), vec![50, 60]);
        assert_eq!(from(60), Vec::<u64>::new());
    }

    /// The same operations on a plain list, oldest first: what the window must answer.
    #[derive(Default)]
    struct Model {
        entries: Vec<(u8, u32)>,
    }

    impl Model {
        fn insert(&mut self, key: u8, value: u32, capacity: usize) {
            self.entries.retain(|(k, _)| *k != key);
            self.entries.push((key, value));
            let extra = self.entries.len().saturating_sub(capacity);
            self.entries.drain(..extra);
        }
    }

    proptest::proptest! {
        #[test]
        fn answers_as_a_plain_list_does(
            capacity in 1usize..6,
            start in proptest::prelude::any::<u32>(),
            ops in proptest::collection::vec((0u8..10, 0u8..8), 0..200),
        ) {
            let mut window = RecentWindow::new(capacity);
            // Sequence numbers from anywhere, so that they wrap within the run.
            window.first = start;
            let mut model = Model::default();
            for (i, (key, op)) in ops.into_iter().enumerate() {
                let value = i as u32;
                if op == 0 {
                    window.retain(|k, _| *k != key);
                    model.entries.retain(|(k, _)| *k != key);
                } else {
                    window.insert(key, value);
                    model.insert(key, value, capacity);
                }
                let values: Vec<u32> = window.values().copied().collect();
                let expected: Vec<u32> = model.entries.iter().map(|(_, v)| *v).collect();
                proptest::prop_assert_eq!(values, expected);
                for k in 0..10u8 {
                    let expected = model.entries.iter().find(|(m, _)| *m == k).map(|(_, v)| v);
                    proptest::prop_assert_eq!(window.get(&k), expected);
                }
                proptest::prop_assert_eq!(window.len(), model.entries.len());
            }
        }
    }
}
