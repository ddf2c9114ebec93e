//! Local mode: a router and N workers in one process, on loopback, from one config file
//! (by default `config/local.yaml`, compiled in). The router listens where the config's
//! receivers say; the workers listen on loopback ports of their own; one admin listener
//! serves every component's metrics, each series labelled with its `component`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use serde::Deserialize;

use crate::config::{read_yaml, ConfigError, FieldError};
use crate::exporter::config::{ExporterConfig, OtlpExporterConfig};
use crate::lifecycle::ShutdownConfig;
use crate::lifecycle::StartError;
use crate::membership::resolver::Resolver;
use crate::membership::ring::RingKind;
use crate::process::ProcessMetrics;
use crate::receiver::config::ReceiversConfig;
use crate::router::config::{RouteConfig, RouterConfig, RoutingKey};
use crate::router::Router;
use crate::supervisor::{Supervisor, TaskFailure};
use crate::telemetry::AdminConfig;
use crate::telemetry::{Admin, Health, MetricsSource, Registry};
use crate::worker::config::{worker_from_yaml, WorkerConfig};
use crate::worker::Worker;

/// The embedded default config.
pub const DEFAULT_CONFIG: &str = include_str!("../config/local.yaml");
/// The embedded default policy list, used when the config names no policies.
pub const DEFAULT_POLICIES: &str = include_str!("../policies/default.yaml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalSection {
    #[serde(default = "two")]
    workers: usize,
}

fn two() -> usize {
    2
}

/// A validated local-mode config.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub receivers: ReceiversConfig,
    pub admin: AdminConfig,
    pub shutdown: ShutdownConfig,
    /// One config per worker, listening on loopback.
    pub workers: Vec<WorkerConfig>,
}

fn error(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        errors: vec![FieldError {
            path: path.into(),
            message: message.into(),
        }],
    }
}

/// Parses a local-mode config: the worker sections (`tail_sampling`, `spanmetrics`,
/// `exporters`) apply to every worker; `receivers` and `admin` are the router's and the
/// process's; `local.workers` is how many workers to run.
pub fn parse_local(text: &str) -> Result<LocalConfig, ConfigError> {
    let serde_yaml::Value::Mapping(mut root) = read_yaml(text)? else {
        return Err(error("", "a local config is a mapping"));
    };
    let section =
        |root: &mut serde_yaml::Mapping, key: &str| root.remove(key).filter(|v| !v.is_null());
    let local: LocalSection = match section(&mut root, "local") {
        Some(v) => serde_path_to_error::deserialize(v)
            .map_err(|e| error(&format!("local.{}", e.path()), e.inner().to_string()))?,
        None => LocalSection { workers: two() },
    };
    if local.workers == 0 {
        return Err(error("local.workers", "must be at least 1"));
    }
    let receivers = section(&mut root, "receivers");
    let admin = section(&mut root, "admin");
    let shutdown = section(&mut root, "shutdown");
    // The public sections are checked by validating them as a one-worker config would.
    let mut public = root.clone();
    for (key, value) in [
        ("receivers", &receivers),
        ("admin", &admin),
        ("shutdown", &shutdown),
    ] {
        if let Some(v) = value {
            public.insert(key.into(), v.clone());
        }
    }
    with_default_policies(&mut public)?;
    let checked = worker_from_yaml(serde_yaml::Value::Mapping(public))?;
    if checked.health_check.is_some() || checked.span_metrics_exporter.is_some() {
        return Err(error(
            "",
            "local mode serves health and span metrics on its admin endpoint: no health_check extension or prometheus exporter",
        ));
    }
    let mut workers = Vec::with_capacity(local.workers);
    for i in 0..local.workers {
        let mut w = checked.clone();
        w.receivers = loopback_receivers();
        w.admin.endpoint = "127.0.0.1:0".into();
        w.shutdown = checked.shutdown.clone();
        if let Some(sm) = &mut w.spanmetrics {
            sm.instance_id = Some(format!("local-worker-{i}"));
        }
        for (_, e) in &mut w.exporters {
            if let ExporterConfig::File(f) = e {
                f.path = numbered(&f.path, i);
            }
        }
        workers.push(w);
    }
    Ok(LocalConfig {
        receivers: checked.receivers,
        admin: checked.admin,
        shutdown: checked.shutdown,
        workers,
    })
}

