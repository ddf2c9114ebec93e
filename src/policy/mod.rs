//! Sampling policies: the compiled policy set and the exact rule that combines the
//! policies' votes into one decision (the collector's, described in the README). Policies are a
//! closed enum ([`rules::Rule`]) compiled once at load time ([`config`]); evaluating a
//! policy allocates nothing but a regex-cache entry on a value not seen before.

mod composite;
mod config;
mod ottl;
mod probabilistic;
mod rules;
mod token_bucket;

use std::cell::OnceCell;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{read_yaml, ConfigError, Errors, FieldError};
use crate::otlp::tracestate::{Threshold, SPACE};
use crate::otlp::view::{Attributes, ScopeView, SpanView};
use crate::otlp::{Chunk, TraceId};
pub use probabilistic::{Mode as ProbabilisticMode, Probabilistic};
pub use rules::EvalError;

/// A policy's vote on one trace. The two inverted votes are the collector's deprecated
/// `invert_match` results, kept for their place in the precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Sampled,
    NotSampled,
    Dropped,
    InvertSampled,
    InvertNotSampled,
}

impl Decision {
    /// The three final decisions, in the order metrics index them.
    pub const FINAL: [Decision; 3] = [Decision::Sampled, Decision::NotSampled, Decision::Dropped];

    /// The final decision a vote counts as in metrics (inverted votes fold into
    /// sampled / not sampled, as in the collector).
    pub fn folded(self) -> Decision {
        match self {
            Decision::InvertSampled => Decision::Sampled,
            Decision::InvertNotSampled => Decision::NotSampled,
            other => other,
        }
    }

    /// Index into [`Decision::FINAL`].
    pub fn index(self) -> usize {
        match self.folded() {
            Decision::Sampled => 0,
            Decision::NotSampled => 1,
            _ => 2,
        }
    }

    /// The `decision` label value the collector uses.
    pub fn label(self) -> &'static str {
        match self.folded() {
            Decision::Sampled => "sampled",
            Decision::NotSampled => "not_sampled",
            _ => "dropped",
        }
    }

    /// The `sampled` label value the collector uses.
    pub fn sampled_label(self) -> &'static str {
        if self.folded() == Decision::Sampled {
            "true"
        } else {
            "false"
        }
    }
}

/// The spans of one buffered chunk with their resource and scope, read in place, for
/// policies that look at span contents. Span fields are read on first use; attributes
/// need only the spans' bytes.
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    pub resource: Attributes<'a>,
    pub scope: ScopeView<'a>,
    chunk: &'a Chunk,
    spans: OnceCell<Vec<SpanView<'a>>>,
}

impl<'a> Batch<'a> {
    pub fn of(chunk: &'a Chunk) -> Batch<'a> {
        Batch {
            resource: chunk.head.resource_attributes(),
            scope: chunk.head.scope(),
            chunk,
            spans: OnceCell::new(),
        }
    }

    pub fn spans(&self) -> &[SpanView<'a>] {
        self.spans.get_or_init(|| self.chunk.spans().collect())
    }

    /// Each span's attributes, without reading its other fields.
    pub fn span_attributes(&self) -> impl Iterator<Item = Attributes<'a>> + use<'a> {
        self.chunk.span_bodies().map(Attributes::of_span)
    }
}

/// The set of span status codes a trace's spans carry: bit `c` for code `c` of UNSET (0),
/// OK (1) and ERROR (2), the codes a `status_code` policy can name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCodes(u8);

impl StatusCodes {
    pub const NONE: StatusCodes = StatusCodes(0);

    /// This set and a span's `code` (codes outside 0..=2 are not kept).
    pub fn with(self, code: i32) -> StatusCodes {
        match code {
            0..=2 => StatusCodes(self.0 | 1 << code),
            _ => self,
        }
    }

    pub fn union(self, other: StatusCodes) -> StatusCodes {
        StatusCodes(self.0 | other.0)
    }

    pub fn contains(self, code: i32) -> bool {
        (0..=2).contains(&code) && self.0 & (1 << code) != 0
    }
}

/// The probability a kept trace was kept with, as the spans' `th` will say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chance {
    /// Kept with the probability of `threshold`: by the trace's randomness compared to it
    /// (`consistent`, so it composes with consistent head sampling by the larger
    /// threshold), or independently of it (the composed probability is the product).
    Known {
        threshold: Threshold,
        consistent: bool,
    },
    /// Kept by a budget: no probability can be stated, and `th` is erased.
    Unknown,
}

impl Chance {
    /// Probability 1.
    pub const ALWAYS: Chance = Chance::Known {
        threshold: Threshold::ALWAYS,
        consistent: true,
    };

