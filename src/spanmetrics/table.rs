//! The aggregation table: series keyed by their encoded label values, sharded by key
//! hash, each with a call count, optional histogram buckets and exemplar candidates.
//!
//! Invariants: `series` equals the number of keys over all shards; a key is only added
//! while `series < limit` (0: no limit), otherwise the span goes to the overflow series;
//! a series is exposed at zero on the first render after its creation, so Prometheus sees
//! its first increment. Recording allocates only when a series is created.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::otlp::TraceId;

const SHARDS: usize = 16;

/// A span that may become an exemplar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    pub trace_id: TraceId,
    pub span_id: [u8; 8],
    pub value: f64,
    /// Unix seconds.
    pub timestamp: f64,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub calls: u64,
    /// Per-bucket (not cumulative) counts, the last one for `+Inf`; empty without histogram.
    pub buckets: Box<[u64]>,
    pub sum: f64,
    last_seen: Instant,
    exposed: bool,
    /// Newest last, at most `max_exemplars`.
    pub exemplars: VecDeque<Exemplar>,
}

impl Series {
    fn new(buckets: usize, now: Instant) -> Self {
        Self {
            calls: 0,
            buckets: vec![0; buckets].into_boxed_slice(),
            sum: 0.0,
            last_seen: now,
            exposed: false,
            exemplars: VecDeque::new(),
        }
    }

    /// The same shape with every value at zero, for a series' first exposure.
    fn zeroed(&self) -> Series {
        Series {
            calls: 0,
            buckets: vec![0; self.buckets.len()].into_boxed_slice(),
            sum: 0.0,
            last_seen: self.last_seen,
            exposed: false,
            exemplars: VecDeque::new(),
        }
    }
}

/// One observation.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// The duration in the histogram's unit; ignored without histogram.
    pub value: f64,
    /// How many spans the span stands for (its adjusted count, rounded).
    pub count: u64,
    pub exemplar: Option<(TraceId, [u8; 8])>,
}

/// Series by encoded key (ahash: every span hashes its key once more here).
type Shard = Mutex<HashMap<Box<str>, Series, ahash::RandomState>>;

pub struct Table {
    shards: Box<[Shard]>,
    hasher: ahash::RandomState,
    series: AtomicUsize,
    limit: usize,
    /// Upper bounds of the finite buckets, ascending; empty: no histogram.
    bounds: Box<[f64]>,
    histogram: bool,
    max_exemplars: usize,
    overflow: Mutex<Option<Series>>,
}

/// What one [`Table::record`] did, for the self-metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Existing,
    New,
    Overflow,
}

impl Table {
    pub fn new(limit: usize, bounds: Option<Vec<f64>>, max_exemplars: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(ahash::RandomState::new())))
                .collect(),
            hasher: ahash::RandomState::new(),
            series: AtomicUsize::new(0),
            limit,
            histogram: bounds.is_some(),
            bounds: bounds.unwrap_or_default().into_boxed_slice(),
            max_exemplars,
            overflow: Mutex::new(None),
        }
    }

    pub fn series(&self) -> usize {
        self.series.load(Ordering::Relaxed)
    }

    fn bucket_count(&self) -> usize {
        if self.histogram {
            self.bounds.len() + 1
        } else {
            0
        }
    }

    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    fn observe(&self, s: &mut Series, o: Observation, now: Instant) {
        s.calls += o.count;
        s.last_seen = now;
        if self.histogram {
            // The first bound >= value: a value equal to a bound is in that bucket.
            let i = self.bounds.partition_point(|b| *b < o.value);
            s.buckets[i] += o.count;
            s.sum += o.value * o.count as f64;
        }
        if let (Some((trace_id, span_id)), true) = (o.exemplar, self.max_exemplars > 0) {
            if s.exemplars.len() == self.max_exemplars {
                s.exemplars.pop_front();
            }
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            s.exemplars.push_back(Exemplar {
                trace_id,
                span_id,
                value: o.value,
                timestamp,
            });
        }
    }

    /// Counts one span under `key`.
    pub fn record(&self, key: &str, o: Observation, now: Instant) -> Recorded {
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get_mut(key) {
            self.observe(s, o, now);
            return Recorded::Existing;
        }
        let admitted = self.limit == 0
            || self
                .series
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < self.limit).then_some(n + 1)
                })
                .is_ok();
        if !admitted {
            drop(map);
            let mut overflow = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
            let s = overflow.get_or_insert_with(|| Series::new(self.bucket_count(), now));
            self.observe(s, o, now);
            return Recorded::Overflow;
        }
        if self.limit == 0 {
            self.series.fetch_add(1, Ordering::Relaxed);
        }
        let mut s = Series::new(self.bucket_count(), now);
        self.observe(&mut s, o, now);
        map.insert(key.into(), s);
        Recorded::New
    }

    /// Drops series (the overflow one included) idle for `ttl` or longer; returns how many.
    pub fn expire(&self, now: Instant, ttl: Duration) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = map.len();
            map.retain(|_, s| now.saturating_duration_since(s.last_seen) < ttl);
            removed += before - map.len();
        }
        self.series.fetch_sub(removed, Ordering::Relaxed);
        let mut overflow = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
        if overflow
            .as_ref()
            .is_some_and(|s| now.saturating_duration_since(s.last_seen) >= ttl)
        {
            *overflow = None;
            removed += 1;
        }
        removed
    }

    /// Every series, and the overflow series if any, as they are to be
    /// exposed now: a series not exposed before shows zeros this once.
    pub fn snapshot(&self) -> (Vec<(Box<str>, Series)>, Option<Series>) {
        let mut rows = Vec::with_capacity(self.series());
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (k, s) in map.iter_mut() {
                rows.push((k.clone(), expose(s)));
            }
        }
        let overflow = self
            .overflow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .map(expose);
        (rows, overflow)
    }
}

fn expose(s: &mut Series) -> Series {
    if s.exposed {
        s.clone()
    } else {
        s.exposed = true;
        s.zeroed()
    }
}
