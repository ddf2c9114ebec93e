//! The trace buffer: pending traces in a sharded concurrent map (trace id → spans kept as
//! encoded chunks plus the facts decisions need), and per-shard decision timers.
//!
//! Invariants:
//! - every entry in the map has exactly one key in exactly one timer shard, and the entry
//!   records that key (`TraceEntry::timer`); whoever removes the entry removes the key;
//! - a timer shard's mutex is never held while a map guard is taken (ingest takes the map
//!   guard first, then the timer; deciders and eviction pop timer keys, release the timer,
//!   then remove the matching entry), so the two cannot deadlock;
//! - `pending_traces`, `buffered_bytes` and `buffered_spans` equal the sums over the map
//!   (between two operations);
//! - an entry is created `raced` unless every decision that had taken traces out before
//!   it was created had also been remembered before its creator looked for the trace
//!   ([`Deciding`], [`Epoch`]): only a raced entry's id may already have a decision its
//!   creator did not see.
//!
//! Timers are ordered maps keyed by (deadline, sequence): due keys are popped in batches,
//! and the first key of all shards is the oldest pending trace, the one evicted when a
//! limit is hit. No task per trace. A decision loop sleeps until the first deadline of its
//! shards ([`TraceBuffer::plan_wake`]); a key due before the time a shard's loop planned
//! to wake wakes it ([`TraceBuffer::earlier_deadline`]), so an idle or filling buffer
//! costs no wake-ups.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::time::Instant;

use crate::otlp::{Head, TraceId, TraceSpans};
use crate::policy::{AttributeMatches, StatusCodes};
use crate::storage::Appended;

/// Limits and timing, from `tail_sampling`.
#[derive(Debug, Clone)]
pub struct BufferConfig {
    pub decision_wait: Duration,
    /// Zero: off.
    pub decision_wait_after_root_received: Duration,
    pub num_traces: usize,
    /// Zero: no bound.
    pub max_buffered_bytes: u64,
    /// Zero: no bound.
    pub maximum_trace_size_bytes: u64,
    pub expected_new_traces_per_sec: usize,
}

/// When a pending trace is due, and its place in its timer shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerKey {
    pub deadline: Instant,
    seq: u64,
}

/// A pending trace.
#[derive(Debug)]
pub struct TraceEntry {
    pub spans: TraceSpans,
    pub span_count: u64,
    /// Wire bytes of the spans.
    pub bytes: u64,
    pub first_arrival: Instant,
    pub root_seen: bool,
    /// Earliest span start and latest span end, Unix nanoseconds.
    pub earliest_start: u64,
    pub latest_end: u64,
    /// The span status codes seen, as [`StatusCodes`].
    pub status_codes: StatusCodes,
    /// The `rv` of the trace's spans' tracestate, when one carried it.
    pub rv: Option<u64>,
    /// The policies' attribute conditions its resources and spans met.
    pub attributes: AttributeMatches,
    pub timer: TimerKey,
    /// With a log: a pin on the record of the trace's first spans (keeping them and every
    /// later record on disk), and the place of its latest spans' record.
    pub logged: Option<Appended>,
    /// Created while a decision that may have been of its id was in flight: its id is
    /// looked up in the decision caches before it is decided.
    pub raced: bool,
}

/// A chunk of spans of one trace to buffer: `spans` (each framed as field 2 of
/// `ScopeSpans`, as received) under `head`, and what they tell the buffer.
pub struct NewChunk<'h, I> {
    pub head: &'h Arc<Head>,
    pub spans: I,
    pub facts: ChunkFacts,
    /// Read before the caller looked for the trace in the buffer and the decision caches.
    pub seen: Epoch,
}

/// How many decisions had been remembered when a caller of [`TraceBuffer::add`] began to
/// look for its trace ([`TraceBuffer::epoch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(u64);

impl Epoch {
    /// For a caller that did not look in the decision caches: its new entries are raced.
    pub const UNCHECKED: Epoch = Epoch(u64::MAX);
}

/// Traces being taken out of the buffer to have their decisions remembered: from
/// [`TraceBuffer::deciding`] until dropped, which the holder does once every decision is
/// in the caches. Entries created meanwhile are raced.
///
/// Written as two counters rather than a flag per trace id: a decision-time lookup in
/// the caches for every trace was a visible share of deciding, and races are rare.
#[must_use]
pub struct Deciding<'a>(&'a TraceBuffer);

