//! The worker's `membership` section: its own endpoint as the resolver lists it, the
//! resolver (the `loadbalancing` exporter's keys), the ring the routers use, the handover
//! window, and how to reach peers (`protocol.otlp`, as a `loadbalancing` exporter's).

use std::time::Duration;

use serde::Deserialize;

use super::resolver::{RawResolver, Resolver};
use super::ring::{ring_kind, RingChoice, RingKind};
use crate::config::{check_endpoint, Errors, DAY, MS};
use crate::exporter::config::{parse_otlp_template, OtlpExporterConfig};

/// How much longer than `decision_wait` the default window lasts: the time late spans and
/// lagging views get to find the trace's holder.
pub const LATE_SPAN_ALLOWANCE: Duration = Duration::from_secs(10);

/// A validated `membership` section.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// This worker's endpoint exactly as the resolver lists it.
    pub advertise: String,
    pub resolver: Resolver,
    pub ring: RingKind,
    /// How long after a membership change previous owners are consulted.
    pub handover_window: Duration,
    /// The exporter settings every peer gets (its endpoint is replaced).
    pub otlp: OtlpExporterConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMembership {
    advertise: String,
    resolver: RawResolver,
    #[serde(default)]
    ring: RingChoice,
    #[serde(default = "super::ring::default_ring_version")]
    ring_version: u8,
    #[serde(default, with = "humantime_serde")]
    handover_window: Option<Duration>,
    #[serde(default)]
    protocol: RawProtocol,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtocol {
    #[serde(default)]
    otlp: Option<serde_yaml::Value>,
}

/// Peers that cannot be reached give up after this long unless `retry_on_failure` says
/// otherwise: the spans are then decided here (counted), not held in a queue for minutes.
const PEER_RETRY_ELAPSED: &str = "10s";

/// Parses the section; the window defaults to `decision_wait` plus
/// [`LATE_SPAN_ALLOWANCE`] and may not be shorter than `decision_wait`, nor longer than
/// the shutdown `grace_period` a leaving worker has.
pub fn parse_membership(
    value: serde_yaml::Value,
    decision_wait: Duration,
    grace_period: Duration,
    errors: &mut Errors,
) -> Option<MembershipConfig> {
    let raw: RawMembership = errors.parse("membership", value)?;
    check_endpoint(&raw.advertise, "membership.advertise", errors);
    let resolver = raw.resolver.validate("membership.resolver", errors)?;
    let ring = ring_kind(raw.ring, raw.ring_version, "membership", errors)?;
    let window = raw
        .handover_window
        .unwrap_or(decision_wait + LATE_SPAN_ALLOWANCE);
    if window < decision_wait {
        errors.push(
            "membership.handover_window",
            format!("must be at least decision_wait ({decision_wait:?})"),
        );
    }
    errors.within_duration("membership.handover_window", window, MS, DAY);
    if window > grace_period {
        errors.push(
            "membership.handover_window",
            format!(
                "a leaving worker stays for the window: shutdown.grace_period ({grace_period:?}) must be at least {window:?}"
            ),
        );
    }
    let mut otlp = match raw.protocol.otlp {
        None | Some(serde_yaml::Value::Null) => {
            Some(serde_yaml::Value::Mapping(Default::default()))
        }
        other => other,
    };
    if let Some(serde_yaml::Value::Mapping(m)) = &mut otlp {
        if !m.contains_key("retry_on_failure") {
            m.insert(
                "retry_on_failure".into(),
                serde_yaml::from_str(&format!("{{max_elapsed_time: {PEER_RETRY_ELAPSED}}}"))
                    .ok()?,
            );
        }
    }
    let otlp = parse_otlp_template(otlp, "membership.protocol.otlp", false, errors)?;
    Some(MembershipConfig {
        advertise: raw.advertise,
        resolver,
        ring,
        handover_window: window,
        otlp,
    })
}
