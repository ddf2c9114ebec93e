//! The worker's data path between receivers and exporters: validates and groups incoming
//! spans by trace, follows cached decisions for late spans, buffers the rest, decides due
//! traces with the policy set and hands kept traces to the exporters.
//!
//! Accounting invariant: every span `ingest` accepts is counted exactly once in
//! `tailgate_spans_decided{outcome}` (sampled, not_sampled, dropped, evicted, too_large,
//! shutdown) or is still in the buffer (`tailgate_buffered_spans`).

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use moka::sync::Cache;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use tokio::time::Instant;

use crate::buffer::{AddOutcome, ChunkFacts, TraceBuffer, TraceEntry};
use crate::exporter::ExporterSet;
use crate::otlp::{is_root, validate_ids, Chunk, Head, RequestBuilder, TraceId};
use crate::policy::{Batch, Decision, PolicySet, TraceView, Verdict};
use crate::telemetry::{self, Registry};

/// Largest export request the decision loop builds, in spans and in bytes.
const MAX_BATCH_SPANS: u64 = 8192;
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Why a request was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// Every span in the request was invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// The buffer or a sending queue is full; the sender should retry later.
    #[error("{0}")]
    Overloaded(&'static str),
}

/// What happened to an accepted request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ingested {
    pub accepted: u64,
    /// Invalid spans, reported to the client as OTLP partial success.
    pub rejected: u64,
    /// The first problem found, when `rejected > 0`.
    pub message: String,
}

/// A remembered decision, for late spans.
#[derive(Debug, Clone)]
struct Cached {
    decision: Decision,
    policy: Option<Arc<str>>,
    decided_at: Instant,
}

/// Where an accepted span ended.
struct Outcomes {
    /// By final decision, indexed by [`Decision::index`].
    decided: [Counter; 3],
    evicted: Counter,
    too_large: Counter,
    shutdown: Counter,
}

impl Outcomes {
    fn decided(&self, decision: Decision) -> &Counter {
        &self.decided[decision.index()]
    }
}

struct PolicyMetrics {
    traces: [Counter; 3],
    spans: [Counter; 3],
    executions: Counter,
    time_us: Counter,
}

struct Metrics {
    outcomes: Outcomes,
    processor_refused: Counter,
    new_traces: Counter,
    dropped_too_early: Counter,
    dropped_too_large: Counter,
    evaluation_errors: Counter,
    early_release_sampled: Counter,
    early_release_not_sampled: Counter,
    late_span_age: Histogram,
    global: [Counter; 3],
    policies: Vec<PolicyMetrics>,
    timer_latency: Histogram,
    removal_age: Histogram,
    lateness: Histogram,
    traces_on_memory: Gauge,
    buffered_spans: Gauge,
    buffered_bytes: Gauge,
}

