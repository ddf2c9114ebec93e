//! Decision timing with paused tokio time: the real decision loops of a real worker,
//! spans handed straight to the pipeline.

use std::time::Duration;

use tokio::time::Instant;

use crate::receiver::{Ingest, Payload};
use crate::worker::config::parse_worker;
use crate::worker::pipeline::{DECISION_TICK, EXPORT_BATCH_TIMEOUT};
use crate::worker::Worker;
use tailgate_testkit::{metric, request, span, trace_id};

async fn worker(tail_sampling: &str) -> Worker {
    worker_exporting_to(tail_sampling, "debug: {}").await
}

async fn worker_exporting_to(tail_sampling: &str, exporters: &str) -> Worker {
    let config = parse_worker(&format!(
        r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}}}}}}}
tail_sampling:
{tail_sampling}
exporters: {{{exporters}}}
admin: {{endpoint: "127.0.0.1:0"}}
"#
    ))
    .unwrap();
    Worker::start(config).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn traces_kept_in_several_ticks_share_a_request_sent_after_the_batch_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kept.json");
    let w = worker_exporting_to(
        "  decision_wait: 1s\n  policies: [{name: all, type: always_sample}]",
        &format!("file: {{path: {:?}}}", path.display().to_string()),
    )
    .await;
    let p = w.pipeline().clone();
    // Each decision loop has its own batch.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let loops = crate::worker::decision_loops(cores) as u64;
    // Enough traces per tick to reach every timer shard.
    let per_tick = 4 * cores as u64;
    let t0 = Instant::now();
    // Traces in three groups 50 ms apart: decided in three ticks, within the batch
    // timeout, each group enough to reach every loop.
    for n in 0..3 * per_tick {
        tokio::time::sleep_until(t0 + Duration::from_millis(50 * (n / per_tick))).await;
        p.ingest(
            Payload::Decoded(request("a", vec![span(trace_id(n + 1), 1, None)])),
            None,
            Instant::now(),
        )
        .unwrap();
    }
    let sent = |w: &Worker| {
        metric(
            &w.registry.render(),
            "otelcol_exporter_sent_spans_total",
            &[("exporter", "file")],
        )
    };
    let first_decided = t0 + Duration::from_secs(1) + DECISION_TICK;
    tokio::time::sleep_until(first_decided + Duration::from_millis(150)).await;
    assert_eq!(p.buffer().pending_traces(), 0, "all three decided");
    assert_eq!(sent(&w), 0.0, "sent before the batch timeout");
    tokio::time::sleep_until(first_decided + EXPORT_BATCH_TIMEOUT + DECISION_TICK).await;
    while sent(&w) < (3 * per_tick) as f64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    w.shutdown().await;
    let requests = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
    assert!(
        (1..=loops).contains(&requests),
        "{requests} export requests from {loops} decision loop(s)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_decision_loop_sends_what_it_gathered_when_the_worker_stops() {
    let w = worker("  decision_wait: 1s\n  policies: [{name: all, type: always_sample}]").await;
    let p = w.pipeline().clone();
    p.ingest(
        Payload::Decoded(request("a", vec![span(trace_id(1), 1, None)])),
        None,
        Instant::now(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1) + DECISION_TICK * 2).await;
    assert_eq!(p.buffer().pending_traces(), 0);
    let registry = w.registry.clone();
    w.shutdown().await;
    let text = registry.render();
    assert_eq!(
        metric(
            &text,
            "otelcol_exporter_sent_spans_total",
            &[("exporter", "debug")]
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn traces_are_decided_within_one_tick_of_their_deadline() {
    let w = worker("  decision_wait: 30s\n  policies: [{name: all, type: always_sample}]").await;
    let p = w.pipeline().clone();
    let t0 = Instant::now();
    p.ingest(
        Payload::Decoded(request("a", vec![span(trace_id(1), 2, Some(1))])),
        None,
        t0,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    // A second trace arriving later keeps its own deadline.
    p.ingest(
        Payload::Decoded(request("a", vec![span(trace_id(2), 2, Some(1))])),
        None,
        Instant::now(),
    )
    .unwrap();
    tokio::time::sleep_until(t0 + Duration::from_secs(30) - Duration::from_millis(1)).await;
    assert_eq!(
        p.buffer().pending_traces(),
        2,
        "decided before its deadline"
    );
    tokio::time::sleep_until(
        t0 + Duration::from_secs(30) + DECISION_TICK + Duration::from_millis(1),
    )
    .await;
    assert_eq!(
        p.buffer().pending_traces(),
        1,
        "the first trace was decided late"
    );
    tokio::time::sleep_until(
        t0 + Duration::from_secs(50) + DECISION_TICK + Duration::from_millis(1),
    )
    .await;
    assert_eq!(p.buffer().pending_traces(), 0);
    let text = w.registry.render();
    // Every decision landed within one tick of its deadline.
    assert_eq!(
        metric(
            &text,
            "tailgate_decision_lateness_seconds_bucket",
            &[("le", "0.01")]
        ),
        2.0
    );
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_root_span_brings_the_decision_forward() {
    let w = worker("  decision_wait: 30s\n  decision_wait_after_root_received: 1s\n  policies: [{name: all, type: always_sample}]").await;
    let p = w.pipeline().clone();
    let t0 = Instant::now();
    p.ingest(
        Payload::Decoded(request("a", vec![span(trace_id(1), 2, Some(1))])),
        None,
        t0,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    p.ingest(
        Payload::Decoded(request("a", vec![span(trace_id(1), 1, None)])),
        None,
        Instant::now(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1) + DECISION_TICK + Duration::from_millis(1)).await;
    assert_eq!(p.buffer().pending_traces(), 0);
    let text = w.registry.render();
    assert_eq!(
        metric(
            &text,
            "tailgate_spans_decided_total",
            &[("outcome", "sampled")]
        ),
        2.0
    );
    w.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn heavy_ingest_does_not_delay_decisions() {
    let w = worker("  decision_wait: 1s\n  num_traces: 1000000\n  policies: [{name: all, type: always_sample}]").await;
    let p = w.pipeline().clone();
    let ingest = {
        let p = p.clone();
        tokio::spawn(async move {
            // A steady stream of new traces, yielding between requests as a receiver does.
            for n in 0..3_000u64 {
                let spans = (0..10)
                    .map(|s| span(trace_id(n), s + 1, Some(99)))
                    .collect();
                p.ingest(Payload::Decoded(request("a", spans)), None, Instant::now())
                    .unwrap();
                if n % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    ingest.await.unwrap();
    tokio::time::sleep(Duration::from_secs(1) + DECISION_TICK * 2).await;
    assert_eq!(p.buffer().pending_traces(), 0);
    let text = w.registry.render();
    let decided = metric(&text, "tailgate_decision_lateness_seconds_count", &[]);
    let on_time = metric(
        &text,
        "tailgate_decision_lateness_seconds_bucket",
        &[("le", "0.02")],
    );
    assert_eq!(decided, 3000.0);
    assert_eq!(
        on_time, 3000.0,
        "some decisions were more than two ticks late"
    );
    w.shutdown().await;
}
