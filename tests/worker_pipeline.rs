//! End to end through a real worker: OTLP in over gRPC and HTTP, decisions, OTLP out to
//! an in-process sink.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use prost::Message;
use tailgate::worker::Worker;
use tailgate_testkit::{all_spans, metric, request, span, trace_id, Sink};

const KEEP_ALL: &str = r#"
  decision_wait: 500ms
  policies:
    - {name: all, type: always_sample}
"#;

#[tokio::test]
async fn a_trace_split_over_requests_and_connections_is_exported_whole_once() {
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(&sink, KEEP_ALL))
        .await
        .unwrap();
    let traces: Vec<[u8; 16]> = (1..=4).map(trace_id).collect();
    // Span k of every trace goes out on its own connection; even k over gRPC,
    // odd k over HTTP (protobuf for k = 1, JSON for k = 3).
    let http = reqwest::Client::new();
    for k in 0..4u64 {
        let spans = traces
            .iter()
            .map(|t| span(*t, 10 + k, (k > 0).then_some(10)))
            .collect();
        let req = request(&format!("svc-{k}"), spans);
        match k {
            0 | 2 => {
                let mut client = common::grpc_client(&worker).await;
                client.export(req).await.unwrap();
            }
            1 => {
                let r = http
                    .post(common::http_url(&worker))
                    .header("content-type", "application/x-protobuf")
                    .body(req.encode_to_vec())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
            _ => {
                let r = http
                    .post(common::http_url(&worker))
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&req).unwrap())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
            }
        }
    }
    assert_eq!(sink.wait_for_spans(16, Duration::from_secs(20)).await, 16);
    // Each trace arrives in exactly one export request, with all four spans, once.
    let mut requests_per_trace: HashMap<Vec<u8>, HashSet<usize>> = HashMap::new();
    let mut span_ids = HashSet::new();
    for (i, r) in sink.requests().iter().enumerate() {
        for s in all_spans(r) {
            requests_per_trace
                .entry(s.trace_id.clone())
                .or_default()
                .insert(i);
            assert!(
                span_ids.insert((s.trace_id.clone(), s.span_id.clone())),
                "span exported twice"
            );
        }
    }
    assert_eq!(requests_per_trace.len(), 4);
    assert!(
        requests_per_trace.values().all(|r| r.len() == 1),
        "{requests_per_trace:?}"
    );
    // Resources are exported exactly as received.
    let services: HashSet<String> = sink
        .requests()
        .iter()
        .flat_map(|r| r.resource_spans.iter())
        .map(|rs| format!("{:?}", rs.resource.as_ref().unwrap().attributes[0].value))
        .collect();
    assert_eq!(services.len(), 4);
    let text = common::scrape(worker.admin_addr).await;
    assert_eq!(
        metric(
            &text,
            "otelcol_receiver_accepted_spans_total",
            &[("transport", "grpc")]
        ),
        8.0
    );
    assert_eq!(
        metric(
            &text,
            "otelcol_receiver_accepted_spans_total",
            &[("transport", "http")]
        ),
        8.0
    );
    let sent = "otelcol_exporter_sent_spans_total";
    assert_eq!(
        common::wait_metric(worker.admin_addr, sent, &[("exporter", "otlp")], |v| v
            == 16.0)
        .await,
        16.0
    );
    worker.shutdown().await;
}

