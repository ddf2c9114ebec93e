//! The router's DNS resolver against a real DNS server on loopback whose records change
//! while traffic flows.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::dns::{dns_server, Zone};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tailgate::router::config::parse_router;
use tailgate::router::Router;
use tailgate_testkit::{metric, request, roots, span, trace_id, Sink};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_follows_dns_and_survives_a_failed_lookup() {
    // Two backends on two loopback addresses with the same port, as pods behind a headless
    // Service would be.
    let first = Sink::start_at("127.0.0.2:0").await;
    let port = first.addr.port();
    let second = Sink::start_at(&format!("127.0.0.3:{port}")).await;
    let zone = Zone::default();
    zone.set(Some(vec![Ipv4Addr::new(127, 0, 0, 2)]));
    let nameserver = dns_server(zone.clone()).await;
    let text = format!(
        r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}}}}}}}
exporters:
  loadbalancing:
    protocol: {{otlp: {{tls: {{insecure: true}}}}}}
    resolver:
      dns: {{hostname: workers.tailgate.test, port: {port}, interval: 200ms, timeout: 500ms, nameserver: "{nameserver}"}}
admin: {{endpoint: "127.0.0.1:0"}}
"#
    );
    let router = Router::start(parse_router(&text).unwrap()).await.unwrap();
    let backends = "otelcol_loadbalancer_num_backends";
    assert_eq!(
        metric(&common::scrape(router.admin_addr).await, backends, &[]),
        1.0
    );
    let mut client = TraceServiceClient::connect(format!("http://{}", router.grpc_addr.unwrap()))
        .await
        .unwrap();
    client.export(request("a", roots(0..50))).await.unwrap();
    assert_eq!(first.wait_for_spans(50, Duration::from_secs(10)).await, 50);

    // A second address appears: the ring follows while traffic flows.
    zone.set(Some(vec![
        Ipv4Addr::new(127, 0, 0, 2),
        Ipv4Addr::new(127, 0, 0, 3),
    ]));
    assert_eq!(
        common::wait_metric(router.admin_addr, backends, &[], |v| v == 2.0).await,
        2.0
    );
    client.export(request("a", roots(100..300))).await.unwrap();
    let total = first.wait_for_spans(51, Duration::from_secs(10)).await
        + second.wait_for_spans(1, Duration::from_secs(10)).await;
    assert_eq!(total, 250);
    assert!(second.span_count() > 0, "the new backend gets its share");

    // A failing lookup keeps the last good list.
    zone.set(None);
    let failed = common::wait_metric(
        router.admin_addr,
        "otelcol_loadbalancer_num_resolutions_total",
        &[("success", "false")],
        |v| v >= 1.0,
    )
    .await;
    assert!(failed >= 1.0);
    assert_eq!(
        metric(&common::scrape(router.admin_addr).await, backends, &[]),
        2.0
    );
    client
        .export(request("a", vec![span(trace_id(999), 1, None)]))
        .await
        .unwrap();

    // A backend leaves: its keys move to the one that stays.
    zone.set(Some(vec![Ipv4Addr::new(127, 0, 0, 3)]));
    assert_eq!(
        common::wait_metric(router.admin_addr, backends, &[], |v| v == 1.0).await,
        1.0
    );
    let before = second.span_count();
    client
        .export(request("a", roots(1000..1100)))
        .await
        .unwrap();
    assert_eq!(
        second
            .wait_for_spans(before + 100, Duration::from_secs(10))
            .await,
        before + 100
    );
    let updates = metric(
        &common::scrape(router.admin_addr).await,
        "otelcol_loadbalancer_num_backend_updates_total",
        &[],
    );
    assert_eq!(updates, 3.0);
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_queued_for_a_removed_backend_is_routed_again() {
    // The first backend refuses everything, so its queue fills while it retries slowly;
    // the second takes anything.
    let stuck = Sink::start_at("127.0.0.4:0").await;
    let port = stuck.addr.port();
    stuck.stop().await;
    let refusing = Sink::start_failing_at(
        &format!("127.0.0.4:{port}"),
        vec![tonic::Code::Unavailable; 100],
    )
    .await;
    let healthy = Sink::start_at(&format!("127.0.0.5:{port}")).await;
    let zone = Zone::default();
    zone.set(Some(vec![
        Ipv4Addr::new(127, 0, 0, 4),
        Ipv4Addr::new(127, 0, 0, 5),
    ]));
    let nameserver = dns_server(zone.clone()).await;
    let text = format!(
        r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}}}}}}}
exporters:
  loadbalancing:
    ring: balanced
    protocol: {{otlp: {{tls: {{insecure: true}}, sending_queue: {{num_consumers: 1}}, retry_on_failure: {{initial_interval: 30s, randomization_factor: 0}}}}}}
    resolver:
      dns: {{hostname: workers.tailgate.test, port: {port}, interval: 200ms, timeout: 500ms, nameserver: "{nameserver}"}}
admin: {{endpoint: "127.0.0.1:0"}}
shutdown: {{grace_period: 1s}}
"#
    );
    let router = Router::start(parse_router(&text).unwrap()).await.unwrap();
    let mut client = TraceServiceClient::connect(format!("http://{}", router.grpc_addr.unwrap()))
        .await
        .unwrap();
    // Five requests: the refusing backend's first share is in flight (waiting 30 s to retry),
    // its next four wait in its queue.
    let mut sent = 0;
    for round in 0..5u64 {
        client
            .export(request(
                "a",
                (0..40)
                    .map(|t| span(trace_id(round * 100 + t), 1, None))
                    .collect(),
            ))
            .await
            .unwrap();
        sent += 40;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refusing.refused_calls(), 1);
    // The refusing backend leaves the DNS answer: its queue moves to the healthy one.
    zone.set(Some(vec![Ipv4Addr::new(127, 0, 0, 5)]));
    let rerouted = common::wait_metric(
        router.admin_addr,
        "tailgate_router_rerouted_spans_total",
        &[],
        |v| v > 0.0,
    )
    .await;
    assert!(rerouted > 0.0);
    let registry = router.registry.clone();
    router.shutdown().await;
    // Everything is accounted for: delivered, or (the one in flight) failed at shutdown.
    let failed = metric(
        &registry.render(),
        "otelcol_exporter_send_failed_spans_total",
        &[],
    );
    let delivered = healthy.span_count() as f64;
    assert_eq!(
        delivered + failed,
        f64::from(sent),
        "delivered {delivered} failed {failed} rerouted {rerouted}"
    );
    assert!(delivered > f64::from(sent) / 2.0);
}
