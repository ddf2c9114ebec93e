use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use super::config::ExporterConfig;
use super::*;
use crate::otlp::RequestBuilder;
use crate::worker::config::parse_worker;
use tailgate_testkit::{metric, span, trace_id};

fn exporters(yaml: &str) -> Vec<(String, ExporterConfig)> {
    let text = format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{}}}}}}}}\ntail_sampling: {{policies: [{{name: a, type: always_sample}}]}}\nexporters:\n{yaml}"
    );
    parse_worker(&text).unwrap().exporters
}

fn encoded(trace: u64, spans: u64) -> EncodedRequest {
    let spans = (1..=spans)
        .map(|s| span(trace_id(trace), s, None))
        .collect();
    let mut b = RequestBuilder::default();
    let trace = crate::otlp::chunk_of_spans(spans);
    b.push(trace.chunks().next().expect("one chunk"));
    b.take()
}

/// The trace of each resource spans of `requests` (each [`encoded`] request's one), in
/// the order they were sent.
fn traces_in_order(requests: &[ExportTraceServiceRequest]) -> Vec<Vec<u8>> {
    requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .map(|rs| rs.scope_spans[0].spans[0].trace_id.clone())
        .collect()
}

/// The ids of traces `ns`, as [`traces_in_order`] gives them.
fn traces(ns: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    ns.map(|n| trace_id(n).to_vec()).collect()
}

