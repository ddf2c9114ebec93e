//! A walk over an encoded `ExportTraceServiceRequest` that finds every span's byte range,
//! ids and fields (read through [`Scanned::view`]), and each scope's resource and scope
//! bytes, without decoding into structs (spans stay encoded; see docs/ARCHITECTURE.md).
//!
//! [`scan`] validates as it walks: it accepts exactly what prost's decoder accepts — wire
//! types of known fields, UTF-8 of strings, lengths, varints, and prost's recursion limit
//! of 100 nested messages, unknown fields skipped — so bytes it accepted can be read by
//! the views ([`super::view`]) and decode anywhere downstream. The router forwards the
//! spans' received bytes; the worker buffers them.
//!
//! Written by hand because prost offers no way to validate a message without building it,
//! and building it (every attribute a `String` and a `Vec`) was most of the router's and
//! the worker's cost.

use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::view::SpanView;
use super::{validate_id_fields, Head, IdError, RequestBuilder, TraceId};

/// prost's recursion limit: how deep messages may nest below the request.
const RECURSION_LIMIT: u32 = 100;

/// Why an encoded request is not a valid `ExportTraceServiceRequest`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid protobuf at byte {offset}: {reason}")]
pub struct ScanError {
    pub offset: usize,
    pub reason: &'static str,
}

/// A scanned request: the spans in order, each with the scope it arrived in.
#[derive(Debug)]
pub struct Scanned {
    bytes: Bytes,
    pub scopes: Vec<ScannedScope>,
    pub spans: Vec<ScannedSpan>,
}

/// One `ScopeSpans` with at least one span.
#[derive(Debug)]
pub struct ScannedScope {
    pub head: Arc<Head>,
    /// Its spans, as a range of [`Scanned::spans`].
    pub spans: Range<usize>,
}

/// One span: where it is, its checked ids, and where its fields are.
#[derive(Debug)]
pub struct ScannedSpan {
    /// The span framed as field 2 of `ScopeSpans`, as received.
    framed: Range<usize>,
    /// Where the span's own fields start inside `framed`.
    body: usize,
    pub ids: Result<TraceId, IdError>,
    fields: SpanFields,
}

/// What the walk read of a span's fields as it validated them, for [`Scanned::view`]: so
/// that a span's fields are walked once, not once to validate and once to read. As the
/// views read fields: the last occurrence of each wins, and `status` is merged.
#[derive(Debug, Default)]
pub(super) struct SpanFields {
    pub(super) trace_id: Range<usize>,
    pub(super) span_id: Range<usize>,
    pub(super) parent_span_id: Range<usize>,
    pub(super) trace_state: Range<usize>,
    pub(super) name: Range<usize>,
    pub(super) kind: i32,
    pub(super) start_time_unix_nano: u64,
    pub(super) end_time_unix_nano: u64,
    pub(super) dropped_attributes_count: u32,
    pub(super) flags: u32,
    pub(super) status_code: i32,
    pub(super) status_message: Range<usize>,
}

impl Scanned {
    /// The span framed as field 2 of `ScopeSpans`, ready to be copied into a request.
    pub fn framed(&self, span: &ScannedSpan) -> &[u8] {
        &self.bytes[span.framed.clone()]
    }

    /// The whole request as received.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The span's encoded fields, a `Span` message body.
    pub fn body(&self, span: &ScannedSpan) -> &[u8] {
        &self.bytes[span.body..span.framed.end]
    }

