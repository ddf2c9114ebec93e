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

/// `{a="x",b="y",identity="w"}`, leaving out missing values; `extra` goes last (for `le`).
fn labels(
    names: &[String],
    key: &str,
    identity: (&str, &str),
    extra: Option<(&str, &str)>,
    out: &mut String,
) {
    out.push('{');
    let mut first = true;
    let values = fields(key);
    let pairs = names
        .iter()
        .map(String::as_str)
        .zip(values)
        .filter_map(|(n, v)| v.map(|v| (n, v)))
        .chain(std::iter::once(identity))
        .chain(extra);
    for (name, value) in pairs {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(name);
        out.push_str("=\"");
        escape(value, out);
        out.push('"');
    }
    out.push('}');
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
    let overflow_names = ["otel_metric_overflow".to_string()];
    let (mut rows, overflow) = m.calls.snapshot();
    rows.sort_by(|a, b| fields(&a.0).cmp(&fields(&b.0)));
    let all: Vec<(&[String], &str, &Series)> = rows
        .iter()
        .map(|(k, s)| (m.labels.as_slice(), &**k, s))
        .chain(
            overflow
                .iter()
                .map(|s| (overflow_names.as_slice(), overflow_key.as_str(), s)),
        )
        .collect();

    // Calls.
    let family = if om {
        m.calls_name.clone()
    } else {
        format!("{}_total", m.calls_name)
    };
    let _ = writeln!(
        out,
        "# HELP {family} Spans counted, by service, operation, kind and status."
    );
    let _ = writeln!(out, "# TYPE {family} counter");
    for (names, key, s) in &all {
        let _ = write!(out, "{}_total", m.calls_name);
        labels(names, key, identity, None, out);
        let _ = write!(out, " {}", s.calls);
        if om {
            if let Some(e) = s.exemplars.iter().rev().find(|e| kept(&e.trace_id)) {
                exemplar(e, 1.0, out);
            }
        }
        out.push('\n');
    }

    // Duration.
    if !m.calls.bounds().is_empty() || all.iter().any(|(_, _, s)| !s.buckets.is_empty()) {
        let name = &m.duration_name;
        let _ = writeln!(out, "# HELP {name} Span durations.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let bounds = m.calls.bounds();
        for (names, key, s) in &all {
            let mut cumulative = 0;
            for (i, count) in s.buckets.iter().enumerate() {
                cumulative += count;
                let le = bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
                let _ = write!(out, "{name}_bucket");
                labels(names, key, identity, Some(("le", &le)), out);
                let _ = write!(out, " {cumulative}");
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
            let _ = write!(out, "{name}_sum");
            labels(names, key, identity, None, out);
            let _ = writeln!(out, " {}", s.sum);
            let _ = write!(out, "{name}_count");
            labels(names, key, identity, None, out);
            let _ = writeln!(out, " {}", s.calls);
        }
    }

    // Events.
    if let Some(events) = &m.events {
        let (mut rows, overflow) = events.snapshot();
        rows.sort_by(|a, b| fields(&a.0).cmp(&fields(&b.0)));
        let family = if om {
            m.events_name.clone()
        } else {
            format!("{}_total", m.events_name)
        };
        let _ = writeln!(out, "# HELP {family} Span events counted.");
        let _ = writeln!(out, "# TYPE {family} counter");
        let lines = rows
            .iter()
            .map(|(k, s)| (m.event_labels.as_slice(), &**k, s))
            .chain(
                overflow
                    .iter()
                    .map(|s| (overflow_names.as_slice(), overflow_key.as_str(), s)),
            );
        for (names, key, s) in lines {
            let _ = write!(out, "{}_total", m.events_name);
            labels(names, key, identity, None, out);
            let _ = writeln!(out, " {}", s.calls);
        }
    }
}
