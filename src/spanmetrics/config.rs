//! `spanmetrics:`, the collector's span metrics connector keys and defaults, plus the
//! worker identity that makes every series single-writer.

use std::time::Duration;

use serde::Deserialize;

use crate::config::Errors;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanMetricsConfig {
    #[serde(default)]
    pub histogram: HistogramConfig,
    #[serde(default)]
    pub dimensions: Vec<Dimension>,
    /// Default labels to leave out: `service.name`, `span.name`, `span.kind`, `status.code`.
    #[serde(default)]
    pub exclude_dimensions: Vec<String>,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Series idle this long are dropped; 0 keeps them forever.
    #[serde(default, with = "humantime_serde")]
    pub metrics_expiration: Duration,
    /// Most series (calls and duration share one key) before new label sets fold into the
    /// overflow series; 0 means unlimited.
    #[serde(default = "default_cardinality_limit")]
    pub aggregation_cardinality_limit: usize,
    #[serde(default)]
    pub exemplars: ExemplarsConfig,
    #[serde(default)]
    pub events: EventsConfig,
    /// The worker identity label's name.
    #[serde(default = "default_identity_label")]
    pub identity_label: String,
    /// The worker identity; default `POD_NAME`, else the hostname.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The collector's temporality: cumulative (its default) is what a scrape gives, so it
    /// is accepted; delta is refused.
    #[serde(default)]
    pub aggregation_temporality: Option<String>,
    /// How often the collector pushes its span metrics: accepted with no effect (they are
    /// rendered at each scrape).
    #[serde(default, with = "humantime_serde")]
    pub metrics_flush_interval: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistogramConfig {
    #[serde(default)]
    pub disable: bool,
    #[serde(default)]
    pub unit: Unit,
    #[serde(default)]
    pub explicit: ExplicitConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Unit {
    #[default]
    #[serde(rename = "ms")]
    Milliseconds,
    #[serde(rename = "s")]
    Seconds,
}

impl Unit {
    /// The Prometheus suffix of the duration metric.
    pub fn suffix(self) -> &'static str {
        match self {
            Unit::Milliseconds => "milliseconds",
            Unit::Seconds => "seconds",
        }
    }

    pub fn of(self, d: Duration) -> f64 {
        match self {
            Unit::Milliseconds => d.as_secs_f64() * 1000.0,
            Unit::Seconds => d.as_secs_f64(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplicitConfig {
    /// Upper bounds as durations (`2ms`, `1s`).
    #[serde(default = "default_buckets")]
    pub buckets: Vec<humantime_serde::Serde<Duration>>,
}

impl Default for ExplicitConfig {
    fn default() -> Self {
        Self {
            buckets: default_buckets(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dimension {
    pub name: String,
    #[serde(default)]
    pub default: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExemplarsConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_max_exemplars")]
    pub max_per_data_point: usize,
}

impl Default for ExemplarsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_per_data_point: default_max_exemplars(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub dimensions: Vec<Dimension>,
}

fn default_namespace() -> String {
    "traces.span.metrics".into()
}
fn default_cardinality_limit() -> usize {
    10_000
}
fn default_identity_label() -> String {
    "collector_instance_id".into()
}
fn default_max_exemplars() -> usize {
    5
}
/// The collector's `defaultHistogramBucketsMs`.
fn default_buckets() -> Vec<humantime_serde::Serde<Duration>> {
    [
        2, 4, 6, 8, 10, 50, 100, 200, 400, 800, 1000, 1400, 2000, 5000, 10000, 15000,
    ]
    .into_iter()
    .map(|ms| Duration::from_millis(ms).into())
    .collect()
}

/// Span metrics need a worker identity and none was found.
#[derive(Debug, thiserror::Error)]
#[error("spanmetrics: no worker identity: set spanmetrics.instance_id or POD_NAME")]
pub struct NoIdentity;

/// The default labels `exclude_dimensions` may remove.
pub const DEFAULT_DIMENSIONS: [&str; 4] = ["service.name", "span.name", "span.kind", "status.code"];

impl SpanMetricsConfig {
    /// Checks the section, recording problems under `spanmetrics`.
    pub fn validate(&self, errors: &mut Errors) {
        let buckets = &self.histogram.explicit.buckets;
        if buckets.windows(2).any(|w| *w[0] >= *w[1]) {
            errors.push(
                "spanmetrics.histogram.explicit.buckets",
                "must be strictly increasing",
            );
        }
        for (i, d) in self.exclude_dimensions.iter().enumerate() {
            if !DEFAULT_DIMENSIONS.contains(&d.as_str()) {
                errors.push(
                    format!("spanmetrics.exclude_dimensions[{i}]"),
                    format!("{d:?} is not one of {}", DEFAULT_DIMENSIONS.join(", ")),
                );
            }
        }
        let mut seen: Vec<String> = DEFAULT_DIMENSIONS.iter().map(|d| label_name(d)).collect();
        seen.push(label_name(&self.identity_label));
        for (i, d) in self.dimensions.iter().enumerate() {
            let label = label_name(&d.name);
            if d.name.is_empty() {
                errors.push(
                    format!("spanmetrics.dimensions[{i}].name"),
                    "must not be empty",
                );
            } else if seen.contains(&label) {
                errors.push(
                    format!("spanmetrics.dimensions[{i}].name"),
                    format!("{:?} duplicates the label {label:?}", d.name),
                );
            } else {
                seen.push(label);
            }
        }
        match self.aggregation_temporality.as_deref() {
            None | Some("AGGREGATION_TEMPORALITY_CUMULATIVE") => {}
            Some("AGGREGATION_TEMPORALITY_DELTA") => errors.push(
                "spanmetrics.aggregation_temporality",
                "delta is not supported: span metrics are scraped, which is cumulative",
            ),
            Some(other) => errors.push(
                "spanmetrics.aggregation_temporality",
                format!("{other:?} is not AGGREGATION_TEMPORALITY_CUMULATIVE or AGGREGATION_TEMPORALITY_DELTA"),
            ),
        }
        if self.events.enabled && self.events.dimensions.is_empty() {
            errors.push(
                "spanmetrics.events.dimensions",
                "are required when events are enabled",
            );
        }
        if self.exemplars.enabled {
            errors.within(
                "spanmetrics.exemplars.max_per_data_point",
                self.exemplars.max_per_data_point,
                1,
                1_000,
            );
        }
        errors.within(
            "spanmetrics.aggregation_cardinality_limit",
            self.aggregation_cardinality_limit,
            0,
            10_000_000,
        );
        errors.within(
            "spanmetrics.histogram.explicit.buckets",
            buckets.len(),
            0,
            1_000,
        );
        if self.identity_label.is_empty() {
            errors.push("spanmetrics.identity_label", "must not be empty");
        }
        if let Some(id) = &self.instance_id {
            if id.trim().is_empty() {
                errors.push(
                    "spanmetrics.instance_id",
                    "must not be empty: every series needs its worker's identity",
                );
            }
        }
    }

    /// The identity: `instance_id`, else `POD_NAME`, else the hostname. Empty is refused.
    pub fn resolve_identity(&self) -> Result<String, NoIdentity> {
        let id = self
            .instance_id
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok().filter(|v| !v.is_empty()))
            .or_else(|| gethostname::gethostname().into_string().ok())
            .unwrap_or_default();
        if id.trim().is_empty() {
            Err(NoIdentity)
        } else {
            Ok(id)
        }
    }
}

/// A Prometheus label or metric name from an OTel name: every character outside
/// `[a-zA-Z0-9_]` becomes `_`, and a leading digit gets a `_` before it.
pub fn label_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}
