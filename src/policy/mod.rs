//! Sampling policies: the compiled policy set, the exact rule that combines the policies'
//! votes into one decision (the collector's, described in the README), and the chance a kept
//! trace was kept with ([`Chance`], for its spans' `th`). Policies are a closed enum
//! ([`rules::Rule`]) compiled once at load time ([`config`]); evaluating a policy allocates
//! nothing but a regex-cache entry on a value not seen before, and an adaptive policy's key
//! (`adaptive`).

mod adaptive;
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
use crate::otlp::view::{AttributeKey, Attributes, ScopeView, SpanView};
use crate::otlp::{Chunk, TraceId};
pub use adaptive::AdaptiveMetrics;
pub use probabilistic::{Mode as ProbabilisticMode, Probabilistic};
pub use rules::EvalError;

/// A policy's vote on one trace, or a trace's final decision. (`invert_match` votes plainly,
/// as in the collector since its inverted votes were removed.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Sampled,
    NotSampled,
    Dropped,
}

impl Decision {
    /// The three final decisions, in the order metrics index them.
    pub const FINAL: [Decision; 3] = [Decision::Sampled, Decision::NotSampled, Decision::Dropped];

    /// Index into [`Decision::FINAL`].
    pub fn index(self) -> usize {
        match self {
            Decision::Sampled => 0,
            Decision::NotSampled => 1,
            _ => 2,
        }
    }

    /// The `decision` label value the collector uses.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Sampled => "sampled",
            Decision::NotSampled => "not_sampled",
            _ => "dropped",
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

/// The spans of one buffered chunk with their resource and scope, read in place, for
/// policies that look at span contents. Span fields are read on first use; attributes
/// need only the spans' bytes.
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    pub resource: Attributes<'a>,
    pub scope: ScopeView<'a>,
    chunk: Chunk<'a>,
    spans: OnceCell<Vec<SpanView<'a>>>,
}

