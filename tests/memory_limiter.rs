//! The memory limiter through a real worker: filled past its limit, it refuses with a
//! retryable status instead of growing until it is killed. (Its own test binary: the limiter
//! measures the whole process.)

mod common;

use std::time::Duration;

use tailgate::process::resident_bytes;
use tailgate::worker::Worker;
use tailgate_testkit::{kv, metric, request, span, trace_id, Sink};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_its_memory_limit_refuses_and_keeps_serving() {
    let sink = Sink::start(vec![]).await;
    let now_mib = resident_bytes().unwrap() / (1024 * 1024);
    let text = format!(
        r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0", max_recv_msg_size_mib: 16}}}}}}}}
tail_sampling:
  decision_wait: 1h
  num_traces: 1000000
  max_buffered_bytes: 0
  policies: [{{name: all, type: always_sample}}]
memory_limiter: {{check_interval: 20ms, limit_mib: {}, spike_limit_mib: 1}}
exporters: {{otlp: {{endpoint: "{}", tls: {{insecure: true}}}}}}
admin: {{endpoint: "127.0.0.1:0"}}
"#,
        now_mib + 64,
        sink.addr
    );
    let worker = Worker::start(tailgate::worker::config::parse_worker(&text).unwrap())
        .await
        .unwrap();
    let mut client = common::grpc_client(&worker).await;
    let big = "x".repeat(4096);
    let mut refused = None;
    // At most ~600 MiB of spans: far past the limit, far from the machine's size.
    for round in 0..300u64 {
        let spans = (0..500u64)
            .map(|t| {
                let mut s = span(trace_id(round * 1000 + t), 1, None);
                s.attributes.push(kv("payload", &big));
                s
            })
            .collect();
        if let Err(status) = client.export(request("a", spans)).await {
            refused = Some(status.code());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        refused,
        Some(tonic::Code::ResourceExhausted),
        "never refused"
    );
    let text = common::scrape(worker.admin_addr).await;
    assert!(
        metric(
            &text,
            "otelcol_processor_refused_spans_total",
            &[("processor", "memory_limiter")]
        ) >= 500.0
    );
    assert!(metric(&text, "tailgate_process_resident_memory_bytes", &[]) > 0.0);
    let health = reqwest::get(format!("http://{}/healthz", worker.admin_addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    worker.shutdown().await;
}

#[test]
fn memory_limiter_settings_are_checked() {
    let err = tailgate::worker::config::parse_worker(
        r#"
receivers: {otlp: {protocols: {grpc: {}}}}
tail_sampling: {policies: [{name: a, type: always_sample}]}
exporters: {debug: {}}
memory_limiter: {limit_mib: 100, spike_limit_mib: 200, limit_percentage: 50}
"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("memory_limiter: set only one of limit_mib and limit_percentage"),
        "{err}"
    );
    assert!(
        err.contains("memory_limiter.spike_limit_mib: must be less than limit_mib"),
        "{err}"
    );
}