/// Sends one request through a one-consumer gRPC exporter to `port` and, once it is
/// delivered, `requests` (enqueued with no await between, so all of them wait when the
/// consumer looks); returns the exporter's metrics and the outcomes of `requests`, in the
/// order they settled.
async fn send_behind_a_delivered_one(
    port: u16,
    requests: Vec<EncodedRequest>,
) -> (Registry, Vec<crate::otlp::Outcome>) {
    let configs = exporters(&format!(
        "  otlp: {{endpoint: '127.0.0.1:{port}', tls: {{insecure: true}}, sending_queue: {{num_consumers: 1}}}}\n"
    ));
    let registry = Registry::new();
    let set = ExporterSet::start(&configs, &registry, None).unwrap();
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let settled = |mut request: EncodedRequest| {
        let seen = outcomes.clone();
        request.settlement = Some(Arc::new(crate::otlp::Settlement::new(move |o| {
            seen.lock().unwrap().push(o)
        })));
        request
    };
    let wait_for = |n: usize| {
        let outcomes = outcomes.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while outcomes.lock().unwrap().len() < n {
                assert!(Instant::now() < deadline, "{n} outcomes expected");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    set.enqueue(settled(encoded(1000, 1)));
    wait_for(1).await;
    assert_eq!(outcomes.lock().unwrap()[0], crate::otlp::Outcome::Delivered);
    let n = requests.len();
    for request in requests {
        set.enqueue(settled(request));
    }
    wait_for(1 + n).await;
    set.shutdown(Instant::now() + Duration::from_secs(10)).await;
    let outcomes = outcomes.lock().unwrap().split_off(1);
    (registry, outcomes)
}

#[tokio::test]
async fn requests_queued_behind_a_delivered_send_go_out_merged() {
    let port = tailgate_testkit::free_port();
    let sink = tailgate_testkit::Sink::start_at(&format!("127.0.0.1:{port}")).await;
    let (registry, outcomes) =
        send_behind_a_delivered_one(port, (0..20).map(|n| encoded(n, 3)).collect()).await;
    let requests = sink.requests();
    assert_eq!(
        requests.len(),
        2,
        "the first alone, then the twenty queued as one"
    );
    assert_eq!(traces_in_order(&requests[1..]), traces(0..20));
    let text = registry.render();
    assert_eq!(
        metric(&text, "otelcol_exporter_sent_spans_total", &[]),
        61.0
    );
    assert_eq!(
        outcomes,
        vec![crate::otlp::Outcome::Delivered; 20],
        "every merged request is settled"
    );
}

#[tokio::test]
async fn a_merged_send_stays_within_its_byte_limit() {
    let port = tailgate_testkit::free_port();
    let sink = tailgate_testkit::Sink::start_at(&format!("127.0.0.1:{port}")).await;
    // About 0.4 MiB each: two fit in a send, the third is carried to the next.
    let one = encoded(0, 4500).bytes.len();
    assert!(one > MERGE_BYTES / 3 && one < MERGE_BYTES / 2, "{one}");
    let (registry, outcomes) =
        send_behind_a_delivered_one(port, (0..5).map(|n| encoded(n, 4500)).collect()).await;
    let sizes: Vec<usize> = sink.requests()[1..]
        .iter()
        .map(|r| r.resource_spans.len())
        .collect();
    assert_eq!(sizes, [2, 2, 1]);
    assert!(sink
        .requests()
        .iter()
        .all(|r| r.encoded_len() <= MERGE_BYTES));
    let text = registry.render();
    assert_eq!(
        metric(&text, "otelcol_exporter_sent_spans_total", &[]),
        22_501.0
    );
    assert_eq!(outcomes.len(), 5);
}

/// A backend that refuses for good any request holding `poison`'s spans, and keeps the
/// trace ids of the spans it takes.
struct Picky {
    poison: Vec<u8>,
    taken: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

#[tonic::async_trait]
impl TraceService for Picky {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let ids: Vec<Vec<u8>> = crate::otlp::spans(request.get_ref())
            .map(|s| s.trace_id.clone())
            .collect();
        if ids.contains(&self.poison) {
            return Err(tonic::Status::invalid_argument("poisoned"));
        }
        self.taken.lock().unwrap().extend(ids);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test]
async fn a_merged_send_refused_for_good_is_sent_again_one_by_one() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let taken = Arc::new(std::sync::Mutex::new(Vec::new()));
    let picky = Picky {
        poison: trace_id(7).to_vec(),
        taken: taken.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                TraceServiceServer::new(picky)
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (registry, outcomes) =
        send_behind_a_delivered_one(port, (0..10).map(|n| encoded(n, 3)).collect()).await;
    // The ten went as one and were refused; then one by one: only the poisoned one fails.
    use crate::otlp::Outcome::{Delivered, Failed};
    let mut expected = vec![Delivered; 10];
    expected[7] = Failed;
    assert_eq!(outcomes, expected);
    let text = registry.render();
    assert_eq!(
        metric(&text, "otelcol_exporter_sent_spans_total", &[]),
        28.0
    );
    assert_eq!(
        metric(&text, "otelcol_exporter_send_failed_spans_total", &[]),
        3.0
    );
    let taken = taken.lock().unwrap();
    assert_eq!(taken.len(), 28);
    assert!(!taken.contains(&trace_id(7).to_vec()));
}

#[tokio::test]
async fn the_file_exporter_writes_json_lines_and_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out/traces.jsonl");
    let configs = exporters(&format!(
        "  file: {{path: {:?}, rotation: {{max_megabytes: 1, max_backups: 2}}}}\n",
        path.display().to_string()
    ));
    let registry = Registry::new();
    let set = ExporterSet::start(&configs, &registry, None).unwrap();
    // ~300 KiB per line: the fourth line no longer fits in 1 MiB.
    for n in 0..7 {
        set.enqueue(encoded(n, 1500));
    }
    set.shutdown(Instant::now() + Duration::from_secs(10)).await;
    let text = registry.render();
    assert_eq!(
        metric(&text, "otelcol_exporter_sent_spans_total", &[]),
        7.0 * 1500.0
    );
    let backup = |n: usize| std::path::PathBuf::from(format!("{}.{n}", path.display()));
    assert!(backup(1).exists() && backup(2).exists() && !backup(3).exists());
    let current = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = current.lines().collect();
    assert!(!lines.is_empty() && lines.len() <= 3);
    for line in lines {
        let request: ExportTraceServiceRequest = serde_json::from_str(line).unwrap();
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.span_id, 1u64.to_be_bytes().to_vec());
        // OTLP JSON: ids as hex, 64-bit integers as strings.
        let id: [u8; 16] = span.trace_id.as_slice().try_into().unwrap();
        assert!(line.contains(&format!(
            "\"traceId\":\"{}\"",
            crate::otlp::trace_id_hex(&id)
        )));
        assert!(
            line.contains("\"startTimeUnixNano\":\""),
            "{}",
            &line[..200]
        );
    }
}

/// A minimal OTLP/HTTP backend: answers each call with the next status of `script`,
/// then 200, and records the bodies it accepted.
async fn http_backend(
    script: Vec<StatusCode>,
) -> (
    String,
    Arc<std::sync::Mutex<Vec<ExportTraceServiceRequest>>>,
    Arc<AtomicUsize>,
) {
    use axum::routing::post;
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (r, c) = (received.clone(), calls.clone());
    let app = axum::Router::new().route(
        "/v1/traces",
        post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (r, c, script) = (r.clone(), c.clone(), script.clone());
                async move {
                    let call = c.fetch_add(1, Ordering::SeqCst);
                    if let Some(status) = script.get(call) {
                        return (*status, Vec::new());
                    }
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    assert_eq!(headers["x-tenant"], "acme");
                    let raw = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
                        let mut out = Vec::new();
                        std::io::Read::read_to_end(
                            &mut flate2::read::GzDecoder::new(&body[..]),
                            &mut out,
                        )
                        .unwrap();
                        out
                    } else {
                        body.to_vec()
                    };
                    r.lock()
                        .unwrap()
                        .push(ExportTraceServiceRequest::decode(&raw[..]).unwrap());
                    (StatusCode::OK, Vec::new())
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received, calls)
}

#[tokio::test]
async fn otlphttp_retries_retryable_statuses_and_sends_gzip() {
    let (url, received, calls) = http_backend(vec![
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::TOO_MANY_REQUESTS,
    ])
    .await;
    let configs = exporters(&format!(
        "  otlphttp: {{endpoint: {url:?}, headers: {{x-tenant: acme}}, retry_on_failure: {{initial_interval: 10ms, randomization_factor: 0}}}}\n"
    ));
    let registry = Registry::new();
    let set = ExporterSet::start(&configs, &registry, None).unwrap();
    set.enqueue(encoded(1, 3));
    set.shutdown(Instant::now() + Duration::from_secs(10)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(received.lock().unwrap().len(), 1);
    assert_eq!(
        metric(&registry.render(), "otelcol_exporter_sent_spans_total", &[]),
        3.0
    );
}

#[tokio::test]
async fn otlphttp_does_not_retry_a_bad_request() {
    let (url, received, calls) = http_backend(vec![StatusCode::BAD_REQUEST]).await;
    let configs = exporters(&format!(
        "  otlphttp: {{endpoint: {url:?}, compression: none, headers: {{x-tenant: acme}}, retry_on_failure: {{initial_interval: 10ms}}}}\n"
    ));
    let registry = Registry::new();
    let set = ExporterSet::start(&configs, &registry, None).unwrap();
    set.enqueue(encoded(1, 2));
    set.shutdown(Instant::now() + Duration::from_secs(10)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(received.lock().unwrap().is_empty());
    assert_eq!(
        metric(
            &registry.render(),
            "otelcol_exporter_send_failed_spans_total",
            &[]
        ),
        2.0
    );
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially_until_max_elapsed_time() {
    let (url, _, calls) = http_backend(vec![StatusCode::SERVICE_UNAVAILABLE; 100]).await;
    let configs = exporters(&format!(
        "  otlphttp: {{endpoint: {url:?}, retry_on_failure: {{initial_interval: 1s, multiplier: 2, max_interval: 4s, max_elapsed_time: 10s, randomization_factor: 0}}}}\n"
    ));
    let registry = Registry::new();
    let set = ExporterSet::start(&configs, &registry, None).unwrap();
    set.enqueue(encoded(1, 5));
    // Attempts at 0s, 1s, 3s, 7s; the next wait (4s) would pass 10s, so it gives up.
    set.shutdown(Instant::now() + Duration::from_secs(60)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(
        metric(
            &registry.render(),
            "otelcol_exporter_send_failed_spans_total",
            &[]
        ),
        5.0
    );
}

#[tokio::test(start_paused = true)]
async fn what_is_still_queued_at_the_deadline_is_counted_as_failed() {
    let (url, _, _) = http_backend(vec![StatusCode::SERVICE_UNAVAILABLE; 1000]).await;
    let configs = exporters(&format!(
        "  otlphttp: {{endpoint: {url:?}, sending_queue: {{num_consumers: 1}}, retry_on_failure: {{initial_interval: 1s, max_elapsed_time: 0s}}}}\n"
    ));
    let registry = Registry::new();
    let set = ExporterSet::start(&configs, &registry, None).unwrap();
    for n in 0..4 {
        set.enqueue(encoded(n, 2));
    }
    set.shutdown(Instant::now() + Duration::from_secs(5)).await;
    let text = registry.render();
    // One request in flight and three queued, all abandoned and counted.
    assert_eq!(
        metric(&text, "otelcol_exporter_send_failed_spans_total", &[]),
        8.0
    );
    assert_eq!(metric(&text, "otelcol_exporter_sent_spans_total", &[]), 0.0);
    // After shutdown the queue is closed: more data is counted, not lost.
    set.enqueue(encoded(9, 3));
    assert_eq!(
        metric(
            &registry.render(),
            "otelcol_exporter_enqueue_failed_spans_total",
            &[]
        ),
        3.0
    );
}

/// With storage, a queue at capacity overflows to disk and the receivers are not pushed
/// back; when the backend comes back, every request is delivered, oldest first, and the
/// overflow empties.
#[tokio::test]
async fn a_full_queue_overflows_to_disk_and_drains_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let storage = crate::storage::FileStorageConfig {
        directory: dir.path().to_owned(),
        fsync: false,
        create_directory: false,
    };
    let port = tailgate_testkit::free_port();
    let configs = exporters(&format!(
        "  otlp: {{endpoint: '127.0.0.1:{port}', tls: {{insecure: true}}, timeout: 1s, sending_queue: {{queue_size: 2, num_consumers: 1}}, retry_on_failure: {{initial_interval: 20ms, max_interval: 50ms, max_elapsed_time: 0s}}}}\n"
    ));
    let registry = Registry::new();
    let spill = SpillTo {
        storage: &storage,
        limit: 1 << 30,
    };
    let set = ExporterSet::start(&configs, &registry, Some(spill)).unwrap();
    for n in 0..20 {
        set.enqueue(encoded(n, 10));
        assert!(!set.is_full(), "pushed back at request {n}");
    }
    let text = registry.render();
    let spilled = metric(&text, "tailgate_exporter_queue_spilled_requests", &[]);
    let queued = metric(&text, "otelcol_exporter_queue_size", &[]);
    assert!(spilled >= 16.0, "{spilled} on disk, {queued} queued");
    let on_disk = metric(&text, "tailgate_storage_bytes", &[("log", "exporter_otlp")]);
    assert!(on_disk > 0.0, "{text}");

    let sink = tailgate_testkit::Sink::start_at(&format!("127.0.0.1:{port}")).await;
    assert_eq!(sink.wait_for_spans(200, Duration::from_secs(20)).await, 200);
    // One consumer: the requests arrive in the order they were enqueued (some merged into
    // one send, their resource spans in order).
    assert_eq!(traces_in_order(&sink.requests()), traces(0..20));
    // The sink has a request before the exporter has its answer and counts it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&registry.render(), "otelcol_exporter_sent_spans_total", &[]) < 200.0 {
        assert!(Instant::now() < deadline, "{}", registry.render());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metric(
            &registry.render(),
            "tailgate_exporter_queue_spilled_requests",
            &[]
        ),
        0.0
    );
    set.shutdown(Instant::now() + Duration::from_secs(5)).await;
}

/// The overflow is scratch: what a run left on disk is gone at the next start (the
/// worker's log sends it again), and a request the disk cannot take is given back.
#[test]
fn the_overflow_starts_empty_and_gives_back_what_it_cannot_take() {
    let dir = tempfile::tempdir().unwrap();
    let storage = crate::storage::FileStorageConfig {
        directory: dir.path().to_owned(),
        fsync: false,
        create_directory: false,
    };
    let registry = Registry::new();
    let segments = || {
        std::fs::read_dir(dir.path().join("exporter_otlp%2Fa"))
            .unwrap()
            .count()
    };
    {
        let spill = Spill::open(&storage, "otlp/a", 1 << 20, &registry).unwrap();
        for n in 0..3 {
            spill.push(encoded(n, 5)).unwrap();
        }
        let first = spill.pop().unwrap().unwrap();
        assert_eq!(first.bytes, encoded(0, 5).bytes);
        assert_eq!(spill.len(), 2);
    }
    let before = segments();
    let spill = Spill::open(&storage, "otlp/a", 1 << 20, &registry).unwrap();
    assert_eq!(spill.len(), 0);
    assert!(spill.pop().is_none());
    // The old segment is deleted; the lock file and the new segment remain.
    assert_eq!(segments(), before);
    let big = encoded(9, 20_000);
    assert!(big.bytes.len() > 1 << 20);
    assert!(spill.push(big).is_err());
}

/// What a hand-made gRPC backend received: the headers and the request's body as sent.
type Received = Arc<std::sync::Mutex<Vec<(http::HeaderMap, Bytes)>>>;

/// A gRPC backend made by hand on hyper, answering every call with `status` and the
/// given headers (a trailers-only answer when they hold `grpc-status`), else with the
/// `message` and `trailers`; records what it received.
async fn raw_backend(
    status: u16,
    headers: Pairs,
    message: Option<ExportTraceServiceResponse>,
    trailers: Pairs,
) -> (String, Received) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let received = Received::default();
    let log = received.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let log = log.clone();
            let message = message.clone();
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    let message = message.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        log.lock().unwrap().push((parts.headers, body));
                        let mut frames = Vec::new();
                        if let Some(message) = message {
                            let bytes = message.encode_to_vec();
                            let mut framed = vec![0];
                            framed.extend((bytes.len() as u32).to_be_bytes());
                            framed.extend(bytes);
                            frames.push(hyper::body::Frame::data(Bytes::from(framed)));
                        }
                        if !trailers.is_empty() {
                            let mut map = http::HeaderMap::new();
                            for (k, v) in trailers {
                                map.insert(*k, v.parse().unwrap());
                            }
                            frames.push(hyper::body::Frame::trailers(map));
                        }
                        let body = http_body_util::StreamBody::new(tokio_stream::iter(
                            frames.into_iter().map(Ok::<_, std::convert::Infallible>),
                        ));
                        let mut response = http::Response::builder()
                            .status(status)
                            .header("content-type", "application/grpc");
                        for (k, v) in headers {
                            response = response.header(*k, *v);
                        }
                        Ok::<_, std::convert::Infallible>(response.body(body).unwrap())
                    }
                });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
            );
        }
    });
    (endpoint, received)
}

