//! Resolvers: where a route's backend list comes from. `static` applies its list once;
//! `dns` looks the hostname up every `interval` (A and AAAA, through hickory) and keeps the
//! last good list when a lookup fails, times out or returns nothing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::config::{DnsConfig, Resolver};
use super::route::Route;

/// Resolves `route` once now (so a router starts with its ring), then keeps it current.
pub(super) async fn start(route: Arc<Route>, stop: CancellationToken, tasks: &mut JoinSet<()>) {
    match route.config().resolver.clone() {
        Resolver::Static(hostnames) => route.apply(hostnames),
        Resolver::Dns(dns) => match build(&dns) {
            Ok(resolver) => {
                resolve_once(&route, &resolver, &dns).await;
                tasks.spawn(poll(route, resolver, dns, stop));
            }
            Err(e) => {
                tracing::error!(hostname = %dns.hostname, error = %e, "cannot build the DNS resolver");
                route.resolution_failed();
            }
        },
    }
}

fn build(dns: &DnsConfig) -> Result<TokioResolver, String> {
    let mut builder = match &dns.nameserver {
        Some(ns) => {
            let addr: SocketAddr = ns.parse().map_err(|e| format!("nameserver {ns:?}: {e}"))?;
            let mut server = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut server.connections {
                c.port = addr.port();
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio().map_err(|e| e.to_string())?,
    };
    let opts = builder.options_mut();
    // Every poll asks the server: the interval is the freshness the user chose.
    opts.cache_size = 0;
    opts.timeout = dns.timeout;
    opts.attempts = 1;
    opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
    builder.build().map_err(|e| e.to_string())
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

async fn resolve_once(route: &Arc<Route>, resolver: &TokioResolver, dns: &DnsConfig) {
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
                route.resolution_failed();
            } else {
                route.apply(list);
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(hostname = %dns.hostname, error = %e, "DNS lookup failed; keeping the current backends");
            route.resolution_failed();
        }
        Err(_) => {
            tracing::warn!(hostname = %dns.hostname, "DNS lookup timed out; keeping the current backends");
            route.resolution_failed();
        }
    }
}

async fn poll(route: Arc<Route>, resolver: TokioResolver, dns: DnsConfig, stop: CancellationToken) {
    let mut tick = tokio::time::interval(dns.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => resolve_once(&route, &resolver, &dns).await,
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