impl Drop for Deciding<'_> {
    fn drop(&mut self) {
        self.0.decisions_finished.fetch_add(1, Ordering::SeqCst);
    }
}

/// What one chunk tells the buffer about its spans.
#[derive(Debug, Clone, Copy)]
pub struct ChunkFacts {
    pub has_root: bool,
    pub earliest_start: u64,
    pub latest_end: u64,
    pub status_codes: StatusCodes,
    /// The `rv` of the first span that carried one.
    pub rv: Option<u64>,
    /// The policies' attribute conditions the chunk's resource and spans meet.
    pub attributes: AttributeMatches,
}

/// The result of [`TraceBuffer::add`].
#[derive(Default)]
pub struct AddOutcome<'a> {
    /// The chunk started a new trace.
    pub new_trace: bool,
    /// The trace went over `maximum_trace_size_bytes` and was taken out of the buffer, to
    /// be remembered as dropped before the [`Deciding`] is let go.
    pub too_large: Option<(TraceEntry, Deciding<'a>)>,
    /// Traces evicted to make room, oldest first.
    pub evicted: Vec<(TraceId, TraceEntry)>,
}

pub struct TraceBuffer {
    config: BufferConfig,
    map: DashMap<TraceId, TraceEntry, ahash::RandomState>,
    timers: Box<[Mutex<BTreeMap<TimerKey, TraceId>>]>,
    seq: AtomicU64,
    pending_traces: AtomicUsize,
    buffered_bytes: AtomicU64,
    buffered_spans: AtomicU64,
    decisions_started: AtomicU64,
    decisions_finished: AtomicU64,
    /// Per timer shard: when its decision loop will next look at it, in nanoseconds after
    /// `origin` ([`AWAKE`] while it is looking, [`UNPLANNED`] while it plans).
    wake_at: Box<[AtomicU64]>,
    origin: Instant,
    /// Wakes the decision loops waiting on it when a key is due before a shard's planned
    /// wake.
    earlier: tokio::sync::Notify,
}

/// A shard's loop is looking at it: a new key needs no wake-up.
const AWAKE: u64 = 0;
/// A shard's loop is working out when to wake: every new key wakes it.
const UNPLANNED: u64 = u64::MAX;

impl TraceBuffer {
    /// A buffer with `timer_shards` timer shards (rounded up to a power of two).
    pub fn new(config: BufferConfig, timer_shards: usize) -> Self {
        let shards = timer_shards.max(1).next_power_of_two();
        let capacity = config
            .num_traces
            .min(config.expected_new_traces_per_sec.max(1024) * 4);
        Self {
            map: DashMap::with_capacity_and_hasher(capacity, ahash::RandomState::new()),
            timers: (0..shards).map(|_| Mutex::new(BTreeMap::new())).collect(),
            seq: AtomicU64::new(0),
            pending_traces: AtomicUsize::new(0),
            buffered_bytes: AtomicU64::new(0),
            buffered_spans: AtomicU64::new(0),
            decisions_started: AtomicU64::new(0),
            decisions_finished: AtomicU64::new(0),
            wake_at: (0..shards).map(|_| AtomicU64::new(AWAKE)).collect(),
            origin: Instant::now(),
            earlier: tokio::sync::Notify::new(),
            config,
        }
    }

    pub fn config(&self) -> &BufferConfig {
        &self.config
    }

    pub fn timer_shards(&self) -> usize {
        self.timers.len()
    }

    pub fn pending_traces(&self) -> usize {
        self.pending_traces.load(Ordering::Relaxed)
    }

    pub fn buffered_bytes(&self) -> u64 {
        self.buffered_bytes.load(Ordering::Relaxed)
    }

    pub fn buffered_spans(&self) -> u64 {
        self.buffered_spans.load(Ordering::Relaxed)
    }

    /// What a caller reads before it looks for a trace, to pass to [`TraceBuffer::add`].
    pub fn epoch(&self) -> Epoch {
        Epoch(self.decisions_finished.load(Ordering::SeqCst))
    }

