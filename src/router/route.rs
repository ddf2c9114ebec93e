//! One `loadbalancing` route: its ring and backends (swapped whole when membership
//! changes, so routing never stalls), and the split of a scanned request into one request
//! per owning backend. Spans are copied as received, never decoded (routing by service or
//! attributes reads the fields it needs in place); resource and scope bytes are shared by
//! every backend's share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::time::Instant;

use super::config::{RouteConfig, RoutingKey};
use crate::exporter::config::endpoint_with_port;
use crate::exporter::{AttemptObserver, ExporterSet, Hooks};
use crate::membership::resolver::{Follow, Resolution};
use crate::membership::ring::Ring;
use crate::otlp::scan::Scanned;
use crate::otlp::view::{AnyValueView, Attributes, SpanView};
use crate::otlp::{RequestBuilder, Settlement, TraceId};
use crate::receiver::{IngestError, Payload};
use crate::telemetry::{self, Registry};

/// Consecutive unreachable attempts that quarantine a backend.
const QUARANTINE_AFTER: u32 = 3;
/// How long a probe of a quarantined backend may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A worker the route sends to.
pub(crate) struct Backend {
    pub endpoint: String,
    pub exporters: ExporterSet,
    health: Arc<Health>,
}

/// Whether a backend is taken out of routing, from its send attempts and probes.
#[derive(Default)]
struct Health {
    quarantined: AtomicBool,
    failures: AtomicU32,
}

impl Backend {
    fn quarantined(&self) -> bool {
        self.health.quarantined.load(Ordering::Relaxed)
    }
}

/// The ring and the backends, index-aligned with the ring's endpoints.
pub(crate) struct Members {
    pub ring: Ring,
    pub backends: Vec<Arc<Backend>>,
}

pub(crate) struct Route {
    config: RouteConfig,
    members: RwLock<Arc<Members>>,
    registry: Registry,
    resolver_label: &'static str,
    num_backends: Gauge,
    backend_updates: Counter,
    resolutions_ok: Counter,
    resolutions_failed: Counter,
    rerouted: Counter,
    quarantined: Counter,
    recovered: Counter,
    grace: Duration,
    /// Removed backends still draining.
    retiring: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

/// One request's share per backend.
pub(crate) struct Plan {
    members: Arc<Members>,
    shares: Vec<RequestBuilder>,
}

impl Route {
    pub(crate) fn new(config: RouteConfig, registry: &Registry, grace: Duration) -> Self {
        let resolver_label = config.resolver.label();
        let resolutions = |success| {
            registry.counter(
                telemetry::LB_NUM_RESOLUTIONS,
                &[("resolver", resolver_label), ("success", success)],
            )
        };
        Self {
            members: RwLock::new(Arc::new(Members {
                ring: Ring::new(config.ring, Vec::new()),
                backends: Vec::new(),
            })),
            registry: registry.clone(),
            resolver_label,
            num_backends: registry
                .gauge(telemetry::LB_NUM_BACKENDS, &[("resolver", resolver_label)]),
            backend_updates: registry.counter(
                telemetry::LB_NUM_BACKEND_UPDATES,
                &[("resolver", resolver_label)],
            ),
            resolutions_ok: resolutions("true"),
            resolutions_failed: resolutions("false"),
            rerouted: registry.counter(
                telemetry::ROUTER_REROUTED_SPANS,
                &[("exporter", &config.name)],
            ),
            quarantined: registry
                .counter(telemetry::ROUTER_QUARANTINES, &[("event", "quarantined")]),
            recovered: registry.counter(telemetry::ROUTER_QUARANTINES, &[("event", "recovered")]),
            config,
            grace,
            retiring: Default::default(),
        }
    }

    pub(crate) fn config(&self) -> &RouteConfig {
        &self.config
    }

    /// Whether a request is acknowledged only once this route's backends took it.
    pub(crate) fn waits(&self) -> bool {
        self.config.otlp.sending_queue.wait_for_result
    }