impl Metrics {
    fn new(registry: &Registry, policies: &PolicySet) -> Self {
        let outcome = |o: &str| registry.counter(telemetry::SPANS_DECIDED, &[("outcome", o)]);
        let by_decision = |name: &'static str, policy: Option<&str>| {
            Decision::FINAL.map(|d| {
                let mut labels = vec![("sampled", d.sampled_label()), ("decision", d.label())];
                if let Some(p) = policy {
                    labels.insert(0, ("policy", p));
                }
                registry.counter(name, &labels)
            })
        };
        Self {
            outcomes: Outcomes {
                decided: Decision::FINAL.map(|d| outcome(d.label())),
                evicted: outcome("evicted"),
                too_large: outcome("too_large"),
                shutdown: outcome("shutdown"),
            },
            processor_refused: registry.counter(
                telemetry::PROCESSOR_REFUSED_SPANS,
                &[("processor", "tail_sampling")],
            ),
            new_traces: registry.counter(telemetry::TS_NEW_TRACE_ID_RECEIVED, &[]),
            dropped_too_early: registry.counter(telemetry::TS_TRACE_DROPPED_TOO_EARLY, &[]),
            dropped_too_large: registry.counter(telemetry::TS_TRACES_DROPPED_TOO_LARGE, &[]),
            evaluation_errors: registry.counter(telemetry::TS_POLICY_EVALUATION_ERROR, &[]),
            early_release_sampled: registry
                .counter(telemetry::TS_EARLY_RELEASES, &[("sampled", "true")]),
            early_release_not_sampled: registry
                .counter(telemetry::TS_EARLY_RELEASES, &[("sampled", "false")]),
            late_span_age: registry.histogram(telemetry::TS_LATE_SPAN_AGE, &[]),
            global: by_decision(telemetry::TS_GLOBAL_COUNT_TRACES_SAMPLED, None),
            policies: policies
                .policies()
                .iter()
                .map(|p| PolicyMetrics {
                    traces: by_decision(telemetry::TS_COUNT_TRACES_SAMPLED, Some(&p.name)),
                    spans: by_decision(telemetry::TS_COUNT_SPANS_SAMPLED, Some(&p.name)),
                    executions: registry
                        .counter(telemetry::TS_POLICY_EXECUTION_COUNT, &[("policy", &p.name)]),
                    time_us: registry.counter(
                        telemetry::TS_POLICY_EXECUTION_TIME_SUM,
                        &[("policy", &p.name)],
                    ),
                })
                .collect(),
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
    policies: PolicySet,
    sampled: Option<Cache<u128, Cached>>,
    not_sampled: Option<Cache<u128, Cached>>,
    exporters: ExporterSet,
    block_on_overflow: bool,
    metrics: Metrics,
}

fn cache(size: u64) -> Option<Cache<u128, Cached>> {
    (size > 0).then(|| Cache::builder().max_capacity(size).build())
}

impl Pipeline {
    pub fn new(
        buffer: TraceBuffer,
        policies: PolicySet,
        cache_sizes: (u64, u64),
        block_on_overflow: bool,
        exporters: ExporterSet,
        registry: &Registry,
    ) -> Self {
        Self {
            metrics: Metrics::new(registry, &policies),
            buffer,
            policies,
            sampled: cache(cache_sizes.0),
            not_sampled: cache(cache_sizes.1),
            exporters,
            block_on_overflow,
        }
    }

    pub fn buffer(&self) -> &TraceBuffer {
        &self.buffer
    }

    pub fn exporters(&self) -> &ExporterSet {
        &self.exporters
    }

    /// Takes one OTLP request. Invalid spans are rejected one by one (partial success);
    /// the request is refused whole when every span is invalid or when the worker is full.
    pub fn ingest(
        &self,
        request: ExportTraceServiceRequest,
        now: Instant,
    ) -> Result<Ingested, IngestError> {
        let mut total = 0u64;
        let mut rejected = 0u64;
        let mut message = String::new();
        for span in spans(&request.resource_spans) {
            total += 1;
            if let Err(e) = validate_ids(span) {
                if rejected == 0 {
                    message = format!("invalid span: {e}");
                }
                rejected += 1;
            }
        }
        if total > 0 && rejected == total {
            return Err(IngestError::InvalidArgument(message));
        }
        if self.exporters.is_full() {
            self.metrics.processor_refused.increment(total);
            return Err(IngestError::Overloaded("the sending queue is full"));
        }
        if self.block_on_overflow && self.buffer.is_full() {
            self.metrics.processor_refused.increment(total);
            return Err(IngestError::Overloaded("the trace buffer is full"));
        }
        let mut late = RequestBuilder::default();
        let mut keys: Vec<(TraceId, u32)> = Vec::new();
        for rs in &request.resource_spans {
            for ss in &rs.scope_spans {
                keys.clear();
                keys.extend(
                    ss.spans
                        .iter()
                        .enumerate()
                        .filter_map(|(i, s)| validate_ids(s).ok().map(|id| (id, i as u32))),
                );
                if keys.is_empty() {
                    continue;
                }
                keys.sort_unstable();
                let head = Head::new(
                    rs.resource.as_ref(),
                    &rs.schema_url,
                    ss.scope.as_ref(),
                    &ss.schema_url,
                );
                for group in keys.chunk_by(|a, b| a.0 == b.0) {
                    self.take_group(group, ss, &head, &mut late, now);
                }
            }
        }
        if !late.is_empty() {
            self.exporters.enqueue(late.take());
        }
        self.update_gauges();
        Ok(Ingested {
            accepted: total - rejected,
            rejected,
            message,
        })
    }

