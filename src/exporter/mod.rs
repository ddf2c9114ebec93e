//! Exporters: every kept trace goes to every configured exporter. Each exporter has a
//! bounded sending queue drained by `num_consumers` tasks that send with retries; a network
//! exporter's consumer sends the requests queued behind the one it takes along with it
//! ([`merge_queued`]).
//!
//! Bounds and accounting: the queue holds at most `queue_size` requests from the
//! receivers' point of view: [`ExporterSet::is_full`] makes them refuse new data with a
//! retryable status while any queue is at capacity. The decision loop itself never waits
//! on a queue (export never blocks decisions), so the queue can exceed `queue_size` by at
//! most the traces that were already buffered when it filled, which the trace buffer's
//! limits bound. With `file_storage` (a worker with a log), a queue at capacity overflows
//! to disk instead ([`spill`]) and the receivers push back only when that is full too.
//! Every span handed to an exporter ends in exactly one of
//! `otelcol_exporter_sent_spans`, `otelcol_exporter_send_failed_spans` or
//! `otelcol_exporter_enqueue_failed_spans` (queue closed at shutdown).

pub mod config;
mod debug;
mod file;
mod otlp_grpc;
mod otlp_http;
mod retry;
pub mod spill;

pub use otlp_grpc::retryable;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::otlp::EncodedRequest;
use crate::storage::StorageError;
use crate::telemetry::{self, Registry};
use config::{ExporterConfig, OtlpExporterConfig, RetryConfig, SendingQueueConfig};
use spill::{Spill, SpillTo};

/// An exporter that could not be built from its config.
#[derive(Debug, thiserror::Error)]
#[error("exporters.{name}: {cause}")]
pub struct BuildError {
    pub name: String,
    #[source]
    pub cause: BuildCause,
}

/// Why an exporter could not be built; `key` is the config key at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildCause {
    #[error("{key} {}: {source}", path.display())]
    ReadFile {
        key: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {source}")]
    Invalid {
        key: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("its sending queue's overflow on disk: {0}")]
    Spill(StorageError),
}

impl BuildCause {
    pub(crate) fn invalid(
        key: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        BuildCause::Invalid {
            key: key.into(),
            source: source.into(),
        }
    }

    pub(crate) fn read<'a>(
        key: &'static str,
        path: &'a std::path::Path,
    ) -> impl Fn(std::io::Error) -> Self + 'a {
        move |source| BuildCause::ReadFile {
            key,
            path: path.to_owned(),
            source,
        }
    }
}

/// Why one send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("retryable: {message}")]
    Retryable {
        message: String,
        /// The backend's requested delay (gRPC RetryInfo, HTTP Retry-After).
        after: Option<Duration>,
        /// The request may have reached the backend (the attempt timed out or was cut off
        /// after it left), so sending it again may duplicate it.
        maybe_delivered: bool,
    },
    #[error("permanent: {0}")]
    Permanent(String),
}

/// Told after every send attempt whether the backend was reachable (for health-aware
/// routing).
pub type AttemptObserver = Arc<dyn Fn(bool) + Send + Sync>;

/// Takes a request that could not be sent (retries spent), instead of it being counted as
/// failed: a worker decides spans itself when the peer holding their trace is gone. A
/// request it gives back is counted as failed after all.
pub type Fallback = Arc<dyn Fn(EncodedRequest) -> Result<(), EncodedRequest> + Send + Sync>;

/// What a fleet member's exporter is told about its sends.
#[derive(Clone, Default)]
pub struct Hooks {
    pub observe: Option<AttemptObserver>,
    pub fallback: Option<Fallback>,
}

/// A successful send; `rejected` spans were refused by the backend's partial success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub rejected: u64,
}

/// Where an exporter sends.
enum Sink {
    Grpc(Box<otlp_grpc::GrpcSink>),
    Http(otlp_http::HttpSink),
    File(file::FileSink),
    Debug(debug::DebugSink),
}

impl Sink {
    /// Whether queued requests are merged for this sink: for the network's, where each
    /// request has a cost of its own; a file or the log gets each as it came.
    fn merges(&self) -> bool {
        matches!(self, Sink::Grpc(_) | Sink::Http(_))
    }

