//! `tailgate worker`: wires receivers, the pipeline, decision loops, exporters and the
//! admin listener together, and owns the lifecycle.
//!
//! Shutdown order: not ready; with `membership`, leave the fleet and keep taking the spans
//! of held traces and deciding them on time for the handover window (or until the grace
//! period ends); stop the receivers (in-flight requests finish); stop the decision loops
//! and the membership tasks; decide (or drop) every pending trace; close the sending and
//! peer queues and let them drain until the grace period ends; count what is abandoned;
//! stop the admin listener last so the final numbers can still be scraped while draining.
//!
//! With storage, start-up replays the log (see [`durable`]) before the decision loops and
//! the receivers start: the worker is ready only once that is done.

pub mod config;
mod decider;
pub mod durable;
pub mod pipeline;
#[cfg(test)]
mod tests;

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::convert::Infallible;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::buffer::{BufferConfig, TraceBuffer};
use crate::exporter::spill::SpillTo;
use crate::exporter::ExporterSet;
use crate::lifecycle::StartError;
use crate::membership::fleet::Fleet;
use crate::membership::resolver;
use crate::memory_limiter::MemoryLimiter;
use crate::otlp::EncodedRequest;
use crate::process::ProcessMetrics;
use crate::receiver::{Ingest, IngestError, Payload, Receivers, Relay, RelayKind};
use crate::spanmetrics::SpanMetrics;
use crate::supervisor::{Group, Supervisor, TaskFailure};
use crate::telemetry::{Admin, Health, MetricsSource, Registry};
use config::WorkerConfig;
use durable::Durable;
use pipeline::{DecisionSettings, Kept, Pipeline, DECISION_TICK};

/// A running worker.
pub struct Worker {
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// The `health_check` extension's listener, when configured.
    pub health_check_addr: Option<SocketAddr>,
    /// The `prometheus` exporter's listener serving span metrics, when configured.
    pub span_metrics_addr: Option<SocketAddr>,
    pub registry: Registry,
    health: Arc<Health>,
    pipeline: Arc<Pipeline>,
    fleet: Option<Arc<Fleet>>,
    supervisor: Supervisor,
    groups: Groups,
    drop_pending_on_shutdown: bool,
    grace_period: std::time::Duration,
}

/// The worker's task groups, in shutdown order.
struct Groups {
    receivers: Group,
    decisions: Group,
    membership: Group,
    admin: Group,
}

impl Worker {
    /// Binds every listener and starts every task. Ready when this returns.
    pub async fn start(config: WorkerConfig) -> Result<Worker, StartError> {
        Self::start_with(config, Registry::with_labels(&[("role", "worker")])).await
    }

