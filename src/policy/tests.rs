use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use tokio::time::Instant;

use super::probabilistic::threshold;
use super::*;
use crate::config::Errors;
use crate::otlp::{chunks_of, TraceSpans};
use tailgate_testkit::{kv, span, trace_id};

fn compile(yaml: &str, first_match: bool) -> Result<PolicySet, String> {
    let values: Vec<serde_yaml::Value> = serde_yaml::from_str(yaml).unwrap();
    let mut errors = Errors::default();
    let set = PolicySet::compile(&values, "tail_sampling.policies", first_match, &mut errors);
    errors.check().map(|_| set).map_err(|e| e.to_string())
}

/// A trace as policies see it: batches of (resource attributes, spans), encoded and
/// buffered as a worker buffers them.
struct Trace {
    id: TraceId,
    chunks: TraceSpans,
    span_count: u64,
    earliest_start: u64,
    latest_end: u64,
    status_codes: StatusCodes,
    bytes: u64,
    now: Instant,
}

impl Trace {
    fn new(batches: Vec<(Vec<KeyValue>, Vec<Span>)>) -> Trace {
        let all = || batches.iter().flat_map(|(_, spans)| spans);
        let request = ExportTraceServiceRequest {
            resource_spans: batches
                .iter()
                .map(|(attributes, spans)| ResourceSpans {
                    resource: Some(Resource {
                        attributes: attributes.clone(),
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        spans: spans.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        };
        Trace {
            id: trace_id(7),
            chunks: chunks_of(&request).unwrap(),
            span_count: all().count() as u64,
            earliest_start: all().map(|s| s.start_time_unix_nano).min().unwrap_or(0),
            latest_end: all().map(|s| s.end_time_unix_nano).max().unwrap_or(0),
            status_codes: all().fold(StatusCodes::NONE, |codes, s| {
                codes.with(s.status.as_ref().map_or(0, |st| st.code))
            }),
            bytes: 100,
            now: Instant::now(),
        }
    }

    /// One resource without attributes holding `spans`.
    fn spans(spans: Vec<Span>) -> Trace {
        Trace::new(vec![(vec![], spans)])
    }

    fn batches(&self) -> Vec<Batch<'_>> {
        self.chunks.chunks().map(Batch::of).collect()
    }

    fn view<'a>(&'a self, batches: &'a [Batch<'a>]) -> TraceView<'a> {
        TraceView {
            trace_id: &self.id,
            span_count: self.span_count,
            bytes: self.bytes,
            earliest_start: self.earliest_start,
            latest_end: self.latest_end,
            status_codes: self.status_codes,
            randomness: super::randomness(&self.id, None),
            fleet_size: 1,
            attributes: None,
            batches,
            now: self.now,
        }
    }

    /// The attribute matches a worker gathers for the trace's chunks as they arrive.
    fn matches(&self, set: &PolicySet) -> Option<u64> {
        self.chunks
            .chunks()
            .map(|c| {
                let resource = set.resource_matches(&c.head.resource_attributes());
                resource.union(set.span_matches(c.span_bodies().map(Attributes::of_span)))
            })
            .reduce(AttributeMatches::union)
            .and_then(|m| m.of(set))
    }

    /// `set`'s verdict, read from the spans; for a set without budgets, also checked to be
    /// what it is from the attribute matches gathered as the spans arrived, with the spans
    /// read only when a rule needs more than those.
    fn decide(&self, set: &PolicySet) -> Verdict {
        let read = set.decide(&self.view(&self.batches()), |_| {});
        if set.policies().iter().all(|p| !p.is_stateful()) {
            assert_eq!(read, self.decide_gathered(set), "gathered matches disagree");
        }
        read
    }

    fn decide_gathered(&self, set: &PolicySet) -> Verdict {
        let attributes = self.matches(set);
        assert!(attributes.is_some() || self.chunks.chunks().next().is_none());
        let batches = if set.needs_spans(true) {
            self.batches()
        } else {
            Vec::new()
        };
        let view = TraceView {
            attributes,
            ..self.view(&batches)
        };
        set.decide(&view, |_| {})
    }
}

fn view(id: &TraceId) -> TraceView<'_> {
    TraceView {
        trace_id: id,
        span_count: 3,
        bytes: 100,
        earliest_start: 0,
        latest_end: 0,
        status_codes: StatusCodes::NONE,
        randomness: super::randomness(id, None),
        fleet_size: 1,
        attributes: None,
        batches: &[],
        now: Instant::now(),
    }
}

/// The vote of the single policy in `yaml` on `view`.
fn vote_on(yaml: &str, view: &TraceView<'_>) -> Result<Decision, EvalError> {
    let set = compile(&format!("[{yaml}]"), false).unwrap();
    let mut vote = None;
    set.decide(view, |v| vote = Some(v.decision));
    vote.unwrap()
}

/// The vote of the single policy in `yaml` on `trace`, read from its spans; checked to be
/// the vote from the attribute matches gathered as its spans arrived (by a second,
/// identical set, so that budgets start alike).
fn vote(yaml: &str, trace: &Trace) -> Decision {
    let read = vote_on(yaml, &trace.view(&trace.batches())).unwrap();
    let set = compile(&format!("[{yaml}]"), false).unwrap();
    assert_eq!(
        trace.decide_gathered(&set).decision,
        read,
        "gathered matches disagree"
    );
    read
}

fn value(v: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(v) })
}

fn int(key: &str, i: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value(any_value::Value::IntValue(i)),
        ..Default::default()
    }
}

fn boolean(key: &str, b: bool) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value(any_value::Value::BoolValue(b)),
        ..Default::default()
    }
}

/// A span with these attributes.
fn with(attributes: Vec<KeyValue>) -> Span {
    Span {
        attributes,
        ..span(trace_id(7), 1, None)
    }
}

