//! Adaptive policies, Refinery's EMA samplers: `ema_throughput` holds a volume goal (kept
//! spans per second, for the whole fleet: each worker takes its share), `ema_dynamic` a goal
//! sample rate. Each trace gets a key from `field_list`; every `adjustment_interval` the
//! per-key rates (keep 1 in N) are recomputed from an exponential moving average of each
//! key's span count, logarithmically, so rare keys keep more of their traces than common
//! ones. A trace is kept when its randomness is at least the threshold of 1/N, so the
//! decision is consistent and its probability goes into the spans' `th`.
//!
//! State is per policy and per worker, bounded by `max_keys` (keys past it share one
//! overflow key, counted) and aged out below `age_out_value`. A level shift (two short
//! probes in a row measuring `burst_multiple` times the volume the rates were set for, or
//! a `burst_multiple`-th of it, after `burst_detection_delay` intervals) sets a throughput
//! goal's rates for the new volume at once, and for an interval aims them at the goal less
//! what the old rates kept beyond it meanwhile (or more, after a fall); an interval whose
//! volume moved away from the averages sets the next one's rates for that volume too, so
//! the kept volume follows the goal through a change of input rate rather than the
//! averages' catching up.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::time::Instant;

use super::{Batch, Chance, Decision, TraceView};
use crate::otlp::tracestate::Threshold;
use crate::otlp::view::AnyValueView;

/// What an adaptive policy aims at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Goal {
    /// Kept spans per second, for the whole fleet.
    Throughput(f64),
    /// Keep one in this many spans on average.
    SampleRate(f64),
}

/// The settings of an adaptive policy, Refinery's keys.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub goal: Goal,
    pub fields: Vec<String>,
    pub use_trace_length: bool,
    pub interval: Duration,
    pub weight: f64,
    pub age_out_value: f64,
    pub burst_multiple: f64,
    pub burst_detection_delay: u32,
    pub max_keys: usize,
}

/// Intervals before the kept volume corrects the goal: the rates need a few intervals of
/// averages first.
const WARM_UP_INTERVALS: u32 = 3;
/// How close an interval's volume must be to the averages' for it to correct the goal.
const STEADY: f64 = 0.1;
/// An interval's count is scaled to a whole interval from at least this share of one.
const MIN_FRACTION: f64 = 0.1;
/// The probe for level shifts covers at least this share of an interval and at least
/// this many traces (so that a large trace or two do not look like a shift).
const PROBE: f64 = 0.02;
const PROBE_TRACES: u32 = 50;

/// The key shared by traces whose own key did not fit under `max_keys`.
const OVERFLOW_KEY: &str = "\u{0}overflow";

/// A level shift being followed.
#[derive(Debug, Clone, Copy)]
struct Shift {
    since: Instant,
    spans: f64,
    /// Spans per interval to keep for an interval from `since`: the goal, less what the
    /// rates of the old level kept beyond it while the shift was being detected (or plus
    /// what they kept short of it, after a fall).
    goal: f64,
}

/// Metric handles, bound by the worker that runs the policy.
#[derive(Debug)]
pub struct AdaptiveMetrics {
    /// This worker's share of the goal (spans/s, or the sample rate).
    pub goal: Gauge,
    pub keys: Gauge,
    pub min_rate: Gauge,
    pub max_rate: Gauge,
    pub overflow: Counter,
}

#[derive(Debug)]
pub(super) struct Ema {
    settings: Settings,
    state: Mutex<State>,
    metrics: OnceLock<AdaptiveMetrics>,
}

#[derive(Debug)]
struct State {
    /// Span counts of this interval, by key.
    current: HashMap<Box<str>, f64>,
    /// Keys of `current` without a moving average yet: `average` and these are every key
    /// held, which `max_keys` bounds.
    new_keys: usize,
    current_sum: f64,
    /// Moving averages of the per-interval counts, by key.
    average: HashMap<Box<str>, f64>,
    /// Keep 1 in N, by key; a key without a rate keeps everything.
    rates: HashMap<Box<str>, f64>,
    /// When the interval being counted began.
    interval_start: Option<Instant>,
    /// The volume per interval the rates were set for.
    level: f64,
    /// A level shift seen less than an interval ago: since when, the spans since, and the
    /// goal until it ends. The interval's volume mixes two levels; the one since the shift
    /// is the current one.
    shift: Option<Shift>,
    /// The last probe's volume, when it was outside the band (and whether above): a shift
    /// needs two such probes in a row, the same way.
    outside: Option<(bool, f64)>,
    /// The level-shift probe: since when, spans and traces.
    probe_start: Option<Instant>,
    probe_sum: f64,
    probe_traces: u32,
    intervals: u32,
    /// Spans this policy kept in this interval, and their moving average.
    kept_current: f64,
    kept_average: Option<f64>,
    /// The correction the goal is multiplied by (1 until the kept volume is known).
    scale: f64,
}

