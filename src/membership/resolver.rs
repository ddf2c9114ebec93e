//! Resolvers: where the fleet's member list comes from, with their config (the
//! collector's `loadbalancing` resolver keys), as a stream of [`Resolution`]s a [`Follow`]er
//! applies (a router's route, a worker's membership). `static` yields its list once; `dns`
//! looks the hostname up every `interval` (A and AAAA, through hickory) and yields each
//! answer, or a failure when a lookup fails, times out or returns nothing (followers keep
//! their last good list); `k8s` follows a Service's EndpointSlices (see [`super::k8s`]).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::k8s::{self, Api, K8sConfig};
use crate::config::{Errors, HOUR, MS};
use crate::supervisor::{Group, Supervisor};

/// Where members come from.
#[derive(Debug, Clone)]
pub enum Resolver {
    Static(Vec<String>),
    Dns(DnsConfig),
    K8s(K8sConfig),
}

impl Resolver {
    /// The `resolver` label of the collector's metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Resolver::Static(_) => "static",
            Resolver::Dns(_) => "dns",
            Resolver::K8s(_) => "k8s",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    pub hostname: String,
    /// Appended to every address; without it members are bare addresses, dialled at port
    /// 4317, as the collector does.
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

/// The `resolver` mapping as written: exactly one of `static`, `dns` and `k8s`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResolver {
    #[serde(default, rename = "static")]
    static_: Option<StaticConfig>,
    #[serde(default)]
    dns: Option<DnsConfig>,
    #[serde(default)]
    k8s: Option<K8sConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticConfig {
    hostnames: Vec<String>,
}

impl RawResolver {
    /// Validates the section at `path`, recording every error.
    pub(crate) fn validate(self, path: &str, errors: &mut Errors) -> Option<Resolver> {
        let set = [
            self.static_.is_some(),
            self.dns.is_some(),
            self.k8s.is_some(),
        ];
        match set.iter().filter(|s| **s).count() {
            0 => {
                errors.push(path, "set static, dns or k8s");
                return None;
            }
            1 => {}
            _ => {
                errors.push(path, "set only one of static, dns and k8s");
                return None;
            }
        }
        if let Some(k8s) = self.k8s {
            k8s.validate(&format!("{path}.k8s"), errors);
            return Some(Resolver::K8s(k8s));
        }
        match (self.static_, self.dns) {
            (Some(s), None) => {
                if s.hostnames.is_empty() {
                    errors.push(
                        format!("{path}.static.hostnames"),
                        "needs at least one hostname",
                    );
                }
                Some(Resolver::Static(s.hostnames))
            }
            (None, Some(d)) => {
                let dns = format!("{path}.dns");
                if d.hostname.is_empty() {
                    errors.push(format!("{dns}.hostname"), "is required");
                }
                errors.within_duration(
                    format!("{dns}.interval"),
                    d.interval,
                    Duration::from_millis(100),
                    HOUR,
                );
                errors.within_duration(format!("{dns}.timeout"), d.timeout, MS, HOUR);
                if let Some(ns) = &d.nameserver {
                    if ns.parse::<SocketAddr>().is_err() {
                        errors.push(
                            format!("{dns}.nameserver"),
                            format!("{ns:?} is not ip:port"),
                        );
                    }
                }
                Some(Resolver::Dns(d))
            }
            _ => None,
        }
    }
}

/// What follows a resolver's answers.
pub(crate) trait Follow: Send + Sync + 'static {
    fn apply(self: &Arc<Self>, resolution: Resolution);
}

/// One answer of a resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// The backends now, in any order.
    Members(Vec<String>),
    /// The lookup failed, timed out or found nothing; keep the current backends.
    Failed,
}

/// How many answers may wait for the route; a resolver whose route lags waits.
const UPDATES: usize = 16;

/// Resolves once now (so a follower starts with its members), then keeps `follower`
/// current: a DNS resolver polls in `group` and the follower applies its answers there too.
pub(crate) async fn start<F: Follow>(
    resolver: &Resolver,
    follower: Arc<F>,
    supervisor: &mut Supervisor,
    group: Group,
) {
    match resolver.clone() {
        Resolver::Static(hostnames) => follower.apply(Resolution::Members(hostnames)),
        Resolver::Dns(dns) => match build(&dns) {
            Ok(resolver) => {
                follower.apply(resolve_once(&resolver, &dns).await);
                spawn_stream(supervisor, group, "dns resolver", follower, |tx, stop| {
                    poll(resolver, dns, tx, stop)
                });
            }
            Err(e) => {
                tracing::error!(hostname = %dns.hostname, error = %e, "cannot build the DNS resolver");
                follower.apply(Resolution::Failed);
            }
        },
        Resolver::K8s(config) => match Api::new(&config) {
            Ok(api) => {
                let (first, listed) = k8s::resolve_once(&api).await;
                follower.apply(first);
                spawn_stream(supervisor, group, "k8s resolver", follower, |tx, stop| {
                    k8s::watch(api, listed, tx, stop)
                });
            }
            Err(e) => {
                tracing::error!(service = %config.service, error = %e, "cannot reach the Kubernetes API");
                follower.apply(Resolution::Failed);
            }
        },
    }
}