/// A span lasting from `start_ms` to `end_ms`.
fn timed(start_ms: u64, end_ms: u64) -> Span {
    Span {
        start_time_unix_nano: start_ms * 1_000_000,
        end_time_unix_nano: end_ms * 1_000_000,
        ..span(trace_id(7), 1, None)
    }
}

use Decision::*;

// FNV-1a values computed independently with a short Python script over
// salt bytes ++ testkit::trace_id(n).
#[test]
fn fnv_hash_matches_independent_vectors() {
    let default = Probabilistic::new(10.0, None);
    let salty = Probabilistic::new(10.0, Some("salty"));
    let cases = [
        (
            1,
            1_088_804_993_292_069_460u64,
            5_186_294_729_624_937_993u64,
        ),
        (2, 12_331_169_320_693_776_363, 11_631_924_903_393_727_122),
        (42, 10_458_916_183_824_725_903, 14_023_005_348_152_120_934),
    ];
    for (n, want_default, want_salty) in cases {
        assert_eq!(default.hash(&trace_id(n)), want_default, "trace {n}");
        assert_eq!(salty.hash(&trace_id(n)), want_salty, "trace {n}");
    }
    // An empty salt is the default salt, as in the collector.
    assert_eq!(
        Probabilistic::new(10.0, Some("")).hash(&trace_id(1)),
        cases[0].1
    );
}

// Thresholds computed with exact rational arithmetic: the product rounded to a 64-bit
// mantissa (ties to even), then truncated, as Go's math/big does.
#[test]
fn threshold_matches_big_float_rounding() {
    for (pct, want) in [
        (10.0, 1_844_674_407_370_955_263u64),
        (33.3, 6_142_765_776_545_279_999),
        (50.0, 9_223_372_036_854_775_807),
        (0.1, 18_446_744_073_709_551),
        (1e-9, 184_467_440),
        (99.999, 18_446_559_606_268_813_311),
    ] {
        assert_eq!(threshold(pct / 100.0), want, "{pct}%");
    }
    assert_eq!(threshold(0.0), 0);
    assert_eq!(threshold(1.0), u64::MAX);
}

#[test]
fn probabilistic_decides_on_hash_against_threshold() {
    let p = Probabilistic::new(50.0, None);
    // trace 1 hashes below 2^63, trace 2 above.
    assert_eq!(p.decide(&trace_id(1), 0), Decision::Sampled);
    assert_eq!(p.decide(&trace_id(2), 0), Decision::NotSampled);
    let none = Probabilistic::new(0.0, None);
    assert_eq!(none.decide(&trace_id(1), 0), Decision::NotSampled);
    let all = Probabilistic::new(100.0, None);
    assert_eq!(all.decide(&trace_id(2), 0), Decision::Sampled);
}

#[test]
fn probabilistic_keeps_about_its_share() {
    let p = Probabilistic::new(10.0, None);
    let kept = (0..20_000u64)
        .filter(|n| p.decide(&trace_id(*n), 0) == Decision::Sampled)
        .count();
    assert!(
        (1_700..2_300).contains(&kept),
        "kept {kept} of 20000 at 10%"
    );
}

#[test]
fn sampled_wins_over_not_sampled_and_names_the_first_sampler() {
    let set = compile(
        r#"
- {name: none, type: probabilistic, probabilistic: {sampling_percentage: 0}}
- {name: first, type: always_sample}
- {name: second, type: always_sample}
"#,
        false,
    )
    .unwrap();
    let mut votes = Vec::new();
    let v = set.decide(&view(&trace_id(2)), |vote| {
        votes.push((vote.policy_index, vote.decision))
    });
    assert_eq!(v.decision, Sampled);
    assert_eq!(v.policy.as_deref(), Some("first"));
    assert_eq!(
        votes,
        vec![(0, Ok(NotSampled)), (1, Ok(Sampled)), (2, Ok(Sampled))]
    );
}

#[test]
fn sample_on_first_match_stops_at_the_first_sampled() {
    let set = compile(
        "[{name: a, type: always_sample}, {name: b, type: always_sample}]",
        true,
    )
    .unwrap();
    let mut count = 0;
    let v = set.decide(&view(&trace_id(1)), |_| count += 1);
    assert_eq!(v.decision, Sampled);
    assert_eq!(count, 1);
}

#[test]
fn drop_policies_run_first_and_win() {
    let set = compile(
        r#"
- {name: keep, type: always_sample}
- name: drop-all
  type: drop
  drop: {drop_sub_policy: [{name: any, type: always_sample}]}
"#,
        true,
    )
    .unwrap();
    assert_eq!(&*set.policies()[0].name, "drop-all");
    let v = set.decide(&view(&trace_id(1)), |_| {});
    assert_eq!(v.decision, Dropped);
    assert_eq!(v.policy.as_deref(), Some("drop-all"));
}

#[test]
fn latency_is_exclusive_below_and_inclusive_above_on_the_whole_trace() {
    let p = "{name: p, type: latency, latency: {threshold_ms: 100}}";
    assert_eq!(vote(p, &Trace::spans(vec![timed(0, 100)])), NotSampled);
    assert_eq!(vote(p, &Trace::spans(vec![timed(0, 101)])), Sampled);
    let bounded = "{name: p, type: latency, latency: {threshold_ms: 100, upper_threshold_ms: 200}}";
    assert_eq!(vote(bounded, &Trace::spans(vec![timed(0, 200)])), Sampled);
    assert_eq!(
        vote(bounded, &Trace::spans(vec![timed(0, 201)])),
        NotSampled
    );
    // The first span alone (150 ms) is in range, the whole trace (300 ms) is not: the
    // collector samples this trace (#43948), tailgate does not.
    let partial = Trace::spans(vec![timed(0, 150), timed(100, 300)]);
    assert_eq!(vote(bounded, &partial), NotSampled);
}

