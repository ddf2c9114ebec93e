//! Every kept span carries its sampling probability: traces with and without incoming
//! thresholds through a worker with a mixed policy set, each kept span's exact `th` checked.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span, Status};
use tailgate::policy::Probabilistic;
use tailgate::worker::Worker;
use tailgate_testkit::{kv, metric, request, span, trace_id, Sink};

const POLICIES: &str = r#"  decision_wait: 500ms
  decision_cache: {sampled_cache_size: 1000}
  policies:
    - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
    - {name: half, type: probabilistic, probabilistic: {sampling_percentage: 50}}
    - {name: quarter, type: probabilistic, probabilistic: {sampling_percentage: 25, mode: equalizing}}
    - name: limited
      type: and
      and:
        and_sub_policy:
          - {name: route, type: string_attribute, string_attribute: {key: route, values: [limited]}}
          - {name: budget, type: rate_limiting, rate_limiting: {spans_per_second: 100000}}
"#;

/// A trace id the collector-compatible 50 % policy keeps (`keep`) or drops.
fn id_fnv(keep: bool, from: u64) -> ([u8; 16], u64) {
    let half = Probabilistic::new(50.0, None);
    (from..)
        .map(|n| (trace_id(n), n))
        .find(|(id, _)| (half.decide(id, 0) == tailgate::policy::Decision::Sampled) == keep)
        .unwrap()
}

fn with(mut s: Span, state: &str, error: bool, route: Option<&str>) -> Span {
    s.trace_state = state.into();
    if error {
        s.status = Some(Status {
            code: StatusCode::Error as i32,
            ..Default::default()
        });
    }
    if let Some(r) = route {
        s.attributes.push(kv("route", r));
    }
    s
}

/// The `rv` that puts a trace above (or below) the 25 % equalizing threshold (0xc0…).
const RV_HIGH: &str = "rv:e0000000000000";
const RV_LOW: &str = "rv:10000000000000";

