//! The Grafana dashboard's queries and the shipped rules, run by a real Prometheus (the
//! `prometheus` binary on PATH, Debian's package in CI) that scrapes a router and two worker
//! processes: every query is valid and returns data, and what the panels show matches what
//! was sent (intake counted once across the tiers, calls, error ratio, latency, decisions),
//! the recording rules record, the alerting rules evaluate without error and stay quiet, and
//! the latency panels' exemplars come through.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Status};
use serde_json::Value as Json;
use tailgate_testkit::{free_addr, free_port, request, router_yaml, span, trace_id, Sink};

const TRACES: u64 = 200;
const SPANS_PER_TRACE: u64 = 5;
/// Every tenth trace has one span with an error.
const ERROR_EVERY: u64 = 10;

/// An instant query's result: each series' labels and value.
type Samples = Vec<(BTreeMap<String, String>, f64)>;

/// A Prometheus server on loopback; killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` every second as job `tailgate`, with
    /// `rule_files` evaluated every second, and waits until it is ready.
    async fn start(dir: &Path, targets: &[SocketAddr], rule_files: &[PathBuf]) -> Prometheus {
        let binary = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let rules: Vec<String> = rule_files
            .iter()
            .map(|f| format!("'{}'", f.display()))
            .collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [{}]\n\
                 scrape_configs:\n  - job_name: tailgate\n    static_configs: [{{targets: [{}]}}]\n",
                rules.join(", "),
                targets.join(", ")
            ),
        )
        .unwrap();
        let addr = free_addr();
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--enable-feature=exemplar-storage")
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {binary:?} ({e}): install Prometheus (apt-get install prometheus) or set PROMETHEUS")
            });
        let prometheus = Prometheus {
            child,
            addr,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = prometheus
                .http
                .get(format!("http://{addr}/-/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "Prometheus did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Json {
        let response = self
            .http
            .get(format!("http://{}/api/v1/{path}", self.addr))
            .query(params)
            .send()
            .await
            .unwrap();
        let body: Json = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["status"], "success", "{path} {params:?}: {body}");
        body["data"].clone()
    }

    /// An instant query's samples: labels and value.
    async fn query(&self, expr: &str) -> Samples {
        let data = self.api("query", &[("query", expr)]).await;
        let value = |v: &Json| v[1].as_str().unwrap().parse::<f64>().unwrap();
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels = serde_json::from_value(s["metric"].clone()).unwrap();
                    (labels, value(&s["value"]))
                })
                .collect(),
            Some("scalar") => vec![(BTreeMap::new(), value(&data["result"]))],
            other => panic!("{expr}: unexpected result type {other:?}"),
        }
    }

    /// The single value of `expr` (summed when it has several series).
    async fn value(&self, expr: &str) -> f64 {
        let samples = self.query(expr).await;
        assert!(!samples.is_empty(), "{expr}: no data");
        samples.iter().map(|(_, v)| v).sum()
    }

    /// Polls `expr` until `done` holds for its value (no data counts as never), for up to
    /// 60 s.
    async fn wait_until(&self, expr: &str, done: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let samples = self.query(expr).await;
            let v: f64 = samples.iter().map(|(_, v)| v).sum();
            if !samples.is_empty() && done(v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{expr} stayed at {v}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Every query of the dashboard's panels, with the panel's title.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = format!(
        "{}/deploy/grafana/tailgate.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let dashboard: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    fn walk(panels: &Json, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            walk(&panel["panels"], out);
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    let title = panel["title"].as_str().unwrap_or_default().to_owned();
                    out.push((title, expr.to_owned()));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// A dashboard query as Grafana sends it with every variable at "All" and a rate window
/// covering the whole run.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "1h")
        .replace("$job", ".*")
        .replace("$namespace", ".*")
        .replace("$instance", ".*")
        .replace("$service", ".*")
}

/// The shipped rule files as Prometheus loads them: the recording rules every second
/// instead of every 30 s, and the PrometheusRule's groups as a plain rule file.
fn rule_files(dir: &Path) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&std::fs::read_to_string(root.join(p)).unwrap()).unwrap()
    };
    let mut recording = read("deploy/prometheus/recording-rules.yaml");
    for group in recording["groups"].as_sequence_mut().unwrap() {
        if group.get("interval").is_some() {
            group["interval"] = "1s".into();
        }
    }
    let k8s = read("deploy/k8s/prometheusrule.yaml");
    let mut files = Vec::new();
    for (name, rules) in [
        ("recording.yaml", recording),
        (
            "alerts-compose.yaml",
            read("deploy/docker/alert-rules.yaml"),
        ),
        ("alerts-k8s.yaml", k8s["spec"].clone()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, serde_yaml::to_string(&rules).unwrap()).unwrap();
        files.push(path);
    }
    files
}

