//! The worker's data path between receivers and exporters: validates and groups incoming
//! spans by trace, follows cached decisions for late spans, buffers the rest, decides due
//! traces with the policy set and hands kept traces to the exporters.
//!
//! With `membership`, the spans of a trace this worker does not hold may go to another
//! worker instead ([`Fleet::place`]); the trace's lock stripe is held from that question
//! until the spans are buffered.
//!
//! With a log ([`Durable`]), a request is written to it before its spans go anywhere,
//! decisions are recorded before the traces' pins are let go, and kept spans leave with a
//! settlement that records their export once it is done; at start, [`Pipeline::replay`]
//! takes the log's requests back.
//!
//! Accounting invariant: every span `ingest` accepts or `replay` takes back is counted
//! exactly once in `tailgate_spans_decided{outcome}` (sampled, not_sampled, dropped,
//! evicted, too_large, shutdown, relayed) or is still in the buffer
//! (`tailgate_buffered_spans`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use tokio::time::Instant;

use super::decider::Decider;
use super::durable::{unix_nanos, Durable, History, Logged};
use crate::buffer::{AddOutcome, ChunkFacts, Epoch, NewChunk, TraceBuffer, TraceEntry};
use crate::cache::Lru;
use crate::exporter::ExporterSet;
use crate::membership::fleet::{Fleet, Peer, Place};
use crate::memory_limiter::Shed;
use crate::otlp::tracestate;
use crate::otlp::view::SpanView;
use crate::otlp::{EncodedRequest, GroupedRequest, Head, TraceId};
use crate::policy::{AttributeMatches, Chance, Decision, PolicySet, StatusCodes, Verdict};
use crate::receiver::{check_ids, Ingest, IngestError, Ingested, Payload, Relay, RelayKind};
use crate::spanmetrics::SpanMetrics;
use crate::storage::{Appended, Pin, StorageError};
use crate::telemetry::{self, Format, MetricsSource, Registry};

/// Largest export request the decision loop builds, in spans and in bytes.
const MAX_BATCH_SPANS: u64 = 8192;
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How long a decision loop's kept spans wait for more before they are sent (the batch
/// processor's default timeout; a collector's tail sampling is usually followed by one).
/// Without it, each look at due traces would send the few it kept as a request of their own.
pub const EXPORT_BATCH_TIMEOUT: Duration = Duration::from_millis(200);

/// A remembered decision, for late spans.
#[derive(Debug, Clone)]
struct Cached {
    decision: Decision,
    policy: Option<Arc<str>>,
    chance: Chance,
    decided_at: Instant,
    /// With a log, where the decision is recorded: late spans' exports pin it.
    recorded: Option<u64>,
}

impl Cached {
    fn verdict(self) -> Verdict {
        Verdict {
            decision: self.decision,
            policy: self.policy,
            composite_policy: None,
            chance: self.chance,
        }
    }
}

/// Where an accepted span ended.
struct Outcomes {
    /// By final decision, indexed by [`Decision::index`].
    decided: [Counter; 3],
    evicted: Counter,
    too_large: Counter,
    shutdown: Counter,
    /// Handed to another worker (membership).
    relayed: Counter,
}

impl Outcomes {
    fn decided(&self, decision: Decision) -> &Counter {
        &self.decided[decision.index()]
    }
}

struct Metrics {
    outcomes: Outcomes,
    processor_refused: Counter,
    malformed_tracestate: Counter,
    new_traces: Counter,
    dropped_too_early: Counter,
    dropped_too_large: Counter,
    early_release_sampled: Counter,
    early_release_not_sampled: Counter,
    late_span_age: Histogram,
    global: [Counter; 3],
    timer_latency: Histogram,
    removal_age: Histogram,
    lateness: Histogram,
    traces_on_memory: Gauge,
    buffered_spans: Gauge,
    buffered_bytes: Gauge,
}

