//! The admin listener: `/metrics` (Prometheus text or OpenMetrics), `/healthz` (the process
//! is alive) and `/readyz` (ready for traffic: not while starting or draining). It shares
//! nothing with the data path but the metric sources, so a slow scraper cannot stall
//! ingest. Several sources (self-metrics of several components, span metrics) are merged
//! into one exposition, each metric family once.
//!
//! Two listeners of the collector's may be added beside it: the `health_check` extension
//! (its endpoint and path, answering as the collector does) and a `prometheus` exporter
//! fed span metrics, which then serves them instead of the admin listener.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Format, Registry};
use serde::Deserialize;

use crate::config::{check_endpoint, Errors, Section};
use crate::net::{bind, BindError};
use crate::supervisor::{Group, Supervisor};

/// Readiness, flipped by the process's lifecycle.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    since: SystemTime,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            since: SystemTime::now(),
        }
    }
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Something that renders metrics for `/metrics`: a [`Registry`] (self-telemetry) or the
/// span metrics.
pub trait MetricsSource: Send + Sync {
    fn render(&self, out: &mut String, format: Format);
}

impl MetricsSource for Registry {
    fn render(&self, out: &mut String, format: Format) {
        let text = Registry::render(self);
        match format {
            Format::Text => out.push_str(&text),
            Format::OpenMetrics => out.push_str(&openmetrics_families(&text)),
        }
    }
}

#[derive(Clone)]
struct AdminState {
    sources: Arc<[Arc<dyn MetricsSource>]>,
    health: Arc<Health>,
}

/// `admin`: the listener for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_endpoint")]
    pub endpoint: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            endpoint: default_admin_endpoint(),
        }
    }
}

fn default_admin_endpoint() -> String {
    "0.0.0.0:8888".into()
}

impl Section for AdminConfig {
    const KEY: &'static str = "admin";

    fn validate(&self, errors: &mut Errors) {
        check_endpoint(&self.endpoint, "admin.endpoint", errors);
    }
}

/// `extensions.health_check[/name]`: the collector's health endpoint, answering 200 while
/// the process is ready and 503 otherwise.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default = "default_health_endpoint")]
    pub endpoint: String,
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Deprecated in the collector; accepted with no effect.
    #[serde(default)]
    pub check_collector_pipeline: Option<serde_yaml::Value>,
}

fn default_health_endpoint() -> String {
    "localhost:13133".into()
}

fn default_health_path() -> String {
    "/".into()
}

/// `exporters.prometheus[/name]` fed span metrics by a metrics pipeline: serves them for
/// scraping on its endpoint (the admin listener then serves self-metrics only). The
/// collector's keys that would rename or relabel series are refused as unknown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusExporterConfig {
    pub endpoint: String,
    #[serde(default = "yes")]
    add_metric_suffixes: bool,
    #[serde(default)]
    send_timestamps: bool,
    /// Accepted with no effect: the exposition format follows the Accept header.
    #[serde(default)]
    pub enable_open_metrics: Option<bool>,
    /// Accepted with no effect: series expire after `spanmetrics.metrics_expiration`.
    #[serde(default, with = "humantime_serde")]
    pub metric_expiration: Option<Duration>,
    /// Accepted with no effect: span metrics carry their service as a label already.
    #[serde(default)]
    pub resource_to_telemetry_conversion: Option<serde_yaml::Value>,
}

fn yes() -> bool {
    true
}

/// Takes every component of type `kind` (`kind` or `kind/<name>`) out of `section` (the
/// file's `section_name` map): the first one's path, and its config when it parses (empty
/// when null); any other is an error, since one serves each process.
fn take_one<T: serde::de::DeserializeOwned>(
    section: &mut BTreeMap<String, serde_yaml::Value>,
    section_name: &str,
    kind: &str,
    errors: &mut Errors,
) -> Option<(String, Option<T>)> {
    let ids: Vec<String> = section
        .keys()
        .filter(|id| id.split_once('/').map_or(id.as_str(), |(k, _)| k) == kind)
        .cloned()
        .collect();
    let mut found = None;
    for id in ids {
        let value = section.remove(&id).unwrap_or_default();
        let path = format!("{section_name}.{id}");
        if found.is_some() {
            errors.push(path, format!("one {kind} at most: it serves this process"));
            continue;
        }
        let value = if value.is_null() {
            serde_yaml::Value::Mapping(Default::default())
        } else {
            value
        };
        let config = errors.parse::<T>(&path, value);
        found = Some((path, config));
    }
    found
}