/// Waits (bounded) until nothing is pending, queued or in flight: every sampled span has
/// been sent or has failed.
async fn settle(worker: &Worker) {
    for _ in 0..500 {
        let text = common::scrape(worker.admin_addr).await;
        let sampled = metric(
            &text,
            "tailgate_spans_decided_total",
            &[("outcome", "sampled")],
        );
        let finished = metric(&text, "otelcol_exporter_sent_spans_total", &[])
            + metric(&text, "otelcol_exporter_send_failed_spans_total", &[]);
        if metric(
            &text,
            "otelcol_processor_tail_sampling_sampling_traces_on_memory",
            &[],
        ) == 0.0
            && finished == sampled
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("worker did not settle");
}

#[tokio::test]
async fn late_spans_follow_the_cached_decision() {
    let sink = Sink::start(vec![]).await;
    // trace_id(1) hashes below the 50 % threshold (kept), trace_id(2) above (not kept).
    let worker = Worker::start(common::config(
        &sink,
        r#"
  decision_wait: 300ms
  decision_cache: {sampled_cache_size: 100, non_sampled_cache_size: 100}
  policies:
    - {name: half, type: probabilistic, probabilistic: {sampling_percentage: 50}}
"#,
    ))
    .await
    .unwrap();
    let mut client = common::grpc_client(&worker).await;
    let (kept, dropped) = (trace_id(1), trace_id(2));
    client
        .export(request(
            "a",
            vec![span(kept, 1, None), span(dropped, 1, None)],
        ))
        .await
        .unwrap();
    assert_eq!(sink.wait_for_spans(1, Duration::from_secs(10)).await, 1);
    settle(&worker).await;
    // Late spans of both traces, after their decisions.
    client
        .export(request(
            "a",
            vec![
                span(kept, 2, Some(1)),
                span(dropped, 2, Some(1)),
                span(dropped, 3, Some(1)),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(sink.wait_for_spans(2, Duration::from_secs(10)).await, 2);
    settle(&worker).await;
    let exported: Vec<_> = sink
        .requests()
        .iter()
        .flat_map(|r| all_spans(r).cloned().collect::<Vec<_>>())
        .collect();
    assert!(
        exported.iter().all(|s| s.trace_id == kept.to_vec()),
        "a span of the dropped trace was exported"
    );
    assert_eq!(exported.len(), 2);
    let text = common::scrape(worker.admin_addr).await;
    let early = "otelcol_processor_tail_sampling_early_releases_from_cache_decision_total";
    assert_eq!(metric(&text, early, &[("sampled", "true")]), 1.0);
    assert_eq!(metric(&text, early, &[("sampled", "false")]), 2.0);
    assert_eq!(
        metric(
            &text,
            "tailgate_spans_decided_total",
            &[("outcome", "not_sampled")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            "otelcol_processor_tail_sampling_new_trace_id_received_total",
            &[]
        ),
        2.0
    );
    worker.shutdown().await;
}

/// A full decision cache forgets its least recently used decisions, as the collector's LRU
/// does, and remembers every new one: the traces decided last are the ones late spans
/// are likely to come for.
#[tokio::test]
async fn a_full_decision_cache_remembers_the_newest_decisions() {
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(
        &sink,
        r#"
  decision_wait: 300ms
  decision_cache: {sampled_cache_size: 100}
  policies:
    - {name: all, type: always_sample}
"#,
    ))
    .await
    .unwrap();
    let mut client = common::grpc_client(&worker).await;
    // Ten times what the cache holds, decided in rounds (a round's traces are decided in no
    // particular order). The last two rounds are the 100 decisions the cache holds.
    let traces: Vec<[u8; 16]> = (1..=1000).map(trace_id).collect();
    for round in [
        &traces[..500],
        &traces[500..900],
        &traces[900..950],
        &traces[950..],
    ] {
        let spans = round.iter().map(|t| span(*t, 1, None)).collect();
        client.export(request("a", spans)).await.unwrap();
        settle(&worker).await;
    }
    assert_eq!(
        sink.wait_for_spans(1000, Duration::from_secs(10)).await,
        1000
    );
    // A late span for each trace of the last round but one.
    let late = traces[900..950]
        .iter()
        .map(|t| span(*t, 2, Some(1)))
        .collect();
    client.export(request("a", late)).await.unwrap();
    assert_eq!(
        sink.wait_for_spans(1050, Duration::from_secs(10)).await,
        1050
    );
    settle(&worker).await;
    let text = common::scrape(worker.admin_addr).await;
    let early = "otelcol_processor_tail_sampling_early_releases_from_cache_decision_total";
    assert_eq!(
        metric(&text, early, &[("sampled", "true")]),
        50.0,
        "a late span of a trace decided last found no decision"
    );
    assert_eq!(
        metric(
            &text,
            "otelcol_processor_tail_sampling_new_trace_id_received_total",
            &[]
        ),
        1000.0
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn without_a_cache_a_late_span_starts_a_new_trace() {
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(&sink, KEEP_ALL))
        .await
        .unwrap();
    let mut client = common::grpc_client(&worker).await;
    client
        .export(request("a", vec![span(trace_id(1), 1, None)]))
        .await
        .unwrap();
    assert_eq!(sink.wait_for_spans(1, Duration::from_secs(10)).await, 1);
    client
        .export(request("a", vec![span(trace_id(1), 2, Some(1))]))
        .await
        .unwrap();
    assert_eq!(sink.wait_for_spans(2, Duration::from_secs(10)).await, 2);
    assert_eq!(
        sink.requests().len(),
        2,
        "the late span is its own, second decision"
    );
    let text = common::scrape(worker.admin_addr).await;
    assert_eq!(
        metric(
            &text,
            "otelcol_processor_tail_sampling_new_trace_id_received_total",
            &[]
        ),
        2.0
    );
    worker.shutdown().await;
}

/// The books balance: every accepted span is in exactly one outcome, and every sampled
/// span was sent, for a workload with late spans, evictions and oversize traces.
#[tokio::test]
async fn every_accepted_span_is_accounted_for() {
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(
        &sink,
        r#"
  decision_wait: 400ms
  num_traces: 20
  maximum_trace_size_bytes: 3000
  decision_cache: {sampled_cache_size: 1000, non_sampled_cache_size: 1000}
  policies:
    - {name: third, type: probabilistic, probabilistic: {sampling_percentage: 33}}
"#,
    ))
    .await
    .unwrap();
    let mut client = common::grpc_client(&worker).await;
    let mut sent = 0u64;
    // 60 traces of 3 spans in one burst: more than num_traces, so some are evicted.
    for batch in 0..6u64 {
        let spans: Vec<_> = (0..10u64)
            .flat_map(|t| {
                let id = trace_id(batch * 10 + t);
                [
                    span(id, 1, None),
                    span(id, 2, Some(1)),
                    span(id, 3, Some(1)),
                ]
            })
            .collect();
        sent += spans.len() as u64;
        client.export(request("burst", spans)).await.unwrap();
    }
    // One trace that grows past maximum_trace_size_bytes.
    for s in 0..40u64 {
        client
            .export(request("big", vec![span(trace_id(1000), s + 1, Some(1))]))
            .await
            .unwrap();
        sent += 1;
    }
    settle(&worker).await;
    // Late spans for every trace: cached decisions, or new traces for evicted ones.
    let late: Vec<_> = (0..60u64).map(|t| span(trace_id(t), 9, Some(1))).collect();
    sent += late.len() as u64;
    client.export(request("late", late)).await.unwrap();
    settle(&worker).await;
    worker_totals_balance(&worker, &sink, sent).await;
    worker.shutdown().await;
}

async fn worker_totals_balance(worker: &Worker, sink: &Sink, sent: u64) {
    let text = common::scrape(worker.admin_addr).await;
    let accepted = metric(&text, "otelcol_receiver_accepted_spans_total", &[]);
    assert_eq!(accepted, sent as f64);
    let outcome = |o| metric(&text, "tailgate_spans_decided_total", &[("outcome", o)]);
    let buckets = [
        "sampled",
        "not_sampled",
        "dropped",
        "evicted",
        "too_large",
        "shutdown",
    ];
    let decided: f64 = buckets.iter().map(|o| outcome(*o)).sum();
    let buffered = metric(&text, "tailgate_buffered_spans", &[]);
    assert_eq!(decided + buffered, accepted, "{text}");
    assert!(outcome("evicted") > 0.0, "the workload should evict");
    assert!(
        outcome("too_large") > 0.0,
        "the workload should cut a large trace"
    );
    assert!(outcome("sampled") > 0.0 && outcome("not_sampled") > 0.0);
    let exported = metric(&text, "otelcol_exporter_sent_spans_total", &[]);
    assert_eq!(exported, outcome("sampled"));
    assert_eq!(sink.span_count() as f64, exported);
}

#[tokio::test]
async fn block_on_overflow_refuses_new_data_with_retryable_errors() {
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(
        &sink,
        r#"
  decision_wait: 60s
  num_traces: 2
  block_on_overflow: true
  policies: [{name: all, type: always_sample}]
"#,
    ))
    .await
    .unwrap();
    let mut client = common::grpc_client(&worker).await;
    client
        .export(request(
            "a",
            vec![span(trace_id(1), 1, None), span(trace_id(2), 1, None)],
        ))
        .await
        .unwrap();
    let status = client
        .export(request("a", vec![span(trace_id(3), 1, None)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let r = reqwest::Client::new()
        .post(common::http_url(&worker))
        .header("content-type", "application/x-protobuf")
        .body(request("a", vec![span(trace_id(4), 1, None)]).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let text = common::scrape(worker.admin_addr).await;
    assert_eq!(
        metric(&text, "otelcol_processor_refused_spans_total", &[]),
        2.0
    );
    assert_eq!(
        metric(&text, "otelcol_receiver_refused_spans_total", &[]),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "otelcol_processor_tail_sampling_sampling_trace_dropped_too_early_total",
            &[]
        ),
        0.0
    );
    // Shutdown decides the two pending traces on what they have.
    worker.shutdown().await;
    assert_eq!(sink.span_count(), 2);
}

#[tokio::test]
async fn a_full_sending_queue_pushes_back_and_loses_nothing() {
    // The backend refuses the first calls; with one consumer and a queue of one, the
    // queue fills while the consumer retries.
    let sink = Sink::start(vec![tonic::Code::Unavailable; 3]).await;
    let text = format!(
        r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}}}}}}}
tail_sampling:
  decision_wait: 100ms
  policies: [{{name: all, type: always_sample}}]
exporters:
  otlp:
    endpoint: "{}"
    tls: {{insecure: true}}
    sending_queue: {{num_consumers: 1, queue_size: 1}}
    retry_on_failure: {{initial_interval: 200ms, max_interval: 200ms, randomization_factor: 0}}
admin: {{endpoint: "127.0.0.1:0"}}
"#,
        sink.addr
    );
    let worker = Worker::start(tailgate::worker::config::parse_worker(&text).unwrap())
        .await
        .unwrap();
    let mut client = common::grpc_client(&worker).await;
    let mut accepted = 0;
    let mut refused = 0;
    for n in 0..40u64 {
        match client
            .export(request("a", vec![span(trace_id(n), 1, None)]))
            .await
        {
            Ok(_) => accepted += 1,
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted);
                refused += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(refused > 0, "the queue never filled");
    assert_eq!(
        sink.wait_for_spans(accepted, Duration::from_secs(20)).await,
        accepted
    );
    assert_eq!(sink.refused_calls(), 3);
    let sent = "otelcol_exporter_sent_spans_total";
    assert_eq!(
        common::wait_metric(worker.admin_addr, sent, &[], |v| v == accepted as f64).await,
        accepted as f64
    );
    let metrics = common::scrape(worker.admin_addr).await;
    assert_eq!(
        metric(&metrics, "otelcol_exporter_send_failed_spans_total", &[]),
        0.0
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn shutdown_decides_pending_traces_or_drops_them_counted() {
    for drop in [false, true] {
        let sink = Sink::start(vec![]).await;
        let worker = Worker::start(common::config(
            &sink,
            &format!("  decision_wait: 1h\n  drop_pending_traces_on_shutdown: {drop}\n  policies: [{{name: all, type: always_sample}}]"),
        ))
        .await
        .unwrap();
        let mut client = common::grpc_client(&worker).await;
        client
            .export(request(
                "a",
                vec![span(trace_id(1), 1, None), span(trace_id(2), 1, None)],
            ))
            .await
            .unwrap();
        let registry = worker.registry.clone();
        worker.shutdown().await;
        let text = registry.render();
        if drop {
            assert_eq!(sink.span_count(), 0);
            assert_eq!(
                metric(
                    &text,
                    "tailgate_spans_decided_total",
                    &[("outcome", "shutdown")]
                ),
                2.0
            );
        } else {
            assert_eq!(sink.span_count(), 2);
            assert_eq!(metric(&text, "otelcol_exporter_sent_spans_total", &[]), 2.0);
        }
    }
}

#[tokio::test]
async fn a_backend_that_stays_down_is_counted_as_failed() {
    let sink = Sink::start(vec![tonic::Code::InvalidArgument]).await;
    let worker = Worker::start(common::config(&sink, KEEP_ALL))
        .await
        .unwrap();
    let mut client = common::grpc_client(&worker).await;
    client
        .export(request("a", vec![span(trace_id(1), 1, None)]))
        .await
        .unwrap();
    settle(&worker).await;
    let text = common::scrape(worker.admin_addr).await;
    // INVALID_ARGUMENT is permanent: no retry, counted as failed.
    assert_eq!(
        metric(&text, "otelcol_exporter_send_failed_spans_total", &[]),
        1.0
    );
    assert_eq!(sink.refused_calls(), 1);
    assert_eq!(sink.span_count(), 0);
    worker.shutdown().await;
}

// The SDK's simple processor blocks the thread that ends a span, so the runtime needs a
// second worker thread to carry the export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_from_the_opentelemetry_sdk_are_exported() {
    use opentelemetry::trace::{Tracer, TracerProvider as _};
    use opentelemetry_otlp::WithExportConfig;

    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(&sink, KEEP_ALL))
        .await
        .unwrap();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", worker.grpc_addr.unwrap()))
        .build()
        .unwrap();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("sdk-test")
                .build(),
        )
        .build();
    let tracer = provider.tracer("it");
    tracer.in_span("parent", |_| {
        tracer.in_span("child", |_| {});
    });
    provider.force_flush().unwrap();
    assert_eq!(sink.wait_for_spans(2, Duration::from_secs(20)).await, 2);
    let requests = sink.requests();
    let names: HashSet<String> = requests
        .iter()
        .flat_map(all_spans)
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(
        names,
        HashSet::from(["parent".to_string(), "child".to_string()])
    );
    let trace_ids: HashSet<Vec<u8>> = requests
        .iter()
        .flat_map(all_spans)
        .map(|s| s.trace_id.clone())
        .collect();
    assert_eq!(trace_ids.len(), 1);
    assert_eq!(
        requests.len(),
        1,
        "the two spans arrived separately but leave as one trace"
    );
    provider.shutdown().unwrap();
    worker.shutdown().await;
}

