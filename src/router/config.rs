//! The router's config: receivers, admin and shutdown as in the worker, and one or more
//! `loadbalancing[/name]` exporters with the collector's keys (routing key, protocol
//! template, resolver) plus tailgate's ring choice. A collector-shaped file is rewritten
//! into those sections first (`config::collector`).

use serde::Deserialize;
use std::collections::BTreeMap;

use crate::config::collector::{read_for, Summary, Tier};
use crate::config::{read_yaml, ConfigError, Errors};
use crate::exporter::config::{parse_otlp_template, OtlpExporterConfig};
use crate::lifecycle::ShutdownConfig;
use crate::membership::resolver::{RawResolver, Resolver};
use crate::membership::ring::{default_ring_version, ring_kind, RingChoice, RingKind};
use crate::memory_limiter::MemoryLimiterConfig;
use crate::receiver::config::ReceiversConfig;
use crate::telemetry::{take_health_check, AdminConfig, HealthCheckConfig};

/// A validated router config.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub receivers: ReceiversConfig,
    /// Every route gets every span.
    pub routes: Vec<RouteConfig>,
    pub admin: AdminConfig,
    pub shutdown: ShutdownConfig,
    pub memory_limiter: Option<MemoryLimiterConfig>,
    /// The `health_check` extension's listener, when configured.
    pub health_check: Option<HealthCheckConfig>,
    /// What the file configured, as said at start-up.
    pub summary: Summary,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The exporter id, `loadbalancing` or `loadbalancing/<name>`.
    pub name: String,
    pub routing_key: RoutingKey,
    pub routing_attributes: Vec<String>,
    pub ring: RingKind,
    /// The OTLP exporter settings every backend gets (its endpoint is replaced).
    pub otlp: OtlpExporterConfig,
    pub resolver: Resolver,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum RoutingKey {
    #[default]
    #[serde(rename = "traceID")]
    TraceId,
    #[serde(rename = "service")]
    Service,
    #[serde(rename = "attributes")]
    Attributes,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouterConfig {
    receivers: Option<serde_yaml::Value>,
    #[serde(default)]
    exporters: BTreeMap<String, serde_yaml::Value>,
    admin: Option<serde_yaml::Value>,
    shutdown: Option<serde_yaml::Value>,
    memory_limiter: Option<serde_yaml::Value>,
    #[serde(default)]
    extensions: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoadBalancing {
    #[serde(default)]
    routing_key: RoutingKey,
    #[serde(default)]
    routing_attributes: Vec<String>,
    #[serde(default)]
    ring: RingChoice,
    #[serde(default = "default_ring_version")]
    ring_version: u8,
    #[serde(default)]
    protocol: RawProtocol,
    resolver: RawResolver,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtocol {
    #[serde(default)]
    otlp: Option<serde_yaml::Value>,
}

/// Parses and validates router config text, in tailgate's shape or the collector's.
pub fn parse_router(text: &str) -> Result<RouterConfig, ConfigError> {
    router_from_yaml(read_yaml(text)?)
}

/// Validates an already expanded and parsed router config.
pub fn router_from_yaml(value: serde_yaml::Value) -> Result<RouterConfig, ConfigError> {
    let (config, summary) = read_for(value, Tier::Router, router_sections)?;
    Ok(RouterConfig { summary, ..config })
}

fn router_sections(value: serde_yaml::Value) -> Result<RouterConfig, ConfigError> {
    let mut errors = Errors::default();
    let Some(mut raw) = errors.parse::<RawRouterConfig>("", value) else {
        return errors.finish(None);
    };
    let health_check = take_health_check(&mut raw.extensions, &mut errors);
    let mut receivers: Option<ReceiversConfig> = errors.parse_section("receivers", raw.receivers);
    if let Some(r) = &mut receivers {
        crate::receiver::config::validate_receivers(r, &raw.extensions, &mut errors);
    }
    if raw.exporters.is_empty() {
        errors.push(
            "exporters",
            "at least one loadbalancing exporter is required",
        );
    }
    let mut routes = Vec::new();
    for (id, value) in raw.exporters {
        let path = format!("exporters.{id}");
        let kind = id.split_once('/').map_or(id.as_str(), |(k, _)| k);
        if kind != "loadbalancing" && kind != "load_balancing" {
            errors.push(
                &path,
                "a router exports only through loadbalancing exporters",
            );
            continue;
        }
        if let Some(route) = parse_route(&id, value, &path, &mut errors) {
            routes.push(route);
        }
    }
    let admin: Option<AdminConfig> = errors.section(raw.admin);
    let shutdown: Option<ShutdownConfig> = errors.section(raw.shutdown);
    let memory_limiter =
        crate::memory_limiter::parse_memory_limiter(raw.memory_limiter, &mut errors);
    let config = || {
        Some(RouterConfig {
            receivers: receivers?,
            routes,
            admin: admin?,
            shutdown: shutdown?,
            memory_limiter,
            health_check,
            summary: Summary::default(),
        })
    };
    errors.finish(config())
}

fn parse_route(
    id: &str,
    value: serde_yaml::Value,
    path: &str,
    errors: &mut Errors,
) -> Option<RouteConfig> {
    let raw: RawLoadBalancing = errors.parse(path, value)?;
    let ring = ring_kind(raw.ring, raw.ring_version, path, errors)?;
    match (raw.routing_key, raw.routing_attributes.is_empty()) {
        (RoutingKey::Attributes, true) => {
            errors.push(
                format!("{path}.routing_attributes"),
                "required with routing_key: attributes",
            );
        }
        (RoutingKey::TraceId | RoutingKey::Service, false) => {
            errors.push(
                format!("{path}.routing_attributes"),
                "only allowed with routing_key: attributes",
            );
        }
        _ => {}
    }
    let otlp = parse_otlp_template(
        raw.protocol.otlp,
        &format!("{path}.protocol.otlp"),
        true,
        errors,
    )?;
    let resolver = raw.resolver.validate(&format!("{path}.resolver"), errors)?;
    Some(RouteConfig {
        name: id.to_owned(),
        routing_key: raw.routing_key,
        routing_attributes: raw.routing_attributes,
        ring,
        otlp,
        resolver,
    })
}