    fn probability(self) -> Option<f64> {
        match self {
            Chance::Known { threshold, .. } => Some(threshold.probability()),
            Chance::Unknown => None,
        }
    }

    /// Two votes to keep: the higher probability. Certainty beats everything; otherwise a
    /// budget's unknown probability may be the higher one, so the result is unknown.
    pub fn or(self, other: Chance) -> Chance {
        match (self.probability(), other.probability()) {
            (Some(1.0), _) => self,
            (_, Some(1.0)) => other,
            (Some(a), Some(b)) if b > a => other,
            (Some(_), Some(_)) => self,
            _ => Chance::Unknown,
        }
    }

    /// Both draws kept the trace: the larger threshold when both are consistent, the
    /// product of the probabilities otherwise.
    pub fn and(self, other: Chance) -> Chance {
        match (self, other) {
            (
                Chance::Known {
                    threshold: a,
                    consistent: true,
                },
                Chance::Known {
                    threshold: b,
                    consistent: true,
                },
            ) => Chance::Known {
                threshold: a.max(b),
                consistent: true,
            },
            (Chance::Known { threshold: a, .. }, Chance::Known { threshold: b, .. }) => {
                match Threshold::of_probability(a.probability() * b.probability()) {
                    Some(threshold) => Chance::Known {
                        threshold,
                        consistent: false,
                    },
                    None => Chance::Unknown,
                }
            }
            _ => Chance::Unknown,
        }
    }

    /// The threshold a kept span carries, given the one it arrived with: never lowered;
    /// `None` (erase) when the probability is unknown.
    pub fn threshold_after(self, incoming: Option<Threshold>) -> Option<Threshold> {
        let incoming = incoming.map_or(Chance::ALWAYS, |threshold| Chance::Known {
            threshold,
            consistent: true,
        });
        match incoming.and(self) {
            Chance::Known { threshold, .. } => Some(threshold),
            Chance::Unknown => None,
        }
    }
}

/// The randomness of a trace: its `rv`, else its id's low 56 bits.
pub fn randomness(trace_id: &TraceId, rv: Option<u64>) -> u64 {
    rv.unwrap_or_else(|| {
        u64::from_be_bytes(trace_id[8..16].try_into().expect("8 bytes")) & (SPACE - 1)
    })
}

/// What a policy may look at.
#[derive(Debug, Clone, Copy)]
pub struct TraceView<'a> {
    pub trace_id: &'a TraceId,
    pub span_count: u64,
    /// Wire bytes of the spans.
    pub bytes: u64,
    /// Earliest span start and latest span end over the whole trace, Unix nanoseconds.
    pub earliest_start: u64,
    pub latest_end: u64,
    /// The status codes of the trace's spans.
    pub status_codes: StatusCodes,
    /// The trace's 56-bit randomness ([`randomness`]).
    pub randomness: u64,
    /// The spans; empty when no policy needs them.
    pub batches: &'a [Batch<'a>],
    /// Decision time, for the rate limiters.
    pub now: Instant,
}

/// The set's final decision and the policy that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Sampled, NotSampled or Dropped.
    pub decision: Decision,
    /// The first policy that voted for the final decision; `None` when no policy did
    /// (for example every policy abstained).
    pub policy: Option<Arc<str>>,
    /// For a trace kept by a composite policy, the sub-policy that took it.
    pub composite_policy: Option<Arc<str>>,
    /// For a kept trace, the probability it was kept with.
    pub chance: Chance,
}

/// A policy's vote as reported to the caller's telemetry.
#[derive(Debug, Clone, Copy)]
pub struct Vote {
    pub policy_index: usize,
    pub decision: Result<Decision, EvalError>,
    pub elapsed: Duration,
}

/// The compiled, ordered policy set: drop policies first, then the rest, each group in
/// config order.
#[derive(Debug, Clone)]
pub struct PolicySet {
    policies: Arc<[Policy]>,
    sample_on_first_match: bool,
    needs_spans: bool,
}

#[derive(Debug)]
pub struct Policy {
    pub name: Arc<str>,
    rule: rules::Rule,
}

impl Policy {
    /// Whether the vote depends on more than the trace (rate and byte budgets, composite
    /// allocations), so it cannot be predicted from the trace alone.
    pub fn is_stateful(&self) -> bool {
        self.rule.is_stateful()
    }
}

impl PolicySet {
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Whether any policy reads span contents, so the spans must be read first.
    pub fn needs_spans(&self) -> bool {
        self.needs_spans
    }

