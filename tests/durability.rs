//! Crash safety with `file_storage`: real worker processes killed with SIGKILL and started
//! again on the same directory, a real OTLP client and a real gRPC backend; every span the
//! worker acknowledged reaches the backend, once. A fleet behind a router that waits for
//! results: whatever the router acknowledged survives killing it and a worker. And the
//! log's limits: a full log pushes back, a directory another worker holds is refused.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::Process;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tailgate_testkit::{free_port, metric, request, router_yaml, scrape, span, trace_id, Sink};

/// Five spans a trace: a root and four children.
const SPANS_PER_TRACE: u64 = 5;

fn worker_config(dir: &Path, grpc: u16, admin: u16, backend: u16, max_buffered: u64) -> String {
    format!(
        r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:{grpc}"}}}}}}}}
extensions:
  file_storage: {{directory: "{}"}}
tail_sampling:
  decision_wait: 1s
  tail_storage: file_storage
  max_buffered_bytes: {max_buffered}
  policies: [{{name: all, type: always_sample}}]
exporters:
  otlp:
    endpoint: "127.0.0.1:{backend}"
    tls: {{insecure: true}}
    retry_on_failure: {{initial_interval: 20ms, max_interval: 100ms, max_elapsed_time: 0s}}
    sending_queue: {{storage: file_storage}}
admin: {{endpoint: "127.0.0.1:{admin}"}}
shutdown: {{grace_period: 1s}}
"#,
        dir.display()
    )
}

/// A router waiting for its workers' results, retrying a share until its worker takes it.
fn router_config(grpc: u16, admin: u16, workers: &[u16]) -> String {
    let backends: Vec<String> = workers.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    router_yaml(
        &format!("127.0.0.1:{grpc}"),
        &format!("127.0.0.1:{admin}"),
        &backends,
        "timeout: 1s, sending_queue: {wait_for_result: true}, retry_on_failure: {initial_interval: 200ms, max_interval: 200ms, max_elapsed_time: 0s}",
    ) + "shutdown: {grace_period: 1s}\n"
}

/// Sends traces `traces` (five spans each, in one request per 20 traces); returns the
/// spans acknowledged.
async fn send(to: SocketAddr, traces: std::ops::Range<u64>) -> u64 {
    let mut client = TraceServiceClient::connect(format!("http://{to}"))
        .await
        .unwrap();
    let mut acknowledged = 0;
    let all: Vec<u64> = traces.collect();
    for chunk in all.chunks(20) {
        client.export(traces_request(chunk)).await.unwrap();
        acknowledged += chunk.len() as u64 * SPANS_PER_TRACE;
    }
    acknowledged
}

/// One request holding every span of `traces`.
fn traces_request(traces: &[u64]) -> ExportTraceServiceRequest {
    let spans = traces
        .iter()
        .flat_map(|&t| {
            (1..=SPANS_PER_TRACE)
                .map(move |s| span(trace_id(t), t * 100 + s, (s > 1).then_some(t * 100 + 1)))
        })
        .collect();
    request("shop", spans)
}

/// How often each (trace, span) arrived at the backend.
fn arrivals(backend: &Sink) -> HashMap<(Vec<u8>, Vec<u8>), u32> {
    let mut seen = HashMap::new();
    for r in backend.requests() {
        for rs in r.resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    *seen.entry((s.trace_id, s.span_id)).or_default() += 1;
                }
            }
        }
    }
    seen
}

