//! Compiled policy rules and their evaluation on one trace, with the collector's exact
//! semantics: attribute lookups look at resource attributes first, then span attributes,
//! with Go pdata's coercions (`Str()` is "" and `Int()` is 0 and `Bool()` is false for
//! values of another type).

use std::collections::HashSet;

use super::adaptive::Ema;
use super::composite::Composite;
use super::ottl::OttlCondition;
use super::probabilistic::Probabilistic;
use super::token_bucket::TokenBucket;
use super::{Chance, Decision, TraceView};
use crate::cache::Lru;
use crate::otlp::view::{AnyValueView, AttributeKey, Attributes, SpanView};

/// Why a policy could not decide; the policy abstains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("an ottl condition could not be evaluated")]
    Condition,
}

/// A top-level rule's vote: the decision, the composite sub-policy that sampled, and for
/// an adaptive policy the draw it made for this trace (whatever its vote).
pub(super) struct RuleVote {
    pub decision: Decision,
    pub sub: Option<std::sync::Arc<str>>,
    pub draw: Option<Chance>,
}

#[derive(Debug)]
pub(super) enum Rule {
    AlwaysSample,
    Probabilistic(Probabilistic),
    Latency {
        threshold_ms: i64,
        upper_threshold_ms: i64,
    },
    /// `string_attribute`, `numeric_attribute` and `boolean_attribute`.
    Attribute(Box<AttributeCondition>),
    StatusCode {
        codes: Vec<i32>,
    },
    RateLimiting(TokenBucket),
    BytesLimiting(TokenBucket),
    SpanCount {
        min: u64,
        max: u64,
    },
    TraceState {
        key: String,
        values: HashSet<String>,
    },
    TraceFlags,
    And(Vec<Rule>),
    Drop(Vec<Rule>),
    Not(Box<Rule>),
    /// `ema_throughput` and `ema_dynamic`.
    Adaptive(Box<Ema>),
    Composite(Composite),
    Ottl(OttlCondition),
}

/// The collector's `hasResourceOrSpanWithCondition`: met when a resource attribute or a
/// span attribute named `key` passes `test`. With `invert` the rule votes the other way
/// (not sampled when any does, sampled otherwise).
#[derive(Debug)]
pub(super) struct AttributeCondition {
    pub key: AttributeKey,
    pub test: ValueTest,
    pub invert: bool,
    /// Its bit in the [`super::AttributeMatches`] a worker gathers as spans arrive; `None`
    /// past the 64 conditions those hold, and then read from the spans at decision time.
    pub slot: Option<u8>,
}

/// What an attribute's value must be, with Go pdata's coercions.
#[derive(Debug)]
pub(super) enum ValueTest {
    /// A string one of the values (or regexes) accepts; a span attribute must also be
    /// non-empty, a resource one need not.
    Str(StringMatcher),
    Int {
        min: i64,
        max: i64,
    },
    Bool(bool),
}

impl AttributeCondition {
    fn passes(&self, v: &AnyValueView<'_>, on_span: bool) -> bool {
        match &self.test {
            ValueTest::Str(matcher) => {
                let s = as_str(v);
                !(on_span && s.is_empty()) && matcher.matches(s)
            }
            ValueTest::Int { min, max } => (*min..=*max).contains(&as_int(v)),
            ValueTest::Bool(value) => as_bool(v) == *value,
        }
    }

    pub(super) fn met_by_resource(&self, resource: &Attributes<'_>) -> bool {
        resource
            .get_key(&self.key)
            .is_some_and(|v| self.passes(&v, false))
    }

    pub(super) fn met_by_spans<'a>(&self, mut spans: impl Iterator<Item = Attributes<'a>>) -> bool {
        spans.any(|a| a.get_key(&self.key).is_some_and(|v| self.passes(&v, true)))
    }

    /// Whether any resource or span of the trace meets the condition: what the worker
    /// found as the spans arrived, when it has that, else read from the spans.
    fn met_by(&self, t: &TraceView<'_>) -> bool {
        match (self.slot, t.attributes) {
            (Some(slot), Some(found)) => found & (1 << slot) != 0,
            _ => t.batches.iter().any(|b| {
                self.met_by_resource(&b.resource)
                    || b.spans_may_have(&self.key) && self.met_by_spans(b.span_attributes())
            }),
        }
    }
}

