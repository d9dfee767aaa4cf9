//! A bounded window of recent request ids and what each one came to: the memory behind
//! exactly-once, kept to a fixed number of entries by forgetting the oldest.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// The hasher of the window's map: foldhash, seeded at random per process. The keys are
/// request ids, which clients choose, so a fixed hash would let a client make them collide;
/// SipHash resists that too but costs several times as much on every trade (5-11% of a
/// replica's CPU under load, in `bench/profile.sh`).
type Hasher = foldhash::fast::RandomState;

/// The last `capacity` keys inserted, each with its value.
#[derive(Debug, Clone)]
pub struct RecentWindow<K, V> {
    values: HashMap<K, V, Hasher>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Clone + Eq + Hash, V> RecentWindow<K, V> {
    /// An empty window holding at most `capacity` keys (at least one).
    pub fn new(capacity: usize) -> Self {
        RecentWindow {
            values: HashMap::with_hasher(Hasher::default()),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Remembers `key`, forgetting the oldest keys beyond the capacity. A key inserted again
    /// takes the new value and the newest place.
    pub fn insert(&mut self, key: K, value: V) {
        if self.values.insert(key.clone(), value).is_some() {
            self.order.retain(|k| k != &key);
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.values.remove(&oldest);
            }
        }
    }

    /// The value of `key`, if it is still remembered.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.values.get(key)
    }

    /// Forgets the keys for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.values.retain(|k, v| keep(k, v));
        let values = &self.values;
        self.order.retain(|k| values.contains_key(k));
    }

    /// The remembered values, oldest first.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> {
        self.order.iter().filter_map(|k| self.values.get(k))
    }

    /// The remembered values from the first one for which `before` is false on, oldest first.
    /// `before` must be true for a prefix of the values and false after it (values inserted in
    /// the order of what it tests); the start is found by bisection.
    pub fn values_from(&self, before: impl Fn(&V) -> bool) -> impl Iterator<Item = &V> {
        let start = self
            .order
            .partition_point(|k| self.values.get(k).is_none_or(&before));
        self.order.range(start..).filter_map(|k| self.values.get(k))
    }

    /// [`RecentWindow::values_from`], each value with its key.
    pub fn entries_from(&self, before: impl Fn(&V) -> bool) -> impl Iterator<Item = (&K, &V)> {
        let start = self
            .order
            .partition_point(|k| self.values.get(k).is_none_or(&before));
        self.order
            .range(start..)
            .filter_map(|k| self.values.get(k).map(|v| (k, v)))
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
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
}
