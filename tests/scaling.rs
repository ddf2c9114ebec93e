//! Scaling workers out and in under load without splitting a trace: two routers and the
//! workers follow a real DNS server on loopback whose answer changes (the routers at
//! different intervals, so their views differ for a while), workers on 127.0.0.2-4 with
//! one port, as pods behind a headless Service. The fleet goes 2 → 3 → 2 workers (the
//! leaving one shut down as Kubernetes would, while the answer drops it) while traces keep
//! arriving, each trace's spans over more than a second through both routers.

mod common;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::dns::{dns_server, Zone};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tailgate::router::config::parse_router;
use tailgate::router::Router;
use tailgate::worker::config::parse_worker;
use tailgate::worker::Worker;
use tailgate_testkit::{request, span, trace_id, Recorder, Sink};

const HOSTNAME: &str = "workers.tailgate.test";
const SPANS_PER_TRACE: u64 = 6;

/// Exported spans by trace: (worker, span id) as the sink received them.
type Exported = Arc<Mutex<HashMap<[u8; 16], Vec<(String, Vec<u8>)>>>>;

async fn worker(ip: u8, port: u16, nameserver: std::net::SocketAddr, sink: &Sink) -> Worker {
    let text = format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.{ip}:{port}"}}
tail_sampling:
  decision_wait: 2s
  decision_cache: {{sampled_cache_size: 100000}}
  policies: [{{name: all, type: always_sample}}]
membership:
  advertise: "127.0.0.{ip}:{port}"
  resolver:
    dns: {{hostname: {HOSTNAME}, port: {port}, interval: 200ms, timeout: 500ms, nameserver: "{nameserver}"}}
  handover_window: 4s
  protocol:
    otlp: {{tls: {{insecure: true}}, retry_on_failure: {{initial_interval: 50ms, max_elapsed_time: 2s}}}}
exporters:
  otlp:
    endpoint: "{}"
    tls: {{insecure: true}}
    headers: {{x-tailgate-worker: "w{ip}"}}
admin:
  endpoint: "127.0.0.1:0"
shutdown:
  grace_period: 10s
"#,
        sink.addr
    );
    let config = parse_worker(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    Worker::start(config).await.expect("worker starts")
}

async fn router(port: u16, nameserver: std::net::SocketAddr, interval: &str) -> Router {
    let text = format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:0"}}
exporters:
  loadbalancing:
    protocol:
      otlp:
        tls: {{insecure: true}}
        retry_on_failure: {{initial_interval: 50ms, max_elapsed_time: 10s}}
    resolver:
      dns: {{hostname: {HOSTNAME}, port: {port}, interval: {interval}, timeout: 500ms, nameserver: "{nameserver}"}}
admin:
  endpoint: "127.0.0.1:0"
shutdown:
  grace_period: 5s
"#
    );
    Router::start(parse_router(&text).unwrap())
        .await
        .expect("router starts")
}

fn ips(list: &[u8]) -> Option<Vec<Ipv4Addr>> {
    Some(list.iter().map(|i| Ipv4Addr::new(127, 0, 0, *i)).collect())
}