/// Exact values, or unanchored regexes with results cached per attribute value.
#[derive(Debug)]
pub(super) enum StringMatcher {
    Exact(HashSet<String>),
    Regex {
        regexes: Vec<regex::Regex>,
        cache: Lru<String, bool>,
    },
}

impl StringMatcher {
    pub(super) fn exact(values: HashSet<String>) -> Self {
        StringMatcher::Exact(values)
    }

    pub(super) fn regex(regexes: Vec<regex::Regex>, cache_size: u64) -> Self {
        StringMatcher::Regex {
            regexes,
            cache: Lru::new(cache_size),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            StringMatcher::Exact(values) => values.contains(value),
            StringMatcher::Regex { regexes, cache } => {
                if let Some(hit) = cache.get(value) {
                    return hit;
                }
                let hit = regexes.iter().any(|r| r.is_match(value));
                cache.insert(value.to_owned(), hit);
                hit
            }
        }
    }
}

fn as_str<'a>(v: &AnyValueView<'a>) -> &'a str {
    match v {
        AnyValueView::Str(s) => s,
        _ => "",
    }
}

fn as_int(v: &AnyValueView<'_>) -> i64 {
    match v {
        AnyValueView::Int(i) => *i,
        _ => 0,
    }
}

fn as_bool(v: &AnyValueView<'_>) -> bool {
    matches!(v, AnyValueView::Bool(true))
}

impl Rule {
    /// Whether evaluating reads the spans (not only the trace's counters and the attribute
    /// matches gathered as they arrived).
    pub(super) fn needs_spans(&self) -> bool {
        match self {
            Rule::AlwaysSample
            | Rule::Probabilistic(_)
            | Rule::Latency { .. }
            | Rule::StatusCode { .. }
            | Rule::RateLimiting(_)
            | Rule::BytesLimiting(_)
            | Rule::SpanCount { .. } => false,
            Rule::Attribute(c) => c.slot.is_none(),
            Rule::TraceState { .. } | Rule::TraceFlags | Rule::Ottl(_) => true,
            Rule::And(subs) | Rule::Drop(subs) => subs.iter().any(Rule::needs_spans),
            Rule::Not(sub) => sub.needs_spans(),
            Rule::Adaptive(ema) => ema.needs_spans(),
            Rule::Composite(c) => c.subs().iter().any(|s| s.rule.needs_spans()),
        }
    }

    /// The probability a trace this rule voted to keep was kept with: 1 for rules that keep
    /// every trace that matches, the percentage for `probabilistic`, unknown for budgets
    /// (rate, bytes, composite) and for rules built on those.
    pub(super) fn chance(&self) -> Chance {
        match self {
            Rule::Probabilistic(p) => p.chance(),
            // An adaptive policy's chance is its trace's key's rate (see `evaluate_named`);
            // nested (not allowed) it would be unknown.
            Rule::RateLimiting(_)
            | Rule::BytesLimiting(_)
            | Rule::Composite(_)
            | Rule::Adaptive(_) => Chance::Unknown,
            Rule::And(subs) => subs
                .iter()
                .map(Rule::chance)
                .fold(Chance::ALWAYS, Chance::both),
            // Keeping what a rule rejects is certain only when the rule is.
            Rule::Not(sub) => {
                if sub.chance() == Chance::ALWAYS {
                    Chance::ALWAYS
                } else {
                    Chance::Unknown
                }
            }
            _ => Chance::ALWAYS,
        }
    }

    /// Gives each attribute condition in the rule the next free slot of `next`, while
    /// there are any.
    pub(super) fn assign_slots(&mut self, next: &mut u32) {
        match self {
            Rule::Attribute(c) if *next < 64 => {
                c.slot = Some(*next as u8);
                *next += 1;
            }
            Rule::And(subs) | Rule::Drop(subs) => {
                subs.iter_mut().for_each(|s| s.assign_slots(next));
            }
            Rule::Not(sub) => sub.assign_slots(next),
            Rule::Composite(c) => c.subs_mut().for_each(|s| s.rule.assign_slots(next)),
            _ => {}
        }
    }

    /// Calls `f` on every attribute condition in the rule that has a slot.
    pub(super) fn for_each_slotted(&self, f: &mut impl FnMut(&AttributeCondition, u8)) {
        match self {
            Rule::Attribute(c) => {
                if let Some(slot) = c.slot {
                    f(c, slot);
                }
            }
            Rule::And(subs) | Rule::Drop(subs) => {
                subs.iter().for_each(|s| s.for_each_slotted(f));
            }
            Rule::Not(sub) => sub.for_each_slotted(f),
            Rule::Composite(c) => c.subs().iter().for_each(|s| s.rule.for_each_slotted(f)),
            _ => {}
        }
    }

