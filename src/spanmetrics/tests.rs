use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use tokio::time::Instant;

use super::*;
use crate::config::Errors;
use tailgate_testkit::{kv, request, span, trace_id};

fn config(yaml: &str) -> SpanMetricsConfig {
    let c: SpanMetricsConfig = serde_yaml::from_str(yaml).unwrap();
    let mut errors = Errors::default();
    c.validate(&mut errors);
    errors.check().unwrap();
    c
}

fn metrics(yaml: &str) -> SpanMetrics {
    SpanMetrics::new(&config(yaml), &Registry::new()).unwrap()
}

/// Counts `request` as a worker does: scanned, its spans read in place.
fn record(m: &SpanMetrics, request: &ExportTraceServiceRequest, now: Instant) {
    use prost::Message;
    let scanned = crate::otlp::scan::scan(request.encode_to_vec().into()).unwrap();
    let spans: Vec<SpanView<'_>> = scanned
        .spans
        .iter()
        .map(|s| SpanView::parse(scanned.body(s)))
        .collect();
    m.record(&scanned, &spans, now);
}

fn render(m: &SpanMetrics, format: Format, kept: &dyn Fn(&TraceId) -> bool) -> String {
    let mut out = String::new();
    m.render(&mut out, format, kept);
    out
}

fn text(m: &SpanMetrics) -> String {
    render(m, Format::Text, &|_| false)
}

/// A span of `ms` milliseconds.
fn timed(n: u64, name: &str, kind: i32, status: i32, ms: u64) -> Span {
    Span {
        name: name.into(),
        kind,
        status: Some(Status {
            code: status,
            ..Default::default()
        }),
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 1_000 + ms * 1_000_000,
        attributes: vec![],
        ..span(trace_id(n), n + 1, None)
    }
}

