//! The decision caches (`decision_cache.sampled_cache_size`, `non_sampled_cache_size`):
//! trace id → the decision its late spans follow, bounded by a count of ids, the least
//! recently used forgotten first, as the collector's LRU caches forget them.
//!
//! Written over the `lru` crate, in locked shards, rather than with moka: moka spent about
//! a microsecond on each lookup and insert (its read and write logs and their
//! housekeeping), 7 % of a worker's CPU in the benchmark, where a lookup in a locked shard
//! of an LRU list costs under a tenth of that. moka's default policy also admitted no new
//! id into a full cache (see `a_full_decision_cache_remembers_the_newest_decisions`).

use std::sync::Mutex;

use lru::LruCache;

use crate::otlp::TraceId;

/// Ids per shard below which a cache is not split: a small cache is one exact LRU list.
const SHARD_AT_LEAST: u64 = 8192;
/// Shards at most: enough that ingest threads and decision loops seldom meet on a lock.
const MAX_SHARDS: u64 = 16;

pub(super) struct DecisionCache<V> {
    shards: Box<[Mutex<LruCache<TraceId, V, ahash::RandomState>>]>,
    /// Ids a shard holds at most. The lists are unbounded and kept to it here: a bounded
    /// one would allocate its whole table up front, and memory grows with use instead.
    per_shard: usize,
}

impl<V: Clone> DecisionCache<V> {
    /// A cache of `size` ids in all (at least one), split into shards of at least
    /// [`SHARD_AT_LEAST`] ids. Each shard forgets its own least recently used id, so a
    /// sharded cache forgets the least recently used ids of the whole only about.
    pub(super) fn new(size: u64) -> Self {
        let size = size.max(1);
        let shards = (size / SHARD_AT_LEAST).clamp(1, MAX_SHARDS);
        // A power of two, so that a shard is picked with a mask.
        let shards = 1u64 << shards.ilog2();
        Self {
            shards: (0..shards)
                .map(|_| Mutex::new(LruCache::unbounded_with_hasher(ahash::RandomState::new())))
                .collect(),
            per_shard: size.div_ceil(shards) as usize,
        }
    }

    fn shard(&self, id: &TraceId) -> &Mutex<LruCache<TraceId, V, ahash::RandomState>> {
        // Trace ids are random; fold both halves so ids random in one half only spread too.
        let lo = u64::from_le_bytes(id[8..16].try_into().expect("8 bytes"));
        let hi = u64::from_le_bytes(id[..8].try_into().expect("8 bytes"));
        let i = (lo ^ hi) as usize & (self.shards.len() - 1);
        &self.shards[i]
    }

    /// The decision for `id`, which becomes the most recently used.
    pub(super) fn get(&self, id: &TraceId) -> Option<V> {
        let mut shard = self.shard(id).lock().unwrap_or_else(|p| p.into_inner());
        shard.get(id).cloned()
    }

    /// The decision for `id`, its place in the order unchanged: for readers that are not
    /// late spans (scrapes looking for exemplars).
    pub(super) fn peek(&self, id: &TraceId) -> Option<V> {
        let shard = self.shard(id).lock().unwrap_or_else(|p| p.into_inner());
        shard.peek(id).cloned()
    }

    /// Remembers `value` for `id` as the most recently used, forgetting the least
    /// recently used id of its shard when the shard is full.
    pub(super) fn insert(&self, id: TraceId, value: V) {
        let mut shard = self.shard(&id).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard && !shard.contains(&id) {
            shard.pop_lru();
        }
        shard.put(id, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailgate_testkit::trace_id;

    #[test]
    fn a_full_cache_forgets_the_least_recently_used_id() {
        let cache = DecisionCache::new(3);
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
        let cache = DecisionCache::new(40_000);
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
        assert_eq!(DecisionCache::<u64>::new(1 << 30).shards.len(), 16);
    }
}
