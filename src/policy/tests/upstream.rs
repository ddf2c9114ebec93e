//! The collector's own `tail_sampling` test tables, case by case, run against tailgate's
//! policies: the same traces (resource and span attributes, durations, status codes, span
//! counts across batches, tracestates) and the decisions the current collector expects.
//! Where upstream's tables still name the deprecated inverted decisions, the current
//! collector's plain votes are expected (`InvertSampled` is `Sampled`, `InvertNotSampled`
//! is `NotSampled`); the latency table follows the exclusive lower bound (#49595).

use super::*;

/// One span with `span` as its attribute (upstream sets one even when its key is empty)
/// under a resource with `resource`.
fn string_trace(resource: &[(&str, &str)], span: (&str, &str)) -> Trace {
    Trace::new(vec![(
        resource.iter().map(|(k, v)| kv(k, v)).collect(),
        vec![with(vec![kv(span.0, span.1)])],
    )])
}

fn string_policy(values: &[&str], regex: bool, invert: bool) -> String {
    let values: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
    format!(
        "{{name: p, type: string_attribute, string_attribute: {{key: example, values: [{}], enabled_regex_matching: {regex}, invert_match: {invert}}}}}",
        values.join(", ")
    )
}

#[test]
fn string_attribute_table() {
    let health = "grpc.health.v1.HealthCheck";
    let list = ["first_value", "value", "last_value"];
    let regex_hit = ["^http", "v[0-9]+.HealthCheck$", "metrics$"];
    let regex_miss = ["^http", "v[a-z]+.HealthCheck$", "metrics$"];
    type Case<'a> = (&'a str, Trace, &'a [&'a str], bool, bool, Decision);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("nonmatching node attribute key", string_trace(&[("non_matching", "value")], ("", "")), &["value"], false, false, NotSampled),
        ("nonmatching node attribute value", string_trace(&[("example", "non_matching")], ("", "")), &["value"], false, false, NotSampled),
        ("matching node attribute", string_trace(&[("example", "value")], ("", "")), &["value"], false, false, Sampled),
        ("nonmatching span attribute key", string_trace(&[], ("nonmatching", "value")), &["value"], false, false, NotSampled),
        ("nonmatching span attribute value", string_trace(&[], ("example", "nonmatching")), &["value"], false, false, NotSampled),
        ("matching span attribute", string_trace(&[], ("example", "value")), &["value"], false, false, Sampled),
        ("matching span attribute with regex", string_trace(&[], ("example", health)), &["v[0-9]+.HealthCheck$"], true, false, Sampled),
        ("nonmatching span attribute with regex", string_trace(&[], ("example", health)), &["v[a-z]+.HealthCheck$"], true, false, NotSampled),
        ("matching plain text node attribute in regex", string_trace(&[("example", "value")], ("", "")), &["value"], true, false, Sampled),
        ("nonmatching span attribute on empty filter list", string_trace(&[], ("example", health)), &[], true, false, NotSampled),
        ("invert nonmatching node attribute key", string_trace(&[("non_matching", "value")], ("", "")), &["value"], false, true, Sampled),
        ("invert nonmatching node attribute value", string_trace(&[("example", "non_matching")], ("", "")), &["value"], false, true, Sampled),
        ("invert nonmatching node attribute list", string_trace(&[("example", "non_matching")], ("", "")), &list, false, true, Sampled),
        ("invert matching node attribute", string_trace(&[("example", "value")], ("", "")), &["value"], false, true, NotSampled),
        ("invert matching node attribute list", string_trace(&[("example", "value")], ("", "")), &list, false, true, NotSampled),
        ("invert nonmatching span attribute key", string_trace(&[], ("nonmatching", "value")), &["value"], false, true, Sampled),
        ("invert nonmatching span attribute value", string_trace(&[], ("example", "nonmatching")), &["value"], false, true, Sampled),
        ("invert nonmatching span attribute list", string_trace(&[], ("example", "nonmatching")), &list, false, true, Sampled),
        ("invert matching span attribute", string_trace(&[], ("example", "value")), &["value"], false, true, NotSampled),
        ("invert matching span attribute list", string_trace(&[], ("example", "value")), &list, false, true, NotSampled),
        ("invert matching span attribute with regex", string_trace(&[], ("example", health)), &["v[0-9]+.HealthCheck$"], true, true, NotSampled),
        ("invert matching span attribute with regex list", string_trace(&[], ("example", health)), &regex_hit, true, true, NotSampled),
        ("invert nonmatching span attribute with regex", string_trace(&[], ("example", health)), &["v[a-z]+.HealthCheck$"], true, true, Sampled),
        ("invert nonmatching span attribute with regex list", string_trace(&[], ("example", health)), &regex_miss, true, true, Sampled),
        ("invert matching plain text node attribute in regex", string_trace(&[("example", "value")], ("", "")), &["value"], true, true, NotSampled),
        ("invert matching plain text node attribute in regex list", string_trace(&[("example", "value")], ("", "")), &list, true, true, NotSampled),
        ("invert nonmatching span attribute on empty filter list", string_trace(&[], ("example", health)), &[], true, true, Sampled),
    ];
    for (desc, trace, values, regex, invert, want) in cases {
        assert_eq!(
            vote(&string_policy(values, regex, invert), &trace),
            want,
            "{desc}"
        );
    }
}