    /// The span read in place: what [`SpanView::parse`] of its body reads, without a
    /// second walk over its fields.
    pub fn view(&self, span: &ScannedSpan) -> SpanView<'_> {
        SpanView::scanned(&self.bytes, &span.fields, self.body(span))
    }

    /// The spans of `scope`.
    pub fn spans_of(&self, scope: &ScannedScope) -> &[ScannedSpan] {
        &self.spans[scope.spans.clone()]
    }

    /// Groups the valid spans of `scope` by `key` (`None` leaves a span out) and calls
    /// `each(key, group)` once per key, in key order; a group holds indexes into
    /// [`Scanned::spans_of`]. `scratch` is reused from call to call.
    pub fn group_scope<K: Ord + Copy, E>(
        &self,
        scope: &ScannedScope,
        scratch: &mut Vec<(K, u32)>,
        mut key: impl FnMut(&ScannedSpan, &TraceId) -> Result<Option<K>, E>,
        mut each: impl FnMut(K, &[(K, u32)]),
    ) -> Result<(), E> {
        scratch.clear();
        for (i, span) in self.spans_of(scope).iter().enumerate() {
            if let Ok(id) = &span.ids {
                if let Some(k) = key(span, id)? {
                    scratch.push((k, i as u32));
                }
            }
        }
        scratch.sort_unstable();
        for group in scratch.chunk_by(|a, b| a.0 == b.0) {
            each(group[0].0, group);
        }
        Ok(())
    }

    /// The received bytes of a [`Scanned::group_scope`] group's spans.
    pub fn framed_group<'a, K>(
        &'a self,
        scope: &'a ScannedScope,
        group: &'a [(K, u32)],
    ) -> impl Iterator<Item = &'a [u8]> + Clone {
        let spans = self.spans_of(scope);
        group.iter().map(|(_, i)| self.framed(&spans[*i as usize]))
    }

    /// Groups the valid spans of `scope` by `owner` (an index into `shares`; `None` leaves
    /// the span out) and adds each group to its share as one `ResourceSpans`, the spans
    /// copied as received.
    pub fn split_scope<E>(
        &self,
        scope: &ScannedScope,
        scratch: &mut Vec<(usize, u32)>,
        shares: &mut [RequestBuilder],
        owner: impl FnMut(&ScannedSpan, &TraceId) -> Result<Option<usize>, E>,
    ) -> Result<(), E> {
        self.group_scope(scope, scratch, owner, |owner, group| {
            shares[owner].push_spans(&scope.head, &[], self.framed_group(scope, group));
        })
    }
}

/// Counts the spans of an encoded request without validating them: field-2 entries of
/// every `ScopeSpans`, each skipped by its length; counting stops where the bytes stop
/// framing.
pub fn count_spans(bytes: &[u8]) -> u64 {
    let mut total = 0;
    let all = RECURSION_LIMIT;
    let _ = each_field(bytes, 0..bytes.len(), all, |tag, field| {
        if let (1, Value::Len(rs)) = (tag, field.value) {
            each_field(bytes, rs, all, |tag, field| {
                if let (2, Value::Len(ss)) = (tag, field.value) {
                    each_field(bytes, ss, all, |tag, field| {
                        if let (2, Value::Len(_)) = (tag, field.value) {
                            total += 1;
                        }
                        Ok(())
                    })?;
                }
                Ok(())
            })?;
        }
        Ok(())
    });
    total
}

/// The wire size of a span with a few attributes; a request of smaller spans grows the
/// list of scanned spans past its first guess.
const TYPICAL_SPAN_BYTES: usize = 256;
/// The most spans room is made for before the walk: larger requests grow the list as
/// they are read, so a large request of anything but spans reserves little.
const MAX_SPANS_RESERVED: usize = 2048;

/// Walks and validates `bytes` as an `ExportTraceServiceRequest`.
pub fn scan(bytes: Bytes) -> Result<Scanned, ScanError> {
    let mut out = Scanned {
        bytes: Bytes::new(),
        scopes: Vec::new(),
        // Room for spans of `TYPICAL_SPAN_BYTES`: growing the list from empty copied it
        // on each doubling, for the few hundred spans of a usual request.
        spans: Vec::with_capacity((bytes.len() / TYPICAL_SPAN_BYTES).min(MAX_SPANS_RESERVED)),
    };
    let b = &bytes[..];
    let top = RECURSION_LIMIT;
    each_field(b, 0..b.len(), top, |tag, value| match tag {
        1 => {
            let rs = message(value, top)?;
            resource_spans(b, rs, top - 1, &mut out)
        }
        _ => skip(value, top),
    })?;
    out.bytes = bytes;
    Ok(out)
}