impl Metrics {
    fn new(registry: &Registry) -> Self {
        let outcome = |o: &str| registry.counter(telemetry::SPANS_DECIDED, &[("outcome", o)]);
        Self {
            outcomes: Outcomes {
                decided: Decision::FINAL.map(|d| outcome(d.label())),
                evicted: outcome("evicted"),
                too_large: outcome("too_large"),
                shutdown: outcome("shutdown"),
                relayed: outcome("relayed"),
            },
            processor_refused: registry.counter(
                telemetry::PROCESSOR_REFUSED_SPANS,
                &[("processor", "tail_sampling")],
            ),
            malformed_tracestate: registry.counter(telemetry::TRACESTATE_MALFORMED_SPANS, &[]),
            new_traces: registry.counter(telemetry::TS_NEW_TRACE_ID_RECEIVED, &[]),
            dropped_too_early: registry.counter(telemetry::TS_TRACE_DROPPED_TOO_EARLY, &[]),
            dropped_too_large: registry.counter(telemetry::TS_TRACES_DROPPED_TOO_LARGE, &[]),
            early_release_sampled: registry
                .counter(telemetry::TS_EARLY_RELEASES, &[("sampled", "true")]),
            early_release_not_sampled: registry
                .counter(telemetry::TS_EARLY_RELEASES, &[("sampled", "false")]),
            late_span_age: registry.histogram(telemetry::TS_LATE_SPAN_AGE, &[]),
            global: Decision::FINAL.map(|d| {
                registry.counter(
                    telemetry::TS_GLOBAL_COUNT_TRACES_SAMPLED,
                    &[("sampled", d.sampled_label()), ("decision", d.label())],
                )
            }),
            timer_latency: registry.histogram(telemetry::TS_DECISION_TIMER_LATENCY, &[]),
            removal_age: registry.histogram(telemetry::TS_TRACE_REMOVAL_AGE, &[]),
            lateness: registry.histogram(telemetry::DECISION_LATENESS, &[]),
            traces_on_memory: registry.gauge(telemetry::TS_TRACES_ON_MEMORY, &[]),
            buffered_spans: registry.gauge(telemetry::BUFFERED_SPANS, &[]),
            buffered_bytes: registry.gauge(telemetry::BUFFERED_BYTES, &[]),
        }
    }
}

pub struct Pipeline {
    buffer: TraceBuffer,
    decider: Decider,
    span_metrics: Option<SpanMetrics>,
    sampled: Option<Lru<TraceId, Cached>>,
    not_sampled: Option<Lru<TraceId, Cached>>,
    exporters: ExporterSet,
    fleet: Option<Arc<Fleet>>,
    durable: Option<Arc<Durable>>,
    block_on_overflow: bool,
    /// Kept spans carry their trace's sampling threshold (not in a dry run, which keeps all).
    thresholds: bool,
    metrics: Metrics,
}

/// One request's spans for other workers, by peer and relay kind.
type Relayed = Vec<(Arc<Peer>, RelayKind, Kept)>;

fn cache(size: u64) -> Option<Lru<TraceId, Cached>> {
    (size > 0).then(|| Lru::new(size))
}

/// The decision-related settings of `tail_sampling`.
#[derive(Debug, Clone)]
pub struct DecisionSettings {
    pub policies: PolicySet,
    pub sampled_cache_size: u64,
    pub non_sampled_cache_size: u64,
    pub block_on_overflow: bool,
    pub record_policy: bool,
    pub dry_run: bool,
    /// Write each kept span's sampling threshold into its tracestate.
    pub write_thresholds: bool,
}