#[test]
fn numeric_attribute_bounds_coercions_and_inversion() {
    let p = "{name: p, type: numeric_attribute, numeric_attribute: {key: n, min_value: 10, max_value: 20}}";
    for (v, want) in [
        (9, NotSampled),
        (10, Sampled),
        (20, Sampled),
        (21, NotSampled),
    ] {
        assert_eq!(
            vote(p, &Trace::spans(vec![with(vec![int("n", v)])])),
            want,
            "{v}"
        );
    }
    // Resource attributes count too.
    assert_eq!(
        vote(
            p,
            &Trace::new(vec![(vec![int("n", 15)], vec![with(vec![])])])
        ),
        Sampled
    );
    assert_eq!(
        vote(p, &Trace::spans(vec![with(vec![])])),
        NotSampled,
        "missing key"
    );
    // 0 means unset: only a maximum here. A string value reads as 0, as in pdata.
    let max_only = "{name: p, type: numeric_attribute, numeric_attribute: {key: n, max_value: 5}}";
    assert_eq!(
        vote(max_only, &Trace::spans(vec![with(vec![int("n", -1000)])])),
        Sampled
    );
    assert_eq!(
        vote(max_only, &Trace::spans(vec![with(vec![kv("n", "text")])])),
        Sampled
    );
    let inverted = "{name: p, type: numeric_attribute, numeric_attribute: {key: n, min_value: 10, max_value: 20, invert_match: true}}";
    assert_eq!(
        vote(inverted, &Trace::spans(vec![with(vec![int("n", 15)])])),
        NotSampled
    );
    assert_eq!(
        vote(inverted, &Trace::spans(vec![with(vec![int("n", 50)])])),
        Sampled
    );
}

#[test]
fn status_code_matches_any_span() {
    let p = "{name: p, type: status_code, status_code: {status_codes: [ERROR]}}";
    let error = Span {
        status: Some(Status {
            code: 2,
            ..Default::default()
        }),
        ..with(vec![])
    };
    assert_eq!(vote(p, &Trace::spans(vec![with(vec![]), error])), Sampled);
    assert_eq!(vote(p, &Trace::spans(vec![with(vec![])])), NotSampled);
    // A span without a status is UNSET.
    let unset = "{name: p, type: status_code, status_code: {status_codes: [UNSET]}}";
    assert_eq!(vote(unset, &Trace::spans(vec![with(vec![])])), Sampled);
}

#[test]
fn string_attribute_exact_regex_and_inverted() {
    let exact = "{name: p, type: string_attribute, string_attribute: {key: route, values: [/health, /ready]}}";
    assert_eq!(
        vote(
            exact,
            &Trace::spans(vec![with(vec![kv("route", "/health")])])
        ),
        Sampled
    );
    assert_eq!(
        vote(
            exact,
            &Trace::spans(vec![with(vec![kv("route", "/healthz")])])
        ),
        NotSampled
    );
    assert_eq!(
        vote(exact, &Trace::spans(vec![with(vec![int("route", 1)])])),
        NotSampled
    );
    // Regexes match substrings, as Go's MatchString does.
    let regex = "{name: p, type: string_attribute, string_attribute: {key: route, values: [health], enabled_regex_matching: true, cache_max_size: 2}}";
    for _ in 0..3 {
        assert_eq!(
            vote(
                regex,
                &Trace::spans(vec![with(vec![kv("route", "/api/healthz")])])
            ),
            Sampled
        );
    }
    // An empty span value never matches; an empty resource value may.
    let anything = "{name: p, type: string_attribute, string_attribute: {key: k, values: ['.*'], enabled_regex_matching: true}}";
    assert_eq!(
        vote(anything, &Trace::spans(vec![with(vec![kv("k", "")])])),
        NotSampled
    );
    assert_eq!(
        vote(
            anything,
            &Trace::new(vec![(vec![kv("k", "")], vec![with(vec![])])])
        ),
        Sampled
    );
    let inverted = "{name: p, type: string_attribute, string_attribute: {key: route, values: [/health], invert_match: true}}";
    assert_eq!(
        vote(
            inverted,
            &Trace::spans(vec![with(vec![kv("route", "/health")])])
        ),
        NotSampled
    );
    assert_eq!(
        vote(
            inverted,
            &Trace::spans(vec![with(vec![kv("route", "/api")])])
        ),
        Sampled
    );
    assert_eq!(vote(inverted, &Trace::spans(vec![with(vec![])])), Sampled);
}

#[test]
fn boolean_attribute_with_the_pdata_quirk() {
    let t = "{name: p, type: boolean_attribute, boolean_attribute: {key: b, value: true}}";
    assert_eq!(
        vote(t, &Trace::spans(vec![with(vec![boolean("b", true)])])),
        Sampled
    );
    assert_eq!(
        vote(t, &Trace::spans(vec![with(vec![boolean("b", false)])])),
        NotSampled
    );
    // `value: false` matches a key of another type, whose Bool() is false.
    let f = "{name: p, type: boolean_attribute, boolean_attribute: {key: b, value: false}}";
    assert_eq!(
        vote(f, &Trace::spans(vec![with(vec![kv("b", "yes")])])),
        Sampled
    );
    assert_eq!(vote(f, &Trace::spans(vec![with(vec![])])), NotSampled);
    let inv = "{name: p, type: boolean_attribute, boolean_attribute: {key: b, value: true, invert_match: true}}";
    assert_eq!(
        vote(inv, &Trace::spans(vec![with(vec![boolean("b", true)])])),
        NotSampled
    );
}

