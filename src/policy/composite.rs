//! The `composite` policy: sub-policies in `policy_order`, each with a spans-per-second
//! budget; the first sub-policy that samples and is within its budget (and the total)
//! takes the trace. Unlike the collector, a sub-policy over budget lets the next one try
//! (#36959), and the total is checked against the sum of all sub-policies.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::rules::{EvalError, Rule};
use super::{Decision, TraceView};

#[derive(Debug)]
pub(super) struct SubPolicy {
    pub name: Arc<str>,
    pub rule: Rule,
    /// Spans per second this sub-policy may sample.
    pub allocated: f64,
}

#[derive(Debug)]
pub(super) struct Composite {
    subs: Vec<SubPolicy>,
    max_total: f64,
    epoch: Instant,
    window: Mutex<Window>,
}

/// Spans sampled in the current second, per sub-policy.
#[derive(Debug)]
struct Window {
    second: u64,
    spent: Vec<f64>,
}

impl Composite {
    pub(super) fn new(subs: Vec<SubPolicy>, max_total: f64) -> Self {
        let n = subs.len();
        Self {
            subs,
            max_total,
            epoch: Instant::now(),
            window: Mutex::new(Window {
                second: 0,
                spent: vec![0.0; n],
            }),
        }
    }

    pub(super) fn subs(&self) -> &[SubPolicy] {
        &self.subs
    }

    pub(super) fn subs_mut(&mut self) -> impl Iterator<Item = &mut SubPolicy> {
        self.subs.iter_mut()
    }

    /// The decision and, when sampled, the sub-policy that took the trace.
    pub(super) fn evaluate(
        &self,
        trace: &TraceView<'_>,
    ) -> Result<(Decision, Option<Arc<str>>), EvalError> {
        let spans = trace.span_count as f64;
        let second = trace.now.saturating_duration_since(self.epoch).as_secs();
        for (i, sub) in self.subs.iter().enumerate() {
            match sub.rule.evaluate(trace)? {
                Decision::Sampled => {}
                _ => continue,
            }
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            if w.second != second {
                w.second = second;
                w.spent.iter_mut().for_each(|s| *s = 0.0);
            }
            let total: f64 = w.spent.iter().sum();
            if w.spent[i] + spans <= sub.allocated && total + spans <= self.max_total {
                w.spent[i] += spans;
                return Ok((Decision::Sampled, Some(sub.name.clone())));
            }
        }
        Ok((Decision::NotSampled, None))
    }
}
