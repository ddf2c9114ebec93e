use std::sync::Arc;

use super::*;
use tailgate_testkit::metric;

#[test]
fn counters_are_exposed_at_zero_with_the_collectors_names() {
    let registry = Registry::new();
    let c = registry.counter(
        RECEIVER_ACCEPTED_SPANS,
        &[("receiver", "otlp"), ("transport", "grpc")],
    );
    let text = registry.render();
    assert!(
        text.contains("# TYPE otelcol_receiver_accepted_spans_total counter"),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "otelcol_receiver_accepted_spans_total",
            &[("transport", "grpc")]
        ),
        0.0
    );
    c.increment(5);
    assert_eq!(
        metric(
            &registry.render(),
            "otelcol_receiver_accepted_spans_total",
            &[]
        ),
        5.0
    );
}

#[test]
fn histograms_have_explicit_buckets() {
    let registry = Registry::new();
    registry
        .histogram(TS_DECISION_TIMER_LATENCY, &[])
        .record(7.0);
    let text = registry.render();
    let name = "otelcol_processor_tail_sampling_sampling_decision_timer_latency_milliseconds";
    assert!(text.contains(&format!("# TYPE {name} histogram")), "{text}");
    assert_eq!(
        metric(&text, &format!("{name}_bucket"), &[("le", "5")]),
        0.0
    );
    assert_eq!(
        metric(&text, &format!("{name}_bucket"), &[("le", "10")]),
        1.0
    );
    assert_eq!(
        metric(&text, &format!("{name}_bucket"), &[("le", "+Inf")]),
        1.0
    );
}

#[test]
fn two_registries_keep_separate_books() {
    let (a, b) = (Registry::new(), Registry::new());
    a.counter(SPANS_DECIDED, &[("outcome", "sampled")])
        .increment(3);
    let _untouched = b.counter(SPANS_DECIDED, &[("outcome", "sampled")]);
    assert_eq!(
        metric(&a.render(), "tailgate_spans_decided_total", &[]),
        3.0
    );
    assert_eq!(
        metric(&b.render(), "tailgate_spans_decided_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn the_admin_listener_serves_metrics_health_and_readiness() {
    let registry = Registry::new();
    registry
        .counter(SPANS_DECIDED, &[("outcome", "sampled")])
        .increment(1);
    let health = Arc::new(Health::default());
    let mut supervisor = crate::supervisor::Supervisor::new();
    let group = supervisor.group("admin");
    let admin = Admin::start(
        "127.0.0.1:0",
        vec![Arc::new(registry)],
        health.clone(),
        &mut supervisor,
        group,
    )
    .await
    .unwrap();
    let addr = admin.addr;
    let get = |path: &'static str| async move {
        reqwest::get(format!("http://{addr}{path}")).await.unwrap()
    };

    let r = get("/metrics").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(
        metric(
            &r.text().await.unwrap(),
            "tailgate_spans_decided_total",
            &[]
        ),
        1.0
    );
    assert_eq!(get("/healthz").await.status(), 200);
    assert_eq!(get("/readyz").await.status(), 503);
    health.set_ready(true);
    assert_eq!(get("/readyz").await.status(), 200);
    assert_eq!(get("/nope").await.status(), 404);
    supervisor.stop(group).await;
    assert!(
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_err(),
        "stopped"
    );
}

#[test]
fn merged_expositions_name_each_family_once() {
    let a = "# HELP x_total X.\n# TYPE x_total counter\nx_total{c=\"a\"} 1\n\n# TYPE g gauge\ng{c=\"a\"} 2\n".to_string();
    let b = "# HELP x_total X.\n# TYPE x_total counter\nx_total{c=\"b\"} 3\n".to_string();
    let merged = merge_families(&[a, b]);
    assert_eq!(
        merged,
        "# HELP x_total X.\n# TYPE x_total counter\nx_total{c=\"a\"} 1\nx_total{c=\"b\"} 3\n# TYPE g gauge\ng{c=\"a\"} 2\n"
    );
    let lines = merged.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    assert_eq!(scrape.samples.len(), 3);
}