impl Ingest for Pipeline {
    /// Takes one OTLP request. Invalid spans are rejected one by one (partial success);
    /// the request is refused whole when every span is invalid or when the worker is full.
    fn ingest(
        &self,
        request: Payload,
        relay: Option<&Relay>,
        now: Instant,
    ) -> Result<Ingested, IngestError> {
        let request = request.scan()?;
        let checked = check_ids(&request)?;
        let total = checked.accepted + checked.rejected;
        if self.exporters.is_full() {
            self.metrics.processor_refused.increment(total);
            return Err(IngestError::Overloaded("the sending queue is full"));
        }
        let relay = match &self.fleet {
            Some(fleet) if fleet.is_full() => {
                self.metrics.processor_refused.increment(total);
                return Err(IngestError::Overloaded(
                    "a peer worker's sending queue is full",
                ));
            }
            Some(fleet) => fleet.trust(relay, now),
            None => None,
        };
        if self.block_on_overflow && self.buffer.is_full() {
            self.metrics.processor_refused.increment(total);
            return Err(IngestError::Overloaded("the trace buffer is full"));
        }
        let logged = match &self.durable {
            Some(durable) => match durable.log_request(request.bytes(), unix_nanos()) {
                Ok(appended) => Some(appended),
                Err(e) => {
                    self.metrics.processor_refused.increment(total);
                    return Err(match e {
                        StorageError::Full { .. } => IngestError::Overloaded("the storage is full"),
                        e => {
                            tracing::warn!(error = %e, "cannot write to the storage");
                            IngestError::Unavailable("the storage cannot be written")
                        }
                    });
                }
            },
            None => None,
        };
        let spans: Vec<SpanView<'_>> = request.spans.iter().map(|s| request.view(s)).collect();
        // A relayed request's spans were counted by the worker that first accepted them.
        if let (Some(sm), None) = (&self.span_metrics, relay) {
            sm.record(&request, &spans, now);
        }
        let mut late = Kept::default();
        let mut relayed: Relayed = Vec::new();
        let mut keys: Vec<(TraceId, u32)> = Vec::new();
        let policies = self.decider.policies();
        for scope in &request.scopes {
            let spans = &spans[scope.spans.clone()];
            let arrived_in = ArrivedIn::new(&scope.head, &policies);
            let by_trace = |_: &_, id: &TraceId| Ok::<_, Infallible>(Some(*id));
            let Ok(()) = request.group_scope(scope, &mut keys, by_trace, |id, group| {
                let members = group.iter().map(|(_, i)| &spans[*i as usize]);
                let bytes = request.framed_group(scope, group);
                let out = Out {
                    late: &mut late,
                    relayed: &mut relayed,
                    relay,
                    logged: logged.as_ref(),
                };
                self.take_group(id, members, bytes, arrived_in, out, now)
            });
        }
        if !late.request.is_empty() {
            self.exporters.enqueue(late.take(self.durable.as_deref()));
        }
        for (peer, kind, mut share) in relayed {
            peer.send(kind, share.take(self.durable.as_deref()));
        }
        self.update_gauges();
        Ok(checked)
    }
}

impl MetricsSource for Pipeline {
    fn render(&self, out: &mut String, format: Format) {
        if let Some(sm) = &self.span_metrics {
            sm.render(out, format, &|id| self.was_kept(id));
        }
    }
}

impl Pipeline {
    pub fn new(
        buffer: TraceBuffer,
        settings: DecisionSettings,
        exporters: ExporterSet,
        registry: &Registry,
    ) -> Self {
        Self {
            metrics: Metrics::new(registry),
            buffer,
            decider: Decider::new(
                settings.policies,
                settings.record_policy,
                settings.dry_run,
                registry,
            ),
            span_metrics: None,
            sampled: cache(settings.sampled_cache_size),
            not_sampled: cache(settings.non_sampled_cache_size),
            exporters,
            fleet: None,
            durable: None,
            block_on_overflow: settings.block_on_overflow,
            thresholds: settings.write_thresholds && !settings.dry_run,
        }
    }

    /// Counts spans that were handed back to be decided here and could not be before
    /// shutdown.
    pub fn abandoned_at_shutdown(&self, spans: u64) {
        self.metrics.outcomes.shutdown.increment(spans);
    }

