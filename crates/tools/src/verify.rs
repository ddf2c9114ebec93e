//! The completeness check of `tailgate-tools loadgen --verify`: what the policies should
//! keep for each generated trace (predicted from the spans sent on time), what the workers
//! export (by trace, span and exporting worker, recorded by the test kit's OTLP sink), and
//! the report that compares the two.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message;
use tailgate::otlp::{chunks_of, TraceId, TraceSpans};
use tailgate::policy::{Batch, Decision, PolicySet, StatusCodes, TraceView};
use tailgate_testkit::Sink;
use tonic::metadata::MetadataMap;

use crate::workload::GeneratedTrace;

/// The request header a worker's exporter can set (`headers:` of the `otlp` exporter) to
/// name itself; without it the sink tells workers apart by their connection's address.
pub const WORKER_HEADER: &str = "x-tailgate-worker";

/// What the policies must do with a trace, judged without the stateful policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Must {
    Keep,
    Drop,
    /// Only a stateful policy (a rate or byte budget, a composite) could keep it.
    Either,
}

struct Expected {
    spans: u32,
    must: Must,
    /// Bit i: policy i of the set, alone, samples the trace.
    matched: u64,
    /// The minute of the run it was sent in, from 0.
    minute: u32,
    /// Its root's (service, route) key, as an index into `Expectations::keys`.
    key: Option<u32>,
}

/// A root (service, route) key needs this many spans (of the traces it is the root of) in
/// a minute to be owed a kept trace in that minute.
pub const BUSY_KEY_SPANS: u32 = 20;

/// The current Unix second.
fn unix_second() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A span's `http.route`, if it has one.
fn route_of(span: &opentelemetry_proto::tonic::trace::v1::Span) -> Option<&str> {
    span.attributes.iter().find_map(
        |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) if kv.key == "http.route" => Some(s.as_str()),
            _ => None,
        },
    )
}

/// What a worker's policies see of a generated trace: its on-time spans grouped by
/// emitting instance, encoded as a worker buffers them, and the trace's counters.
pub struct PolicyInput {
    chunks: TraceSpans,
    spans: u64,
    bytes: u64,
    earliest_start: u64,
    latest_end: u64,
    status_codes: StatusCodes,
    /// The `rv` of the first on-time span whose tracestate has one.
    rv: Option<u64>,
}

impl PolicyInput {
    pub fn on_time(trace: &GeneratedTrace, resources: &[Resource]) -> PolicyInput {
        let mut request = ExportTraceServiceRequest::default();
        let mut input = PolicyInput {
            chunks: TraceSpans::default(),
            spans: 0,
            bytes: 0,
            earliest_start: u64::MAX,
            status_codes: StatusCodes::NONE,
            latest_end: 0,
            rv: None,
        };
        let mut instances: Vec<usize> = Vec::new();
        for s in trace.spans.iter().filter(|s| !s.late) {
            input.earliest_start = input.earliest_start.min(s.span.start_time_unix_nano);
            let code = s.span.status.as_ref().map_or(0, |st| st.code);
            input.status_codes = input.status_codes.with(code);
            input.latest_end = input.latest_end.max(s.span.end_time_unix_nano);
            input.rv = input
                .rv
                .or(tailgate::otlp::tracestate::read(&s.span.trace_state).randomness);
            input.bytes += s.span.encoded_len() as u64;
            input.spans += 1;
            let i = match instances.iter().position(|&i| i == s.instance) {
                Some(i) => i,
                None => {
                    instances.push(s.instance);
                    request.resource_spans.push(ResourceSpans {
                        resource: Some(resources[s.instance].clone()),
                        scope_spans: vec![ScopeSpans::default()],
                        ..Default::default()
                    });
                    instances.len() - 1
                }
            };
            request.resource_spans[i].scope_spans[0]
                .spans
                .push(s.span.clone());
        }
        input.chunks = chunks_of(&request).expect("generated spans encode to valid OTLP");
        input
    }