#[test]
fn probabilistic_table() {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let ids: Vec<TraceId> = (0..100_000)
        .map(|_| {
            let mut id = [0u8; 16];
            rng.fill_bytes(&mut id);
            id
        })
        .collect();
    for (desc, percentage, salt, expected) in [
        ("100%", 100.0, "", 100.0),
        ("0%", 0.0, "", 0.0),
        ("25%", 25.0, "", 25.0),
        ("33%", 33.0, "", 33.0),
        ("33% - custom salt", 33.0, "test-salt", 33.0),
    ] {
        let set = compile(
            &format!("[{{name: p, type: probabilistic, probabilistic: {{sampling_percentage: {percentage}, hash_salt: '{salt}'}}}}]"),
            false,
        )
        .unwrap();
        let kept = ids
            .iter()
            .filter(|id| {
                let mut vote = None;
                set.decide(&view(id), |v| vote = Some(v.decision));
                vote.unwrap().unwrap() == Sampled
            })
            .count();
        let effective = kept as f64 / ids.len() as f64 * 100.0;
        assert!(
            (effective - expected).abs() <= 0.2,
            "{desc}: kept {effective} %"
        );
    }
    // Upstream clamps -50 % to 0 and 150 % to 100; tailgate names them as config errors.
    for percentage in [-50, 150] {
        let e = compile(
            &format!("[{{name: p, type: probabilistic, probabilistic: {{sampling_percentage: {percentage}}}}}]"),
            false,
        )
        .unwrap_err();
        assert!(e.contains("is not between 0 and 100"), "{e}");
    }
}

#[test]
fn numeric_attribute_table() {
    let (min, max) = (i64::from(i32::MIN), i64::from(i32::MAX));
    let trace = |key: &str, v: i64| Trace::spans(vec![with(vec![int(key, v)])]);
    #[rustfmt::skip]
    let cases = [
        ("nonmatching span attribute", trace("non_matching", min), NotSampled),
        ("span attribute at the lower limit", trace("example", min), Sampled),
        ("span attribute at the upper limit", trace("example", max), Sampled),
        ("span attribute below min limit", trace("example", min - 1), NotSampled),
        ("span attribute above max limit", trace("example", max + 1), NotSampled),
    ];
    for invert in [false, true] {
        let policy = format!(
            "{{name: p, type: numeric_attribute, numeric_attribute: {{key: example, min_value: {min}, max_value: {max}, invert_match: {invert}}}}}"
        );
        for (desc, trace, want) in &cases {
            let want = match (invert, want) {
                (false, w) => *w,
                (true, Sampled) => NotSampled,
                (true, _) => Sampled,
            };
            assert_eq!(vote(&policy, trace), want, "{desc}, invert_match {invert}");
        }
    }
    // A bound of 0 is unset: min_value alone has no upper bound, max_value alone no lower.
    let at_least =
        "{name: p, type: numeric_attribute, numeric_attribute: {key: example, min_value: 10}}";
    assert_eq!(vote(at_least, &trace("example", i64::MAX)), Sampled);
    assert_eq!(vote(at_least, &trace("example", 9)), NotSampled);
    let at_most =
        "{name: p, type: numeric_attribute, numeric_attribute: {key: example, max_value: 10}}";
    assert_eq!(vote(at_most, &trace("example", i64::MIN)), Sampled);
    assert_eq!(vote(at_most, &trace("example", 11)), NotSampled);
}