    /// Routes the spans of one trace from one `ScopeSpans`.
    fn take_group(
        &self,
        group: &[(TraceId, u32)],
        ss: &ScopeSpans,
        head: &Arc<Head>,
        late: &mut RequestBuilder,
        now: Instant,
    ) {
        let id = group[0].0;
        let members = group.iter().map(|(_, i)| &ss.spans[*i as usize]);
        let n = group.len() as u64;
        if let Some(cached) = self.cached(&id) {
            self.metrics.late_span_age.record(
                now.saturating_duration_since(cached.decided_at)
                    .as_secs_f64(),
            );
            self.metrics.outcomes.decided(cached.decision).increment(n);
            if cached.decision == Decision::Sampled {
                self.metrics.early_release_sampled.increment(n);
                late.push(&Chunk::encode(head.clone(), members));
                if late.span_count() >= MAX_BATCH_SPANS {
                    self.exporters.enqueue(late.take());
                }
            } else {
                self.metrics.early_release_not_sampled.increment(n);
            }
            return;
        }
        let facts = members.clone().fold(
            ChunkFacts {
                has_root: false,
                earliest_start: u64::MAX,
                latest_end: 0,
            },
            |f, s| ChunkFacts {
                has_root: f.has_root || is_root(s),
                earliest_start: f.earliest_start.min(s.start_time_unix_nano),
                latest_end: f.latest_end.max(s.end_time_unix_nano),
            },
        );
        let chunk = Chunk::encode(head.clone(), members);
        let AddOutcome {
            new_trace,
            too_large,
            evicted,
        } = self
            .buffer
            .add(id, chunk, facts, now, !self.block_on_overflow);
        if new_trace {
            self.metrics.new_traces.increment(1);
        }
        if let Some(entry) = too_large {
            self.metrics.dropped_too_large.increment(1);
            self.metrics.outcomes.too_large.increment(entry.span_count);
            self.remember(&id, Decision::NotSampled, None, now);
            self.metrics.removal_age.record(age(&entry, now));
        }
        for (_, entry) in evicted {
            self.metrics.dropped_too_early.increment(1);
            self.metrics.outcomes.evicted.increment(entry.span_count);
            self.metrics.removal_age.record(age(&entry, now));
        }
    }

    fn cached(&self, id: &TraceId) -> Option<Cached> {
        let key = u128::from_be_bytes(*id);
        self.sampled
            .as_ref()
            .and_then(|c| c.get(&key))
            .or_else(|| self.not_sampled.as_ref().and_then(|c| c.get(&key)))
    }

    fn remember(&self, id: &TraceId, decision: Decision, policy: Option<Arc<str>>, now: Instant) {
        let cache = if decision == Decision::Sampled {
            &self.sampled
        } else {
            &self.not_sampled
        };
        if let Some(cache) = cache {
            cache.insert(
                u128::from_be_bytes(*id),
                Cached {
                    decision,
                    policy,
                    decided_at: now,
                },
            );
        }
    }

    /// Decides every trace in timer shard `shard` that is due at `now`; returns how many.
    pub fn decide_due(&self, shard: usize, now: Instant) -> usize {
        let started = std::time::Instant::now();
        let mut due = Vec::new();
        self.buffer.take_due(shard, now, &mut due);
        let n = due.len();
        if n > 0 {
            self.decide_batch(due, now);
            self.metrics
                .timer_latency
                .record(started.elapsed().as_secs_f64() * 1000.0);
        }
        n
    }

