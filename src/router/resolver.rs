//! Resolvers: where a route's backend list comes from, as a stream of [`Resolution`]s the
//! route follows ([`Route::follow`]). `static` yields its list once; `dns` looks the
//! hostname up every `interval` (A and AAAA, through hickory) and yields each answer, or a
//! failure when a lookup fails, times out or returns nothing (the route keeps its last good
//! list).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::config::{DnsConfig, Resolver};
use super::route::Route;
use crate::supervisor::{Group, Supervisor};

/// One answer of a resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Resolution {
    /// The backends now, in any order.
    Members(Vec<String>),
    /// The lookup failed, timed out or found nothing; keep the current backends.
    Failed,
}

/// How many answers may wait for the route; a resolver whose route lags waits.
const UPDATES: usize = 16;

/// Resolves `route` once now (so a router starts with its ring), then keeps it current:
/// a DNS resolver polls in `group` and the route follows its answers there too.
pub(super) async fn start(route: Arc<Route>, supervisor: &mut Supervisor, group: Group) {
    match route.config().resolver.clone() {
        Resolver::Static(hostnames) => route.apply(Resolution::Members(hostnames)),
        Resolver::Dns(dns) => match build(&dns) {
            Ok(resolver) => {
                route.apply(resolve_once(&resolver, &dns).await);
                let (tx, rx) = mpsc::channel(UPDATES);
                let stop = supervisor.token(group);
                supervisor.spawn(group, "dns resolver", poll(resolver, dns, tx, stop.clone()));
                supervisor.spawn(group, "membership", route.follow(rx, stop));
            }
            Err(e) => {
                tracing::error!(hostname = %dns.hostname, error = %e, "cannot build the DNS resolver");
                route.apply(Resolution::Failed);
            }
        },
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