#[test]
fn boolean_attribute_table() {
    let trace = |key: &str, v: bool| Trace::spans(vec![with(vec![boolean(key, v)])]);
    #[rustfmt::skip]
    let cases = [
        ("non-matching span attribute", trace("non_matching", true), NotSampled, Sampled),
        ("span attribute with unwanted boolean value", trace("example", false), NotSampled, Sampled),
        ("span attribute with wanted boolean value", trace("example", true), Sampled, NotSampled),
    ];
    for (desc, trace, plain, inverted) in cases {
        for (invert, want) in [(false, plain), (true, inverted)] {
            let policy = format!(
                "{{name: p, type: boolean_attribute, boolean_attribute: {{key: example, value: true, invert_match: {invert}}}}}"
            );
            assert_eq!(vote(&policy, &trace), want, "{desc}, invert_match {invert}");
        }
    }
}

#[test]
fn status_code_table() {
    let trace = |codes: &[i32]| {
        Trace::spans(
            codes
                .iter()
                .map(|&code| Span {
                    status: Some(Status {
                        code,
                        ..Default::default()
                    }),
                    ..with(vec![])
                })
                .collect(),
        )
    };
    let (unset, ok, error) = (0, 1, 2);
    #[rustfmt::skip]
    let cases: [(&str, &str, &[i32], Decision); 4] = [
        ("filter on ERROR - none match", "[ERROR]", &[ok, unset, ok], NotSampled),
        ("filter on OK and ERROR - none match", "[OK, ERROR]", &[unset, unset], NotSampled),
        ("filter on UNSET - matches", "[UNSET]", &[unset], Sampled),
        ("filter on OK and UNSET - matches", "[OK, UNSET]", &[error, ok], Sampled),
    ];
    for (desc, codes, present, want) in cases {
        let policy =
            format!("{{name: p, type: status_code, status_code: {{status_codes: {codes}}}}}");
        assert_eq!(vote(&policy, &trace(present)), want, "{desc}");
    }
    for (codes, error) in [("[]", "at least one"), ("[OK, ERR]", "ERR")] {
        let e = compile(
            &format!("[{{name: p, type: status_code, status_code: {{status_codes: {codes}}}}}]"),
            false,
        )
        .unwrap_err();
        assert!(e.contains(error), "{codes}: {e}");
    }
}

#[test]
fn latency_table() {
    let policy = "{name: p, type: latency, latency: {threshold_ms: 5000}}";
    #[rustfmt::skip]
    let cases = [
        ("trace duration shorter than threshold", vec![timed(0, 4500)], NotSampled),
        ("trace duration is equal to threshold", vec![timed(0, 5000)], NotSampled),
        ("total trace duration is longer than threshold but every single span is shorter", vec![timed(0, 3000), timed(2500, 5500)], Sampled),
    ];
    for (desc, spans, want) in cases {
        assert_eq!(vote(policy, &Trace::spans(spans)), want, "{desc}");
    }
    // With an upper bound the lower one was exclusive already; the upper one is inclusive.
    let bounded =
        "{name: p, type: latency, latency: {threshold_ms: 5000, upper_threshold_ms: 10000}}";
    for (end, want) in [
        (5000, NotSampled),
        (5001, Sampled),
        (10000, Sampled),
        (10001, NotSampled),
    ] {
        assert_eq!(
            vote(bounded, &Trace::spans(vec![timed(0, end)])),
            want,
            "{end} ms"
        );
    }
}