    /// Shares traces with the other workers of `fleet`.
    pub fn with_fleet(mut self, fleet: Arc<Fleet>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Writes every request to `durable` before taking it.
    pub fn with_durable(mut self, durable: Arc<Durable>) -> Self {
        self.durable = Some(durable);
        self
    }

    /// Counts every accepted span into span metrics, before buffering.
    pub fn with_span_metrics(mut self, span_metrics: SpanMetrics) -> Self {
        self.span_metrics = Some(span_metrics);
        self
    }

    /// Whether the trace was kept, as far as the sampled decision cache remembers.
    pub fn was_kept(&self, id: &TraceId) -> bool {
        self.sampled.as_ref().and_then(|c| c.peek(id)).is_some()
    }

    /// Decides pending and future traces with `policies` (hot reload).
    pub fn replace_policies(&self, policies: PolicySet) {
        self.decider.replace(policies);
    }

    /// Counts a policy reload that failed and kept the current policies.
    pub fn policy_reload_failed(&self) {
        self.decider.reload_failed();
    }

    pub fn buffer(&self) -> &TraceBuffer {
        &self.buffer
    }

    pub fn exporters(&self) -> &ExporterSet {
        &self.exporters
    }

    /// Routes the spans of one trace from one `ScopeSpans`, given read in place and as
    /// received.
    fn take_group<'a>(
        &self,
        id: TraceId,
        members: impl Iterator<Item = &'a SpanView<'a>> + Clone,
        bytes: impl Iterator<Item = &'a [u8]> + Clone,
        scope: ArrivedIn<'_>,
        out: Out<'_>,
        now: Instant,
    ) {
        let head = scope.head;
        let n = members.clone().count() as u64;
        // Held until the spans are buffered: see the module comment.
        let _stripe = self.fleet.as_ref().map(|f| f.lock(&id));
        // A pending trace's spans join it without a look in the decision caches (most
        // groups are of pending traces). Should its id also have a decision (its spans
        // raced one into a new entry), the entry is marked raced and follows that decision
        // when it is decided.
        let seen = self.buffer.epoch();
        let pending = self.buffer.holds(&id);
        let cached = if pending { None } else { self.cached(&id) };
        if let Some(fleet) = &self.fleet {
            let holds = pending || cached.is_some();
            if let Place::Peer(peer, kind, reason) = fleet.place(&id, holds, out.relay, now) {
                fleet.relayed(kind, reason, n);
                self.metrics.outcomes.relayed.increment(n);
                let share = match out
                    .relayed
                    .iter()
                    .position(|(p, k, _)| Arc::ptr_eq(p, &peer) && *k == kind)
                {
                    Some(i) => &mut out.relayed[i].2,
                    None => {
                        out.relayed.push((peer, kind, Kept::default()));
                        &mut out.relayed.last_mut().expect("just pushed").2
                    }
                };
                share.request.push_counted(head, &[], bytes, n);
                // With a log, the request stays on disk until the peer has the spans, and
                // is then recorded as settled for this trace (not to be taken back).
                if let Some(logged) = out.logged {
                    share.traces.push((id, logged.seq));
                    share.pins.push(logged.pin.clone());
                }
                return;
            }
        }
        if let Some(cached) = cached {
            self.metrics.late_span_age.record(
                now.saturating_duration_since(cached.decided_at)
                    .as_secs_f64(),
            );
            if cached.decision == Decision::Sampled {
                self.metrics.early_release_sampled.increment(n);
            } else {
                self.metrics.early_release_not_sampled.increment(n);
            }
            let recorded = cached.recorded;
            let spans = Spans { head, bytes, n };
            self.follow(out.late, id, &cached.verdict(), recorded, spans, out.logged);
            return;
        }
        let arrival = Arrival {
            now,
            logged: out.logged,
            seen,
        };
        self.buffer_group(id, members, bytes, scope, arrival);
    }