/// A port free on 127.0.0.2, 127.0.0.3 and 127.0.0.4 alike.
async fn common_port() -> u16 {
    for _ in 0..50 {
        let first = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let free = |ip: u8| {
            std::net::TcpListener::bind(("127.0.0.".to_owned() + &ip.to_string(), port)).is_ok()
        };
        if free(3) && free(4) {
            return port;
        }
    }
    panic!("no port free on all three addresses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_to_three_to_two_workers_under_load_split_no_trace() {
    let exported: Exported = Arc::default();
    let record = exported.clone();
    let recorder: Recorder = Arc::new(move |metadata, _, request| {
        let worker = metadata
            .get("x-tailgate-worker")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        let mut seen = record.lock().unwrap();
        for rs in request.resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let id: [u8; 16] = s.trace_id.as_slice().try_into().unwrap();
                    seen.entry(id)
                        .or_default()
                        .push((worker.clone(), s.span_id));
                }
            }
        }
    });
    let sink = Sink::start_recording("127.0.0.1:0", recorder)
        .await
        .unwrap();
    let zone = Zone::default();
    zone.set(ips(&[2, 3]));
    let nameserver = dns_server(zone.clone()).await;
    let port = common_port().await;
    let w2 = worker(2, port, nameserver, &sink).await;
    let w3 = worker(3, port, nameserver, &sink).await;
    // Two routers that see DNS changes at different times.
    let fast = router(port, nameserver, "150ms").await;
    let slow = router(port, nameserver, "1s").await;
    let mut clients = Vec::new();
    for r in [&fast, &slow] {
        let addr = r.grpc_addr.unwrap();
        clients.push(
            TraceServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap(),
        );
    }

    // Load: a new trace every 10 ms; each trace's six spans go out in three requests
    // 600 ms apart, alternating routers.
    let load = tokio::spawn(async move {
        let mut pending: Vec<(u64, u64)> = Vec::new(); // (trace, spans sent)
        let mut next = 1u64;
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut step = 0u64;
        while started.elapsed() < Duration::from_secs(13) {
            tick.tick().await;
            step += 1;
            pending.push((next, 0));
            next += 1;
            // Every 60 ticks (600 ms) each pending trace gets its next two spans.
            let due: Vec<usize> = pending
                .iter()
                .enumerate()
                .filter(|(_, (t, _))| (step - (t - 1)) % 60 == 1)
                .map(|(i, _)| i)
                .collect();
            for i in due {
                let (t, sent) = &mut pending[i];
                let spans = (0..2)
                    .map(|k| span(trace_id(*t), *sent + k + 1, (*sent + k > 0).then_some(1)))
                    .collect();
                let client = &mut clients[((*t + *sent / 2) % 2) as usize];
                client
                    .export(request("scaling", spans))
                    .await
                    .expect("a router accepts");
                *sent += 2;
            }
            pending.retain(|(_, sent)| *sent < SPANS_PER_TRACE);
        }
        // Finish the traces still open.
        while !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(600)).await;
            for (t, sent) in &mut pending {
                let spans = (0..2)
                    .map(|k| span(trace_id(*t), *sent + k + 1, Some(1)))
                    .collect();
                clients[(*t % 2) as usize]
                    .export(request("scaling", spans))
                    .await
                    .expect("a router accepts");
                *sent += 2;
            }
            pending.retain(|(_, sent)| *sent < SPANS_PER_TRACE);
        }
        next - 1
    });

    // Scale out: a third worker starts, then DNS lists it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w4 = worker(4, port, nameserver, &sink).await;
    zone.set(ips(&[2, 3, 4]));
    // Scale in after the handover window: the first worker leaves as Kubernetes removes
    // a pod (not ready, dropped from the answer, SIGTERM).
    tokio::time::sleep(Duration::from_secs(6)).await;
    zone.set(ips(&[3, 4]));
    let leaving = tokio::spawn(w2.shutdown());

    let traces = load.await.unwrap();
    leaving.await.unwrap();
    // Every trace is decided within decision_wait of its first span.
    tokio::time::sleep(Duration::from_secs(3)).await;
    w3.shutdown().await;
    w4.shutdown().await;
    fast.shutdown().await;
    slow.shutdown().await;

    let exported = exported.lock().unwrap();
    let mut split = 0;
    let mut lost = 0;
    let mut duplicated = 0;
    for t in 1..=traces {
        let spans = exported.get(&trace_id(t)).cloned().unwrap_or_default();
        let mut workers: Vec<&str> = spans.iter().map(|(w, _)| w.as_str()).collect();
        workers.sort();
        workers.dedup();
        if workers.len() > 1 {
            eprintln!("split {t}: {spans:?}");
        }
        split += u64::from(workers.len() > 1);
        let mut ids: Vec<&Vec<u8>> = spans.iter().map(|(_, s)| s).collect();
        ids.sort();
        let all = ids.len() as u64;
        ids.dedup();
        duplicated += all - ids.len() as u64;
        lost += SPANS_PER_TRACE.saturating_sub(ids.len() as u64);
    }
    let used: std::collections::BTreeSet<&str> = exported
        .values()
        .flat_map(|s| s.iter().map(|(w, _)| w.as_str()))
        .collect();
    assert!(traces > 800, "the load generator sent {traces} traces");
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        vec!["w2", "w3", "w4"],
        "every worker decided traces"
    );
    assert_eq!(
        (split, lost, duplicated),
        (0, 0, 0),
        "split traces, lost and duplicated spans of {traces} traces"
    );
}
