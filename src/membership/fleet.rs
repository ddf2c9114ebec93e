//! A worker's view of the fleet and the handover protocol that keeps each trace on one
//! worker while members come and go: ring versions with the rings replaced within the
//! handover window, markers of where this worker handed a trace, one lock stripe per group
//! of trace ids, and one client per peer and relay kind. `docs/ARCHITECTURE.md` ("Scaling
//! workers") describes the protocol and its failure modes.
//!
//! For a group of spans of trace T that this worker does not hold (pending, or decided
//! and cached), [`Fleet::place`] answers where they go:
//!
//! - a `final` relay: here, always (so no request is relayed twice by a rule);
//! - an `offer` from S: to the worker this one handed T to, when it did; else back to S as
//!   `final`, after promising (a marker) to send any later span of T to S;
//! - a `forward` from S, or a client's request this worker owns on its current ring: to the
//!   worker this one handed or promised T to (S included), when it did; else as an `offer`
//!   to T's oldest previous owner within the window other than S; else here;
//! - a client's request another worker owns: to that worker as `forward` (and marked).
//!
//! The caller holds T's lock stripe from the question until the spans are buffered, so an
//! offer and a start of the same trace on one worker are never interleaved.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use metrics::{Counter, Gauge};
use moka::sync::Cache;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::config::MembershipConfig;
use super::resolver::{Follow, Resolution};
use super::ring::Ring;
use crate::exporter::{ExporterSet, Hooks};
use crate::otlp::{EncodedRequest, TraceId};
use crate::receiver::{Relay, RelayKind, RELAY_FROM_HEADER, RELAY_HEADER};
use crate::telemetry::{self, Registry};

/// Markers (trace → the worker it was handed to) kept at most; past it the least recently
/// used are evicted, counted.
const MAX_MARKERS: u64 = 262_144;
/// Lock stripes serialising "does this worker hold the trace" with "start it here".
const STRIPES: usize = 1024;
/// Rings replaced within one window kept at most.
const MAX_PREVIOUS: usize = 16;
/// How long a peer that left every ring may finish sending what it has queued.
const RETIRE_GRACE: Duration = Duration::from_secs(5);

/// Why spans go to another worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Another worker owns the trace on this worker's current ring.
    NotOwner,
    /// Asking the trace's previous owner whether it holds the trace.
    PreviousOwner,
    /// This worker handed the trace to that worker earlier.
    Holder,
    /// An offer this worker declined, sent back to the offerer.
    Declined,
}

impl Reason {
    const ALL: [Reason; 4] = [
        Reason::NotOwner,
        Reason::PreviousOwner,
        Reason::Holder,
        Reason::Declined,
    ];

    fn label(self) -> &'static str {
        match self {
            Reason::NotOwner => "not_owner",
            Reason::PreviousOwner => "previous_owner",
            Reason::Holder => "holder",
            Reason::Declined => "declined",
        }
    }
}

/// Where the spans of one trace go.
pub enum Place {
    Here,
    Peer(Arc<Peer>, RelayKind, Reason),
}

/// A worker this one sends relayed requests to: one sending queue per relay kind, each
/// request marked with the kind and this worker's endpoint.
pub struct Peer {
    pub endpoint: Arc<str>,
    sets: Vec<(RelayKind, ExporterSet)>,
}

impl Peer {
    pub fn send(&self, kind: RelayKind, request: EncodedRequest) {
        if let Some((_, set)) = self.sets.iter().find(|(k, _)| *k == kind) {
            set.enqueue(request);
        }
    }

    fn is_full(&self) -> bool {
        self.sets.iter().any(|(_, s)| s.is_full())
    }

    async fn shutdown(&self, deadline: Instant) {
        for (_, set) in &self.sets {
            set.shutdown(deadline).await;
        }
    }
}

/// The rings this worker routes by.
struct Views {
    version: u64,
    current: Arc<Ring>,
    /// Rings replaced within the window, oldest first, with when each was replaced.
    previous: Vec<(Arc<Ring>, Instant)>,
}