/// A trace whose spans arrive under `batches.len()` resources, `batches[i]` spans each.
fn batched(batches: &[usize]) -> Trace {
    Trace::new(
        batches
            .iter()
            .map(|&n| (vec![], vec![with(vec![]); n]))
            .collect(),
    )
}

#[test]
fn span_count_table() {
    let policy = |min: u64, max: u64| {
        format!("{{name: p, type: span_count, span_count: {{min_spans: {min}, max_spans: {max}}}}}")
    };
    #[rustfmt::skip]
    let cases: [(u64, u64, &str, &[usize], Decision); 22] = [
        (3, 0, "spans less than the minSpans, in one single batch", &[1], NotSampled),
        (3, 0, "same number of spans as the minSpans, in one single batch", &[3], Sampled),
        (3, 0, "spans greater than the minSpans, in one single batch", &[4], Sampled),
        (3, 0, "spans less than the minSpans, across multiple batches", &[1, 1], NotSampled),
        (3, 0, "same number of spans as the minSpans, across multiple batches", &[1, 2, 1], Sampled),
        (3, 0, "spans greater than the minSpans, across multiple batches", &[1, 2, 3], Sampled),
        (0, 20, "spans greater than the maxSpans, in one single batch", &[21], NotSampled),
        (0, 20, "same number of spans as the maxSpans, in one single batch", &[20], Sampled),
        (0, 20, "spans less than the maxSpans, in one single batch", &[19], Sampled),
        (0, 20, "spans greater than the maxSpans, across multiple batches", &[1, 2, 3, 4, 5, 6], NotSampled),
        (0, 20, "same number of spans as the maxSpans, across multiple batches", &[1, 2, 3, 4, 5, 5], Sampled),
        (0, 20, "spans less than the maxSpans, across multiple batches", &[1, 2, 3, 4, 5], Sampled),
        (3, 20, "spans less than the minSpans, in one single batch", &[1], NotSampled),
        (3, 20, "spans greater than the maxSpans, in one single batch", &[21], NotSampled),
        (3, 20, "spans in range, in one single batch", &[4], Sampled),
        (3, 20, "spans less than the minSpans, across multiple batches", &[1, 1], NotSampled),
        (3, 20, "spans greater than the maxSpans, across multiple batches", &[1, 2, 3, 4, 5, 6], NotSampled),
        (3, 20, "spans in range, across multiple batches", &[1, 2, 1], Sampled),
        (3, 20, "same number of spans as the minSpans, in one single batch", &[3], Sampled),
        (3, 20, "same number of spans as the maxSpans, in one single batch", &[20], Sampled),
        (3, 20, "same number of spans as the minSpans, across multiple batches", &[1, 2], Sampled),
        (3, 20, "same number of spans as the maxSpans, across multiple batches", &[1, 2, 3, 4, 5, 5], Sampled),
    ];
    for (min, max, desc, batches, want) in cases {
        assert_eq!(
            vote(&policy(min, max), &batched(batches)),
            want,
            "min {min}, max {max}: {desc}"
        );
    }
}