#[test]
fn golden_text_output() {
    let m = metrics("{instance_id: worker-0, histogram: {explicit: {buckets: [10ms, 100ms]}}}");
    let now = Instant::now();
    record(
        &m,
        &request(
            "checkout",
            vec![
                timed(1, "GET /cart", 2, 1, 5),
                timed(2, "GET /cart", 2, 1, 10),
                timed(3, "GET /cart", 2, 2, 250),
                timed(4, "db \"q\"", 3, 0, 100),
            ],
        ),
        now,
    );
    // First exposure of a series is at zero, so increase() sees its first increment.
    let first = text(&m);
    assert!(first.contains(r#"traces_span_metrics_calls_total{service_name="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_OK",collector_instance_id="worker-0"} 0"#), "{first}");
    let golden = r#"# HELP traces_span_metrics_calls_total Spans counted, by service, operation, kind and status.
# TYPE traces_span_metrics_calls_total counter
traces_span_metrics_calls_total{service_name="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR",collector_instance_id="worker-0"} 1
traces_span_metrics_calls_total{service_name="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_OK",collector_instance_id="worker-0"} 2
traces_span_metrics_calls_total{service_name="checkout",span_name="db \"q\"",span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_UNSET",collector_instance_id="worker-0"} 1
# HELP traces_span_metrics_duration_milliseconds Span durations.
# TYPE traces_span_metrics_duration_milliseconds histogram
traces_span_metrics_duration_milliseconds_bucket{service_name="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR",collector_instance_id="worker-0",le="10"} 0
traces_span_metrics_duration_milliseconds_bucket{service_name="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR",collector_instance_id="worker-0",le="100"} 0
traces_span_metrics_duration_milliseconds_bucket{service_name="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR",collector_instance_id="worker-0",le="+Inf"} 1
traces_span_metrics_duration_milliseconds_sum{service_name="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR",collector_instance_id="worker-0"} 250
traces_span_metrics_duration_milliseconds_count{service_name="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR",collector_instance_id="worker-0"} 1
traces_span_metrics_duration_milliseconds_bucket{service_name="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_OK",collector_instance_id="worker-0",le="10"} 2
traces_span_metrics_duration_milliseconds_bucket{service_name="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_OK",collector_instance_id="worker-0",le="100"} 2
traces_span_metrics_duration_milliseconds_bucket{service_name="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_OK",collector_instance_id="worker-0",le="+Inf"} 2
traces_span_metrics_duration_milliseconds_sum{service_name="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_OK",collector_instance_id="worker-0"} 15
traces_span_metrics_duration_milliseconds_count{service_name="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_OK",collector_instance_id="worker-0"} 2
traces_span_metrics_duration_milliseconds_bucket{service_name="checkout",span_name="db \"q\"",span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_UNSET",collector_instance_id="worker-0",le="10"} 0
traces_span_metrics_duration_milliseconds_bucket{service_name="checkout",span_name="db \"q\"",span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_UNSET",collector_instance_id="worker-0",le="100"} 1
traces_span_metrics_duration_milliseconds_bucket{service_name="checkout",span_name="db \"q\"",span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_UNSET",collector_instance_id="worker-0",le="+Inf"} 1
traces_span_metrics_duration_milliseconds_sum{service_name="checkout",span_name="db \"q\"",span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_UNSET",collector_instance_id="worker-0"} 100
traces_span_metrics_duration_milliseconds_count{service_name="checkout",span_name="db \"q\"",span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_UNSET",collector_instance_id="worker-0"} 1
"#;
    assert_eq!(text(&m), golden);
}

#[test]
fn output_parses_as_prometheus_text() {
    let m = metrics("{instance_id: w, dimensions: [{name: http.route}]}");
    let mut s = timed(1, "GET", 2, 0, 3);
    s.attributes = vec![kv("http.route", "/a\\b\nc")];
    record(&m, &request("svc", vec![s]), Instant::now());
    text(&m);
    let out = text(&m);
    let lines = out.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let calls: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "traces_span_metrics_calls_total")
        .collect();
    assert_eq!(calls.len(), 1);
    // The parser keeps escapes as written: backslash and newline were escaped.
    assert_eq!(calls[0].labels.get("http_route"), Some("/a\\\\b\\nc"));
    assert_eq!(calls[0].labels.get("collector_instance_id"), Some("w"));
    assert!(matches!(calls[0].value, prometheus_parse::Value::Counter(v) if v == 1.0));
    // 16 default bounds plus +Inf.
    let buckets = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "traces_span_metrics_duration_milliseconds")
        .count();
    assert!(buckets >= 1);
    assert_eq!(out.matches("_bucket{").count(), 17);
}

#[test]
fn a_value_on_a_bound_falls_in_that_bucket_and_seconds_are_supported() {
    let m = metrics("{instance_id: w, histogram: {unit: s, explicit: {buckets: [100ms, 1s]}}}");
    record(
        &m,
        &request(
            "a",
            vec![timed(1, "x", 1, 0, 100), timed(2, "x", 1, 0, 1000)],
        ),
        Instant::now(),
    );
    text(&m);
    let out = text(&m);
    assert!(out.contains(r#"traces_span_metrics_duration_seconds_bucket{service_name="a",span_name="x",span_kind="SPAN_KIND_INTERNAL",status_code="STATUS_CODE_UNSET",collector_instance_id="w",le="0.1"} 1"#), "{out}");
    assert!(out.contains(r#"le="1"} 2"#), "{out}");
    assert!(out.contains(r#"le="+Inf"} 2"#), "{out}");
}

#[test]
fn dimensions_prefer_the_span_then_the_resource_then_the_default() {
    let m = metrics(
        "{instance_id: w, histogram: {disable: true}, exclude_dimensions: [span.kind, status.code], dimensions: [{name: http.method}, {name: deployment.environment}, {name: region, default: unknown}, {name: code}]}",
    );
    let mut a = timed(1, "op", 2, 0, 1);
    a.attributes = vec![
        kv("http.method", "GET"),
        kv("deployment.environment", "span-level"),
    ];
    let mut b = timed(2, "op", 2, 0, 1);
    b.attributes = vec![KeyValue {
        key: "code".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(404)),
        }),
        ..Default::default()
    }];
    let mut req = request("svc", vec![a, b]);
    req.resource_spans[0]
        .resource
        .as_mut()
        .unwrap()
        .attributes
        .push(kv("deployment.environment", "prod"));
    record(&m, &req, Instant::now());
    text(&m);
    let out = text(&m);
    assert!(out.contains(r#"{service_name="svc",span_name="op",http_method="GET",deployment_environment="span-level",region="unknown",collector_instance_id="w"} 1"#), "{out}");
    // A missing dimension without default is left out; ints render as text.
    assert!(out.contains(r#"{service_name="svc",span_name="op",deployment_environment="prod",region="unknown",code="404",collector_instance_id="w"} 1"#), "{out}");
    assert!(!out.contains("duration"), "histogram disabled");
}

#[test]
fn spans_without_a_service_name_count_as_unknown_service_and_bad_ids_not_at_all() {
    let m = metrics("{instance_id: w}");
    let mut req = ExportTraceServiceRequest {
        resource_spans: request("x", vec![timed(1, "op", 1, 0, 1)]).resource_spans,
    };
    req.resource_spans[0].resource = None;
    let mut bad = timed(2, "op", 1, 0, 1);
    bad.trace_id = vec![0; 16];
    req.resource_spans[0].scope_spans[0].spans.push(bad);
    record(&m, &req, Instant::now());
    text(&m);
    assert!(text(&m).contains(r#"traces_span_metrics_calls_total{service_name="unknown_service",span_name="op",span_kind="SPAN_KIND_INTERNAL",status_code="STATUS_CODE_UNSET",collector_instance_id="w"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn idle_series_expire_and_the_cardinality_limit_folds_into_overflow() {
    let registry = Registry::new();
    let m = SpanMetrics::new(
        &config("{instance_id: w, metrics_expiration: 5m, aggregation_cardinality_limit: 2, histogram: {disable: true}}"),
        &registry,
    )
    .unwrap();
    let t0 = Instant::now();
    record(
        &m,
        &request(
            "a",
            vec![timed(1, "one", 1, 0, 1), timed(2, "two", 1, 0, 1)],
        ),
        t0,
    );
    record(
        &m,
        &request(
            "a",
            vec![timed(3, "three", 1, 0, 1), timed(4, "four", 1, 0, 1)],
        ),
        t0,
    );
    text(&m);
    let out = text(&m);
    assert!(out.contains(r#"traces_span_metrics_calls_total{otel_metric_overflow="true",collector_instance_id="w"} 2"#), "{out}");
    assert!(!out.contains("three"));
    let own = registry.render();
    assert_eq!(
        tailgate_testkit::metric(&own, "tailgate_spanmetrics_overflow_spans_total", &[]),
        2.0
    );
    assert_eq!(
        tailgate_testkit::metric(&own, "tailgate_spanmetrics_active_series", &[]),
        2.0
    );
    // "one" keeps being updated; everything else goes idle past the expiration.
    tokio::time::advance(Duration::from_secs(200)).await;
    record(
        &m,
        &request("a", vec![timed(5, "one", 1, 0, 1)]),
        Instant::now(),
    );
    tokio::time::advance(Duration::from_secs(200)).await;
    let out = text(&m);
    assert!(out.contains(r#"span_name="one""#));
    assert!(!out.contains(r#"span_name="two""#), "{out}");
    assert!(!out.contains("otel_metric_overflow"), "{out}");
    let own = registry.render();
    assert_eq!(
        tailgate_testkit::metric(&own, "tailgate_spanmetrics_expired_series_total", &[]),
        2.0
    );
    // Room again: a new label set gets its own series (starting at zero).
    record(
        &m,
        &request("a", vec![timed(6, "three", 1, 0, 1)]),
        Instant::now(),
    );
    assert!(text(&m).contains(r#"span_name="three",span_kind="SPAN_KIND_INTERNAL",status_code="STATUS_CODE_UNSET",collector_instance_id="w"} 0"#));
}

#[test]
fn openmetrics_carries_exemplars_of_kept_traces_only() {
    let m = metrics("{instance_id: w, exemplars: {enabled: true, max_per_data_point: 2}, histogram: {explicit: {buckets: [10ms]}}}");
    record(
        &m,
        &request("a", vec![timed(1, "op", 2, 0, 5), timed(2, "op", 2, 0, 50)]),
        Instant::now(),
    );
    let kept = trace_id(1);
    render(&m, Format::OpenMetrics, &|id| *id == kept);
    let out = render(&m, Format::OpenMetrics, &|id| *id == kept);
    assert!(
        out.contains("# TYPE traces_span_metrics_calls counter"),
        "{out}"
    );
    let hex = crate::otlp::trace_id_hex(&kept);
    let calls = out
        .lines()
        .find(|l| l.starts_with("traces_span_metrics_calls_total{"))
        .unwrap();
    assert!(
        calls.contains(&format!("}} 2 # {{trace_id=\"{hex}\"")),
        "{calls}"
    );
    let le10 = out.lines().find(|l| l.contains(r#"le="10""#)).unwrap();
    assert!(
        le10.contains(&format!("trace_id=\"{hex}\"")) && le10.contains("} 5 "),
        "{le10}"
    );
    // The 50 ms span's trace was not kept: its bucket has no exemplar.
    let inf = out.lines().find(|l| l.contains(r#"le="+Inf""#)).unwrap();
    assert!(!inf.contains('#'), "{inf}");
    // The classic text format never carries exemplars.
    assert!(!text(&m).contains("trace_id"));
}

#[test]
fn events_are_counted_by_their_dimensions() {
    let m = metrics("{instance_id: w, histogram: {disable: true}, events: {enabled: true, dimensions: [{name: exception.type}]}}");
    let mut s = timed(1, "op", 2, 2, 1);
    s.events = vec![
        Event {
            name: "exception".into(),
            attributes: vec![kv("exception.type", "Timeout")],
            ..Default::default()
        },
        Event {
            name: "exception".into(),
            attributes: vec![kv("exception.type", "Timeout")],
            ..Default::default()
        },
    ];
    record(&m, &request("a", vec![s]), Instant::now());
    text(&m);
    let out = text(&m);
    assert!(out.contains(r#"traces_span_metrics_events_total{service_name="a",span_name="op",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR",exception_type="Timeout",collector_instance_id="w"} 2"#), "{out}");
}

#[test]
fn config_checks_and_identity() {
    let bad: SpanMetricsConfig = serde_yaml::from_str(
        "{instance_id: ' ', exclude_dimensions: [span.nam], dimensions: [{name: service.name}], events: {enabled: true}, histogram: {explicit: {buckets: [10ms, 5ms]}}}",
    )
    .unwrap();
    let mut errors = Errors::default();
    bad.validate(&mut errors);
    let err = errors.check().unwrap_err().to_string();
    for want in [
        "spanmetrics.instance_id: must not be empty",
        "spanmetrics.exclude_dimensions[0]: \"span.nam\" is not one of",
        "spanmetrics.dimensions[0].name: \"service.name\" duplicates the label \"service_name\"",
        "spanmetrics.events.dimensions: are required when events are enabled",
        "spanmetrics.histogram.explicit.buckets: must be strictly increasing",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    let named = config("{instance_id: pod-7, namespace: ''}");
    assert_eq!(named.resolve_identity().unwrap(), "pod-7");
    let m = SpanMetrics::new(&named, &Registry::new()).unwrap();
    record(
        &m,
        &request("a", vec![timed(1, "op", 1, 0, 1)]),
        Instant::now(),
    );
    assert!(text(&m).contains("calls_total{"));
    assert!(!text(&m).contains("traces_span_metrics"));
}

#[test]
fn fractional_adjusted_counts_round_without_bias() {
    use prost::Message as _;
    // 30 %: each span stands for 3.33 spans.
    let threshold = crate::otlp::tracestate::Threshold::of_probability(0.3).unwrap();
    let mut state = String::from("ot=th:");
    threshold.write(&mut state);
    let n = 30_000u64;
    let total: u64 = (1..=n)
        .map(|i| {
            let mut s = span(trace_id(i), i, None);
            s.trace_state = state.clone();
            adjusted_count(&SpanView::parse(&s.encode_to_vec()))
        })
        .sum();
    let expected = n as f64 / 0.3;
    assert!(
        (total as f64 - expected).abs() < expected * 0.01,
        "{total} for {expected}"
    );
    // The same span always counts the same.
    let mut s = span(trace_id(1), 1, None);
    s.trace_state = state;
    let once = adjusted_count(&SpanView::parse(&s.encode_to_vec()));
    assert!(once == 3 || once == 4);
    assert_eq!(adjusted_count(&SpanView::parse(&s.encode_to_vec())), once);
}