#[test]
fn span_count_trace_state_and_trace_flags() {
    let count = "{name: p, type: span_count, span_count: {min_spans: 2, max_spans: 3}}";
    for (n, want) in [(1, NotSampled), (2, Sampled), (3, Sampled), (4, NotSampled)] {
        assert_eq!(
            vote(count, &Trace::spans(vec![with(vec![]); n])),
            want,
            "{n} spans"
        );
    }
    let open = "{name: p, type: span_count, span_count: {min_spans: 2}}";
    assert_eq!(vote(open, &Trace::spans(vec![with(vec![]); 100])), Sampled);

    let state = "{name: p, type: trace_state, trace_state: {key: vendor, values: [gold, silver]}}";
    let traced = |ts: &str| Span {
        trace_state: ts.into(),
        ..with(vec![])
    };
    assert_eq!(
        vote(state, &Trace::spans(vec![traced("a=1, vendor=gold")])),
        Sampled
    );
    assert_eq!(
        vote(state, &Trace::spans(vec![traced("vendor=bronze")])),
        NotSampled
    );
    assert_eq!(vote(state, &Trace::spans(vec![traced("")])), NotSampled);

    let flags = "{name: p, type: trace_flags}";
    let flagged = Span {
        flags: 0x101,
        ..with(vec![])
    };
    assert_eq!(
        vote(flags, &Trace::spans(vec![with(vec![]), flagged])),
        Sampled
    );
    assert_eq!(vote(flags, &Trace::spans(vec![with(vec![])])), NotSampled);
}

#[test]
fn rate_limiting_is_a_token_bucket_that_refills() {
    let set = compile(
        "[{name: p, type: rate_limiting, rate_limiting: {spans_per_second: 10}}]",
        false,
    )
    .unwrap();
    let t0 = Instant::now();
    let mut trace = Trace::spans(vec![with(vec![]); 8]);
    let decide = |trace: &Trace| trace.decide(&set).decision;
    // The bucket starts full at the default burst of 2 x 10.
    trace.now = t0;
    assert_eq!(decide(&trace), Sampled);
    assert_eq!(decide(&trace), Sampled);
    assert_eq!(decide(&trace), NotSampled, "4 tokens left, 8 asked");
    trace.now = t0 + Duration::from_millis(400);
    assert_eq!(decide(&trace), Sampled, "refilled to 8");
    assert_eq!(decide(&trace), NotSampled);
    // More spans than the burst never pass.
    let mut huge = Trace::spans(vec![with(vec![]); 21]);
    huge.now = t0 + Duration::from_secs(60);
    assert_eq!(decide(&huge), NotSampled);
}

#[test]
fn bytes_limiting_counts_trace_bytes() {
    let set = compile(
        "[{name: p, type: bytes_limiting, bytes_limiting: {bytes_per_second: 100, burst_capacity: 150}}]",
        false,
    )
    .unwrap();
    let mut trace = Trace::spans(vec![with(vec![])]);
    trace.bytes = 100;
    assert_eq!(trace.decide(&set).decision, Sampled);
    assert_eq!(trace.decide(&set).decision, NotSampled);
    trace.now += Duration::from_millis(500);
    assert_eq!(trace.decide(&set).decision, Sampled);
}

#[test]
fn and_drop_and_not_combine_sub_policies() {
    let t = Trace::spans(vec![with(vec![kv("route", "/health")])]);
    let health =
        "{name: h, type: string_attribute, string_attribute: {key: route, values: [/health]}}";
    let never = "{name: n, type: probabilistic, probabilistic: {sampling_percentage: 0}}";
    let and = |subs: &str| format!("{{name: p, type: and, and: {{and_sub_policy: [{subs}]}}}}");
    assert_eq!(
        vote(
            &and(&format!("{health}, {{name: a, type: always_sample}}")),
            &t
        ),
        Sampled
    );
    assert_eq!(vote(&and(&format!("{health}, {never}")), &t), NotSampled);
    let drop = |subs: &str| format!("{{name: p, type: drop, drop: {{drop_sub_policy: [{subs}]}}}}");
    assert_eq!(vote(&drop(health), &t), Dropped);
    assert_eq!(vote(&drop(&format!("{health}, {never}")), &t), NotSampled);
    let not = |sub: &str| format!("{{name: p, type: not, not: {{not_sub_policy: {sub}}}}}");
    assert_eq!(vote(&not(health), &t), NotSampled);
    assert_eq!(vote(&not(never), &t), Sampled);
    // An inverted match inside `and` votes NotSampled.
    let inv = "{name: i, type: string_attribute, string_attribute: {key: route, values: [/health], invert_match: true}}";
    assert_eq!(vote(&and(inv), &t), NotSampled);
}