    /// The spans as policies read them.
    pub fn batches(&self) -> Vec<Batch<'_>> {
        self.chunks.chunks().map(Batch::of).collect()
    }

    pub fn view<'a>(
        &'a self,
        trace_id: &'a TraceId,
        batches: &'a [Batch<'a>],
        now: tokio::time::Instant,
    ) -> TraceView<'a> {
        TraceView {
            trace_id,
            span_count: self.spans,
            bytes: self.bytes,
            earliest_start: self.earliest_start,
            status_codes: self.status_codes,
            latest_end: self.latest_end,
            randomness: tailgate::policy::randomness(trace_id, self.rv),
            fleet_size: 1,
            attributes: None,
            batches,
            now,
        }
    }
}

/// Predictions for every generated trace.
pub struct Expectations {
    policies: PolicySet,
    has_stateful: bool,
    traces: HashMap<TraceId, Expected>,
    spans: u64,
    /// By service: the spans the generated spans stand for (a head-sampled span counts
    /// its adjusted count).
    represented: HashMap<String, f64>,
    /// The Unix second the first trace was recorded in.
    first_second: Option<u64>,
    /// Spans recorded (sent) per Unix second.
    sent: BTreeMap<u64, u64>,
    /// Every root (service, route) key seen, and its traces' spans per minute of the run.
    keys: Vec<(String, String)>,
    key_index: HashMap<(String, String), u32>,
    key_spans: HashMap<(u32, u32), u32>,
}

/// The `service.name` of a resource.
fn service_of(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| {
            r.attributes.iter().find_map(|kv| {
                match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) if kv.key == "service.name" => {
                        Some(s.clone())
                    }
                    _ => None,
                }
            })
        })
        .unwrap_or_default()
}

/// The adjusted count of a span's tracestate threshold, if it has one.
fn adjusted_count(trace_state: &str) -> Option<f64> {
    tailgate::otlp::tracestate::read(trace_state)
        .threshold
        .map(|t| t.adjusted_count())
}

impl Expectations {
    pub fn new(policies: PolicySet) -> Expectations {
        let has_stateful = policies.policies().iter().any(|p| p.is_stateful());
        Expectations {
            policies,
            has_stateful,
            traces: HashMap::new(),
            spans: 0,
            represented: HashMap::new(),
            first_second: None,
            sent: BTreeMap::new(),
            keys: Vec::new(),
            key_index: HashMap::new(),
            key_spans: HashMap::new(),
        }
    }

    /// Predicts the decision for `trace` from its on-time spans (the late ones arrive
    /// after the decision and cannot change it).
    pub fn record(&mut self, trace: &GeneratedTrace, resources: &[Resource]) {
        let input = PolicyInput::on_time(trace, resources);
        let batches = input.batches();
        let view = input.view(&trace.trace_id, &batches, tokio::time::Instant::now());
        let mut matched = 0u64;
        let verdict = self.policies.decide_with(
            &view,
            |p| !p.is_stateful(),
            |vote| {
                if vote.decision == Ok(Decision::Sampled) && vote.policy_index < 64 {
                    matched |= 1 << vote.policy_index;
                }
            },
        );
        let must = match verdict.decision {
            Decision::Sampled => Must::Keep,
            Decision::Dropped => Must::Drop,
            _ if self.has_stateful => Must::Either,
            _ => Must::Drop,
        };
        self.spans += trace.spans.len() as u64;
        let second = unix_second();
        let first = *self.first_second.get_or_insert(second);
        let minute = (second.saturating_sub(first) / 60) as u32;
        *self.sent.entry(second).or_default() += trace.spans.len() as u64;
        let mut key = None;
        for s in &trace.spans {
            let service = service_of(resources.get(s.instance));
            if let (true, Some(route)) = (s.span.parent_span_id.is_empty(), route_of(&s.span)) {
                let root = (service.clone(), route.to_owned());
                let next = self.keys.len() as u32;
                let index = *self.key_index.entry(root.clone()).or_insert(next);
                if index == next {
                    self.keys.push(root);
                }
                *self.key_spans.entry((minute, index)).or_default() += trace.spans.len() as u32;
                key = Some(index);
            }
            *self.represented.entry(service).or_default() +=
                adjusted_count(&s.span.trace_state).unwrap_or(1.0);
        }
        self.traces.insert(
            trace.trace_id,
            Expected {
                spans: trace.spans.len() as u32,
                must,
                matched,
                minute,
                key,
            },
        );
    }
}