    async fn send(&self, request: &EncodedRequest) -> Result<Sent, SendError> {
        match self {
            Sink::Grpc(s) => s.send(request).await,
            Sink::Http(s) => s.send(request).await,
            Sink::File(s) => s.send(request).await,
            Sink::Debug(s) => s.send(request),
        }
    }
}

struct ExporterMetrics {
    sent: Counter,
    /// Spans sent again after an attempt with an unknown outcome.
    resent: Counter,
    send_failed: Counter,
    enqueue_failed: Counter,
    queue_size: Gauge,
    /// For a router's backend: `otelcol_loadbalancer_backend_*`.
    backend: Option<BackendMetrics>,
}

struct BackendMetrics {
    latency: Histogram,
    success: Counter,
    failure: Counter,
}

struct Exporter {
    name: String,
    tx: async_channel::Sender<EncodedRequest>,
    rx: async_channel::Receiver<EncodedRequest>,
    capacity: usize,
    metrics: Arc<ExporterMetrics>,
    /// Spans taken off the queue and not yet counted as sent or failed.
    in_flight: Arc<AtomicU64>,
    /// Where requests beyond `capacity` wait, with storage.
    spill: Option<Arc<Spill>>,
    /// The overflow refused the last request it was given (full): the receivers push back.
    spill_refusing: Arc<std::sync::atomic::AtomicBool>,
}

/// All configured exporters and their consumer tasks.
pub struct ExporterSet {
    exporters: Vec<Exporter>,
    tasks: tokio::sync::Mutex<JoinSet<()>>,
}

impl ExporterSet {
    /// Builds every exporter and starts its consumers; with `spill`, each sending queue
    /// overflows to disk there.
    pub fn start(
        configs: &[(String, ExporterConfig)],
        registry: &Registry,
        spill: Option<SpillTo<'_>>,
    ) -> Result<Self, BuildError> {
        Self::build(configs, registry, None, Hooks::default(), spill)
    }

    /// One `otlp` exporter for a fleet member at `endpoint` (a router's backend, a
    /// worker's peer), with the load balancer's per-backend metrics and `hooks`.
    pub fn start_backend(
        name: &str,
        config: OtlpExporterConfig,
        endpoint: &str,
        hooks: Hooks,
        registry: &Registry,
    ) -> Result<Self, BuildError> {
        let configs = [(name.to_owned(), ExporterConfig::Otlp(config))];
        Self::build(&configs, registry, Some(endpoint), hooks, None)
    }

    fn build(
        configs: &[(String, ExporterConfig)],
        registry: &Registry,
        backend: Option<&str>,
        hooks: Hooks,
        spill: Option<SpillTo<'_>>,
    ) -> Result<Self, BuildError> {
        let mut tasks = JoinSet::new();
        let mut exporters = Vec::with_capacity(configs.len());
        for (name, config) in configs {
            let build_error = |cause: BuildCause| BuildError {
                name: name.clone(),
                cause,
            };
            let (sink, queue, retry) = match config {
                ExporterConfig::Otlp(c) => (
                    Sink::Grpc(Box::new(otlp_grpc::GrpcSink::new(c).map_err(build_error)?)),
                    &c.sending_queue,
                    Some(c.retry_on_failure.clone()),
                ),
                ExporterConfig::OtlpHttp(c) => (
                    Sink::Http(otlp_http::HttpSink::new(c).map_err(build_error)?),
                    &c.sending_queue,
                    Some(c.retry_on_failure.clone()),
                ),
                ExporterConfig::File(c) => (
                    Sink::File(file::FileSink::new(c).map_err(build_error)?),
                    &c.sending_queue,
                    None,
                ),
                ExporterConfig::Debug(c) => (
                    Sink::Debug(debug::DebugSink::new(name, c)),
                    &c.sending_queue,
                    None,
                ),
            };
            let mut exporter = Exporter::new(name, queue, registry, backend);
            if let Some(to) = spill {
                let overflow = Spill::open(to.storage, name, to.limit, registry)
                    .map_err(|e| build_error(BuildCause::Spill(e)))?;
                let overflow = Arc::new(overflow);
                tasks.spawn(refill(
                    exporter.tx.clone(),
                    overflow.clone(),
                    exporter.capacity,
                    exporter.metrics.clone(),
                    exporter.spill_refusing.clone(),
                ));
                exporter.spill = Some(overflow);
            }
            let sink = Arc::new(sink);
            let consumers = if queue.enabled {
                queue.num_consumers
            } else {
                1
            };
            for _ in 0..consumers {
                tasks.spawn(consume(
                    exporter.name.clone(),
                    exporter.rx.clone(),
                    sink.clone(),
                    retry.clone(),
                    hooks.clone(),
                    exporter.metrics.clone(),
                    exporter.in_flight.clone(),
                ));
            }
            exporters.push(exporter);
        }
        Ok(Self {
            exporters,
            tasks: tokio::sync::Mutex::new(tasks),
        })
    }