    pub(crate) fn members(&self) -> Arc<Members> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts a backend's send attempts: after `QUARANTINE_AFTER` unreachable attempts in a
    /// row it is quarantined, and its keys go to the next ring member until a probe
    /// reaches it again.
    fn observer(&self, endpoint: &str, health: &Arc<Health>) -> AttemptObserver {
        let (health, endpoint, counter) = (
            health.clone(),
            endpoint.to_owned(),
            self.quarantined.clone(),
        );
        Arc::new(move |reached| {
            if reached {
                health.failures.store(0, Ordering::Relaxed);
            } else if health.failures.fetch_add(1, Ordering::Relaxed) + 1 >= QUARANTINE_AFTER
                && !health.quarantined.swap(true, Ordering::Relaxed)
            {
                tracing::warn!(endpoint = %endpoint, "backend unreachable; quarantined, its traces go to the next ring member");
                counter.increment(1);
            }
        })
    }

    /// Stops every backend: current ones drain until `deadline`, removed ones finish
    /// retiring. What is left is counted as failed by each backend's exporter.
    pub(crate) async fn shutdown(&self, deadline: Instant) {
        for backend in &self.members().backends {
            backend.exporters.shutdown(deadline).await;
        }
        let mut retiring =
            std::mem::take(&mut *self.retiring.lock().unwrap_or_else(|p| p.into_inner()));
        while retiring.join_next().await.is_some() {}
    }

    /// Tries to connect to every quarantined backend; one that answers is routed to again.
    pub(crate) async fn probe(&self) {
        for backend in &self.members().backends {
            if !backend.quarantined() {
                continue;
            }
            let addr = endpoint_with_port(&backend.endpoint);
            let reached =
                tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&addr))
                    .await
                    .is_ok_and(|r| r.is_ok());
            if reached {
                backend.health.failures.store(0, Ordering::Relaxed);
                backend.health.quarantined.store(false, Ordering::Relaxed);
                self.recovered.increment(1);
                tracing::info!(endpoint = %backend.endpoint, "backend reachable again; back on the ring");
            }
        }
    }

    /// Takes a removed backend's queued requests onto the current ring, then lets its
    /// in-flight sends finish within the grace period. A re-routed request's settlement
    /// goes with its new shares: the old queue is done with it once they are queued.
    async fn retire(&self, backend: Arc<Backend>) {
        for request in backend.exporters.drain_queued() {
            let spans = request.spans;
            let settlement = request.settlement;
            let rerouted = Payload::Protobuf(request.bytes)
                .scan()
                .and_then(|scanned| self.plan(&scanned))
                .map(|plan| plan.send(settlement.as_ref()));
            if let Some(s) = &settlement {
                s.settle(rerouted.is_ok());
            }
            match rerouted {
                Ok(()) => self.rerouted.increment(spans),
                // Counted by the backend's exporter as failed: there is nowhere to send it.
                Err(e) => {
                    tracing::error!(endpoint = %backend.endpoint, spans, error = %e, "could not re-route a removed backend's queue")
                }
            }
        }
        backend
            .exporters
            .shutdown(Instant::now() + self.grace)
            .await;
    }

    /// Splits `request`'s valid spans by owning backend.
    pub(crate) fn plan(&self, request: &Scanned) -> Result<Plan, IngestError> {
        let members = self.members();
        if members.backends.is_empty() {
            return Err(IngestError::Unavailable("no backend to route to yet"));
        }
        let usable = |i: usize| !members.backends[i].quarantined();
        if !(0..members.backends.len()).any(usable) {
            return Err(IngestError::Unavailable("every backend is unreachable"));
        }
        let mut shares: Vec<RequestBuilder> = (0..members.backends.len())
            .map(|_| RequestBuilder::default())
            .collect();
        let mut owners: Vec<(usize, u32)> = Vec::new();
        let mut key = String::new();
        for scope in &request.scopes {
            match self.config.routing_key {
                RoutingKey::TraceId => {
                    // A trace's spans mostly come one after another (two thirds of the
                    // load generator's): the previous span's owner is reused for them.
                    let mut last: Option<(TraceId, Option<usize>)> = None;
                    request.split_scope(scope, &mut owners, &mut shares, |_, id| {
                        let owner = match last {
                            Some((seen, owner)) if seen == *id => owner,
                            _ => members.ring.route_usable(id, usable),
                        };
                        last = Some((*id, owner));
                        Ok(owner)
                    })?;
                }
                RoutingKey::Service => {
                    let resource = scope.head.resource_attributes();
                    let Some(AnyValueView::Str(service)) = resource.get("service.name") else {
                        return Err(IngestError::InvalidArgument(
                            "routing_key service: a resource has no service.name".into(),
                        ));
                    };
                    let owner = members.ring.route_usable(service.as_bytes(), usable);
                    request.split_scope(scope, &mut owners, &mut shares, |_, _| Ok(owner))?;
                }
                RoutingKey::Attributes => {
                    let scope_attributes = scope.head.scope().attributes();
                    let resource = scope.head.resource_attributes();
                    request.split_scope(scope, &mut owners, &mut shares, |span, _| {
                        let span = request.view(span);
                        self.attribute_key(&mut key, &span, scope_attributes, resource);
                        Ok::<_, IngestError>(members.ring.route_usable(key.as_bytes(), usable))
                    })?;
                }
            }
        }
        Ok(Plan { members, shares })
    }

    /// `name=value|` for each routing attribute, in config order (the collector's key):
    /// span, then scope, then resource attributes, plus `span.name` and `span.kind`.
    fn attribute_key(
        &self,
        key: &mut String,
        span: &SpanView<'_>,
        scope: Attributes<'_>,
        resource: Attributes<'_>,
    ) {
        use std::fmt::Write as _;
        key.clear();
        for name in &self.config.routing_attributes {
            key.push_str(name);
            key.push('=');
            match name.as_str() {
                "span.name" => key.push_str(span.name()),
                "span.kind" => {
                    let _ = write!(key, "{}", span.kind);
                }
                _ => {
                    let value = span
                        .attributes()
                        .get(name)
                        .or_else(|| scope.get(name))
                        .or_else(|| resource.get(name));
                    if let Some(v) = value {
                        v.write_to(key);
                    }
                }
            }
            key.push('|');
        }
    }
}

