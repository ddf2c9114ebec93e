//! Span metrics through real workers, scraped over HTTP as Prometheus does.

mod common;

use std::collections::HashMap;

use tailgate::worker::Worker;
use tailgate_testkit::{request, span, trace_id, Sink};

async fn worker(sink: &Sink, identity: &str) -> Worker {
    let text = format!(
        r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}}}}}}}
tail_sampling:
  decision_wait: 100ms
  decision_cache: {{sampled_cache_size: 1000}}
  policies: [{{name: half, type: probabilistic, probabilistic: {{sampling_percentage: 50}}}}]
spanmetrics:
  instance_id: {identity}
  exemplars: {{enabled: true}}
exporters: {{otlp: {{endpoint: "{}", tls: {{insecure: true}}}}}}
admin: {{endpoint: "127.0.0.1:0"}}
"#,
        sink.addr
    );
    Worker::start(tailgate::worker::config::parse_worker(&text).unwrap())
        .await
        .unwrap()
}

async fn scrape(w: &Worker, accept: &str) -> (String, String) {
    let r = reqwest::Client::new()
        .get(format!("http://{}/metrics", w.admin_addr))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    (content_type, r.text().await.unwrap())
}

/// `traces_span_metrics_calls_total` by (identity, span name).
fn calls(text: &str) -> HashMap<(String, String), f64> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    scrape
        .samples
        .into_iter()
        .filter(|s| s.metric == "traces_span_metrics_calls_total")
        .map(|s| {
            let key = (
                s.labels
                    .get("collector_instance_id")
                    .unwrap_or("")
                    .to_owned(),
                s.labels.get("span_name").unwrap_or("").to_owned(),
            );
            let v = match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("{other:?}"),
            };
            (key, v)
        })
        .collect()
}

#[tokio::test]
async fn two_workers_write_disjoint_series_that_sum_to_the_fleet_total() {
    let sink = Sink::start(vec![]).await;
    let (a, b) = (
        worker(&sink, "worker-a").await,
        worker(&sink, "worker-b").await,
    );
    // Both workers see the same service and operations, as behind a trace-id router.
    let mut sent = 0.0;
    for (w, traces) in [(&a, 0..30u64), (&b, 30..50u64)] {
        let mut client = common::grpc_client(w).await;
        for t in traces {
            client
                .export(request(
                    "checkout",
                    vec![span(trace_id(t), 1, None), span(trace_id(t), 2, Some(1))],
                ))
                .await
                .unwrap();
            sent += 2.0;
        }
    }
    // The first scrape exposes every new series at zero.
    for w in [&a, &b] {
        let (_, first) = scrape(w, "text/plain").await;
        assert!(calls(&first).values().all(|v| *v == 0.0), "{first}");
    }
    let (ct_a, text_a) = scrape(&a, "text/plain").await;
    let (_, text_b) = scrape(&b, "text/plain").await;
    assert_eq!(ct_a, "text/plain; version=0.0.4; charset=utf-8");
    let (ca, cb) = (calls(&text_a), calls(&text_b));
    assert!(ca.keys().all(|(id, _)| id == "worker-a") && cb.keys().all(|(id, _)| id == "worker-b"));
    // sum without (collector_instance_id): every span counted, kept or not.
    let mut fleet: HashMap<String, f64> = HashMap::new();
    for ((_, name), v) in ca.iter().chain(cb.iter()) {
        *fleet.entry(name.clone()).or_default() += v;
    }
    assert_eq!(fleet.values().sum::<f64>(), sent);
    assert_eq!(fleet["op-1"], 50.0);
    assert_eq!(fleet["op-2"], 50.0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn openmetrics_scrapes_carry_exemplars_of_kept_traces() {
    let sink = Sink::start(vec![]).await;
    let w = worker(&sink, "worker-a").await;
    let mut client = common::grpc_client(&w).await;
    // trace_id(1) is kept by the 50 % policy, trace_id(2) is not.
    client
        .export(request(
            "svc",
            vec![span(trace_id(1), 1, None), span(trace_id(2), 1, None)],
        ))
        .await
        .unwrap();
    assert_eq!(
        sink.wait_for_spans(1, std::time::Duration::from_secs(20))
            .await,
        1
    );
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    scrape(&w, accept).await;
    let (content_type, text) = scrape(&w, accept).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(
        text.ends_with("# EOF\n"),
        "{}",
        &text[text.len().saturating_sub(200)..]
    );
    let kept = tailgate::otlp::trace_id_hex(&trace_id(1));
    let dropped = tailgate::otlp::trace_id_hex(&trace_id(2));
    assert!(text.contains(&format!("trace_id=\"{kept}\"")), "{text}");
    assert!(!text.contains(&dropped));
    // Self-metrics are in OpenMetrics form too: counter families without `_total`.
    assert!(text.contains("# TYPE otelcol_receiver_accepted_spans counter"));
    assert!(!text.contains("# TYPE otelcol_receiver_accepted_spans_total"));
    w.shutdown().await;
}

/// Spans that arrive head-sampled count for the spans they stand for (their adjusted
/// count from `ot=th`), in calls and in the duration histogram's count.
#[tokio::test]
async fn head_sampled_spans_count_by_their_adjusted_count() {
    let sink = Sink::start(vec![]).await;
    let w = worker(&sink, "weights").await;
    let mut client = common::grpc_client(&w).await;
    let states = [
        ("ot=th:8", 3),          // 50 %: 2 each
        ("vendor=a,ot=th:c", 2), // 25 %: 4 each
        ("", 1),                 // not sampled upstream: 1
        ("ot=th:zz", 1),         // malformed: ignored, 1
    ];
    let mut spans = Vec::new();
    let mut n = 0;
    for (state, count) in states {
        for _ in 0..count {
            n += 1;
            let mut s = span(trace_id(n), n, None);
            s.name = "weighted".into();
            s.trace_state = state.into();
            spans.push(s);
        }
    }
    client.export(request("svc", spans)).await.unwrap();
    // A series is first exposed at zero (so the first increase is not lost), then counted.
    let _ = scrape(&w, "text/plain").await;
    let (_, text) = scrape(&w, "text/plain").await;
    assert_eq!(
        calls(&text).get(&("weights".into(), "weighted".into())),
        Some(&16.0)
    );
    let count = tailgate_testkit::metric(
        &text,
        "traces_span_metrics_duration_milliseconds_count",
        &[("span_name", "weighted")],
    );
    assert_eq!(count, 16.0);
    w.shutdown().await;
}
