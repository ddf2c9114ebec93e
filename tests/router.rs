//! A router in front of real workers on loopback.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tailgate::membership::ring::{Ring, RingKind};
use tailgate::router::config::parse_router;
use tailgate::router::Router;
use tailgate::worker::Worker;
use tailgate_testkit::{all_spans, metric, request, roots, span, trace_id, Sink};

/// Long enough for every span of a trace to arrive before its decision, even in a slow
/// debug build on a busy machine.
const KEEP_ALL: &str = "  decision_wait: 5s\n  policies: [{name: all, type: always_sample}]\n";

async fn router(backends: &[String], extra: &str) -> Router {
    let hostnames: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    let text = format!(
        r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}, http: {{endpoint: "127.0.0.1:0"}}}}}}}}
exporters:
  loadbalancing:
{extra}
    protocol: {{otlp: {{tls: {{insecure: true}}, timeout: 1s, retry_on_failure: {{initial_interval: 20ms, max_interval: 100ms, max_elapsed_time: 1s}}}}}}
    resolver: {{static: {{hostnames: [{}]}}}}
admin: {{endpoint: "127.0.0.1:0"}}
shutdown: {{grace_period: 5s}}
"#,
        hostnames.join(", ")
    );
    Router::start(parse_router(&text).unwrap_or_else(|e| panic!("{e}\n{text}")))
        .await
        .unwrap()
}

/// Three workers exporting to `sink`, and a router in front of them routing by trace id.
async fn fleet(sink: &Sink) -> (Vec<Worker>, Vec<String>, Router) {
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(Worker::start(common::config(sink, KEEP_ALL)).await.unwrap());
    }
    let endpoints: Vec<String> = workers
        .iter()
        .map(|w| w.grpc_addr.unwrap().to_string())
        .collect();
    let router = router(&endpoints, "    routing_key: traceID").await;
    (workers, endpoints, router)
}

