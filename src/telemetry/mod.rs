//! Self-telemetry: every metric name (the collector's where one exists), one Prometheus
//! registry per process instance, and the admin listener serving `/metrics`, `/healthz`
//! and `/readyz`.
//!
//! Each worker owns its [`Registry`] rather than using the `metrics` global recorder, so
//! several workers in one process (local mode, tests) keep separate books. Handles are
//! registered once at start-up and only incremented on the hot path; labels are bounded
//! (component names, policy names, fixed outcome sets), never ids or error strings.

mod admin;
mod format;

use std::sync::Arc;

use metrics::{
    Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

pub use admin::{
    merge_families, openmetrics_families, take_health_check, take_prometheus_exporter, Admin,
    AdminConfig, Health, HealthCheckConfig, MetricsSource, PrometheusExporterConfig,
};
pub use format::Format;

/// Logs to stderr for a binary of the project (the service and the tools), at `info`
/// unless `RUST_LOG` says otherwise.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

pub const RECEIVER_ACCEPTED_SPANS: &str = "otelcol_receiver_accepted_spans";
pub const RECEIVER_REFUSED_SPANS: &str = "otelcol_receiver_refused_spans";
pub const PROCESSOR_REFUSED_SPANS: &str = "otelcol_processor_refused_spans";
pub const EXPORTER_SENT_SPANS: &str = "otelcol_exporter_sent_spans";
pub const EXPORTER_SEND_FAILED_SPANS: &str = "otelcol_exporter_send_failed_spans";
pub const EXPORTER_ENQUEUE_FAILED_SPANS: &str = "otelcol_exporter_enqueue_failed_spans";
pub const EXPORTER_QUEUE_SIZE: &str = "otelcol_exporter_queue_size";
pub const EXPORTER_QUEUE_CAPACITY: &str = "otelcol_exporter_queue_capacity";
pub const EXPORTER_QUEUE_SPILLED: &str = "tailgate_exporter_queue_spilled_requests";

pub const TS_COUNT_TRACES_SAMPLED: &str = "otelcol_processor_tail_sampling_count_traces_sampled";
pub const TS_COUNT_SPANS_SAMPLED: &str = "otelcol_processor_tail_sampling_count_spans_sampled";
pub const TS_GLOBAL_COUNT_TRACES_SAMPLED: &str =
    "otelcol_processor_tail_sampling_global_count_traces_sampled";
pub const TS_EARLY_RELEASES: &str =
    "otelcol_processor_tail_sampling_early_releases_from_cache_decision";
pub const TS_NEW_TRACE_ID_RECEIVED: &str = "otelcol_processor_tail_sampling_new_trace_id_received";
pub const TS_DECISION_TIMER_LATENCY: &str =
    "otelcol_processor_tail_sampling_sampling_decision_timer_latency";
pub const TS_POLICY_EXECUTION_COUNT: &str =
    "otelcol_processor_tail_sampling_sampling_policy_execution_count";
/// The unit is part of the name: the exporter would otherwise put it before `_sum`.
pub const TS_POLICY_EXECUTION_TIME_SUM: &str =
    "otelcol_processor_tail_sampling_sampling_policy_execution_time_sum_microseconds";
pub const TS_POLICY_EVALUATION_ERROR: &str =
    "otelcol_processor_tail_sampling_sampling_policy_evaluation_error";
pub const TS_TRACE_DROPPED_TOO_EARLY: &str =
    "otelcol_processor_tail_sampling_sampling_trace_dropped_too_early";
pub const TS_TRACE_REMOVAL_AGE: &str = "otelcol_processor_tail_sampling_sampling_trace_removal_age";
pub const TS_LATE_SPAN_AGE: &str = "otelcol_processor_tail_sampling_sampling_late_span_age";
pub const TS_TRACES_ON_MEMORY: &str = "otelcol_processor_tail_sampling_sampling_traces_on_memory";
pub const TS_TRACES_DROPPED_TOO_LARGE: &str =
    "otelcol_processor_tail_sampling_traces_dropped_too_large";

pub const LB_NUM_BACKENDS: &str = "otelcol_loadbalancer_num_backends";
pub const LB_NUM_RESOLUTIONS: &str = "otelcol_loadbalancer_num_resolutions";
pub const LB_NUM_BACKEND_UPDATES: &str = "otelcol_loadbalancer_num_backend_updates";
pub const LB_BACKEND_LATENCY: &str = "otelcol_loadbalancer_backend_latency";
pub const LB_BACKEND_OUTCOME: &str = "otelcol_loadbalancer_backend_outcome";
/// Spans a router re-routed from a removed backend's queue onto the new ring.
pub const ROUTER_REROUTED_SPANS: &str = "tailgate_router_rerouted_spans";

/// Backends taken out of routing (`event="quarantined"`) and back (`event="recovered"`).
pub const ROUTER_QUARANTINES: &str = "tailgate_loadbalancer_backend_quarantine";
pub const ADAPTIVE_GOAL: &str = "tailgate_adaptive_goal";
pub const ADAPTIVE_KEYS: &str = "tailgate_adaptive_keys";
pub const ADAPTIVE_RATE_MIN: &str = "tailgate_adaptive_sample_rate_min";
pub const ADAPTIVE_RATE_MAX: &str = "tailgate_adaptive_sample_rate_max";
pub const ADAPTIVE_OVERFLOW: &str = "tailgate_adaptive_overflow_traces";
pub const TRACESTATE_MALFORMED_SPANS: &str = "tailgate_tracestate_malformed_spans";
pub const MEMBERSHIP_RING_VERSION: &str = "tailgate_membership_ring_version";
pub const MEMBERSHIP_MEMBERS: &str = "tailgate_membership_members";
pub const MEMBERSHIP_RING_CHANGES: &str = "tailgate_membership_ring_changes";
pub const MEMBERSHIP_RELAYED_SPANS: &str = "tailgate_membership_relayed_spans";
pub const MEMBERSHIP_OFFERS: &str = "tailgate_membership_offers";
pub const MEMBERSHIP_HOLDER_GONE_SPANS: &str = "tailgate_membership_holder_gone_spans";
pub const MEMBERSHIP_UNTRUSTED_RELAYS: &str = "tailgate_membership_untrusted_relays";
pub const MEMBERSHIP_MARKER_EVICTIONS: &str = "tailgate_membership_marker_evictions";
pub const STORAGE_BYTES: &str = "tailgate_storage_bytes";
pub const STORAGE_CORRUPT_RECORDS: &str = "tailgate_storage_corrupt_records";
pub const STORAGE_FSYNC_LATENCY: &str = "tailgate_storage_fsync_latency";
pub const STORAGE_REFUSED_RECORDS: &str = "tailgate_storage_refused_records";
pub const STORAGE_REPLAYED_RECORDS: &str = "tailgate_storage_replayed_records";
pub const STORAGE_REPLAYED_SPANS: &str = "tailgate_storage_replayed_spans";
pub const STORAGE_REPLAY_DURATION: &str = "tailgate_storage_replay_duration";

/// Resident memory as the memory limiter last saw it.
pub const PROCESS_RESIDENT_MEMORY: &str = "tailgate_process_resident_memory";

/// Heap memory the allocator holds in active pages, as the memory limiter last saw it.
pub const PROCESS_HEAP_ACTIVE: &str = "tailgate_process_heap_active";
/// Times the memory limiter returned the allocator's free pages to the system.
pub const MEMORY_LIMITER_PURGES: &str = "tailgate_memory_limiter_purges";
/// Pending traces shed by the memory limiter above its hard limit.
pub const MEMORY_LIMITER_SHED_TRACES: &str = "tailgate_memory_limiter_shed_traces";

/// The budget for request bytes in flight, bytes held of it, and requests it refused.
pub const RECEIVER_REQUEST_BYTES_LIMIT: &str = "tailgate_receiver_request_limit";
pub const RECEIVER_REQUEST_BYTES_IN_FLIGHT: &str = "tailgate_receiver_request_in_flight";
pub const RECEIVER_ADMISSION_REFUSED_REQUESTS: &str =
    "tailgate_receiver_admission_refused_requests";

/// Spans sent again after an attempt whose outcome was unknown (timed out or cut off
/// after the request left), so the backend may hold them twice.
pub const ROUTER_RESENT_SPANS: &str = "tailgate_router_resent_spans";
pub const EXPORTER_RESENT_SPANS: &str = "tailgate_exporter_resent_spans";

/// Every accepted span's final bucket: `outcome` is sampled, not_sampled, dropped,
/// evicted, too_large or shutdown.
pub const SPANS_DECIDED: &str = "tailgate_spans_decided";
pub const BUFFERED_SPANS: &str = "tailgate_buffered_spans";
/// Policy reloads by `result` (success, failure).
pub const POLICY_RELOADS: &str = "tailgate_policy_reload";
pub const BUFFERED_BYTES: &str = "tailgate_buffered_bytes";
pub const SPANMETRICS_ACTIVE_SERIES: &str = "tailgate_spanmetrics_active_series";
pub const SPANMETRICS_EXPIRED_SERIES: &str = "tailgate_spanmetrics_expired_series";
pub const SPANMETRICS_OVERFLOW_SPANS: &str = "tailgate_spanmetrics_overflow_spans";
/// How late each decision was against its deadline.
pub const DECISION_LATENESS: &str = "tailgate_decision_lateness";

const TIMER_LATENCY_BUCKETS_MS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 400.0, 500.0, 750.0, 1000.0,
    2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 50000.0,
];
const AGE_BUCKETS_S: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0, 1800.0,
];
const BACKEND_LATENCY_BUCKETS_MS: &[f64] = &[
    5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];
