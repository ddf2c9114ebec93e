//! The files in deploy/ parse, and the Prometheus rules have the shape Prometheus loads.

mod common;

use std::path::Path;

fn yaml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_yaml_file_in_deploy_parses() {
    let mut files = Vec::new();
    yaml_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy"),
        &mut files,
    );
    assert!(!files.is_empty());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        serde_yaml::from_str::<serde_yaml::Value>(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

#[test]
fn recording_rules_sum_across_workers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/recording-rules.yaml");
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut records = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        assert!(group["name"].as_str().is_some());
        for rule in group["rules"].as_sequence().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            assert!(rule["record"].as_str().is_some() || rule["alert"].as_str().is_some());
            if rule["record"]
                .as_str()
                .is_some_and(|r| r.ends_with(":rate5m") && !r.contains("error_ratio"))
            {
                assert!(
                    expr.contains("sum without (collector_instance_id, instance, pod)"),
                    "{expr}"
                );
            }
            records += 1;
        }
    }
    assert!(records >= 6);
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

#[test]
fn the_embedded_tailgate_configs_are_valid() {
    // Kubernetes ConfigMaps: the worker's policies file goes where its config points.
    let dir = tempfile::tempdir().unwrap();
    let worker_cm: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/k8s/worker-config.yaml")).unwrap();
    let policies = dir.path().join("policies.yaml");
    std::fs::write(
        &policies,
        worker_cm["data"]["policies.yaml"].as_str().unwrap(),
    )
    .unwrap();
    // POD_IP comes from the StatefulSet's downward API.
    let worker = worker_cm["data"]["worker.yaml"]
        .as_str()
        .unwrap()
        .replace(
            "/etc/tailgate/policies.yaml",
            &policies.display().to_string(),
        )
        .replace("${POD_IP}", "10.1.2.3");
    let worker = tailgate::worker::config::parse_worker(&worker)
        .unwrap_or_else(|e| panic!("k8s worker: {e}"));
    assert_eq!(worker.policies.policies().len(), 4);
    let membership = worker.membership.expect("k8s workers follow the fleet");
    assert_eq!(membership.advertise, "10.1.2.3:4317");
    assert!(read("deploy/k8s/worker-statefulset.yaml").contains("fieldPath: status.podIP"));
    let router_cm: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/k8s/router-config.yaml")).unwrap();
    tailgate::router::config::parse_router(router_cm["data"]["router.yaml"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("k8s router: {e}"));
    // docker compose.
    tailgate::worker::config::parse_worker(&read("deploy/docker/worker.yaml"))
        .unwrap_or_else(|e| panic!("docker worker: {e}"));
    tailgate::router::config::parse_router(&read("deploy/docker/router.yaml"))
        .unwrap_or_else(|e| panic!("docker router: {e}"));
}

#[test]
fn workers_drain_before_kubernetes_kills_them() {
    let sts: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/k8s/worker-statefulset.yaml")).unwrap();
    let grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let cm: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/k8s/worker-config.yaml")).unwrap();
    let config: serde_yaml::Value =
        serde_yaml::from_str(cm["data"]["worker.yaml"].as_str().unwrap()).unwrap();
    let secs = |v: &serde_yaml::Value| {
        humantime::parse_duration(v.as_str().unwrap())
            .unwrap()
            .as_secs()
    };
    let needed =
        secs(&config["tail_sampling"]["decision_wait"]) + secs(&config["shutdown"]["grace_period"]);
    assert!(
        grace > needed,
        "terminationGracePeriodSeconds {grace} <= {needed}"
    );
    // The span metrics identity comes from the pod name.
    let env = &sts["spec"]["template"]["spec"]["containers"][0]["env"][0];
    assert_eq!(env["name"], "POD_NAME");
    assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
}

/// Every metric a dashboard, alert or recording rule uses is one tailgate exposes: a local
/// deployment is started, sent a trace, and scraped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_use_only_metrics_that_exist() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let local = common::local(dir.path()).await;
    let mut client = TraceServiceClient::connect(format!("http://{}", local.grpc_addr.unwrap()))
        .await
        .unwrap();
    let mut span = tailgate_testkit::span(tailgate_testkit::trace_id(1), 1, None);
    span.status = Some(opentelemetry_proto::tonic::trace::v1::Status {
        code: 2,
        ..Default::default()
    });
    client
        .export(tailgate_testkit::request("svc", vec![span]))
        .await
        .unwrap();
    // Wait for the decision so the decision metrics have samples too.
    let mut exposed = String::new();
    for _ in 0..200 {
        exposed = reqwest::get(format!("http://{}/metrics", local.admin_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if tailgate_testkit::metric(
            &exposed,
            "tailgate_spans_decided_total",
            &[("outcome", "sampled")],
        ) > 0.0
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let families: std::collections::HashSet<&str> = exposed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let pattern =
        regex::Regex::new(r"\b(?:otelcol|tailgate|traces_span_metrics)_[a-z_]+\b").unwrap();
    for file in [
        "deploy/grafana/tailgate.json",
        "deploy/k8s/prometheusrule.yaml",
        "deploy/docker/alert-rules.yaml",
        "deploy/prometheus/recording-rules.yaml",
    ] {
        let content = read(file);
        let mut used = 0;
        for name in pattern.find_iter(&content).map(|m| m.as_str()) {
            // Recording rules define new series names (tailgate:...): only raw metrics count.
            if content.contains(&format!("{name}:")) || content.contains(&format!(":{name}")) {
                continue;
            }
            assert!(
                families.contains(name),
                "{file} uses {name}, which is not exposed"
            );
            used += 1;
        }
        assert!(used > 0, "{file}");
    }
    local.shutdown().await;
}

/// The OpenTelemetry SDKs' default batch delay (`OTEL_BSP_SCHEDULE_DELAY`).
const SDK_BATCH_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

/// Local mode's and compose's defaults cannot lose traces to SDK batching: a trace whose
/// spans leave in two batches is decided on both, and so is one whose root arrives before
/// other services' spans (sent within their SDK's delay).
#[test]
fn default_waits_outlast_the_sdks_batch_delay() {
    let local = tailgate::local::parse_local(tailgate::local::DEFAULT_CONFIG).unwrap();
    let docker = tailgate::worker::config::parse_worker(&read("deploy/docker/worker.yaml"))
        .unwrap_or_else(|e| panic!("docker worker: {e}"));
    for (name, ts) in [
        ("local", &local.workers[0].tail_sampling),
        ("docker", &docker.tail_sampling),
    ] {
        assert!(
            ts.decision_wait >= 2 * SDK_BATCH_DELAY,
            "{name}: decision_wait {:?}",
            ts.decision_wait
        );
        assert!(
            ts.decision_wait_after_root_received > SDK_BATCH_DELAY,
            "{name}: decision_wait_after_root_received {:?}",
            ts.decision_wait_after_root_received
        );
    }
}

/// Compose's Prometheus loads the same alerts as the Kubernetes PrometheusRule.
#[test]
fn compose_alerts_are_the_kubernetes_alerts() {
    let alerts = |groups: &serde_yaml::Value| -> Vec<String> {
        groups
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_sequence().unwrap())
            .filter_map(|r| r["alert"].as_str().map(str::to_owned))
            .collect()
    };
    let k8s: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/k8s/prometheusrule.yaml")).unwrap();
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/docker/alert-rules.yaml")).unwrap();
    let names = alerts(&compose["groups"]);
    assert!(names.len() >= 5, "{names:?}");
    assert_eq!(names, alerts(&k8s["spec"]["groups"]));
    let prometheus = read("deploy/docker/prometheus.yaml");
    let compose_file = read("deploy/docker/docker-compose.yaml");
    assert!(prometheus.contains("/etc/prometheus/alert-rules.yaml"));
    assert!(compose_file.contains("./alert-rules.yaml:/etc/prometheus/alert-rules.yaml"));
}

/// Every dashboard query keeps to the chosen job, namespace and instance (so the panels do
/// not mix with a collector's series in the same Prometheus), groups per process by
/// `instance` too (there are no pods outside Kubernetes), and latency panels show exemplars.
#[test]
fn dashboard_queries_are_scoped_and_latency_has_exemplars() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/tailgate.json")).unwrap();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for name in ["job", "namespace", "instance"] {
        assert!(variables.contains(&name), "{variables:?}");
    }
    let metric =
        regex::Regex::new(r"\b(?:otelcol|tailgate|traces_span_metrics)_[a-z_]+(\{[^}]*\})?")
            .unwrap();
    let mut targets = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for m in metric.captures_iter(expr) {
                let selector = m.get(1).map_or("", |s| s.as_str());
                assert!(
                    selector
                        .contains(r#"job=~"$job",namespace=~"$namespace",instance=~"$instance""#),
                    "{expr}"
                );
            }
            assert!(!expr.contains("by (pod)"), "{expr}");
            if expr.contains("histogram_quantile") {
                assert_eq!(target["exemplar"], true, "{expr}");
            }
            targets += 1;
        }
    }
    assert!(targets > 10);
}
