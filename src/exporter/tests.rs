use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
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
    b.push(&crate::otlp::chunk_of_spans(spans));
    b.take()
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
    let set = ExporterSet::start(&configs, &registry).unwrap();
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
    let set = ExporterSet::start(&configs, &registry).unwrap();
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
    let set = ExporterSet::start(&configs, &registry).unwrap();
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
    let set = ExporterSet::start(&configs, &registry).unwrap();
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
    let set = ExporterSet::start(&configs, &registry).unwrap();
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