fn resource_spans(
    b: &[u8],
    range: Range<usize>,
    count: u32,
    out: &mut Scanned,
) -> Result<(), ScanError> {
    let mut own = BytesMut::new();
    let mut scopes = Vec::new();
    each_field(b, range, count, |tag, value| match tag {
        2 => {
            scopes.push(message(value, count)?);
            Ok(())
        }
        _ => head_field(b, Msg::Resource, tag, value, count, &mut own),
    })?;
    // Heads are copied out at their exact size: grown field by field, `own` may have
    // twice the room, and a head lives as long as any pending trace with spans under it.
    let resource = Bytes::copy_from_slice(&own);
    for ss in scopes {
        scope_spans(b, ss, count - 1, &resource, out)?;
    }
    Ok(())
}

/// Scans one `ScopeSpans`, recorded when it has spans.
fn scope_spans(
    b: &[u8],
    range: Range<usize>,
    count: u32,
    resource: &Bytes,
    out: &mut Scanned,
) -> Result<(), ScanError> {
    let mut own = BytesMut::new();
    let first = out.spans.len();
    each_field(b, range, count, |tag, value| match tag {
        2 => {
            let framed = value.framed.clone();
            let body = message(value, count)?;
            let fields = span(b, body.clone(), count - 1)?;
            out.spans.push(ScannedSpan {
                framed,
                body: body.start,
                ids: validate_id_fields(
                    &b[fields.trace_id.clone()],
                    &b[fields.span_id.clone()],
                    &b[fields.parent_span_id.clone()],
                ),
                fields,
            });
            Ok(())
        }
        _ => head_field(b, Msg::Scope, tag, value, count, &mut own),
    })?;
    if out.spans.len() == first {
        return Ok(());
    }
    out.scopes.push(ScannedScope {
        head: Arc::new(Head {
            resource: resource.clone(),
            scope: Bytes::copy_from_slice(&own),
        }),
        spans: first..out.spans.len(),
    });
    Ok(())
}

/// A field of `ResourceSpans` or `ScopeSpans` other than its children (field 2): validated
/// (`first` is the message type of field 1) and kept, framed, in `own` for the head.
fn head_field(
    b: &[u8],
    first: Msg,
    tag: u32,
    value: Field,
    count: u32,
    own: &mut BytesMut,
) -> Result<(), ScanError> {
    let framed = value.framed.clone();
    match tag {
        1 => check(b, first, message(value, count)?, count - 1)?,
        3 => string(b, value)?,
        _ => skip(value, count)?,
    }
    own.put_slice(&b[framed]);
    Ok(())
}

/// Validates a `Span` and reads its fields (the last occurrence of each wins, as in
/// prost).
fn span(b: &[u8], range: Range<usize>, count: u32) -> Result<SpanFields, ScanError> {
    let mut s = SpanFields::default();
    each_field(b, range, count, |tag, value| {
        match (tag, &value.value) {
            (1, _) => s.trace_id = bytes(value)?,
            (2, _) => s.span_id = bytes(value)?,
            (4, _) => s.parent_span_id = bytes(value)?,
            (3, Value::Len(r)) => {
                s.trace_state = r.clone();
                string(b, value)?;
            }
            (5, Value::Len(r)) => {
                s.name = r.clone();
                string(b, value)?;
            }
            // int32 and uint32 fields keep the low bits of the varint, as in prost.
            (6, &Value::Varint(v)) => s.kind = v as i32,
            (7, &Value::Fixed64(v)) => s.start_time_unix_nano = v,
            (8, &Value::Fixed64(v)) => s.end_time_unix_nano = v,
            (10, &Value::Varint(v)) => s.dropped_attributes_count = v as u32,
            (15, Value::Len(_)) => {
                let status = message(value, count)?;
                check(b, Msg::Status, status.clone(), count - 1)?;
                each_field(b, status, count - 1, |tag, value| {
                    match (tag, value.value) {
                        (2, Value::Len(r)) => s.status_message = r,
                        (3, Value::Varint(v)) => s.status_code = v as i32,
                        _ => {}
                    }
                    Ok(())
                })?;
            }
            (16, &Value::Fixed32(v)) => s.flags = v,
            _ => field(b, Msg::Span, tag, value, count)?,
        }
        Ok(())
    })?;
    Ok(s)
}