    /// Begins taking traces out to decide them; see [`Deciding`].
    pub fn deciding(&self) -> Deciding<'_> {
        self.decisions_started.fetch_add(1, Ordering::SeqCst);
        Deciding(self)
    }

    /// Whether `id` is pending here.
    pub fn holds(&self, id: &TraceId) -> bool {
        self.map.contains_key(id)
    }

    /// Whether a limit is reached; what
    /// `block_on_overflow` refuses on instead of evicting.
    pub fn is_full(&self) -> bool {
        self.pending_traces() >= self.config.num_traces
            || (self.config.max_buffered_bytes > 0
                && self.buffered_bytes() >= self.config.max_buffered_bytes)
    }

    fn shard_of(&self, id: &TraceId) -> usize {
        // Trace ids are random; fold both halves so ids random in one half only spread too.
        let lo = u64::from_le_bytes(id[8..16].try_into().expect("8 bytes"));
        let hi = u64::from_le_bytes(id[0..8].try_into().expect("8 bytes"));
        let mut h = lo ^ hi;
        h ^= h >> 31;
        h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> 32) as usize & (self.timers.len() - 1)
    }

    /// Nanoseconds from `origin` to `t` (0 before it).
    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_nanos() as u64
    }

    /// A future that completes when a key is added in a shard whose loop planned to wake
    /// after its deadline. Enable it before [`TraceBuffer::plan_wake`] so that no key
    /// added in between is missed.
    pub fn earlier_deadline(&self) -> tokio::sync::futures::Notified<'_> {
        self.earlier.notified()
    }

    /// For a decision loop about to sleep: when to look at `shards` next, the first
    /// deadline among them but not before `not_before` (`None` while they are empty). A
    /// key added later that is due before that time completes [`earlier_deadline`].
    ///
    /// [`earlier_deadline`]: TraceBuffer::earlier_deadline
    pub fn plan_wake(&self, shards: &[usize], not_before: Instant) -> Option<Instant> {
        for &s in shards {
            self.wake_at[s].store(UNPLANNED, Ordering::SeqCst);
        }
        let first = shards.iter().filter_map(|&s| self.next_deadline(s)).min();
        let wake = first.map(|d| d.max(not_before));
        let at = wake.map_or(UNPLANNED - 1, |w| self.nanos(w).max(AWAKE + 1));
        for &s in shards {
            self.wake_at[s].store(at, Ordering::SeqCst);
        }
        wake
    }

    /// A decision loop is looking at `shards`: new keys need not wake it.
    pub fn awake(&self, shards: &[usize]) {
        for &s in shards {
            self.wake_at[s].store(AWAKE, Ordering::SeqCst);
        }
    }

    /// Wakes shard `shard`'s loop if it planned to look after `deadline`.
    fn wake_for(&self, shard: usize, deadline: Instant) {
        if self.nanos(deadline) < self.wake_at[shard].load(Ordering::SeqCst) {
            self.earlier.notify_waiters();
        }
    }

    fn new_key(&self, deadline: Instant) -> TimerKey {
        TimerKey {
            deadline,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The most span bytes one trace may hold: `maximum_trace_size_bytes`.
    fn max_trace_bytes(&self) -> u64 {
        match self.config.maximum_trace_size_bytes {
            0 => u64::MAX,
            max => max,
        }
    }

    /// Adds a chunk of spans of one trace. A trace the chunk takes over its size limit is
    /// taken out whole, the chunk's spans counted in it but not copied. With `evict` set,
    /// makes room by evicting the oldest pending traces when a limit is exceeded.
    pub fn add<'a>(
        &self,
        id: TraceId,
        chunk: NewChunk<'_, impl Iterator<Item = &'a [u8]> + Clone>,
        logged: Option<&Appended>,
        now: Instant,
        evict: bool,
    ) -> AddOutcome<'_> {
        let NewChunk {
            head,
            spans,
            facts,
            seen,
        } = chunk;
        let mut outcome = AddOutcome::default();
        let chunk_bytes = spans.clone().map(<[u8]>::len).sum::<usize>() as u64;
        let chunk_spans = spans.clone().count() as u64;
        let max = self.max_trace_bytes();
        let shard = self.shard_of(&id);
        let after_root = self.config.decision_wait_after_root_received;
        match self.map.entry(id) {
            Entry::Occupied(mut o) => {
                let e = o.get_mut();
                e.span_count += chunk_spans;
                e.bytes += chunk_bytes;
                e.earliest_start = e.earliest_start.min(facts.earliest_start);
                e.latest_end = e.latest_end.max(facts.latest_end);
                e.status_codes = e.status_codes.union(facts.status_codes);
                e.rv = e.rv.or(facts.rv);
                e.attributes = e.attributes.union(facts.attributes);
                if let (Some(mine), Some(new)) = (&mut e.logged, logged) {
                    mine.seq = mine.seq.max(new.seq);
                }
                self.buffered_bytes
                    .fetch_add(chunk_bytes, Ordering::Relaxed);
                self.buffered_spans
                    .fetch_add(chunk_spans, Ordering::Relaxed);
                if facts.has_root && !e.root_seen {
                    e.root_seen = true;
                    if !after_root.is_zero() && now + after_root < e.timer.deadline {
                        let key = self.new_key(now + after_root);
                        let mut timer = self.timers[shard].lock().expect("timer lock");
                        timer.remove(&e.timer);
                        timer.insert(key, id);
                        drop(timer);
                        e.timer = key;
                        self.wake_for(shard, key.deadline);
                    }
                }
                if e.bytes > max {
                    let deciding = self.deciding();
                    let entry = o.remove();
                    self.timers[shard]
                        .lock()
                        .expect("timer lock")
                        .remove(&entry.timer);
                    self.forget(&entry);
                    outcome.too_large = Some((entry, deciding));
                } else {
                    e.spans.push(head, spans);
                }
            }
            Entry::Vacant(v) => {
                let wait = if facts.has_root && !after_root.is_zero() {
                    after_root.min(self.config.decision_wait)
                } else {
                    self.config.decision_wait
                };
                let key = self.new_key(now + wait);
                let mut entry = TraceEntry {
                    spans: TraceSpans::default(),
                    span_count: chunk_spans,
                    bytes: chunk_bytes,
                    first_arrival: now,
                    root_seen: facts.has_root,
                    earliest_start: facts.earliest_start,
                    latest_end: facts.latest_end,
                    status_codes: facts.status_codes,
                    rv: facts.rv,
                    attributes: facts.attributes,
                    timer: key,
                    logged: logged.map(|l| Appended {
                        seq: l.seq,
                        pin: l.pin.clone(),
                    }),
                    // A decision that took this id's previous entry out did so under this
                    // map shard's lock, after it began: `decisions_started` counts it here.
                    raced: self.decisions_started.load(Ordering::SeqCst) != seen.0,
                };
                if chunk_bytes > max {
                    outcome.too_large = Some((entry, self.deciding()));
                    return outcome;
                }
                entry.spans.push(head, spans);
                self.timers[shard]
                    .lock()
                    .expect("timer lock")
                    .insert(key, id);
                self.wake_for(shard, key.deadline);
                v.insert(entry);
                self.pending_traces.fetch_add(1, Ordering::Relaxed);
                self.buffered_bytes
                    .fetch_add(chunk_bytes, Ordering::Relaxed);
                self.buffered_spans
                    .fetch_add(chunk_spans, Ordering::Relaxed);
                outcome.new_trace = true;
            }
        }
        // The map guard is released here, so eviction may touch any shard.
        if evict {
            while self.over_limit() {
                match self.evict_oldest() {
                    Some(victim) => outcome.evicted.push(victim),
                    None => break,
                }
            }
        }
        outcome
    }

    fn over_limit(&self) -> bool {
        self.pending_traces() > self.config.num_traces
            || (self.config.max_buffered_bytes > 0
                && self.buffered_bytes() > self.config.max_buffered_bytes)
    }

    fn forget(&self, entry: &TraceEntry) {
        self.pending_traces.fetch_sub(1, Ordering::Relaxed);
        self.buffered_bytes
            .fetch_sub(entry.bytes, Ordering::Relaxed);
        self.buffered_spans
            .fetch_sub(entry.span_count, Ordering::Relaxed);
    }

    /// Removes the entry a popped timer key points to, if that key is still its key.
    fn claim(&self, key: TimerKey, id: TraceId) -> Option<TraceEntry> {
        let (_, entry) = self.map.remove_if(&id, |_, e| e.timer == key)?;
        self.forget(&entry);
        Some(entry)
    }

    /// Takes pending traces out, earliest deadline first, until their span bytes add up to
    /// at least `bytes` or none is left (the memory limiter's shedding).
    pub fn evict_oldest_bytes(&self, bytes: u64) -> Vec<(TraceId, TraceEntry)> {
        let mut freed = 0;
        let mut out = Vec::new();
        while freed < bytes {
            let Some(victim) = self.evict_oldest() else {
                break;
            };
            freed += victim.1.bytes;
            out.push(victim);
        }
        out
    }

    /// Takes the pending trace with the earliest deadline out of the buffer.
    fn evict_oldest(&self) -> Option<(TraceId, TraceEntry)> {
        loop {
            let (shard, key) = self
                .timers
                .iter()
                .enumerate()
                .filter_map(|(i, t)| t.lock().expect("timer lock").keys().next().map(|k| (i, *k)))
                .min_by_key(|(_, k)| *k)?;
            let id = self.timers[shard].lock().expect("timer lock").remove(&key);
            if let Some(id) = id {
                if let Some(entry) = self.claim(key, id) {
                    return Some((id, entry));
                }
            }
        }
    }

    /// Takes every trace in timer shard `shard` whose deadline is at or before `now`, for
    /// the decision `_deciding`.
    pub fn take_due(
        &self,
        _deciding: &Deciding<'_>,
        shard: usize,
        now: Instant,
        out: &mut Vec<(TraceId, TraceEntry)>,
    ) {
        let due: Vec<(TimerKey, TraceId)> = {
            let mut timer = self.timers[shard].lock().expect("timer lock");
            let later = timer.split_off(&TimerKey {
                deadline: now,
                seq: u64::MAX,
            });
            std::mem::replace(&mut *timer, later).into_iter().collect()
        };
        out.extend(
            due.into_iter()
                .filter_map(|(key, id)| self.claim(key, id).map(|e| (id, e))),
        );
    }

    /// The earliest deadline in timer shard `shard`.
    pub fn next_deadline(&self, shard: usize) -> Option<Instant> {
        self.timers[shard]
            .lock()
            .expect("timer lock")
            .keys()
            .next()
            .map(|k| k.deadline)
    }

    /// Takes every pending trace, for shutdown, for the decision `_deciding`.
    pub fn take_all(&self, _deciding: &Deciding<'_>, out: &mut Vec<(TraceId, TraceEntry)>) {
        self.debug_check_invariants();
        for shard in 0..self.timers.len() {
            let all = std::mem::take(&mut *self.timers[shard].lock().expect("timer lock"));
            out.extend(
                all.into_iter()
                    .filter_map(|(key, id)| self.claim(key, id).map(|e| (id, e))),
            );
        }
        self.debug_check_invariants();
    }

    /// In debug builds, asserts the invariants of the module comment: the counters equal
    /// the sums over the map, and every entry has its one key in one timer shard. A walk
    /// over the whole buffer, so it runs only where nothing else touches it: at shutdown
    /// (`take_all`) and in tests.
    pub fn debug_check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let (mut spans, mut bytes) = (0, 0);
        for entry in self.map.iter() {
            spans += entry.span_count;
            bytes += entry.bytes;
            debug_assert_eq!(
                entry.span_count,
                entry
                    .spans
                    .chunks()
                    .map(|c| u64::from(c.span_count))
                    .sum::<u64>(),
                "a trace's span count is the sum over its chunks"
            );
            let shard = self.shard_of(entry.key());
            let timer = self.timers[shard].lock().expect("timer lock");
            debug_assert_eq!(
                timer.get(&entry.timer),
                Some(entry.key()),
                "an entry's timer key is in its shard"
            );
        }
        let keys: usize = self
            .timers
            .iter()
            .map(|t| t.lock().expect("timer lock").len())
            .sum();
        debug_assert_eq!(self.pending_traces(), self.map.len(), "pending_traces");
        debug_assert_eq!(keys, self.map.len(), "one timer key per entry");
        debug_assert_eq!(self.buffered_spans(), spans, "buffered_spans");
        debug_assert_eq!(self.buffered_bytes(), bytes, "buffered_bytes");
    }
}

#[cfg(test)]
mod tests;