#[test]
fn a_composite_may_hold_an_and_and_string_values_may_be_empty() {
    // Both accepted as the collector accepts them; an `and` inside that `and` is not.
    let yaml = r#"[{name: c, type: composite, composite: {
        max_total_spans_per_second: 100,
        policy_order: [both],
        composite_sub_policy: [
          {name: both, type: and, and: {and_sub_policy: [
            {name: gold, type: string_attribute, string_attribute: {key: tier, values: [gold]}},
            {name: none, type: string_attribute, string_attribute: {key: tier, values: [], invert_match: true}}]}}]}}]"#;
    let set = compile(yaml, false).unwrap();
    let gold = Trace::spans(vec![with(vec![kv("tier", "gold")])]);
    let v = gold.decide(&set);
    assert_eq!(
        (v.decision, v.composite_policy.as_deref()),
        (Sampled, Some("both"))
    );
    let tin = Trace::spans(vec![with(vec![kv("tier", "tin")])]);
    assert_eq!(tin.decide(&set).decision, NotSampled);
    // No value at all matches nothing.
    let empty = "{name: p, type: string_attribute, string_attribute: {key: tier, values: []}}";
    assert_eq!(vote(empty, &gold), NotSampled);
    let nested = r#"[{name: c, type: composite, composite: {
        max_total_spans_per_second: 100,
        composite_sub_policy: [
          {name: a, type: and, and: {and_sub_policy: [{name: b, type: and, and: {and_sub_policy: [{name: x, type: always_sample}]}}]}},
          {name: d, type: drop, drop: {drop_sub_policy: [{name: y, type: always_sample}]}}]}}]"#;
    let err = compile(nested, false).unwrap_err();
    for want in [
        "composite_sub_policy[0].and.and_sub_policy[0].type: and cannot be nested",
        "composite_sub_policy[1].type: drop cannot be nested",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn composite_follows_policy_order_and_falls_through_budgets() {
    let yaml = r#"[{name: c, type: composite, composite: {
        max_total_spans_per_second: 10,
        policy_order: [second, first],
        composite_sub_policy: [
          {name: first, type: always_sample},
          {name: second, type: string_attribute, string_attribute: {key: tier, values: [gold]}}],
        rate_allocation: [{policy: second, percent: 40}]}}]"#;
    let set = compile(yaml, false).unwrap();
    let t0 = Instant::now();
    let mut gold = Trace::spans(vec![with(vec![kv("tier", "gold")]); 3]);
    gold.now = t0;
    let decide = |t: &Trace| t.decide(&set);
    // `second` comes first by policy_order and has 4 spans/s.
    let v = decide(&gold);
    assert_eq!(
        (v.decision, v.composite_policy.as_deref()),
        (Sampled, Some("second"))
    );
    // Over its budget, the trace falls through to `first`, which got what was left (6).
    let v = decide(&gold);
    assert_eq!(
        (v.decision, v.composite_policy.as_deref()),
        (Sampled, Some("first"))
    );
    assert_eq!(v.policy.as_deref(), Some("c"));
    let v = decide(&gold);
    assert_eq!(
        (v.decision, v.composite_policy.as_deref()),
        (Sampled, Some("first"))
    );
    // 9 of the 10 total spent: nobody can take 3 more this second.
    assert_eq!(decide(&gold).decision, NotSampled);
    // A new second resets every budget.
    gold.now = t0 + Duration::from_secs(1);
    assert_eq!(decide(&gold).composite_policy.as_deref(), Some("second"));
}

/// Attribute matches hold 64 conditions; the ones after them are read from the spans.
#[test]
fn conditions_past_the_64_gathered_are_read_from_the_spans() {
    let yaml: Vec<String> = (0..66)
        .map(|i| format!("- {{name: p{i}, type: string_attribute, string_attribute: {{key: k{i}, values: [x]}}}}"))
        .collect();
    let set = compile(&yaml.join("\n"), false).unwrap();
    assert!(set.needs_spans(true));
    for i in [0, 63, 64, 65] {
        let mut s = span(trace_id(1), 1, None);
        s.attributes.push(kv(&format!("k{i}"), "x"));
        let trace = Trace::spans(vec![s]);
        let found = trace.matches(&set).unwrap();
        assert_eq!(found, if i < 64 { 1 << i } else { 0 }, "k{i}");
        let verdict = trace.decide(&set);
        assert_eq!(verdict.decision, Sampled);
        assert_eq!(verdict.policy.as_deref(), Some(format!("p{i}").as_str()));
    }
}

/// Matches gathered under one policy set say nothing for another, even an identical one
/// (a reload compiles a new set): its conditions may sit in other slots.
#[test]
fn matches_belong_to_the_set_that_gathered_them() {
    let yaml = "[{name: p, type: string_attribute, string_attribute: {key: k, values: [x]}}]";
    let (a, b) = (compile(yaml, false).unwrap(), compile(yaml, false).unwrap());
    let mut s = span(trace_id(1), 1, None);
    s.attributes.push(kv("k", "x"));
    let trace = Trace::spans(vec![s]);
    assert_eq!(trace.matches(&a), Some(1));
    let chunk = trace.chunks.chunks().next().unwrap();
    let of_a = a.span_matches(chunk.span_bodies().map(Attributes::of_span));
    assert_eq!(of_a.of(&a), Some(1));
    assert_eq!(of_a.of(&b), None);
    let of_b = b.resource_matches(&chunk.head.resource_attributes());
    assert_eq!(of_a.union(of_b), AttributeMatches::UNKNOWN);
    assert_eq!(AttributeMatches::UNKNOWN.of(&a), None);
}

#[test]
fn invert_match_votes_plainly() {
    // As in the collector since its inverted votes were removed: an inverted match is a
    // plain NotSampled (another policy's Sampled still keeps the trace), an inverted miss a
    // plain Sampled (another policy's NotSampled does not stop it).
    let t = Trace::spans(vec![with(vec![kv("route", "/health")])]);
    let inv_hit = "{name: inv, type: string_attribute, string_attribute: {key: route, values: [/health], invert_match: true}}";
    let inv_miss = "{name: inv, type: string_attribute, string_attribute: {key: route, values: [/x], invert_match: true}}";
    let always = "{name: all, type: always_sample}";
    let never = "{name: never, type: probabilistic, probabilistic: {sampling_percentage: 0}}";
    let decide = |policies: &str| t.decide(&compile(&format!("[{policies}]"), false).unwrap());
    let v = decide(&format!("{always}, {inv_hit}"));
    assert_eq!((v.decision, v.policy.as_deref()), (Sampled, Some("all")));
    assert_eq!(decide(inv_hit).decision, NotSampled);
    let v = decide(&format!("{never}, {inv_miss}"));
    assert_eq!((v.decision, v.policy.as_deref()), (Sampled, Some("inv")));
}