/// The messages nested inside spans, resources and scopes.
#[derive(Clone, Copy)]
enum Msg {
    Resource,
    EntityRef,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

/// The wire shape of a known field.
enum Kind {
    Varint,
    Fixed32,
    Fixed64,
    Bytes,
    Str,
    Message(Msg),
}

/// The schema: the kind of field `tag` of `msg`, `None` for unknown fields.
fn kind(msg: Msg, tag: u32) -> Option<Kind> {
    use Kind::*;
    Some(match (msg, tag) {
        (Msg::Resource, 1) => Message(Msg::KeyValue),
        (Msg::Resource, 2) => Varint,
        (Msg::Resource, 3) => Message(Msg::EntityRef),
        (Msg::EntityRef, 1..=4) => Str,
        (Msg::Scope, 1 | 2) => Str,
        (Msg::Scope, 3) => Message(Msg::KeyValue),
        (Msg::Scope, 4) => Varint,
        (Msg::Span, 1 | 2 | 4) => Bytes,
        (Msg::Span, 3 | 5) => Str,
        (Msg::Span, 6 | 10 | 12 | 14) => Varint,
        (Msg::Span, 7 | 8) => Fixed64,
        (Msg::Span, 9) => Message(Msg::KeyValue),
        (Msg::Span, 11) => Message(Msg::Event),
        (Msg::Span, 13) => Message(Msg::Link),
        (Msg::Span, 15) => Message(Msg::Status),
        (Msg::Span, 16) => Fixed32,
        (Msg::Event, 1) => Fixed64,
        (Msg::Event, 2) => Str,
        (Msg::Event, 3) => Message(Msg::KeyValue),
        (Msg::Event, 4) => Varint,
        (Msg::Link, 1 | 2) => Bytes,
        (Msg::Link, 3) => Str,
        (Msg::Link, 4) => Message(Msg::KeyValue),
        (Msg::Link, 5) => Varint,
        (Msg::Link, 6) => Fixed32,
        (Msg::Status, 2) => Str,
        (Msg::Status, 3) => Varint,
        (Msg::KeyValue, 1) => Str,
        (Msg::KeyValue, 2) => Message(Msg::AnyValue),
        (Msg::KeyValue, 3) => Varint,
        (Msg::AnyValue, 1) => Str,
        (Msg::AnyValue, 2 | 3 | 8) => Varint,
        (Msg::AnyValue, 4) => Fixed64,
        (Msg::AnyValue, 5) => Message(Msg::ArrayValue),
        (Msg::AnyValue, 6) => Message(Msg::KeyValueList),
        (Msg::AnyValue, 7) => Bytes,
        (Msg::ArrayValue, 1) => Message(Msg::AnyValue),
        (Msg::KeyValueList, 1) => Message(Msg::KeyValue),
        _ => return None,
    })
}

/// Validates the message `msg` whose fields span `range`; `count` is prost's recursion
/// budget for its fields.
fn check(b: &[u8], msg: Msg, range: Range<usize>, count: u32) -> Result<(), ScanError> {
    each_field(b, range, count, |tag, value| {
        field(b, msg, tag, value, count)
    })
}

/// Validates one field of `msg`.
#[inline]
fn field(b: &[u8], msg: Msg, tag: u32, value: Field, count: u32) -> Result<(), ScanError> {
    let at = value.framed.start;
    let wrong = || Err(err(at, "invalid wire type for a known field"));
    match (kind(msg, tag), &value.value) {
        (None, _) => skip(value, count),
        (Some(Kind::Varint), Value::Varint(_)) => Ok(()),
        (Some(Kind::Fixed32), Value::Fixed32(_)) => Ok(()),
        (Some(Kind::Fixed64), Value::Fixed64(_)) => Ok(()),
        (Some(Kind::Bytes), Value::Len(_)) => Ok(()),
        (Some(Kind::Str), Value::Len(_)) => string(b, value),
        (Some(Kind::Message(Msg::KeyValue)), Value::Len(_)) => {
            let range = message(value, count)?;
            key_value(b, range, count - 1)
        }
        (Some(Kind::Message(inner)), Value::Len(_)) => {
            let range = message(value, count)?;
            check(b, inner, range, count - 1)
        }
        _ => wrong(),
    }
}

/// Validates a `KeyValue`, the bulk of OTLP's bytes. Most are a short key and a short
/// string, bool, int or double value, encoded in order with one-byte keys and lengths:
/// those are checked here in one pass; anything else goes through [`check`]. Accepts
/// nothing [`check`] would refuse.
fn key_value(b: &[u8], range: Range<usize>, count: u32) -> Result<(), ScanError> {
    let short = |at: usize| b.get(at).copied().filter(|&v| v < 0x80).map(usize::from);
    let simple = (|| {
        // key = 1: the key string; then value = 2: the AnyValue, ending the KeyValue.
        if count == 0 || b.get(range.start) != Some(&0x0a) {
            return None;
        }
        let key = range.start + 2..range.start + 2 + short(range.start + 1)?;
        let value = key.end + 2;
        let value_len = short(key.end + 1)?;
        if b.get(key.end) != Some(&0x12) || value_len == 0 || value + value_len != range.end {
            return None;
        }
        // The AnyValue holds one field: string_value = 1, bool_value = 2, int_value = 3
        // or double_value = 4, ending it.
        let valid = match b[value] {
            // Framing bytes here are below 0x80: one ASCII check covers key and value.
            0x0a if value + 2 + short(value + 1)? == range.end => {
                b[key.start..range.end].is_ascii()
                    || (utf8(&b[key]) && utf8(&b[value + 2..range.end]))
            }
            0x10 | 0x18 => {
                varint(b, value + 1, range.end).is_ok_and(|(_, end)| end == range.end)
                    && utf8(&b[key])
            }
            0x21 => value + 9 == range.end && utf8(&b[key]),
            _ => return None,
        };
        valid.then_some(())
    })();
    match simple {
        Some(()) => Ok(()),
        None => check(b, Msg::KeyValue, range, count),
    }
}

/// One field as [`each_field`] reads it.
struct Field {
    /// Key and value, as received.
    framed: Range<usize>,
    value: Value,
}

enum Value {
    Varint(u64),
    Fixed32(u32),
    Fixed64(u64),
    /// The payload of a length-delimited field.
    Len(Range<usize>),
    /// A group's start tag; its content is still to be read.
    StartGroup,
    EndGroup,
}

/// Calls `each(tag, field)` for every field in `range` of `b`, in order; `count` is
/// prost's recursion budget for these fields. A group is read to its end tag first (only
/// unknown fields may be groups; a known one is refused by the caller).
fn each_field(
    b: &[u8],
    range: Range<usize>,
    count: u32,
    mut each: impl FnMut(u32, Field) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    let mut pos = range.start;
    while pos < range.end {
        let (tag, mut field, mut next) = read_field(b, pos, range.end)?;
        if let Value::StartGroup = field.value {
            next = skip_group(b, tag, next, range.end, count)?;
            field.framed.end = next;
        }
        each(tag, field)?;
        pos = next;
    }
    Ok(())
}

/// A field as the views read it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Wire<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64(u64),
    Len(&'a [u8]),
    /// An unknown field sent as a group, skipped whole.
    Group,
}

/// The fields of a message body [`scan`] has accepted, in order, for the views. Reading
/// stops where the bytes stop framing, which accepted bytes never do.
pub(super) fn fields(b: &[u8]) -> Fields<'_> {
    Fields { b, pos: 0 }
}

