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

#[tokio::test]
async fn health_check_answers_on_its_path_as_the_collector_does() {
    let health = Arc::new(Health::default());
    let mut supervisor = crate::supervisor::Supervisor::new();
    let group = supervisor.group("admin");
    let config: HealthCheckConfig =
        serde_yaml::from_str("{endpoint: '127.0.0.1:0', path: /health/status}").unwrap();
    let addr = Admin::start_health_check(Some(&config), health.clone(), &mut supervisor, group)
        .await
        .unwrap()
        .unwrap();
    let get = |path: &'static str| async move {
        reqwest::get(format!("http://{addr}{path}")).await.unwrap()
    };
    let body = |r: reqwest::Response| async move {
        serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap()
    };
    let r = get("/health/status").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(body(r).await["status"], "Server not available");
    health.set_ready(true);
    let r = get("/health/status").await;
    assert_eq!(r.status(), 200);
    let b = body(r).await;
    assert_eq!(b["status"], "Server available");
    assert!(b["upSince"].as_str().unwrap().ends_with('Z'), "{b}");
    assert_eq!(get("/").await.status(), 404);
    assert_eq!(get("/metrics").await.status(), 404);
    supervisor.stop(group).await;
}

#[test]
fn the_health_check_and_prometheus_exporter_sections_are_checked() {
    let mut errors = crate::config::Errors::default();
    let mut extensions: std::collections::BTreeMap<String, serde_yaml::Value> =
        serde_yaml::from_str(
            "{health_check: ~, health_check/2: {path: nope}, bearertokenauth: {token: x}}",
        )
        .unwrap();
    let hc = take_health_check(&mut extensions, &mut errors).unwrap();
    assert_eq!(
        (hc.endpoint.as_str(), hc.path.as_str()),
        ("localhost:13133", "/")
    );
    assert_eq!(extensions.len(), 1, "the other extensions stay");
    let mut exporters: std::collections::BTreeMap<String, serde_yaml::Value> =
        serde_yaml::from_str(
            "{prometheus: {endpoint: 'x:1', namespace: app}, otlp: {endpoint: 'b:4317'}}",
        )
        .unwrap();
    assert!(take_prometheus_exporter(&mut exporters, false, &mut errors).is_none());
    assert_eq!(exporters.len(), 1);
    let e = errors.check().unwrap_err().to_string();
    assert!(
        e.contains("extensions.health_check/2: one health_check at most"),
        "{e}"
    );
    assert!(
        e.contains("exporters.prometheus: serves span metrics, which are off"),
        "{e}"
    );
    assert!(
        e.contains("exporters.prometheus.namespace: unknown field `namespace`"),
        "{e}"
    );
}
