//! End to end through a real worker: OTLP in over gRPC and HTTP, decisions, OTLP out to
//! an in-process sink.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use prost::Message;
use tailgate::testkit::{all_spans, metric, request, span, trace_id, Sink};
use tailgate::worker::Worker;

const KEEP_ALL: &str = r#"
  decision_wait: 500ms
  policies:
    - {name: all, type: always_sample}
"#;

#[tokio::test]
async fn a_trace_split_over_requests_and_connections_is_exported_whole_once() {
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(&sink, KEEP_ALL)).await.unwrap();
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
            requests_per_trace.entry(s.trace_id.clone()).or_default().insert(i);
            assert!(span_ids.insert((s.trace_id.clone(), s.span_id.clone())), "span exported twice");
        }
    }
    assert_eq!(requests_per_trace.len(), 4);
    assert!(requests_per_trace.values().all(|r| r.len() == 1), "{requests_per_trace:?}");
    // Resources are exported exactly as received.
    let services: HashSet<String> = sink
        .requests()
        .iter()
        .flat_map(|r| r.resource_spans.iter())
        .map(|rs| format!("{:?}", rs.resource.as_ref().unwrap().attributes[0].value))
        .collect();
    assert_eq!(services.len(), 4);
    let text = common::scrape(worker.admin_addr).await;
    assert_eq!(metric(&text, "otelcol_receiver_accepted_spans_total", &[("transport", "grpc")]), 8.0);
    assert_eq!(metric(&text, "otelcol_receiver_accepted_spans_total", &[("transport", "http")]), 8.0);
    assert_eq!(metric(&text, "otelcol_exporter_sent_spans_total", &[("exporter", "otlp")]), 16.0);
    worker.shutdown().await;
}