#[derive(Default)]
struct Seen {
    span_ids: Vec<u64>,
    duplicates: u32,
    /// Indexes into `Received::workers`.
    workers: Vec<u16>,
    /// The `tailsampling.policy` scope attribute, when the workers record it.
    policy: Option<String>,
}

#[derive(Default)]
struct Received {
    traces: HashMap<TraceId, Seen>,
    workers: Vec<String>,
    spans: u64,
    last_change: Option<std::time::Instant>,
    /// By service and trace: the adjusted count of the trace's exported spans and how many
    /// of its spans arrived.
    adjusted: HashMap<(String, TraceId), (f64, u64)>,
    /// Exported spans without a threshold (counted as 1).
    unweighted_spans: u64,
    /// Spans received per Unix second.
    per_second: BTreeMap<u64, u64>,
}

/// What the workers export, recorded by the test kit's OTLP sink.
#[derive(Clone)]
pub struct VerifySink {
    received: Arc<Mutex<Received>>,
    pub addr: SocketAddr,
    sink: Sink,
}

impl Received {
    /// Folds one export request from the worker named by `metadata` (or `peer`) in.
    fn record(
        &mut self,
        metadata: &MetadataMap,
        peer: Option<SocketAddr>,
        request: ExportTraceServiceRequest,
    ) {
        let worker = match metadata.get(WORKER_HEADER) {
            Some(v) => v.to_str().unwrap_or("invalid").to_owned(),
            None => peer.map_or_else(|| "unknown".into(), |a| a.to_string()),
        };
        let worker = match self.workers.iter().position(|w| *w == worker) {
            Some(i) => i as u16,
            None => {
                self.workers.push(worker);
                (self.workers.len() - 1) as u16
            }
        };
        let spans_before = self.spans;
        for rs in &request.resource_spans {
            let service = service_of(rs.resource.as_ref());
            for ss in &rs.scope_spans {
                let policy = ss.scope.as_ref().and_then(|scope| {
                    scope.attributes.iter().find_map(|kv| {
                        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(any_value::Value::StringValue(s))
                                if kv.key == "tailsampling.policy" =>
                            {
                                Some(s.clone())
                            }
                            _ => None,
                        }
                    })
                });
                for span in &ss.spans {
                    let (Ok(trace_id), Ok(span_id)) = (
                        TraceId::try_from(span.trace_id.as_slice()),
                        <[u8; 8]>::try_from(span.span_id.as_slice()),
                    ) else {
                        continue;
                    };
                    self.spans += 1;
                    let a = adjusted_count(&span.trace_state).unwrap_or_else(|| {
                        self.unweighted_spans += 1;
                        1.0
                    });
                    let by_trace = self
                        .adjusted
                        .entry((service.clone(), trace_id))
                        .or_insert((a, 0));
                    by_trace.1 += 1;
                    let seen = self.traces.entry(trace_id).or_default();
                    let span_id = u64::from_be_bytes(span_id);
                    if seen.span_ids.contains(&span_id) {
                        seen.duplicates += 1;
                    } else {
                        seen.span_ids.push(span_id);
                    }
                    if !seen.workers.contains(&worker) {
                        seen.workers.push(worker);
                    }
                    if seen.policy.is_none() {
                        seen.policy.clone_from(&policy);
                    }
                }
            }
        }
        *self.per_second.entry(unix_second()).or_default() += self.spans - spans_before;
        self.last_change = Some(std::time::Instant::now());
    }
}

impl VerifySink {
    /// Serves OTLP/gRPC on `endpoint` (`127.0.0.1:0` for any free port).
    pub async fn start(endpoint: &str) -> anyhow::Result<VerifySink> {
        let received = Arc::new(Mutex::new(Received::default()));
        let into = received.clone();
        let sink = Sink::start_recording(
            endpoint,
            Arc::new(move |metadata, peer, request| {
                into.lock()
                    .expect("sink lock")
                    .record(metadata, peer, request)
            }),
        )
        .await?;
        Ok(VerifySink {
            received,
            addr: sink.addr,
            sink,
        })
    }

    pub async fn stop(&self) {
        self.sink.stop().await;
    }