    /// Spans of a decided trace follow its decision: to the exporters when it was kept
    /// (with a log, pinned at the decision's record), otherwise counted.
    fn follow<'a>(
        &self,
        late: &mut Kept,
        id: TraceId,
        verdict: &Verdict,
        recorded: Option<u64>,
        spans: Spans<'_, impl Iterator<Item = &'a [u8]> + Clone>,
        logged: Option<&Appended>,
    ) {
        if !self.decider.exports(verdict.decision) {
            self.metrics
                .outcomes
                .decided(verdict.decision)
                .increment(spans.n);
            return;
        }
        self.metrics
            .outcomes
            .decided(Decision::Sampled)
            .increment(spans.n);
        let annotation = self.decider.annotation(verdict, true).unwrap_or_default();
        self.push_kept(&mut late.request, spans, &annotation, verdict);
        if let (Some(durable), Some(logged)) = (&self.durable, logged) {
            late.traces.push((id, logged.seq));
            late.pins
                .push(recorded.map_or_else(|| logged.pin.clone(), |seq| durable.pin(seq)));
        }
        if late.request.span_count() >= MAX_BATCH_SPANS {
            self.exporters.enqueue(late.take(self.durable.as_deref()));
        }
    }

    /// Buffers spans of a trace not decided yet.
    fn buffer_group<'a>(
        &self,
        id: TraceId,
        members: impl Iterator<Item = &'a SpanView<'a>> + Clone,
        bytes: impl Iterator<Item = &'a [u8]> + Clone,
        scope: ArrivedIn<'_>,
        arrival: Arrival<'_>,
    ) {
        let Arrival { now, logged, seen } = arrival;
        let facts = members.clone().fold(
            ChunkFacts {
                has_root: false,
                earliest_start: u64::MAX,
                latest_end: 0,
                status_codes: StatusCodes::NONE,
                rv: None,
                attributes: scope.matches(members.clone()),
            },
            |f, s| ChunkFacts {
                has_root: f.has_root || s.is_root(),
                earliest_start: f.earliest_start.min(s.start_time_unix_nano),
                latest_end: f.latest_end.max(s.end_time_unix_nano),
                status_codes: f.status_codes.with(s.status_code),
                rv: f.rv.or_else(|| self.randomness_of(s)),
                attributes: f.attributes,
            },
        );
        let chunk = NewChunk {
            head: scope.head,
            spans: bytes,
            facts,
            seen,
        };
        let AddOutcome {
            new_trace,
            too_large,
            evicted,
        } = self
            .buffer
            .add(id, chunk, logged, now, !self.block_on_overflow);
        if new_trace {
            self.metrics.new_traces.increment(1);
        }
        if let Some((entry, deciding)) = too_large {
            self.metrics.dropped_too_large.increment(1);
            self.metrics.outcomes.too_large.increment(entry.span_count);
            let dropped = Verdict {
                decision: Decision::NotSampled,
                policy: None,
                composite_policy: None,
                chance: Chance::Unknown,
            };
            self.remember(&id, &dropped, now, None);
            drop(deciding);
            self.metrics.removal_age.record(age(&entry, now));
        }
        self.count_evicted(&evicted, now);
    }

    /// Counts traces evicted before their decision.
    fn count_evicted(&self, evicted: &[(TraceId, TraceEntry)], now: Instant) {
        for (_, entry) in evicted {
            self.metrics.dropped_too_early.increment(1);
            self.metrics.outcomes.evicted.increment(entry.span_count);
            self.metrics.removal_age.record(age(entry, now));
        }
    }

    fn cached(&self, id: &TraceId) -> Option<Cached> {
        self.sampled
            .as_ref()
            .and_then(|c| c.get(id))
            .or_else(|| self.not_sampled.as_ref().and_then(|c| c.get(id)))
    }

    /// A span's `rv`, reading its tracestate only when it has one; malformed `th` or `rv`
    /// values are counted and ignored.
    fn randomness_of(&self, span: &SpanView<'_>) -> Option<u64> {
        let state = span.trace_state();
        if state.is_empty() {
            return None;
        }
        let sampling = tracestate::read(state);
        if sampling.malformed {
            self.metrics.malformed_tracestate.increment(1);
        }
        sampling.randomness
    }

    /// Adds kept `spans` to `out`, each with its trace's sampling threshold when
    /// thresholds are written.
    fn push_kept<'a>(
        &self,
        out: &mut GroupedRequest,
        spans: Spans<'_, impl Iterator<Item = &'a [u8]>>,
        annotation: &[u8],
        verdict: &Verdict,
    ) {
        if self.thresholds && verdict.decision == Decision::Sampled {
            let chance = verdict.chance;
            out.push_with_thresholds(spans.head, annotation, spans.bytes, |incoming| {
                chance.threshold_after(incoming)
            });
        } else {
            out.push_counted(spans.head, annotation, spans.bytes, spans.n);
        }
    }

    fn remember(&self, id: &TraceId, verdict: &Verdict, now: Instant, recorded: Option<u64>) {
        let decision = verdict.decision;
        let cache = if decision == Decision::Sampled {
            &self.sampled
        } else {
            &self.not_sampled
        };
        if let Some(cache) = cache {
            cache.insert(
                *id,
                Cached {
                    decision,
                    policy: verdict.policy.clone(),
                    chance: verdict.chance,
                    decided_at: now,
                    recorded,
                },
            );
        }
    }

    /// Decides every trace in the timer shards `shards` that is due at `now`, kept spans
    /// going into `kept`, which is sent when full or [`EXPORT_BATCH_TIMEOUT`] after its first
    /// span; returns how many traces were decided.
    pub fn decide_due(&self, shards: &[usize], now: Instant, kept: &mut Kept) -> usize {
        let started = std::time::Instant::now();
        let mut due = Vec::new();
        let deciding = self.buffer.deciding();
        for &shard in shards {
            self.buffer.take_due(&deciding, shard, now, &mut due);
        }
        let n = due.len();
        if n > 0 {
            self.decide_batch(due, now, kept);
            self.metrics
                .timer_latency
                .record(started.elapsed().as_secs_f64() * 1000.0);
        }
        drop(deciding);
        if kept
            .since
            .is_some_and(|since| now.saturating_duration_since(since) >= EXPORT_BATCH_TIMEOUT)
        {
            self.send_kept(kept);
        }
        n
    }

    /// Sends the spans in `kept` to the exporters now.
    pub fn send_kept(&self, kept: &mut Kept) {
        if !kept.request.is_empty() {
            self.exporters.enqueue(kept.take(self.durable.as_deref()));
        }
    }

    /// Empties the buffer at shutdown: decides every pending trace on what it has, or
    /// with `drop` counts its spans as dropped at shutdown.
    pub fn drain(&self, drop: bool, now: Instant) {
        let mut all = Vec::new();
        let deciding = self.buffer.deciding();
        self.buffer.take_all(&deciding, &mut all);
        if drop {
            for (_, entry) in &all {
                self.metrics.outcomes.shutdown.increment(entry.span_count);
            }
        } else {
            let mut kept = Kept::default();
            self.decide_batch(all, now, &mut kept);
            self.send_kept(&mut kept);
        }
        self.update_gauges();
    }

    fn decide_batch(&self, due: Vec<(TraceId, TraceEntry)>, now: Instant, out: &mut Kept) {
        let fleet_size = self.fleet.as_ref().map_or(1, |f| f.size());
        let decided: Vec<(TraceId, TraceEntry, Verdict)> = due
            .into_iter()
            .map(|(id, entry)| {
                // A trace whose id may already have a decision (its spans raced the
                // previous decision into a new entry) follows that decision.
                let earlier = if entry.raced { self.cached(&id) } else { None };
                let verdict = match earlier {
                    Some(c) => c.verdict(),
                    None => self.decider.decide(&id, &entry, fleet_size, now),
                };
                (id, entry, verdict)
            })
            .collect();
        // Recorded before the traces' pins are let go: from here on the log may lose
        // their spans.
        let recorded = self
            .durable
            .as_ref()
            .and_then(|d| d.log_decisions(decided.iter().map(|(id, _, v)| (id, v))));
        for (id, entry, verdict) in decided {
            self.metrics.lateness.record(
                now.saturating_duration_since(entry.timer.deadline)
                    .as_secs_f64(),
            );
            self.metrics.removal_age.record(age(&entry, now));
            self.metrics.global[verdict.decision.index()].increment(1);
            if self.decider.exports(verdict.decision) {
                self.metrics
                    .outcomes
                    .decided(Decision::Sampled)
                    .increment(entry.span_count);
                let annotation = self.decider.annotation(&verdict, false).unwrap_or_default();
                out.since.get_or_insert(now);
                for chunk in entry.spans.chunks() {
                    let spans = Spans {
                        head: chunk.head,
                        bytes: std::iter::once(chunk.spans),
                        n: u64::from(chunk.span_count),
                    };
                    self.push_kept(&mut out.request, spans, &annotation, &verdict);
                }
                if let Some(logged) = entry.logged {
                    out.traces.push((id, logged.seq));
                    out.pins.push(logged.pin);
                }
                if out.request.span_count() >= MAX_BATCH_SPANS
                    || out.request.encoded_len() >= MAX_BATCH_BYTES
                {
                    self.exporters.enqueue(out.take(self.durable.as_deref()));
                }
            } else {
                self.metrics
                    .outcomes
                    .decided(verdict.decision)
                    .increment(entry.span_count);
            }
            self.remember(&id, &verdict, now, recorded);
        }
        self.update_gauges();
    }

    /// Takes back, at start, a request from the log, written `logged.arrival_unix_nanos`
    /// ago: per trace, its spans are done with when `history` says their export was
    /// settled or their trace dropped; exported when it was kept; otherwise buffered as
    /// if they arrived then. Returns the spans taken back, counted as replayed.
    pub fn replay(&self, logged: Logged, history: &History, now: Instant) -> u64 {
        let Some(durable) = self.durable.clone() else {
            return 0;
        };
        let Ok(request) = Payload::Protobuf(logged.bytes).scan() else {
            return 0;
        };
        let age = Duration::from_nanos(unix_nanos().saturating_sub(logged.arrival_unix_nanos));
        let arrived = now.checked_sub(age).unwrap_or(now);
        let appended = Appended {
            seq: logged.seq,
            pin: durable.pin(logged.seq),
        };
        let spans: Vec<SpanView<'_>> = request.spans.iter().map(|s| request.view(s)).collect();
        let policies = self.decider.policies();
        let mut kept = Kept::default();
        let mut taken = 0;
        let mut keys: Vec<(TraceId, u32)> = Vec::new();
        for scope in &request.scopes {
            let spans = &spans[scope.spans.clone()];
            let arrived_in = ArrivedIn::new(&scope.head, &policies);
            let by_trace = |_: &_, id: &TraceId| Ok::<_, Infallible>(Some(*id));
            let Ok(()) = request.group_scope(scope, &mut keys, by_trace, |id, group| {
                if history.settled.get(&id).is_some_and(|&s| s >= logged.seq) {
                    return;
                }
                let members = group.iter().map(|(_, i)| &spans[*i as usize]);
                let bytes = request.framed_group(scope, group);
                let n = members.clone().count() as u64;
                match history.decided.get(&id) {
                    Some((verdict, _)) if !self.decider.exports(verdict.decision) => return,
                    Some((verdict, recorded)) => {
                        let spans = Spans {
                            head: &scope.head,
                            bytes,
                            n,
                        };
                        self.follow(
                            &mut kept,
                            id,
                            verdict,
                            Some(*recorded),
                            spans,
                            Some(&appended),
                        );
                    }
                    None => {
                        let arrival = Arrival {
                            now: arrived,
                            logged: Some(&appended),
                            seen: Epoch::UNCHECKED,
                        };
                        self.buffer_group(id, members, bytes, arrived_in, arrival)
                    }
                }
                taken += n;
            });
        }
        if !kept.request.is_empty() {
            self.exporters.enqueue(kept.take(Some(&durable)));
        }
        durable.replayed_spans.increment(taken);
        self.update_gauges();
        taken
    }

    /// Rebuilds the decision caches from the log's decisions.
    pub fn remember_history(&self, history: &History, now: Instant) {
        for (id, (verdict, recorded)) in &history.decided {
            self.remember(id, verdict, now, Some(*recorded));
        }
    }

    fn update_gauges(&self) {
        self.metrics
            .traces_on_memory
            .set(self.buffer.pending_traces() as f64);
        self.metrics
            .buffered_spans
            .set(self.buffer.buffered_spans() as f64);
        self.metrics
            .buffered_bytes
            .set(self.buffer.buffered_bytes() as f64);
    }
}