#[derive(Clone)]
pub(super) struct Fields<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Fields<'_> {
    /// Where the next field starts.
    pub(super) fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (u32, Wire<'a>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let end = self.b.len();
        if self.pos >= end {
            return None;
        }
        // Most of OTLP's fields have a one-byte key, and its strings and messages are
        // short: those are read here, the rest by the general reader.
        let (b, pos) = (self.b, self.pos);
        if let key @ 8..=0x7f = b[pos] {
            let tag = u32::from(key >> 3);
            let fast = match (key & 7, b.get(pos + 1).copied()) {
                (0, Some(v @ 0..=0x7f)) => Some((Wire::Varint(u64::from(v)), pos + 2)),
                (2, Some(len @ 0..=0x7f)) => {
                    let next = pos + 2 + usize::from(len);
                    (next <= end).then(|| (Wire::Len(&b[pos + 2..next]), next))
                }
                (1, _) if pos + 9 <= end => {
                    let v = u64::from_le_bytes(fixed(&b[pos + 1..pos + 9]));
                    Some((Wire::Fixed64(v), pos + 9))
                }
                (5, _) if pos + 5 <= end => {
                    let v = u32::from_le_bytes(fixed(&b[pos + 1..pos + 5]));
                    Some((Wire::Fixed32(v), pos + 5))
                }
                _ => None,
            };
            if let Some((wire, next)) = fast {
                self.pos = next;
                return Some((tag, wire));
            }
        }
        let read = read_field(self.b, self.pos, end).and_then(|(tag, field, next)| {
            Ok(match field.value {
                Value::Varint(v) => (tag, Wire::Varint(v), next),
                Value::Fixed32(v) => (tag, Wire::Fixed32(v), next),
                Value::Fixed64(v) => (tag, Wire::Fixed64(v), next),
                Value::Len(r) => (tag, Wire::Len(&self.b[r]), next),
                Value::StartGroup => {
                    let next = skip_group(self.b, tag, next, end, RECURSION_LIMIT)?;
                    (tag, Wire::Group, next)
                }
                Value::EndGroup => return Err(err(self.pos, "unexpected end group tag")),
            })
        });
        match read {
            Ok((tag, wire, next)) => {
                self.pos = next;
                Some((tag, wire))
            }
            Err(_) => {
                self.pos = end;
                None
            }
        }
    }
}