#[tokio::test]
async fn the_otlp_exporter_speaks_tls_to_a_backend_it_trusts() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let sink = Sink::start_tls(&server.pem(), &server_key.serialize_pem()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let text = format!(
        r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}}}}}}}
tail_sampling: {{decision_wait: 100ms, policies: [{{name: all, type: always_sample}}]}}
exporters:
  otlp/trusted: {{endpoint: "localhost:{port}", tls: {{ca_file: {ca:?}}}}}
  otlp/untrusted:
    endpoint: "localhost:{port}"
    retry_on_failure: {{enabled: false}}
admin: {{endpoint: "127.0.0.1:0"}}
"#,
        port = sink.addr.port(),
        ca = ca_file.display().to_string(),
    );
    let worker = Worker::start(tailgate::worker::config::parse_worker(&text).unwrap())
        .await
        .unwrap();
    let mut client = common::grpc_client(&worker).await;
    client
        .export(request("a", vec![span(trace_id(1), 1, None)]))
        .await
        .unwrap();
    assert_eq!(sink.wait_for_spans(1, Duration::from_secs(20)).await, 1);
    let sent = ("exporter", "otlp/trusted");
    let name = "otelcol_exporter_sent_spans_total";
    assert_eq!(
        common::wait_metric(worker.admin_addr, name, &[sent], |v| v == 1.0).await,
        1.0
    );
    // Without the CA the handshake fails and the span is counted as failed.
    let failed = ("exporter", "otlp/untrusted");
    let name = "otelcol_exporter_send_failed_spans_total";
    assert_eq!(
        common::wait_metric(worker.admin_addr, name, &[failed], |v| v == 1.0).await,
        1.0
    );
    assert_eq!(sink.span_count(), 1);
    worker.shutdown().await;
}

