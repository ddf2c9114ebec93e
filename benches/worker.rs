//! In-process benches on the load generator's requests (`cargo bench --bench worker`):
//! the decode-only baseline (the yardstick; see docs/ARCHITECTURE.md), worker ingest into the buffer, span
//! metrics counting and a scrape of them, policy evaluation with the benchmark's policy set (reading the
//! buffered spans included), ring lookup, and the router's request scanning and splitting.
//! Compare each to the baseline on the same requests; absolute times on shared machines are
//! noise.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tailgate::membership::ring::{Ring, RingKind};
use tailgate::otlp::view::SpanView;
use tailgate::otlp::{scan, RequestBuilder};
use tailgate::policy::parse_policies;
use tailgate::receiver::{Ingest, Payload};
use tailgate::spanmetrics::{SpanMetrics, SpanMetricsConfig};
use tailgate::telemetry::{Format, Registry};
use tailgate::worker::config::parse_worker;
use tailgate::worker::Worker;
use tailgate_tools::{bench::POLICIES, Generator, PolicyInput, Workload, WorkloadConfig};

const SPANS: u64 = 20_000;

fn workload() -> WorkloadConfig {
    WorkloadConfig {
        late_rate: 0.0,
        ..WorkloadConfig::default()
    }
}

fn bench(c: &mut Criterion) {
    let requests: Vec<bytes::Bytes> = Generator::new(workload(), SPANS, None)
        .map(|o| o.body)
        .collect();
    let scanned: Vec<scan::Scanned> = requests
        .iter()
        .map(|r| scan::scan(r.clone()).unwrap())
        .collect();
    let spans = scanned.iter().map(|r| r.spans.len() as u64).sum();
    let wire: usize = requests.iter().map(|r| r.len()).sum();
    eprintln!(
        "{} requests, {spans} spans, {} wire bytes per span",
        requests.len(),
        wire as u64 / spans
    );

    let mut group = c.benchmark_group("worker");
    group.throughput(Throughput::Elements(spans));
    group.bench_function("decode_only_baseline", |b| {
        b.iter(|| {
            for r in &requests {
                black_box(ExportTraceServiceRequest::decode(r.clone()).unwrap());
            }
        })
    });

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let worker = runtime.block_on(async {
        let config = parse_worker(&format!(
            r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}}}}}}}
tail_sampling:
  decision_wait: 1h
  num_traces: 1000000
  policies:{POLICIES}
exporters: {{debug: {{}}}}
admin: {{endpoint: "127.0.0.1:0"}}
"#
        ))
        .unwrap();
        Worker::start(config).await.unwrap()
    });
    let pipeline = worker.pipeline().clone();
    group.bench_function("ingest_and_buffer", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                for r in &requests {
                    pipeline
                        .ingest(
                            Payload::Protobuf(r.clone()),
                            None,
                            tokio::time::Instant::now(),
                        )
                        .unwrap();
                }
                timed += started.elapsed();
                // Decide (and mostly drop) what was buffered, outside the timed part.
                pipeline.drain(false, tokio::time::Instant::now());
            }
            timed
        })
    });
    group.finish();
    runtime.block_on(worker.shutdown());

    // Counting every span into span metrics, on series that already exist (steady state).
    let config: SpanMetricsConfig = serde_yaml::from_str(
        "{instance_id: bench, dimensions: [{name: http.request.method}, {name: http.response.status_code}]}",
    )
    .unwrap();
    let span_metrics = SpanMetrics::new(&config, &Registry::new()).unwrap();
    let mut group = c.benchmark_group("spanmetrics");
    group.throughput(Throughput::Elements(spans));
    let views: Vec<Vec<SpanView<'_>>> = scanned
        .iter()
        .map(|r| r.spans.iter().map(|s| r.view(s)).collect())
        .collect();
    group.bench_function("record", |b| {
        b.iter(|| {
            for (r, spans) in scanned.iter().zip(&views) {
                span_metrics.record(r, spans, tokio::time::Instant::now());
            }
        })
    });
    // A scrape of the series the requests made (one per service, operation, kind, status
    // and dimension values), rendered as Prometheus text.
    for (r, spans) in scanned.iter().zip(&views) {
        span_metrics.record(r, spans, tokio::time::Instant::now());
    }
    group.throughput(Throughput::Elements(1));
    group.bench_function("render", |b| {
        b.iter(|| {
            let mut out = String::new();
            span_metrics.render(&mut out, Format::Text, &|_| false);
            black_box(out)
        })
    });
    group.finish();

    // The benchmark's policy set on whole traces, as a worker evaluates them at decision time.
    let policies = parse_policies(POLICIES, "bench", false).unwrap();
    let mut generator = Workload::new(workload());
    let inputs: Vec<([u8; 16], PolicyInput)> = (0..1_000)
        .map(|_| {
            let trace = generator.next_trace();
            (
                trace.trace_id,
                PolicyInput::on_time(&trace, generator.resources()),
            )
        })
        .collect();
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(inputs.len() as u64));
    group.bench_function("decide_trace", |b| {
        b.iter(|| {
            let now = tokio::time::Instant::now();
            for (id, input) in &inputs {
                let batches = input.batches();
                black_box(policies.decide(&input.view(id, &batches, now), |_| {}));
            }
        })
    });
    group.finish();

    // Ring lookups and the router's split of a request by owning worker.
    let endpoints: Vec<String> = (0..12).map(|i| format!("worker-{i}:4317")).collect();
    let ids: Vec<[u8; 16]> = scanned
        .iter()
        .flat_map(|r| r.spans.iter().filter_map(|s| s.ids.ok()))
        .collect();
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(ids.len() as u64));
    for (name, kind) in [
        ("ring_v2_lookup", RingKind::Collector(2)),
        ("ring_balanced_lookup", RingKind::Balanced),
    ] {
        let ring = Ring::new(kind, endpoints.clone());
        group.bench_function(name, |b| {
            b.iter(|| {
                for id in &ids {
                    black_box(ring.route(id));
                }
            })
        });
    }
    group.bench_function("scan_only", |b| {
        b.iter(|| {
            for r in &requests {
                black_box(scan::scan(r.clone()).unwrap());
            }
        })
    });
    let ring = Ring::new(RingKind::Collector(2), endpoints.clone());
    group.bench_function("scan_and_split", |b| {
        let mut owners = Vec::new();
        let mut shares: Vec<RequestBuilder> = endpoints
            .iter()
            .map(|_| RequestBuilder::default())
            .collect();
        b.iter(|| {
            for r in &requests {
                let request = scan::scan(r.clone()).unwrap();
                for scope in &request.scopes {
                    request
                        .split_scope(scope, &mut owners, &mut shares, |_, id| {
                            Ok::<_, ()>(ring.route(id))
                        })
                        .unwrap();
                }
                for share in &mut shares {
                    black_box(share.take());
                }
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
