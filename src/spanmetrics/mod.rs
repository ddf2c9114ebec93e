//! Span metrics (the collector's `spanmetrics` connector, in the worker): calls, duration
//! and optionally events per service, operation, kind, status and configured dimensions,
//! counted for every accepted span when it arrives, before the trace buffer, and rendered
//! for Prometheus with the worker's identity label on every series (single writer by
//! construction).
//!
//! A series key is its label values, each length-prefixed (missing ones marked), built in
//! a reusable buffer, so counting a span in an existing series allocates nothing.

pub mod config;
mod render;
mod table;

use metrics::{Counter, Gauge};
use tokio::time::Instant;

use config::{label_name, Dimension, Unit};
pub use config::{NoIdentity, SpanMetricsConfig};
use table::{Observation, Recorded, Table};

use crate::otlp::scan::Scanned;
use crate::otlp::tracestate;
use crate::otlp::view::{AnyValueView, AttributeKey, Attributes, SpanView};
use crate::otlp::TraceId;
use crate::telemetry::{self, Format, Registry};

/// The collector's spelling of span kinds and status codes.
const KINDS: [&str; 6] = [
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];
const STATUSES: [&str; 3] = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];
const UNKNOWN_SERVICE: &str = "unknown_service";

struct SelfMetrics {
    active_series: Gauge,
    expired_series: Counter,
    overflow_spans: Counter,
}

pub struct SpanMetrics {
    identity_label: String,
    identity: String,
    expiration: std::time::Duration,
    unit: Unit,
    /// Which of service.name, span.name, span.kind, status.code are labels.
    include: [bool; 4],
    dimensions: Vec<DimensionKey>,
    event_dimensions: Vec<DimensionKey>,
    /// Label names of a calls/duration key, in key order.
    labels: Vec<String>,
    /// Label names of an events key, in key order.
    event_labels: Vec<String>,
    calls_name: String,
    duration_name: String,
    events_name: String,
    calls: Table,
    events: Option<Table>,
    exemplars: bool,
    metrics: SelfMetrics,
}