/// Runs a resolver task sending its answers (`resolve`, given the channel and the group's
/// stop) and the task that makes `follower` apply them, both in `group`.
fn spawn_stream<F, T>(
    supervisor: &mut Supervisor,
    group: Group,
    name: &'static str,
    follower: Arc<F>,
    resolve: impl FnOnce(mpsc::Sender<Resolution>, CancellationToken) -> T,
) where
    F: Follow,
    T: std::future::Future<Output = Result<(), Infallible>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(UPDATES);
    let stop = supervisor.token(group);
    supervisor.spawn(group, name, resolve(tx, stop.clone()));
    supervisor.spawn(group, "membership", follow(follower, rx, stop));
}

/// A resolver's stream of answers ended while its follower still followed it.
#[derive(Debug, thiserror::Error)]
#[error("the resolver stopped sending membership updates")]
pub(crate) struct ResolverGone;

/// Applies a resolver's answers until `stop`; a resolver that stops answering (its channel
/// closed) ends this task, which the supervisor reports.
pub(crate) async fn follow<F: Follow>(
    follower: Arc<F>,
    mut updates: mpsc::Receiver<Resolution>,
    stop: CancellationToken,
) -> Result<(), ResolverGone> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            update = updates.recv() => match update {
                Some(resolution) => follower.apply(resolution),
                None => return Err(ResolverGone),
            },
        }
    }
}

/// Why a DNS resolver could not be built.
#[derive(Debug, thiserror::Error)]
enum BuildError {
    #[error("nameserver {0:?}: {1}")]
    Nameserver(String, std::net::AddrParseError),
    #[error(transparent)]
    Hickory(#[from] hickory_resolver::net::NetError),
}

fn build(dns: &DnsConfig) -> Result<TokioResolver, BuildError> {
    let mut builder = match &dns.nameserver {
        Some(ns) => {
            let addr: SocketAddr = ns
                .parse()
                .map_err(|e| BuildError::Nameserver(ns.clone(), e))?;
            let mut server = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut server.connections {
                c.port = addr.port();
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()?,
    };
    let opts = builder.options_mut();
    // Every poll asks the server: the interval is the freshness the user chose.
    opts.cache_size = 0;
    opts.timeout = dns.timeout;
    opts.attempts = 1;
    opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
    Ok(builder.build()?)
}

/// The backend strings for `ips`: `a.b.c.d` or `[v6]`, with `:port` when configured,
/// sorted, as the collector's DNS resolver makes them.
fn endpoints(ips: impl Iterator<Item = IpAddr>, port: Option<u16>) -> Vec<String> {
    let mut out: Vec<String> = ips
        .map(|ip| {
            let host = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            match port {
                Some(p) => format!("{host}:{p}"),
                None => host,
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

async fn resolve_once(resolver: &TokioResolver, dns: &DnsConfig) -> Resolution {
    let lookup = tokio::time::timeout(
        dns.timeout + Duration::from_millis(100),
        resolver.lookup_ip(dns.hostname.as_str()),
    )
    .await;
    match lookup {
        Ok(Ok(ips)) => {
            let list = endpoints(ips.iter(), dns.port);
            if list.is_empty() {
                tracing::warn!(hostname = %dns.hostname, "DNS returned no address; keeping the current backends");
                Resolution::Failed
            } else {
                Resolution::Members(list)
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(hostname = %dns.hostname, error = %e, "DNS lookup failed; keeping the current backends");
            Resolution::Failed
        }
        Err(_) => {
            tracing::warn!(hostname = %dns.hostname, "DNS lookup timed out; keeping the current backends");
            Resolution::Failed
        }
    }
}

/// Looks `dns` up every `interval` and sends each answer, until `stop`.
async fn poll(
    resolver: TokioResolver,
    dns: DnsConfig,
    updates: mpsc::Sender<Resolution>,
    stop: CancellationToken,
) -> Result<(), Infallible> {
    let mut tick = tokio::time::interval(dns.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let resolution = resolve_once(&resolver, &dns).await;
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = updates.send(resolution) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::endpoints;

    #[test]
    fn endpoints_are_formatted_and_sorted_as_the_collector_does() {
        let ips = ["10.0.0.2", "10.0.0.1", "fe80::1", "10.0.0.1"].map(|s| s.parse().unwrap());
        assert_eq!(
            endpoints(ips.into_iter(), Some(4317)),
            vec!["10.0.0.1:4317", "10.0.0.2:4317", "[fe80::1]:4317"]
        );
        assert_eq!(
            endpoints(ips.into_iter(), None),
            vec!["10.0.0.1", "10.0.0.2", "[fe80::1]"]
        );
    }
}