/// Waits until the backend has `acknowledged` spans, and a moment more for any duplicate;
/// then every span of `traces` must have arrived once.
async fn assert_all_arrive_once(backend: &Sink, acknowledged: u64, traces: std::ops::Range<u64>) {
    assert_eq!(
        backend
            .wait_for_spans(acknowledged as usize, Duration::from_secs(30))
            .await,
        acknowledged as usize
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_each_once(&arrivals(backend), traces);
}

fn assert_each_once(seen: &HashMap<(Vec<u8>, Vec<u8>), u32>, traces: std::ops::Range<u64>) {
    for t in traces {
        for s in 1..=SPANS_PER_TRACE {
            let key = (trace_id(t).to_vec(), (t * 100 + s).to_be_bytes().to_vec());
            assert_eq!(seen.get(&key), Some(&1), "trace {t} span {s}");
        }
    }
}

/// The newest segment of the worker's log.
fn newest_segment(dir: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("tail_sampling"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    segments.pop().unwrap()
}

/// Backend down: traces decided and waiting for their export, and traces still pending,
/// when the worker is killed. Started again on the same directory, with the backend back
/// and a torn write at the log's end: every acknowledged span arrives once, and the books
/// add up across the restart (what the first process accepted, the second replayed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_span_survives_a_kill_with_the_backend_down() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, admin, backend_port) = (free_port(), free_port(), free_port());
    let config = dir.path().join("worker.yaml");
    std::fs::write(
        &config,
        worker_config(dir.path(), grpc, admin, backend_port, 67108864),
    )
    .unwrap();
    let first = Process::start(&config, grpc, admin);
    let mut acknowledged = send(first.grpc, 0..200).await;
    // Decided (after 1 s) and kept, the export failing against a backend that is not up.
    let sampled = [("outcome", "sampled")];
    first
        .wait_for("tailgate_spans_decided_total", &sampled, 1000.0)
        .await;
    acknowledged += send(first.grpc, 200..300).await;
    let labels = [("receiver", "otlp"), ("transport", "grpc")];
    let accepted = first
        .metric("otelcol_receiver_accepted_spans_total", &labels)
        .await;
    let decided = first.metric("tailgate_spans_decided_total", &sampled).await;
    assert_eq!(accepted, acknowledged as f64);
    assert!(
        (1000.0..acknowledged as f64).contains(&decided),
        "the first 200 traces were decided, the rest pending: {decided}"
    );
    first.kill();

    // A record cut short by the crash.
    let segment = newest_segment(dir.path());
    let mut torn = std::fs::read(&segment).unwrap();
    torn.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&segment, torn).unwrap();

    let backend = Sink::start_at(&format!("127.0.0.1:{backend_port}")).await;
    let second = Process::start(&config, grpc, admin);
    assert_all_arrive_once(&backend, acknowledged, 0..300).await;
    assert_eq!(
        second
            .metric("tailgate_storage_replayed_spans_total", &[])
            .await,
        acknowledged as f64
    );
    assert_eq!(
        second
            .metric("tailgate_spans_decided_total", &[("outcome", "sampled")])
            .await,
        acknowledged as f64
    );
    assert_eq!(
        second
            .metric("otelcol_receiver_accepted_spans_total", &labels)
            .await,
        0.0
    );
    assert_eq!(
        second
            .metric("tailgate_storage_corrupt_records_total", &[])
            .await,
        1.0
    );
    second.kill();
    backend.stop().await;
}

