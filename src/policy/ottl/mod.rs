//! The `ottl_condition` policy: OTTL conditions over spans and span events, parsed and
//! resolved at load time ([`parse`]), evaluated without allocation except for the
//! hex form of ids. Conditions in a list are OR'ed; span conditions run on every span,
//! then span-event conditions on every event; the first true one samples.
//!
//! Semantics follow OTTL: comparing values of different types is false, not an error
//! (ints and floats compare as numbers); `<`, `<=`, `>`, `>=` order numbers and strings;
//! a missing attribute is `nil`.

mod parse;

use super::rules::EvalError;
use super::{Decision, TraceView};
use crate::config::Errors;
use crate::otlp::trace_id_hex;
use crate::otlp::view::{AnyValueView, Attributes, EventView, ScopeView, SpanView};
use parse::{Expr, Literal, Op, Operand};

/// Which object a condition is written against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctx {
    Span,
    SpanEvent,
}

impl Ctx {
    fn name(self) -> &'static str {
        match self {
            Ctx::Span => "span conditions",
            Ctx::SpanEvent => "spanevent conditions",
        }
    }
}

/// A resolved path.
#[derive(Debug, Clone)]
pub(crate) enum Path {
    Name,
    Kind,
    StatusCode,
    StatusMessage,
    TraceState,
    StartTime,
    EndTime,
    TraceId,
    TraceIdString,
    SpanId,
    SpanIdString,
    ParentSpanId,
    ParentSpanIdString,
    DroppedAttributesCount,
    Attribute(String),
    ResourceAttribute(String),
    ScopeName,
    ScopeVersion,
    ScopeAttribute(String),
    EventName,
    EventTime,
    EventAttribute(String),
}

impl Path {
    fn resolve(dotted: &str, key: Option<String>, ctx: Ctx) -> Option<Path> {
        match (dotted, key) {
            ("resource.attributes", Some(k)) => Some(Path::ResourceAttribute(k)),
            ("instrumentation_scope.name", None) => Some(Path::ScopeName),
            ("instrumentation_scope.version", None) => Some(Path::ScopeVersion),
            ("instrumentation_scope.attributes", Some(k)) => Some(Path::ScopeAttribute(k)),
            (d, key) if ctx == Ctx::SpanEvent && !d.starts_with("span.") => match (d, key) {
                ("name", None) => Some(Path::EventName),
                ("time_unix_nano", None) => Some(Path::EventTime),
                ("attributes", Some(k)) => Some(Path::EventAttribute(k)),
                _ => None,
            },
            (d, key) => {
                let d = if ctx == Ctx::SpanEvent {
                    d.strip_prefix("span.")?
                } else {
                    d
                };
                Some(match (d, key) {
                    ("name", None) => Path::Name,
                    ("kind", None) => Path::Kind,
                    ("status.code", None) => Path::StatusCode,
                    ("status.message", None) => Path::StatusMessage,
                    ("trace_state", None) => Path::TraceState,
                    ("start_time_unix_nano", None) => Path::StartTime,
                    ("end_time_unix_nano", None) => Path::EndTime,
                    ("trace_id", None) => Path::TraceId,
                    ("trace_id.string", None) => Path::TraceIdString,
                    ("span_id", None) => Path::SpanId,
                    ("span_id.string", None) => Path::SpanIdString,
                    ("parent_span_id", None) => Path::ParentSpanId,
                    ("parent_span_id.string", None) => Path::ParentSpanIdString,
                    ("dropped_attributes_count", None) => Path::DroppedAttributesCount,
                    ("attributes", Some(k)) => Path::Attribute(k),
                    _ => return None,
                })
            }
        }
    }
}

/// What to do when a condition cannot be evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ErrorMode {
    /// The policy fails (and abstains).
    Propagate,
    /// The condition counts as false; the error is logged.
    Ignore,
    /// The condition counts as false silently.
    Silent,
}

/// A compiled `ottl_condition` policy.
#[derive(Debug)]
pub(crate) struct OttlCondition {
    error_mode: ErrorMode,
    span: Vec<Expr>,
    event: Vec<Expr>,
}

