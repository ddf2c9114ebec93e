//! The synthetic workload: traces that look like a microservice fleet's (a call tree over
//! services, 5 to 15 attributes per span, errors, a slow tail, health checks, late and
//! out-of-order spans). Everything is a function of the seed.

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, Span, Status};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};
use tailgate::otlp::tracestate::{Threshold, SPACE};

/// The shape of the generated traffic.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub seed: u64,
    /// Distinct services; each runs `instances` instances, each with its own resource and
    /// its own connection.
    pub services: usize,
    pub instances: usize,
    /// Median spans per trace of the log-normal span-count distribution (health checks
    /// are single spans).
    pub median_spans_per_trace: f64,
    /// Shares of traces, each in [0, 1].
    pub error_rate: f64,
    pub slow_rate: f64,
    pub health_check_rate: f64,
    /// Traces with one span held back and sent late (after the trace was decided).
    pub late_rate: f64,
    /// Traces whose spans are emitted in random order rather than completion order.
    pub out_of_order_rate: f64,
    /// Spans per request, as an SDK's batch processor sends them.
    pub batch_size: usize,
    /// Share of traces that arrive head-sampled: every span's tracestate carries
    /// `ot=th:…;rv:…` for `head_sampling_percentage`, with randomness the head sampler
    /// would have kept.
    pub head_sampled_rate: f64,
    pub head_sampling_percentage: f64,
    /// How skewed traffic is over services and over each service's operations: the k-th
    /// is chosen with weight 1/k^skew (a Zipf law); 0 chooses uniformly.
    pub skew: f64,
    /// Timestamps start here (Unix nanoseconds).
    pub start_unix_nano: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            seed: 1,
            services: 12,
            instances: 2,
            median_spans_per_trace: 12.0,
            error_rate: 0.02,
            slow_rate: 0.03,
            health_check_rate: 0.05,
            late_rate: 0.01,
            out_of_order_rate: 0.1,
            batch_size: 512,
            head_sampled_rate: 0.0,
            head_sampling_percentage: 50.0,
            skew: 0.0,
            start_unix_nano: 1_798_761_600_000_000_000, // 2027-01-01T00:00:00Z
        }
    }
}

/// Normal traces last at most this long, so that only the slow tail passes a 500 ms
/// latency policy.
const NORMAL_MAX_MS: f64 = 450.0;
const SLOW_MIN_MS: u64 = 600;
const SLOW_MAX_MS: u64 = 5_000;
const MAX_SPANS_PER_TRACE: usize = 400;
const MAX_DEPTH: usize = 8;
/// Mean gap between trace starts in virtual time.
const TRACE_INTERVAL_NS: u64 = 1_000_000;

/// One generated span and where it comes from.
#[derive(Debug, Clone)]
pub struct GeneratedSpan {
    /// The emitting service instance (its resource and its connection).
    pub instance: usize,
    pub span: Span,
    /// Held back and sent after the trace was decided.
    pub late: bool,
}

/// One generated trace, its spans in emission order.
#[derive(Debug, Clone)]
pub struct GeneratedTrace {
    pub trace_id: [u8; 16],
    pub spans: Vec<GeneratedSpan>,
}

/// One request ready to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The emitting instance; the sender maps it to a connection.
    pub instance: usize,
    pub spans: u32,
    pub body: Bytes,
    /// Holds late spans: send it after the late delay.
    pub late: bool,
}

struct Service {
    name: String,
    /// (span name, kind, http route or db statement)
    operations: Vec<(String, i32, String)>,
}

/// Generates traces deterministically from the seed.
pub struct Workload {
    config: WorkloadConfig,
    rng: ChaCha8Rng,
    services: Vec<Service>,
    resources: Vec<Resource>,
    span_count: LogNormal<f64>,
    duration_ms: LogNormal<f64>,
    clock: u64,
}

const SERVICE_NAMES: &[&str] = &[
    "frontend",
    "checkout",
    "cart",
    "payment",
    "shipping",
    "inventory",
    "recommendation",
    "ad",
    "currency",
    "email",
    "quote",
    "fraud-detection",
    "accounting",
    "product-catalog",
    "user",
    "search",
];

