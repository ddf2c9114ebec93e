//! Sampling policies: their config shapes (the collector's `tail_sampling.policies`), their
//! compiled form, and the exact rule that combines the policies' votes into one decision
//! (reference/tail_sampling.md 2.2). Policies are a closed enum compiled once at load time;
//! evaluation allocates nothing.

mod probabilistic;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::Errors;
use crate::otlp::TraceId;
pub use probabilistic::Probabilistic;

/// A policy's vote on one trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Sampled,
    NotSampled,
    Dropped,
}

impl Decision {
    pub const ALL: [Decision; 3] = [Decision::Sampled, Decision::NotSampled, Decision::Dropped];

    /// The `decision` label value the collector uses.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Sampled => "sampled",
            Decision::NotSampled => "not_sampled",
            Decision::Dropped => "dropped",
        }
    }

    /// The `sampled` label value the collector uses.
    pub fn sampled_label(self) -> &'static str {
        if self == Decision::Sampled {
            "true"
        } else {
            "false"
        }
    }
}

/// What a policy may look at.
#[derive(Debug, Clone, Copy)]
pub struct TraceView<'a> {
    pub trace_id: &'a TraceId,
    pub span_count: u64,
}

/// The set's final decision and the policy that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// The first policy that voted for the final decision; `None` when no policy did
    /// (for example every policy abstained).
    pub policy: Option<Arc<str>>,
}

/// A policy's vote as reported to the caller's telemetry.
#[derive(Debug, Clone, Copy)]
pub struct Vote {
    pub policy_index: usize,
    pub decision: Decision,
    pub elapsed: Duration,
}

/// The compiled, ordered policy set: drop policies first, then the rest, each group in
/// config order.
#[derive(Debug, Clone)]
pub struct PolicySet {
    policies: Vec<Policy>,
    sample_on_first_match: bool,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: Arc<str>,
    rule: Rule,
}

/// What a compiled policy evaluates.
#[derive(Debug, Clone)]
enum Rule {
    AlwaysSample,
    Probabilistic(Probabilistic),
    /// Dropped when every sub-rule samples; otherwise NotSampled.
    Drop(Vec<Rule>),
}

impl Rule {
    fn evaluate(&self, trace: &TraceView<'_>) -> Decision {
        match self {
            Rule::AlwaysSample => Decision::Sampled,
            Rule::Probabilistic(p) => p.decide(trace.trace_id),
            Rule::Drop(subs) => {
                if subs.iter().all(|s| s.evaluate(trace) == Decision::Sampled) {
                    Decision::Dropped
                } else {
                    Decision::NotSampled
                }
            }
        }
    }

    fn is_drop(&self) -> bool {
        matches!(self, Rule::Drop(_))
    }
}

impl PolicySet {
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Evaluates every policy on `trace` and combines the votes with the collector's
    /// precedence (Dropped > Sampled > NotSampled). `on_vote` sees each vote with the
    /// time it took.
    pub fn decide(&self, trace: &TraceView<'_>, mut on_vote: impl FnMut(Vote)) -> Verdict {
        let mut first_sampled: Option<&Arc<str>> = None;
        for (policy_index, policy) in self.policies.iter().enumerate() {
            let started = Instant::now();
            let decision = policy.rule.evaluate(trace);
            on_vote(Vote {
                policy_index,
                decision,
                elapsed: started.elapsed(),
            });
            match decision {
                Decision::Dropped => {
                    return Verdict {
                        decision,
                        policy: Some(policy.name.clone()),
                    }
                }
                Decision::Sampled => {
                    first_sampled.get_or_insert(&policy.name);
                    if self.sample_on_first_match {
                        break;
                    }
                }
                Decision::NotSampled => {}
            }
        }
        match first_sampled {
            Some(name) => Verdict {
                decision: Decision::Sampled,
                policy: Some(name.clone()),
            },
            None => Verdict {
                decision: Decision::NotSampled,
                policy: None,
            },
        }
    }