/// Takes the `health_check` extension out of `extensions` (the rest are other
/// components'): at most one.
pub fn take_health_check(
    extensions: &mut BTreeMap<String, serde_yaml::Value>,
    errors: &mut Errors,
) -> Option<HealthCheckConfig> {
    let (path, config) =
        take_one::<HealthCheckConfig>(extensions, "extensions", "health_check", errors)?;
    let config = config?;
    check_endpoint(&config.endpoint, &format!("{path}.endpoint"), errors);
    if !config.path.starts_with('/') {
        errors.push(format!("{path}.path"), "must start with /");
    }
    Some(config)
}

/// Takes the `prometheus` exporters out of `exporters` (the rest get kept traces): at most
/// one, and only beside span metrics.
pub fn take_prometheus_exporter(
    exporters: &mut BTreeMap<String, serde_yaml::Value>,
    has_span_metrics: bool,
    errors: &mut Errors,
) -> Option<PrometheusExporterConfig> {
    let (path, config) =
        take_one::<PrometheusExporterConfig>(exporters, "exporters", "prometheus", errors)?;
    if !has_span_metrics {
        errors.push(
            &path,
            "serves span metrics, which are off: configure spanmetrics",
        );
    }
    let config = config?;
    check_endpoint(&config.endpoint, &format!("{path}.endpoint"), errors);
    if !config.add_metric_suffixes {
        errors.push(
            format!("{path}.add_metric_suffixes"),
            "must be true: span metrics are named with their unit and type suffixes",
        );
    }
    if config.send_timestamps {
        errors.push(
            format!("{path}.send_timestamps"),
            "must be false: samples are read at scrape time",
        );
    }
    Some(config)
}

/// A running admin listener; its task runs in a supervisor group, stopped (after
/// in-flight scrapes) with the group.
pub struct Admin {
    pub addr: SocketAddr,
}

impl Admin {
    /// Binds `endpoint` and serves `/metrics` (every source, merged), `/healthz` and
    /// `/readyz` in `group` of `supervisor`.
    pub async fn start(
        endpoint: &str,
        sources: Vec<Arc<dyn MetricsSource>>,
        health: Arc<Health>,
        supervisor: &mut Supervisor,
        group: Group,
    ) -> Result<Admin, BindError> {
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .with_state(AdminState {
                sources: sources.into(),
                health,
            });
        let addr = serve("admin", endpoint, app, supervisor, group).await?;
        Ok(Admin { addr })
    }

    /// The prometheus exporter's listener: `sources` (the span metrics) on `/metrics`.
    pub async fn start_metrics(
        config: &PrometheusExporterConfig,
        sources: Vec<Arc<dyn MetricsSource>>,
        supervisor: &mut Supervisor,
        group: Group,
    ) -> Result<SocketAddr, BindError> {
        let app = Router::new()
            .route("/metrics", get(metrics))
            .with_state(AdminState {
                sources: sources.into(),
                health: Arc::default(),
            });
        serve("prometheus", &config.endpoint, app, supervisor, group).await
    }

    /// The health_check extension's listener, when configured: readiness on its path, as
    /// the collector answers it (a JSON status, 200 or 503).
    pub async fn start_health_check(
        config: Option<&HealthCheckConfig>,
        health: Arc<Health>,
        supervisor: &mut Supervisor,
        group: Group,
    ) -> Result<Option<SocketAddr>, BindError> {
        let Some(config) = config else {
            return Ok(None);
        };
        let app = Router::new()
            .route(&config.path, get(health_status))
            .with_state(AdminState {
                sources: Arc::new([]),
                health,
            });
        serve("health_check", &config.endpoint, app, supervisor, group)
            .await
            .map(Some)
    }
}