    /// Like `start`, recording into `registry` (local mode labels each component's).
    pub async fn start_with(
        config: WorkerConfig,
        registry: Registry,
    ) -> Result<Worker, StartError> {
        let health = Arc::new(Health::default());
        let mut supervisor = Supervisor::new();
        let groups = Groups {
            receivers: supervisor.group("receivers"),
            decisions: supervisor.group("decisions"),
            membership: supervisor.group("membership"),
            admin: supervisor.group("admin"),
        };
        let ts = &config.tail_sampling;
        // With storage, each sending queue overflows to disk beside the log, within the
        // log's own limit (it holds the same kept spans until their export settles).
        let spill = config.storage.as_ref().map(|storage| SpillTo {
            storage,
            limit: storage_limit(ts),
        });
        let exporters = ExporterSet::start(&config.exporters, &registry, spill)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let buffer = TraceBuffer::new(
            BufferConfig {
                decision_wait: ts.decision_wait,
                decision_wait_after_root_received: ts.decision_wait_after_root_received,
                num_traces: usize::try_from(ts.num_traces).unwrap_or(usize::MAX),
                max_buffered_bytes: ts.max_buffered_bytes,
                maximum_trace_size_bytes: ts.maximum_trace_size_bytes,
                expected_new_traces_per_sec: usize::try_from(ts.expected_new_traces_per_sec)
                    .unwrap_or(0),
            },
            cores * 4,
        );
        let mut pipeline = Pipeline::new(
            buffer,
            DecisionSettings {
                policies: config.policies.clone(),
                sampled_cache_size: ts.decision_cache.sampled_cache_size,
                non_sampled_cache_size: ts.decision_cache.non_sampled_cache_size,
                block_on_overflow: ts.block_on_overflow,
                record_policy: ts.record_policy,
                dry_run: ts.dry_run,
                write_thresholds: ts.write_sampling_threshold,
            },
            exporters,
            &registry,
        );
        if let Some(sm) = &config.spanmetrics {
            let sm = SpanMetrics::new(sm, &registry)?;
            tracing::info!(identity = sm.identity(), "span metrics on");
            pipeline = pipeline.with_span_metrics(sm);
        }
        let durable = match &config.storage {
            Some(storage) => {
                let durable = Arc::new(Durable::open(storage, storage_limit(ts), &registry)?);
                pipeline = pipeline.with_durable(durable.clone());
                Some(durable)
            }
            None => None,
        };
        let mut fleet = None;
        if let Some(membership) = &config.membership {
            let (f, returned) = Fleet::new(membership.clone(), &registry);
            resolver::start(
                &membership.resolver,
                f.clone(),
                &mut supervisor,
                groups.membership,
            )
            .await;
            pipeline = pipeline.with_fleet(f.clone());
            fleet = Some((f, returned));
        }
        let pipeline = Arc::new(pipeline);
        let fleet = fleet.map(|(f, returned)| {
            let stop = supervisor.token(groups.membership);
            supervisor.spawn(
                groups.membership,
                "relay returns",
                decide_returned(pipeline.clone(), f.me().to_owned(), returned, stop),
            );
            f
        });

        let mut sources: Vec<Arc<dyn MetricsSource>> = vec![
            Arc::new(registry.clone()),
            Arc::new(ProcessMetrics::new("worker")),
        ];
        // Span metrics are served by the prometheus exporter when there is one, as in the
        // collector; otherwise beside the self-metrics.
        let span_metrics_addr = match &config.span_metrics_exporter {
            Some(exporter) => Some(
                Admin::start_metrics(
                    exporter,
                    vec![pipeline.clone()],
                    &mut supervisor,
                    groups.admin,
                )
                .await?,
            ),
            None => {
                sources.insert(0, pipeline.clone());
                None
            }
        };
        let admin = Admin::start(
            &config.admin.endpoint,
            sources,
            health.clone(),
            &mut supervisor,
            groups.admin,
        )
        .await?;
        let health_check_addr = Admin::start_health_check(
            config.health_check.as_ref(),
            health.clone(),
            &mut supervisor,
            groups.admin,
        )
        .await?;

        if let Some(durable) = &durable {
            replay(&pipeline, durable)?;
        }
        let stop = supervisor.token(groups.decisions);
        if let Some(durable) = durable {
            supervisor.spawn(
                groups.decisions,
                "storage compaction",
                compact(durable, stop.clone()),
            );
        }
        let decision_loops = decision_loops(cores).min(pipeline.buffer().timer_shards());
        for d in 0..decision_loops {
            let shards: Vec<usize> = (d..pipeline.buffer().timer_shards())
                .step_by(decision_loops)
                .collect();
            supervisor.spawn(
                groups.decisions,
                "decision loop",
                decide_loop(pipeline.clone(), shards, stop.clone()),
            );
        }

        let mut ingest: Arc<dyn crate::receiver::Ingest> = pipeline.clone();
        let mut memory_spike = None;
        if let Some(limits) = &config.memory_limiter {
            let limiter = MemoryLimiter::new(limits, &registry);
            limiter.shed_with(pipeline.clone());
            memory_spike = Some(limiter.spike_bytes());
            supervisor.spawn(
                groups.decisions,
                "memory limiter",
                limiter.clone().run(stop.clone()),
            );
            ingest = limiter.guard(ingest);
        }
        let receivers = Receivers::start(
            &config.receivers,
            ingest,
            &registry,
            memory_spike,
            &mut supervisor,
            groups.receivers,
        )
        .await?;
        if let Some(file) = &ts.policies_file {
            // Installed before start returns, so a SIGHUP right after start-up reloads
            // rather than killing the process.
            let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .inspect_err(|e| tracing::warn!(error = %e, "no SIGHUP handler; policies reload on file change only"))
                .ok();
            supervisor.spawn(
                groups.decisions,
                "policy file watcher",
                watch_policies(
                    pipeline.clone(),
                    file.clone(),
                    ts.sample_on_first_match,
                    hangup,
                    stop.clone(),
                ),
            );
        }
        health.set_ready(true);
        tracing::info!(grpc = ?receivers.grpc_addr, http = ?receivers.http_addr, admin = %admin.addr, "worker started");
        Ok(Worker {
            grpc_addr: receivers.grpc_addr,
            http_addr: receivers.http_addr,
            admin_addr: admin.addr,
            health_check_addr,
            span_metrics_addr,
            registry,
            health,
            pipeline,
            fleet,
            supervisor,
            groups,
            drop_pending_on_shutdown: ts.drop_pending_traces_on_shutdown,
            grace_period: config.shutdown.grace_period,
        })
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// The first of the worker's tasks to end while it should be running; the worker is
    /// not ready from then on. Pending while every task runs.
    pub async fn failed(&mut self) -> TaskFailure {
        let failure = self.supervisor.failed().await;
        self.health.set_ready(false);
        failure
    }

    /// Drains and stops the worker; see the module comment for the order.
    pub async fn shutdown(mut self) {
        let deadline = Instant::now() + self.grace_period;
        self.health.set_ready(false);
        if let Some(fleet) = &self.fleet {
            self.leave(fleet, deadline).await;
        }
        self.supervisor.stop(self.groups.receivers).await;
        self.supervisor.stop(self.groups.decisions).await;
        self.supervisor.stop(self.groups.membership).await;
        self.pipeline
            .drain(self.drop_pending_on_shutdown, Instant::now());
        self.pipeline.exporters().shutdown(deadline).await;
        if let Some(fleet) = &self.fleet {
            fleet.shutdown(deadline).await;
        }
        self.supervisor.stop(self.groups.admin).await;
        tracing::info!("worker stopped");
    }

    /// Leaves the fleet: starts no trace, takes the spans of the traces it holds and
    /// decides them on time, until the window has passed and nothing is pending, or until
    /// `deadline`.
    async fn leave(&self, fleet: &Fleet, deadline: Instant) {
        let left = Instant::now();
        fleet.leave(left);
        tracing::info!(window = ?fleet.window(), "leaving the fleet");
        let until = (left + fleet.window()).min(deadline);
        loop {
            let now = Instant::now();
            let settled = now >= until && self.pipeline.buffer().pending_traces() == 0;
            if settled || now >= deadline {
                return;
            }
            tokio::time::sleep(LEAVE_POLL).await;
        }
    }
}

/// The bound on the log's bytes on disk: the buffer's bound for pending traces, and as
/// much again for kept spans waiting for their export and decided traces whose records
/// wait for older ones to be deleted.
fn storage_limit(ts: &config::TailSamplingConfig) -> u64 {
    ts.max_buffered_bytes.saturating_mul(2)
}

/// Takes the log's requests back: decisions and settled exports first, then every request,
/// each at its original arrival time.
fn replay(pipeline: &Pipeline, durable: &Durable) -> Result<(), StartError> {
    let started = std::time::Instant::now();
    let history = durable.history()?;
    let now = Instant::now();
    pipeline.remember_history(&history, now);
    let mut spans = 0;
    durable.requests(|logged| spans += pipeline.replay(logged, &history, now))?;
    let seconds = started.elapsed().as_secs_f64();
    durable.replayed(seconds);
    tracing::info!(
        spans,
        decisions = history.decided.len(),
        settled = history.settled.len(),
        seconds,
        "storage replayed"
    );
    Ok(())
}

/// How often the log's segments that nothing needs are deleted.
const COMPACTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Deletes what the log no longer needs, every [`COMPACTION_INTERVAL`] until `stop`. A
/// failure is logged and tried again: the log only grows meanwhile (and pushes back at its
/// limit).
async fn compact(durable: Arc<Durable>, stop: CancellationToken) -> Result<(), Infallible> {
    let mut tick = tokio::time::interval(COMPACTION_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Err(e) = durable.compact() {
            tracing::warn!(error = %e, "storage compaction failed");
        }
    }
}

/// How often a leaving worker checks whether it may go.
const LEAVE_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Decides here the relayed requests whose peer could not be reached (taken as `final`
/// relays from this worker), until `stop`; one the pipeline refuses for now is tried again.
/// What is still waiting at `stop` is counted as abandoned at shutdown.
async fn decide_returned(
    pipeline: Arc<Pipeline>,
    me: String,
    mut returned: tokio::sync::mpsc::UnboundedReceiver<EncodedRequest>,
    stop: CancellationToken,
) -> Result<(), Infallible> {
    let relay = Relay {
        kind: RelayKind::Final,
        from: me,
    };
    let abandon = |mut returned: tokio::sync::mpsc::UnboundedReceiver<EncodedRequest>,
                   pending: u64| {
        returned.close();
        let mut spans = pending;
        while let Ok(request) = returned.try_recv() {
            spans += request.spans;
        }
        pipeline.abandoned_at_shutdown(spans);
        Ok(())
    };
    loop {
        let request = tokio::select! {
            _ = stop.cancelled() => return abandon(returned, 0),
            r = returned.recv() => match r {
                Some(r) => r,
                None => return Ok(()),
            },
        };
        loop {
            let payload = Payload::Protobuf(request.bytes.clone());
            match pipeline.ingest(payload, Some(&relay), Instant::now()) {
                Err(IngestError::Overloaded(_) | IngestError::Unavailable(_)) => {
                    tokio::select! {
                        _ = stop.cancelled() => return abandon(returned, request.spans),
                        _ = tokio::time::sleep(RETURN_RETRY) => {}
                    }
                }
                Ok(_) | Err(IngestError::InvalidArgument(_)) => break,
            }
        }
    }
}

/// How long a returned request the pipeline refused waits before it is tried again.
const RETURN_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// How many decision loops a worker on `cores` cores runs: one per four cores. One loop
/// decides about 170 000 traces a second with the benchmark's policies (`cargo bench --bench
/// worker -- policy`), several times what four cores ingest, while every loop's tick wakes a
/// thread a hundred times a second, busy or not.
pub fn decision_loops(cores: usize) -> usize {
    cores.div_ceil(4).max(1)
}

/// Decides due traces in `shards` until `stop`, gathering kept spans into export
/// requests; what it has gathered is sent when it stops. It wakes when the first deadline
/// in its shards has come, at most once per [`DECISION_TICK`] (so a busy buffer is decided
/// in batches), and when its gathered spans are due to be sent; a trace due earlier than
/// that (a root span brings its deadline forward) wakes it to plan again. An empty or
/// filling buffer costs no wake-ups.
async fn decide_loop(
    pipeline: Arc<Pipeline>,
    shards: Vec<usize>,
    stop: CancellationToken,
) -> Result<(), Infallible> {
    let buffer = pipeline.buffer();
    let mut kept = Kept::default();
    let mut not_before = Instant::now();
    loop {
        let earlier = buffer.earlier_deadline();
        tokio::pin!(earlier);
        earlier.as_mut().enable();
        let due = buffer.plan_wake(&shards, not_before);
        let wake = [due, kept.send_at()].into_iter().flatten().min();
        tokio::select! {
            _ = stop.cancelled() => {
                pipeline.send_kept(&mut kept);
                return Ok(());
            }
            _ = &mut earlier => continue,
            _ = sleep_until_some(wake) => {}
        }
        buffer.awake(&shards);
        let now = Instant::now();
        pipeline.decide_due(&shards, now, &mut kept);
        not_before = now + DECISION_TICK;
    }
}

/// Sleeps until `wake`, or for ever.
async fn sleep_until_some(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How often a `policies_file` is checked for changes.
const POLICY_FILE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Reloads `policies_file` when its contents change or on SIGHUP, until `stop`.
async fn watch_policies(
    pipeline: Arc<Pipeline>,
    file: PathBuf,
    sample_on_first_match: bool,
    mut hangup: Option<tokio::signal::unix::Signal>,
    stop: CancellationToken,
) -> Result<(), Infallible> {
    let fingerprint = |file: &Path| {
        std::fs::read(file).ok().map(|bytes| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            h.finish()
        })
    };
    let mut seen = fingerprint(&file);
    let mut tick = tokio::time::interval(POLICY_FILE_POLL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = hup => {}
            _ = tick.tick() => {
                let now = fingerprint(&file);
                if now == seen {
                    continue;
                }
                seen = now;
            }
        }
        match crate::policy::load_policies(&file, sample_on_first_match) {
            Ok(set) => {
                pipeline.replace_policies(set);
                tracing::info!(file = %file.display(), "policies reloaded");
            }
            Err(e) => {
                for err in &e.errors {
                    tracing::error!(path = %err.path, error = %err.message, "policy reload failed; keeping the current policies");
                }
                pipeline.policy_reload_failed();
            }
        }
    }
}
