//! The lookup cache, free of I/O: an LRU of encoded `GET /stocks/<name>` bodies, each with
//! the stock's version. It stays fresh by invalidations from the catalog: a fill older than
//! the newest invalidation seen is discarded, and a fill that raced an invalidation or one of
//! our own trades is discarded too (each stock has a fence that both move). While the
//! invalidation stream is down the cache is empty and refuses fills.

use std::collections::HashMap;
use std::num::NonZeroUsize;

use bytes::Bytes;
use common::wire::StockName;
use lru::LruCache;
use tracing::info;

#[derive(Debug, Clone)]
struct Entry {
    version: u64,
    body: Bytes,
}

/// Taken before a catalog lookup and handed back with its result, so that a fill can tell
/// whether anything moved in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillTicket {
    generation: u64,
    fence: u64,
}

/// Counters for the metrics page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the catalog.
    pub misses: u64,
    /// Entries pushed out by newer ones.
    pub evictions: u64,
    /// Entries now.
    pub entries: usize,
    /// Whether the cache is in use (the invalidation stream is up).
    pub enabled: bool,
    /// Most entries it holds (0: no cache).
    pub capacity: usize,
}

/// The versioned LRU.
pub struct StockCache {
    /// `None` when the cache is configured off (`--cache-size 0`).
    lru: Option<LruCache<StockName, Entry>>,
    /// Newest version each stock is known to have reached.
    newest: HashMap<StockName, u64>,
    /// Moves on every invalidation of, or trade on, the stock.
    fences: HashMap<StockName, u64>,
    /// Moves when the cache is disabled or enabled.
    generation: u64,
    enabled: bool,
    stats: CacheStats,
}

impl StockCache {
    /// A cache of `capacity` stocks (0: no cache). It starts disabled, until the invalidation
    /// stream is up.
    pub fn new(capacity: usize) -> Self {
        StockCache {
            lru: NonZeroUsize::new(capacity).map(LruCache::new),
            newest: HashMap::new(),
            fences: HashMap::new(),
            generation: 0,
            enabled: false,
            stats: CacheStats::default(),
        }
    }

    /// The cached body of `name`, counting a hit or a miss.
    pub fn get(&mut self, name: &StockName) -> Option<Bytes> {
        let found = match (&mut self.lru, self.enabled) {
            (Some(lru), true) => lru.get(name).map(|e| e.body.clone()),
            _ => None,
        };
        if found.is_some() {
            self.stats.hits += 1;
        } else {
            self.stats.misses += 1;
        }
        found
    }

    /// A ticket for a lookup of `name` about to go to the catalog.
    pub fn ticket(&self, name: &StockName) -> FillTicket {
        FillTicket {
            generation: self.generation,
            fence: self.fences.get(name).copied().unwrap_or(0),
        }
    }

    /// Stores the catalog's answer for `name` at `version`, unless it is stale: the cache is
    /// off or was reset since `ticket`, the stock was invalidated or traded since, or a newer
    /// version is known. True when stored.
    pub fn fill(
        &mut self,
        name: &StockName,
        version: u64,
        body: Bytes,
        ticket: FillTicket,
    ) -> bool {
        let fence = self.fences.get(name).copied().unwrap_or(0);
        let newest = self.newest.get(name).copied().unwrap_or(0);
        let fresh = self.enabled
            && ticket.generation == self.generation
            && ticket.fence == fence
            && version >= newest;
        let Some(lru) = self.lru.as_mut().filter(|_| fresh) else {
            return false;
        };
        self.newest.insert(name.clone(), version);
        if let Some((evicted, _)) = lru.push(name.clone(), Entry { version, body }) {
            if &evicted != name {
                self.stats.evictions += 1;
                info!(evicted = %evicted, by = %name, "cache eviction");
            }
        }
        true
    }

    /// The catalog says `name` reached `version`: drop an older entry and refuse older fills.
    pub fn invalidate(&mut self, name: &StockName, version: u64) {
        let newest = self.newest.entry(name.clone()).or_insert(0);
        *newest = (*newest).max(version);
        *self.fences.entry(name.clone()).or_insert(0) += 1;
        if let Some(lru) = &mut self.lru {
            if lru.peek(name).is_some_and(|e| e.version < version) {
                lru.pop(name);
                info!(stock = %name, version, "cache invalidation");
            }
        }
    }

    /// One of our own trades on `name` succeeded: drop it, so the next lookup shows the trade
    /// even before the catalog's invalidation arrives.
    pub fn forget(&mut self, name: &StockName) {
        *self.fences.entry(name.clone()).or_insert(0) += 1;
        if let Some(lru) = &mut self.lru {
            lru.pop(name);
        }
    }

