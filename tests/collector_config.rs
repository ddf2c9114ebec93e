//! A collector's configs pasted as they are (`config/collector/`): a router and a worker
//! started from them, with only their listen addresses and backends pointed at loopback,
//! carry a trace end to end; the pipelines decide which exporters get kept traces, the
//! prometheus exporter serves the span metrics and health_check answers as the collector's.

mod common;

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Status};
use serde_yaml::Value;
use tailgate::router::config::router_from_yaml;
use tailgate::router::Router;
use tailgate::worker::config::worker_from_yaml;
use tailgate::worker::Worker;
use tailgate_testkit::{metric, request, span, trace_id, Sink};

fn example(name: &str) -> Value {
    let path = format!("{}/config/collector/{name}", env!("CARGO_MANIFEST_DIR"));
    tailgate::config::read_yaml(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Sets `value` at the dotted `path` (a number indexes a list).
fn set(v: &mut Value, path: &str, value: &str) {
    let mut at = v;
    for key in path.split('.') {
        at = match key.parse::<usize>() {
            Ok(i) => &mut at.as_sequence_mut().unwrap()[i],
            Err(_) => at
                .as_mapping_mut()
                .unwrap()
                .entry(Value::String(key.into()))
                .or_insert(Value::Null),
        };
    }
    *at = serde_yaml::from_str(value).unwrap();
}

async fn health(addr: std::net::SocketAddr) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://{addr}/")).await.unwrap();
    let code = r.status().as_u16();
    (
        code,
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
    )
}

#[tokio::test]
async fn a_pasted_two_tier_collector_config_carries_a_trace_end_to_end() {
    let sink = Sink::start(vec![]).await;
    let mut w = example("worker.yaml");
    for (path, value) in [
        (
            "receivers.otlp.protocols.grpc.endpoint",
            "127.0.0.1:0".to_owned(),
        ),
        (
            "receivers.otlp.protocols.http.endpoint",
            "127.0.0.1:0".to_owned(),
        ),
        ("processors.tail_sampling.decision_wait", "300ms".to_owned()),
        ("exporters.otlp.endpoint", sink.addr.to_string()),
        ("exporters.prometheus.endpoint", "127.0.0.1:0".to_owned()),
        ("extensions.health_check.endpoint", "127.0.0.1:0".to_owned()),
        (
            "service.telemetry.metrics.readers.0.pull.exporter.prometheus.host",
            "127.0.0.1".to_owned(),
        ),
        (
            "service.telemetry.metrics.readers.0.pull.exporter.prometheus.port",
            "0".to_owned(),
        ),
    ] {
        set(&mut w, path, &value);
    }
    let worker_config = worker_from_yaml(w).unwrap();
    let worker = Worker::start(worker_config).await.unwrap();

    let mut r = example("router.yaml");
    let backend = worker.grpc_addr.unwrap().to_string();
    for (path, value) in [
        (
            "receivers.otlp.protocols.grpc.endpoint",
            "127.0.0.1:0".to_owned(),
        ),
        (
            "receivers.otlp.protocols.http.endpoint",
            "127.0.0.1:0".to_owned(),
        ),
        (
            "exporters.loadbalancing.resolver",
            format!("{{static: {{hostnames: ['{backend}']}}}}"),
        ),
        ("extensions.health_check.endpoint", "127.0.0.1:0".to_owned()),
        (
            "service.telemetry.metrics.address",
            "127.0.0.1:0".to_owned(),
        ),
    ] {
        set(&mut r, path, &value);
    }
    let router = Router::start(router_from_yaml(r).unwrap()).await.unwrap();

    // The errors policy keeps a trace with an error; another without one, 100 ms long,
    // is kept only by the 10 % draw, which the test leaves out of its counts.
    let error_trace = trace_id(1);
    let mut spans: Vec<_> = (1..=3)
        .map(|s| span(error_trace, s, (s > 1).then_some(1)))
        .collect();
    spans[2].status = Some(Status {
        code: StatusCode::Error as i32,
        message: "boom".into(),
    });
    let mut client = TraceServiceClient::connect(format!("http://{}", router.grpc_addr.unwrap()))
        .await
        .unwrap();
    client.export(request("checkout", spans)).await.unwrap();
    assert_eq!(sink.wait_for_spans(3, Duration::from_secs(20)).await, 3);

    // Span metrics are on the prometheus exporter's endpoint, as in the collector, and
    // not among the self-metrics. (A new series is exposed at zero on its first scrape.)
    let first = common::scrape(worker.span_metrics_addr.unwrap()).await;
    assert!(first.contains("traces_span_metrics_calls_total"), "{first}");
    let span_metrics = common::scrape(worker.span_metrics_addr.unwrap()).await;
    assert_eq!(
        metric(
            &span_metrics,
            "traces_span_metrics_calls_total",
            &[
                ("service_name", "checkout"),
                ("status_code", "STATUS_CODE_ERROR")
            ]
        ),
        1.0,
        "{span_metrics}"
    );
    let own = common::scrape(worker.admin_addr).await;
    assert!(!own.contains("traces_span_metrics"), "{own}");
    assert!(own.contains("otelcol_receiver_accepted_spans"), "{own}");

    for addr in [worker.health_check_addr, router.health_check_addr] {
        let (code, body) = health(addr.expect("health_check is configured")).await;
        assert_eq!(code, 200);
        assert_eq!(body["status"], "Server available");
        assert!(
            body["upSince"].is_string() && body["uptime"].is_string(),
            "{body}"
        );
    }
    router.shutdown().await;
    worker.shutdown().await;
}