impl Default for State {
    fn default() -> Self {
        State {
            current: HashMap::new(),
            new_keys: 0,
            current_sum: 0.0,
            average: HashMap::new(),
            rates: HashMap::new(),
            interval_start: None,
            level: 0.0,
            shift: None,
            outside: None,
            probe_start: None,
            probe_sum: 0.0,
            probe_traces: 0,
            intervals: 0,
            kept_current: 0.0,
            kept_average: None,
            scale: 1.0,
        }
    }
}

impl Ema {
    pub(super) fn new(settings: Settings) -> Ema {
        Ema {
            settings,
            state: Mutex::new(State::default()),
            metrics: OnceLock::new(),
        }
    }

    pub(super) fn needs_spans(&self) -> bool {
        !self.settings.fields.is_empty()
    }

    /// Binds the metric handles (once; a reloaded policy set has its own policies).
    pub fn bind(&self, metrics: AdaptiveMetrics) {
        let _ = self.metrics.set(metrics);
    }

    /// The vote on a trace, and the probability it is kept with.
    pub(super) fn evaluate(&self, t: &TraceView<'_>) -> (Decision, Chance) {
        let key = self.key(t);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let start = *s.interval_start.get_or_insert(t.now);
        if t.now >= start + self.settings.interval {
            self.adjust(&mut s, t.fleet_size, t.now);
        }
        let known = s.current.contains_key(key.as_str()) || s.average.contains_key(key.as_str());
        let key: &str = if known {
            &key
        } else if s.average.len() + s.new_keys < self.settings.max_keys {
            s.new_keys += 1;
            &key
        } else {
            if let Some(m) = self.metrics.get() {
                m.overflow.increment(1);
            }
            OVERFLOW_KEY
        };
        let count = t.span_count as f64;
        *s.current.entry(key.into()).or_default() += count;
        s.current_sum += count;
        let rate = s.rates.get(key).copied().unwrap_or(1.0);
        self.probe(&mut s, count, t.fleet_size, t.now);
        let threshold = Threshold::of_probability(1.0 / rate);
        let keep = threshold.is_some_and(|th| t.randomness >= th.value());
        if keep {
            s.kept_current += count;
        }
        drop(s);
        let decision = if keep {
            Decision::Sampled
        } else {
            Decision::NotSampled
        };
        (decision, Chance::consistent(threshold))
    }