impl OttlCondition {
    /// Parses every condition; each problem is recorded with its path and column.
    pub(crate) fn compile(
        error_mode: ErrorMode,
        span: &[String],
        event: &[String],
        path: &str,
        errors: &mut Errors,
    ) -> Option<OttlCondition> {
        if span.is_empty() && event.is_empty() {
            errors.push(path, "needs at least one span or spanevent condition");
            return None;
        }
        let mut ok = true;
        let mut compile = |list: &[String], key: &str, ctx: Ctx| -> Vec<Expr> {
            list.iter()
                .enumerate()
                .filter_map(|(i, src)| match parse::parse(src, ctx) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        ok = false;
                        errors.push(
                            format!("{path}.{key}[{i}]"),
                            format!("column {}: {}", e.column, e.message),
                        );
                        None
                    }
                })
                .collect()
        };
        let span = compile(span, "span", Ctx::Span);
        let event = compile(event, "spanevent", Ctx::SpanEvent);
        ok.then_some(OttlCondition {
            error_mode,
            span,
            event,
        })
    }

    pub(crate) fn evaluate(&self, t: &TraceView<'_>) -> Result<Decision, EvalError> {
        for batch in t.batches {
            for span in batch.spans() {
                let mut at = Scope {
                    resource: batch.resource,
                    scope: batch.scope,
                    span,
                    event: None,
                };
                if self.any(&self.span, &at)? {
                    return Ok(Decision::Sampled);
                }
                if self.event.is_empty() {
                    continue;
                }
                for event in span.events() {
                    at.event = Some(event);
                    if self.any(&self.event, &at)? {
                        return Ok(Decision::Sampled);
                    }
                }
            }
        }
        Ok(Decision::NotSampled)
    }

    fn any(&self, exprs: &[Expr], at: &Scope<'_>) -> Result<bool, EvalError> {
        for e in exprs {
            match truth(e, at) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(message) => match self.error_mode {
                    ErrorMode::Propagate => return Err(EvalError::Condition),
                    ErrorMode::Ignore => {
                        tracing::debug!(error = message, "ottl condition failed; counted as false")
                    }
                    ErrorMode::Silent => {}
                },
            }
        }
        Ok(false)
    }
}

/// The objects a condition can reach.
struct Scope<'a> {
    resource: Attributes<'a>,
    scope: ScopeView<'a>,
    span: &'a SpanView<'a>,
    event: Option<EventView<'a>>,
}

/// A runtime value.
#[derive(Debug, Clone, PartialEq)]
enum Val<'a> {
    Nil,
    Str(&'a str),
    Owned(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Bytes(&'a [u8]),
    /// Arrays and maps: comparable to nothing.
    Composite,
}

impl Val<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            Val::Owned(s) => Some(s),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Float(f) => Some(*f),
            _ => None,
        }
    }
}

fn attribute<'a>(attributes: Attributes<'a>, key: &str) -> Val<'a> {
    match attributes.get(key) {
        None => Val::Nil,
        Some(AnyValueView::Str(s)) => Val::Str(s),
        Some(AnyValueView::Bool(b)) => Val::Bool(b),
        Some(AnyValueView::Int(i)) => Val::Int(i),
        Some(AnyValueView::Double(f)) => Val::Float(f),
        Some(AnyValueView::Bytes(b)) => Val::Bytes(b),
        Some(AnyValueView::Composite(_)) => Val::Composite,
    }
}

