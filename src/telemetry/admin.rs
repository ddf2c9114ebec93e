//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is alive) and
//! `/readyz` (ready for traffic: not while starting or draining). It shares nothing with
//! the data path but the registry, so a slow scraper cannot stall ingest.

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

use super::Registry;
use crate::lifecycle::{bind, log_exit, StartError};
use crate::spanmetrics::Format;

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

/// Metrics served on `/metrics` before the self-telemetry (the span metrics).
pub trait ExtraMetrics: Send + Sync {
    fn render(&self, out: &mut String, format: Format);
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    health: Arc<Health>,
    extra: Option<Arc<dyn ExtraMetrics>>,
}

/// A running admin listener.
pub struct Admin {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Admin {
    /// Binds `endpoint` and serves `/metrics` (`extra` first, then `registry`), `/healthz`
    /// and `/readyz`.
    pub async fn start(
        endpoint: &str,
        registry: Registry,
        health: Arc<Health>,
        extra: Option<Arc<dyn ExtraMetrics>>,
    ) -> Result<Admin, StartError> {
        let listener = bind("admin", endpoint).await?;
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let stop = CancellationToken::new();
        let task = tokio::spawn(log_exit(
            "admin",
            serve_admin(listener, registry, health, extra, stop.clone()),
        ));
        Ok(Admin { addr, stop, task })
    }

    /// Stops serving, after in-flight scrapes.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Serves the admin endpoints on `listener` until `stop` is cancelled.
async fn serve_admin(
    listener: TcpListener,
    registry: Registry,
    health: Arc<Health>,
    extra: Option<Arc<dyn ExtraMetrics>>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(AdminState {
            registry,
            health,
            extra,
        });
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
    let mut body = String::new();
    if let Some(extra) = &s.extra {
        extra.render(&mut body, format);
    }
    let own = s.registry.render();
    match format {
        Format::Text => body.push_str(&own),
        Format::OpenMetrics => {
            body.push_str(&openmetrics_families(&own));
            body.push_str("# EOF\n");
        }
    }
    ([(header::CONTENT_TYPE, format.content_type())], body)
}

/// Adapts the self-telemetry's classic text to OpenMetrics: a counter family is named
/// without its `_total` suffix there (the samples keep it), and blank lines are not
/// allowed.
fn openmetrics_families(text: &str) -> String {
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