impl Follow for Route {
    /// Applies one resolution. A failure is counted and the current members stay. A
    /// changed endpoint list (sorted, as the collector sorts it) builds a new ring that is
    /// swapped in at once; clients of backends that stay are kept; removed backends are
    /// drained in the background and what they still had queued is routed again.
    fn apply(self: &Arc<Self>, resolution: Resolution) {
        let Resolution::Members(mut endpoints) = resolution else {
            self.resolutions_failed.increment(1);
            return;
        };
        self.resolutions_ok.increment(1);
        endpoints.sort();
        let old = self.members();
        if old.ring.endpoints() == endpoints.as_slice() {
            return;
        }
        let existing: HashMap<&str, &Arc<Backend>> = old
            .backends
            .iter()
            .map(|b| (b.endpoint.as_str(), b))
            .collect();
        let mut backends = Vec::with_capacity(endpoints.len());
        let mut usable = Vec::with_capacity(endpoints.len());
        for e in &endpoints {
            if let Some(b) = existing.get(e.as_str()) {
                backends.push(Arc::clone(b));
                usable.push(e.clone());
                continue;
            }
            let mut otlp = self.config.otlp.clone();
            otlp.endpoint = endpoint_with_port(e);
            let name = format!("{}/{e}", self.config.name);
            let health = Arc::new(Health::default());
            match ExporterSet::start_backend(
                &name,
                otlp,
                e,
                Hooks {
                    observe: Some(self.observer(e, &health)),
                    fallback: None,
                },
                &self.registry,
            ) {
                Ok(exporters) => {
                    backends.push(Arc::new(Backend {
                        endpoint: e.clone(),
                        exporters,
                        health,
                    }));
                    usable.push(e.clone());
                }
                Err(err) => {
                    tracing::error!(endpoint = %e, error = %err, "cannot create a client for this backend; left out of the ring")
                }
            }
        }
        let new = Arc::new(Members {
            ring: Ring::new(self.config.ring, usable),
            backends,
        });
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        self.num_backends.set(new.backends.len() as f64);
        self.backend_updates.increment(1);
        tracing::info!(route = %self.config.name, resolver = self.resolver_label, backends = ?new.ring.endpoints(), "ring updated");
        let removed: Vec<Arc<Backend>> = old
            .backends
            .iter()
            .filter(|b| !new.ring.endpoints().contains(&b.endpoint))
            .cloned()
            .collect();
        let mut retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
        for backend in removed {
            let route = Arc::clone(self);
            retiring.spawn(async move { route.retire(backend).await });
        }
    }
}

