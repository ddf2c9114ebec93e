//! Worker ingest against the decode-only baseline on the same requests (DESIGN.md's
//! yardstick), and the span metrics counting path: `cargo bench --bench worker`.
//! Throughput is in spans; the ratio of the worker's time to the baseline's is the figure
//! to compare, not the absolute numbers.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message;
use tailgate::config::parse_worker;
use tailgate::receiver::Ingest;
use tailgate::spanmetrics::{SpanMetrics, SpanMetricsConfig};
use tailgate::telemetry::Registry;
use tailgate::testkit::{kv, request, span, trace_id};
use tailgate::worker::Worker;

const RESOURCES: u64 = 5;
const SPANS_PER_RESOURCE: u64 = 100;
const SPANS_PER_TRACE: u64 = 10;

/// 5 resources x 100 spans, 10 spans per trace, 10 attributes per span.
fn realistic_request(seed: u64) -> Vec<u8> {
    let resource_spans: Vec<ResourceSpans> = (0..RESOURCES)
        .map(|r| {
            let spans = (0..SPANS_PER_RESOURCE)
                .map(|i| {
                    let n = seed * 1000 + r * SPANS_PER_RESOURCE + i;
                    let mut s = span(
                        trace_id(n / SPANS_PER_TRACE),
                        n % SPANS_PER_TRACE + 1,
                        Some(1),
                    );
                    s.name = format!("GET /api/v1/items/{}", i % 7);
                    s.attributes = (0..10)
                        .map(|a| kv(&format!("attr.key.{a}"), &format!("value-{}", (n + a) % 13)))
                        .collect();
                    s
                })
                .collect();
            request(&format!("service-{r}"), spans)
                .resource_spans
                .remove(0)
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }.encode_to_vec()
}

fn bench(c: &mut Criterion) {
    let requests: Vec<Vec<u8>> = (0..20).map(realistic_request).collect();
    let spans = requests.len() as u64 * RESOURCES * SPANS_PER_RESOURCE;
    let wire: usize = requests.iter().map(Vec::len).sum();
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
                black_box(ExportTraceServiceRequest::decode(&r[..]).unwrap());
            }
        })
    });

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let worker = runtime.block_on(async {
        let config = parse_worker(
            r#"
receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}}
tail_sampling:
  decision_wait: 1h
  num_traces: 1000000
  policies: [{name: ten, type: probabilistic, probabilistic: {sampling_percentage: 10}}]
exporters: {debug: {}}
admin: {endpoint: "127.0.0.1:0"}
"#,
        )
        .unwrap();
        Worker::start(config).await.unwrap()
    });
    let pipeline = worker.pipeline().clone();
    group.bench_function("decode_and_buffer", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                for r in &requests {
                    let decoded = ExportTraceServiceRequest::decode(&r[..]).unwrap();
                    pipeline
                        .ingest(decoded, tokio::time::Instant::now())
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
    let decoded: Vec<ExportTraceServiceRequest> = requests
        .iter()
        .map(|r| ExportTraceServiceRequest::decode(&r[..]).unwrap())
        .collect();
    let config: SpanMetricsConfig =
        serde_yaml::from_str("{instance_id: bench, dimensions: [{name: attr.key.1}]}").unwrap();
    let span_metrics = SpanMetrics::new(&config, &Registry::new()).unwrap();
    let mut group = c.benchmark_group("spanmetrics");
    group.throughput(Throughput::Elements(spans));
    group.bench_function("record", |b| {
        b.iter(|| {
            for r in &decoded {
                span_metrics.record(r, tokio::time::Instant::now());
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
