use std::time::Duration;

use tokio::time::Instant;

use super::*;
use tailgate_testkit::{span, trace_id};

fn config() -> BufferConfig {
    BufferConfig {
        decision_wait: Duration::from_secs(10),
        decision_wait_after_root_received: Duration::ZERO,
        num_traces: 100,
        max_buffered_bytes: 0,
        maximum_trace_size_bytes: 0,
        expected_new_traces_per_sec: 0,
    }
}

/// Spans of one trace as a worker receives them: their head, and each span framed.
struct Received {
    head: Arc<Head>,
    framed: Vec<Vec<u8>>,
}

impl Received {
    fn size(&self) -> usize {
        self.framed.iter().map(Vec::len).sum()
    }

    /// The spans as [`TraceBuffer::add`] takes them, with `facts`, from a caller that did
    /// not look in the decision caches.
    fn with(&self, facts: ChunkFacts) -> NewChunk<'_, impl Iterator<Item = &[u8]> + Clone> {
        self.seen(facts, Epoch::UNCHECKED)
    }

    /// The same, from a caller that read `seen` before it looked for the trace.
    fn seen(
        &self,
        facts: ChunkFacts,
        seen: Epoch,
    ) -> NewChunk<'_, impl Iterator<Item = &[u8]> + Clone> {
        NewChunk {
            head: &self.head,
            spans: self.framed.iter().map(Vec::as_slice),
            facts,
            seen,
        }
    }
}

fn chunk(trace: u64, span_ids: &[u64]) -> Received {
    let spans = span_ids
        .iter()
        .map(|s| span(trace_id(trace), *s, Some(1)))
        .collect();
    let request = tailgate_testkit::request("svc", spans);
    let scanned = crate::otlp::scan::scan(prost::Message::encode_to_vec(&request).into())
        .expect("valid spans");
    let scope = &scanned.scopes[0];
    Received {
        head: scope.head.clone(),
        framed: scanned
            .spans_of(scope)
            .iter()
            .map(|s| scanned.framed(s).to_vec())
            .collect(),
    }
}

const CHILD: ChunkFacts = ChunkFacts {
    has_root: false,
    earliest_start: 10,
    latest_end: 20,
    status_codes: StatusCodes::NONE,
    rv: None,
    attributes: AttributeMatches::UNKNOWN,
};
const ROOT: ChunkFacts = ChunkFacts {
    has_root: true,
    earliest_start: 5,
    latest_end: 30,
    status_codes: StatusCodes::NONE,
    rv: None,
    attributes: AttributeMatches::UNKNOWN,
};

/// Every trace due at `now`; the invariants are checked before and after.
fn due(buffer: &TraceBuffer, now: Instant) -> Vec<(TraceId, TraceEntry)> {
    buffer.debug_check_invariants();
    let mut out = Vec::new();
    let deciding = buffer.deciding();
    for shard in 0..buffer.timer_shards() {
        buffer.take_due(&deciding, shard, now, &mut out);
    }
    buffer.debug_check_invariants();
    out
}