/// Where one request's spans that are not buffered go.
struct Out<'a> {
    /// Late spans of traces kept earlier, for the exporters.
    late: &'a mut Kept,
    /// Spans for other workers.
    relayed: &'a mut Relayed,
    /// The request's relay marks, when trusted.
    relay: Option<&'a Relay>,
    /// The request's record in the log.
    logged: Option<&'a Appended>,
}

/// One trace's spans from one `ScopeSpans`: their head, the spans framed (a piece may hold
/// several), how many.
/// When spans to be buffered arrived, their request's record in the log, and the
/// buffer's [`Epoch`] read before their trace was looked for.
struct Arrival<'a> {
    now: Instant,
    logged: Option<&'a Appended>,
    seen: Epoch,
}

/// The `ScopeSpans` spans arrived in: its head, the policy set they are matched against,
/// and the set's attribute conditions its resource meets (looked up once per scope).
#[derive(Clone, Copy)]
struct ArrivedIn<'a> {
    head: &'a Arc<Head>,
    policies: &'a PolicySet,
    resource: AttributeMatches,
}

impl<'a> ArrivedIn<'a> {
    fn new(head: &'a Arc<Head>, policies: &'a PolicySet) -> Self {
        ArrivedIn {
            head,
            policies,
            resource: policies.resource_matches(&head.resource_attributes()),
        }
    }