/// Adds the embedded default policies when the config names none.
fn with_default_policies(root: &mut serde_yaml::Mapping) -> Result<(), ConfigError> {
    let Some(serde_yaml::Value::Mapping(ts)) = root.get_mut("tail_sampling") else {
        return Ok(());
    };
    if !ts.contains_key("policies") && !ts.contains_key("policies_file") {
        let policies: serde_yaml::Value = serde_yaml::from_str(DEFAULT_POLICIES)
            .map_err(|e| error("policies/default.yaml", e.to_string()))?;
        ts.insert("policies".into(), policies);
    }
    Ok(())
}

fn loopback_receivers() -> ReceiversConfig {
    let mut r = ReceiversConfig::default();
    r.otlp.protocols.grpc = Some(crate::receiver::config::GrpcReceiverConfig {
        endpoint: "127.0.0.1:0".into(),
        ..Default::default()
    });
    r
}

/// `dir/traces.jsonl` → `dir/traces-<i>.jsonl`.
fn numbered(path: &std::path::Path, i: usize) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{i}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{i}"),
    };
    path.with_file_name(name)
}

/// A running local deployment.
pub struct Local {
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// Where each worker writes kept traces, for the file exporters.
    pub trace_files: Vec<PathBuf>,
    router: Router,
    workers: Vec<Worker>,
    health: Arc<Health>,
    /// The local admin listener's task.
    supervisor: Supervisor,
}

impl Local {
    pub async fn start(config: LocalConfig) -> Result<Local, StartError> {
        let mut workers = Vec::new();
        let mut trace_files = Vec::new();
        for (i, w) in config.workers.into_iter().enumerate() {
            trace_files.extend(w.exporters.iter().filter_map(|(_, e)| match e {
                ExporterConfig::File(f) => Some(f.path.clone()),
                _ => None,
            }));
            let component = format!("worker-{i}");
            let registry = Registry::with_labels(&[("role", "worker"), ("component", &component)]);
            workers.push(Worker::start_with(w, registry).await?);
        }
        let endpoints: Vec<String> = workers
            .iter()
            .filter_map(|w| w.grpc_addr)
            .map(|a| a.to_string())
            .collect();
        // The router's template for its backends: each gets its own endpoint.
        let mut otlp = OtlpExporterConfig::to("placeholder:4317");
        otlp.tls.insecure = true;
        let router_config = RouterConfig {
            receivers: config.receivers,
            routes: vec![RouteConfig {
                name: "loadbalancing".into(),
                routing_key: RoutingKey::TraceId,
                routing_attributes: Vec::new(),
                ring: RingKind::Collector(2),
                otlp,
                resolver: Resolver::Static(endpoints),
            }],
            admin: AdminConfig {
                endpoint: "127.0.0.1:0".into(),
            },
            shutdown: config.shutdown,
            memory_limiter: None,
            health_check: None,
            summary: Default::default(),
        };
        let registry = Registry::with_labels(&[("role", "router"), ("component", "router")]);
        let router = Router::start_with(router_config, registry).await?;
        let mut sources: Vec<Arc<dyn MetricsSource>> = vec![
            Arc::new(ProcessMetrics::new("local")),
            Arc::new(router.registry.clone()),
        ];
        for w in &workers {
            sources.push(w.pipeline().clone());
            sources.push(Arc::new(w.registry.clone()));
        }
        let health = Arc::new(Health::default());
        let mut supervisor = Supervisor::new();
        let group = supervisor.group("admin");
        let admin = Admin::start(
            &config.admin.endpoint,
            sources,
            health.clone(),
            &mut supervisor,
            group,
        )
        .await?;
        health.set_ready(true);
        Ok(Local {
            grpc_addr: router.grpc_addr,
            http_addr: router.http_addr,
            admin_addr: admin.addr,
            trace_files,
            router,
            workers,
            health,
            supervisor,
        })
    }

