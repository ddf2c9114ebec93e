//! The worker's policy side: the active policy set with its per-policy metrics (swapped
//! whole on reload, so a decision never sees half of each), evaluation of one trace, and
//! what a decision means for export under `dry_run` and `record_policy`.

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use metrics::Counter;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use tokio::time::Instant;

use crate::buffer::TraceEntry;
use crate::otlp::{scope_attributes_fragment, TraceId};
use crate::policy::{randomness, AdaptiveMetrics, Batch, Decision, PolicySet, TraceView, Verdict};
use crate::telemetry::{self, Registry};

struct PolicyMetrics {
    traces: [Counter; 3],
    spans: [Counter; 3],
    executions: Counter,
    time_us: Counter,
}

/// A policy set and the metric handles of its policies, by index.
struct Active {
    set: PolicySet,
    metrics: Vec<PolicyMetrics>,
}

impl Active {
    fn new(set: PolicySet, registry: &Registry) -> Self {
        let by_decision = |name: &'static str, policy: &str| {
            Decision::FINAL.map(|d| {
                registry.counter(
                    name,
                    &[
                        ("policy", policy),
                        ("sampled", d.sampled_label()),
                        ("decision", d.label()),
                    ],
                )
            })
        };
        for p in set.policies() {
            let labels = [("policy", &*p.name)];
            p.bind_adaptive(|| AdaptiveMetrics {
                goal: registry.gauge(telemetry::ADAPTIVE_GOAL, &labels),
                keys: registry.gauge(telemetry::ADAPTIVE_KEYS, &labels),
                min_rate: registry.gauge(telemetry::ADAPTIVE_RATE_MIN, &labels),
                max_rate: registry.gauge(telemetry::ADAPTIVE_RATE_MAX, &labels),
                overflow: registry.counter(telemetry::ADAPTIVE_OVERFLOW, &labels),
            });
        }
        let metrics = set
            .policies()
            .iter()
            .map(|p| PolicyMetrics {
                traces: by_decision(telemetry::TS_COUNT_TRACES_SAMPLED, &p.name),
                spans: by_decision(telemetry::TS_COUNT_SPANS_SAMPLED, &p.name),
                executions: registry
                    .counter(telemetry::TS_POLICY_EXECUTION_COUNT, &[("policy", &p.name)]),
                time_us: registry.counter(
                    telemetry::TS_POLICY_EXECUTION_TIME_SUM,
                    &[("policy", &p.name)],
                ),
            })
            .collect();
        Self { set, metrics }
    }
}

pub(crate) struct Decider {
    active: RwLock<Arc<Active>>,
    registry: Registry,
    evaluation_errors: Counter,
    reload_success: Counter,
    reload_failure: Counter,
    record_policy: bool,
    dry_run: bool,
}

impl Decider {
    pub(crate) fn new(
        set: PolicySet,
        record_policy: bool,
        dry_run: bool,
        registry: &Registry,
    ) -> Self {
        let reload = |result| registry.counter(telemetry::POLICY_RELOADS, &[("result", result)]);
        Self {
            active: RwLock::new(Arc::new(Active::new(set, registry))),
            registry: registry.clone(),
            evaluation_errors: registry.counter(telemetry::TS_POLICY_EVALUATION_ERROR, &[]),
            reload_success: reload("success"),
            reload_failure: reload("failure"),
            record_policy,
            dry_run,
        }
    }

    /// Makes `set` the policy set for every decision from now on, pending traces included.
    pub(crate) fn replace(&self, set: PolicySet) {
        let active = Arc::new(Active::new(set, &self.registry));
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = active;
        self.reload_success.increment(1);
    }

    /// Counts a reload that kept the old policies.
    pub(crate) fn reload_failed(&self) {
        self.reload_failure.increment(1);
    }

    fn current(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The policy set deciding from now on, for the attribute matches of arriving spans.
    pub(crate) fn policies(&self) -> PolicySet {
        self.current().set.clone()
    }

    /// Evaluates the policies on a pending trace, counting each vote; adaptive goals are
    /// shared among `fleet_size` workers.
    pub(crate) fn decide(
        &self,
        id: &TraceId,
        entry: &TraceEntry,
        fleet_size: usize,
        now: Instant,
    ) -> Verdict {
        let active = self.current();
        let attributes = entry.attributes.of(&active.set);
        let batches: Vec<Batch<'_>> = if active.set.needs_spans(attributes.is_some()) {
            entry.spans.chunks().map(Batch::of).collect()
        } else {
            Vec::new()
        };
        let view = TraceView {
            trace_id: id,
            span_count: entry.span_count,
            bytes: entry.bytes,
            earliest_start: entry.earliest_start,
            status_codes: entry.status_codes,
            latest_end: entry.latest_end,
            randomness: randomness(id, entry.rv),
            fleet_size,
            attributes,
            batches: &batches,
            now,
        };
        active.set.decide(&view, |vote| {
            let m = &active.metrics[vote.policy_index];
            m.executions.increment(1);
            m.time_us.increment(vote.elapsed.as_micros() as u64);
            match vote.decision {
                Ok(d) => {
                    m.traces[d.index()].increment(1);
                    m.spans[d.index()].increment(entry.span_count);
                }
                Err(_) => self.evaluation_errors.increment(1),
            }
        })
    }

    /// Whether spans with this decision are exported: the sampled ones, or all in a dry run.
    pub(crate) fn exports(&self, decision: Decision) -> bool {
        self.dry_run || decision == Decision::Sampled
    }

    /// The scope attributes exported spans carry, as a scope fragment for
    /// `GroupedRequest`: the decision in a dry run, and with
    /// `record_policy` the deciding policy (and composite sub-policy), plus
    /// `tailsampling.cached_decision` for late spans released by the decision cache. Both
    /// show a kept trace's sampling probability (`tailsampling.probability`) when it is
    /// known.
    pub(crate) fn annotation(&self, verdict: &Verdict, cached: bool) -> Option<Bytes> {
        let mut attributes = Vec::new();
        if self.dry_run {
            attributes.push(string("tailsampling.decision", verdict.decision.label()));
        }
        let kept = verdict.decision == Decision::Sampled;
        if let (true, true, Some(p)) = (
            self.dry_run || self.record_policy,
            kept,
            verdict.chance.probability_given(1.0),
        ) {
            attributes.push(KeyValue {
                key: "tailsampling.probability".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::DoubleValue(p)),
                }),
                ..Default::default()
            });
        }
        if self.record_policy && verdict.decision == Decision::Sampled {
            if let Some(p) = &verdict.policy {
                attributes.push(string("tailsampling.policy", p));
            }
            if let Some(p) = &verdict.composite_policy {
                attributes.push(string("tailsampling.composite_policy", p));
            }
            if cached {
                attributes.push(KeyValue {
                    key: "tailsampling.cached_decision".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::BoolValue(true)),
                    }),
                    ..Default::default()
                });
            }
        }
        (!attributes.is_empty()).then(|| scope_attributes_fragment(attributes))
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}