/// In seconds, fine below 50 ms (the target p99) so quantiles read from it are
/// meaningful; the benchmark reads these bounds back (`loadgen::bench`).
pub const LATENESS_BUCKETS_S: &[f64] = &[
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

const FSYNC_BUCKETS_S: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

type Description = (&'static str, Kind, Option<Unit>, &'static str);

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

const DESCRIPTIONS: &[Description] = &[
    (RECEIVER_ACCEPTED_SPANS, Kind::Counter, None, "Spans accepted by the receiver."),
    (RECEIVER_REFUSED_SPANS, Kind::Counter, None, "Spans refused by the receiver: invalid, or pushed back."),
    (PROCESSOR_REFUSED_SPANS, Kind::Counter, None, "Spans refused because the pipeline is full (the sender should retry)."),
    (EXPORTER_SENT_SPANS, Kind::Counter, None, "Spans the backend accepted."),
    (EXPORTER_SEND_FAILED_SPANS, Kind::Counter, None, "Spans that failed to send: permanent error, retries exhausted, rejected by the backend, or abandoned at shutdown."),
    (EXPORTER_ENQUEUE_FAILED_SPANS, Kind::Counter, None, "Spans that could not be put on the sending queue because it was closed."),
    (EXPORTER_QUEUE_SIZE, Kind::Gauge, None, "Export requests in the sending queue."),
    (EXPORTER_QUEUE_CAPACITY, Kind::Gauge, None, "Capacity of the sending queue in export requests."),
    (EXPORTER_QUEUE_SPILLED, Kind::Gauge, None, "Export requests waiting on disk beyond the sending queue's capacity (with file_storage)."),
    (TS_COUNT_TRACES_SAMPLED, Kind::Counter, None, "Traces by each policy's vote."),
    (TS_COUNT_SPANS_SAMPLED, Kind::Counter, None, "Spans by each policy's vote."),
    (TS_GLOBAL_COUNT_TRACES_SAMPLED, Kind::Counter, None, "Traces by final decision."),
    (TS_EARLY_RELEASES, Kind::Counter, None, "Late spans released or dropped at once by a cached decision."),
    (TS_NEW_TRACE_ID_RECEIVED, Kind::Counter, None, "New traces entered into the buffer."),
    (TS_DECISION_TIMER_LATENCY, Kind::Histogram, Some(Unit::Milliseconds), "Wall time of one decision round."),
    (TS_POLICY_EXECUTION_COUNT, Kind::Counter, None, "Policy evaluations."),
    (TS_POLICY_EXECUTION_TIME_SUM, Kind::Counter, None, "Cumulative policy evaluation time."),
    (TS_POLICY_EVALUATION_ERROR, Kind::Counter, None, "Policy evaluations that failed; the policy abstained."),
    (TS_TRACE_DROPPED_TOO_EARLY, Kind::Counter, None, "Traces evicted before their decision."),
    (TS_TRACE_REMOVAL_AGE, Kind::Histogram, Some(Unit::Seconds), "Time from a trace's first span to its removal from memory."),
    (TS_LATE_SPAN_AGE, Kind::Histogram, Some(Unit::Seconds), "Time since the decision when a late span arrived."),
    (TS_TRACES_ON_MEMORY, Kind::Gauge, None, "Pending traces in the buffer."),
    (TS_TRACES_DROPPED_TOO_LARGE, Kind::Counter, None, "Traces released as not sampled because they exceeded maximum_trace_size_bytes."),
    (SPANS_DECIDED, Kind::Counter, None, "Every accepted span, by where it ended: sampled, not_sampled, dropped, evicted, too_large, shutdown."),
    (POLICY_RELOADS, Kind::Counter, None, "Policy reloads; a failed one keeps the previous policies."),
    (LB_NUM_BACKENDS, Kind::Gauge, None, "Backends on the ring."),
    (LB_NUM_RESOLUTIONS, Kind::Counter, None, "Resolver runs, by success."),
    (LB_NUM_BACKEND_UPDATES, Kind::Counter, None, "Resolutions that changed the backend list."),
    (LB_BACKEND_LATENCY, Kind::Histogram, Some(Unit::Milliseconds), "Time to send one request to a backend, retries included."),
    (LB_BACKEND_OUTCOME, Kind::Counter, None, "Requests sent to a backend, by success."),
    (ROUTER_REROUTED_SPANS, Kind::Counter, None, "Spans moved from a removed backend's queue onto the new ring."),
    (ROUTER_QUARANTINES, Kind::Counter, None, "Backends quarantined after repeated unreachable sends, and recovered by a probe."),
    (ADAPTIVE_GOAL, Kind::Gauge, None, "An adaptive policy's goal on this worker: its share of goal_throughput_per_sec (spans/s), or goal_sample_rate."),
    (ADAPTIVE_KEYS, Kind::Gauge, None, "Keys an adaptive policy holds moving averages for."),
    (ADAPTIVE_RATE_MIN, Kind::Gauge, None, "The lowest sample rate (keep 1 in N) among an adaptive policy's keys."),
    (ADAPTIVE_RATE_MAX, Kind::Gauge, None, "The highest sample rate (keep 1 in N) among an adaptive policy's keys."),
    (ADAPTIVE_OVERFLOW, Kind::Counter, None, "Traces whose key did not fit under max_keys and shared the overflow key."),
    (TRACESTATE_MALFORMED_SPANS, Kind::Counter, None, "Spans whose tracestate had a malformed th or rv value (ignored; the span is kept as it is)."),
    (MEMBERSHIP_RING_VERSION, Kind::Gauge, None, "The version of this worker's current ring; each membership change adds one."),
    (MEMBERSHIP_MEMBERS, Kind::Gauge, None, "Workers on this worker's current ring: the fleet size."),
    (MEMBERSHIP_RING_CHANGES, Kind::Counter, None, "Membership changes this worker followed, its own leaving included."),
    (MEMBERSHIP_RELAYED_SPANS, Kind::Counter, None, "Spans sent to another worker, by kind (forward, offer, final) and reason (not_owner, previous_owner, holder, declined)."),
    (MEMBERSHIP_OFFERS, Kind::Counter, None, "Offers of a trace's spans from a newer owner, by result: taken (held here), declined (sent back), redirected (sent to the worker this one handed the trace to)."),
    (MEMBERSHIP_HOLDER_GONE_SPANS, Kind::Counter, None, "Relayed spans whose peer could not be reached; decided here instead."),
    (MEMBERSHIP_UNTRUSTED_RELAYS, Kind::Counter, None, "Requests with relay marks from an endpoint on no ring of this worker; taken as a client's."),
    (MEMBERSHIP_MARKER_EVICTIONS, Kind::Counter, None, "Trace-to-holder markers evicted at the marker limit before their window ended."),
    (STORAGE_BYTES, Kind::Gauge, Some(Unit::Bytes), "Record bytes of the log on disk."),
    (STORAGE_CORRUPT_RECORDS, Kind::Counter, None, "Damaged records found at start (a torn write or a bad checksum); the rest of their segment is skipped."),
    (STORAGE_FSYNC_LATENCY, Kind::Histogram, Some(Unit::Seconds), "Time to fsync one record (with fsync: true)."),
    (STORAGE_REFUSED_RECORDS, Kind::Counter, None, "Records the log refused: full (its limit or the disk), or a write error; the request was pushed back."),
    (STORAGE_REPLAYED_RECORDS, Kind::Counter, None, "Records read back from the log at start."),
    (STORAGE_REPLAYED_SPANS, Kind::Counter, None, "Spans taken back from the log at start: buffered again, or exported again after a decision to keep them."),
    (STORAGE_REPLAY_DURATION, Kind::Gauge, Some(Unit::Seconds), "How long the replay at start took."),
    (PROCESS_RESIDENT_MEMORY, Kind::Gauge, Some(Unit::Bytes), "Resident memory as the memory limiter last measured it."),
    (PROCESS_HEAP_ACTIVE, Kind::Gauge, Some(Unit::Bytes), "Heap bytes in the allocator's active pages, as the memory limiter last measured them."),
    (MEMORY_LIMITER_PURGES, Kind::Counter, None, "Times the memory limiter returned the allocator's free pages to the system."),
    (MEMORY_LIMITER_SHED_TRACES, Kind::Counter, None, "Pending traces evicted by the memory limiter above its hard limit."),
    (RECEIVER_REQUEST_BYTES_LIMIT, Kind::Gauge, Some(Unit::Bytes), "The budget for request bytes in flight (received and inflated, not yet handed on)."),
    (RECEIVER_REQUEST_BYTES_IN_FLIGHT, Kind::Gauge, Some(Unit::Bytes), "Request bytes in flight now."),
    (RECEIVER_ADMISSION_REFUSED_REQUESTS, Kind::Counter, None, "Requests refused because the request bytes budget was spent."),
    (ROUTER_RESENT_SPANS, Kind::Counter, None, "Spans a router sent to a worker again after an attempt with an unknown outcome (may be duplicated)."),
    (EXPORTER_RESENT_SPANS, Kind::Counter, None, "Spans sent to the backend again after an attempt with an unknown outcome (may be duplicated)."),
    (SPANMETRICS_ACTIVE_SERIES, Kind::Gauge, None, "Span metric series held (calls/duration and events)."),
    (SPANMETRICS_EXPIRED_SERIES, Kind::Counter, None, "Span metric series dropped after metrics_expiration idle."),
    (SPANMETRICS_OVERFLOW_SPANS, Kind::Counter, None, "Spans counted in the overflow series because of aggregation_cardinality_limit."),
    (BUFFERED_SPANS, Kind::Gauge, None, "Spans held by pending traces."),
    (BUFFERED_BYTES, Kind::Gauge, Some(Unit::Bytes), "Span bytes held by pending traces."),
    (DECISION_LATENESS, Kind::Histogram, Some(Unit::Seconds), "Decision time minus the trace's deadline."),
];

/// One instance's metrics: registers handles and renders Prometheus text.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<(PrometheusRecorder, PrometheusHandle)>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::with_labels(&[])
    }

    /// A registry whose every series carries `labels`: the process's `role` (`router` or
    /// `worker`), and in local mode the `component` too.
    pub fn with_labels(labels: &[(&str, &str)]) -> Self {
        let buckets: [(&str, &[f64]); 6] = [
            (TS_DECISION_TIMER_LATENCY, TIMER_LATENCY_BUCKETS_MS),
            (TS_TRACE_REMOVAL_AGE, AGE_BUCKETS_S),
            (TS_LATE_SPAN_AGE, AGE_BUCKETS_S),
            (DECISION_LATENESS, LATENESS_BUCKETS_S),
            (STORAGE_FSYNC_LATENCY, FSYNC_BUCKETS_S),
            (LB_BACKEND_LATENCY, BACKEND_LATENCY_BUCKETS_MS),
        ];
        let mut base = PrometheusBuilder::new().with_recommended_naming(true);
        for (key, value) in labels {
            base = base.add_global_label(*key, *value);
        }
        let builder = buckets
            .into_iter()
            .try_fold(base, |b, (name, bounds)| {
                b.set_buckets_for_metric(Matcher::Full(name.into()), bounds)
            })
            .expect("bucket lists are non-empty constants");
        let recorder = builder.build_recorder();
        for (name, kind, unit, help) in DESCRIPTIONS {
            let help = SharedString::const_str(help);
            match kind {
                Kind::Counter => recorder.describe_counter((*name).into(), *unit, help),
                Kind::Gauge => recorder.describe_gauge((*name).into(), *unit, help),
                Kind::Histogram => recorder.describe_histogram((*name).into(), *unit, help),
            }
        }
        let handle = recorder.handle();
        Self {
            inner: Arc::new((recorder, handle)),
        }
    }

    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        Key::from_parts(
            name,
            labels
                .iter()
                .map(|(k, v)| Label::new(*k, (*v).to_owned()))
                .collect::<Vec<_>>(),
        )
    }

    fn metadata() -> Metadata<'static> {
        Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
    }

    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        let c = self
            .inner
            .0
            .register_counter(&Self::key(name, labels), &Self::metadata());
        // Exposed at 0 from the start, so `increase()` sees the first increment.
        c.increment(0);
        c
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        let g = self
            .inner
            .0
            .register_gauge(&Self::key(name, labels), &Self::metadata());
        g.set(0.0);
        g
    }

    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.inner
            .0
            .register_histogram(&Self::key(name, labels), &Self::metadata())
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.inner.1.render()
    }
}

#[cfg(test)]
mod tests;
