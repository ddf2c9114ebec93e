//! A map bounded by a count of keys that forgets its least recently used key first, in
//! locked shards: the worker's decision caches (`decision_cache.sampled_cache_size`,
//! `non_sampled_cache_size`) and the `string_attribute` policy's cache of regex results
//! (`cache_max_size`), both LRU caches in the collector.
//!
//! Written over the `lru` crate rather than with moka: moka spent about a microsecond on
//! each lookup and insert (its read and write logs and their housekeeping), 7 % of a
//! worker's CPU in the benchmark, where a lookup in a locked shard of an LRU list costs a
//! fraction of that. moka's default policy also admitted no new key into a full cache,
//! which made a full decision cache keep its oldest decisions and no new one.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Mutex;

use lru::LruCache;

/// Keys per shard below which a cache is not split: a small cache is one exact LRU list.
const SHARD_AT_LEAST: u64 = 8192;
/// Shards at most: enough that ingest threads and decision loops seldom meet on a lock.
const MAX_SHARDS: u64 = 16;

pub struct Lru<K, V> {
    shards: Box<[Mutex<LruCache<K, V, ahash::RandomState>>]>,
    /// Keys a shard holds at most. The lists are unbounded and kept to it here: a bounded
    /// one would allocate its whole table up front, and memory grows with use instead.
    per_shard: usize,
    /// Picks a key's shard.
    pick: ahash::RandomState,
}

impl<K, V> std::fmt::Debug for Lru<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lru")
            .field("shards", &self.shards.len())
            .field("per_shard", &self.per_shard)
            .finish()
    }
}

impl<K: Hash + Eq, V: Clone> Lru<K, V> {
    /// A cache of `size` keys in all (at least one), split into shards of at least
    /// [`SHARD_AT_LEAST`] keys. Each shard forgets its own least recently used key, so a
    /// sharded cache forgets the least recently used keys of the whole only about.
    pub fn new(size: u64) -> Self {
        let size = size.max(1);
        let shards = (size / SHARD_AT_LEAST).clamp(1, MAX_SHARDS);
        // A power of two, so that a shard is picked with a mask.
        let shards = 1u64 << shards.ilog2();
        Self {
            shards: (0..shards)
                .map(|_| Mutex::new(LruCache::unbounded_with_hasher(ahash::RandomState::new())))
                .collect(),
            per_shard: size.div_ceil(shards) as usize,
            pick: ahash::RandomState::new(),
        }
    }

    fn shard<Q>(&self, key: &Q) -> std::sync::MutexGuard<'_, LruCache<K, V, ahash::RandomState>>
    where
        K: Borrow<Q>,
        Q: Hash + ?Sized,
    {
        let i = self.pick.hash_one(key) as usize & (self.shards.len() - 1);
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value for `key`, which becomes the most recently used.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key).get(key).cloned()
    }

    /// The value for `key`, its place in the order unchanged.
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key).peek(key).cloned()
    }

    /// Remembers `value` for `key` as the most recently used, forgetting the least
    /// recently used key of its shard when the shard is full.
    pub fn insert(&self, key: K, value: V) {
        let mut shard = self.shard(&key);
        if shard.len() >= self.per_shard && !shard.contains(&key) {
            shard.pop_lru();
        }
        shard.put(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailgate_testkit::trace_id;

    #[test]
    fn a_full_cache_forgets_the_least_recently_used_id() {
        let cache = Lru::new(3);
        assert_eq!(cache.shards.len(), 1);
        for n in 1..=3 {
            cache.insert(trace_id(n), n);
        }
        // Looking 1 up makes it the most recently used; peeking at 2 does not.
        assert_eq!(cache.get(&trace_id(1)), Some(1));
        assert_eq!(cache.peek(&trace_id(2)), Some(2));
        cache.insert(trace_id(4), 4);
        assert_eq!(cache.peek(&trace_id(2)), None);
        for n in [1, 3, 4] {
            assert_eq!(cache.peek(&trace_id(n)), Some(n), "{n}");
        }
    }

    #[test]
    fn a_large_cache_is_sharded_and_holds_what_it_was_sized_for() {
        let cache = Lru::new(40_000);
        assert_eq!(cache.shards.len(), 4);
        for n in 0..100_000 {
            cache.insert(trace_id(n), n);
        }
        let held = (0..100_000)
            .filter(|n| cache.peek(&trace_id(*n)).is_some())
            .count();
        // Each shard holds what it was sized for: 10 000 ids.
        assert_eq!(held, 40_000);
        // The newest ids are all there: no shard got 10 000 of the last 4 000.
        assert!((96_000..100_000).all(|n| cache.peek(&trace_id(n)).is_some()));
        assert_eq!(Lru::<[u8; 16], u64>::new(1 << 30).shards.len(), 16);
    }
}