    /// What a newcomer needs to know, for the terminal.
    pub fn banner(&self) -> String {
        let mut out = format!(
            "tailgate local: a router and {} workers on this machine\n",
            self.workers.len()
        );
        if let Some(a) = self.grpc_addr {
            out.push_str(&format!(
                "  send OTLP/gRPC to   {a}  (OTEL_EXPORTER_OTLP_ENDPOINT=http://{a})\n"
            ));
        }
        if let Some(a) = self.http_addr {
            out.push_str(&format!("  send OTLP/HTTP to   http://{a}/v1/traces\n"));
        }
        for f in &self.trace_files {
            out.push_str(&format!("  kept traces in      {}\n", f.display()));
        }
        out.push_str(&format!(
            "  metrics             http://{}/metrics\n",
            self.admin_addr
        ));
        out.push_str("  stop with Ctrl-C: pending traces are decided and written first\n");
        out
    }

    /// The first task of the router, a worker or the admin listener to end while it
    /// should be running; local mode is not ready from then on.
    pub async fn failed(&mut self) -> TaskFailure {
        let mut waiting: Vec<Pin<Box<dyn Future<Output = TaskFailure> + Send + '_>>> = vec![
            Box::pin(self.router.failed()),
            Box::pin(self.supervisor.failed()),
        ];
        waiting.extend(
            self.workers
                .iter_mut()
                .map(|w| Box::pin(w.failed()) as Pin<Box<dyn Future<Output = _> + Send + '_>>),
        );
        let failure = std::future::poll_fn(|cx| {
            waiting
                .iter_mut()
                .find_map(|f| match f.as_mut().poll(cx) {
                    Poll::Ready(failure) => Some(failure),
                    Poll::Pending => None,
                })
                .map_or(Poll::Pending, Poll::Ready)
        })
        .await;
        drop(waiting);
        self.health.set_ready(false);
        failure
    }

    /// Router first (no new data), then the workers (decide and export what they hold).
    pub async fn shutdown(mut self) {
        self.health.set_ready(false);
        self.router.shutdown().await;
        for w in self.workers {
            w.shutdown().await;
        }
        self.supervisor.stop_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_config_is_valid_and_numbers_its_files() {
        let c = parse_local(DEFAULT_CONFIG).unwrap();
        assert_eq!(c.workers.len(), 2);
        let files: Vec<_> = c
            .workers
            .iter()
            .flat_map(|w| w.exporters.iter())
            .filter_map(|(_, e)| match e {
                ExporterConfig::File(f) => Some(f.path.display().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(files, ["./data/traces-0.jsonl", "./data/traces-1.jsonl"]);
        assert_eq!(
            c.workers[1]
                .spanmetrics
                .as_ref()
                .unwrap()
                .instance_id
                .as_deref(),
            Some("local-worker-1")
        );
        assert!(
            c.workers[0].policies.policies().len() >= 3,
            "the default policy set is used"
        );
        assert_eq!(c.admin.endpoint, "localhost:8888");
    }

    #[test]
    fn errors_keep_their_paths() {
        let err = parse_local("local: {workers: 0}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("local.workers: must be at least 1"), "{err}");
        let err = parse_local("tail_sampling: {decision_wait: 0s}\nexporters: {debug: {}}\nreceivers: {otlp: {protocols: {grpc: {}}}}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tail_sampling.decision_wait: 0s is not between 1ms and 1day"),
            "{err}"
        );
    }
}
