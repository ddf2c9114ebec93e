use super::probabilistic::threshold;
use super::*;
use crate::config::Errors;
use crate::testkit::trace_id;

fn compile(yaml: &str, first_match: bool) -> Result<PolicySet, String> {
    let values: Vec<serde_yaml::Value> = serde_yaml::from_str(yaml).unwrap();
    let mut errors = Errors::default();
    let set = PolicySet::compile(&values, "tail_sampling.policies", first_match, &mut errors);
    errors.check().map(|_| set).map_err(|e| e.to_string())
}

fn view(id: &TraceId) -> TraceView<'_> {
    TraceView {
        trace_id: id,
        span_count: 3,
    }
}

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
    assert_eq!(p.decide(&trace_id(1)), Decision::Sampled);
    assert_eq!(p.decide(&trace_id(2)), Decision::NotSampled);
    let none = Probabilistic::new(0.0, None);
    assert_eq!(none.decide(&trace_id(1)), Decision::NotSampled);
    let all = Probabilistic::new(100.0, None);
    assert_eq!(all.decide(&trace_id(2)), Decision::Sampled);
}

#[test]
fn probabilistic_keeps_about_its_share() {
    let p = Probabilistic::new(10.0, None);
    let kept = (0..20_000u64)
        .filter(|n| p.decide(&trace_id(*n)) == Decision::Sampled)
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
    assert_eq!(v.decision, Decision::Sampled);
    assert_eq!(v.policy.as_deref(), Some("first"));
    assert_eq!(
        votes,
        vec![
            (0, Decision::NotSampled),
            (1, Decision::Sampled),
            (2, Decision::Sampled)
        ]
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
    assert_eq!(v.decision, Decision::Sampled);
    assert_eq!(count, 1);
}

#[test]
fn nothing_sampled_is_not_sampled_without_a_policy() {
    let set = compile(
        "[{name: none, type: probabilistic, probabilistic: {sampling_percentage: 0}}]",
        false,
    )
    .unwrap();
    let v = set.decide(&view(&trace_id(2)), |_| {});
    assert_eq!(
        v,
        Verdict {
            decision: Decision::NotSampled,
            policy: None
        }
    );
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
    assert_eq!(v.decision, Decision::Dropped);
    assert_eq!(v.policy.as_deref(), Some("drop-all"));
}

#[test]
fn drop_that_does_not_match_lets_others_decide() {
    let set = compile(
        r#"
- name: drop-none
  type: drop
  drop: {drop_sub_policy: [{name: never, type: probabilistic, probabilistic: {sampling_percentage: 0}}]}
- {name: keep, type: always_sample}
"#,
        false,
    )
    .unwrap();
    assert_eq!(
        set.decide(&view(&trace_id(2)), |_| {}).decision,
        Decision::Sampled
    );
}

#[test]
fn config_errors_carry_their_paths() {
    let err = compile(
        r#"
- {name: a, type: probabilistic, probabilistic: {sampling_percentage: 150}}
- {name: a, type: always_sample}
- {name: c, type: latency, latency: {threshold_ms: 100}}
- {name: d, type: nonsense}
- {name: e, type: always_sample, bogus: 1}
- {name: f, type: probabilistic, probabilistic: {sampling_percent: 5}}
- {name: g, type: drop, drop: {drop_sub_policy: []}}
"#,
        false,
    )
    .unwrap_err();
    for want in [
        "tail_sampling.policies[0].probabilistic.sampling_percentage: 150 is not between 0 and 100",
        "tail_sampling.policies[1].name: duplicate policy name \"a\"",
        "tail_sampling.policies[2].type: policy type \"latency\" is not supported here yet",
        "tail_sampling.policies[3].type: unknown policy type \"nonsense\"",
        "tail_sampling.policies[4].bogus: unknown field",
        "tail_sampling.policies[5]",
        "sampling_percent",
        "tail_sampling.policies[6].drop.drop_sub_policy: needs at least one sub-policy",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}