    /// The attribute conditions the resource or some of `spans` meet.
    fn matches<'s>(
        &self,
        spans: impl Iterator<Item = &'s SpanView<'s>> + Clone,
    ) -> AttributeMatches {
        let spans = self.policies.span_matches(spans.map(SpanView::attributes));
        self.resource.union(spans)
    }
}

struct Spans<'h, I> {
    head: &'h Head,
    bytes: I,
    n: u64,
}

/// Spans on their way to the exporters (or to a peer) and, with a log, what their sending
/// settles: per trace, the last request whose spans are in it, and pins keeping those
/// requests on disk until then.
#[derive(Default)]
pub struct Kept {
    request: GroupedRequest,
    traces: Vec<(TraceId, u64)>,
    pins: Vec<Pin>,
    /// When a decision loop's batch got its first span.
    since: Option<Instant>,
}

impl Kept {
    /// When the spans gathered are due to be sent, if there are any.
    pub fn send_at(&self) -> Option<Instant> {
        self.since.map(|since| since + EXPORT_BATCH_TIMEOUT)
    }

    /// The export request, carrying its settlement when there is a log.
    fn take(&mut self, durable: Option<&Durable>) -> EncodedRequest {
        let mut request = self.request.take();
        self.since = None;
        if let (Some(durable), false) = (durable, self.traces.is_empty()) {
            request.settlement =
                Some(durable.settlement(&self.traces, std::mem::take(&mut self.pins)));
            self.traces.clear();
        }
        request
    }
}

fn age(entry: &TraceEntry, now: Instant) -> f64 {
    now.saturating_duration_since(entry.first_arrival)
        .as_secs_f64()
}

/// The least time between two looks of a decision loop at its due traces; the bound on
/// decision lateness under normal load.
pub const DECISION_TICK: Duration = Duration::from_millis(10);

/// Above the hard memory limit the memory limiter evicts the oldest pending traces,
/// counted as any eviction is.
impl Shed for Pipeline {
    fn shed_oldest(&self, bytes: u64) -> u64 {
        let evicted = self.buffer.evict_oldest_bytes(bytes);
        self.count_evicted(&evicted, Instant::now());
        evicted.len() as u64
    }
}