    /// The invalidation stream broke: empty the cache and refuse fills until it is back.
    pub fn disable(&mut self) {
        if let Some(lru) = &mut self.lru {
            lru.clear();
        }
        self.enabled = false;
        self.generation += 1;
    }

    /// The invalidation stream is up again.
    pub fn enable(&mut self) {
        if let Some(lru) = &mut self.lru {
            lru.clear();
        }
        // The catalog may have come back with less than it told (a crash takes back what was
        // not on its disk, a rebuild counts versions anew): only what it says from now on
        // counts.
        self.newest.clear();
        self.enabled = true;
        self.generation += 1;
    }

    /// Counters and size.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.lru.as_ref().map_or(0, LruCache::len),
            enabled: self.enabled && self.lru.is_some(),
            capacity: self.lru.as_ref().map_or(0, |lru| lru.cap().get()),
            ..self.stats
        }
    }

    /// The cached stocks, most recently used first (for tests and logs).
    pub fn order(&self) -> Vec<StockName> {
        self.lru
            .as_ref()
            .map(|lru| lru.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> StockName {
        StockName::new(s).unwrap()
    }

    fn filled(cache: &mut StockCache, stock: &str, version: u64) -> bool {
        let ticket = cache.ticket(&name(stock));
        cache.fill(
            &name(stock),
            version,
            Bytes::from(format!("{stock}@{version}")),
            ticket,
        )
    }

    #[test]
    fn least_recently_used_goes_first() {
        let mut cache = StockCache::new(2);
        cache.enable();
        assert!(filled(&mut cache, "A", 1));
        assert!(filled(&mut cache, "B", 1));
        assert!(cache.get(&name("A")).is_some());
        assert!(filled(&mut cache, "C", 1));
        assert_eq!(cache.order(), vec![name("C"), name("A")]);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.evictions, stats.entries), (1, 1, 2));
        assert!(cache.get(&name("B")).is_none());
        assert_eq!(cache.stats().misses, 1);
    }

    #[test]
    fn invalidation_drops_older_entries_and_refuses_older_fills() {
        let mut cache = StockCache::new(5);
        cache.enable();
        filled(&mut cache, "A", 3);
        cache.invalidate(&name("A"), 3);
        assert!(
            cache.get(&name("A")).is_some(),
            "an invalidation of the cached version keeps it"
        );
        cache.invalidate(&name("A"), 4);
        assert!(cache.get(&name("A")).is_none());
        assert!(
            !filled(&mut cache, "A", 3),
            "a fill older than the invalidation"
        );
        assert!(filled(&mut cache, "A", 4));
    }

    #[test]
    fn a_slow_fill_never_undoes_an_invalidation() {
        let mut cache = StockCache::new(5);
        cache.enable();
        // A lookup reads version 7 from the catalog...
        let ticket = cache.ticket(&name("A"));
        // ...meanwhile the stock changes to version 8 and the invalidation arrives first...
        cache.invalidate(&name("A"), 8);
        // ...then the slow fill lands.
        assert!(!cache.fill(&name("A"), 7, Bytes::from_static(b"old"), ticket));
        assert!(cache.get(&name("A")).is_none());
    }

    #[test]
    fn a_fill_that_raced_our_own_trade_is_discarded() {
        let mut cache = StockCache::new(5);
        cache.enable();
        let ticket = cache.ticket(&name("A"));
        // Our trade's answer arrives before its invalidation does.
        cache.forget(&name("A"));
        assert!(!cache.fill(&name("A"), 1, Bytes::from_static(b"pre-trade"), ticket));
    }

    #[test]
    fn a_broken_stream_empties_and_disables_the_cache() {
        let mut cache = StockCache::new(5);
        assert!(
            !filled(&mut cache, "A", 1),
            "disabled until the stream is up"
        );
        cache.enable();
        let ticket = cache.ticket(&name("B"));
        filled(&mut cache, "A", 1);
        cache.disable();
        assert!(cache.get(&name("A")).is_none());
        assert!(!filled(&mut cache, "A", 1));
        cache.enable();
        assert!(
            !cache.fill(&name("B"), 1, Bytes::new(), ticket),
            "a fill from before the break"
        );
        assert!(filled(&mut cache, "A", 1));
        assert!(cache.stats().enabled);
    }

    #[test]
    fn size_zero_turns_the_cache_off() {
        let mut cache = StockCache::new(0);
        cache.enable();
        assert!(!filled(&mut cache, "A", 1));
        assert!(cache.get(&name("A")).is_none());
        assert!(!cache.stats().enabled);
    }
}