    pub(super) fn is_probabilistic(&self) -> bool {
        matches!(self, Rule::Probabilistic(_))
    }

    /// Whether the vote depends on state beyond the trace (budgets).
    pub(super) fn is_stateful(&self) -> bool {
        match self {
            Rule::RateLimiting(_)
            | Rule::BytesLimiting(_)
            | Rule::Composite(_)
            | Rule::Adaptive(_) => true,
            Rule::And(subs) | Rule::Drop(subs) => subs.iter().any(Rule::is_stateful),
            Rule::Not(sub) => sub.is_stateful(),
            _ => false,
        }
    }

    pub(super) fn is_drop(&self) -> bool {
        matches!(self, Rule::Drop(_))
    }

    /// The rule's vote; for a composite, also the sub-policy that sampled.
    pub(super) fn evaluate_named(&self, t: &TraceView<'_>) -> Result<RuleVote, EvalError> {
        let vote = |decision, sub, draw| RuleVote {
            decision,
            sub,
            draw,
        };
        match self {
            Rule::Composite(c) => c.evaluate(t).map(|(d, sub)| vote(d, sub, None)),
            Rule::Adaptive(ema) => {
                let (d, chance) = ema.evaluate(t);
                Ok(vote(d, None, Some(chance)))
            }
            other => other.evaluate(t).map(|d| vote(d, None, None)),
        }
    }

    pub(super) fn evaluate(&self, t: &TraceView<'_>) -> Result<Decision, EvalError> {
        use Decision::*;
        let sampled = |b: bool| if b { Sampled } else { NotSampled };
        Ok(match self {
            Rule::AlwaysSample => Sampled,
            Rule::Probabilistic(p) => p.decide(t.trace_id, t.randomness),
            Rule::Latency {
                threshold_ms,
                upper_threshold_ms,
            } => {
                // The whole trace's duration, not a running one (contrib #43948).
                let ms = (t.latest_end.saturating_sub(t.earliest_start) / 1_000_000) as i64;
                if *upper_threshold_ms == 0 {
                    sampled(ms > *threshold_ms)
                } else {
                    sampled(*threshold_ms < ms && ms <= *upper_threshold_ms)
                }
            }
            Rule::Attribute(c) => sampled(c.met_by(t) != c.invert),
            Rule::StatusCode { codes } => {
                sampled(codes.iter().any(|c| t.status_codes.contains(*c)))
            }
            Rule::RateLimiting(bucket) => sampled(bucket.allow(t.span_count as f64, t.now)),
            Rule::BytesLimiting(bucket) => sampled(bucket.allow(t.bytes as f64, t.now)),
            Rule::SpanCount { min, max } => {
                sampled(t.span_count >= *min && (*max == 0 || t.span_count <= *max))
            }
            Rule::TraceState { key, values } => sampled(spans(t).any(|s| {
                s.trace_state()
                    .split(',')
                    .filter_map(|member| member.trim().split_once('='))
                    .any(|(k, v)| k == key && values.contains(v))
            })),
            Rule::TraceFlags => sampled(spans(t).any(|s| s.flags & 0x01 != 0)),
            Rule::And(subs) => {
                for sub in subs {
                    if sub.evaluate(t)? == NotSampled {
                        return Ok(NotSampled);
                    }
                }
                Sampled
            }
            Rule::Drop(subs) => {
                for sub in subs {
                    if sub.evaluate(t)? == NotSampled {
                        return Ok(NotSampled);
                    }
                }
                Dropped
            }
            Rule::Not(sub) => match sub.evaluate(t)? {
                Sampled => NotSampled,
                NotSampled => Sampled,
                other => other,
            },
            Rule::Composite(c) => c.evaluate(t)?.0,
            Rule::Adaptive(ema) => ema.evaluate(t).0,
            Rule::Ottl(c) => c.evaluate(t)?,
        })
    }
}

fn spans<'a>(t: &TraceView<'a>) -> impl Iterator<Item = &'a SpanView<'a>> {
    t.batches.iter().flat_map(|b| b.spans().iter())
}