#[tokio::test]
async fn a_mixed_policy_set_keeps_errors_and_slow_traces_and_drops_health_checks() {
    use opentelemetry_proto::tonic::trace::v1::Status;
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(
        &sink,
        r#"
  decision_wait: 300ms
  policies:
    - name: health
      type: drop
      drop: {drop_sub_policy: [{name: probe, type: string_attribute, string_attribute: {key: http.route, values: ['^/health'], enabled_regex_matching: true}}]}
    - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
    - {name: slow, type: latency, latency: {threshold_ms: 500}}
    - {name: none, type: probabilistic, probabilistic: {sampling_percentage: 0}}
"#,
    ))
    .await
    .unwrap();
    let mut client = common::grpc_client(&worker).await;
    let route = |id, r: &str| {
        let mut s = span(trace_id(id), 1, None);
        s.attributes = vec![tailgate_testkit::kv("http.route", r)];
        s
    };
    let mut error = route(1, "/api");
    error.status = Some(Status {
        code: 2,
        ..Default::default()
    });
    let mut slow = route(2, "/api");
    slow.end_time_unix_nano = slow.start_time_unix_nano + 900_000_000;
    let mut failing_probe = route(3, "/healthz");
    failing_probe.status = Some(Status {
        code: 2,
        ..Default::default()
    });
    let fast_ok = route(4, "/api");
    client
        .export(request("svc", vec![error, slow, failing_probe, fast_ok]))
        .await
        .unwrap();
    settle(&worker).await;
    let kept: HashSet<Vec<u8>> = sink
        .requests()
        .iter()
        .flat_map(all_spans)
        .map(|s| s.trace_id.clone())
        .collect();
    assert_eq!(
        kept,
        HashSet::from([trace_id(1).to_vec(), trace_id(2).to_vec()])
    );
    let text = common::scrape(worker.admin_addr).await;
    let global = "otelcol_processor_tail_sampling_global_count_traces_sampled_total";
    assert_eq!(metric(&text, global, &[("decision", "sampled")]), 2.0);
    assert_eq!(metric(&text, global, &[("decision", "dropped")]), 1.0);
    assert_eq!(metric(&text, global, &[("decision", "not_sampled")]), 1.0);
    let votes = "otelcol_processor_tail_sampling_count_traces_sampled_total";
    assert_eq!(
        metric(
            &text,
            votes,
            &[("policy", "errors"), ("decision", "sampled")]
        ),
        1.0
    );
    assert_eq!(
        metric(&text, votes, &[("policy", "slow"), ("decision", "sampled")]),
        1.0
    );
    // The drop policy ran on all four traces and stopped evaluation for the probe.
    assert_eq!(
        metric(
            &text,
            "otelcol_processor_tail_sampling_sampling_policy_execution_count_total",
            &[("policy", "health")]
        ),
        4.0
    );
    assert_eq!(
        metric(
            &text,
            "otelcol_processor_tail_sampling_sampling_policy_execution_count_total",
            &[("policy", "errors")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            "tailgate_spans_decided_total",
            &[("outcome", "dropped")]
        ),
        1.0
    );
    worker.shutdown().await;
}
