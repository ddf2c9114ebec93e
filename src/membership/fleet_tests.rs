//! The handover rules and their races, with paused time: fleets of three workers exchange
//! relays in-process (no request is sent), in every order the network could deliver them.

use std::collections::{HashSet, VecDeque};

use super::*;
use crate::config::Errors;
use crate::membership::config::parse_membership;

const A: &str = "127.0.0.1:1";
const B: &str = "127.0.0.2:1";
const C: &str = "127.0.0.3:1";
const WINDOW: Duration = Duration::from_secs(40);

fn fleet(me: &str) -> Arc<Fleet> {
    let yaml = format!(
        "{{advertise: '{me}', resolver: {{static: {{hostnames: ['{A}']}}}}, handover_window: 40s, protocol: {{otlp: {{tls: {{insecure: true}}}}}}}}"
    );
    let mut errors = Errors::default();
    let config = parse_membership(
        serde_yaml::from_str(&yaml).unwrap(),
        Duration::from_secs(30),
        Duration::from_secs(60),
        &mut errors,
    )
    .unwrap();
    errors.check().unwrap();
    Fleet::new(config, &Registry::new()).0
}

fn members(list: &[&str]) -> Resolution {
    Resolution::Members(list.iter().map(|s| s.to_string()).collect())
}

fn owner(list: &[&str], id: &TraceId) -> String {
    let ring = Ring::new(
        crate::membership::ring::RingKind::Collector(2),
        list.iter().map(|s| s.to_string()).collect(),
    );
    ring.endpoints()[ring.route(id).unwrap()].clone()
}

/// A trace id `pick` accepts, owned on `before` and on `after` as it asks.
fn trace(pick: impl Fn(&TraceId) -> bool) -> TraceId {
    (1u64..)
        .map(|n| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
            id[8..].copy_from_slice(&n.to_be_bytes());
            id
        })
        .find(|id| pick(id))
        .unwrap()
}

fn relay(kind: RelayKind, from: &str) -> Relay {
    Relay {
        kind,
        from: from.to_owned(),
    }
}

