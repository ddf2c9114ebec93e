//! The admin listener: `/metrics` (Prometheus text or OpenMetrics), `/healthz` (the process
//! is alive) and `/readyz` (ready for traffic: not while starting or draining). It shares
//! nothing with the data path but the metric sources, so a slow scraper cannot stall
//! ingest. Several sources (self-metrics of several components, span metrics) are merged
//! into one exposition, each metric family once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
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
        let (listener, addr) = bind("admin", endpoint).await?;
        let stop = supervisor.token(group);
        supervisor.spawn(
            group,
            "admin",
            serve_admin(listener, sources.into(), health, stop),
        );
        Ok(Admin { addr })
    }
}

/// Serves the admin endpoints on `listener` until `stop` is cancelled.
async fn serve_admin(
    listener: TcpListener,
    sources: Arc<[Arc<dyn MetricsSource>]>,
    health: Arc<Health>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(AdminState { sources, health });
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
pub fn merge_families(parts: &[String]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: std::collections::HashMap<String, (Vec<String>, Vec<String>)> =
        Default::default();
    for part in parts {
        let mut current = String::new();
        for line in part.lines().filter(|l| !l.trim().is_empty()) {
            let meta = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "));
            if let Some(rest) = meta {
                current = rest.split(' ').next().unwrap_or("").to_owned();
            }
            let entry = families.entry(current.clone()).or_insert_with(|| {
                order.push(current.clone());
                Default::default()
            });
            if meta.is_some() {
                if !entry.0.iter().any(|l| l == line) && entry.0.len() < 2 {
                    entry.0.push(line.to_owned());
                }
            } else {
                entry.1.push(line.to_owned());
            }
        }
    }
    let mut out = String::new();
    for name in order {
        let (meta, samples) = &families[&name];
        for line in meta.iter().chain(samples) {
            out.push_str(line);
            out.push('\n');
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

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    if s.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