    /// The trace's key: for each field, the distinct values across its spans (span
    /// attributes first, then resource attributes; `span.name`, `span.kind` and
    /// `status.code` from the spans; `root.` fields from the root span), sorted and joined;
    /// with `use_trace_length`, the span count last.
    fn key(&self, t: &TraceView<'_>) -> String {
        let mut key = String::new();
        let mut values: BTreeSet<String> = BTreeSet::new();
        for field in &self.settings.fields {
            values.clear();
            for batch in t.batches {
                collect(batch, field, &mut values);
            }
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    key.push('•');
                }
                key.push_str(v);
            }
            key.push(',');
        }
        if self.settings.use_trace_length {
            key.push_str(&t.span_count.to_string());
        }
        key
    }

    /// The share of an interval since the current one began (at least
    /// [`MIN_FRACTION`]).
    fn elapsed(&self, s: &State, now: Instant) -> f64 {
        s.interval_start.map_or(1.0, |start| {
            (now.saturating_duration_since(start).as_secs_f64()
                / self.settings.interval.as_secs_f64())
            .max(MIN_FRACTION)
        })
    }

    /// Counts a trace into the probe; when the probe is long enough, judges it: a volume
    /// (per interval) `burst_multiple` times the one the rates were set for, or a
    /// `burst_multiple`-th of it, is a level shift, and a throughput goal's rates are set
    /// for the new volume at once (the averages keep theirs until the interval ends). For
    /// an interval, each probe then sets them again for the volume since the shift was
    /// seen (the probe that saw it straddles the change). Refinery's burst detection
    /// compares the interval's count so far with the averages, which sees a rise late and
    /// a drop never.
    fn probe(&self, s: &mut State, count: f64, fleet_size: usize, now: Instant) {
        let Goal::Throughput(per_sec) = self.settings.goal else {
            return;
        };
        let interval = self.settings.interval.as_secs_f64();
        let start = *s.probe_start.get_or_insert(now);
        s.probe_sum += count;
        s.probe_traces += 1;
        if let Some(shift) = &mut s.shift {
            shift.spans += count;
        }
        let elapsed = now.saturating_duration_since(start).as_secs_f64() / interval;
        if elapsed < PROBE || s.probe_traces < PROBE_TRACES {
            return;
        }
        let probed = s.probe_sum / elapsed;
        s.probe_start = Some(now);
        s.probe_sum = 0.0;
        s.probe_traces = 0;
        let multiple = self.settings.burst_multiple;
        let (volume, goal) = match s.shift {
            Some(shift) => {
                let since = now.saturating_duration_since(shift.since).as_secs_f64() / interval;
                let goal = if since < 1.0 {
                    shift.goal
                } else {
                    self.spans_per_interval(per_sec, fleet_size) * s.scale
                };
                (shift.spans / since, goal)
            }
            None => {
                let up = probed >= s.level * multiple;
                let outside = (up || probed * multiple <= s.level)
                    && s.intervals >= self.settings.burst_detection_delay
                    && s.level > 0.0;
                // Traces reach the policy in clumps (requests arrive in batches, due traces
                // are decided per tick): one probe alone can be off by twice or more.
                match (outside, s.outside.take()) {
                    (true, Some((was_up, before))) if was_up == up => {
                        // The old rates kept the old level's share of a higher (lower)
                        // volume while the probes ran: that debt (credit) is made good
                        // over the shift's interval, whose goal stays within a quarter
                        // of the goal and twice it.
                        let goal = self.spans_per_interval(per_sec, fleet_size) * s.scale;
                        let debt = s.kept_current - goal * self.elapsed(s, now);
                        let shift = Shift {
                            since: now,
                            spans: 0.0,
                            goal: (goal - debt).clamp(goal / 4.0, goal * 2.0),
                        };
                        s.shift = Some(shift);
                        ((before + probed) / 2.0, shift.goal)
                    }
                    (true, _) => {
                        s.outside = Some((up, probed));
                        return;
                    }
                    (false, _) => return,
                }
            }
        };
        // The averages at the new level, and keys new this interval at their pace so far
        // (a rise brings keys the averages have not seen, which would keep everything).
        let sum: f64 = s.average.values().sum();
        let so_far = self.elapsed(s, now);
        let mut view: HashMap<Box<str>, f64> = s
            .average
            .iter()
            .map(|(k, a)| (k.clone(), a * volume / sum))
            .collect();
        for (k, c) in &s.current {
            view.entry(k.clone()).or_insert(c / so_far);
        }
        s.rates = rates(&view, 1.0, goal);
        s.level = volume;
        self.publish(s, fleet_size);
    }

    /// A fleet's throughput goal as this worker's spans per interval.
    fn spans_per_interval(&self, per_sec: f64, fleet_size: usize) -> f64 {
        per_sec / fleet_size.max(1) as f64 * self.settings.interval.as_secs_f64()
    }

    /// Folds the interval (up to `now`, scaled to a whole interval) into the moving
    /// averages and recomputes every key's rate.
    fn adjust(&self, s: &mut State, fleet_size: usize, now: Instant) {
        let w = self.settings.weight;
        let age_out = self.settings.age_out_value;
        let scale_to_interval = 1.0 / self.elapsed(s, now);
        s.interval_start = Some(now);
        let current = std::mem::take(&mut s.current);
        let volume = s.current_sum * scale_to_interval;
        s.new_keys = 0;
        // Whether this interval's volume is the one the rates were computed for (within
        // 10 %): only then does the kept volume say how far the rates miss the goal.
        let before: f64 = s.average.values().sum();
        // A shift keeps measuring the volume since it was seen for an interval.
        let shifted = s.shift.is_some();
        if s.shift.is_some_and(|shift| {
            now.saturating_duration_since(shift.since) >= self.settings.interval
        }) {
            s.shift = None;
        }
        let steady = !shifted && before > 0.0 && (volume - before).abs() <= STEADY * before;
        s.average.retain(|key, avg| {
            if current.contains_key(key) {
                return true;
            }
            *avg *= 1.0 - w;
            *avg >= age_out
        });
        for (key, count) in current {
            let avg = s.average.entry(key).or_default();
            *avg = w * count * scale_to_interval + (1.0 - w) * *avg;
        }
        s.current_sum = 0.0;
        s.intervals = s.intervals.saturating_add(1);
        let sum: f64 = s.average.values().sum();
        // A throughput goal is spans per interval: when the volume moved away from the
        // averages, rates that the averages' sum would keep the goal at are set for the
        // volume itself. A sample-rate goal is a ratio, the same at any volume.
        s.level = if shifted {
            s.level
        } else if steady || volume <= 0.0 {
            sum
        } else {
            volume
        };
        let (level, goal) = match self.settings.goal {
            Goal::Throughput(per_sec) => {
                (s.level / sum, self.spans_per_interval(per_sec, fleet_size))
            }
            Goal::SampleRate(rate) => (1.0, sum / rate),
        };
        // Rates from moving averages keep more than the goal when the interval counts vary
        // (a key whose average dipped keeps more of the next interval than a steady one
        // loses): once the rates rest on a few intervals, the kept volume's own average over
        // steady intervals corrects the goal, a square-root step at a time, within 1/4 to 4
        // times it.
        let kept = std::mem::take(&mut s.kept_current) * scale_to_interval;
        if steady && s.intervals > WARM_UP_INTERVALS {
            let avg = s.kept_average.map_or(kept, |a| w * kept + (1.0 - w) * a);
            s.kept_average = Some(avg);
            if avg > 0.0 && goal > 0.0 {
                s.scale = (s.scale * (goal / avg).sqrt()).clamp(0.25, 4.0);
            }
        }
        s.rates = rates(&s.average, level, goal * s.scale);
        self.publish(s, fleet_size);
    }

    /// The policy's metrics after its rates changed.
    fn publish(&self, s: &State, fleet_size: usize) {
        if let Some(m) = self.metrics.get() {
            m.goal.set(match self.settings.goal {
                Goal::Throughput(per_sec) => per_sec / fleet_size.max(1) as f64,
                Goal::SampleRate(rate) => rate,
            });
            m.keys.set(s.average.len() as f64);
            m.min_rate
                .set(s.rates.values().copied().reduce(f64::min).unwrap_or(1.0));
            m.max_rate
                .set(s.rates.values().copied().reduce(f64::max).unwrap_or(1.0));
        }
    }
}

