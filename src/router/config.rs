//! The router's config: receivers, admin and shutdown as in the worker, and one or more
//! `loadbalancing[/name]` exporters with the collector's keys (routing key, protocol
//! template, resolver) plus tailgate's ring choice.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{read_yaml, ConfigError, Errors, HOUR, MS};
use crate::exporter::config::{ExporterConfig, OtlpExporterConfig};
use crate::lifecycle::ShutdownConfig;
use crate::memory_limiter::MemoryLimiterConfig;
use crate::receiver::config::ReceiversConfig;
use crate::router::ring::RingKind;
use crate::telemetry::AdminConfig;

/// A validated router config.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub receivers: ReceiversConfig,
    /// Every route gets every span.
    pub routes: Vec<RouteConfig>,
    pub admin: AdminConfig,
    pub shutdown: ShutdownConfig,
    pub memory_limiter: Option<MemoryLimiterConfig>,
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RingChoice {
    #[default]
    Collector,
    Balanced,
}

#[derive(Debug, Clone)]
pub enum Resolver {
    Static(Vec<String>),
    Dns(DnsConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    pub hostname: String,
    /// Appended to every address; without it the ring holds bare addresses and the
    /// router dials port 4317, as the collector does.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// `ip:port` of the DNS server to ask instead of the system's (tailgate's addition).
    #[serde(default)]
    pub nameserver: Option<String>,
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn two() -> u8 {
    2
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
    #[serde(default = "two")]
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResolver {
    #[serde(default, rename = "static")]
    static_: Option<StaticConfig>,
    #[serde(default)]
    dns: Option<DnsConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticConfig {
    hostnames: Vec<String>,
}

/// Parses and validates router config text.
pub fn parse_router(text: &str) -> Result<RouterConfig, ConfigError> {
    let value = read_yaml(text)?;
    let mut errors = Errors::default();
    let Some(raw) = errors.parse::<RawRouterConfig>("", value) else {
        return errors.finish(None);
    };
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
    let ring = match (raw.ring, raw.ring_version) {
        (RingChoice::Balanced, _) => RingKind::Balanced,
        (RingChoice::Collector, v @ (1 | 2)) => RingKind::Collector(v),
        (RingChoice::Collector, v) => {
            errors.push(
                format!("{path}.ring_version"),
                format!("{v} is not a verified ring version; use 1 or 2"),
            );
            return None;
        }
    };
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
    // The template is an otlp exporter config whose endpoint each backend replaces.
    let mut template = match raw.protocol.otlp {
        Some(serde_yaml::Value::Mapping(m)) => m,
        None | Some(serde_yaml::Value::Null) => Default::default(),
        Some(_) => {
            errors.push(format!("{path}.protocol.otlp"), "must be a mapping");
            return None;
        }
    };
    if template.contains_key("endpoint") {
        errors.push(
            format!("{path}.protocol.otlp.endpoint"),
            "is set per backend by the resolver",
        );
    }
    template.insert("endpoint".into(), "placeholder:4317".into());
    let otlp_path = format!("{path}.protocol.otlp");
    let otlp: OtlpExporterConfig =
        errors.parse(&otlp_path, serde_yaml::Value::Mapping(template))?;
    crate::exporter::config::validate_exporter(
        &ExporterConfig::Otlp(otlp.clone()),
        &otlp_path,
        errors,
    );
    let resolver = match (raw.resolver.static_, raw.resolver.dns) {
        (Some(s), None) => {
            if s.hostnames.is_empty() {
                errors.push(
                    format!("{path}.resolver.static.hostnames"),
                    "needs at least one hostname",
                );
            }
            Resolver::Static(s.hostnames)
        }
        (None, Some(d)) => {
            if d.hostname.is_empty() {
                errors.push(format!("{path}.resolver.dns.hostname"), "is required");
            }
            let dns = format!("{path}.resolver.dns");
            errors.within_duration(
                format!("{dns}.interval"),
                d.interval,
                Duration::from_millis(100),
                HOUR,
            );
            errors.within_duration(format!("{dns}.timeout"), d.timeout, MS, HOUR);
            if let Some(ns) = &d.nameserver {
                if ns.parse::<std::net::SocketAddr>().is_err() {
                    errors.push(
                        format!("{path}.resolver.dns.nameserver"),
                        format!("{ns:?} is not ip:port"),
                    );
                }
            }
            Resolver::Dns(d)
        }
        (None, None) => {
            errors.push(format!("{path}.resolver"), "set static or dns");
            return None;
        }
        (Some(_), Some(_)) => {
            errors.push(format!("{path}.resolver"), "set only one of static and dns");
            return None;
        }
    };
    Some(RouteConfig {
        name: id.to_owned(),
        routing_key: raw.routing_key,
        routing_attributes: raw.routing_attributes,
        ring,
        otlp,
        resolver,
    })
}

/// The address a backend is dialled at: the ring string, with `:4317` when it has no port
/// (the collector's `endpointWithPort`; the ring keeps the string as resolved).
pub fn endpoint_with_port(endpoint: &str) -> String {
    if endpoint.contains(':') {
        endpoint.to_owned()
    } else {
        format!("{endpoint}:4317")
    }
}