/// A backend outage longer than the sending queue holds: with a queue of two requests,
/// kept traces keep coming for seconds and the worker takes every one (no push back), the
/// queue overflowing to disk. Killed during the outage and started again with the backend
/// back, it delivers every acknowledged span once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_queue_waits_on_disk_and_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, admin, backend_port) = (free_port(), free_port(), free_port());
    let config = dir.path().join("worker.yaml");
    let text = worker_config(dir.path(), grpc, admin, backend_port, 67108864).replace(
        "sending_queue: {storage: file_storage}",
        "sending_queue: {storage: file_storage, queue_size: 2, num_consumers: 2}",
    );
    assert!(text.contains("queue_size: 2"));
    std::fs::write(&config, text).unwrap();
    let first = Process::start(&config, grpc, admin);
    // 20 traces every 50 ms for 4 s: decided a second after they arrive and gathered into
    // an export request every 200 ms, so about twenty requests pile up behind a backend
    // that is not there, the queue holding two. `send` fails the test at the first push
    // back.
    let mut acknowledged = 0;
    for batch in 0..80 {
        acknowledged += send(first.grpc, batch * 20..batch * 20 + 20).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sampled = [("outcome", "sampled")];
    first
        .wait_for(
            "tailgate_spans_decided_total",
            &sampled,
            acknowledged as f64,
        )
        .await;
    let spilled = first
        .metric("tailgate_exporter_queue_spilled_requests", &[])
        .await;
    assert!(spilled >= 10.0, "{spilled} requests on disk");
    assert_eq!(
        first
            .metric("otelcol_processor_refused_spans_total", &[])
            .await,
        0.0
    );
    first.kill();

    let backend = Sink::start_at(&format!("127.0.0.1:{backend_port}")).await;
    let second = Process::start(&config, grpc, admin);
    assert_all_arrive_once(&backend, acknowledged, 0..1600).await;
    second
        .wait_for(
            "otelcol_exporter_sent_spans_total",
            &[],
            acknowledged as f64,
        )
        .await;
    assert_eq!(
        second
            .metric("tailgate_exporter_queue_spilled_requests", &[])
            .await,
        0.0
    );
    second.kill();
    backend.stop().await;
}

/// Backend up: what was exported before the kill is not sent again; what was pending is
/// decided and sent by the next process, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_settled_before_a_kill_are_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, admin) = (free_port(), free_port());
    let backend = Sink::start(vec![]).await;
    let config = dir.path().join("worker.yaml");
    std::fs::write(
        &config,
        worker_config(dir.path(), grpc, admin, backend.addr.port(), 67108864),
    )
    .unwrap();
    let first = Process::start(&config, grpc, admin);
    let exported = send(first.grpc, 0..100).await;
    assert_eq!(
        backend
            .wait_for_spans(exported as usize, Duration::from_secs(10))
            .await,
        exported as usize
    );
    // The settlements are written once the exporter counted the spans sent.
    first
        .wait_for("otelcol_exporter_sent_spans_total", &[], exported as f64)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pending = send(first.grpc, 100..160).await;
    first.kill();
    let second = Process::start(&config, grpc, admin);
    let total = (exported + pending) as usize;
    assert_eq!(
        backend.wait_for_spans(total, Duration::from_secs(30)).await,
        total
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_each_once(&arrivals(&backend), 0..160);
    assert_eq!(
        second
            .metric("tailgate_storage_replayed_spans_total", &[])
            .await,
        pending as f64
    );
    second.kill();
    backend.stop().await;
}