fn grpc_sink(endpoint: &str, compression: &str) -> otlp_grpc::GrpcSink {
    let configs = exporters(&format!(
        "  otlp: {{endpoint: {endpoint:?}, tls: {{insecure: true}}, compression: {compression}, timeout: 3s, headers: {{X-Tenant: acme}}}}\n"
    ));
    let ExporterConfig::Otlp(config) = &configs[0].1 else {
        panic!("an otlp exporter");
    };
    otlp_grpc::GrpcSink::new(config).unwrap()
}

const OK: &[(&str, &str)] = &[("grpc-status", "0")];
const NONE: &[(&str, &str)] = &[];
/// Header names and values.
type Pairs = &'static [(&'static str, &'static str)];

/// The request goes out as one gRPC message: gzipped with `grpc-encoding: gzip` by
/// default, as it is with `compression: none`, with the configured headers and the
/// timeout as `grpc-timeout`; the backend's partial success is read from its answer.
#[tokio::test]
async fn the_otlp_exporter_frames_gzips_and_reads_partial_success() {
    let answer = ExportTraceServiceResponse {
        partial_success: Some(
            opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess {
                rejected_spans: 2,
                error_message: "two too many".into(),
            },
        ),
    };
    let (endpoint, received) = raw_backend(200, NONE, Some(answer), OK).await;
    let request = encoded(1, 40);
    for compression in ["gzip", "none"] {
        let sent = grpc_sink(&endpoint, compression)
            .send(&request)
            .await
            .unwrap();
        assert_eq!(sent.rejected, 2);
        let (headers, body) = received.lock().unwrap().pop().unwrap();
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["te"], "trailers");
        assert_eq!(headers["grpc-timeout"], "3000m");
        assert_eq!(headers["x-tenant"], "acme");
        let length = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert_eq!(length, body.len() - 5);
        let message = if compression == "gzip" {
            assert_eq!(headers["grpc-encoding"], "gzip");
            assert_eq!(body[0], 1);
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[5..]), &mut raw)
                .unwrap();
            assert!(
                length < raw.len() / 2,
                "{length} bytes of gzip for {}",
                raw.len()
            );
            raw
        } else {
            assert!(!headers.contains_key("grpc-encoding"));
            assert_eq!(body[0], 0);
            body[5..].to_vec()
        };
        assert_eq!(message, request.bytes.to_vec());
    }
}

