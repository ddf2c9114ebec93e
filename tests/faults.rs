//! Faults under load, each ending with the books: a burst ten times the steady rate against
//! a small buffer, and one 100 000-span trace among normal ones.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use tailgate::worker::Worker;
use tailgate_testkit::{all_spans, metric, request, span, trace_id, Sink};
use tonic::Code;

/// accepted == every decided outcome + still buffered, from one scrape.
fn books_balance(text: &str) -> f64 {
    let accepted = metric(text, "otelcol_receiver_accepted_spans_total", &[]);
    let decided = metric(text, "tailgate_spans_decided_total", &[]);
    let buffered = metric(text, "tailgate_buffered_spans", &[]);
    assert_eq!(accepted, decided + buffered, "{text}");
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_ten_times_the_steady_rate_is_pushed_back_and_nothing_is_lost() {
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(
        &sink,
        "  decision_wait: 200ms\n  num_traces: 100\n  block_on_overflow: true\n  policies: [{name: all, type: always_sample}]",
    ))
    .await
    .unwrap();
    // Steady: 2 senders. Burst: 20 senders at once, each retrying refusals as SDKs do.
    let mut next = 0u64;
    let mut refusals = 0u64;
    for senders in [2u64, 20] {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..senders {
            let mut client = common::grpc_client(&worker).await;
            let traces: Vec<u64> = (next..next + 50).collect();
            next += 50;
            tasks.spawn(async move {
                let mut refused = 0u64;
                for t in traces {
                    let spans: Vec<_> = (1..=4)
                        .map(|s| span(trace_id(t), s, (s > 1).then_some(1)))
                        .collect();
                    loop {
                        match client.export(request("burst", spans.clone())).await {
                            Ok(_) => break,
                            Err(s) if s.code() == Code::ResourceExhausted => {
                                refused += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(s) => panic!("unexpected status {s}"),
                        }
                    }
                }
                refused
            });
        }
        while let Some(r) = tasks.join_next().await {
            refusals += r.unwrap();
        }
    }
    let total = next as usize * 4;
    assert_eq!(
        sink.wait_for_spans(total, Duration::from_secs(60)).await,
        total
    );
    assert!(
        refusals > 0,
        "the burst should hit num_traces and be pushed back"
    );
    let text = common::scrape(worker.admin_addr).await;
    assert_eq!(books_balance(&text), total as f64);
    assert_eq!(
        metric(&text, "otelcol_processor_refused_spans_total", &[]),
        refusals as f64 * 4.0
    );
    let exported: HashSet<Vec<u8>> = sink
        .requests()
        .iter()
        .flat_map(|r| {
            all_spans(r)
                .map(|s| [s.trace_id.clone(), s.span_id.clone()].concat())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(exported.len(), total, "every span exported once");
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_000_span_trace_is_cut_off_by_its_size_and_others_are_unaffected() {
    let sink = Sink::start(vec![]).await;
    let worker = Worker::start(common::config(
        &sink,
        "  decision_wait: 30s\n  decision_wait_after_root_received: 100ms\n  maximum_trace_size_bytes: 1048576\n  max_buffered_bytes: 4194304\n  decision_cache: {non_sampled_cache_size: 1000}\n  policies: [{name: all, type: always_sample}]",
    ))
    .await
    .unwrap();
    let mut client = common::grpc_client(&worker).await;
    let huge = trace_id(1_000_000);
    let mut normal = 0;
    for chunk in 0..50u64 {
        let spans: Vec<_> = (0..2_000)
            .map(|i| span(huge, chunk * 2_000 + i + 2, Some(1)))
            .collect();
        client.export(request("huge", spans)).await.unwrap();
        // Normal traces in between.
        for t in 0..2 {
            let id = trace_id(chunk * 2 + t);
            client
                .export(request(
                    "normal",
                    vec![span(id, 1, None), span(id, 2, Some(1))],
                ))
                .await
                .unwrap();
            normal += 2;
        }
    }
    assert_eq!(
        sink.wait_for_spans(normal, Duration::from_secs(30)).await,
        normal
    );
    let buffered = common::wait_metric(worker.admin_addr, "tailgate_buffered_spans", &[], |v| {
        v == 0.0
    })
    .await;
    assert_eq!(buffered, 0.0, "the huge trace is not held");
    let text = common::scrape(worker.admin_addr).await;
    assert_eq!(books_balance(&text), (100_000 + normal) as f64);
    // Cut at 1 MiB; the rest follow the remembered decision.
    let outcome = |o| metric(&text, "tailgate_spans_decided_total", &[("outcome", o)]);
    assert!(outcome("too_large") > 10_000.0);
    assert_eq!(outcome("too_large") + outcome("not_sampled"), 100_000.0);
    assert_eq!(outcome("sampled"), normal as f64);
    assert_eq!(
        metric(
            &text,
            "otelcol_processor_tail_sampling_traces_dropped_too_large_total",
            &[]
        ),
        1.0
    );
    // Only the normal traces were exported; none of the huge trace's spans.
    assert!(sink
        .requests()
        .iter()
        .all(|r| all_spans(r).all(|s| s.trace_id != huge.to_vec())));
    assert!(metric(&text, "tailgate_buffered_bytes", &[]) <= 4_194_304.0);
    worker.shutdown().await;
}