fn worker_yaml(grpc: u16, admin: u16, backend: SocketAddr, id: usize) -> String {
    format!(
        r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:{grpc}"}}}}}}}}
tail_sampling:
  decision_wait: 1s
  decision_cache: {{sampled_cache_size: 10000}}
  policies: [{{name: all, type: always_sample}}]
spanmetrics:
  instance_id: worker-{id}
  exemplars: {{enabled: true}}
exporters:
  otlp: {{endpoint: "{backend}", tls: {{insecure: true}}}}
admin: {{endpoint: "127.0.0.1:{admin}"}}
shutdown: {{grace_period: 1s}}
"#
    )
}

fn within(got: f64, want: f64, tolerance: f64, what: &str) {
    assert!(
        (got - want).abs() <= want * tolerance,
        "{what}: {got}, expected {want} within {} %",
        tolerance * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_rules_show_what_a_router_and_two_workers_were_sent() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(vec![]).await;
    let mut processes = Vec::new();
    let mut workers = Vec::new();
    for id in 0..2 {
        let (grpc, admin) = (free_port(), free_port());
        let path = dir.path().join(format!("worker-{id}.yaml"));
        std::fs::write(&path, worker_yaml(grpc, admin, sink.addr, id)).unwrap();
        processes.push(common::Process::start(&path, grpc, admin));
        workers.push(format!("127.0.0.1:{grpc}"));
    }
    let (grpc, admin) = (free_port(), free_port());
    let path = dir.path().join("router.yaml");
    std::fs::write(
        &path,
        router_yaml(
            &format!("127.0.0.1:{grpc}"),
            &format!("127.0.0.1:{admin}"),
            &workers,
            "timeout: 5s",
        ),
    )
    .unwrap();
    let router = common::Process::start_as("router", &path, grpc, admin);
    let targets: Vec<SocketAddr> = processes.iter().chain([&router]).map(|p| p.admin).collect();
    let prometheus = Prometheus::start(dir.path(), &targets, &rule_files(dir.path())).await;
    // Every target scraped before any span is sent, so every counter's first sample is 0.
    prometheus.wait_until("count(up == 1)", |n| n == 3.0).await;
    let first_scrape = Instant::now();

    let mut client = TraceServiceClient::connect(format!("http://{}", router.grpc))
        .await
        .unwrap();
    for batch in (0..TRACES).collect::<Vec<_>>().chunks(20) {
        let mut spans = Vec::new();
        for &t in batch {
            let id = trace_id(t);
            for s in 1..=SPANS_PER_TRACE {
                let mut sp = span(id, s, (s > 1).then_some(1));
                if s == SPANS_PER_TRACE && t % ERROR_EVERY == 0 {
                    sp.status = Some(Status {
                        code: StatusCode::Error as i32,
                        message: "boom".into(),
                    });
                }
                spans.push(sp);
            }
        }
        client.export(request("checkout", spans)).await.unwrap();
    }
    let sent = (TRACES * SPANS_PER_TRACE) as f64;
    let errors = (TRACES / ERROR_EVERY) as f64;
    assert_eq!(
        sink.wait_for_spans(sent as usize, Duration::from_secs(30))
            .await,
        sent as usize
    );

    // The counters as scraped: what was sent, once per tier.
    prometheus
        .wait_until(
            r#"sum(otelcol_exporter_sent_spans_total{job="tailgate",role="worker"})"#,
            |v| v == sent,
        )
        .await;
    prometheus
        .wait_until("sum(traces_span_metrics_calls_total)", |v| v == sent)
        .await;
    for (expr, want) in [
        (
            r#"sum(otelcol_receiver_accepted_spans_total{role="router"})"#,
            sent,
        ),
        (
            r#"sum(otelcol_receiver_accepted_spans_total{role="worker"})"#,
            sent,
        ),
        (
            r#"sum(traces_span_metrics_calls_total{status_code="STATUS_CODE_ERROR"})"#,
            errors,
        ),
        (r#"max(otelcol_loadbalancer_num_backends)"#, 2.0),
    ] {
        assert_eq!(prometheus.value(expr).await, want, "{expr}");
    }
    // The recording rules record (every second here).
    prometheus
        .wait_until("count(tailgate:traces_span_metrics_calls:rate5m)", |n| {
            n > 0.0
        })
        .await;
    // Rates over the whole run extrapolate to its end by up to one scrape interval; a run
    // of at least 20 s keeps that within 5 %.
    if let Some(rest) = Duration::from_secs(20).checked_sub(first_scrape.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let tolerance = 0.07;

    // Every panel query is valid and returns data.
    let mut panels: BTreeMap<String, Vec<Samples>> = BTreeMap::new();
    for (title, expr) in dashboard_queries() {
        let expr = as_grafana_sends(&expr);
        let samples = prometheus.query(&expr).await;
        assert!(!samples.is_empty(), "panel {title:?}: no data for {expr}");
        panels.entry(title).or_default().push(samples);
    }
    let total = |samples: &Samples| -> f64 { samples.iter().map(|(_, v)| v).sum::<f64>() * 3600.0 };
    let panel = |title: &str| &panels[title];
    // What the panels show, against what was sent.
    within(
        total(&panel("Calls per second")[0]),
        sent,
        tolerance,
        "calls",
    );
    let in_out = panel("Spans in and out");
    within(
        total(&in_out[0]),
        sent,
        tolerance,
        "spans in (counted once)",
    );
    assert_eq!(total(&in_out[1]), 0.0, "refused");
    within(
        total(&in_out[2]),
        sent,
        tolerance,
        "spans out to the backend",
    );
    assert_eq!(total(&in_out[3]), 0.0, "send failures");
    let error_ratios = &panel("Error ratio")[0];
    // The error span is each trace's fifth (op-5): one in ten of those has an error; the
    // operations without errors have no line.
    let names: Vec<&str> = error_ratios
        .iter()
        .filter_map(|(labels, _)| labels.get("span_name").map(String::as_str))
        .collect();
    assert_eq!(names, ["op-5"]);
    within(
        error_ratios[0].1,
        1.0 / ERROR_EVERY as f64,
        tolerance,
        "error ratio of op-5",
    );
    // Every span lasts 100 ms: the quantiles fall in the bucket up to 100 ms.
    for quantiles in panel("Latency p50 / p95 / p99") {
        for (labels, v) in quantiles {
            assert!(*v > 50.0 && *v <= 100.0, "latency {v} ms for {labels:?}");
        }
    }
    let decisions = &panel("Decisions by policy")[0];
    let sampled: f64 = decisions
        .iter()
        .filter(|(l, _)| l.get("decision").map(String::as_str) == Some("sampled"))
        .map(|(_, v)| v * 3600.0)
        .sum();
    within(
        sampled,
        TRACES as f64,
        tolerance,
        "traces sampled by policy",
    );
    let ended = &panel("Where accepted spans ended")[0];
    let kept: f64 = ended
        .iter()
        .filter(|(l, _)| l.get("outcome").map(String::as_str) == Some("sampled"))
        .map(|(_, v)| v * 3600.0)
        .sum();
    within(kept, sent, tolerance, "spans that ended sampled");
    assert_eq!(total(&panel("Traces and spans buffered")[0]), 0.0);
    assert_eq!(
        panel("Ring members")[0]
            .iter()
            .map(|(_, v)| *v)
            .fold(0.0, f64::max),
        2.0
    );

    // The variables' queries offer this fleet.
    for (label, metric, want) in [
        ("job", "otelcol_process_uptime_seconds_total", "tailgate"),
        (
            "service_name",
            "traces_span_metrics_calls_total",
            "checkout",
        ),
    ] {
        let values = prometheus
            .api(&format!("label/{label}/values"), &[("match[]", metric)])
            .await;
        assert!(
            values.as_array().unwrap().iter().any(|v| v == want),
            "{label}: {values}"
        );
    }

    // The recording rules' series, fleet-wide.
    within(
        prometheus
            .value("sum(tailgate:traces_span_metrics_calls:rate5m)")
            .await
            * 300.0,
        sent,
        tolerance,
        "recorded calls",
    );
    // Every rule of every shipped file evaluates without error, and no alert fires.
    let rules = prometheus.api("rules", &[]).await;
    let mut evaluated = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
            if rule["type"] == "alerting" {
                assert_eq!(rule["state"], "inactive", "{rule}");
            }
            evaluated += 1;
        }
    }
    assert!(evaluated >= 15, "only {evaluated} rules loaded: {rules}");

    // The latency panels' exemplars: trace ids of kept traces.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exemplars = prometheus
        .api(
            "query_exemplars",
            &[
                ("query", "traces_span_metrics_duration_milliseconds_bucket"),
                ("start", &(now - 600).to_string()),
                ("end", &(now + 60).to_string()),
            ],
        )
        .await;
    let sent_ids: Vec<String> = (0..TRACES).map(|t| hex(&trace_id(t))).collect();
    let found: Vec<&Json> = exemplars
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|series| series["exemplars"].as_array().unwrap())
        .collect();
    assert!(!found.is_empty(), "no exemplars: {exemplars}");
    for e in found {
        let id = e["labels"]["trace_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{e}"));
        assert!(
            sent_ids.iter().any(|s| s == id),
            "exemplar of an unknown trace {id}"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