#[test]
fn trace_state_table() {
    let trace = |state: &str| {
        Trace::spans(vec![Span {
            trace_state: state.into(),
            ..with(vec![])
        }])
    };
    #[rustfmt::skip]
    let cases: [(&str, &str, &[&str], Decision); 8] = [
        ("nonmatching trace_state key", "non_matching=value", &["value"], NotSampled),
        ("nonmatching trace_state value", "example=non_matching", &["value"], NotSampled),
        ("matching trace_state", "example=value", &["value"], Sampled),
        ("nonmatching trace_state on empty filter list", "example=value", &[], NotSampled),
        ("nonmatching trace_state on multiple key-values", "example=non_matching,non_matching=value", &["value"], NotSampled),
        ("matching trace_state on multiple key-values", "example=value,non_matching=value", &["value"], Sampled),
        ("nonmatching trace_state on multiple filter list", "example=non_matching", &["value1", "value2"], NotSampled),
        ("matching trace_state on multiple filter list", "example=value1", &["value1", "value2"], Sampled),
    ];
    for (desc, state, values, want) in cases {
        let policy = format!(
            "{{name: p, type: trace_state, trace_state: {{key: example, values: [{}]}}}}",
            values.join(", ")
        );
        assert_eq!(vote(&policy, &trace(state)), want, "{desc}");
    }
}

#[test]
fn and_and_drop_tables() {
    // One span with an error status, with or without `attribute_name: attribute_value`.
    let trace = |attributed: bool| {
        let attributes = if attributed {
            vec![kv("attribute_name", "attribute_value")]
        } else {
            vec![]
        };
        Trace::spans(vec![Span {
            status: Some(Status {
                code: 2,
                ..Default::default()
            }),
            ..with(attributes)
        }])
    };
    let subs = |key: &str, value: &str, invert: bool| {
        format!(
            "[{{name: s, type: string_attribute, string_attribute: {{key: {key}, values: [{value}], invert_match: {invert}}}}}, {{name: e, type: status_code, status_code: {{status_codes: [ERROR]}}}}]"
        )
    };
    #[rustfmt::skip]
    let cases = [
        ("not sampled: the attribute is missing", trace(false), subs("name", "value", false), NotSampled, NotSampled),
        ("sampled: both match", trace(true), subs("attribute_name", "attribute_value", false), Sampled, Dropped),
        ("inverted string that does not match", trace(true), subs("attribute_name", "no_match", true), Sampled, Dropped),
        ("inverted string that matches", trace(true), subs("attribute_name", "attribute_value", true), NotSampled, NotSampled),
    ];
    for (desc, trace, subs, and, drop) in cases {
        let and_policy = format!("{{name: p, type: and, and: {{and_sub_policy: {subs}}}}}");
        assert_eq!(vote(&and_policy, &trace), and, "and, {desc}");
        let drop_policy = format!("{{name: p, type: drop, drop: {{drop_sub_policy: {subs}}}}}");
        assert_eq!(vote(&drop_policy, &trace), drop, "drop, {desc}");
    }
}

/// A composite of `subs` (YAML sub-policies) within `max` spans per second, with
/// `allocation` as (sub-policy, percent).
fn composite(max: u64, subs: &[&str], allocation: &[(&str, u32)]) -> PolicySet {
    let allocation: Vec<String> = allocation
        .iter()
        .map(|(p, pct)| format!("{{policy: {p}, percent: {pct}}}"))
        .collect();
    compile(
        &format!(
            "[{{name: c, type: composite, composite: {{max_total_spans_per_second: {max}, composite_sub_policy: [{}], rate_allocation: [{}]}}}}]",
            subs.join(", "),
            allocation.join(", ")
        ),
        false,
    )
    .unwrap()
}

const TAG_0_100: &str =
    "{name: n1, type: numeric_attribute, numeric_attribute: {key: tag, min_value: 0, max_value: 100}}";
const ALWAYS: &str = "{name: n2, type: always_sample}";

/// One span with `tag` as an int attribute (none when `None`), at `now`.
fn tagged(tag: Option<i64>, now: Instant) -> Trace {
    let attributes = tag.map(|t| vec![int("tag", t)]).unwrap_or_default();
    let mut t = Trace::spans(vec![with(attributes)]);
    t.now = now;
    t
}