#[test]
fn an_erroring_policy_abstains() {
    let set = compile(
        "[{name: s, type: ottl_condition, ottl_condition: {error_mode: propagate, span: [name]}}, {name: all, type: always_sample}]",
        false,
    )
    .unwrap();
    let t = Trace::spans(vec![with(vec![])]);
    let mut votes = Vec::new();
    let v = set.decide(&t.view(&t.batches()), |vote| votes.push(vote.decision));
    assert_eq!(votes, vec![Err(EvalError::Condition), Ok(Sampled)]);
    assert_eq!(v.policy.as_deref(), Some("all"));
}

#[test]
fn config_errors_carry_their_paths() {
    let err = compile(
        r#"
- {name: a, type: probabilistic, probabilistic: {sampling_percentage: 150}}
- {name: a, type: always_sample}
- {name: c, type: latency, latency: {threshold_ms: 100, upper_threshold_ms: 50}}
- {name: d, type: nonsense}
- {name: e, type: always_sample, bogus: 1}
- {name: f, type: probabilistic, probabilistic: {sampling_percent: 5}}
- {name: g, type: drop, drop: {drop_sub_policy: []}}
- {name: h, type: status_code, status_code: {status_codes: [ERROR, FATAL]}}
- {name: i, type: string_attribute, string_attribute: {key: k, values: ['(unclosed'], enabled_regex_matching: true}}
- {name: j, type: numeric_attribute, numeric_attribute: {key: k}}
- {name: k, type: rate_limiting, rate_limiting: {spans_per_second: 0}}
- {name: l, type: and, and: {and_sub_policy: [{name: '', type: always_sample}, {name: x, type: composite}]}}
- name: m
  type: composite
  composite:
    max_total_spans_per_second: 100
    policy_order: [one, nobody]
    composite_sub_policy: [{name: one, type: always_sample}]
    rate_allocation: [{policy: ghost, percent: 10}]
- {name: n, type: ottl_condition, ottl_condition: {span: ['name == "x"', 'nmae == "x"']}}
"#,
        false,
    )
    .unwrap_err();
    for want in [
        "tail_sampling.policies[0].probabilistic.sampling_percentage: 150 is not between 0 and 100",
        "tail_sampling.policies[1].name: duplicate policy name \"a\"",
        "tail_sampling.policies[2].latency.upper_threshold_ms: must be greater than threshold_ms",
        "tail_sampling.policies[3].type: unknown policy type \"nonsense\"",
        "tail_sampling.policies[4].bogus: unknown field",
        "tail_sampling.policies[5].probabilistic.sampling_percent: unknown field",
        "tail_sampling.policies[6].drop.drop_sub_policy: needs at least one sub-policy",
        "tail_sampling.policies[7].status_code.status_codes[1]: unknown status code \"FATAL\"",
        "tail_sampling.policies[8].string_attribute.values[0]: invalid regex",
        "tail_sampling.policies[9].numeric_attribute: set min_value, max_value or both",
        "tail_sampling.policies[10].rate_limiting.spans_per_second: must be greater than 0",
        "tail_sampling.policies[11].and.and_sub_policy[0].name: must not be empty",
        "tail_sampling.policies[11].and.and_sub_policy[1].type: composite cannot be nested",
        "tail_sampling.policies[12].composite.rate_allocation[0].policy: \"ghost\" is not a composite_sub_policy",
        "tail_sampling.policies[12].composite.policy_order[1]: \"nobody\" is not a composite_sub_policy",
        "tail_sampling.policies[13].ottl_condition.span[1]: column 1: unknown path \"nmae\" for span conditions",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn the_collectors_full_example_compiles() {
    let set = compile(
        r#"
- {name: test-policy-1, type: always_sample}
- {name: test-policy-2, type: latency, latency: {threshold_ms: 5000}}
- {name: test-policy-3, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50, max_value: 100}}
- {name: test-policy-4, type: probabilistic, probabilistic: {hash_salt: "custom-salt", sampling_percentage: 0.1}}
- {name: test-policy-5, type: status_code, status_code: {status_codes: [ERROR, UNSET]}}
- {name: test-policy-6, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]}}
- {name: test-policy-7, type: rate_limiting, rate_limiting: {spans_per_second: 35}}
- {name: test-policy-8, type: span_count, span_count: {min_spans: 2, max_spans: 20}}
- {name: test-policy-9, type: trace_state, trace_state: {key: key3, values: [value1, value2]}}
- {name: test-policy-10, type: boolean_attribute, boolean_attribute: {key: key4, value: true}}
- {name: test-policy-11, type: ottl_condition, ottl_condition: {
    error_mode: ignore,
    span: ["attributes[\"test_attr_key_1\"] == \"test_attr_val_1\"", "attributes[\"test_attr_key_2\"] != \"test_attr_val_1\""],
    spanevent: ["name != \"test_span_event_name\"", "attributes[\"test_event_attr_key_2\"] != \"test_event_attr_val_1\""]}}
- {name: volume-control, type: bytes_limiting, bytes_limiting: {bytes_per_second: 1024000, burst_capacity: 2048000}}
- {name: and-policy-1, type: and, and: {and_sub_policy: [
    {name: test-and-policy-1, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50, max_value: 100}},
    {name: test-and-policy-2, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]}}]}}
- {name: drop-policy-1, type: drop, drop: {drop_sub_policy: [
    {name: test-drop-policy-1, type: string_attribute, string_attribute: {key: url.path, values: [\/health, \/metrics], enabled_regex_matching: true}}]}}
