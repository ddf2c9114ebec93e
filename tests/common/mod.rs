//! Helpers for the integration tests: a worker config pointed at a sink, clients, scrapes.

#![allow(dead_code)] // each test binary uses its own subset

pub mod dns;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tailgate::worker::config::{parse_worker, WorkerConfig};
use tailgate::worker::Worker;
use tailgate_testkit::Sink;
use tonic::transport::Channel;

/// A worker config listening on loopback, exporting to `sink`, with `tail_sampling`
/// settings and policies from `tail_sampling` (YAML, indented under `tail_sampling:`).
pub fn config(sink: &Sink, tail_sampling: &str) -> WorkerConfig {
    let text = format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:0"}}
      http: {{endpoint: "127.0.0.1:0", max_request_body_size: 65536}}
tail_sampling:
{tail_sampling}
exporters:
  otlp:
    endpoint: "{}"
    tls: {{insecure: true}}
    retry_on_failure: {{initial_interval: 10ms, max_interval: 50ms, max_elapsed_time: 5s}}
admin:
  endpoint: "127.0.0.1:0"
shutdown:
  grace_period: 5s
"#,
        sink.addr
    );
    parse_worker(&text).unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"))
}

pub async fn grpc_client(worker: &Worker) -> TraceServiceClient<Channel> {
    let addr = worker.grpc_addr.expect("grpc enabled");
    TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

pub fn http_url(worker: &Worker) -> String {
    format!(
        "http://{}/v1/traces",
        worker.http_addr.expect("http enabled")
    )
}

pub async fn scrape(addr: SocketAddr) -> String {
    tailgate_testkit::scrape(addr).await.expect("scrape")
}

/// Polls `/metrics` at `addr` until `name{labels}` satisfies `done` or 20 s pass; returns the
/// last value.
pub async fn wait_metric(
    addr: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    done: impl Fn(f64) -> bool,
) -> f64 {
    let mut last = 0.0;
    for _ in 0..1000 {
        last = tailgate_testkit::metric(&scrape(addr).await, name, labels);
        if done(last) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    last
}

/// Local mode from the embedded config, on test ports, writing kept traces under `dir`.
pub async fn local(dir: &std::path::Path) -> tailgate::local::Local {
    let text = tailgate::local::DEFAULT_CONFIG;
    for waits in [
        "decision_wait: 30s",
        "decision_wait_after_root_received: 6s",
    ] {
        assert!(text.contains(waits), "the embedded config changed: {waits}");
    }
    let text = text
        .replace("localhost:4317", "127.0.0.1:0")
        .replace("localhost:4318", "127.0.0.1:0")
        .replace("localhost:8888", "127.0.0.1:0")
        .replace("decision_wait: 30s", "decision_wait: 2s")
        .replace(
            "decision_wait_after_root_received: 6s",
            "decision_wait_after_root_received: 1s",
        )
        .replace(
            "./data/traces.jsonl",
            &dir.join("traces.jsonl").display().to_string(),
        );
    let config = tailgate::local::parse_local(&text).unwrap_or_else(|e| panic!("{e}"));
    tailgate::local::Local::start(config).await.unwrap()
}

/// A worker or router process; killed when dropped.
pub struct Process {
    child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl Process {
    /// Starts `tailgate worker` on `config` and waits until it listens (after its replay).
    pub fn start(config: &Path, grpc: u16, admin: u16) -> Process {
        Self::start_as("worker", config, grpc, admin)
    }

    /// Starts `tailgate <role>` on `config` and waits until it listens.
    pub fn start_as(role: &str, config: &Path, grpc: u16, admin: u16) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tailgate"))
            .args([role, "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let grpc: SocketAddr = format!("127.0.0.1:{grpc}").parse().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(grpc).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the {role} exited before it listened: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the {role} did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Process {
            child,
            grpc,
            admin: format!("127.0.0.1:{admin}").parse().unwrap(),
        }
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        tailgate_testkit::metric(&scrape(self.admin).await, name, labels)
    }

    /// Waits (up to 20 s) until the metric reaches `at_least`.
    pub async fn wait_for(&self, name: &str, labels: &[(&str, &str)], at_least: f64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.metric(name, labels).await < at_least {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} did not reach {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
