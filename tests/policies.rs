//! Policy features through a real worker: record_policy, dry_run and hot reload.

mod common;

use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use tailgate::worker::Worker;
use tailgate_testkit::{kv, metric, request, span, trace_id, Sink};

fn scope_attribute(attributes: &[KeyValue], key: &str) -> Option<Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value)
}

#[tokio::test]
async fn record_policy_marks_kept_spans_with_the_deciding_policy() {
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(
        &sink,
        r#"
  decision_wait: 200ms
  record_policy: true
  decision_cache: {sampled_cache_size: 100}
  policies:
    - name: budget
      type: composite
      composite:
        max_total_spans_per_second: 1000
        composite_sub_policy: [{name: everything, type: always_sample}]
"#,
    ))
    .await
    .unwrap();
    let mut client = common::grpc_client(&worker).await;
    client
        .export(request("a", vec![span(trace_id(1), 1, None)]))
        .await
        .unwrap();
    assert_eq!(sink.wait_for_spans(1, Duration::from_secs(20)).await, 1);
    client
        .export(request("a", vec![span(trace_id(1), 2, Some(1))]))
        .await
        .unwrap();
    assert_eq!(sink.wait_for_spans(2, Duration::from_secs(20)).await, 2);
    let requests = sink.requests();
    let scope = |i: usize| {
        requests[i].resource_spans[0].scope_spans[0]
            .scope
            .clone()
            .unwrap()
    };
    // The scope keeps its name and version; the attributes are added.
    let first = scope(0);
    assert_eq!(
        (first.name.as_str(), first.version.as_str()),
        ("testkit", "1")
    );
    assert_eq!(
        scope_attribute(&first.attributes, "tailsampling.policy"),
        Some(Value::StringValue("budget".into()))
    );
    assert_eq!(
        scope_attribute(&first.attributes, "tailsampling.composite_policy"),
        Some(Value::StringValue("everything".into()))
    );
    assert_eq!(
        scope_attribute(&first.attributes, "tailsampling.cached_decision"),
        None
    );
    // A budget's probability is unknown: none is shown (and th is erased).
    assert_eq!(
        scope_attribute(&first.attributes, "tailsampling.probability"),
        None
    );
    // The late span was released by the cache, and says so.
    let late = scope(1);
    assert_eq!(
        scope_attribute(&late.attributes, "tailsampling.policy"),
        Some(Value::StringValue("budget".into()))
    );
    assert_eq!(
        scope_attribute(&late.attributes, "tailsampling.cached_decision"),
        Some(Value::BoolValue(true))
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn record_policy_shows_the_sampling_probability() {
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(
        &sink,
        r#"
  decision_wait: 200ms
  record_policy: true
  policies:
    - {name: quarter, type: probabilistic, probabilistic: {sampling_percentage: 25, mode: equalizing}}
"#,
    ))
    .await
    .unwrap();
    let mut client = common::grpc_client(&worker).await;
    let mut kept = span(trace_id(1), 1, None);
    kept.trace_state = "ot=rv:f0000000000000".into();
    client.export(request("a", vec![kept])).await.unwrap();
    assert_eq!(sink.wait_for_spans(1, Duration::from_secs(20)).await, 1);
    let scope = sink.requests()[0].resource_spans[0].scope_spans[0]
        .scope
        .clone()
        .unwrap();
    assert_eq!(
        scope_attribute(&scope.attributes, "tailsampling.probability"),
        Some(Value::DoubleValue(0.25))
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn dry_run_keeps_everything_and_marks_the_decision() {
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(
        &sink,
        r#"
  decision_wait: 200ms
  dry_run: true
  policies:
    - name: no-health
      type: drop
      drop: {drop_sub_policy: [{name: h, type: string_attribute, string_attribute: {key: http.route, values: [/health]}}]}
    - {name: none, type: probabilistic, probabilistic: {sampling_percentage: 0}}
"#,
    ))
    .await
    .unwrap();
    let mut client = common::grpc_client(&worker).await;
    let mut health = span(trace_id(1), 1, None);
    health.attributes = vec![tailgate_testkit::kv("http.route", "/health")];
    client
        .export(request("a", vec![health, span(trace_id(2), 1, None)]))
        .await
        .unwrap();
    assert_eq!(sink.wait_for_spans(2, Duration::from_secs(20)).await, 2);
    let mut decisions = Vec::new();
    for r in sink.requests() {
        for rs in r.resource_spans {
            for ss in rs.scope_spans {
                let scope = ss.scope.unwrap();
                let d = scope_attribute(&scope.attributes, "tailsampling.decision");
                for s in ss.spans {
                    decisions.push((s.trace_id, d.clone()));
                }
            }
        }
    }
    decisions.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![
        (
            trace_id(1).to_vec(),
            Some(Value::StringValue("dropped".into())),
        ),
        (
            trace_id(2).to_vec(),
            Some(Value::StringValue("not_sampled".into())),
        ),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(decisions, want);
    let text = common::scrape(worker.admin_addr).await;
    let global = "otelcol_processor_tail_sampling_global_count_traces_sampled_total";
    assert_eq!(metric(&text, global, &[("decision", "dropped")]), 1.0);
    assert_eq!(metric(&text, global, &[("decision", "not_sampled")]), 1.0);
    // Every span went out, and the books say so.
    assert_eq!(
        metric(
            &text,
            "tailgate_spans_decided_total",
            &[("outcome", "sampled")]
        ),
        2.0
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn a_changed_policies_file_applies_to_pending_traces_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    std::fs::write(
        &file,
        "- {name: none, type: probabilistic, probabilistic: {sampling_percentage: 0}}\n",
    )
    .unwrap();
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(
        &sink,
        &format!(
            "  decision_wait: 10s\n  policies_file: {:?}\n",
            file.display().to_string()
        ),
    ))
    .await
    .unwrap();
    let mut client = common::grpc_client(&worker).await;
    client
        .export(request("a", vec![span(trace_id(1), 1, None)]))
        .await
        .unwrap();
    // A broken file is refused and the old policies stay.
    std::fs::write(
        &file,
        "- {name: bad, type: latency, latency: {threshold_ms: 10, upper_threshold_ms: 5}}\n",
    )
    .unwrap();
    let reloads = "tailgate_policy_reload_total";
    assert_eq!(
        common::wait_metric(worker.admin_addr, reloads, &[("result", "failure")], |v| v
            == 1.0)
        .await,
        1.0
    );
    // The trace is still pending; the good new file decides it.
    std::fs::write(&file, "- {name: all, type: always_sample}\n").unwrap();
    assert_eq!(
        common::wait_metric(worker.admin_addr, reloads, &[("result", "success")], |v| v
            == 1.0)
        .await,
        1.0
    );
    assert_eq!(sink.wait_for_spans(1, Duration::from_secs(20)).await, 1);
    let text = common::scrape(worker.admin_addr).await;
    let votes = "otelcol_processor_tail_sampling_count_traces_sampled_total";
    assert_eq!(
        metric(&text, votes, &[("policy", "all"), ("decision", "sampled")]),
        1.0
    );
    assert_eq!(metric(&text, votes, &[("policy", "none")]), 0.0);
    worker.shutdown().await;
}

/// A worker finds which attribute conditions arriving spans meet as they arrive; spans
/// that arrived under the policies before a reload are read again for the new ones.
#[tokio::test]
async fn a_reload_decides_pending_traces_on_their_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    let keep = |key: &str| {
        format!("- {{name: {key}, type: string_attribute, string_attribute: {{key: {key}, values: [a]}}}}\n")
    };
    std::fs::write(&file, keep("tier")).unwrap();
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(
        &sink,
        &format!(
            "  decision_wait: 5s\n  policies_file: {:?}\n",
            file.display().to_string()
        ),
    ))
    .await
    .unwrap();
    let mut client = common::grpc_client(&worker).await;
    // The file is polled every second: trace 1 is still pending when the new policies
    // are in.
    let with_team = |n: u64, team: &str| {
        let mut s = span(trace_id(n), 1, None);
        s.attributes.push(kv("team", team));
        s
    };
    // Under the first policies, trace 1 meets no condition.
    client
        .export(request("a", vec![with_team(1, "a")]))
        .await
        .unwrap();
    std::fs::write(&file, keep("team")).unwrap();
    let reloads = "tailgate_policy_reload_total";
    common::wait_metric(worker.admin_addr, reloads, &[("result", "success")], |v| {
        v == 1.0
    })
    .await;
    // Traces 2 and 3 arrive under the new ones.
    client
        .export(request("a", vec![with_team(2, "a"), with_team(3, "b")]))
        .await
        .unwrap();
    assert_eq!(sink.wait_for_spans(2, Duration::from_secs(20)).await, 2);
    let text = common::scrape(worker.admin_addr).await;
    let votes = "otelcol_processor_tail_sampling_count_traces_sampled_total";
    assert_eq!(
        metric(&text, votes, &[("policy", "team"), ("decision", "sampled")]),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            votes,
            &[("policy", "team"), ("decision", "not_sampled")]
        ),
        1.0
    );
    let kept: Vec<Vec<u8>> = sink
        .requests()
        .iter()
        .flat_map(tailgate_testkit::all_spans)
        .map(|s| s.trace_id.clone())
        .collect();
    assert!(kept.contains(&trace_id(1).to_vec()), "{kept:?}");
    assert!(kept.contains(&trace_id(2).to_vec()), "{kept:?}");
    worker.shutdown().await;
}

#[test]
fn policies_file_errors_carry_the_file_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        "- {name: a, type: span_count, span_count: {min_spans: 5, max_spans: 2}}\n",
    )
    .unwrap();
    let text = format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{}}}}}}}}\ntail_sampling: {{policies_file: {:?}}}\nexporters: {{debug: {{}}}}\n",
        file.display().to_string()
    );
    let err = tailgate::worker::config::parse_worker(&text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("tail_sampling.policies_file: {}[0].span_count.max_spans: must not be less than min_spans", file.display())),
        "{err}"
    );
    let both = text.replace(
        "{policies_file:",
        "{policies: [{name: x, type: always_sample}], policies_file:",
    );
    let err = tailgate::worker::config::parse_worker(&both)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tail_sampling.policies_file: set policies or policies_file, not both"),
        "{err}"
    );
}