impl Workload {
    pub fn new(config: WorkloadConfig) -> Workload {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let services: Vec<Service> = (0..config.services.max(1))
            .map(|i| {
                let base = SERVICE_NAMES[i % SERVICE_NAMES.len()];
                let name = match i / SERVICE_NAMES.len() {
                    0 => base.to_owned(),
                    n => format!("{base}-{n}"),
                };
                let operations = (0..rng.random_range(3..8))
                    .map(|op| match op % 3 {
                        0 => {
                            let route = format!(
                                "/api/{name}/{}",
                                ["items", "{id}", "list", "batch"][op % 4]
                            );
                            (format!("GET {route}"), span::SpanKind::Server as i32, route)
                        }
                        1 => (
                            format!("SELECT {name}.table{op}"),
                            span::SpanKind::Client as i32,
                            format!("SELECT * FROM table{op} WHERE id = ?"),
                        ),
                        _ => (
                            format!("{name}.process{op}"),
                            span::SpanKind::Internal as i32,
                            String::new(),
                        ),
                    })
                    .collect();
                Service { name, operations }
            })
            .collect();
        let resources = (0..services.len() * config.instances.max(1))
            .map(|instance| resource(&services[instance / config.instances.max(1)].name, instance))
            .collect();
        let span_count =
            LogNormal::new(config.median_spans_per_trace.max(1.0).ln(), 0.8).expect("valid sigma");
        // Median 25 ms with a long right tail.
        let duration_ms = LogNormal::new(25f64.ln(), 0.9).expect("valid sigma");
        let clock = config.start_unix_nano;
        Workload {
            config,
            rng,
            services,
            resources,
            span_count,
            duration_ms,
            clock,
        }
    }

    pub fn config(&self) -> &WorkloadConfig {
        &self.config
    }

    /// The resource of every instance, indexed by instance.
    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    pub fn instances(&self) -> usize {
        self.resources.len()
    }

    fn pick_service(&mut self) -> usize {
        pick(&mut self.rng, self.services.len(), self.config.skew)
    }