fn hex(bytes: &[u8]) -> String {
    match <[u8; 16]>::try_from(bytes) {
        Ok(id) => trace_id_hex(&id),
        Err(_) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn get<'a>(path: &'a Path, at: &Scope<'a>) -> Val<'a> {
    let s = at.span;
    match path {
        Path::Name => Val::Str(s.name()),
        Path::Kind => Val::Int(i64::from(s.kind)),
        Path::StatusCode => Val::Int(i64::from(s.status_code)),
        Path::StatusMessage => Val::Str(s.status_message()),
        Path::TraceState => Val::Str(s.trace_state()),
        Path::StartTime => Val::Int(s.start_time_unix_nano as i64),
        Path::EndTime => Val::Int(s.end_time_unix_nano as i64),
        Path::TraceId => Val::Bytes(s.trace_id),
        Path::TraceIdString => Val::Owned(hex(s.trace_id)),
        Path::SpanId => Val::Bytes(s.span_id),
        Path::SpanIdString => Val::Owned(hex(s.span_id)),
        Path::ParentSpanId => Val::Bytes(s.parent_span_id),
        Path::ParentSpanIdString => Val::Owned(hex(s.parent_span_id)),
        Path::DroppedAttributesCount => Val::Int(i64::from(s.dropped_attributes_count)),
        Path::Attribute(k) => attribute(s.attributes(), k),
        Path::ResourceAttribute(k) => attribute(at.resource, k),
        Path::ScopeName => Val::Str(at.scope.name()),
        Path::ScopeVersion => Val::Str(at.scope.version()),
        Path::ScopeAttribute(k) => attribute(at.scope.attributes(), k),
        Path::EventName => Val::Str(at.event.map_or("", |e| e.name())),
        Path::EventTime => Val::Int(at.event.map_or(0, |e| e.time_unix_nano as i64)),
        Path::EventAttribute(k) => at.event.map_or(Val::Nil, |e| attribute(e.attributes(), k)),
    }
}

fn operand<'a>(o: &'a Operand, at: &Scope<'a>) -> Val<'a> {
    match o {
        Operand::Path(p) => get(p, at),
        Operand::Literal(l) => match l {
            Literal::Nil => Val::Nil,
            Literal::Str(s) => Val::Str(s),
            Literal::Int(i) => Val::Int(*i),
            Literal::Float(f) => Val::Float(*f),
            Literal::Bool(b) => Val::Bool(*b),
            Literal::Bytes(b) => Val::Bytes(b),
        },
    }
}

fn equal(a: &Val<'_>, b: &Val<'_>) -> bool {
    if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        return x == y;
    }
    match (a, b) {
        (Val::Nil, Val::Nil) => true,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Bytes(x), Val::Bytes(y)) => x == y,
        _ => false,
    }
}

fn order(a: &Val<'_>, b: &Val<'_>) -> Option<std::cmp::Ordering> {
    if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
        return x.partial_cmp(&y);
    }
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        return Some(x.cmp(y));
    }
    None
}

/// Evaluates a condition; `Err` carries why it could not be.
fn truth(e: &Expr, at: &Scope<'_>) -> Result<bool, String> {
    use std::cmp::Ordering::*;
    Ok(match e {
        Expr::Or(terms) => {
            for t in terms {
                if truth(t, at)? {
                    return Ok(true);
                }
            }
            false
        }
        Expr::And(terms) => {
            for t in terms {
                if !truth(t, at)? {
                    return Ok(false);
                }
            }
            true
        }
        Expr::Not(inner) => !truth(inner, at)?,
        Expr::Compare(l, op, r) => {
            let (a, b) = (operand(l, at), operand(r, at));
            match op {
                Op::Eq => equal(&a, &b),
                Op::Ne => !equal(&a, &b),
                Op::Lt => order(&a, &b) == Some(Less),
                Op::Le => matches!(order(&a, &b), Some(Less | Equal)),
                Op::Gt => order(&a, &b) == Some(Greater),
                Op::Ge => matches!(order(&a, &b), Some(Greater | Equal)),
            }
        }
        Expr::Value(o) => match operand(o, at) {
            Val::Bool(b) => b,
            Val::Nil => false,
            other => return Err(format!("{other:?} is not a boolean")),
        },
        Expr::IsMatch(target, regex) => match operand(target, at) {
            Val::Nil => false,
            Val::Str(s) => regex.is_match(s),
            Val::Owned(s) => regex.is_match(&s),
            Val::Int(i) => regex.is_match(&i.to_string()),
            Val::Float(f) => regex.is_match(&f.to_string()),
            Val::Bool(b) => regex.is_match(if b { "true" } else { "false" }),
            other => return Err(format!("IsMatch cannot match {other:?}")),
        },
    })
}

#[cfg(test)]
mod tests;