/// Reads the field starting at `pos` (not past `end`): its tag, shape and where the next
/// field starts.
#[inline(always)]
fn read_field(b: &[u8], pos: usize, end: usize) -> Result<(u32, Field, usize), ScanError> {
    let (key, mut next) = varint(b, pos, end)?;
    if key > u64::from(u32::MAX) {
        return Err(err(pos, "invalid key"));
    }
    let tag = (key >> 3) as u32;
    if tag == 0 {
        return Err(err(pos, "invalid tag 0"));
    }
    let value = match key & 7 {
        0 => {
            let (v, after) = varint(b, next, end)?;
            next = after;
            Value::Varint(v)
        }
        1 => {
            let start = next;
            next = advance(next, 8, end)?;
            Value::Fixed64(u64::from_le_bytes(fixed(&b[start..next])))
        }
        2 => {
            let (len, start) = varint(b, next, end)?;
            let len = usize::try_from(len).map_err(|_| err(next, "buffer underflow"))?;
            next = advance(start, len, end)?;
            Value::Len(start..next)
        }
        3 => Value::StartGroup,
        4 => Value::EndGroup,
        5 => {
            let start = next;
            next = advance(next, 4, end)?;
            Value::Fixed32(u32::from_le_bytes(fixed(&b[start..next])))
        }
        _ => return Err(err(pos, "invalid wire type")),
    };
    Ok((
        tag,
        Field {
            framed: pos..next,
            value,
        },
        next,
    ))
}