    /// The next trace.
    pub fn next_trace(&mut self) -> GeneratedTrace {
        let mut trace_id = [0u8; 16];
        self.rng.fill(&mut trace_id);
        trace_id[0] |= 1; // never all zero
        self.clock += self.rng.random_range(0..2 * TRACE_INTERVAL_NS);
        let start = self.clock;
        let c = &self.config;
        let instances = c.instances.max(1);
        let (health, error, slow, late, shuffled) = (
            self.rng.random_bool(c.health_check_rate),
            self.rng.random_bool(c.error_rate),
            self.rng.random_bool(c.slow_rate),
            self.rng.random_bool(c.late_rate),
            self.rng.random_bool(c.out_of_order_rate),
        );
        if health {
            let service = self.pick_service();
            let instance = service * instances + self.rng.random_range(0..instances);
            let mut root = self.span(trace_id, None, service, start, 2_000_000);
            root.name = "GET /healthz".into();
            root.kind = span::SpanKind::Server as i32;
            root.attributes = vec![
                string("http.request.method", "GET"),
                string("url.path", "/healthz"),
                string("http.route", "/healthz"),
                int("http.response.status_code", 200),
                string("user_agent.original", "kube-probe/1.33"),
            ];
            let mut trace = GeneratedTrace {
                trace_id,
                spans: vec![GeneratedSpan {
                    instance,
                    span: root,
                    late: false,
                }],
            };
            self.head_sample(&mut trace);
            return trace;
        }

        let count =
            (self.span_count.sample(&mut self.rng).round() as usize).clamp(2, MAX_SPANS_PER_TRACE);
        let root_ms = if slow {
            self.rng.random_range(SLOW_MIN_MS..SLOW_MAX_MS) as f64
        } else {
            self.duration_ms.sample(&mut self.rng).min(NORMAL_MAX_MS)
        };
        let root_ns = (root_ms * 1e6) as u64 + 1_000;
        // (span, depth, service)
        let mut tree: Vec<(Span, usize, usize)> = Vec::with_capacity(count);
        let root_service = self.pick_service();
        let root = self.span(trace_id, None, root_service, start, root_ns);
        tree.push((root, 0, root_service));
        while tree.len() < count {
            // Attach to one of the last few spans: yields both depth and fan-out.
            let lo = tree.len().saturating_sub(4);
            let mut p = self.rng.random_range(lo..tree.len());
            while tree[p].1 >= MAX_DEPTH {
                p -= 1;
            }
            let (parent_start, parent_end) =
                (tree[p].0.start_time_unix_nano, tree[p].0.end_time_unix_nano);
            let parent_len = (parent_end - parent_start).max(2);
            let offset = self.rng.random_range(0..parent_len / 2);
            let len = self.rng.random_range(1..=(parent_len - offset).max(1));
            let service = if self.rng.random_bool(0.5) {
                tree[p].2
            } else {
                self.pick_service()
            };
            let parent_id = tree[p].0.span_id.clone();
            let child = self.span(
                trace_id,
                Some(parent_id),
                service,
                parent_start + offset,
                len,
            );
            let depth = tree[p].1 + 1;
            tree.push((child, depth, service));
        }
        if error {
            let i = self.rng.random_range(0..tree.len());
            let span = &mut tree[i].0;
            span.status = Some(Status {
                message: "upstream request failed".into(),
                code: status::StatusCode::Error as i32,
            });
            span.events.push(span::Event {
                time_unix_nano: span.end_time_unix_nano,
                name: "exception".into(),
                attributes: vec![
                    string("exception.type", "io.grpc.StatusRuntimeException"),
                    string("exception.message", "UNAVAILABLE: connection refused"),
                ],
                dropped_attributes_count: 0,
            });
        }
        // The instance that served this trace in each service.
        let mut instance_of = vec![usize::MAX; self.services.len()];
        let mut spans: Vec<GeneratedSpan> = tree
            .into_iter()
            .map(|(span, _, service)| {
                if instance_of[service] == usize::MAX {
                    instance_of[service] =
                        service * instances + self.rng.random_range(0..instances);
                }
                GeneratedSpan {
                    instance: instance_of[service],
                    span,
                    late: false,
                }
            })
            .collect();
        if late {
            let i = self.rng.random_range(1..spans.len());
            spans[i].late = true;
        }
        // SDKs export a span when it ends: children before their parents.
        if shuffled {
            spans.shuffle(&mut self.rng);
        } else {
            spans.sort_by_key(|s| s.span.end_time_unix_nano);
        }
        let mut trace = GeneratedTrace { trace_id, spans };
        self.head_sample(&mut trace);
        trace
    }

    /// Marks a share of traces as kept by a consistent head sampler: `th` of the head
    /// probability and an `rv` at or above it on every span. Draws nothing when the share
    /// is 0, so seeds keep their traces.
    fn head_sample(&mut self, trace: &mut GeneratedTrace) {
        let rate = self.config.head_sampled_rate;
        if rate <= 0.0 || !self.rng.random_bool(rate.min(1.0)) {
            return;
        }
        let Some(threshold) =
            Threshold::of_probability(self.config.head_sampling_percentage / 100.0)
        else {
            return;
        };
        let rv = self.rng.random_range(threshold.value()..SPACE);
        let mut state = String::from("ot=th:");
        threshold.write(&mut state);
        state.push_str(&format!(";rv:{rv:014x}"));
        for s in &mut trace.spans {
            s.span.trace_state.clone_from(&state);
        }
    }

    fn span(
        &mut self,
        trace_id: [u8; 16],
        parent: Option<Vec<u8>>,
        service: usize,
        start: u64,
        len: u64,
    ) -> Span {
        let mut span_id = [0u8; 8];
        self.rng.fill(&mut span_id);
        span_id[0] |= 1;
        let service = &self.services[service];
        let operation = pick(&mut self.rng, service.operations.len(), self.config.skew);
        let (name, kind, detail) = service.operations[operation].clone();
        let kind = if parent.is_none() {
            span::SpanKind::Server as i32
        } else {
            kind
        };
        let attributes = attributes(&mut self.rng, kind, &detail);
        Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: parent.unwrap_or_default(),
            name,
            kind,
            start_time_unix_nano: start,
            end_time_unix_nano: start + len,
            attributes,
            status: Some(Status::default()),
            flags: 0x100 | 1,
            ..Default::default()
        }
    }
}