/// Each way a gRPC call can fail is told apart as gRPC defines it: a trailers-only
/// status, a status in the trailers, an HTTP status without a gRPC one, and a response
/// that ends without any status; retryable codes are retried, the rest are not.
#[tokio::test]
async fn the_otlp_exporter_reads_each_kind_of_failed_call() {
    let retryable = |e: &SendError| matches!(e, SendError::Retryable { .. });
    let cases: [(u16, Pairs, Pairs, bool, &str); 5] = [
        (
            200,
            &[("grpc-status", "14"), ("grpc-message", "busy")],
            NONE,
            true,
            "Unavailable: busy",
        ),
        (
            200,
            NONE,
            &[("grpc-status", "3"), ("grpc-message", "bad")],
            false,
            "InvalidArgument: bad",
        ),
        (503, NONE, NONE, true, "Unavailable"),
        (400, NONE, NONE, false, "Internal"),
        (200, NONE, NONE, false, "Unknown"),
    ];
    for (status, headers, trailers, retried, message) in cases {
        let (endpoint, _) = raw_backend(status, headers, None, trailers).await;
        let error = grpc_sink(&endpoint, "gzip")
            .send(&encoded(1, 3))
            .await
            .unwrap_err();
        assert_eq!(
            retryable(&error),
            retried,
            "{status} {headers:?} {trailers:?}: {error}"
        );
        assert!(error.to_string().contains(message), "{error}");
    }
}