/// A client of the router's OTLP/gRPC receiver.
async fn client(router: &Router) -> TraceServiceClient<tonic::transport::Channel> {
    TraceServiceClient::connect(format!("http://{}", router.grpc_addr.unwrap()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trace_lands_whole_on_one_worker() {
    let sink = Sink::start(vec![]).await;
    let (workers, endpoints, router) = fleet(&sink).await;
    let addr = format!("http://{}", router.grpc_addr.unwrap());
    // 10 000 traces of 4 spans; spans 2k+1 and 2k+2 of every trace go out one after the
    // other in request k, over two connections, so every request mixes all traces and
    // holds each in a run of two spans.
    let traces = 10_000u64;
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(TraceServiceClient::connect(addr.clone()).await.unwrap());
    }
    for k in 0..2u64 {
        let spans = (0..traces)
            .flat_map(|t| {
                let first = 2 * k + 1;
                [
                    span(trace_id(t), first, (first > 1).then_some(1)),
                    span(trace_id(t), first + 1, Some(1)),
                ]
            })
            .collect();
        clients[k as usize]
            .export(request(&format!("svc-{k}"), spans))
            .await
            .unwrap();
    }
    assert_eq!(
        sink.wait_for_spans(40_000, Duration::from_secs(60)).await,
        40_000
    );
    // Each trace was decided once, by one worker, with all its spans: one export request.
    let mut requests_per_trace: HashMap<Vec<u8>, HashSet<usize>> = HashMap::new();
    for (i, r) in sink.requests().iter().enumerate() {
        for s in all_spans(r) {
            requests_per_trace
                .entry(s.trace_id.clone())
                .or_default()
                .insert(i);
        }
    }
    assert_eq!(requests_per_trace.len(), traces as usize);
    assert!(requests_per_trace.values().all(|r| r.len() == 1));
    // Every worker got exactly the traces the collector's ring (v2) assigns it.
    let mut sorted = endpoints.clone();
    sorted.sort();
    let ring = Ring::new(RingKind::Collector(2), sorted.clone());
    let mut total = 0.0;
    for w in &workers {
        let me = sorted
            .iter()
            .position(|e| *e == w.grpc_addr.unwrap().to_string())
            .unwrap();
        let expected = (0..traces)
            .filter(|t| ring.route(&trace_id(*t)) == Some(me))
            .count() as f64
            * 4.0;
        let text = common::scrape(w.admin_addr).await;
        let accepted = metric(&text, "otelcol_receiver_accepted_spans_total", &[]);
        assert_eq!(accepted, expected);
        assert!(accepted > 0.0);
        total += accepted;
    }
    assert_eq!(total, 40_000.0);
    let text = common::scrape(router.admin_addr).await;
    assert_eq!(metric(&text, "otelcol_loadbalancer_num_backends", &[]), 3.0);
    assert_eq!(
        metric(
            &text,
            "otelcol_loadbalancer_num_resolutions_total",
            &[("success", "true")]
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "otelcol_exporter_sent_spans_total", &[]),
        40_000.0
    );
    let outcomes = metric(
        &text,
        "otelcol_loadbalancer_backend_outcome_total",
        &[("success", "true")],
    );
    assert!((3.0..=12.0).contains(&outcomes), "{outcomes}");
    router.shutdown().await;
    for w in workers {
        w.shutdown().await;
    }
}

#[tokio::test]
async fn a_request_is_split_once_per_worker_not_per_trace() {
    // Two fake workers (plain sinks) record exactly what the router sends.
    let (a, b) = (Sink::start(vec![]).await, Sink::start(vec![]).await);
    let router = router(
        &[a.addr.to_string(), b.addr.to_string()],
        "    ring: balanced",
    )
    .await;
    let mut client = client(&router).await;
    let spans = roots(0..200u64);
    client.export(request("svc", spans)).await.unwrap();
    assert_eq!(
        a.wait_for_spans(1, Duration::from_secs(10)).await
            + b.wait_for_spans(1, Duration::from_secs(10)).await,
        200
    );
    for sink in [&a, &b] {
        let requests = sink.requests();
        assert_eq!(requests.len(), 1, "one request per worker");
        // One resource and scope for all its traces, exactly as received.
        assert_eq!(requests[0].resource_spans.len(), 1);
        assert_eq!(
            requests[0].resource_spans[0].scope_spans[0]
                .scope
                .as_ref()
                .unwrap()
                .name,
            "testkit"
        );
    }
    router.shutdown().await;
}

#[tokio::test]
async fn a_failing_backend_retries_only_its_own_share() {
    let flaky = Sink::start(vec![tonic::Code::Unavailable; 2]).await;
    let healthy = Sink::start(vec![]).await;
    let router = router(
        &[flaky.addr.to_string(), healthy.addr.to_string()],
        "    ring: balanced",
    )
    .await;
    let mut client = client(&router).await;
    let spans = roots(0..100u64);
    client.export(request("svc", spans)).await.unwrap();
    let got = flaky.wait_for_spans(1, Duration::from_secs(10)).await
        + healthy.wait_for_spans(1, Duration::from_secs(10)).await;
    assert_eq!(got, 100);
    assert_eq!(flaky.refused_calls(), 2);
    // The healthy backend was sent its share once.
    assert_eq!(healthy.requests().len(), 1);
    router.shutdown().await;
}

#[tokio::test]
async fn routing_by_service_and_bad_input() {
    let (a, b) = (Sink::start(vec![]).await, Sink::start(vec![]).await);
    let router = router(
        &[a.addr.to_string(), b.addr.to_string()],
        "    routing_key: service",
    )
    .await;
    let mut client = client(&router).await;
    for t in 0..20u64 {
        client
            .export(request("checkout", vec![span(trace_id(t), 1, None)]))
            .await
            .unwrap();
    }
    let (na, nb) = (
        a.wait_for_spans(20, Duration::from_secs(2)).await,
        b.wait_for_spans(20, Duration::from_secs(2)).await,
    );
    assert!(
        na == 20 && nb == 0 || na == 0 && nb == 20,
        "one service, one worker: {na} {nb}"
    );
    // The worker's bad-input errors apply at the router too.
    let mut bad = request("checkout", vec![span(trace_id(1), 1, None)]);
    bad.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![0; 16];
    assert_eq!(
        client.export(bad).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let mut nameless = request("x", vec![span(trace_id(1), 1, None)]);
    nameless.resource_spans[0].resource = None;
    assert_eq!(
        client.export(nameless).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    router.shutdown().await;
}

#[tokio::test]
async fn a_full_backend_queue_pushes_back() {
    let stuck = Sink::start(vec![tonic::Code::Unavailable; 1000]).await;
    let text = format!(
        r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}}}}}}}
exporters:
  loadbalancing:
    protocol: {{otlp: {{tls: {{insecure: true}}, sending_queue: {{queue_size: 1, num_consumers: 1}}, retry_on_failure: {{initial_interval: 1s, max_elapsed_time: 0s}}}}}}
    resolver: {{static: {{hostnames: ["{}"]}}}}