/// Binds `endpoint` and serves `app` as task `name` of `group` until the group stops.
async fn serve(
    name: &'static str,
    endpoint: &str,
    app: Router,
    supervisor: &mut Supervisor,
    group: Group,
) -> Result<SocketAddr, BindError> {
    let (listener, addr) = bind(name, endpoint).await?;
    let stop = supervisor.token(group);
    supervisor.spawn(group, name, serve_app(listener, app, stop));
    Ok(addr)
}

async fn serve_app(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn metrics(State(s): State<AdminState>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = Format::from_accept(accept);
    let parts: Vec<String> = s
        .sources
        .iter()
        .map(|source| {
            let mut part = String::new();
            source.render(&mut part, format);
            part
        })
        .collect();
    let mut body = merge_families(&parts);
    if format == Format::OpenMetrics {
        body.push_str("# EOF\n");
    }
    ([(header::CONTENT_TYPE, format.content_type())], body)
}

/// Merges expositions so that every metric family appears once, with its `# HELP` and
/// `# TYPE` from the first part that has it and the samples of every part, in order.
/// Series of different parts must differ in their labels (a component or identity label).
/// Runs of sample lines are borrowed from `parts`, and the result is allocated once: a
/// scrape of a large span metrics table copies its text once more, not once per line.
pub fn merge_families(parts: &[String]) -> String {
    #[derive(Default)]
    struct Family<'a> {
        meta: Vec<&'a str>,
        /// Runs of consecutive sample lines, each with its line ends.
        samples: Vec<&'a str>,
    }
    let mut order: Vec<&str> = Vec::new();
    let mut families: std::collections::HashMap<&str, Family> = Default::default();
    for part in parts {
        let mut current = "";
        // The run of sample lines being gathered: its start and end in `part`.
        let mut run = 0..0;
        let mut at = 0;
        for line in part.split_inclusive('\n') {
            let start = at;
            at += line.len();
            let text = line.trim_end_matches(['\n', '\r']);
            let meta = text
                .strip_prefix("# HELP ")
                .or_else(|| text.strip_prefix("# TYPE "));
            let blank = text.trim().is_empty();
            if (meta.is_some() || blank) && !run.is_empty() {
                if let Some(family) = families.get_mut(current) {
                    family.samples.push(&part[run.clone()]);
                }
                run = 0..0;
            }
            if blank {
                continue;
            }
            if !run.is_empty() {
                run.end = at;
                continue;
            }
            // A `# HELP` or `# TYPE` line, or the first sample line of a run.
            if let Some(rest) = meta {
                current = rest.split(' ').next().unwrap_or("");
            }
            let family = families.entry(current).or_insert_with(|| {
                order.push(current);
                Family::default()
            });
            if meta.is_none() {
                run = start..at;
            } else if !family.meta.contains(&text) && family.meta.len() < 2 {
                family.meta.push(text);
            }
        }
        if !run.is_empty() {
            if let Some(family) = families.get_mut(current) {
                family.samples.push(&part[run]);
            }
        }
    }
    let mut out = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for name in order {
        let family = &families[&name];
        for line in &family.meta {
            out.push_str(line);
            out.push('\n');
        }
        for run in &family.samples {
            out.push_str(run);
            if !run.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    out
}

/// Adapts the self-telemetry's classic text to OpenMetrics: a counter family is named
/// without its `_total` suffix there (the samples keep it), and blank lines are not
/// allowed.
pub fn openmetrics_families(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut counters = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_owned());
            }
        }
    }
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut rewritten = None;
        for prefix in ["# TYPE ", "# HELP "] {
            if let Some(rest) = line.strip_prefix(prefix) {
                let name = rest.split(' ').next().unwrap_or("");
                if counters.contains(name) {
                    if let Some(family) = name.strip_suffix("_total") {
                        rewritten = Some(format!("{prefix}{family}{}", &rest[name.len()..]));
                    }
                }
            }
        }
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

async fn health_status(State(s): State<AdminState>) -> impl IntoResponse {
    let (code, status) = if s.health.is_ready() {
        (StatusCode::OK, "Server available")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Server not available")
    };
    let uptime = s.health.since.elapsed().unwrap_or_default();
    let body = serde_json::json!({
        "status": status,
        "upSince": humantime::format_rfc3339_seconds(s.health.since).to_string(),
        "uptime": humantime::format_duration(Duration::from_secs(uptime.as_secs())).to_string(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    if s.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