async fn run(tail_sampling: &str, cases: &[(u64, Span)]) -> (HashMap<Vec<u8>, String>, String) {
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(&sink, tail_sampling))
        .await
        .unwrap();
    let mut client = common::grpc_client(&worker).await;
    let spans: Vec<Span> = cases.iter().map(|(_, s)| s.clone()).collect();
    client.export(request("svc", spans)).await.unwrap();
    let kept = cases.len();
    assert_eq!(
        sink.wait_for_spans(kept, Duration::from_secs(10)).await,
        kept,
        "every case is kept"
    );
    let got = sink
        .requests()
        .iter()
        .flat_map(|r| tailgate::otlp::spans(r).cloned().collect::<Vec<_>>())
        .map(|s| (s.span_id, s.trace_state))
        .collect();
    // The exporter counts a request once its response is back, just after the sink saw it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let text = common::scrape(worker.admin_addr).await;
        let sent = metric(&text, "otelcol_exporter_sent_spans_total", &[]);
        if sent >= kept as f64 || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    worker.shutdown().await;
    (got, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kept_span_carries_the_threshold_of_its_trace() {
    let (fnv_kept, n1) = id_fnv(true, 1);
    let (fnv_dropped, n2) = id_fnv(false, 1);
    let (fnv_dropped2, n3) = id_fnv(false, n2 + 1);
    let (fnv_dropped3, n4) = id_fnv(false, n3 + 1);
    let (fnv_dropped4, _) = id_fnv(false, n4 + 1);
    let (fnv_kept2, _) = id_fnv(true, n1 + 1);
    // (span id, span, expected tracestate after the worker)
    let cases: Vec<(u64, Span, String)> = vec![
        // Kept by `errors` (probability 1): th:0, or the incoming threshold unchanged.
        (
            1,
            with(span(trace_id(1_000_001), 1, None), "", true, None),
            "ot=th:0".into(),
        ),
        (
            2,
            with(
                span(trace_id(1_000_002), 2, None),
                "vendor=x,ot=th:8",
                true,
                None,
            ),
            "vendor=x,ot=th:8".into(),
        ),
        // Not certain: either probabilistic draw keeps, 1 - 0.5 * 0.75 = 62.5 % (th:6).
        // After a head sampler's 50 %, the consistent 25 % keeps half of those and the
        // hash half of the rest: 50 % * (1 - 0.5 * 0.5) = 37.5 % (th:a).
        (
            3,
            with(span(fnv_kept, 3, None), "", false, None),
            "ot=th:6".into(),
        ),
        (
            4,
            with(span(fnv_kept2, 4, None), "ot=th:8", false, None),
            "ot=th:a".into(),
        ),
        // Kept by the 25 % equalizing policy, the same draws.
        (
            5,
            with(
                span(fnv_dropped, 5, None),
                &format!("ot=th:8;{RV_HIGH}"),
                false,
                None,
            ),
            format!("ot=th:a;{RV_HIGH}"),
        ),
        (
            6,
            with(
                span(fnv_dropped2, 6, None),
                &format!("ot={RV_HIGH}"),
                false,
                None,
            ),
            format!("ot=th:6;{RV_HIGH}"),
        ),
        // Kept only by a rate budget: the probability is unknown, th is erased.
        (
            7,
            with(
                span(fnv_dropped3, 7, None),
                &format!("a=1,ot=th:8;{RV_LOW}"),
                false,
                Some("limited"),
            ),
            format!("ot={RV_LOW},a=1"),
        ),
        // A malformed threshold is ignored (counted), not refused.
        (
            8,
            with(span(fnv_dropped4, 8, None), "ot=th:zz", true, None),
            "ot=th:0".into(),
        ),
    ];
    let spans: Vec<(u64, Span)> = cases.iter().map(|(n, s, _)| (*n, s.clone())).collect();
    let (got, metrics) = run(POLICIES, &spans).await;
    for (n, _, want) in &cases {
        assert_eq!(
            got.get(n.to_be_bytes().as_slice()).map(String::as_str),
            Some(want.as_str()),
            "span {n}"
        );
    }
    assert_eq!(
        metric(&metrics, "tailgate_tracestate_malformed_spans_total", &[]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_spans_carry_the_threshold_from_the_decision_cache() {
    let (fnv_kept, _) = id_fnv(true, 1);
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(&sink, POLICIES))
        .await
        .unwrap();
    let mut client = common::grpc_client(&worker).await;
    client
        .export(request("svc", vec![span(fnv_kept, 1, None)]))
        .await
        .unwrap();
    assert_eq!(sink.wait_for_spans(1, Duration::from_secs(10)).await, 1);
    // The trace is decided; a late span with an incoming 50 % follows the cached decision.
    client
        .export(request(
            "svc",
            vec![with(span(fnv_kept, 2, Some(1)), "ot=th:8", false, None)],
        ))
        .await
        .unwrap();
    assert_eq!(sink.wait_for_spans(2, Duration::from_secs(10)).await, 2);
    let states: Vec<String> = sink
        .requests()
        .iter()
        .flat_map(|r| {
            tailgate::otlp::spans(r)
                .map(|s| s.trace_state.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(states, vec!["ot=th:6", "ot=th:a"]);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_threshold_can_be_turned_off() {
    let off = format!("  write_sampling_threshold: false\n{POLICIES}");
    let state = "vendor=x,ot=th:8";
    // One trace of three spans in one request: buffered as one chunk, exported whole.
    let spans: Vec<(u64, Span)> = (1..=3)
        .map(|n| (n, with(span(trace_id(7), n, None), state, n == 1, None)))
        .collect();
    let (got, metrics) = run(&off, &spans).await;
    for n in 1..=3u64 {
        assert_eq!(
            got.get(n.to_be_bytes().as_slice()).map(String::as_str),
            Some(state)
        );
    }
    // Every span counted as sent, not every chunk.
    assert_eq!(
        metric(&metrics, "otelcol_exporter_sent_spans_total", &[]),
        3.0
    );
}