admin: {{endpoint: "127.0.0.1:0"}}
shutdown: {{grace_period: 1s}}
"#,
        stuck.addr
    );
    let router = Router::start(parse_router(&text).unwrap()).await.unwrap();
    let mut client = client(&router).await;
    let mut refused = 0;
    for t in 0..10u64 {
        if let Err(s) = client
            .export(request("a", vec![span(trace_id(t), 1, None)]))
            .await
        {
            assert_eq!(s.code(), tonic::Code::ResourceExhausted);
            refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused > 0);
    let metrics = common::scrape(router.admin_addr).await;
    assert_eq!(
        metric(&metrics, "otelcol_processor_refused_spans_total", &[]),
        f64::from(refused)
    );
    let registry = router.registry.clone();
    router.shutdown().await;
    // What the backend never took was abandoned at shutdown and counted, not lost.
    let accepted = metric(
        &registry.render(),
        "otelcol_receiver_accepted_spans_total",
        &[],
    );
    assert_eq!(accepted, f64::from(10 - refused));
    assert_eq!(
        metric(
            &registry.render(),
            "otelcol_exporter_send_failed_spans_total",
            &[]
        ),
        accepted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_quarantined_until_it_answers_again() {
    let (a, b) = (Sink::start(vec![]).await, Sink::start(vec![]).await);
    let b_addr = b.addr;
    let router = router(
        &[a.addr.to_string(), b_addr.to_string()],
        "    ring: balanced",
    )
    .await;
    let mut client = client(&router).await;
    b.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Traffic keeps flowing; b's share fails until b is quarantined, then goes to a.
    let quarantines = "tailgate_loadbalancer_backend_quarantine_total";
    for round in 0..50u64 {
        client
            .export(request(
                "a",
                (0..20)
                    .map(|t| span(trace_id(round * 100 + t), 1, None))
                    .collect(),
            ))
            .await
            .unwrap();
        if metric(
            &common::scrape(router.admin_addr).await,
            quarantines,
            &[("event", "quarantined")],
        ) >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(
            &common::scrape(router.admin_addr).await,
            quarantines,
            &[("event", "quarantined")]
        ),
        1.0
    );
    let before = a.span_count();
    client
        .export(request("a", roots(5000..5100)))
        .await
        .unwrap();
    assert_eq!(
        a.wait_for_spans(before + 100, Duration::from_secs(10))
            .await,
        before + 100,
        "all of it to a"
    );
    // b comes back on the same address: a probe finds it and it gets its keys again.
    let b = Sink::start_at(&b_addr.to_string()).await;
    assert_eq!(
        common::wait_metric(
            router.admin_addr,
            quarantines,
            &[("event", "recovered")],
            |v| v >= 1.0
        )
        .await,
        1.0
    );
    client
        .export(request("a", roots(6000..6100)))
        .await
        .unwrap();
    assert!(b.wait_for_spans(1, Duration::from_secs(10)).await > 0);
    router.shutdown().await;
}

#[tokio::test]
async fn with_every_backend_down_the_router_answers_unavailable() {
    let a = Sink::start(vec![]).await;
    let router = router(&[a.addr.to_string()], "    routing_key: traceID").await;
    let mut client = client(&router).await;
    a.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut code = tonic::Code::Ok;
    for t in 0..100u64 {
        match client
            .export(request("a", vec![span(trace_id(t), 1, None)]))
            .await
        {
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(s) => {
                code = s.code();
                break;
            }
        }
    }
    assert_eq!(code, tonic::Code::Unavailable);
    router.shutdown().await;
}

/// With `wait_for_result`, a request is acknowledged only once every backend took its
/// share: a share that fails for good fails the request with `UNAVAILABLE` (the client
/// sends it again; the other shares arrive twice), counted as refused, not accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_waiting_for_results_acknowledges_only_what_its_workers_took() {
    let live = Sink::start(vec![]).await;
    let dead = format!("127.0.0.1:{}", tailgate_testkit::free_port());
    let text = tailgate_testkit::router_yaml(
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[live.addr.to_string(), dead],
        "timeout: 1s, sending_queue: {wait_for_result: true}, retry_on_failure: {initial_interval: 20ms, max_interval: 50ms, max_elapsed_time: 300ms}",
    );
    let router = Router::start(parse_router(&text).unwrap()).await.unwrap();
    let mut client = client(&router).await;
    let traces = |from: u64| -> Vec<_> {
        (from..from + 20)
            .map(|t| span(trace_id(t), 1, None))
            .collect()
    };
    let status = client
        .export(request("a", traces(0)))
        .await
        .expect_err("a share could not be delivered");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("did not take its share"),
        "{status:?}"
    );
    let delivered_before = live.span_count();
    assert!(
        (1..20).contains(&delivered_before),
        "the live backend's share arrived: {delivered_before}"
    );
    let receiver = [("receiver", "otlp"), ("transport", "grpc")];
    let text = router.registry.render();
    assert_eq!(
        metric(&text, "otelcol_receiver_accepted_spans_total", &receiver),
        0.0
    );
    assert_eq!(
        metric(&text, "otelcol_receiver_refused_spans_total", &receiver),
        20.0
    );

    // The dead backend is quarantined by now: everything goes to the live one, and the
    // answer comes only after it has the spans.
    client.export(request("a", traces(100))).await.unwrap();
    assert_eq!(live.span_count(), delivered_before + 20);
    let text = router.registry.render();
    assert_eq!(
        metric(&text, "otelcol_receiver_accepted_spans_total", &receiver),
        20.0
    );
    router.shutdown().await;
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_nothing_silently() {
    worker_lost_under_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_under_load_rejoins_and_loses_nothing_silently() {
    worker_lost_under_load(true).await;
}

/// Sends 40 rounds of 25 traces through a router in front of three workers. At round 10
/// the second worker is killed (it drains what it holds, then is gone); with `restart`, a
/// new worker starts on its address at round 20 and must get its traces back. Every span
/// the router accepted is exported by a worker or counted as failed by the router.
async fn worker_lost_under_load(restart: bool) {
    let sink = Sink::start(vec![]).await;
    let (mut workers, endpoints, router) = fleet(&sink).await;
    let mut client = client(&router).await;
    let quarantines = "tailgate_loadbalancer_backend_quarantine_total";
    let mut accepted = 0usize;
    let mut restarted = None;
    for round in 0..40u64 {
        if round == 10 {
            workers.remove(1).shutdown().await;
        }
        if round == 20 && restart {
            let mut config = common::config(&sink, KEEP_ALL);
            config
                .receivers
                .otlp
                .protocols
                .grpc
                .as_mut()
                .unwrap()
                .endpoint = endpoints[1].clone();
            restarted = Some(Worker::start(config).await.unwrap());
            common::wait_metric(
                router.admin_addr,
                quarantines,
                &[("event", "recovered")],
                |v| v >= 1.0,
            )
            .await;
        }
        let spans: Vec<_> = (0..25)
            .map(|t| span(trace_id(round * 1000 + t), 1, None))
            .collect();
        match client.export(request("a", spans)).await {
            Ok(_) => accepted += 25,
            Err(s) => assert!(
                matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                ),
                "{s:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Settle: every accepted span ends up exported by a worker, or counted as failed by
    // the router (sent to the dead worker before it was quarantined, retries exhausted).
    let registry = router.registry.clone();
    router.shutdown().await;
    let failed = metric(
        &registry.render(),
        "otelcol_exporter_send_failed_spans_total",
        &[],
    ) as usize;
    let exported = sink
        .wait_for_spans(accepted - failed, Duration::from_secs(20))
        .await;
    if let Some(worker) = restarted {
        // Back on the ring: the twenty rounds after its restart gave it its share.
        let taken = metric(
            &common::scrape(worker.admin_addr).await,
            "otelcol_receiver_accepted_spans_total",
            &[],
        );
        assert!(
            taken >= 20.0 * 25.0 / 6.0,
            "the restarted worker took {taken} spans"
        );
        workers.push(worker);
    }
    for w in workers {
        w.shutdown().await;
    }
    let exported = exported.max(sink.span_count());
    assert_eq!(
        exported + failed,
        accepted,
        "exported {exported}, failed {failed}, accepted {accepted}"
    );
    assert!(metric(&registry.render(), quarantines, &[("event", "quarantined")]) >= 1.0);
}

#[tokio::test]
async fn every_route_gets_every_span() {
    let (a, b, c) = (
        Sink::start(vec![]).await,
        Sink::start(vec![]).await,
        Sink::start(vec![]).await,
    );
    let text = format!(
        r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}}}}}}}
