//! A worker whose peer is gone: spans of traces the peer owns are decided here after the
//! peer's retries, counted, and the books still balance.

mod common;

use std::time::Duration;

use tailgate::membership::ring::{Ring, RingKind};
use tailgate::worker::config::parse_worker;
use tailgate::worker::Worker;
use tailgate_testkit::{free_port, metric, request, span, trace_id, Sink};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_for_a_peer_that_is_gone_are_decided_here_and_counted() {
    let sink = Sink::start(vec![]).await;
    let me = format!("127.0.0.1:{}", free_port());
    let gone = format!("127.0.0.1:{}", free_port());
    let text = format!(
        r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "{me}"}}}}}}}}
tail_sampling:
  decision_wait: 200ms
  policies: [{{name: all, type: always_sample}}]
membership:
  advertise: "{me}"
  resolver: {{static: {{hostnames: ["{me}", "{gone}"]}}}}
  handover_window: 1s
  protocol:
    otlp:
      tls: {{insecure: true}}
      timeout: 200ms
      retry_on_failure: {{initial_interval: 10ms, max_interval: 20ms, max_elapsed_time: 200ms}}
exporters: {{otlp: {{endpoint: "{}", tls: {{insecure: true}}}}}}
admin: {{endpoint: "127.0.0.1:0"}}
"#,
        sink.addr
    );
    let worker = Worker::start(parse_worker(&text).unwrap()).await.unwrap();
    // Traces the gone peer owns on the ring (and, a window after start, nothing else).
    let ring = Ring::new(RingKind::Collector(2), vec![me.clone(), gone.clone()]);
    let theirs: Vec<u64> = (1..)
        .filter(|n| ring.endpoints()[ring.route(&trace_id(*n)).unwrap()] == gone)
        .take(5)
        .collect();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut client = common::grpc_client(&worker).await;
    let spans = theirs
        .iter()
        .map(|n| span(trace_id(*n), *n, None))
        .collect();
    client.export(request("svc", spans)).await.unwrap();
    assert_eq!(sink.wait_for_spans(5, Duration::from_secs(20)).await, 5);
    let text = common::scrape(worker.admin_addr).await;
    let relayed = metric(
        &text,
        "tailgate_membership_relayed_spans_total",
        &[("kind", "forward"), ("reason", "not_owner")],
    );
    assert_eq!(relayed, 5.0);
    assert_eq!(
        metric(&text, "tailgate_membership_holder_gone_spans_total", &[]),
        5.0
    );
    // accepted + handed back == decided (relayed included) + buffered
    let accepted = metric(&text, "otelcol_receiver_accepted_spans_total", &[]);
    let decided: f64 = ["sampled", "relayed"]
        .iter()
        .map(|o| metric(&text, "tailgate_spans_decided_total", &[("outcome", o)]))
        .sum();
    assert_eq!(accepted + 5.0, decided);
    assert_eq!(metric(&text, "tailgate_membership_members", &[]), 2.0);
    worker.shutdown().await;
}