/// Skips a group whose start tag `tag` ended at `pos`; where it ends. As prost skips it:
/// the group takes one from the recursion budget, and so does every level inside it.
fn skip_group(
    b: &[u8],
    tag: u32,
    mut pos: usize,
    end: usize,
    count: u32,
) -> Result<usize, ScanError> {
    if count == 0 {
        return Err(err(pos, "recursion limit reached"));
    }
    loop {
        if pos >= end {
            return Err(err(pos, "buffer underflow"));
        }
        let (inner, field, next) = read_field(b, pos, end)?;
        match field.value {
            Value::EndGroup if inner == tag => return Ok(next),
            Value::EndGroup => return Err(err(pos, "unexpected end group tag")),
            _ if count == 1 => return Err(err(pos, "recursion limit reached")),
            Value::StartGroup => pos = skip_group(b, inner, next, end, count - 1)?,
            _ => pos = next,
        }
    }
}

/// Skips an unknown field as prost does: refused once the recursion budget is spent, and
/// an end-group tag out of place is an error.
fn skip(value: Field, count: u32) -> Result<(), ScanError> {
    if count == 0 {
        return Err(err(value.framed.start, "recursion limit reached"));
    }
    match value.value {
        Value::EndGroup => Err(err(value.framed.start, "unexpected end group tag")),
        _ => Ok(()),
    }
}

/// The payload of a length-delimited field.
fn bytes(value: Field) -> Result<Range<usize>, ScanError> {
    match value.value {
        Value::Len(r) => Ok(r),
        _ => Err(err(
            value.framed.start,
            "invalid wire type for a known field",
        )),
    }
}

/// The body of a nested message, refused once the recursion budget is spent.
fn message(value: Field, count: u32) -> Result<Range<usize>, ScanError> {
    let at = value.framed.start;
    let range = bytes(value)?;
    if count == 0 {
        return Err(err(at, "recursion limit reached"));
    }
    Ok(range)
}

fn string(b: &[u8], value: Field) -> Result<(), ScanError> {
    let at = value.framed.start;
    if utf8(&b[bytes(value)?]) {
        return Ok(());
    }
    Err(err(at, "string is not UTF-8"))
}

#[inline]
fn utf8(s: &[u8]) -> bool {
    // Most strings are short and ASCII: the word-at-a-time check is cheaper than a call
    // into the full UTF-8 validation.
    s.is_ascii() || std::str::from_utf8(s).is_ok()
}

/// A varint at `pos` as prost decodes it (at most 10 bytes, no overflow); its value and
/// where it ends.
#[inline(always)]
fn varint(b: &[u8], pos: usize, end: usize) -> Result<(u64, usize), ScanError> {
    // Keys, lengths and most values fit one byte.
    if pos < end && b[pos] < 0x80 {
        return Ok((u64::from(b[pos]), pos + 1));
    }
    let mut slice = &b[pos..end];
    let before = slice.len();
    let v = prost::encoding::decode_varint(&mut slice).map_err(|_| err(pos, "invalid varint"))?;
    Ok((v, pos + before - slice.len()))
}

/// The bytes of a fixed-width value `read_field` has bounds-checked.
#[inline(always)]
fn fixed<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    out
}

fn advance(pos: usize, len: usize, end: usize) -> Result<usize, ScanError> {
    match pos.checked_add(len) {
        Some(next) if next <= end => Ok(next),
        _ => Err(err(pos, "buffer underflow")),
    }
}

fn err(offset: usize, reason: &'static str) -> ScanError {
    ScanError { offset, reason }
}