struct FleetMetrics {
    version: Gauge,
    members: Gauge,
    changes: Counter,
    relayed: HashMap<(RelayKind, &'static str), Counter>,
    offers_taken: Counter,
    offers_declined: Counter,
    offers_redirected: Counter,
    holder_gone: Counter,
    untrusted: Counter,
}

pub struct Fleet {
    me: Arc<str>,
    config: MembershipConfig,
    registry: Registry,
    views: RwLock<Arc<Views>>,
    leaving: AtomicBool,
    markers: Cache<u128, Arc<str>, ahash::RandomState>,
    stripes: Box<[Mutex<()>]>,
    peers: RwLock<HashMap<Arc<str>, Arc<Peer>>>,
    retiring: Mutex<JoinSet<()>>,
    returned: mpsc::UnboundedSender<EncodedRequest>,
    metrics: FleetMetrics,
}

impl Fleet {
    /// A fleet view with no members yet, and the stream of relayed requests whose peer
    /// could not be reached, for the worker to decide itself. That stream holds at most
    /// what the peers' sending queues held.
    pub fn new(
        config: MembershipConfig,
        registry: &Registry,
    ) -> (Arc<Fleet>, mpsc::UnboundedReceiver<EncodedRequest>) {
        let (returned, rx) = mpsc::unbounded_channel();
        let mut relayed = HashMap::new();
        for kind in RelayKind::ALL {
            for reason in Reason::ALL {
                relayed.insert(
                    (kind, reason.label()),
                    registry.counter(
                        telemetry::MEMBERSHIP_RELAYED_SPANS,
                        &[("kind", kind.as_str()), ("reason", reason.label())],
                    ),
                );
            }
        }
        let offers = |result| registry.counter(telemetry::MEMBERSHIP_OFFERS, &[("result", result)]);
        let evictions = registry.counter(telemetry::MEMBERSHIP_MARKER_EVICTIONS, &[]);
        // Least recently used first: moka's default would turn new markers away once full,
        // keeping the old ones (see `crate::cache`). moka here for its time to live.
        let markers = Cache::builder()
            .max_capacity(MAX_MARKERS)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .time_to_live(config.handover_window)
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.increment(1);
                }
            })
            .build_with_hasher(ahash::RandomState::new());
        let fleet = Arc::new(Fleet {
            me: config.advertise.as_str().into(),
            views: RwLock::new(Arc::new(Views {
                version: 0,
                current: Arc::new(Ring::new(config.ring, Vec::new())),
                previous: Vec::new(),
            })),
            leaving: AtomicBool::new(false),
            markers,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            peers: RwLock::new(HashMap::new()),
            retiring: Mutex::new(JoinSet::new()),
            returned,
            metrics: FleetMetrics {
                version: registry.gauge(telemetry::MEMBERSHIP_RING_VERSION, &[]),
                members: registry.gauge(telemetry::MEMBERSHIP_MEMBERS, &[]),
                changes: registry.counter(telemetry::MEMBERSHIP_RING_CHANGES, &[]),
                relayed,
                offers_taken: offers("taken"),
                offers_declined: offers("declined"),
                offers_redirected: offers("redirected"),
                holder_gone: registry.counter(telemetry::MEMBERSHIP_HOLDER_GONE_SPANS, &[]),
                untrusted: registry.counter(telemetry::MEMBERSHIP_UNTRUSTED_RELAYS, &[]),
            },
            registry: registry.clone(),
            config,
        });
        (fleet, rx)
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn window(&self) -> Duration {
        self.config.handover_window
    }

    /// Workers on the current ring (at least 1: this one).
    pub fn size(&self) -> usize {
        self.views().current.endpoints().len().max(1)
    }

    /// The current ring's version and its members.
    pub fn current(&self) -> (u64, Vec<String>) {
        let views = self.views();
        (views.version, views.current.endpoints().to_vec())
    }

    fn views(&self) -> Arc<Views> {
        self.views.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The lock stripe of `id`, held from [`Fleet::place`] until the spans are buffered.
    pub fn lock(&self, id: &TraceId) -> MutexGuard<'_, ()> {
        let h = u64::from_le_bytes(id[8..16].try_into().expect("8 bytes"))
            ^ u64::from_le_bytes(id[0..8].try_into().expect("8 bytes"));
        let i = (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % self.stripes.len();
        self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `relay` when it names this worker or a member of one of its rings; a request with
    /// marks from anyone else is a client's (counted): relays are never sent to an
    /// endpoint a request names.
    pub fn trust<'a>(&self, relay: Option<&'a Relay>, now: Instant) -> Option<&'a Relay> {
        let relay = relay?;
        let views = self.views();
        let known = *relay.from == *self.me
            || views.current.endpoints().contains(&relay.from)
            || self
                .live_previous(&views, now)
                .any(|r| r.endpoints().contains(&relay.from));
        if !known {
            self.metrics.untrusted.increment(1);
            return None;
        }
        Some(relay)
    }

    /// Whether any peer's sending queue is full: the receivers' signal to push back.
    pub fn is_full(&self) -> bool {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|p| p.is_full())
    }

    fn live_previous<'a>(
        &self,
        views: &'a Views,
        now: Instant,
    ) -> impl Iterator<Item = &'a Arc<Ring>> + 'a {
        let window = self.config.handover_window;
        views
            .previous
            .iter()
            .filter(move |(_, replaced)| now.saturating_duration_since(*replaced) < window)
            .map(|(ring, _)| ring)
    }

    /// Where the spans of trace `id` go; `holds` says whether this worker holds it. Call
    /// with the trace's stripe held (see the module comment for the rules).
    pub fn place(&self, id: &TraceId, holds: bool, relay: Option<&Relay>, now: Instant) -> Place {
        let key = u128::from_be_bytes(*id);
        // Where this worker handed the trace (or promised it), the sender included: a
        // sender that was promised the trace gets it back as final.
        let handed = || self.markers.get(&key).filter(|to| **to != *self.me);
        match relay.map(|r| (r.kind, r.from.as_str())) {
            Some((RelayKind::Final, _)) => Place::Here,
            Some((RelayKind::Offer, from)) => {
                if holds {
                    self.metrics.offers_taken.increment(1);
                    return Place::Here;
                }
                if let Some(to) = handed().filter(|to| **to != *from) {
                    self.metrics.offers_redirected.increment(1);
                    return self.to(&to, RelayKind::Final, Reason::Holder);
                }
                self.metrics.offers_declined.increment(1);
                let from: Arc<str> = from.into();
                self.markers.insert(key, from.clone());
                self.to(&from, RelayKind::Final, Reason::Declined)
            }
            // A client's request, or a forward from S (never forwarded again by the ring).
            forward => {
                if holds {
                    return Place::Here;
                }
                if let Some(to) = handed() {
                    return self.to(&to, RelayKind::Final, Reason::Holder);
                }
                let views = self.views();
                let except = forward.map(|(_, from)| from);
                let owner = views
                    .current
                    .route(id)
                    .map(|i| &views.current.endpoints()[i]);
                match owner {
                    Some(owner) if except.is_none() && **owner != *self.me => {
                        let owner: Arc<str> = owner.as_str().into();
                        self.markers.insert(key, owner.clone());
                        self.to(&owner, RelayKind::Forward, Reason::NotOwner)
                    }
                    _ => self.offer(&views, id, except, now),
                }
            }
        }
    }

    /// Offers the trace to its oldest previous owner within the window that is neither
    /// this worker nor `except`; here when there is none.
    fn offer(&self, views: &Views, id: &TraceId, except: Option<&str>, now: Instant) -> Place {
        let previous = self
            .live_previous(views, now)
            .filter_map(|ring| ring.route(id).map(|i| ring.endpoints()[i].as_str()))
            .find(|owner| *owner != &*self.me && Some(*owner) != except);
        match previous {
            Some(owner) => self.to(owner, RelayKind::Offer, Reason::PreviousOwner),
            None => Place::Here,
        }
    }

    fn to(&self, endpoint: &str, kind: RelayKind, reason: Reason) -> Place {
        match self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint)
        {
            Some(peer) => Place::Peer(peer.clone(), kind, reason),
            // No client could be built for it (logged when tried): decided here.
            None => Place::Here,
        }
    }

    /// Counts spans handed to a peer.
    pub fn relayed(&self, kind: RelayKind, reason: Reason, spans: u64) {
        if let Some(c) = self.metrics.relayed.get(&(kind, reason.label())) {
            c.increment(spans);
        }
    }

    /// Leaves the fleet: from now on this worker's own ring is the fleet without it, so it
    /// starts no trace, while it still takes the spans of traces it holds.
    pub fn leave(&self, now: Instant) {
        self.leaving.store(true, Ordering::SeqCst);
        let (_, members) = self.current();
        self.install(members, now);
    }

    /// Makes `members` the current ring (a new version when they differ), keeping the
    /// replaced ring for the window. A worker's first ring that lists it is taken as a
    /// scale-out: the fleet without it counts as the previous ring.
    fn install(&self, mut members: Vec<String>, now: Instant) {
        members.sort();
        members.dedup();
        if self.leaving.load(Ordering::SeqCst) {
            members.retain(|m| *m != *self.me);
        }
        let mut views = self.views.write().unwrap_or_else(|p| p.into_inner());
        if views.version > 0 && views.current.endpoints() == members.as_slice() {
            return;
        }
        let window = self.config.handover_window;
        let mut previous: Vec<(Arc<Ring>, Instant)> = views
            .previous
            .iter()
            .filter(|(_, replaced)| now.saturating_duration_since(*replaced) < window)
            .cloned()
            .collect();
        if views.version > 0 {
            previous.push((views.current.clone(), now));
        } else if members.len() > 1 && members.iter().any(|m| *m == *self.me) {
            let others = members
                .iter()
                .filter(|m| **m != *self.me)
                .cloned()
                .collect();
            previous.push((Arc::new(Ring::new(self.config.ring, others)), now));
        }
        if previous.len() > MAX_PREVIOUS {
            previous.drain(..previous.len() - MAX_PREVIOUS);
        }
        let next = Views {
            version: views.version + 1,
            current: Arc::new(Ring::new(self.config.ring, members)),
            previous,
        };
        tracing::info!(version = next.version, members = ?next.current.endpoints(), "membership changed");
        self.metrics.version.set(next.version as f64);
        self.metrics
            .members
            .set(next.current.endpoints().len() as f64);
        self.metrics.changes.increment(1);
        self.update_peers(&next);
        *views = Arc::new(next);
    }

    /// Keeps one peer per member of any ring in `views` other than this worker; peers on
    /// no ring any more finish what they have queued and go.
    fn update_peers(&self, views: &Views) {
        let wanted: Vec<&String> = std::iter::once(&views.current)
            .chain(views.previous.iter().map(|(r, _)| r))
            .flat_map(|r| r.endpoints())
            .filter(|e| ***e != *self.me)
            .collect();
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        for endpoint in &wanted {
            if !peers.contains_key(endpoint.as_str()) {
                if let Some(peer) = self.connect(endpoint) {
                    peers.insert(peer.endpoint.clone(), Arc::new(peer));
                }
            }
        }
        let gone: Vec<Arc<str>> = peers
            .keys()
            .filter(|k| !wanted.iter().any(|w| w.as_str() == &***k))
            .cloned()
            .collect();
        let mut retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
        for endpoint in gone {
            if let Some(peer) = peers.remove(&endpoint) {
                retiring.spawn(async move { peer.shutdown(Instant::now() + RETIRE_GRACE).await });
            }
        }
    }

    fn connect(&self, endpoint: &str) -> Option<Peer> {
        let mut sets = Vec::with_capacity(RelayKind::ALL.len());
        for kind in RelayKind::ALL {
            let mut otlp = self.config.otlp.clone();
            otlp.endpoint = crate::exporter::config::endpoint_with_port(endpoint);
            otlp.headers
                .insert(RELAY_HEADER.to_owned(), kind.as_str().to_owned());
            otlp.headers
                .insert(RELAY_FROM_HEADER.to_owned(), self.me.to_string());
            let returned = self.returned.clone();
            let gone = self.metrics.holder_gone.clone();
            let hooks = Hooks {
                observe: None,
                fallback: Some(Arc::new(move |request: EncodedRequest| {
                    let spans = request.spans;
                    returned.send(request).map_err(|e| e.0)?;
                    gone.increment(spans);
                    Ok(())
                })),
            };
            let name = format!("membership/{endpoint}/{}", kind.as_str());
            match ExporterSet::start_backend(&name, otlp, endpoint, hooks, &self.registry) {
                Ok(set) => sets.push((kind, set)),
                Err(e) => {
                    tracing::error!(endpoint, error = %e, "cannot create a client for this peer; its traces are decided here");
                    return None;
                }
            }
        }
        Some(Peer {
            endpoint: endpoint.into(),
            sets,
        })
    }

    /// Lets every peer's queue drain until `deadline`; what is left is counted as failed
    /// by its exporter.
    pub async fn shutdown(&self, deadline: Instant) {
        let peers: Vec<Arc<Peer>> = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for peer in peers {
            peer.shutdown(deadline).await;
        }
        let mut retiring =
            std::mem::take(&mut *self.retiring.lock().unwrap_or_else(|p| p.into_inner()));
        while retiring.join_next().await.is_some() {}
    }
}

impl Follow for Fleet {
    fn apply(self: &Arc<Self>, resolution: Resolution) {
        if let Resolution::Members(members) = resolution {
            self.install(members, Instant::now());
        }
    }
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
