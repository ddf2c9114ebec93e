//! Prometheus exposition of the span metrics: the classic text format (0.0.4) by default,
//! OpenMetrics 1.0 with exemplars when the scraper asks for it. Output is sorted by label
//! values, buckets are cumulative and `+Inf` equals `_count`.

use std::fmt::Write as _;

use super::table::{Exemplar, Series};
use super::{fields, SpanMetrics};
use crate::otlp::{trace_id_hex, TraceId};
use crate::telemetry::Format;

/// Escapes a label value: backslash, double quote and newline.
pub(crate) fn escape(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// One series to render: its label values in key order (what rows are sorted by) and its
/// label set rendered once, `a="x",b="y",identity="w"` without braces (missing values left
/// out), which every line of the series repeats.
struct Row<'a> {
    values: Vec<Option<&'a str>>,
    labels: String,
    series: &'a Series,
}

impl<'a> Row<'a> {
    fn new(names: &[String], key: &'a str, identity: (&str, &str), series: &'a Series) -> Self {
        let values = fields(key);
        let mut labels = String::new();
        let pairs = names
            .iter()
            .map(String::as_str)
            .zip(values.iter().copied())
            .filter_map(|(n, v)| v.map(|v| (n, v)))
            .chain(std::iter::once(identity));
        for (name, value) in pairs {
            if !labels.is_empty() {
                labels.push(',');
            }
            labels.push_str(name);
            labels.push_str("=\"");
            escape(value, &mut labels);
            labels.push('"');
        }
        Self {
            values,
            labels,
            series,
        }
    }

    /// `<name>{<labels>} `, ready for the value.
    fn start(&self, name: &str, out: &mut String) {
        out.push_str(name);
        out.push('{');
        out.push_str(&self.labels);
        out.push_str("} ");
    }
}

/// The rows of a table's snapshot sorted by label values, the overflow series last.
fn rows<'a>(
    names: &[String],
    snapshot: &'a (Vec<(Box<str>, Series)>, Option<Series>),
    overflow_key: &'a str,
    identity: (&str, &str),
) -> Vec<Row<'a>> {
    let mut rows: Vec<Row<'a>> = snapshot
        .0
        .iter()
        .map(|(k, s)| Row::new(names, k, identity, s))
        .collect();
    rows.sort_by(|a, b| a.values.cmp(&b.values));
    let overflow_names = ["otel_metric_overflow".to_string()];
    rows.extend(
        snapshot
            .1
            .iter()
            .map(|s| Row::new(&overflow_names, overflow_key, identity, s)),
    );
    rows
}

fn number(value: u64, out: &mut String) {
    out.push_str(itoa::Buffer::new().format(value));
}

fn exemplar(e: &Exemplar, value: f64, out: &mut String) {
    let span: String = e.span_id.iter().map(|b| format!("{b:02x}")).collect();
    let _ = write!(
        out,
        " # {{trace_id=\"{}\",span_id=\"{span}\"}} {value} {:.3}",
        trace_id_hex(&e.trace_id),
        e.timestamp
    );
}

pub(super) fn render(
    m: &SpanMetrics,
    out: &mut String,
    format: Format,
    kept: &dyn Fn(&TraceId) -> bool,
) {
    let om = format == Format::OpenMetrics;
    let identity = (m.identity_label.as_str(), m.identity.as_str());
    let overflow_key = {
        // The overflow series has no labels but the marker (and the identity).
        let mut k = String::new();
        super::push_field(&mut k, Some("true"));
        k
    };
    let snapshot = m.calls.snapshot();
    let all = rows(&m.labels, &snapshot, &overflow_key, identity);
    let calls_total = format!("{}_total", m.calls_name);

    // Calls.
    let family = if om { &m.calls_name } else { &calls_total };
    let _ = writeln!(
        out,
        "# HELP {family} Spans counted, by service, operation, kind and status."
    );
    let _ = writeln!(out, "# TYPE {family} counter");
    for row in &all {
        row.start(&calls_total, out);
        number(row.series.calls, out);
        if om {
            let s = row.series;
            if let Some(e) = s.exemplars.iter().rev().find(|e| kept(&e.trace_id)) {
                exemplar(e, 1.0, out);
            }
        }
        out.push('\n');
    }

    // Duration.
    if !m.calls.bounds().is_empty() || all.iter().any(|row| !row.series.buckets.is_empty()) {
        let name = &m.duration_name;
        let _ = writeln!(out, "# HELP {name} Span durations.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let bounds = m.calls.bounds();
        // `,le="<bound>"} ` per bucket, `+Inf` last.
        let le: Vec<String> = bounds
            .iter()
            .map(|b| format!(",le=\"{b}\"}} "))
            .chain(std::iter::once(",le=\"+Inf\"} ".to_string()))
            .collect();
        let (bucket, sum, count) = (
            format!("{name}_bucket"),
            format!("{name}_sum"),
            format!("{name}_count"),
        );
        for row in &all {
            let s = row.series;
            let mut cumulative = 0;
            for (i, (count, le)) in s.buckets.iter().zip(&le).enumerate() {
                cumulative += count;
                out.push_str(&bucket);
                out.push('{');
                out.push_str(&row.labels);
                out.push_str(le);
                number(cumulative, out);
                if om {
                    let low = if i == 0 {
                        f64::NEG_INFINITY
                    } else {
                        bounds[i - 1]
                    };
                    let high = bounds.get(i).copied().unwrap_or(f64::INFINITY);
                    let hit = s
                        .exemplars
                        .iter()
                        .rev()
                        .find(|e| e.value > low && e.value <= high && kept(&e.trace_id));
                    if let Some(e) = hit {
                        exemplar(e, e.value, out);
                    }
                }
                out.push('\n');
            }
            row.start(&sum, out);
            let _ = writeln!(out, "{}", s.sum);
            row.start(&count, out);
            number(s.calls, out);
            out.push('\n');
        }
    }

    // Events.
    if let Some(events) = &m.events {
        let snapshot = events.snapshot();
        let events_total = format!("{}_total", m.events_name);
        let family = if om { &m.events_name } else { &events_total };
        let _ = writeln!(out, "# HELP {family} Span events counted.");
        let _ = writeln!(out, "# TYPE {family} counter");
        for row in rows(&m.event_labels, &snapshot, &overflow_key, identity) {
            row.start(&events_total, out);
            number(row.series.calls, out);
            out.push('\n');
        }
    }
}
