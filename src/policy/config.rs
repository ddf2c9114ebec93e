//! The YAML shapes of `tail_sampling.policies`, key for key the collector's, and their
//! compilation into [`Rule`]s: regexes built, thresholds converted, names and nesting
//! checked, every problem recorded with its path.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;

use super::adaptive::{Ema, Goal, Settings};
use super::composite::{Composite, SubPolicy};
use super::ottl::{ErrorMode, OttlCondition};
use super::probabilistic::Probabilistic;
use super::rules::{AttributeCondition, Rule, StringMatcher, ValueTest};
use super::token_bucket::TokenBucket;
use crate::config::Errors;
use crate::otlp::view::AttributeKey;

/// One policy (or sub-policy): `name`, `type`, and the block named after the type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyConfig {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Accepted for the collector's shape; this type has no settings (yet).
    #[serde(default, rename = "always_sample")]
    _always_sample: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    latency: Option<LatencyConfig>,
    #[serde(default)]
    numeric_attribute: Option<NumericConfig>,
    #[serde(default)]
    probabilistic: Option<ProbabilisticConfig>,
    #[serde(default)]
    status_code: Option<StatusCodeConfig>,
    #[serde(default)]
    string_attribute: Option<StringConfig>,
    #[serde(default)]
    rate_limiting: Option<RateConfig>,
    #[serde(default)]
    bytes_limiting: Option<BytesConfig>,
    #[serde(default)]
    span_count: Option<SpanCountConfig>,
    #[serde(default)]
    trace_state: Option<TraceStateConfig>,
    /// Accepted for the collector's shape; this type has no settings (yet).
    #[serde(default, rename = "trace_flags")]
    _trace_flags: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    boolean_attribute: Option<BooleanConfig>,
    #[serde(default)]
    ottl_condition: Option<OttlConfig>,
    #[serde(default)]
    and: Option<AndConfig>,
    #[serde(default)]
    drop: Option<DropConfig>,
    #[serde(default)]
    not: Option<NotConfig>,
    #[serde(default)]
    composite: Option<CompositeConfig>,
    #[serde(default)]
    ema_throughput: Option<EmaConfig>,
    #[serde(default)]
    ema_dynamic: Option<EmaConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyConfig {
    #[serde(default)]
    threshold_ms: i64,
    #[serde(default)]
    upper_threshold_ms: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NumericConfig {
    #[serde(default)]
    key: String,
    #[serde(default)]
    min_value: i64,
    #[serde(default)]
    max_value: i64,
    #[serde(default)]
    invert_match: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbabilisticConfig {
    #[serde(default)]
    sampling_percentage: f64,
    #[serde(default)]
    hash_salt: Option<String>,
    /// `hash_seed` (the collector's) or `equalizing` (consistent with head sampling).
    #[serde(default)]
    mode: super::probabilistic::Mode,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusCodeConfig {
    #[serde(default)]
    status_codes: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StringConfig {
    #[serde(default)]
    key: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    enabled_regex_matching: bool,
    #[serde(default)]
    cache_max_size: Option<u64>,
    #[serde(default)]
    invert_match: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateConfig {
    #[serde(default)]
    spans_per_second: i64,
    #[serde(default)]
    burst_capacity: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BytesConfig {
    #[serde(default)]
    bytes_per_second: i64,
    #[serde(default)]
    burst_capacity: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpanCountConfig {
    #[serde(default)]
    min_spans: i64,
    #[serde(default)]
    max_spans: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceStateConfig {
    #[serde(default)]
    key: String,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BooleanConfig {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: bool,
    #[serde(default)]
    invert_match: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OttlConfig {
    #[serde(default = "propagate")]
    error_mode: ErrorMode,
    #[serde(default)]
    span: Vec<String>,
    #[serde(default)]
    spanevent: Vec<String>,
}

/// `ema_throughput` and `ema_dynamic`, Refinery's keys and defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmaConfig {
    #[serde(default)]
    goal_throughput_per_sec: Option<f64>,
    #[serde(default)]
    goal_sample_rate: Option<f64>,
    #[serde(default)]
    field_list: Vec<String>,
    #[serde(default)]
    use_trace_length: bool,
    #[serde(default = "default_adjustment_interval", with = "humantime_serde")]
    adjustment_interval: std::time::Duration,
    #[serde(default = "half")]
    weight: f64,
    #[serde(default = "half")]
    age_out_value: f64,
    #[serde(default = "two")]
    burst_multiple: f64,
    #[serde(default = "three")]
    burst_detection_delay: u32,
    #[serde(default = "default_max_keys")]
    max_keys: u64,
}

fn default_adjustment_interval() -> std::time::Duration {
    std::time::Duration::from_secs(15)
}
fn half() -> f64 {
    0.5
}
fn two() -> f64 {
    2.0
}
fn three() -> u32 {
    3
}
fn default_max_keys() -> u64 {
    500
}

/// Compiles an adaptive policy: `throughput` says which of the two goals it takes.
fn compile_ema(
    c: Option<EmaConfig>,
    throughput: bool,
    path: &str,
    errors: &mut Errors,
) -> Option<Rule> {
    let Some(c) = c else {
        errors.push(path, "is required");
        return None;
    };
    let (goal, wrong) = if throughput {
        (
            c.goal_throughput_per_sec.map(Goal::Throughput),
            c.goal_sample_rate.map(|_| "goal_sample_rate"),
        )
    } else {
        (
            c.goal_sample_rate.map(Goal::SampleRate),
            c.goal_throughput_per_sec.map(|_| "goal_throughput_per_sec"),
        )
    };
    if let Some(key) = wrong {
        errors.push(
            format!("{path}.{key}"),
            "belongs to the other adaptive policy type",
        );
    }
    let goal = match goal {
        Some(Goal::Throughput(g)) if g > 0.0 && g.is_finite() => Goal::Throughput(g),
        Some(Goal::SampleRate(r)) if (1.0..1e9).contains(&r) => Goal::SampleRate(r),
        Some(_) => {
            let key = if throughput {
                "goal_throughput_per_sec"
            } else {
                "goal_sample_rate"
            };
            let need = if throughput {
                "must be positive"
            } else {
                "must be at least 1"
            };
            errors.push(format!("{path}.{key}"), need);
            return None;
        }
        None => {
            let key = if throughput {
                "goal_throughput_per_sec"
            } else {
                "goal_sample_rate"
            };
            errors.push(format!("{path}.{key}"), "is required");
            return None;
        }
    };
    errors.within_duration(
        format!("{path}.adjustment_interval"),
        c.adjustment_interval,
        std::time::Duration::from_millis(100),
        crate::config::HOUR,
    );
    if !(c.weight > 0.0 && c.weight <= 1.0) {
        errors.push(format!("{path}.weight"), "must be in (0, 1]");
    }
    if !(c.age_out_value >= 0.0 && c.age_out_value.is_finite()) {
        errors.push(format!("{path}.age_out_value"), "must not be negative");
    }
    if !(c.burst_multiple >= 1.0 && c.burst_multiple.is_finite()) {
        errors.push(format!("{path}.burst_multiple"), "must be at least 1");
    }
    errors.within(format!("{path}.max_keys"), c.max_keys, 1, 1_000_000);
    Some(Rule::Adaptive(Box::new(Ema::new(Settings {
        goal,
        fields: c.field_list,
        use_trace_length: c.use_trace_length,
        interval: c.adjustment_interval,
        weight: c.weight,
        age_out_value: c.age_out_value,
        burst_multiple: c.burst_multiple,
        burst_detection_delay: c.burst_detection_delay,
        max_keys: usize::try_from(c.max_keys).unwrap_or(usize::MAX),
    }))))
}

fn propagate() -> ErrorMode {
    ErrorMode::Propagate
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AndConfig {
    #[serde(default)]
    and_sub_policy: Vec<PolicyConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DropConfig {
    #[serde(default)]
    drop_sub_policy: Vec<PolicyConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotConfig {
    not_sub_policy: Box<PolicyConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompositeConfig {
    #[serde(default)]
    max_total_spans_per_second: i64,
    #[serde(default)]
    policy_order: Vec<String>,
    #[serde(default)]
    composite_sub_policy: Vec<PolicyConfig>,
    #[serde(default)]
    rate_allocation: Vec<RateAllocation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateAllocation {
    policy: String,
    #[serde(default)]
    percent: f64,
}

/// Where a policy sits, which decides the types it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Top,
    /// Inside `and`, `drop` or `not`.
    Sub,
    /// Inside `composite`: `and` is allowed there, as in the collector.
    Composite,
}

/// Default `cache_max_size` of `string_attribute` regex results.
const DEFAULT_REGEX_CACHE: u64 = 128;

impl PolicyConfig {
    /// Compiles the policy; `None` after recording its problems under `path`.
    pub(super) fn compile(self, path: &str, level: Level, errors: &mut Errors) -> Option<Rule> {
        let kind = self.kind.clone();
        let block = |name: &str| format!("{path}.{name}");
        let nested = |rule: &str, errors: &mut Errors| {
            if level != Level::Top {
                errors.push(format!("{path}.type"), format!("{rule} cannot be nested"));
            }
        };
        match kind.as_str() {
            "always_sample" => Some(Rule::AlwaysSample),
            "latency" => {
                let c = self.latency.unwrap_or_default();
                if c.upper_threshold_ms != 0 && c.upper_threshold_ms <= c.threshold_ms {
                    errors.push(
                        block("latency.upper_threshold_ms"),
                        "must be greater than threshold_ms",
                    );
                    return None;
                }
                Some(Rule::Latency {
                    threshold_ms: c.threshold_ms,
                    upper_threshold_ms: c.upper_threshold_ms,
                })
            }
            "numeric_attribute" => {
                let c = self.numeric_attribute.unwrap_or_default();
                let p = block("numeric_attribute");
                require_key(&c.key, &p, errors)?;
                if c.min_value == 0 && c.max_value == 0 {
                    errors.push(&p, "set min_value, max_value or both");
                    return None;
                }
                // As in the collector, 0 means unset.
                let min = if c.min_value == 0 {
                    i64::MIN
                } else {
                    c.min_value
                };
                let max = if c.max_value == 0 {
                    i64::MAX
                } else {
                    c.max_value
                };
                if min > max {
                    errors.push(format!("{p}.min_value"), "must not exceed max_value");
                    return None;
                }
                Some(Rule::Attribute(Box::new(AttributeCondition {
                    key: AttributeKey::new(&c.key),
                    test: ValueTest::Int { min, max },
                    invert: c.invert_match,
                    slot: None,
                })))
            }
            "probabilistic" => {
                let c = self.probabilistic.unwrap_or_default();
                let pct = c.sampling_percentage;
                if !(0.0..=100.0).contains(&pct) {
                    errors.push(
                        block("probabilistic.sampling_percentage"),
                        format!("{pct} is not between 0 and 100"),
                    );
                    return None;
                }
                Some(Rule::Probabilistic(Probabilistic::with_mode(
                    pct,
                    c.hash_salt.as_deref(),
                    c.mode,
                )))
            }
            "status_code" => {
                let c = self.status_code.unwrap_or_default();
                let p = block("status_code.status_codes");
                if c.status_codes.is_empty() {
                    errors.push(&p, "needs at least one of OK, ERROR, UNSET");
                    return None;
                }
                let mut codes = Vec::new();
                for (i, code) in c.status_codes.iter().enumerate() {
                    match code.as_str() {
                        "UNSET" => codes.push(0),
                        "OK" => codes.push(1),
                        "ERROR" => codes.push(2),
                        other => errors.push(
                            format!("{p}[{i}]"),
                            format!("unknown status code {other:?}; expected OK, ERROR or UNSET"),
                        ),
                    }
                }
                (codes.len() == c.status_codes.len()).then_some(Rule::StatusCode { codes })
            }
            "string_attribute" => {
                let c = self.string_attribute.unwrap_or_default();
                let p = block("string_attribute");
                require_key(&c.key, &p, errors)?;
                let matcher = if c.enabled_regex_matching {
                    let mut regexes = Vec::new();
                    for (i, v) in c.values.iter().enumerate() {
                        match regex::Regex::new(v) {
                            Ok(r) => regexes.push(r),
                            Err(e) => errors
                                .push(format!("{p}.values[{i}]"), format!("invalid regex: {e}")),
                        }
                    }
                    if let Some(size) = c.cache_max_size {
                        errors.within(format!("{p}.cache_max_size"), size, 0, 10_000_000);
                    }
                    if regexes.len() != c.values.len() {
                        return None;
                    }
                    StringMatcher::regex(regexes, c.cache_max_size.unwrap_or(DEFAULT_REGEX_CACHE))
                } else {
                    StringMatcher::exact(c.values.into_iter().filter(|v| !v.is_empty()).collect())
                };
                Some(Rule::Attribute(Box::new(AttributeCondition {
                    key: AttributeKey::new(&c.key),
                    test: ValueTest::Str(matcher),
                    invert: c.invert_match,
                    slot: None,
                })))
            }
            "rate_limiting" => {
                let c = self.rate_limiting.unwrap_or_default();
                let p = block("rate_limiting");
                let bucket = bucket(
                    c.spans_per_second,
                    c.burst_capacity,
                    &p,
                    "spans_per_second",
                    errors,
                )?;
                Some(Rule::RateLimiting(bucket))
            }
            "bytes_limiting" => {
                let c = self.bytes_limiting.unwrap_or_default();
                let p = block("bytes_limiting");
                let bucket = bucket(
                    c.bytes_per_second,
                    c.burst_capacity,
                    &p,
                    "bytes_per_second",
                    errors,
                )?;
                Some(Rule::BytesLimiting(bucket))
            }
            "ema_throughput" | "ema_dynamic" => {
                nested(&kind, errors);
                let throughput = kind == "ema_throughput";
                let c = if throughput {
                    self.ema_throughput
                } else {
                    self.ema_dynamic
                };
                compile_ema(c, throughput, &block(&kind), errors)
            }
            "span_count" => {
                let c = self.span_count.unwrap_or_default();
                let p = block("span_count");
                if c.min_spans < 0 || c.max_spans < 0 {
                    errors.push(&p, "min_spans and max_spans must not be negative");
                    return None;
                }
                if c.max_spans != 0 && c.max_spans < c.min_spans {
                    errors.push(format!("{p}.max_spans"), "must not be less than min_spans");
                    return None;
                }
                Some(Rule::SpanCount {
                    min: c.min_spans as u64,
                    max: c.max_spans as u64,
                })
            }
            "trace_state" => {
                let c = self.trace_state.unwrap_or_default();
                let p = block("trace_state");
                require_key(&c.key, &p, errors)?;
                // The W3C limit the collector applies: longer pairs can never match.
                let values: HashSet<String> = c
                    .values
                    .into_iter()
                    .filter(|v| c.key.len() + v.len() < 256)
                    .collect();
                Some(Rule::TraceState { key: c.key, values })
            }
            "trace_flags" => Some(Rule::TraceFlags),
            "boolean_attribute" => {
                let c = self.boolean_attribute.unwrap_or_default();
                require_key(&c.key, &block("boolean_attribute"), errors)?;
                Some(Rule::Attribute(Box::new(AttributeCondition {
                    key: AttributeKey::new(&c.key),
                    test: ValueTest::Bool(c.value),
                    invert: c.invert_match,
                    slot: None,
                })))
            }
            "and" => {
                if level == Level::Sub {
                    nested("and", errors);
                }
                let subs = self.and.unwrap_or_default().and_sub_policy;
                compile_subs(subs, &block("and.and_sub_policy"), Level::Sub, errors).map(Rule::And)
            }
            "drop" => {
                nested("drop", errors);
                let subs = self.drop.unwrap_or_default().drop_sub_policy;
                compile_subs(subs, &block("drop.drop_sub_policy"), Level::Sub, errors)
                    .map(Rule::Drop)
            }
            "not" => {
                let Some(c) = self.not else {
                    errors.push(block("not.not_sub_policy"), "is required");
                    return None;
                };
                let p = block("not.not_sub_policy");
                let sub = c.not_sub_policy;
                check_sub_name(&sub.name, &p, errors);
                sub.compile(&p, Level::Sub, errors)
                    .map(|r| Rule::Not(Box::new(r)))
            }
            "composite" => {
                nested("composite", errors);
                compile_composite(
                    self.composite.unwrap_or_default(),
                    &block("composite"),
                    errors,
                )
            }
            "ottl_condition" => {
                let p = block("ottl_condition");
                let Some(c) = self.ottl_condition else {
                    errors.push(&p, "needs at least one span or spanevent condition");
                    return None;
                };
                OttlCondition::compile(c.error_mode, &c.span, &c.spanevent, &p, errors)
                    .map(Rule::Ottl)
            }
            other => {
                errors.push(
                    format!("{path}.type"),
                    format!("unknown policy type {other:?}"),
                );
                None
            }
        }
    }
}

fn require_key(key: &str, path: &str, errors: &mut Errors) -> Option<()> {
    if key.is_empty() {
        errors.push(format!("{path}.key"), "is required");
        None
    } else {
        Some(())
    }
}

fn check_sub_name(name: &str, path: &str, errors: &mut Errors) {
    if name.is_empty() {
        errors.push(format!("{path}.name"), "must not be empty");
    }
}

fn bucket(
    rate: i64,
    burst: Option<i64>,
    path: &str,
    rate_key: &str,
    errors: &mut Errors,
) -> Option<TokenBucket> {
    if rate <= 0 {
        errors.push(format!("{path}.{rate_key}"), "must be greater than 0");
        return None;
    }
    let burst = burst.unwrap_or(rate.saturating_mul(2));
    if burst <= 0 {
        errors.push(format!("{path}.burst_capacity"), "must be greater than 0");
        return None;
    }
    Some(TokenBucket::new(rate as f64, burst as f64))
}

fn compile_subs(
    subs: Vec<PolicyConfig>,
    path: &str,
    level: Level,
    errors: &mut Errors,
) -> Option<Vec<Rule>> {
    if subs.is_empty() {
        errors.push(path, "needs at least one sub-policy");
        return None;
    }
    let rules: Vec<Option<Rule>> = subs
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let p = format!("{path}[{i}]");
            check_sub_name(&s.name, &p, errors);
            s.compile(&p, level, errors)
        })
        .collect();
    rules.into_iter().collect()
}

fn compile_composite(c: CompositeConfig, path: &str, errors: &mut Errors) -> Option<Rule> {
    if c.max_total_spans_per_second <= 0 {
        errors.push(
            format!("{path}.max_total_spans_per_second"),
            "must be greater than 0",
        );
        return None;
    }
    let sub_path = format!("{path}.composite_sub_policy");
    let names: Vec<String> = c
        .composite_sub_policy
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let mut seen = HashSet::new();
    for (i, n) in names.iter().enumerate() {
        if !n.is_empty() && !seen.insert(n.clone()) {
            errors.push(
                format!("{sub_path}[{i}].name"),
                format!("duplicate sub-policy name {n:?}"),
            );
        }
    }
    let rules = compile_subs(c.composite_sub_policy, &sub_path, Level::Composite, errors)?;
    let max_total = c.max_total_spans_per_second as f64;
    let mut allocated: BTreeMap<&str, f64> = BTreeMap::new();
    for (i, a) in c.rate_allocation.iter().enumerate() {
        let p = format!("{path}.rate_allocation[{i}]");
        if !names.contains(&a.policy) {
            errors.push(
                format!("{p}.policy"),
                format!("{:?} is not a composite_sub_policy", a.policy),
            );
        } else if !(0.0..=100.0).contains(&a.percent) {
            errors.push(format!("{p}.percent"), "must be between 0 and 100");
        } else {
            allocated.insert(&a.policy, a.percent / 100.0 * max_total);
        }
    }
    let given: f64 = allocated.values().sum();
    if given > max_total + 1e-9 {
        errors.push(
            format!("{path}.rate_allocation"),
            "percentages add up to more than 100",
        );
    }
    // Sub-policies without an allocation share what is left equally (the collector gives
    // them nothing, #49828).
    let missing = names
        .iter()
        .filter(|n| !allocated.contains_key(n.as_str()))
        .count();
    let share = if missing > 0 {
        (max_total - given).max(0.0) / missing as f64
    } else {
        0.0
    };
    let mut subs: Vec<SubPolicy> = names
        .iter()
        .zip(rules)
        .map(|(name, rule)| SubPolicy {
            name: Arc::from(name.as_str()),
            rule,
            allocated: allocated.get(name.as_str()).copied().unwrap_or(share),
        })
        .collect();
    // `policy_order` sets the evaluation order (the collector ignores it, #36955); sub-
    // policies it does not list follow in config order.
    let mut ordered = Vec::with_capacity(subs.len());
    for (i, name) in c.policy_order.iter().enumerate() {
        match subs.iter().position(|s| &*s.name == name) {
            Some(at) => ordered.push(subs.remove(at)),
            None => errors.push(
                format!("{path}.policy_order[{i}]"),
                format!("{name:?} is not a composite_sub_policy (or is listed twice)"),
            ),
        }
    }
    ordered.extend(subs);
    Some(Rule::Composite(Composite::new(ordered, max_total)))
}