exporters:
  loadbalancing/sampling:
    routing_key: traceID
    protocol: {{otlp: {{tls: {{insecure: true}}}}}}
    resolver: {{static: {{hostnames: ["{}", "{}"]}}}}
  loadbalancing/metrics:
    routing_key: service
    protocol: {{otlp: {{tls: {{insecure: true}}}}}}
    resolver: {{static: {{hostnames: ["{}"]}}}}
admin: {{endpoint: "127.0.0.1:0"}}
"#,
        a.addr, b.addr, c.addr
    );
    let router = Router::start(parse_router(&text).unwrap()).await.unwrap();
    let mut client = client(&router).await;
    client.export(request("svc", roots(0..100))).await.unwrap();
    assert_eq!(c.wait_for_spans(100, Duration::from_secs(10)).await, 100);
    let sampling = a.wait_for_spans(1, Duration::from_secs(10)).await
        + b.wait_for_spans(1, Duration::from_secs(10)).await;
    assert_eq!(sampling, 100);
    router.shutdown().await;
}

#[tokio::test]
async fn routing_by_attributes_keeps_equal_keys_together() {
    let (a, b) = (Sink::start(vec![]).await, Sink::start(vec![]).await);
    let extra = "    routing_key: attributes\n    routing_attributes: [http.route, span.kind]\n    ring: balanced";
    let router = router(&[a.addr.to_string(), b.addr.to_string()], extra).await;
    let mut client = client(&router).await;
    let routed = |t: u64, route: &str| {
        let mut s = span(trace_id(t), 1, None);
        s.attributes = vec![tailgate_testkit::kv("http.route", route)];
        s
    };
    // Many traces, two routes: each route's spans all land on one backend.
    let spans = (0..100u64)
        .map(|t| routed(t, if t % 2 == 0 { "/cart" } else { "/pay" }))
        .collect();
    client.export(request("svc", spans)).await.unwrap();
    let got = a.wait_for_spans(1, Duration::from_secs(5)).await
        + b.wait_for_spans(1, Duration::from_secs(5)).await;
    assert_eq!(got, 100);
    let routes_at = |sink: &Sink| -> HashSet<String> {
        sink.requests()
            .iter()
            .flat_map(all_spans)
            .map(|s| format!("{:?}", s.attributes[0].value))
            .collect()
    };
    let (at_a, at_b) = (routes_at(&a), routes_at(&b));
    assert!(
        at_a.is_disjoint(&at_b),
        "a route split over backends: {at_a:?} {at_b:?}"
    );
    assert_eq!(at_a.len() + at_b.len(), 2);
    router.shutdown().await;
}

