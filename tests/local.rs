//! Local mode end to end: a real OpenTelemetry SDK sends to the local router; the kept
//! traces are found in the workers' files, and one /metrics shows every component.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use opentelemetry::trace::{Span as _, Tracer, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tailgate_testkit::{all_spans, metric};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_sent_to_local_mode_are_written_to_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let local = common::local(dir.path()).await;
    let banner = local.banner();
    assert!(
        banner.contains("send OTLP/gRPC to") && banner.contains("traces-1.jsonl"),
        "{banner}"
    );

    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", local.grpc_addr.unwrap()))
        .build()
        .unwrap();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("local-test")
                .build(),
        )
        .build();
    let tracer = provider.tracer("it");
    // 40 traces, each with an error, so the default policies keep every one.
    let mut ids = HashSet::new();
    for i in 0..40 {
        let mut root = tracer.start(format!("request-{i}"));
        root.set_status(opentelemetry::trace::Status::error("boom"));
        ids.insert(root.span_context().trace_id().to_bytes().to_vec());
        root.end();
    }
    provider.force_flush().unwrap();

    // Wait (bounded) until every trace is in one of the files.
    let mut found = HashSet::new();
    for _ in 0..500 {
        found.clear();
        for file in &local.trace_files {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            for line in text.lines() {
                let request: ExportTraceServiceRequest = serde_json::from_str(line).unwrap();
                found.extend(all_spans(&request).map(|s| s.trace_id.clone()));
            }
        }
        if found.len() == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(found, ids);

    // One endpoint, every component, each family once.
    let text = common::scrape(local.admin_addr).await;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).unwrap();
    assert_eq!(
        text.matches("# TYPE otelcol_receiver_accepted_spans_total")
            .count(),
        1
    );
    assert_eq!(
        metric(
            &text,
            "otelcol_receiver_accepted_spans_total",
            &[("component", "router")]
        ),
        40.0
    );
    let by_workers = metric(
        &text,
        "otelcol_receiver_accepted_spans_total",
        &[("component", "worker-0")],
    ) + metric(
        &text,
        "otelcol_receiver_accepted_spans_total",
        &[("component", "worker-1")],
    );
    assert_eq!(by_workers, 40.0);
    assert!(
        text.contains("collector_instance_id=\"local-worker-"),
        "span metrics with worker identities"
    );
    provider.shutdown().unwrap();
    local.shutdown().await;
}