#[test]
fn composite_table() {
    let t0 = Instant::now();
    let untagged = tagged(None, t0);
    // Neither sub-policy matches: not sampled.
    let set = composite(
        1000,
        &[
            TAG_0_100,
            "{name: n2, type: numeric_attribute, numeric_attribute: {key: tag, min_value: 200, max_value: 300}}",
        ],
        &[("n1", 10), ("n2", 10)],
    );
    assert_eq!(untagged.decide(&set).decision, NotSampled);
    // The second always samples.
    let set = composite(1000, &[TAG_0_100, ALWAYS], &[("n1", 10), ("n2", 10)]);
    assert_eq!(untagged.decide(&set).decision, Sampled);
    // The second matches through invert_match, ten times within the budget. (Upstream
    // allocates each 20 of a total of 10, which tailgate refuses as over 100 %; without an
    // allocation each gets half of 20 here.)
    let set = compile(
        "[{name: c, type: composite, composite: {max_total_spans_per_second: 20, composite_sub_policy: [
            {name: n1, type: string_attribute, string_attribute: {key: tag, values: [foo]}},
            {name: n2, type: string_attribute, string_attribute: {key: tag, values: [foo], invert_match: true}}]}}]",
        false,
    )
    .unwrap();
    for i in 0..10 {
        assert_eq!(untagged.decide(&set).decision, Sampled, "trace {i}");
    }
}

#[test]
fn composite_overflow_table() {
    // A total of 3 spans per second, one for each sub-policy; one span per trace.
    let t0 = Instant::now();
    let set = composite(3, &[TAG_0_100, ALWAYS], &[("n1", 34), ("n2", 34)]);
    let decide = |tag| tagged(Some(tag), t0).decide(&set);
    let v = decide(10);
    assert_eq!(
        (v.decision, v.composite_policy.as_deref()),
        (Sampled, Some("n1"))
    );
    // n1 matches again but has spent its budget. Upstream stops there (NotSampled); tailgate
    // lets the next sub-policy try (#36959), and n2 keeps it.
    let v = decide(11);
    assert_eq!(
        (v.decision, v.composite_policy.as_deref()),
        (Sampled, Some("n2"))
    );
    // n1 does not match; n2 has spent its budget now. Upstream keeps this one with n2's
    // unspent budget: both keep two of the three traces.
    assert_eq!(decide(1001).decision, NotSampled);
}

#[test]
fn composite_throttling_tables() {
    // Budgets are per second since the policy was built: each clock starts after it.
    let second = Duration::from_secs(1);
    // One always-sampling sub-policy with the whole budget of 10 spans per second.
    let set = composite(10, &["{name: n1, type: always_sample}"], &[("n1", 100)]);
    let t0 = Instant::now();
    for (now, want) in [(t0, Sampled), (t0, NotSampled), (t0 + second, Sampled)] {
        for i in 0..10 {
            assert_eq!(tagged(None, now).decide(&set).decision, want, "trace {i}");
        }
    }
    // Two sub-policies with half each; only the second matches these traces.
    let set = composite(10, &[TAG_0_100, ALWAYS], &[("n1", 50), ("n2", 50)]);
    let t0 = Instant::now();
    for (now, count, want) in [
        (t0, 5, Sampled),
        (t0, 5, NotSampled),
        (t0 + second, 5, Sampled),
        (t0 + second, 20, NotSampled),
        (t0 + 2 * second, 5, Sampled),
    ] {
        for i in 0..count {
            assert_eq!(
                tagged(None, now).decide(&set).decision,
                want,
                "trace {i} at {:?}",
                now - t0
            );
        }
    }
}

#[test]
fn not_table() {
    let error = Trace::spans(vec![Span {
        status: Some(Status {
            code: 2,
            ..Default::default()
        }),
        ..with(vec![])
    }]);
    let ok = Trace::spans(vec![with(vec![])]);
    let not = "{name: p, type: not, not: {not_sub_policy: {name: s, type: status_code, status_code: {status_codes: [ERROR]}}}}";
    // The sub-policy's Sampled becomes NotSampled and its NotSampled becomes Sampled.
    assert_eq!(vote(not, &error), NotSampled);
    assert_eq!(vote(not, &ok), Sampled);
}