- {name: composite-policy-1, type: composite, composite: {
    max_total_spans_per_second: 1000,
    policy_order: [test-composite-policy-1, test-composite-policy-2, test-composite-policy-3],
    composite_sub_policy: [
      {name: test-composite-policy-1, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50, max_value: 100}},
      {name: test-composite-policy-2, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]}},
      {name: test-composite-policy-3, type: always_sample}],
    rate_allocation: [{policy: test-composite-policy-1, percent: 50}, {policy: test-composite-policy-2, percent: 25}]}}
- {name: not-policy, type: not, not: {not_sub_policy: {name: n, type: trace_flags}}}
"#,
        false,
    )
    .unwrap();
    assert_eq!(set.policies().len(), 16);
    assert_eq!(&*set.policies()[0].name, "drop-policy-1");
}

#[test]
fn status_codes_keep_the_three_nameable_codes() {
    let codes = StatusCodes::NONE.with(2).with(7).with(-1);
    assert!(codes.contains(2));
    assert!(!codes.contains(0) && !codes.contains(1) && !codes.contains(7));
    let both = codes.union(StatusCodes::NONE.with(0));
    assert!(both.contains(0) && both.contains(2) && !both.contains(1));
}

mod chances {
    use super::super::Chance;
    use crate::otlp::tracestate::Threshold;

    fn th(hex: &str) -> Option<Threshold> {
        Threshold::parse(hex)
    }

    #[test]
    fn any_of_several_draws_keeps() {
        // 50 % independent or 25 % consistent: 1 - 0.5 * 0.75.
        let both = Chance::independent(0.5).either(Chance::consistent(th("c")));
        assert_eq!(both.probability_given(1.0), Some(0.625));
        assert_eq!(
            Chance::ALWAYS
                .either(Chance::independent(0.1))
                .probability_given(1.0),
            Some(1.0)
        );
        assert_eq!(Chance::NEVER.probability_given(1.0), Some(0.0));
        assert_eq!(both.either(Chance::Unknown), Chance::Unknown);
        // Two consistent draws: the lower threshold decides.
        let c = Chance::consistent(th("8")).either(Chance::consistent(th("c")));
        assert_eq!(c, Chance::consistent(th("8")));
        // Both must keep: consistent ones by the higher threshold, others multiply.
        assert_eq!(
            Chance::consistent(th("8")).both(Chance::consistent(th("c"))),
            Chance::consistent(th("c"))
        );
        assert_eq!(
            Chance::independent(0.5)
                .both(Chance::consistent(th("8")))
                .probability_given(1.0),
            Some(0.25)
        );
    }

    #[test]
    fn thresholds_compose_with_the_incoming_one_and_are_never_lowered() {
        // Certain: the incoming threshold stays; none incoming is th:0.
        assert_eq!(Chance::ALWAYS.threshold_after(th("8")), th("8"));
        assert_eq!(Chance::ALWAYS.threshold_after(None), th("0"));
        // Consistent after consistent: the larger threshold.
        assert_eq!(
            Chance::consistent(th("c")).threshold_after(th("8")),
            th("c")
        );
        assert_eq!(
            Chance::consistent(th("8")).threshold_after(th("c")),
            th("c")
        );
        // Independent after consistent: 50 % of 50 % is 25 %.
        assert_eq!(Chance::independent(0.5).threshold_after(th("8")), th("c"));
        assert_eq!(Chance::independent(0.5).threshold_after(None), th("8"));
        // Unknown erases.
        assert_eq!(Chance::Unknown.threshold_after(th("8")), None);
    }
}

mod adaptive {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::super::{randomness, Decision, PolicySet, StatusCodes, TraceView};
    use crate::config::Errors;

    /// A trace id with random-looking bits, as real ones have (the randomness is the low
    /// 56 bits).
    fn random_id(n: u64) -> [u8; 16] {
        let mix = |mut z: u64| {
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&mix(n).to_be_bytes());
        id[8..].copy_from_slice(&mix(n ^ 0x5555_5555).to_be_bytes());
        id
    }

    fn compile(yaml: &str) -> PolicySet {
        let mut errors = Errors::default();
        let values: Vec<serde_yaml::Value> = serde_yaml::from_str(yaml).unwrap();
        let set = PolicySet::compile(&values, "p", false, &mut errors);
        errors.check().unwrap();
        set
    }

    /// Kept spans per 1 s interval (and kept traces by size) for traces whose span counts
    /// cycle through `sizes` (the keys, with `use_trace_length`), in phases of
    /// (traces per interval, intervals) on one timeline.
    fn kept_per_interval(
        set: &PolicySet,
        sizes: &[u64],
        phases: &[(u64, u64)],
        fleet: usize,
        clump_ms: u64,
    ) -> Vec<(u64, Vec<u64>)> {
        let start = Instant::now();
        let mut n = 0;
        let mut second = 0;
        let mut out = Vec::new();
        for &(traces, intervals) in phases {
            for _ in 0..intervals {
                let mut kept = 0;
                let mut kept_by_size = vec![0; sizes.len()];
                for j in 0..traces {
                    n += 1;
                    let id = random_id(n);
                    let size_index = (j as usize * 7919) % sizes.len();
                    let span_count = sizes[size_index];
                    let view = TraceView {
                        trace_id: &id,
                        span_count,
                        bytes: 0,
                        earliest_start: 0,
                        latest_end: 0,
                        status_codes: StatusCodes::NONE,
                        randomness: randomness(&id, None),
                        fleet_size: fleet,
                        attributes: None,
                        batches: &[],
                        now: start
                            + Duration::from_millis(
                                second * 1000 + (j * 1000 / traces) / clump_ms * clump_ms,
                            ),
                    };
                    if set.decide(&view, |_| {}).decision == Decision::Sampled {
                        kept += span_count;
                        kept_by_size[size_index] += 1;
                    }
                }
                second += 1;
                out.push((kept, kept_by_size));
            }
        }
        out
    }