impl Plan {
    /// Whether any backend this plan sends to has a full queue.
    pub(crate) fn blocked(&self) -> bool {
        self.shares
            .iter()
            .zip(&self.members.backends)
            .any(|(share, b)| !share.is_empty() && b.exporters.is_full())
    }

    /// Hands every share to its backend's queue; each backend sends (and retries) its own
    /// share independently. With `settlement`, every share reports to it.
    pub(crate) fn send(mut self, settlement: Option<&Arc<Settlement>>) {
        for (share, backend) in self.shares.iter_mut().zip(&self.members.backends) {
            if !share.is_empty() {
                let mut request = share.take();
                request.settlement = settlement.cloned();
                backend.exporters.enqueue(request);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Membership, re-routing and quarantine, driven through the route's update stream
    //! with paused time. Backends are loopback ports nothing listens on (refused at once),
    //! so every send fails as unreachable without waiting on the network.

    use prost::Message;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::membership::resolver;
    use tailgate_testkit::{free_addr, metric, request, span, trace_id};

    fn route(registry: &Registry, consumers: usize) -> Arc<Route> {
        let text = format!(
            r#"
receivers: {{otlp: {{protocols: {{grpc: {{}}}}}}}}
exporters:
  loadbalancing:
    protocol:
      otlp:
        tls: {{insecure: true}}
        timeout: 1s
        sending_queue: {{num_consumers: {consumers}, queue_size: 100}}
        retry_on_failure: {{initial_interval: 1s, max_interval: 1s, max_elapsed_time: 1h}}
    resolver: {{static: {{hostnames: [unused:4317]}}}}
"#
        );
        let config = crate::router::config::parse_router(&text).unwrap();
        Arc::new(Route::new(
            config.routes[0].clone(),
            registry,
            Duration::from_secs(5),
        ))
    }

    /// Starts the route following a channel of resolutions.
    fn follow(route: &Arc<Route>) -> (mpsc::Sender<Resolution>, CancellationToken) {
        let (tx, rx) = mpsc::channel(4);
        let stop = CancellationToken::new();
        tokio::spawn(resolver::follow(route.clone(), rx, stop.clone()));
        (tx, stop)
    }

    /// Lets the follow task and the exporters run (paused time advances when idle).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    fn endpoints(route: &Route) -> Vec<String> {
        route.members().ring.endpoints().to_vec()
    }

    fn scanned(traces: std::ops::Range<u64>) -> Scanned {
        let spans = traces.map(|t| span(trace_id(t), 1, None)).collect();
        Payload::Protobuf(request("svc", spans).encode_to_vec().into())
            .scan()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn updates_swap_the_ring_and_failures_keep_it() {
        let registry = Registry::new();
        let route = route(&registry, 1);
        let (updates, stop) = follow(&route);
        let (a, b, c) = ("10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317");
        updates
            .send(Resolution::Members(vec![b.into(), a.into()]))
            .await
            .unwrap();
        settle().await;
        assert_eq!(endpoints(&route), [a, b], "sorted, as the collector does");
        let kept = Arc::clone(&route.members().backends[1]);

        updates.send(Resolution::Failed).await.unwrap();
        settle().await;
        assert_eq!(endpoints(&route), [a, b], "a failed lookup keeps the ring");

        updates
            .send(Resolution::Members(vec![b.into(), c.into()]))
            .await
            .unwrap();
        settle().await;
        assert_eq!(endpoints(&route), [b, c]);
        assert!(
            Arc::ptr_eq(&kept, &route.members().backends[0]),
            "a backend that stays keeps its client and queue"
        );
        let text = registry.render();
        let resolutions = |success| {
            metric(
                &text,
                "otelcol_loadbalancer_num_resolutions_total",
                &[("success", success)],
            )
        };
        assert_eq!((resolutions("true"), resolutions("false")), (2.0, 1.0));
        assert_eq!(
            metric(&text, "otelcol_loadbalancer_num_backend_updates_total", &[]),
            2.0
        );
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_stream_ends_the_follower_with_an_error() {
        let registry = Registry::new();
        let route = route(&registry, 1);
        let (tx, rx) = mpsc::channel(1);
        let follower = tokio::spawn(resolver::follow(
            route.clone(),
            rx,
            CancellationToken::new(),
        ));
        drop(tx);
        assert!(follower.await.unwrap().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_backends_queue_is_routed_again() {
        let registry = Registry::new();
        // One consumer: it holds the first request (retrying against a closed port) and the
        // rest wait in the queue.
        let route = route(&registry, 1);
        let (updates, stop) = follow(&route);
        let (gone, stays) = (free_addr().to_string(), free_addr().to_string());
        updates
            .send(Resolution::Members(vec![gone.clone()]))
            .await
            .unwrap();
        settle().await;
        for n in 0..5 {
            route
                .plan(&scanned(n * 10..n * 10 + 10))
                .unwrap()
                .send(None);
        }
        settle().await;
        updates
            .send(Resolution::Members(vec![stays.clone()]))
            .await
            .unwrap();
        settle().await;
        assert_eq!(endpoints(&route), [stays]);
        let text = registry.render();
        // The four requests still queued (ten spans each) moved to the new ring; the one in
        // flight keeps trying its own backend until the grace period.
        assert_eq!(
            metric(&text, "tailgate_router_rerouted_spans_total", &[]),
            40.0
        );
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_backend_is_quarantined_until_a_probe_reaches_it() {
        let registry = Registry::new();
        let route = route(&registry, 1);
        let (updates, stop) = follow(&route);
        let (down, other) = (free_addr(), free_addr());
        updates
            .send(Resolution::Members(vec![down.to_string()]))
            .await
            .unwrap();
        settle().await;
        route.plan(&scanned(0..10)).unwrap().send(None);
        // Three unreachable attempts, a second apart.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(route.members().backends[0].quarantined());
        assert!(matches!(
            route.plan(&scanned(10..20)),
            Err(IngestError::Unavailable(_))
        ));
        let quarantines = |event| {
            metric(
                &registry.render(),
                "tailgate_loadbalancer_backend_quarantine_total",
                &[("event", event)],
            )
        };
        assert_eq!(quarantines("quarantined"), 1.0);

        // A new member joins: the quarantined backend keeps its state, and every key goes
        // to the other one.
        updates
            .send(Resolution::Members(vec![
                down.to_string(),
                other.to_string(),
            ]))
            .await
            .unwrap();
        settle().await;
        let down_index = endpoints(&route)
            .iter()
            .position(|e| *e == down.to_string())
            .unwrap();
        let plan = route.plan(&scanned(100..300)).unwrap();
        assert!(plan.shares[down_index].is_empty());
        assert!(!plan.shares[1 - down_index].is_empty());

        // A probe that cannot connect keeps it out; one that can brings it back.
        route.probe().await;
        assert!(route.members().backends[down_index].quarantined());
        let _listening = tokio::net::TcpListener::bind(down).await.unwrap();
        route.probe().await;
        assert!(!route.members().backends[down_index].quarantined());
        assert_eq!(quarantines("recovered"), 1.0);
        let plan = route.plan(&scanned(100..300)).unwrap();
        assert!(plan.shares.iter().all(|s| !s.is_empty()));
        stop.cancel();
    }
}