/// A router that waits for results in front of two workers with storage. One worker is
/// killed: requests with a share for it wait (none is acknowledged while its share sits in
/// the router's memory). Then the router and the other worker are killed too, and all
/// three start again; the client sends again what was not acknowledged, as an SDK does.
/// Every span of every acknowledged request reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_waiting_router_acknowledged_survives_killing_it_and_its_workers() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Sink::start(vec![]).await;
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let [(w1, w1_admin), (w2, w2_admin), (r, r_admin)] = ports[..] else {
        unreachable!()
    };
    let mut configs = Vec::new();
    for (name, grpc, admin) in [("w1", w1, w1_admin), ("w2", w2, w2_admin)] {
        let data = dir.path().join(name);
        std::fs::create_dir(&data).unwrap();
        let config = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            worker_config(&data, grpc, admin, backend.addr.port(), 67108864),
        )
        .unwrap();
        configs.push(config);
    }
    let router_file = dir.path().join("router.yaml");
    std::fs::write(&router_file, router_config(r, r_admin, &[w1, w2])).unwrap();
    let first = Process::start(&configs[0], w1, w1_admin);
    Process::start(&configs[1], w2, w2_admin).kill();
    let router = Process::start_as("router", &router_file, r, r_admin);
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{r}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Ten requests at once, each with traces for both workers, before the router has
    // quarantined the dead one: their shares for it wait in the router's queue.
    let requests: Vec<Vec<u64>> = (0..20u64)
        .map(|i| (i * 20..i * 20 + 20).collect())
        .collect();
    let mut waiting = Vec::new();
    for traces in &requests[..10] {
        let mut client = TraceServiceClient::new(channel.clone());
        let request = traces_request(traces);
        waiting.push(tokio::spawn(
            async move { client.export(request).await.is_ok() },
        ));
    }
    router
        .wait_for(
            "tailgate_loadbalancer_backend_quarantine_total",
            &[("event", "quarantined")],
            1.0,
        )
        .await;
    // Once it is quarantined, requests go to the live worker alone and are acknowledged.
    let mut acknowledged = vec![false; requests.len()];
    let mut client = TraceServiceClient::new(channel.clone());
    for (i, traces) in requests.iter().enumerate().skip(10) {
        client.export(traces_request(traces)).await.unwrap();
        acknowledged[i] = true;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still_waiting = waiting.iter().filter(|w| !w.is_finished()).count();
    assert!(
        still_waiting > 0,
        "every request had been answered although one worker was down"
    );
    router.kill();
    first.kill();
    for (i, w) in waiting.into_iter().enumerate() {
        acknowledged[i] = w.await.unwrap();
    }

    let _workers = [
        Process::start(&configs[0], w1, w1_admin),
        Process::start(&configs[1], w2, w2_admin),
    ];
    let _router = Process::start_as("router", &router_file, r, r_admin);
    let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{r}"))
        .await
        .unwrap();
    for (i, traces) in requests.iter().enumerate() {
        if acknowledged[i] {
            continue;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while let Err(status) = client.export(traces_request(traces)).await {
            assert!(std::time::Instant::now() < deadline, "{status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // At least once: spans of requests sent twice may arrive twice.
    let keys: Vec<_> = (0..requests.len() as u64 * 20)
        .flat_map(|t| {
            (1..=SPANS_PER_TRACE)
                .map(move |s| (trace_id(t).to_vec(), (t * 100 + s).to_be_bytes().to_vec()))
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = arrivals(&backend);
        let lost: Vec<_> = keys.iter().filter(|k| !seen.contains_key(*k)).collect();
        if lost.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} spans never arrived, the first {:?}",
            lost.len(),
            lost[0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    backend.stop().await;
}

/// A log at its limit (the backend down, nothing can be let go) refuses with a retryable
/// status and counts it; a second worker on the same directory is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_pushes_back_and_a_held_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, admin, backend) = (free_port(), free_port(), free_port());
    let text = worker_config(dir.path(), grpc, admin, backend, 65536);
    let worker =
        tailgate::worker::Worker::start(tailgate::worker::config::parse_worker(&text).unwrap())
            .await
            .unwrap();
    let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .unwrap();
    let mut refused = None;
    for t in 0..5000u64 {
        let spans = (1..=SPANS_PER_TRACE)
            .map(|s| span(trace_id(t), t * 100 + s, None))
            .collect();
        if let Err(status) = client.export(request("shop", spans)).await {
            refused = Some((t, status));
            break;
        }
    }
    let (at, status) = refused.expect("the log filled up");
    assert!(at > 10, "refused after {at} requests");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("storage is full"), "{status:?}");
    let text = scrape(worker.admin_addr).await.unwrap();
    assert_eq!(
        metric(&text, "tailgate_storage_refused_records_total", &[]),
        1.0
    );

    let other = worker_config(dir.path(), free_port(), free_port(), backend, 65536);
    let e =
        tailgate::worker::Worker::start(tailgate::worker::config::parse_worker(&other).unwrap())
            .await
            .err()
            .expect("the directory is held");
    assert!(e.to_string().contains("in use by another process"), "{e}");
    worker.shutdown().await;
}