/// The distinct values of `field` in a batch's spans, then its resource; a field named
/// `root.<field>` reads the root span (and its resource) only.
fn collect(batch: &Batch<'_>, field: &str, out: &mut BTreeSet<String>) {
    let (field, roots_only) = match field.strip_prefix("root.") {
        Some(field) => (field, true),
        None => (field, false),
    };
    let spans = || {
        batch
            .spans()
            .iter()
            .filter(move |s| !roots_only || s.is_root())
    };
    let before = out.len();
    match field {
        "span.name" => spans().for_each(|s| {
            out.insert(s.name().to_owned());
        }),
        "span.kind" => spans().for_each(|s| {
            out.insert(s.kind.to_string());
        }),
        "status.code" => spans().for_each(|s| {
            out.insert(s.status_code.to_string());
        }),
        _ if roots_only => spans().for_each(|s| push(s.attributes().get(field), out)),
        // Attributes alone, without reading the spans' other fields.
        _ => batch
            .span_attributes()
            .for_each(|a| push(a.get(field), out)),
    }
    if out.len() == before && (!roots_only || spans().next().is_some()) {
        push(batch.resource.get(field), out);
    }
}

fn push(v: Option<AnyValueView<'_>>, out: &mut BTreeSet<String>) {
    if let Some(v) = v {
        let mut s = String::new();
        v.write_to(&mut s);
        out.insert(s);
    }
}