    fn mean(runs: &[(u64, Vec<u64>)]) -> f64 {
        runs.iter().map(|r| r.0).sum::<u64>() as f64 / runs.len() as f64
    }

    #[test]
    fn ema_throughput_holds_the_goal_and_keeps_rare_keys() {
        let set = compile(
            "[{name: a, type: ema_throughput, ema_throughput: {goal_throughput_per_sec: 500, adjustment_interval: 1s, use_trace_length: true}}]",
        );
        // 2 000 traces a second, most of them small: about 10 400 spans/s, 20 x the goal.
        let sizes = [1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 3, 5, 8, 13, 40];
        let runs = kept_per_interval(&set, &sizes, &[(2000, 12)], 1, 1);
        // The first interval keeps everything (no averages yet); after three intervals of
        // warm-up the kept volume is the goal within 15 % (an interval alone varies more:
        // the large traces are few).
        assert!(runs[0].0 > 10_000);
        assert!((425.0..=575.0).contains(&mean(&runs[3..])), "{runs:?}");
        // Every key keeps traces, the rare 40-span ones included.
        let mut by_size = vec![0; sizes.len()];
        for (_, kept) in &runs[3..] {
            for (total, k) in by_size.iter_mut().zip(kept) {
                *total += k;
            }
        }
        assert!(by_size.iter().all(|k| *k > 0), "{by_size:?}");
        // Two workers share the goal.
        let set = compile(
            "[{name: a, type: ema_throughput, ema_throughput: {goal_throughput_per_sec: 500, adjustment_interval: 1s, use_trace_length: true}}]",
        );
        let runs = kept_per_interval(&set, &sizes, &[(2000, 12)], 2, 1);
        assert!((212.0..=288.0).contains(&mean(&runs[3..])), "{runs:?}");
    }

    /// After warm-up, every two seconds keep the goal within 15 % while the input goes
    /// up threefold and back down, the seconds of the changes included: a change is seen
    /// within two probes, the rates are set for the new volume at once, and what the old
    /// rates kept beyond the goal meanwhile is made good. With intervals of one second (the
    /// changes at their start) and of 1.3 s (the changes part way through one), and with
    /// traces reaching the policy evenly or in clumps of 100 and 200 ms, as they do when
    /// requests bring many traces at once (a tenth and a fifth of an interval: worse than
    /// real runs, whose intervals are longer).
    #[test]
    fn ema_throughput_follows_the_input_rate_up_and_down_threefold() {
        for (interval, clump_ms) in [("1s", 1), ("1300ms", 1), ("1s", 100), ("1300ms", 200)] {
            let set = compile(&format!(
                "[{{name: a, type: ema_throughput, ema_throughput: {{goal_throughput_per_sec: 2000, adjustment_interval: {interval}, use_trace_length: true}}}}]",
            ));
            // About 8 000 spans a second, then 24 000, then 8 000 again: 4 and 12 times the
            // goal; some 700 kept traces a second, so that two seconds vary by about 3 %.
            let sizes = [1, 1, 1, 1, 2, 2, 3, 5, 8];
            let runs = kept_per_interval(
                &set,
                &sizes,
                &[(3000, 10), (9000, 10), (3000, 10)],
                1,
                clump_ms,
            );
            let kept: Vec<u64> = runs.iter().map(|r| r.0).collect();
            for (i, pair) in runs[4..].chunks(2).enumerate() {
                let m = mean(pair);
                assert!(
                    (1700.0..=2300.0).contains(&m),
                    "{interval}, clumps of {clump_ms} ms: seconds {}-{}: {m} ({kept:?})",
                    4 + 2 * i,
                    5 + 2 * i,
                );
            }
        }
    }

    #[test]
    fn ema_dynamic_keeps_one_in_the_goal_rate() {
        let set = compile(
            "[{name: a, type: ema_dynamic, ema_dynamic: {goal_sample_rate: 10, adjustment_interval: 1s, use_trace_length: true}}]",
        );
        let sizes = [1, 1, 1, 1, 2, 2, 3, 5];
        let runs = kept_per_interval(&set, &sizes, &[(2000, 10)], 1, 1);
        let total: u64 = (0..2000).map(|j| sizes[(j * 7919) % sizes.len()]).sum();
        let kept: u64 = runs[3..].iter().map(|r| r.0).sum();
        // About one in ten: rates round up, rare keys keep more.
        let share = kept as f64 / (total * 7) as f64;
        assert!((0.07..0.15).contains(&share), "kept {share} of the spans");
    }

    #[test]
    fn adaptive_config_errors_carry_their_paths() {
        let mut errors = Errors::default();
        let values: Vec<serde_yaml::Value> = serde_yaml::from_str(
            "[{name: a, type: ema_throughput, ema_throughput: {goal_sample_rate: 5, weight: 2}}, {name: b, type: ema_dynamic, ema_dynamic: {goal_sample_rate: 0}}, {name: c, type: and, and: {and_sub_policy: [{name: d, type: ema_dynamic, ema_dynamic: {goal_sample_rate: 4}}]}}]",
        )
        .unwrap();
        PolicySet::compile(&values, "p", false, &mut errors);
        let text = errors.check().unwrap_err().to_string();
        for want in [
            "p[0].ema_throughput.goal_sample_rate: belongs to the other adaptive policy type",
            "p[0].ema_throughput.goal_throughput_per_sec: is required",
            "p[1].ema_dynamic.goal_sample_rate: must be at least 1",
            "p[2].and.and_sub_policy[0].type: ema_dynamic cannot be nested",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }
}

mod upstream;