/// One of `n` choices, the k-th (from 1) with weight 1/k^skew.
fn pick(rng: &mut ChaCha8Rng, n: usize, skew: f64) -> usize {
    if skew == 0.0 {
        return rng.random_range(0..n);
    }
    let weight = |k: usize| (k as f64 + 1.0).powf(-skew);
    let mut left = rng.random_range(0.0..(0..n).map(weight).sum::<f64>());
    for k in 0..n {
        left -= weight(k);
        if left < 0.0 {
            return k;
        }
    }
    n - 1
}

/// 5 to 15 attributes fitting the span's kind.
fn attributes(rng: &mut ChaCha8Rng, kind: i32, detail: &str) -> Vec<KeyValue> {
    let mut all = if kind == span::SpanKind::Client as i32 {
        vec![
            string("db.system.name", "postgresql"),
            string("db.query.text", detail),
            string("db.namespace", "shop"),
            string("db.operation.name", "SELECT"),
            string("server.address", "postgres.shop.svc.cluster.local"),
            int("server.port", 5432),
        ]
    } else if kind == span::SpanKind::Server as i32 {
        let status = if rng.random_bool(0.05) { 404 } else { 200 };
        vec![
            string(
                "http.request.method",
                ["GET", "POST", "PUT"][rng.random_range(0..3)],
            ),
            string("http.route", detail),
            string(
                "url.path",
                &detail.replace("{id}", &rng.random_range(1..100_000).to_string()),
            ),
            string("url.scheme", "http"),
            int("http.response.status_code", status),
            string("network.protocol.version", "1.1"),
            string(
                "client.address",
                &format!(
                    "10.0.{}.{}",
                    rng.random_range(0..16),
                    rng.random_range(1..255)
                ),
            ),
        ]
    } else {
        vec![
            string("code.function.name", detail),
            bool_("app.cache_hit", rng.random_bool(0.7)),
        ]
    };
    let extra = [
        ("thread.id", 0),
        ("app.tenant", 1),
        ("app.user_id", 2),
        ("app.feature_flag", 3),
        ("app.items", 4),
        ("app.region", 5),
        ("app.retry_count", 6),
        ("app.request_bytes", 7),
    ];
    let want = rng.random_range(5..=15usize);
    for (key, i) in extra {
        if all.len() >= want {
            break;
        }
        all.push(match i {
            1 => string(key, &format!("tenant-{}", rng.random_range(0..50))),
            3 => bool_(key, rng.random_bool(0.2)),
            5 => string(
                key,
                ["eu-west-1", "us-east-1", "ap-south-1"][rng.random_range(0..3)],
            ),
            _ => int(key, rng.random_range(0..10_000)),
        });
    }
    while all.len() < want {
        let n = all.len();
        all.push(string(
            &format!("app.tag.{n}"),
            &format!("v{}", rng.random_range(0..20)),
        ));
    }
    all.truncate(want);
    all
}

fn resource(service: &str, instance: usize) -> Resource {
    Resource {
        attributes: vec![
            string("service.name", service),
            string("service.namespace", "shop"),
            string("service.version", "1.4.2"),
            string("service.instance.id", &format!("{service}-{instance}")),
            string("host.name", &format!("node-{}", instance % 7)),
            string("k8s.namespace.name", "shop"),
            string("k8s.pod.name", &format!("{service}-7d9f8c-{instance:05}")),
            string("deployment.environment.name", "production"),
            string("telemetry.sdk.name", "opentelemetry"),
            string("telemetry.sdk.language", "java"),
            string("telemetry.sdk.version", "1.44.0"),
        ],
        ..Default::default()
    }
}

fn value(value: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(value) })
}

fn string(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value(any_value::Value::StringValue(v.into())),
        ..Default::default()
    }
}

fn int(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value(any_value::Value::IntValue(v)),
        ..Default::default()
    }
}

fn bool_(key: &str, v: bool) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value(any_value::Value::BoolValue(v)),
        ..Default::default()
    }
}