    /// Closes the queues and takes out what has not been sent yet, so a router can send
    /// it elsewhere. In-flight requests finish (or fail) as usual.
    pub fn drain_queued(&self) -> Vec<EncodedRequest> {
        let mut out = Vec::new();
        for e in &self.exporters {
            e.tx.close();
            while let Ok(request) = e.rx.try_recv() {
                out.push(request);
            }
            e.metrics.queue_size.set(0.0);
        }
        out
    }

    /// Hands a request to every exporter. Never waits. A queue at capacity with an
    /// overflow on disk puts it there, behind what waits there already.
    pub fn enqueue(&self, request: EncodedRequest) {
        if request.spans == 0 {
            return;
        }
        for e in &self.exporters {
            if let Some(spill) = &e.spill {
                if !spill.is_empty() || e.tx.len() >= e.capacity {
                    let refused = spill.push(request.clone()).is_err();
                    e.spill_refusing.store(refused, Ordering::Release);
                    if !refused {
                        if let Some(s) = &request.settlement {
                            s.enlist();
                        }
                        continue;
                    }
                }
            }
            match e.tx.try_send(request.clone()) {
                Ok(()) => {
                    if let Some(s) = &request.settlement {
                        s.enlist();
                    }
                    e.metrics.queue_size.set(e.tx.len() as f64);
                }
                Err(_) => {
                    if let Some(s) = &request.settlement {
                        s.refuse();
                    }
                    e.metrics.enqueue_failed.increment(request.spans)
                }
            }
        }
    }

    /// Whether any sending queue is at capacity, and cannot overflow to disk: the
    /// receivers' signal to push back.
    pub fn is_full(&self) -> bool {
        self.exporters.iter().any(|e| {
            e.tx.len() >= e.capacity
                && (e.spill.is_none() || e.spill_refusing.load(Ordering::Acquire))
        })
    }