impl SpanMetrics {
    /// Builds span metrics from a validated config; fails without a worker identity.
    pub fn new(config: &SpanMetricsConfig, registry: &Registry) -> Result<Self, NoIdentity> {
        let identity = config.resolve_identity()?;
        let include =
            config::DEFAULT_DIMENSIONS.map(|d| !config.exclude_dimensions.iter().any(|e| e == d));
        let base: Vec<String> = config::DEFAULT_DIMENSIONS
            .iter()
            .zip(include)
            .filter(|(_, inc)| *inc)
            .map(|(d, _)| label_name(d))
            .collect();
        let labels = base
            .iter()
            .cloned()
            .chain(config.dimensions.iter().map(|d| label_name(&d.name)))
            .collect();
        let event_labels = base
            .iter()
            .cloned()
            .chain(config.events.dimensions.iter().map(|d| label_name(&d.name)))
            .collect();
        let ns = label_name(&config.namespace);
        let name = |n: &str| {
            if ns.is_empty() {
                n.to_owned()
            } else {
                format!("{ns}_{n}")
            }
        };
        let unit = config.histogram.unit;
        let bounds = (!config.histogram.disable).then(|| {
            config
                .histogram
                .explicit
                .buckets
                .iter()
                .map(|b| unit.of(**b))
                .collect()
        });
        let max_exemplars = if config.exemplars.enabled {
            config.exemplars.max_per_data_point
        } else {
            0
        };
        let limit = config.aggregation_cardinality_limit;
        Ok(Self {
            identity_label: label_name(&config.identity_label),
            identity,
            expiration: config.metrics_expiration,
            unit,
            include,
            dimensions: config.dimensions.iter().map(DimensionKey::new).collect(),
            event_dimensions: config
                .events
                .dimensions
                .iter()
                .map(DimensionKey::new)
                .collect(),
            labels,
            event_labels,
            calls_name: name("calls"),
            duration_name: format!("{}_{}", name("duration"), unit.suffix()),
            events_name: name("events"),
            calls: Table::new(limit, bounds, max_exemplars),
            events: config.events.enabled.then(|| Table::new(limit, None, 0)),
            exemplars: config.exemplars.enabled,
            metrics: SelfMetrics {
                active_series: registry.gauge(telemetry::SPANMETRICS_ACTIVE_SERIES, &[]),
                expired_series: registry.counter(telemetry::SPANMETRICS_EXPIRED_SERIES, &[]),
                overflow_spans: registry.counter(telemetry::SPANMETRICS_OVERFLOW_SPANS, &[]),
            },
        })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Counts every span with valid ids in `request`; `spans` are its spans read in
    /// place, in order.
    pub fn record(&self, request: &Scanned, spans: &[SpanView<'_>], now: Instant) {
        let mut key = String::new();
        let mut overflowed = 0;
        let mut created = false;
        let mut scratch = Vec::new();
        let (mut resource, mut event_resource) = (Vec::new(), Vec::new());
        for scope in &request.scopes {
            let attributes = scope.head.resource_attributes();
            let service = match attributes.get("service.name") {
                Some(AnyValueView::Str(s)) if !s.is_empty() => s,
                _ => UNKNOWN_SERVICE,
            };
            get_each(attributes, &self.dimensions, &mut resource);
            if self.events.is_some() {
                get_each(attributes, &self.event_dimensions, &mut event_resource);
            }
            let scanned = request.spans_of(scope);
            for (scanned, span) in scanned.iter().zip(&spans[scope.spans.clone()]) {
                let Ok(trace_id) = scanned.ids else {
                    continue;
                };
                self.base_key(&mut key, service, span);
                let own = span.attributes();
                dimension_fields(&mut key, &self.dimensions, own, &resource, &mut scratch);
                let nanos = span
                    .end_time_unix_nano
                    .saturating_sub(span.start_time_unix_nano);
                let count = adjusted_count(span);
                let observation = Observation {
                    value: self.unit.of(std::time::Duration::from_nanos(nanos)),
                    count,
                    exemplar: self.exemplars.then(|| (trace_id, span_id(span))),
                };
                match self.calls.record(&key, observation, now) {
                    Recorded::Overflow => overflowed += 1,
                    Recorded::New => created = true,
                    Recorded::Existing => {}
                }
                if let Some(events) = &self.events {
                    for event in span.events() {
                        self.base_key(&mut key, service, span);
                        dimension_fields(
                            &mut key,
                            &self.event_dimensions,
                            event.attributes(),
                            &event_resource,
                            &mut scratch,
                        );
                        let o = Observation {
                            value: 0.0,
                            count,
                            exemplar: None,
                        };
                        match events.record(&key, o, now) {
                            Recorded::Overflow => overflowed += 1,
                            Recorded::New => created = true,
                            Recorded::Existing => {}
                        }
                    }
                }
            }
        }
        if overflowed > 0 {
            self.metrics.overflow_spans.increment(overflowed);
        }
        if created {
            self.update_series_gauge();
        }
    }

    fn update_series_gauge(&self) {
        let events = self.events.as_ref().map_or(0, Table::series);
        self.metrics
            .active_series
            .set((self.calls.series() + events) as f64);
    }

    fn base_key(&self, key: &mut String, service: &str, span: &SpanView<'_>) {
        key.clear();
        let kind = KINDS.get(span.kind as usize).copied().unwrap_or(KINDS[0]);
        let status = STATUSES
            .get(span.status_code as usize)
            .copied()
            .unwrap_or(STATUSES[0]);
        for (value, include) in [service, span.name(), kind, status]
            .into_iter()
            .zip(self.include)
        {
            if include {
                push_field(key, Some(value));
            }
        }
    }

    /// Drops idle series when `metrics_expiration` is set.
    pub fn expire(&self, now: Instant) {
        if self.expiration.is_zero() {
            return;
        }
        let removed = self.calls.expire(now, self.expiration)
            + self
                .events
                .as_ref()
                .map_or(0, |t| t.expire(now, self.expiration));
        if removed > 0 {
            self.metrics.expired_series.increment(removed as u64);
            self.update_series_gauge();
        }
    }

    /// Renders every span metric in `format`; exemplars only from traces `kept` says the
    /// worker kept.
    pub fn render(&self, out: &mut String, format: Format, kept: &dyn Fn(&TraceId) -> bool) {
        self.expire(Instant::now());
        render::render(self, out, format, kept);
    }
}

fn span_id(span: &SpanView<'_>) -> [u8; 8] {
    span.span_id.try_into().unwrap_or_default()
}

/// A configured dimension, its key's byte search made once (see [`AttributeKey`]).
struct DimensionKey {
    key: AttributeKey,
    default: Option<String>,
}

impl DimensionKey {
    fn new(d: &Dimension) -> Self {
        Self {
            key: AttributeKey::new(&d.name),
            default: d.default.clone(),
        }
    }
}

/// Appends each dimension: the span (or event) attribute, else the resource attribute
/// (`resource[i]`, looked up once per resource), else the default, else marked missing
/// (the label is then left out). `scratch` is reused from call to call.
fn dimension_fields<'a>(
    key: &mut String,
    dims: &[DimensionKey],
    own: Attributes<'a>,
    resource: &[Option<AnyValueView<'a>>],
    scratch: &mut Vec<Option<AnyValueView<'a>>>,
) {
    get_each(own, dims, scratch);
    for ((d, own), resource) in dims.iter().zip(scratch.iter()).zip(resource) {
        match own.or(*resource) {
            Some(AnyValueView::Str(s)) => push_field(key, Some(s)),
            Some(other) => push_formatted(key, &other),
            None => push_field(key, d.default.as_deref()),
        }
    }
}

/// The value of each dimension in `attributes`, into `out` (one pass over them).
fn get_each<'a>(
    attributes: Attributes<'a>,
    dims: &[DimensionKey],
    out: &mut Vec<Option<AnyValueView<'a>>>,
) {
    out.clear();
    out.resize(dims.len(), None);
    attributes.get_each(dims.iter().map(|d| &d.key), out);
}

/// Appends a value that is not a string as one key field, formatted in place.
fn push_formatted(key: &mut String, value: &AnyValueView<'_>) {
    let start = key.len();
    value.write_to(key);
    let mut len = itoa::Buffer::new();
    key.insert(start, ':');
    key.insert_str(start, len.format(key.len() - start - 1));
}

/// Appends one key field: `<len>:<value>` when present, `-` when missing.
fn push_field(key: &mut String, value: Option<&str>) {
    match value {
        Some(v) => {
            key.push_str(itoa::Buffer::new().format(v.len()));
            key.push(':');
            key.push_str(v);
        }
        None => key.push('-'),
    }
}

/// Splits a key back into its fields.
fn fields(key: &str) -> Vec<Option<&str>> {
    let mut out = Vec::new();
    let mut rest = key;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('-') {
            out.push(None);
            rest = r;
            continue;
        }
        let Some((len, r)) = rest.split_once(':') else {
            break;
        };
        let Ok(len) = len.parse::<usize>() else { break };
        let Some(value) = r.get(..len) else { break };
        out.push(Some(value));
        rest = &r[len..];
    }
    out
}

#[cfg(test)]
mod tests;

/// How many spans `span` stands for: the adjusted count of the sampling threshold in its
/// tracestate (1 without one), rounded to a whole count as the spanmetrics connector does,
/// stochastically, but drawn from the span id so a span always counts the same: the
/// fraction is added with its own probability, so sums stay unbiased.
fn adjusted_count(span: &SpanView<'_>) -> u64 {
    let state = span.trace_state();
    if state.is_empty() {
        return 1;
    }
    let Some(threshold) = tracestate::read(state).threshold else {
        return 1;
    };
    let a = threshold.adjusted_count();
    let whole = a.floor();
    let id = span
        .span_id
        .try_into()
        .map(u64::from_be_bytes)
        .unwrap_or_default();
    // splitmix64: a uniform draw in [0, 1) from the span id.
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let draw = (z >> 11) as f64 / (1u64 << 53) as f64;
    whole as u64 + u64::from(draw < a - whole)
}