    /// Forgets everything received so far, as if the sink had just started.
    pub fn reset(&self) {
        *self.received.lock().expect("sink lock") = Received::default();
    }

    /// Spans received so far.
    pub fn spans(&self) -> u64 {
        self.received.lock().expect("sink lock").spans
    }

    /// Whether every trace the policies must keep has arrived whole and nothing arrived
    /// for `quiet`.
    pub fn settled(&self, expected: &Expectations, quiet: std::time::Duration) -> bool {
        let received = self.received.lock().expect("sink lock");
        if received.last_change.is_some_and(|t| t.elapsed() < quiet) {
            return false;
        }
        expected.traces.iter().all(|(id, e)| {
            e.must != Must::Keep
                || received
                    .traces
                    .get(id)
                    .is_some_and(|s| s.span_ids.len() as u32 >= e.spans)
        })
    }

    /// Compares what arrived with what was expected.
    pub fn report(&self, expected: &Expectations) -> Report {
        let received = self.received.lock().expect("sink lock");
        let names: Vec<&str> = expected
            .policies
            .policies()
            .iter()
            .map(|p| &*p.name)
            .collect();
        let mut r = Report {
            generated_traces: expected.traces.len() as u64,
            generated_spans: expected.spans,
            received_spans: received.spans,
            workers: received.workers.len(),
            policies: names
                .iter()
                .zip(expected.policies.policies())
                .map(|(name, p)| PolicyShare {
                    name: (*name).to_owned(),
                    stateful: p.is_stateful(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        for (id, e) in &expected.traces {
            let seen = received.traces.get(id);
            for (i, share) in r.policies.iter_mut().enumerate() {
                if e.matched & (1 << i) != 0 {
                    share.should_keep += 1;
                    share.kept_of_those += u64::from(seen.is_some());
                }
            }
            match (seen, e.must) {
                (None, Must::Keep) => {
                    r.must_keep_missing += 1;
                    r.lost_spans += u64::from(e.spans);
                }
                (None, _) => {}
                (Some(s), must) => {
                    r.kept_traces += 1;
                    let distinct = s.span_ids.len() as u64;
                    if distinct >= u64::from(e.spans) {
                        r.complete_traces += 1;
                    }
                    r.lost_spans += u64::from(e.spans).saturating_sub(distinct);
                    r.duplicate_spans += u64::from(s.duplicates);
                    r.split_traces += u64::from(s.workers.len() > 1);
                    match must {
                        Must::Drop => r.kept_must_drop += 1,
                        Must::Either => r.kept_by_budget += 1,
                        Must::Keep => {}
                    }
                    if let Some(share) = s
                        .policy
                        .as_deref()
                        .and_then(|p| r.policies.iter_mut().find(|share| share.name == p))
                    {
                        share.decided += 1;
                    }
                }
            }
        }
        let mut covered: std::collections::HashSet<(u32, u32)> = Default::default();
        for (id, e) in &expected.traces {
            if let (Some(key), true) = (e.key, received.traces.contains_key(id)) {
                covered.insert((e.minute, key));
            }
        }
        // Whole minutes of the run only: a key's spans in the last seconds say little.
        let minutes = match (expected.first_second, expected.sent.keys().next_back()) {
            (Some(first), Some(last)) => ((last + 1 - first) / 60) as u32,
            _ => 0,
        };
        for (&(minute, key), &spans) in &expected.key_spans {
            if spans >= BUSY_KEY_SPANS && minute < minutes {
                r.busy_keys += 1;
                if !covered.contains(&(minute, key)) {
                    let (service, route) = &expected.keys[key as usize];
                    r.busy_keys_not_kept
                        .push(format!("minute {minute}: {service} {route}"));
                }
            }
        }
        r.busy_keys_not_kept.sort();
        if let Some(first) = expected.first_second {
            let window = |second: u64| (second.saturating_sub(first) / TIMELINE_SECONDS) as usize;
            for (tally, is_kept) in [(&expected.sent, false), (&received.per_second, true)] {
                for (&second, &spans) in tally {
                    let i = window(second);
                    if r.timeline.len() <= i {
                        r.timeline.resize(i + 1, Window::default());
                    }
                    let w = &mut r.timeline[i];
                    if is_kept {
                        w.kept_spans += spans;
                    } else {
                        w.sent_spans += spans;
                    }
                }
            }
        }
        let mut by_service: HashMap<&str, (f64, f64)> = HashMap::new();
        for ((service, _), (a, y)) in &received.adjusted {
            let e = by_service.entry(service.as_str()).or_default();
            let y = *y as f64;
            e.0 += a * y;
            e.1 += (a * a - a) * y * y;
        }
        r.estimates = expected
            .represented
            .iter()
            .map(|(service, represented)| {
                let (estimated, variance) = by_service
                    .get(service.as_str())
                    .copied()
                    .unwrap_or_default();
                Estimate {
                    service: service.clone(),
                    represented: *represented,
                    estimated,
                    std_error: variance.sqrt(),
                }
            })
            .collect();
        r.estimates.sort_by(|a, b| a.service.cmp(&b.service));
        r.unweighted_spans = received.unweighted_spans;
        r.unexpected_spans = received
            .traces
            .iter()
            .filter(|(id, _)| !expected.traces.contains_key(*id))
            .map(|(_, s)| s.span_ids.len() as u64 + u64::from(s.duplicates))
            .sum();
        r
    }
}

/// The report's timeline has a row per this many seconds of the run.
pub const TIMELINE_SECONDS: u64 = 10;

/// Spans sent and spans kept (received from the workers) in one window of the run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Window {
    pub sent_spans: u64,
    pub kept_spans: u64,
}

/// One policy's share of the workload.
#[derive(Debug, Default, Clone)]
pub struct PolicyShare {
    pub name: String,
    pub stateful: bool,
    /// Traces this policy alone samples (not predicted for stateful policies).
    pub should_keep: u64,
    /// Of those, traces that arrived.
    pub kept_of_those: u64,
    /// Kept traces whose `tailsampling.policy` names this policy (with `record_policy`).
    pub decided: u64,
}

/// The outcome of a verified run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub generated_traces: u64,
    pub generated_spans: u64,
    pub received_spans: u64,
    pub workers: usize,
    pub kept_traces: u64,
    pub complete_traces: u64,
    pub split_traces: u64,
    pub duplicate_spans: u64,
    /// Spans of kept traces that never arrived, plus every span of missing must-keep traces.
    pub lost_spans: u64,
    pub must_keep_missing: u64,
    pub kept_must_drop: u64,
    /// Kept traces only a stateful policy could have kept.
    pub kept_by_budget: u64,
    pub unexpected_spans: u64,
    pub policies: Vec<PolicyShare>,
    /// By service: the spans the traffic represents against the sum of adjusted counts over
    /// the kept spans, with the estimate's standard error.
    pub estimates: Vec<Estimate>,
    /// Kept spans that carried no threshold (each counted as 1).
    pub unweighted_spans: u64,
    /// (minute, root service, root route) triples with at least [`BUSY_KEY_SPANS`] spans
    /// sent, over the run's whole minutes.
    pub busy_keys: u64,
    /// Of those, the ones no kept trace of that minute carries.
    pub busy_keys_not_kept: Vec<String>,
    /// Per [`TIMELINE_SECONDS`] from the first span sent.
    pub timeline: Vec<Window>,
}

/// One service's adjusted-count estimate.
#[derive(Debug, Default, Clone)]
pub struct Estimate {
    pub service: String,
    pub represented: f64,
    pub estimated: f64,
    /// The standard error of `estimated` (traces are kept whole, each with its own
    /// probability: the Horvitz-Thompson variance estimate).
    pub std_error: f64,
}

impl Estimate {
    /// How many standard errors the estimate is off.
    pub fn deviation(&self) -> f64 {
        if self.std_error > 0.0 {
            (self.estimated - self.represented) / self.std_error
        } else if self.estimated == self.represented {
            0.0
        } else {
            f64::INFINITY
        }
    }
}

impl Report {
    /// Whether every span is accounted for and every trace was decided whole, once.
    pub fn passed(&self) -> bool {
        self.lost_spans == 0
            && self.duplicate_spans == 0
            && self.split_traces == 0
            && self.kept_must_drop == 0
    }

    pub fn render(&self) -> String {
        let pct = |n: u64, of: u64| {
            if of == 0 {
                0.0
            } else {
                100.0 * n as f64 / of as f64
            }
        };
        let mut out = String::new();
        let mut line = |label: &str, value: u64, note: String| {
            let _ = writeln!(out, "  {label:<34}{value:>12}  {note}");
        };
        line(
            "traces generated",
            self.generated_traces,
            format!("{} spans", self.generated_spans),
        );
        line(
            "traces kept",
            self.kept_traces,
            format!(
                "{:.2} % of traces, from {} worker(s)",
                pct(self.kept_traces, self.generated_traces),
                self.workers
            ),
        );
        line(
            "kept traces with every span",
            self.complete_traces,
            String::new(),
        );
        line(
            "traces split across workers",
            self.split_traces,
            String::new(),
        );
        line("spans exported twice", self.duplicate_spans, String::new());
        line(
            "spans lost",
            self.lost_spans,
            format!(
                "incl. {} must-keep trace(s) missing",
                self.must_keep_missing
            ),
        );
        line(
            "kept though the policies drop them",
            self.kept_must_drop,
            String::new(),
        );
        line(
            "kept by a budget policy only",
            self.kept_by_budget,
            String::new(),
        );
        line(
            "spans of traces not generated here",
            self.unexpected_spans,
            String::new(),
        );
        let _ = writeln!(
            out,
            "\n  {:<24}{:>14}{:>14}{:>14}",
            "policy", "should keep", "kept", "decided by"
        );
        for p in &self.policies {
            let should = if p.stateful {
                "(budget)".to_owned()
            } else {
                format!("{:.2} %", pct(p.should_keep, self.generated_traces))
            };
            let kept = if p.stateful {
                "-".to_owned()
            } else {
                format!("{:.2} %", pct(p.kept_of_those, self.generated_traces))
            };
            let _ = writeln!(
                out,
                "  {:<24}{:>14}{:>14}{:>14}",
                p.name,
                should,
                kept,
                format!("{:.2} %", pct(p.decided, self.generated_traces))
            );
        }
        let (represented, estimated) = self
            .estimates
            .iter()
            .fold((0.0, 0.0), |(r, e), s| (r + s.represented, e + s.estimated));
        let worst = self
            .estimates
            .iter()
            .max_by(|a, b| a.deviation().abs().total_cmp(&b.deviation().abs()));
        let _ = writeln!(
            out,
            "\n  adjusted counts: the kept spans stand for {estimated:.0} spans; the traffic \
             represents {represented:.0} ({:+.2} %); {} kept span(s) without a threshold",
            100.0 * (estimated - represented) / represented.max(1.0),
            self.unweighted_spans
        );
        if let Some(w) = worst {
            let _ = writeln!(
                out,
                "  furthest service: {} at {:.0} for {:.0} ({:+.1} standard errors, {:+.1} %)",
                w.service,
                w.estimated,
                w.represented,
                w.deviation(),
                100.0 * (w.estimated - w.represented) / w.represented.max(1.0)
            );
        }
        let _ = writeln!(
            out,
            "  root (service, route) keys with {BUSY_KEY_SPANS}+ spans in a minute: {}, {} without a \
             kept trace in that minute{}",
            self.busy_keys,
            self.busy_keys_not_kept.len(),
            self.busy_keys_not_kept
                .iter()
                .take(5)
                .fold(String::new(), |s, k| s + "\n    " + k)
        );
        let _ = writeln!(out, "\n  {:>8}{:>14}{:>14}", "from s", "sent/s", "kept/s");
        for (i, w) in self.timeline.iter().enumerate() {
            let per_second = |n: u64| n as f64 / TIMELINE_SECONDS as f64;
            let _ = writeln!(
                out,
                "  {:>8}{:>14.0}{:>14.0}",
                i as u64 * TIMELINE_SECONDS,
                per_second(w.sent_spans),
                per_second(w.kept_spans)
            );
        }
        let _ = writeln!(
            out,
            "\n  {}",
            if self.passed() {
                "PASS: every span accounted for"
            } else {
                "FAIL: spans unaccounted for, split, duplicated or wrongly kept"
            }
        );
        out
    }
}