fn sent(place: Place) -> Option<(String, RelayKind, Reason)> {
    match place {
        Place::Here => None,
        Place::Peer(peer, kind, reason) => Some((peer.endpoint.to_string(), kind, reason)),
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_span_another_worker_owns_is_forwarded_and_later_ones_follow_it() {
    let a = fleet(A);
    a.apply(members(&[A, B]));
    let id = trace(|id| owner(&[A, B], id) == B);
    let now = Instant::now();
    assert_eq!(
        sent(a.place(&id, false, None, now)),
        Some((B.into(), RelayKind::Forward, Reason::NotOwner))
    );
    // The marker sends the trace's later spans on as final: B took it as owner.
    assert_eq!(
        sent(a.place(&id, false, None, now)),
        Some((B.into(), RelayKind::Final, Reason::Holder))
    );
    // A trace this worker holds stays, whoever owns it.
    let held = trace(|id| owner(&[A, B], id) == B && *id != [0; 16]);
    assert!(sent(a.place(&held, true, None, now)).is_none());
}

#[tokio::test(start_paused = true)]
async fn within_the_window_a_new_owner_offers_a_trace_to_its_previous_owner() {
    let c = fleet(C);
    c.apply(members(&[A, B]));
    c.apply(members(&[A, B, C]));
    assert_eq!(c.current().0, 2);
    let id = trace(|id| owner(&[A, B, C], id) == C && owner(&[A, B], id) == A);
    assert_eq!(
        sent(c.place(&id, false, None, Instant::now())),
        Some((A.into(), RelayKind::Offer, Reason::PreviousOwner))
    );
    // A forward from the previous owner itself is not offered back to it.
    assert!(sent(c.place(
        &id,
        false,
        Some(&relay(RelayKind::Forward, A)),
        Instant::now()
    ))
    .is_none());
    // After the window the owner starts the trace itself.
    tokio::time::advance(WINDOW).await;
    assert!(sent(c.place(&id, false, None, Instant::now())).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_worker_whose_first_ring_lists_it_takes_the_fleet_without_it_as_previous() {
    let c = fleet(C);
    c.apply(members(&[A, B, C]));
    let id = trace(|id| owner(&[A, B, C], id) == C && owner(&[A, B], id) == B);
    assert_eq!(
        sent(c.place(&id, false, None, Instant::now())),
        Some((B.into(), RelayKind::Offer, Reason::PreviousOwner))
    );
}

#[tokio::test(start_paused = true)]
async fn an_offer_is_taken_when_held_else_declined_with_a_promise_or_redirected() {
    let a = fleet(A);
    a.apply(members(&[A, B]));
    a.apply(members(&[A, B, C]));
    let now = Instant::now();
    let offer = relay(RelayKind::Offer, C);
    let id = trace(|id| owner(&[A, B], id) == A);
    assert!(
        sent(a.place(&id, true, Some(&offer), now)).is_none(),
        "taken"
    );
    assert_eq!(
        sent(a.place(&id, false, Some(&offer), now)),
        Some((C.into(), RelayKind::Final, Reason::Declined))
    );
    // The promise: A owns the trace on its ring, yet its next span goes to C.
    assert_eq!(
        sent(a.place(&id, false, None, now)),
        Some((C.into(), RelayKind::Final, Reason::Holder))
    );
    // An offer from another worker for a trace handed to C goes to C.
    assert_eq!(
        sent(a.place(&id, false, Some(&relay(RelayKind::Offer, B)), now)),
        Some((C.into(), RelayKind::Final, Reason::Holder))
    );
    // A final relay is taken, whatever the markers say.
    assert!(sent(a.place(&id, false, Some(&relay(RelayKind::Final, B)), now)).is_none());
}

#[tokio::test(start_paused = true)]
async fn relay_marks_from_outside_the_fleet_are_a_clients() {
    let a = fleet(A);
    a.apply(members(&[A, B]));
    let now = Instant::now();
    let forged = relay(RelayKind::Offer, "10.9.9.9:4317");
    assert!(a.trust(Some(&forged), now).is_none());
    let peer = relay(RelayKind::Offer, B);
    assert_eq!(a.trust(Some(&peer), now), Some(&peer));
    // A member that left stays trusted for the window, then not.
    a.apply(members(&[A]));
    assert_eq!(a.trust(Some(&peer), now), Some(&peer));
    tokio::time::advance(WINDOW).await;
    assert!(a.trust(Some(&peer), Instant::now()).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_leaving_worker_starts_nothing_and_keeps_what_it_holds() {
    let a = fleet(A);
    a.apply(members(&[A, B]));
    a.leave(Instant::now());
    // The resolver still lists it: its own ring does not.
    a.apply(members(&[A, B]));
    assert_eq!(a.current().1, vec![B.to_string()]);
    let id = trace(|id| owner(&[A, B], id) == A);
    assert!(sent(a.place(&id, true, None, Instant::now())).is_none());
    assert_eq!(
        sent(a.place(&id, false, None, Instant::now())),
        Some((B.into(), RelayKind::Forward, Reason::NotOwner))
    );
}

/// Workers that hold traces and relay to each other as `place` says; messages are
/// delivered in the order a test chooses.
struct Sim {
    fleets: Vec<Arc<Fleet>>,
    held: Vec<HashSet<TraceId>>,
    in_flight: VecDeque<(usize, Relay)>,
}

impl Sim {
    fn new(fleets: Vec<Arc<Fleet>>) -> Sim {
        let held = fleets.iter().map(|_| HashSet::new()).collect();
        Sim {
            fleets,
            held,
            in_flight: VecDeque::new(),
        }
    }

    fn index(&self, endpoint: &str) -> usize {
        self.fleets.iter().position(|f| f.me() == endpoint).unwrap()
    }

    /// Spans of `id` arrive at worker `at`, from a client or relayed.
    fn arrive(&mut self, at: usize, id: &TraceId, relay: Option<Relay>) {
        let fleet = &self.fleets[at];
        let holds = self.held[at].contains(id);
        match fleet.place(id, holds, relay.as_ref(), Instant::now()) {
            Place::Here => {
                self.held[at].insert(*id);
            }
            Place::Peer(peer, kind, _) => {
                let to = self.index(&peer.endpoint);
                let from = fleet.me().to_owned();
                self.in_flight.push_back((to, Relay { kind, from }));
            }
        }
    }

    /// Delivers the oldest relay in flight.
    fn deliver(&mut self, id: &TraceId) -> bool {
        match self.in_flight.pop_front() {
            Some((to, relay)) => {
                self.arrive(to, id, Some(relay));
                true
            }
            None => false,
        }
    }

    fn holders(&self, id: &TraceId) -> Vec<&str> {
        self.held
            .iter()
            .zip(&self.fleets)
            .filter(|(h, _)| h.contains(id))
            .map(|(_, f)| f.me())
            .collect()
    }
}

/// A scale-out seen by the new owner C before the previous owner A: first spans of one
/// trace reach both (from routers with either view) in every order of arrivals and
/// deliveries, and end on one worker.
#[tokio::test(start_paused = true)]
async fn concurrent_first_spans_at_two_workers_end_in_one_place() {
    let id_of = |_: ()| trace(|id| owner(&[A, B, C], id) == C && owner(&[A, B], id) == A);
    // Each schedule: 'a' a client span at A, 'c' one at C, 'd' one relay delivered.
    let schedules = [
        "acdddd", "cadddd", "cdaddd", "cddadd", "cdddad", "caddcddd", "cdcdaddd",
    ];
    for schedule in schedules {
        let a = fleet(A);
        a.apply(members(&[A, B]));
        let c = fleet(C);
        c.apply(members(&[A, B]));
        c.apply(members(&[A, B, C]));
        let b = fleet(B);
        b.apply(members(&[A, B, C]));
        let id = id_of(());
        let mut sim = Sim::new(vec![a, b, c]);
        for step in schedule.chars() {
            match step {
                'a' => sim.arrive(0, &id, None),
                'c' => sim.arrive(2, &id, None),
                _ => {
                    sim.deliver(&id);
                }
            }
        }
        while sim.deliver(&id) {}
        assert_eq!(
            sim.holders(&id).len(),
            1,
            "schedule {schedule}: {:?}",
            sim.holders(&id)
        );
    }
}

/// Scale-in: A leaves; B owns A's traces on the new ring. Spans keep reaching A from a
/// router that has not seen the change and reach B from one that has.
#[tokio::test(start_paused = true)]
async fn a_leaving_workers_traces_stay_with_it() {
    let id_of = |_: ()| trace(|id| owner(&[A, B], id) == A && owner(&[B], id) == B);
    for schedule in ["abdddd", "badddd", "bdaddd", "bddadd"] {
        let a = fleet(A);
        a.apply(members(&[A, B]));
        let b = fleet(B);
        b.apply(members(&[A, B]));
        // Both have been members for longer than a window when the trace begins at A.
        tokio::time::advance(WINDOW).await;
        let id = id_of(());
        let mut sim = Sim::new(vec![a.clone(), b.clone()]);
        sim.arrive(0, &id, None);
        assert_eq!(sim.holders(&id), vec![A]);
        a.leave(Instant::now());
        b.apply(members(&[B]));
        for step in schedule.chars() {
            match step {
                'a' => sim.arrive(0, &id, None),
                'b' => sim.arrive(1, &id, None),
                _ => {
                    sim.deliver(&id);
                }
            }
        }
        while sim.deliver(&id) {}
        assert_eq!(sim.holders(&id), vec![A], "schedule {schedule}");
    }
}