#[test]
fn router_config_errors_carry_their_paths() {
    let err = parse_router(
        r#"
receivers: {otlp: {protocols: {grpc: {}}}}
exporters:
  loadbalancing:
    routing_key: attributes
    ring_version: 3
    protocol: {otlp: {endpoint: "x:1", compresion: gzip}}
    resolver: {static: {hostnames: []}, dns: {hostname: w}}
  otlp: {endpoint: "x:1"}
"#,
    )
    .unwrap_err()
    .to_string();
    for want in [
        "exporters.loadbalancing.ring_version: 3 is not a verified ring version; use 1 or 2",
        "exporters.otlp: a router exports only through loadbalancing exporters",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let err = parse_router(
        r#"
receivers: {otlp: {protocols: {grpc: {}}}}
exporters:
  loadbalancing:
    routing_key: attributes
    protocol: {otlp: {endpoint: "x:1"}}
    resolver: {static: {hostnames: []}, dns: {hostname: w}}
"#,
    )
    .unwrap_err()
    .to_string();
    for want in [
        "exporters.loadbalancing.routing_attributes: required with routing_key: attributes",
        "exporters.loadbalancing.protocol.otlp.endpoint: is set per member by the resolver",
        "exporters.loadbalancing.resolver: set only one of static, dns and k8s",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

/// Every self-metric of a router and of a worker carries its role, so a dashboard can tell
/// a router's intake from a worker's outside local mode too; both show their process's
/// memory and CPU without a memory limiter; queue gauges carry the collector's data_type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_metrics_carry_their_role_and_the_process_figures() {
    let sink = Sink::start(vec![]).await;
    let (workers, _, router) = fleet(&sink).await;
    let mut client = client(&router).await;
    client
        .export(request("a", vec![span(trace_id(1), 1, None)]))
        .await
        .unwrap();
    for (role, addr) in [
        ("router", router.admin_addr),
        ("worker", workers[0].admin_addr),
    ] {
        let text = common::scrape(addr).await;
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("otelcol_") || l.starts_with("tailgate_"))
            .collect();
        assert!(samples.len() > 20, "{text}");
        for line in samples {
            assert!(line.contains(&format!("role=\"{role}\"")), "{line}");
        }
        let labels = [("role", role)];
        assert!(metric(&text, "otelcol_process_memory_rss_bytes", &labels) > 1e6);
        assert!(metric(&text, "otelcol_process_cpu_seconds_total", &labels) > 0.0);
        assert!(metric(&text, "otelcol_process_uptime_seconds_total", &labels) > 0.0);
        assert!(
            metric(
                &text,
                "otelcol_exporter_queue_capacity",
                &[("data_type", "traces")]
            ) > 0.0,
            "{text}"
        );
    }
    router.shutdown().await;
    for w in workers {
        w.shutdown().await;
    }
}
