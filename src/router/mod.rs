//! `tailgate router`: the stateless first tier. It receives OTLP, checks span ids as the
//! worker does, and sends every span to one backend per route, chosen by hashing the
//! span's routing key onto a consistent-hash ring of workers found by a resolver.
//!
//! A request is accepted only when every backend it needs has room: otherwise it is
//! refused whole with a retryable status, so nothing is half-sent and retried twice. With
//! `sending_queue.wait_for_result`, its acknowledgement also waits until every backend took
//! its share (a settlement the shares report to).

pub mod config;
mod route;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::StartError;
use crate::membership::resolver;
use crate::memory_limiter::MemoryLimiter;
use crate::otlp::{Outcome, Settlement};
use crate::process::ProcessMetrics;
use crate::receiver::{check_ids, Ingest, IngestError, Ingested, Payload, Receivers, Relay};
use crate::supervisor::{Group, Supervisor, TaskFailure};
use crate::telemetry::{self, Admin, Health, Registry};
use config::RouterConfig;
use route::Route;

/// The routes as receivers see them.
struct Routes {
    routes: Vec<Arc<Route>>,
    refused: metrics::Counter,
}

impl Routes {
    /// When a route waits for results and there is something to deliver: what its
    /// shares report to, and what the acknowledgement waits on.
    fn settlement(
        &self,
        spans: u64,
    ) -> (Option<Arc<Settlement>>, Option<oneshot::Receiver<Outcome>>) {
        if spans == 0 || !self.routes.iter().any(|r| r.waits()) {
            return (None, None);
        }
        let (tx, rx) = oneshot::channel();
        let settlement = Settlement::new(move |outcome| {
            let _ = tx.send(outcome);
        });
        (Some(Arc::new(settlement)), Some(rx))
    }
}

impl Ingest for Routes {
    /// Relay marks are a worker's business; a router routes every request alike.
    fn ingest(
        &self,
        request: Payload,
        _relay: Option<&Relay>,
        _now: Instant,
    ) -> Result<Ingested, IngestError> {
        let request = request.scan()?;
        let checked = check_ids(&request)?;
        let plans = self
            .routes
            .iter()
            .map(|r| r.plan(&request))
            .collect::<Result<Vec<_>, _>>()?;
        if plans.iter().any(|p| p.blocked()) {
            self.refused.increment(checked.accepted);
            return Err(IngestError::Overloaded("a backend's sending queue is full"));
        }
        let (settlement, delivery) = self.settlement(checked.accepted);
        for (plan, route) in plans.into_iter().zip(&self.routes) {
            plan.send(settlement.as_ref().filter(|_| route.waits()));
        }
        Ok(Ingested {
            delivery,
            ..checked
        })
    }
}

/// A running router.
pub struct Router {
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// The `health_check` extension's listener, when configured.
    pub health_check_addr: Option<SocketAddr>,
    pub registry: Registry,
    health: Arc<Health>,
    routes: Vec<Arc<Route>>,
    supervisor: Supervisor,
    groups: Groups,
    grace_period: std::time::Duration,
}

/// The router's task groups, in shutdown order.
struct Groups {
    receivers: Group,
    membership: Group,
    admin: Group,
}

impl Router {
    /// Resolves every route once, then binds the listeners. Ready when this returns.
    pub async fn start(config: RouterConfig) -> Result<Router, StartError> {
        Self::start_with(config, Registry::with_labels(&[("role", "router")])).await
    }

    /// Like `start`, recording into `registry` (local mode labels each component's).
    pub async fn start_with(
        config: RouterConfig,
        registry: Registry,
    ) -> Result<Router, StartError> {
        let health = Arc::new(Health::default());
        let mut supervisor = Supervisor::new();
        let groups = Groups {
            receivers: supervisor.group("receivers"),
            membership: supervisor.group("membership"),
            admin: supervisor.group("admin"),
        };
        let routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .map(|r| {
                Arc::new(Route::new(
                    r.clone(),
                    &registry,
                    config.shutdown.grace_period,
                ))
            })
            .collect();
        let stop = supervisor.token(groups.membership);
        for route in &routes {
            resolver::start(
                &route.config().resolver,
                route.clone(),
                &mut supervisor,
                groups.membership,
            )
            .await;
            supervisor.spawn(
                groups.membership,
                "backend probe",
                probe_loop(route.clone(), stop.clone()),
            );
        }
        let mut ingest: Arc<dyn Ingest> = Arc::new(Routes {
            routes: routes.clone(),
            refused: registry.counter(
                telemetry::PROCESSOR_REFUSED_SPANS,
                &[("processor", "loadbalancer")],
            ),
        });

        let admin = Admin::start(
            &config.admin.endpoint,
            vec![
                Arc::new(registry.clone()),
                Arc::new(ProcessMetrics::new("router")),
            ],
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

        let mut memory_spike = None;
        if let Some(limits) = &config.memory_limiter {
            let limiter = MemoryLimiter::new(limits, &registry);
            memory_spike = Some(limiter.spike_bytes());
            supervisor.spawn(
                groups.membership,
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
        health.set_ready(true);
        tracing::info!(grpc = ?receivers.grpc_addr, http = ?receivers.http_addr, admin = %admin.addr, "router started");
        Ok(Router {
            grpc_addr: receivers.grpc_addr,
            http_addr: receivers.http_addr,
            admin_addr: admin.addr,
            health_check_addr,
            registry,
            health,
            routes,
            supervisor,
            groups,
            grace_period: config.shutdown.grace_period,
        })
    }

    /// The first of the router's tasks to end while it should be running; the router is
    /// not ready from then on. Pending while every task runs.
    pub async fn failed(&mut self) -> TaskFailure {
        let failure = self.supervisor.failed().await;
        self.health.set_ready(false);
        failure
    }

    /// Stops taking data, then drains every backend's queue within the grace period.
    /// Requests waiting for their results (`wait_for_result`) are answered as their
    /// shares are delivered; those still waiting at the deadline fail as the queues are
    /// abandoned, so the client sends them again.
    pub async fn shutdown(mut self) {
        let deadline = Instant::now() + self.grace_period;
        self.health.set_ready(false);
        let receivers = self.groups.receivers;
        let answered = tokio::time::timeout_at(deadline, self.supervisor.stop(receivers)).await;
        self.supervisor.stop(self.groups.membership).await;
        for route in &self.routes {
            route.shutdown(deadline).await;
        }
        if answered.is_err() {
            self.supervisor.stop(receivers).await;
        }
        self.supervisor.stop(self.groups.admin).await;
        tracing::info!("router stopped");
    }
}

/// How often quarantined backends are probed.
const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

async fn probe_loop(route: Arc<Route>, stop: CancellationToken) -> Result<(), Infallible> {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => route.probe().await,
        }
    }
}