    /// Evaluates the policies on `trace` and combines the votes with the collector's
    /// precedence: Dropped > InvertNotSampled > Sampled > InvertSampled (only if no policy
    /// said NotSampled) > NotSampled. An erroring policy abstains. `on_vote` sees each
    /// vote with the time it took.
    pub fn decide(&self, trace: &TraceView<'_>, on_vote: impl FnMut(Vote)) -> Verdict {
        self.decide_with(trace, |_| true, on_vote)
    }

    /// [`decide`](Self::decide) with only the policies `include` accepts taking part (the
    /// load generator's verifier leaves out the stateful ones to predict the rest).
    pub fn decide_with(
        &self,
        trace: &TraceView<'_>,
        include: impl Fn(&Policy) -> bool,
        mut on_vote: impl FnMut(Vote),
    ) -> Verdict {
        let mut sampled: Option<(&Arc<str>, Option<Arc<str>>)> = None;
        let mut chance: Option<Chance> = None;
        let mut invert_sampled: Option<&Arc<str>> = None;
        let mut invert_not_sampled: Option<&Arc<str>> = None;
        let mut any_not_sampled = false;
        for (policy_index, policy) in self.policies.iter().enumerate() {
            if !include(policy) {
                continue;
            }
            let started = std::time::Instant::now();
            let result = policy.rule.evaluate_named(trace);
            on_vote(Vote {
                policy_index,
                decision: result.as_ref().map(|(d, _)| *d).map_err(|e| *e),
                elapsed: started.elapsed(),
            });
            let Ok((decision, sub)) = result else {
                continue;
            };
            match decision {
                Decision::Dropped => {
                    return Verdict {
                        decision,
                        policy: Some(policy.name.clone()),
                        composite_policy: None,
                        chance: Chance::Unknown,
                    }
                }
                Decision::Sampled => {
                    sampled.get_or_insert((&policy.name, sub));
                    let c = policy.rule.chance();
                    chance = Some(chance.map_or(c, |k| k.or(c)));
                    if self.sample_on_first_match {
                        break;
                    }
                }
                Decision::InvertSampled => {
                    invert_sampled.get_or_insert(&policy.name);
                }
                Decision::InvertNotSampled => {
                    invert_not_sampled.get_or_insert(&policy.name);
                }
                Decision::NotSampled => any_not_sampled = true,
            }
        }
        let verdict = |decision, policy: Option<&Arc<str>>, composite_policy| Verdict {
            decision,
            policy: policy.cloned(),
            composite_policy,
            // An inverted match keeps every trace it matches.
            chance: chance.unwrap_or(Chance::ALWAYS),
        };
        if let Some(p) = invert_not_sampled {
            verdict(Decision::NotSampled, Some(p), None)
        } else if let Some((p, sub)) = sampled {
            verdict(Decision::Sampled, Some(p), sub)
        } else if let (Some(p), false) = (invert_sampled, any_not_sampled) {
            verdict(Decision::Sampled, Some(p), None)
        } else {
            verdict(Decision::NotSampled, None, None)
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
            let Some(config) = errors.parse::<config::PolicyConfig>(&path, value.clone()) else {
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
            let name: Arc<str> = config.name.as_str().into();
            if let Some(rule) = config.compile(&path, config::Level::Top, errors) {
                policies.push(Policy { name, rule });
            }
        }
        // Drop policies run first, each group keeping config order.
        policies.sort_by_key(|p| !p.rule.is_drop());
        PolicySet {
            needs_spans: policies.iter().any(|p| p.rule.needs_spans()),
            policies: policies.into(),
            sample_on_first_match,
        }
    }
}

#[cfg(test)]
mod tests;

/// Loads a policy list file (`tail_sampling.policies_file`); errors carry paths such as
/// `policies/default.yaml[2].latency.threshold_ms`.
pub fn load_policies(
    path: &std::path::Path,
    sample_on_first_match: bool,
) -> Result<PolicySet, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        errors: vec![FieldError {
            path: shown.clone(),
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse_policies(&text, &shown, sample_on_first_match)
}

/// Compiles a policy list given as YAML text; `shown` prefixes error paths.
pub fn parse_policies(
    text: &str,
    shown: &str,
    sample_on_first_match: bool,
) -> Result<PolicySet, ConfigError> {
    let fail = |message: String| ConfigError {
        errors: vec![FieldError {
            path: shown.to_owned(),
            message,
        }],
    };
    let serde_yaml::Value::Sequence(values) = read_yaml(text)? else {
        return Err(fail("must be a YAML list of policies".into()));
    };
    if values.is_empty() {
        return Err(fail("at least one policy is required".into()));
    }
    let mut errors = Errors::default();
    let set = PolicySet::compile(&values, shown, sample_on_first_match, &mut errors);
    errors.check()?;
    Ok(set)
}