    /// Closes the queues, lets the consumers drain until `deadline`, then abandons what is
    /// left and counts it as failed.
    pub async fn shutdown(&self, deadline: Instant) {
        for e in &self.exporters {
            e.tx.close();
        }
        let mut tasks = self.tasks.lock().await;
        let drained = tokio::time::timeout_at(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        for e in &self.exporters {
            let mut abandoned = e.in_flight.swap(0, Ordering::SeqCst);
            while let Ok(request) = e.rx.try_recv() {
                abandoned += request.spans;
            }
            if let Some(spill) = &e.spill {
                abandoned += spill.abandon();
            }
            if abandoned > 0 {
                tracing::warn!(exporter = %e.name, spans = abandoned, "export abandoned at shutdown");
                e.metrics.send_failed.increment(abandoned);
            }
            e.metrics.queue_size.set(0.0);
        }
    }
}

impl Exporter {
    fn new(
        name: &str,
        queue: &SendingQueueConfig,
        registry: &Registry,
        backend: Option<&str>,
    ) -> Self {
        // A disabled queue acts as a queue of one: the receivers push back as soon as one
        // request waits, and the decision loop still never waits on a send.
        let capacity = if queue.enabled { queue.queue_size } else { 1 };
        let (tx, rx) = async_channel::unbounded();
        let labels = [("exporter", name)];
        // The collector labels its queue gauges with the signal; alerts and autoscalers
        // select on it.
        let queue_labels = [("exporter", name), ("data_type", "traces")];
        registry
            .gauge(telemetry::EXPORTER_QUEUE_CAPACITY, &queue_labels)
            .set(capacity as f64);
        Self {
            name: name.to_owned(),
            tx,
            rx,
            capacity,
            metrics: Arc::new(ExporterMetrics {
                sent: registry.counter(telemetry::EXPORTER_SENT_SPANS, &labels),
                resent: registry.counter(
                    if backend.is_some() {
                        telemetry::ROUTER_RESENT_SPANS
                    } else {
                        telemetry::EXPORTER_RESENT_SPANS
                    },
                    &labels,
                ),
                send_failed: registry.counter(telemetry::EXPORTER_SEND_FAILED_SPANS, &labels),
                enqueue_failed: registry.counter(telemetry::EXPORTER_ENQUEUE_FAILED_SPANS, &labels),
                queue_size: registry.gauge(telemetry::EXPORTER_QUEUE_SIZE, &queue_labels),
                backend: backend.map(|endpoint| {
                    let outcome = |success| {
                        registry.counter(
                            telemetry::LB_BACKEND_OUTCOME,
                            &[("endpoint", endpoint), ("success", success)],
                        )
                    };
                    BackendMetrics {
                        latency: registry
                            .histogram(telemetry::LB_BACKEND_LATENCY, &[("endpoint", endpoint)]),
                        success: outcome("true"),
                        failure: outcome("false"),
                    }
                }),
            }),
            in_flight: Arc::new(AtomicU64::new(0)),
            spill: None,
            spill_refusing: Arc::default(),
        }
    }
}

/// How often a queue with requests on disk looks for room.
const REFILL_TICK: Duration = Duration::from_millis(10);

/// Moves requests from the overflow on disk back into the queue, oldest first, while it
/// has room, until the queue is closed.
async fn refill(
    tx: async_channel::Sender<EncodedRequest>,
    spill: Arc<Spill>,
    capacity: usize,
    metrics: Arc<ExporterMetrics>,
    refusing: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut tick = tokio::time::interval(REFILL_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !tx.is_closed() {
        tick.tick().await;
        while tx.len() < capacity {
            match spill.pop() {
                None => break,
                Some(Ok(request)) => {
                    refusing.store(false, Ordering::Release);
                    if let Err(closed) = tx.try_send(request) {
                        // Closed meanwhile (shutdown): abandoned as a queued request is,
                        // its settlement unsettled, so the write-ahead log keeps it.
                        metrics.send_failed.increment(closed.into_inner().spans);
                        return;
                    }
                    metrics.queue_size.set(tx.len() as f64);
                }
                Some(Err(spans)) => metrics.send_failed.increment(spans),
            }
        }
    }
}

async fn consume(
    name: String,
    rx: async_channel::Receiver<EncodedRequest>,
    sink: Arc<Sink>,
    retry: Option<RetryConfig>,
    hooks: Hooks,
    metrics: Arc<ExporterMetrics>,
    in_flight: Arc<AtomicU64>,
) {
    // Requests taken from the queue and not sent yet: one that did not fit the previous
    // send, or the parts of a merged send the backend refused. In flight already, so an
    // abort at shutdown counts them.
    let mut pending: VecDeque<EncodedRequest> = VecDeque::new();
    // Queued requests are merged only while the backend takes what it is sent: one that
    // fails keeps the rest of its queue queued, where a router can re-route it.
    let mut delivering = false;
    let merges = sink.merges();
    loop {
        let first = match pending.pop_front() {
            Some(request) => request,
            None => match rx.recv().await {
                Ok(request) => {
                    in_flight.fetch_add(request.spans, Ordering::SeqCst);
                    request
                }
                Err(_) => break,
            },
        };
        let limit = if merges && delivering && pending.is_empty() {
            MERGE_BYTES
        } else {
            0
        };
        let (request, parts) = merge_queued(first, &rx, limit, &in_flight, &mut pending);
        metrics.queue_size.set(rx.len() as f64);
        let started = Instant::now();
        let result = retry::send_with_retry(
            &sink,
            &request,
            retry.as_ref(),
            hooks.observe.as_ref(),
            &metrics.resent,
        )
        .await;
        if let Some(b) = &metrics.backend {
            b.latency.record(started.elapsed().as_secs_f64() * 1000.0);
            if result.is_ok() {
                &b.success
            } else {
                &b.failure
            }
            .increment(1);
        }
        delivering = result.is_ok();
        // A merged send refused for good: its requests go again one by one, so one the
        // backend cannot take fails alone. They stay in flight, unsettled.
        if let (Err(SendError::Permanent(e)), false) = (&result, parts.is_empty()) {
            tracing::warn!(exporter = %name, requests = parts.len(), error = %e, "a merged export was refused; sending its requests one by one");
            for part in parts.into_iter().rev() {
                pending.push_front(part);
            }
            continue;
        }
        // Counted and cleared together, with no await between, so an abort at shutdown
        // sees the spans either in flight or counted, never both; the same for settling
        // (an aborted send is not settled: its settlement ends abandoned). A partial
        // success is delivered: the backend answered, and what it rejected is counted.
        in_flight.fetch_sub(request.spans, Ordering::SeqCst);
        let settlements = request.settlement.iter();
        for s in settlements.chain(parts.iter().filter_map(|p| p.settlement.as_ref())) {
            s.settle(result.is_ok());
        }
        match result {
            Ok(sent) => {
                metrics.sent.increment(request.spans - sent.rejected);
                if sent.rejected > 0 {
                    tracing::warn!(exporter = %name, rejected = sent.rejected, "backend rejected part of an export");
                    metrics.send_failed.increment(sent.rejected);
                }
            }
            Err(e) => {
                tracing::warn!(exporter = %name, spans = request.spans, error = %e, "export failed");
                let failed = match &hooks.fallback {
                    Some(fallback) => fallback(request).err(),
                    None => Some(request),
                };
                if let Some(request) = failed {
                    metrics.send_failed.increment(request.spans);
                }
            }
        }
    }
}

/// The most bytes of queued requests a consumer merges into one send. Under the smallest
/// message limit a collector's gRPC server has by default (4 MiB), with room to spare.
const MERGE_BYTES: usize = 1 << 20;

/// `first`, and the requests queued behind it while together they stay within `limit`
/// bytes, as one request, and the requests merged into it (none when `first` goes
/// alone; their settlements stay with them). An encoded `ExportTraceServiceRequest` is its
/// repeated `resource_spans` field, so requests concatenated are one request holding all
/// of theirs. Nothing waits for more to arrive: a queue that keeps up sends each request as
/// it came; one that fell behind catches up in fewer, larger sends. A request taken that
/// does not fit goes to `pending`, counted in flight, for the next send.
fn merge_queued(
    first: EncodedRequest,
    rx: &async_channel::Receiver<EncodedRequest>,
    limit: usize,
    in_flight: &AtomicU64,
    pending: &mut VecDeque<EncodedRequest>,
) -> (EncodedRequest, Vec<EncodedRequest>) {
    let mut len = first.bytes.len();
    let mut parts = vec![first];
    while len < limit {
        let Ok(next) = rx.try_recv() else { break };
        in_flight.fetch_add(next.spans, Ordering::SeqCst);
        if len + next.bytes.len() > limit {
            pending.push_back(next);
            break;
        }
        len += next.bytes.len();
        parts.push(next);
    }
    if parts.len() == 1 {
        return (parts.swap_remove(0), Vec::new());
    }
    let mut bytes = bytes::BytesMut::with_capacity(len);
    for part in &parts {
        bytes.extend_from_slice(&part.bytes);
    }
    let merged = EncodedRequest {
        bytes: bytes.freeze(),
        spans: parts.iter().map(|p| p.spans).sum(),
        settlement: None,
    };
    (merged, parts)
}

#[cfg(test)]
mod tests;