#[tokio::test(start_paused = true)]
async fn a_trace_is_due_at_first_span_plus_decision_wait() {
    let buffer = TraceBuffer::new(config(), 4);
    let t0 = Instant::now();
    assert!(
        buffer
            .add(trace_id(1), chunk(1, &[1, 2]).with(CHILD), None, t0, true)
            .new_trace
    );
    tokio::time::advance(Duration::from_secs(4)).await;
    let later = buffer.add(
        trace_id(1),
        chunk(1, &[3]).with(ROOT),
        None,
        Instant::now(),
        true,
    );
    assert!(!later.new_trace);
    assert!(due(&buffer, t0 + Duration::from_millis(9_999)).is_empty());
    let taken = due(&buffer, t0 + Duration::from_secs(10));
    assert_eq!(taken.len(), 1);
    let (id, entry) = &taken[0];
    assert_eq!(*id, trace_id(1));
    assert_eq!(entry.span_count, 3);
    assert_eq!(entry.spans.chunks().count(), 2);
    assert!(entry.root_seen);
    assert_eq!((entry.earliest_start, entry.latest_end), (5, 30));
    assert_eq!(entry.first_arrival, t0);
    assert_eq!(buffer.pending_traces(), 0);
    assert_eq!(buffer.buffered_spans(), 0);
    assert_eq!(buffer.buffered_bytes(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_root_span_moves_the_decision_earlier_but_never_later() {
    let buffer = TraceBuffer::new(
        BufferConfig {
            decision_wait_after_root_received: Duration::from_secs(2),
            ..config()
        },
        4,
    );
    let t0 = Instant::now();
    buffer.add(trace_id(1), chunk(1, &[1]).with(CHILD), None, t0, true);
    buffer.add(
        trace_id(1),
        chunk(1, &[2]).with(ROOT),
        None,
        t0 + Duration::from_secs(1),
        true,
    );
    assert!(due(&buffer, t0 + Duration::from_millis(2_999)).is_empty());
    assert_eq!(due(&buffer, t0 + Duration::from_secs(3)).len(), 1);

    // A root arriving late, when the regular deadline is sooner, changes nothing.
    buffer.add(trace_id(2), chunk(2, &[1]).with(CHILD), None, t0, true);
    buffer.add(
        trace_id(2),
        chunk(2, &[2]).with(ROOT),
        None,
        t0 + Duration::from_secs(9),
        true,
    );
    assert!(due(&buffer, t0 + Duration::from_millis(9_999)).is_empty());
    assert_eq!(due(&buffer, t0 + Duration::from_secs(10)).len(), 1);

    // A trace whose first span is its root waits only the short time.
    buffer.add(trace_id(3), chunk(3, &[1]).with(ROOT), None, t0, true);
    assert_eq!(due(&buffer, t0 + Duration::from_secs(2)).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn over_num_traces_the_oldest_pending_trace_is_evicted() {
    let buffer = TraceBuffer::new(
        BufferConfig {
            num_traces: 3,
            ..config()
        },
        8,
    );
    let t0 = Instant::now();
    for n in 1..=3 {
        let out = buffer.add(
            trace_id(n),
            chunk(n, &[1]).with(CHILD),
            None,
            t0 + Duration::from_secs(n),
            true,
        );
        assert!(out.evicted.is_empty());
    }
    let out = buffer.add(
        trace_id(4),
        chunk(4, &[1]).with(CHILD),
        None,
        t0 + Duration::from_secs(4),
        true,
    );
    let evicted: Vec<TraceId> = out.evicted.iter().map(|(id, _)| *id).collect();
    assert_eq!(evicted, vec![trace_id(1)]);
    assert_eq!(buffer.pending_traces(), 3);
    // The evicted trace's timer is gone with it.
    let taken: Vec<TraceId> = due(&buffer, t0 + Duration::from_secs(60))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(taken.len(), 3);
    assert!(!taken.contains(&trace_id(1)));
}

#[tokio::test(start_paused = true)]
async fn without_eviction_the_buffer_reports_full() {
    let buffer = TraceBuffer::new(
        BufferConfig {
            num_traces: 2,
            ..config()
        },
        4,
    );
    let t0 = Instant::now();
    buffer.add(trace_id(1), chunk(1, &[1]).with(CHILD), None, t0, false);
    assert!(!buffer.is_full());
    buffer.add(trace_id(2), chunk(2, &[1]).with(CHILD), None, t0, false);
    assert!(buffer.is_full());
}

#[tokio::test(start_paused = true)]
async fn max_buffered_bytes_evicts_until_under_the_bound() {
    let one = chunk(1, &[1]).size() as u64;
    let buffer = TraceBuffer::new(
        BufferConfig {
            max_buffered_bytes: one * 3,
            ..config()
        },
        4,
    );
    let t0 = Instant::now();
    for n in 1..=3 {
        buffer.add(
            trace_id(n),
            chunk(n, &[1]).with(CHILD),
            None,
            t0 + Duration::from_millis(n),
            true,
        );
    }
    assert_eq!(buffer.buffered_bytes(), one * 3);
    let out = buffer.add(
        trace_id(9),
        chunk(9, &[1, 2, 3]).with(CHILD),
        None,
        t0 + Duration::from_millis(9),
        true,
    );
    let evicted: Vec<TraceId> = out.evicted.iter().map(|(id, _)| *id).collect();
    assert_eq!(evicted, vec![trace_id(1), trace_id(2), trace_id(3)]);
    assert!(buffer.buffered_bytes() <= one * 3);
}

#[tokio::test(start_paused = true)]
async fn a_trace_over_maximum_trace_size_bytes_is_released_at_once() {
    let one = chunk(1, &[1]).size() as u64;
    let buffer = TraceBuffer::new(
        BufferConfig {
            maximum_trace_size_bytes: one * 2,
            ..config()
        },
        4,
    );
    let t0 = Instant::now();
    assert!(buffer
        .add(trace_id(1), chunk(1, &[1, 2]).with(CHILD), None, t0, true)
        .too_large
        .is_none());
    let out = buffer.add(trace_id(1), chunk(1, &[3]).with(CHILD), None, t0, true);
    assert_eq!(out.too_large.map(|(e, _)| e.span_count), Some(3));
    assert_eq!(buffer.pending_traces(), 0);
    assert_eq!(buffer.buffered_bytes(), 0);
    assert!(due(&buffer, t0 + Duration::from_secs(60)).is_empty());
    // A single chunk over the limit never enters the buffer.
    let out = buffer.add(
        trace_id(2),
        chunk(2, &[1, 2, 3]).with(CHILD),
        None,
        t0,
        true,
    );
    assert!(out.too_large.is_some() && !out.new_trace);
    assert_eq!(buffer.pending_traces(), 0);
}

/// Adds span `span` of trace `trace` from a caller that read `seen` before it looked.
fn add_seen(buffer: &TraceBuffer, trace: u64, span: u64, seen: Epoch, now: Instant) {
    let chunk = chunk(trace, &[span]);
    buffer.add(trace_id(trace), chunk.seen(CHILD, seen), None, now, true);
}

/// Whether each of `ids` has a raced entry, taking every entry out.
fn raced(buffer: &TraceBuffer, ids: &[u64]) -> Vec<bool> {
    let mut all = Vec::new();
    buffer.take_all(&buffer.deciding(), &mut all);
    ids.iter()
        .map(|n| {
            let (_, entry) = all
                .iter()
                .find(|(id, _)| *id == trace_id(*n))
                .expect("pending");
            entry.raced
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_entry_created_while_a_decision_is_in_flight_is_raced() {
    let buffer = TraceBuffer::new(config(), 4);
    let t0 = Instant::now();
    let seen = buffer.epoch();
    add_seen(&buffer, 1, 1, seen, t0);
    // A decision takes trace 1 out; before it is remembered, more of its spans come.
    let later = t0 + Duration::from_secs(10);
    let deciding = buffer.deciding();
    let mut out = Vec::new();
    for shard in 0..buffer.timer_shards() {
        buffer.take_due(&deciding, shard, later, &mut out);
    }
    assert_eq!((out.len(), out[0].1.raced), (1, false));
    let before = buffer.epoch();
    add_seen(&buffer, 1, 2, before, later);
    drop(deciding);
    // Once it is remembered, a caller that looks afterwards sees it in the caches...
    let after = buffer.epoch();
    add_seen(&buffer, 2, 1, after, later);
    // ...but one that looked before may have missed it, and one that never looks may.
    add_seen(&buffer, 3, 1, before, later);
    buffer.add(trace_id(4), chunk(4, &[1]).with(CHILD), None, later, true);
    assert_eq!(raced(&buffer, &[1, 2, 3, 4]), [true, false, true, true]);
}

#[tokio::test(start_paused = true)]
async fn a_trace_dropped_as_too_large_is_in_flight_until_remembered() {
    let one = chunk(1, &[1]).size() as u64;
    let buffer = TraceBuffer::new(
        BufferConfig {
            maximum_trace_size_bytes: one,
            ..config()
        },
        4,
    );
    let t0 = Instant::now();
    let out = buffer.add(trace_id(1), chunk(1, &[1, 2]).with(CHILD), None, t0, true);
    let (_, deciding) = out.too_large.expect("over the limit");
    let seen = buffer.epoch();
    add_seen(&buffer, 1, 3, seen, t0);
    drop(deciding);
    let seen = buffer.epoch();
    add_seen(&buffer, 2, 1, seen, t0);
    assert_eq!(raced(&buffer, &[1, 2]), [true, false]);
}

#[tokio::test(start_paused = true)]
async fn take_all_empties_every_shard() {
    let buffer = TraceBuffer::new(config(), 8);
    let t0 = Instant::now();
    for n in 1..=50 {
        buffer.add(trace_id(n), chunk(n, &[1, 2]).with(CHILD), None, t0, true);
    }
    let mut all = Vec::new();
    buffer.take_all(&buffer.deciding(), &mut all);
    assert_eq!(all.len(), 50);
    assert_eq!(all.iter().map(|(_, e)| e.span_count).sum::<u64>(), 100);
    assert_eq!((buffer.pending_traces(), buffer.buffered_spans()), (0, 0));
}

#[test]
fn concurrent_adds_keep_the_counters_exact() {
    let buffer = std::sync::Arc::new(TraceBuffer::new(
        BufferConfig {
            num_traces: 10_000,
            ..config()
        },
        8,
    ));
    let now = Instant::now();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let buffer = buffer.clone();
            s.spawn(move || {
                for i in 0..500u64 {
                    // Threads share traces, so entries are created and extended concurrently.
                    let n = i % 250;
                    buffer.add(
                        trace_id(n),
                        chunk(n, &[t * 1000 + i + 1]).with(CHILD),
                        None,
                        now,
                        true,
                    );
                }
            });
        }
    });
    assert_eq!(buffer.pending_traces(), 250);
    assert_eq!(buffer.buffered_spans(), 2000);
    buffer.debug_check_invariants();
    let mut all = Vec::new();
    buffer.take_all(&buffer.deciding(), &mut all);
    assert_eq!(all.iter().map(|(_, e)| e.span_count).sum::<u64>(), 2000);
}

#[tokio::test(start_paused = true)]
async fn shedding_evicts_the_oldest_until_the_bytes_are_freed() {
    let buffer = TraceBuffer::new(config(), 8);
    let t0 = Instant::now();
    for n in 1..=10 {
        buffer.add(
            trace_id(n),
            chunk(n, &[1]).with(CHILD),
            None,
            t0 + Duration::from_millis(n),
            true,
        );
    }
    let each = buffer.buffered_bytes() / 10;
    let shed: Vec<TraceId> = buffer
        .evict_oldest_bytes(each * 3 - 1)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(shed, vec![trace_id(1), trace_id(2), trace_id(3)]);
    assert_eq!(buffer.pending_traces(), 7);
    buffer.debug_check_invariants();
    assert_eq!(buffer.evict_oldest_bytes(u64::MAX).len(), 7);
    assert_eq!((buffer.pending_traces(), buffer.buffered_bytes()), (0, 0));
}

type Earlier<'a> = std::pin::Pin<Box<tokio::sync::futures::Notified<'a>>>;

/// As a decision loop plans its sleep over `shards`: the wake-up it listens for, and when
/// it would wake.
fn plan<'a>(
    buffer: &'a TraceBuffer,
    shards: &[usize],
    not_before: Instant,
) -> (Earlier<'a>, Option<Instant>) {
    let mut earlier = Box::pin(buffer.earlier_deadline());
    earlier.as_mut().enable();
    let wake = buffer.plan_wake(shards, not_before);
    (earlier, wake)
}

/// Whether `earlier` has completed, without waiting.
fn woken(earlier: &mut Earlier<'_>) -> bool {
    use std::future::Future;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    earlier.as_mut().poll(&mut cx).is_ready()
}

#[tokio::test(start_paused = true)]
async fn a_loop_sleeps_until_the_first_deadline_and_only_an_earlier_one_wakes_it() {
    let buffer = TraceBuffer::new(
        BufferConfig {
            decision_wait_after_root_received: Duration::from_secs(2),
            ..config()
        },
        4,
    );
    let all: Vec<usize> = (0..4).collect();
    let t0 = Instant::now();
    // Empty: no wake planned, and the first trace wakes the loop.
    let (mut earlier, wake) = plan(&buffer, &all, t0);
    assert_eq!(wake, None);
    buffer.add(trace_id(1), chunk(1, &[1]).with(CHILD), None, t0, true);
    assert!(woken(&mut earlier));
    // Planned for the first deadline; a trace due later does not wake it.
    let (mut earlier, wake) = plan(&buffer, &all, t0);
    assert_eq!(wake, Some(t0 + Duration::from_secs(10)));
    tokio::time::advance(Duration::from_secs(1)).await;
    let t1 = Instant::now();
    buffer.add(trace_id(2), chunk(2, &[1]).with(CHILD), None, t1, true);
    assert!(!woken(&mut earlier));
    // A root span brings trace 2 forward to t1 + 2 s, before the planned wake: woken.
    buffer.add(trace_id(2), chunk(2, &[2]).with(ROOT), None, t1, true);
    assert!(woken(&mut earlier));
    let (mut earlier, wake) = plan(&buffer, &all, t0);
    assert_eq!(wake, Some(t1 + Duration::from_secs(2)));
    // Never before the time the loop gives (at most one look per tick).
    let later = t1 + Duration::from_secs(5);
    assert_eq!(buffer.plan_wake(&all, later), Some(later));
    // While the loop is looking, new keys do not wake it.
    buffer.awake(&all);
    buffer.add(trace_id(3), chunk(3, &[1]).with(ROOT), None, t1, true);
    assert!(!woken(&mut earlier));
}