    /// Compiles `tail_sampling.policies`, recording every problem under `path`.
    pub fn compile(
        values: &[serde_yaml::Value],
        path: &str,
        sample_on_first_match: bool,
        errors: &mut Errors,
    ) -> PolicySet {
        let mut names = std::collections::HashSet::new();
        let mut policies = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let path = format!("{path}[{i}]");
            let Some(config) = errors.parse::<PolicyConfig>(&path, value.clone()) else {
                continue;
            };
            if config.name.is_empty() {
                errors.push(format!("{path}.name"), "must not be empty");
            } else if !names.insert(config.name.clone()) {
                errors.push(
                    format!("{path}.name"),
                    format!("duplicate policy name {:?}", config.name),
                );
            }
            if let Some(rule) = config.body.compile(&path, errors, true) {
                policies.push(Policy {
                    name: config.name.into(),
                    rule,
                });
            }
        }
        // Drop policies run first, each group keeping config order.
        policies.sort_by_key(|p| !p.rule.is_drop());
        PolicySet {
            policies,
            sample_on_first_match,
        }
    }
}

/// serde cannot combine `deny_unknown_fields` with `flatten`, so unknown keys land in
/// [`PolicyBody::other`] and are reported by [`PolicyBody::compile`].
#[derive(Debug, Deserialize)]
struct PolicyConfig {
    name: String,
    #[serde(flatten)]
    body: PolicyBody,
}

/// The type and the block named after it. Every collector type is a known key, so a
/// pasted config gets "not supported" rather than "unknown field" for a type tailgate
/// does not have yet.
#[derive(Debug, Deserialize)]
struct PolicyBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    probabilistic: Option<ProbabilisticConfig>,
    #[serde(default)]
    drop: Option<DropConfig>,
    #[serde(flatten)]
    other: std::collections::BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbabilisticConfig {
    #[serde(default)]
    sampling_percentage: f64,
    #[serde(default)]
    hash_salt: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DropConfig {
    #[serde(default)]
    drop_sub_policy: Vec<SubPolicyConfig>,
}

#[derive(Debug, Deserialize)]
struct SubPolicyConfig {
    #[serde(default)]
    name: String,
    #[serde(flatten)]
    body: PolicyBody,
}

/// The collector's policy types that tailgate does not evaluate yet.
const NOT_YET_SUPPORTED: &[&str] = &[
    "latency",
    "numeric_attribute",
    "status_code",
    "string_attribute",
    "rate_limiting",
    "bytes_limiting",
    "span_count",
    "trace_state",
    "trace_flags",
    "boolean_attribute",
    "ottl_condition",
    "and",
    "not",
    "composite",
];

impl PolicyBody {
    fn compile(self, path: &str, errors: &mut Errors, top_level: bool) -> Option<Rule> {
        for key in self.other.keys() {
            if key != "always_sample" && !NOT_YET_SUPPORTED.contains(&key.as_str()) {
                errors.push(format!("{path}.{key}"), "unknown field");
            }
        }
        match self.kind.as_str() {
            "always_sample" => Some(Rule::AlwaysSample),
            "probabilistic" => {
                let c = self.probabilistic.unwrap_or_default();
                let pct = c.sampling_percentage;
                if !(0.0..=100.0).contains(&pct) {
                    errors.push(
                        format!("{path}.probabilistic.sampling_percentage"),
                        format!("{pct} is not between 0 and 100"),
                    );
                    return None;
                }
                Some(Rule::Probabilistic(Probabilistic::new(
                    pct,
                    c.hash_salt.as_deref(),
                )))
            }
            "drop" if top_level => {
                let subs = self.drop.unwrap_or_default().drop_sub_policy;
                if subs.is_empty() {
                    errors.push(
                        format!("{path}.drop.drop_sub_policy"),
                        "needs at least one sub-policy",
                    );
                    return None;
                }
                let rules: Vec<Option<Rule>> = subs
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let sub_path = format!("{path}.drop.drop_sub_policy[{i}]");
                        if s.name.is_empty() {
                            errors.push(format!("{sub_path}.name"), "must not be empty");
                        }
                        s.body.compile(&sub_path, errors, false)
                    })
                    .collect();
                rules
                    .into_iter()
                    .collect::<Option<Vec<_>>>()
                    .map(Rule::Drop)
            }
            other if NOT_YET_SUPPORTED.contains(&other) || other == "drop" => {
                errors.push(
                    format!("{path}.type"),
                    format!("policy type {other:?} is not supported here yet"),
                );
                None
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

#[cfg(test)]
mod tests;
