use std::collections::{HashMap, HashSet};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::bench::{prost_decode_spans_per_cpu_second, quantile};
use super::*;
use tailgate::otlp::spans;

fn config(seed: u64) -> WorkloadConfig {
    WorkloadConfig {
        seed,
        ..WorkloadConfig::default()
    }
}

#[test]
fn the_same_seed_gives_the_same_requests_and_another_seed_does_not() {
    let run = |seed| -> Vec<bytes::Bytes> {
        Generator::new(config(seed), 20_000, None)
            .map(|o| o.body)
            .collect()
    };
    let (a, b, c) = (run(7), run(7), run(8));
    assert!(a.len() > 10);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn traces_have_the_promised_shape() {
    let mut workload = Workload::new(config(3));
    let traces: Vec<GeneratedTrace> = (0..5_000).map(|_| workload.next_trace()).collect();
    let (mut errors, mut slow, mut health, mut late, mut multi_instance, mut multi) =
        (0, 0, 0, 0, 0, 0);
    let mut span_ids = HashSet::new();
    for t in &traces {
        let ids: HashSet<&[u8]> = t.spans.iter().map(|s| &s.span.span_id[..]).collect();
        let roots: Vec<_> = t
            .spans
            .iter()
            .filter(|s| s.span.parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), 1, "one root per trace");
        let root = &roots[0].span;
        for s in &t.spans {
            assert_eq!(
                tailgate::otlp::validate_id_fields(
                    &s.span.trace_id,
                    &s.span.span_id,
                    &s.span.parent_span_id
                )
                .unwrap(),
                t.trace_id
            );
            assert!(
                span_ids.insert(s.span.span_id.clone()),
                "span ids are unique"
            );
            assert!(
                (5..=15).contains(&s.span.attributes.len()),
                "{} attributes",
                s.span.attributes.len()
            );
            assert!(
                s.span.parent_span_id.is_empty() || ids.contains(&s.span.parent_span_id[..]),
                "every parent is in the trace"
            );
            assert!(s.span.start_time_unix_nano >= root.start_time_unix_nano);
            assert!(s.span.end_time_unix_nano <= root.end_time_unix_nano);
        }
        errors +=
            t.spans
                .iter()
                .any(|s| s.span.status.as_ref().is_some_and(|st| st.code == 2)) as u32;
        slow += (root.end_time_unix_nano - root.start_time_unix_nano > 500_000_000) as u32;
        health += (root.name == "GET /healthz") as u32;
        late += t.spans.iter().any(|s| s.late) as u32;
        if t.spans.len() > 1 {
            multi += 1;
            let instances: HashSet<usize> = t.spans.iter().map(|s| s.instance).collect();
            multi_instance += (instances.len() > 1) as u32;
        }
    }
    let share = |n: u32| f64::from(n) / traces.len() as f64;
    // Binomial shares of 5 000 draws: well within 4 standard deviations.
    assert!(
        (share(errors) - 0.02 * 0.95).abs() < 0.01,
        "errors {}",
        share(errors)
    );
    assert!(
        (share(slow) - 0.03 * 0.95).abs() < 0.012,
        "slow {}",
        share(slow)
    );
    assert!(
        (share(health) - 0.05).abs() < 0.015,
        "health {}",
        share(health)
    );
    assert!(
        (share(late) - 0.01 * 0.95).abs() < 0.006,
        "late {}",
        share(late)
    );
    assert!(
        f64::from(multi_instance) / f64::from(multi) > 0.8,
        "most traces cross services"
    );
}

#[test]
fn every_span_leaves_exactly_once_in_bounded_requests() {
    let mut workload = Workload::new(config(5));
    let mut batcher = Batcher::new(&workload);
    let mut expected = HashMap::new();
    let mut out = Vec::new();
    for _ in 0..3_000 {
        let trace = workload.next_trace();
        for s in &trace.spans {
            expected.insert(s.span.span_id.clone(), s.late);
        }
        batcher.push(trace, &mut out);
    }
    batcher.finish(&mut out);
    let mut seen = HashMap::new();
    for o in &out {
        let request = ExportTraceServiceRequest::decode(o.body.clone()).unwrap();
        assert_eq!(request.resource_spans.len(), 1, "one instance per request");
        let n = spans(&request).count();
        assert_eq!(n as u32, o.spans);
        assert!(n <= 512);
        for s in spans(&request) {
            assert!(
                seen.insert(s.span_id.clone(), o.late).is_none(),
                "sent twice"
            );
        }
    }
    assert_eq!(seen, expected);
}

#[test]
fn quantiles_interpolate_inside_the_bucket() {
    // Bounds 1, 2.5, 5, ... ms: 10 decisions at or under 1 ms, 90 in (2.5, 5].
    let mut cumulative = vec![100.0; tailgate::telemetry::LATENESS_BUCKETS_S.len() + 1];
    cumulative[0] = 10.0;
    cumulative[1] = 10.0;
    assert!((quantile(&cumulative, 0.05) - 0.0005).abs() < 1e-12);
    assert!((quantile(&cumulative, 0.55) - 0.00375).abs() < 1e-12);
    assert!(quantile(&[0.0; 15], 0.5).is_nan());
}

#[test]
fn the_in_process_decode_counts_cpu_time_on_its_own_thread() {
    let requests: Vec<Outgoing> = Generator::new(config(3), 20_000, None).collect();
    let rate = prost_decode_spans_per_cpu_second(&requests).unwrap();
    // Finite and positive: the decode thread used CPU time, and every span was decoded
    // (a debug build decodes far fewer than a billion spans a second).
    assert!(rate > 0.0 && rate < 1e9, "{rate}");
}