    /// Empties the buffer at shutdown: decides every pending trace on what it has, or
    /// with `drop` counts its spans as dropped at shutdown.
    pub fn drain(&self, drop: bool, now: Instant) {
        let mut all = Vec::new();
        self.buffer.take_all(&mut all);
        if drop {
            for (_, entry) in &all {
                self.metrics.outcomes.shutdown.increment(entry.span_count);
            }
        } else {
            self.decide_batch(all, now);
        }
        self.update_gauges();
    }

    fn decide_batch(&self, due: Vec<(TraceId, TraceEntry)>, now: Instant) {
        let mut out = RequestBuilder::default();
        for (id, entry) in due {
            self.metrics.lateness.record(
                now.saturating_duration_since(entry.timer.deadline)
                    .as_secs_f64()
                    * 1000.0,
            );
            self.metrics.removal_age.record(age(&entry, now));
            // A trace whose id already has a decision (its spans raced the previous
            // decision into a new entry) follows that decision.
            let verdict = match self.cached(&id) {
                Some(c) => Verdict {
                    decision: c.decision,
                    policy: c.policy,
                    composite_policy: None,
                },
                None => self.evaluate(&id, &entry, now),
            };
            self.metrics.global[verdict.decision.index()].increment(1);
            self.metrics
                .outcomes
                .decided(verdict.decision)
                .increment(entry.span_count);
            if verdict.decision == Decision::Sampled {
                for chunk in &entry.chunks {
                    out.push(chunk);
                }
                if out.span_count() >= MAX_BATCH_SPANS || out.encoded_len() >= MAX_BATCH_BYTES {
                    self.exporters.enqueue(out.take());
                }
            }
            self.remember(&id, verdict.decision, verdict.policy, now);
        }
        if !out.is_empty() {
            self.exporters.enqueue(out.take());
        }
        self.update_gauges();
    }

    fn evaluate(&self, id: &TraceId, entry: &TraceEntry, now: Instant) -> Verdict {
        let batches = if self.policies.needs_spans() {
            entry
                .chunks
                .iter()
                .map(|c| {
                    c.decode().map(|(resource_attributes, scope_spans)| Batch {
                        resource_attributes,
                        scope_spans,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .inspect_err(|e| tracing::error!(error = %e, "buffered spans do not decode"))
                .ok()
        } else {
            Some(Vec::new())
        };
        let view = TraceView {
            trace_id: id,
            span_count: entry.span_count,
            bytes: entry.bytes,
            earliest_start: entry.earliest_start,
            latest_end: entry.latest_end,
            batches: batches.as_deref(),
            now,
        };
        self.policies.decide(&view, |vote| {
            let m = &self.metrics.policies[vote.policy_index];
            m.executions.increment(1);
            m.time_us.increment(vote.elapsed.as_micros() as u64);
            match vote.decision {
                Ok(d) => {
                    m.traces[d.index()].increment(1);
                    m.spans[d.index()].increment(entry.span_count);
                }
                Err(_) => self.metrics.evaluation_errors.increment(1),
            }
        })
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

fn age(entry: &TraceEntry, now: Instant) -> f64 {
    now.saturating_duration_since(entry.first_arrival)
        .as_secs_f64()
}

fn spans(
    rs: &[ResourceSpans],
) -> impl Iterator<Item = &opentelemetry_proto::tonic::trace::v1::Span> {
    rs.iter()
        .flat_map(|r| r.scope_spans.iter())
        .flat_map(|s| s.spans.iter())
}

/// How often deciders look for due traces; the bound on decision lateness under normal
/// load.
pub const DECISION_TICK: Duration = Duration::from_millis(10);