impl<'a> Batch<'a> {
    pub fn of(chunk: Chunk<'a>) -> Batch<'a> {
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

    /// False when no span of the chunk can have an attribute `key` (see
    /// [`AttributeKey::may_be_in`]): one search over the chunk's bytes rather than one per
    /// span.
    pub fn spans_may_have(&self, key: &AttributeKey) -> bool {
        key.may_be_in(self.chunk.spans)
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

/// The probability a kept trace was kept with, as the spans' `th` will say it: the chance
/// that any of the draws that could keep it did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Chance {
    Known {
        /// The lowest threshold of the consistent draws (the trace's randomness compared
        /// to it), if any.
        consistent: Option<Threshold>,
        /// The probability that every independent draw (hash-based) misses.
        miss: f64,
    },
    /// Kept by a budget: no probability can be stated, and `th` is erased.
    Unknown,
}

impl Chance {
    /// Certain.
    pub const ALWAYS: Chance = Chance::Known {
        consistent: Some(Threshold::ALWAYS),
        miss: 1.0,
    };
    /// No draw at all.
    pub const NEVER: Chance = Chance::Known {
        consistent: None,
        miss: 1.0,
    };

    /// A consistent draw at `threshold`.
    pub fn consistent(threshold: Option<Threshold>) -> Chance {
        Chance::Known {
            consistent: threshold,
            miss: 1.0,
        }
    }

    /// An independent draw with probability `p`.
    pub fn independent(p: f64) -> Chance {
        Chance::Known {
            consistent: None,
            miss: 1.0 - p.clamp(0.0, 1.0),
        }
    }

    /// The probability of keeping, for a trace that arrived kept with probability `p_in`
    /// by a consistent sampler (so its randomness is at least that sampler's threshold).
    pub fn probability_given(self, p_in: f64) -> Option<f64> {
        match self {
            Chance::Known { consistent, miss } => {
                let c = consistent.map_or(0.0, |t| (t.probability() / p_in).min(1.0));
                Some(1.0 - (1.0 - c) * miss)
            }
            Chance::Unknown => None,
        }
    }

    /// Either draw keeps.
    pub fn either(self, other: Chance) -> Chance {
        match (self, other) {
            (
                Chance::Known {
                    consistent: a,
                    miss: m,
                },
                Chance::Known {
                    consistent: b,
                    miss: n,
                },
            ) => Chance::Known {
                consistent: match (a, b) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                miss: m * n,
            },
            _ => Chance::Unknown,
        }
    }

    /// Both draws keep: the larger threshold when both are consistent, the product of
    /// the probabilities otherwise.
    pub fn both(self, other: Chance) -> Chance {
        match (self, other) {
            (
                Chance::Known {
                    consistent: a,
                    miss: 1.0,
                },
                Chance::Known {
                    consistent: b,
                    miss: 1.0,
                },
            ) => Chance::consistent(a.zip(b).map(|(a, b)| a.max(b))),
            (a, b) => match (a.probability_given(1.0), b.probability_given(1.0)) {
                (Some(p), Some(q)) => Chance::independent(p * q),
                _ => Chance::Unknown,
            },
        }
    }

    /// The threshold a kept span carries, given the one it arrived with: the composed
    /// probability, so never lower than the incoming threshold; `None` (erase) when the
    /// probability is unknown.
    pub fn threshold_after(self, incoming: Option<Threshold>) -> Option<Threshold> {
        let p_in = incoming.map_or(1.0, Threshold::probability);
        let p = p_in * self.probability_given(p_in)?;
        let t = Threshold::of_probability(p)?;
        Some(incoming.map_or(t, |i| t.max(i)))
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
    /// Workers in the fleet (1 without membership): adaptive goals are shared among them.
    pub fleet_size: usize,
    /// Which of the deciding set's attribute conditions the trace's resources and spans
    /// met, as a worker found them when the spans arrived ([`AttributeMatches`]); `None`
    /// when they are to be read from `batches`.
    pub attributes: Option<u64>,
    /// The spans; empty when no policy needs them.
    pub batches: &'a [Batch<'a>],
    /// Decision time, for the rate limiters.
    pub now: Instant,
}

/// The set's final decision and the policy that made it.
#[derive(Debug, Clone, PartialEq)]
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

/// Which attribute conditions (`string_attribute`, `numeric_attribute` and
/// `boolean_attribute`, at any depth) of one policy set some of a trace's resources and
/// spans meet. A worker gathers them as spans arrive, while their bytes are at hand, so
/// that deciding reads no span for them; matches gathered under another policy set (before
/// a reload) are unknown, and the spans are read at decision time instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttributeMatches {
    /// The [`PolicySet`]'s id; 0 for none.
    set: u64,
    /// Bit `i` for the condition in slot `i`.
    found: u64,
}

impl AttributeMatches {
    /// Matches of no policy set.
    pub const UNKNOWN: AttributeMatches = AttributeMatches { set: 0, found: 0 };

    /// The matches of both, when they are of one set.
    pub fn union(self, other: AttributeMatches) -> AttributeMatches {
        if self.set == other.set {
            AttributeMatches {
                set: self.set,
                found: self.found | other.found,
            }
        } else {
            AttributeMatches::UNKNOWN
        }
    }

    /// The matches, for [`TraceView::attributes`], when they are `set`'s.
    pub fn of(self, set: &PolicySet) -> Option<u64> {
        (self.set != 0 && self.set == set.id).then_some(self.found)
    }
}

/// Policy sets compiled so far, for their ids.
static POLICY_SETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The compiled, ordered policy set: drop policies first, then the rest, each group in
/// config order.
#[derive(Debug, Clone)]
pub struct PolicySet {
    policies: Arc<[Policy]>,
    sample_on_first_match: bool,
    /// Unique to this compilation, for [`AttributeMatches`].
    id: u64,
    /// Whether some rule reads spans beyond its attribute matches.
    needs_spans: bool,
    /// Whether some attribute condition has a slot in [`AttributeMatches`].
    slotted: bool,
    /// The top-level probabilistic policies' draws, which every trace gets.
    draws: Chance,
}

#[derive(Debug)]
pub struct Policy {
    pub name: Arc<str>,
    rule: rules::Rule,
}

impl Policy {
    /// Gives an adaptive policy its metric handles (other policies have none).
    pub fn bind_adaptive(&self, metrics: impl FnOnce() -> AdaptiveMetrics) {
        if let rules::Rule::Adaptive(ema) = &self.rule {
            ema.bind(metrics());
        }
    }

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

    /// Whether any policy reads span contents, so the spans must be read first: with the
    /// trace's [`AttributeMatches`] known, only rules beyond attribute conditions do.
    pub fn needs_spans(&self, matches_known: bool) -> bool {
        self.needs_spans || (self.slotted && !matches_known)
    }

    /// Which of the set's attribute conditions the attributes of a resource meet.
    pub fn resource_matches(&self, resource: &Attributes<'_>) -> AttributeMatches {
        self.matches(|c| c.met_by_resource(resource))
    }

    /// Which of the set's attribute conditions the attributes of some of `spans` meet.
    pub fn span_matches<'a>(
        &self,
        spans: impl Iterator<Item = Attributes<'a>> + Clone,
    ) -> AttributeMatches {
        self.matches(|c| c.met_by_spans(spans.clone()))
    }

    fn matches(&self, mut met: impl FnMut(&rules::AttributeCondition) -> bool) -> AttributeMatches {
        let mut found = 0u64;
        for p in self.policies.iter() {
            p.rule.for_each_slotted(&mut |c, slot| {
                if found & (1 << slot) == 0 && met(c) {
                    found |= 1 << slot;
                }
            });
        }
        AttributeMatches {
            set: self.id,
            found,
        }
    }

    /// Evaluates the policies on `trace` and combines the votes with the collector's
    /// precedence: Dropped > Sampled > NotSampled. An erroring policy abstains. `on_vote` sees each
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
        // The chance a kept trace was kept with: certain when a policy that keeps every
        // match kept it; unknown when a budget did; otherwise any of the draws: every
        // top-level probabilistic policy (whatever its vote: it draws for every trace) and
        // the compound policies that kept it.
        let (mut certain, mut budget, mut drawn) = (false, false, self.draws);
        for (policy_index, policy) in self.policies.iter().enumerate() {
            if !include(policy) {
                continue;
            }
            let started = std::time::Instant::now();
            let result = policy.rule.evaluate_named(trace);
            on_vote(Vote {
                policy_index,
                decision: result.as_ref().map(|v| v.decision).map_err(|e| *e),
                elapsed: started.elapsed(),
            });
            let Ok(rules::RuleVote {
                decision,
                sub,
                draw,
            }) = result
            else {
                continue;
            };
            // An adaptive policy draws for every trace, whatever its vote.
            if let Some(d) = draw {
                drawn = drawn.either(d);
            }
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
                    match policy.rule.chance() {
                        _ if policy.rule.is_probabilistic() || draw.is_some() => {}
                        c if c == Chance::ALWAYS => certain = true,
                        Chance::Unknown => budget = true,
                        c => drawn = drawn.either(c),
                    }
                    if self.sample_on_first_match {
                        break;
                    }
                }
                Decision::NotSampled => {}
            }
        }
        let verdict = |decision, policy: Option<&Arc<str>>, composite_policy| Verdict {
            decision,
            policy: policy.cloned(),
            composite_policy,
            chance: if certain {
                Chance::ALWAYS
            } else if budget {
                Chance::Unknown
            } else {
                drawn
            },
        };
        match sampled {
            Some((p, sub)) => verdict(Decision::Sampled, Some(p), sub),
            None => verdict(Decision::NotSampled, None, None),
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
        let mut slots = 0;
        for p in &mut policies {
            p.rule.assign_slots(&mut slots);
        }
        PolicySet {
            id: POLICY_SETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
            needs_spans: policies.iter().any(|p| p.rule.needs_spans()),
            slotted: slots > 0,
            draws: policies
                .iter()
                .filter(|p| p.rule.is_probabilistic())
                .fold(Chance::NEVER, |c, p| c.either(p.rule.chance())),
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