/// Refinery's allocation: each key's share of the goal grows with the logarithm of its
/// count (so rare keys keep more); keys that need less than their share pass the rest on
/// to the larger ones; a key keeps 1 in count / share (Refinery rounds that up to a
/// whole number, which keeps less than the goal; a threshold takes any probability).
/// Below the goal, everything is kept.
fn rates(average: &HashMap<Box<str>, f64>, level: f64, goal: f64) -> HashMap<Box<str>, f64> {
    let sum: f64 = average.values().sum::<f64>() * level;
    if sum <= goal || average.is_empty() {
        return average.keys().map(|k| (k.clone(), 1.0)).collect();
    }
    let mut keys: Vec<(&Box<str>, f64)> = average.iter().map(|(k, v)| (k, v * level)).collect();
    keys.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
    let log_sum: f64 = keys.iter().map(|(_, c)| c.max(1.0).log10()).sum();
    let ratio = if log_sum > 0.0 { goal / log_sum } else { goal };
    let mut extra = 0.0;
    let mut remaining = keys.len() as f64;
    let mut out = HashMap::with_capacity(keys.len());
    for (key, count) in keys {
        let mut share = (count.max(1.0).log10() * ratio).max(1.0);
        let extra_for_key = extra / remaining;
        share += extra_for_key;
        extra -= extra_for_key;
        remaining -= 1.0;
        let rate = if count <= share {
            extra += share - count;
            1.0
        } else {
            count / share
        };
        out.insert(key.clone(), rate);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn averages(counts: &[(&str, f64)]) -> HashMap<Box<str>, f64> {
        counts.iter().map(|(k, c)| ((*k).into(), *c)).collect()
    }

    #[test]
    fn rates_follow_refinerys_allocation_by_hand() {
        // Counts 1 000, 100 and 10 against a goal of 300 per interval: log sum 3 + 2 + 1 = 6,
        // 50 per log unit. Smallest first: share 50, needs 10, rate 1, 40 left over. Middle:
        // share 100 plus half the 40, needs 100, rate 1, 20 + 20 left over. Largest: share
        // 150 + 40 = 190: 1 in 1 000 / 190.
        let r = rates(
            &averages(&[("big", 1000.0), ("mid", 100.0), ("small", 10.0)]),
            1.0,
            300.0,
        );
        assert_eq!(r["small"], 1.0);
        assert_eq!(r["mid"], 1.0);
        assert!((r["big"] - 1000.0 / 190.0).abs() < 1e-9, "{r:?}");
        // Under the goal everything is kept.
        let r = rates(&averages(&[("a", 10.0), ("b", 20.0)]), 1.0, 100.0);
        assert!(r.values().all(|r| *r == 1.0));
        // The same counts at three times their averages' level.
        let r = rates(
            &averages(&[
                ("big", 1000.0 / 3.0),
                ("mid", 100.0 / 3.0),
                ("small", 10.0 / 3.0),
            ]),
            3.0,
            300.0,
        );
        assert_eq!((r["small"], r["mid"]), (1.0, 1.0));
        assert!((r["big"] - 1000.0 / 190.0).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn moving_averages_weigh_the_new_interval_and_age_keys_out() {
        let ema = Ema::new(Settings {
            goal: Goal::SampleRate(10.0),
            fields: vec![],
            use_trace_length: false,
            interval: Duration::from_secs(1),
            weight: 0.5,
            age_out_value: 0.5,
            burst_multiple: 2.0,
            burst_detection_delay: 3,
            max_keys: 10,
        });
        let mut s = State::default();
        s.current.insert("a".into(), 100.0);
        s.current.insert("b".into(), 1.0);
        s.current_sum = 101.0;
        let start = Instant::now();
        ema.adjust(&mut s, 1, start);
        // New keys: weight * count.
        assert_eq!(s.average["a"], 50.0);
        assert_eq!(s.average["b"], 0.5);
        s.current.insert("a".into(), 300.0);
        s.current_sum = 300.0;
        ema.adjust(&mut s, 1, start + Duration::from_secs(1));
        // 0.5 * 300 + 0.5 * 50; b decays to 0.25, under the age-out value: gone.
        assert_eq!(s.average["a"], 175.0);
        assert!(!s.average.contains_key("b"));
        // The volume moved far from the averages' 50.5: the rates are set for it.
        assert_eq!(s.level, 300.0);
        // Goal sample rate 10 of 175: 17.5 per interval for one key: 1 in 175 / 17.5.
        assert_eq!(s.rates["a"], 10.0);
    }

    #[test]
    fn keys_beyond_max_keys_share_the_overflow_key_across_intervals() {
        let ema = Ema::new(Settings {
            goal: Goal::SampleRate(10.0),
            fields: vec![],
            use_trace_length: true,
            interval: Duration::from_secs(1),
            weight: 0.5,
            age_out_value: 0.5,
            burst_multiple: 2.0,
            burst_detection_delay: 3,
            max_keys: 3,
        });
        let id = [7u8; 16];
        let start = Instant::now();
        for (second, sizes) in [(0u64, [1, 2, 3, 4]), (1, [5, 6, 7, 8])] {
            for size in sizes {
                ema.evaluate(&TraceView {
                    trace_id: &id,
                    span_count: size,
                    bytes: 0,
                    earliest_start: 0,
                    latest_end: 0,
                    status_codes: super::super::StatusCodes::NONE,
                    randomness: 0,
                    fleet_size: 1,
                    attributes: None,
                    batches: &[],
                    now: start + Duration::from_secs(second),
                });
            }
        }
        let s = ema.state.lock().unwrap();
        // Three keys from the first second (the fourth overflowed) keep their averages; the
        // second second's keys are all new and all overflow.
        assert_eq!(s.average.len(), 4);
        assert!(s.average.contains_key(OVERFLOW_KEY));
        assert_eq!(s.current.len(), 1);
        assert_eq!(s.current[OVERFLOW_KEY], 26.0);
    }
}
