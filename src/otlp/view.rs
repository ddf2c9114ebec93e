//! Borrowed readers over OTLP messages the scan has accepted: a span's fields, attributes
//! and events, a resource's attributes, an instrumentation scope. Span metrics, the
//! policies and the router's attribute routing read spans through them; nothing is
//! decoded into structs (spans stay encoded; see docs/ARCHITECTURE.md).
//!
//! Reading agrees with prost's decoding of the same bytes: the last occurrence of a scalar
//! field wins, a message field sent more than once is merged (its repeated fields
//! concatenated, its scalars taken from the last occurrence), and the last member of a
//! oneof wins. Strings are checked as UTF-8 when read (a string that is not reads as
//! empty, which accepted bytes never give); keys are compared as bytes. Reading never
//! fails and never allocates, except to format a bytes or composite attribute value.
//!
//! Written by hand for the reason the scan is: prost builds owned structs only, and
//! building them (a `String` and a `Vec` for every attribute) was most of the worker's
//! cost.

use bytes::{BufMut, BytesMut};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;

use super::scan::{fields, Fields, SpanFields, Wire};

/// Where a `Span` body's `trace_state` field is (or would go: before the first
/// higher-numbered field), and its value. Reads only the fields before it.
pub fn trace_state_field(body: &[u8]) -> (std::ops::Range<usize>, &str) {
    let mut it = fields(body);
    loop {
        let start = it.position();
        match it.next() {
            Some((3, Wire::Len(v))) => return (start..it.position(), text(v)),
            Some((tag, _)) if tag >= 3 => return (start..start, ""),
            Some(_) => {}
            None => return (body.len()..body.len(), ""),
        }
    }
}

/// Appends `body` (a `Span` message body) framed as field 2 of `ScopeSpans`, with the
/// `trace_state` field at `at` ([`trace_state_field`]) replaced by `trace_state` (left out
/// when empty); every other byte is copied as is.
pub fn put_span_with_trace_state(
    body: &[u8],
    at: std::ops::Range<usize>,
    trace_state: &str,
    out: &mut BytesMut,
) {
    let field_len = if trace_state.is_empty() {
        0
    } else {
        1 + encoded_len_varint(trace_state.len() as u64) + trace_state.len()
    };
    let len = body.len() - at.len() + field_len;
    out.reserve(1 + encoded_len_varint(len as u64) + len);
    encode_key(2, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
    out.put_slice(&body[..at.start]);
    if field_len > 0 {
        encode_key(3, WireType::LengthDelimited, out);
        encode_varint(trace_state.len() as u64, out);
        out.put_slice(trace_state.as_bytes());
    }
    out.put_slice(&body[at.end..]);
}

/// A span, read in place.
#[derive(Debug, Clone, Copy)]
pub struct SpanView<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent_span_id: &'a [u8],
    trace_state: &'a [u8],
    name: &'a [u8],
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub dropped_attributes_count: u32,
    pub flags: u32,
    pub status_code: i32,
    status_message: &'a [u8],
    body: &'a [u8],
}

impl<'a> SpanView<'a> {
    /// Reads the fields of an encoded `Span` (its body, without the framing).
    pub fn parse(body: &'a [u8]) -> SpanView<'a> {
        let mut s = SpanView {
            trace_id: &[],
            span_id: &[],
            parent_span_id: &[],
            trace_state: &[],
            name: &[],
            kind: 0,
            start_time_unix_nano: 0,
            end_time_unix_nano: 0,
            dropped_attributes_count: 0,
            flags: 0,
            status_code: 0,
            status_message: &[],
            body,
        };
        for (tag, wire) in fields(body) {
            match (tag, wire) {
                (1, Wire::Len(v)) => s.trace_id = v,
                (2, Wire::Len(v)) => s.span_id = v,
                (3, Wire::Len(v)) => s.trace_state = v,
                (4, Wire::Len(v)) => s.parent_span_id = v,
                (5, Wire::Len(v)) => s.name = v,
                // int32 and uint32 fields keep the low bits of the varint, as in prost.
                (6, Wire::Varint(v)) => s.kind = v as i32,
                (7, Wire::Fixed64(v)) => s.start_time_unix_nano = v,
                (8, Wire::Fixed64(v)) => s.end_time_unix_nano = v,
                (10, Wire::Varint(v)) => s.dropped_attributes_count = v as u32,
                (15, Wire::Len(status)) => {
                    for (tag, wire) in fields(status) {
                        match (tag, wire) {
                            (2, Wire::Len(v)) => s.status_message = v,
                            (3, Wire::Varint(v)) => s.status_code = v as i32,
                            _ => {}
                        }
                    }
                }
                (16, Wire::Fixed32(v)) => s.flags = v,
                _ => {}
            }
        }
        s
    }

    /// The span whose fields the scan found at `at` in `request`; `body` is its body.
    pub(super) fn scanned(request: &'a [u8], at: &SpanFields, body: &'a [u8]) -> SpanView<'a> {
        SpanView {
            trace_id: &request[at.trace_id.clone()],
            span_id: &request[at.span_id.clone()],
            parent_span_id: &request[at.parent_span_id.clone()],
            trace_state: &request[at.trace_state.clone()],
            name: &request[at.name.clone()],
            kind: at.kind,
            start_time_unix_nano: at.start_time_unix_nano,
            end_time_unix_nano: at.end_time_unix_nano,
            dropped_attributes_count: at.dropped_attributes_count,
            flags: at.flags,
            status_code: at.status_code,
            status_message: &request[at.status_message.clone()],
            body,
        }
    }

    pub fn name(&self) -> &'a str {
        text(self.name)
    }

    pub fn trace_state(&self) -> &'a str {
        text(self.trace_state)
    }

    pub fn status_message(&self) -> &'a str {
        text(self.status_message)
    }

    pub fn attributes(&self) -> Attributes<'a> {
        Attributes::of_span(self.body)
    }

    pub fn events(&self) -> impl Iterator<Item = EventView<'a>> + use<'a> {
        messages(self.body, 11).map(EventView::parse)
    }

    /// Whether the span is its trace's root: its parent span id is empty (or all zeros,
    /// as some SDKs send it).
    pub fn is_root(&self) -> bool {
        self.parent_span_id.iter().all(|b| *b == 0)
    }
}

/// A span event, read in place.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    pub time_unix_nano: u64,
    name: &'a [u8],
    body: &'a [u8],
}

impl<'a> EventView<'a> {
    fn parse(body: &'a [u8]) -> EventView<'a> {
        let mut e = EventView {
            time_unix_nano: 0,
            name: &[],
            body,
        };
        for (tag, wire) in fields(body) {
            match (tag, wire) {
                (1, Wire::Fixed64(v)) => e.time_unix_nano = v,
                (2, Wire::Len(v)) => e.name = v,
                _ => {}
            }
        }
        e
    }

    pub fn name(&self) -> &'a str {
        text(self.name)
    }

    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            msg: self.body,
            outer: None,
            field: 3,
        }
    }
}

/// An instrumentation scope, read in place from the fields of a `ScopeSpans` other than
/// its spans.
#[derive(Debug, Clone, Copy)]
pub struct ScopeView<'a> {
    name: &'a [u8],
    version: &'a [u8],
    head: &'a [u8],
}

impl<'a> ScopeView<'a> {
    pub(super) fn parse(head: &'a [u8]) -> ScopeView<'a> {
        let mut s = ScopeView {
            name: &[],
            version: &[],
            head,
        };
        for scope in messages(head, 1) {
            for (tag, wire) in fields(scope) {
                match (tag, wire) {
                    (1, Wire::Len(v)) => s.name = v,
                    (2, Wire::Len(v)) => s.version = v,
                    _ => {}
                }
            }
        }
        s
    }

    pub fn name(&self) -> &'a str {
        text(self.name)
    }

    pub fn version(&self) -> &'a str {
        text(self.version)
    }

    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            msg: self.head,
            outer: Some(1),
            field: 3,
        }
    }
}

/// A repeated `KeyValue` field: field `field` of a message, or of every occurrence of its
/// message field `outer` (a resource or scope sent more than once is merged).
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    msg: &'a [u8],
    outer: Option<u32>,
    field: u32,
}

impl<'a> Attributes<'a> {
    /// The attributes of a span, from its encoded fields.
    pub fn of_span(body: &'a [u8]) -> Attributes<'a> {
        Attributes {
            msg: body,
            outer: None,
            field: 9,
        }
    }

    /// The attributes of a `Resource` read from the fields of a `ResourceSpans` other than
    /// its scope spans.
    pub(super) fn of_resource(head: &'a [u8]) -> Attributes<'a> {
        Attributes {
            msg: head,
            outer: Some(1),
            field: 1,
        }
    }

    pub fn iter(&self) -> KeyValues<'a> {
        match self.outer {
            None => KeyValues {
                parents: None,
                inner: messages(self.msg, self.field),
                field: self.field,
            },
            Some(tag) => KeyValues {
                parents: Some(messages(self.msg, tag)),
                inner: messages(&[], self.field),
                field: self.field,
            },
        }
    }

    /// The value of the first attribute named `key`, if that attribute has one: what
    /// pdata's `Get` finds.
    pub fn get(&self, key: &str) -> Option<AnyValueView<'a>> {
        self.find(key, &memchr::memmem::Finder::new(key.as_bytes()))
    }

    /// [`get`](Self::get) with a key made once for many lookups.
    pub fn get_key(&self, key: &AttributeKey) -> Option<AnyValueView<'a>> {
        self.find(&key.key, &key.finder)
    }

    fn find(&self, key: &str, finder: &memchr::memmem::Finder<'_>) -> Option<AnyValueView<'a>> {
        // A key is encoded as its bytes: where they do not occur in the message, no
        // attribute has it, found without reading a field. Attribute policies look a key up
        // in every span of a trace, and most spans do not have it.
        if !may_hold(key, finder, self.msg) {
            return None;
        }
        self.iter()
            .find(|kv| kv.key_bytes() == key.as_bytes())
            .and_then(|kv| kv.value())
    }

    /// [`get`](Self::get) for each of `keys` in one pass over the attributes: what `get`
    /// would give for the i-th key goes to `found[i]`, which must start `None`.
    pub fn get_each<'k>(
        &self,
        keys: impl Iterator<Item = &'k AttributeKey> + Clone,
        found: &mut [Option<AnyValueView<'a>>],
    ) {
        if found.is_empty() {
            return;
        }
        // Which keys were seen, as bits; more keys than bits (never in practice) are looked
        // up one by one.
        if found.len() > 64 {
            for (k, f) in keys.zip(found) {
                *f = self.get_key(k);
            }
            return;
        }
        let all = u64::MAX >> (64 - found.len());
        // A key whose bytes do not occur in the message is no attribute's (see `get`).
        let mut seen = 0u64;
        for (i, k) in keys.clone().enumerate() {
            if !k.may_be_in(self.msg) {
                seen |= 1 << i;
            }
        }
        for kv in self.iter() {
            if seen == all {
                break;
            }
            let key = kv.key_bytes();
            for (i, k) in keys.clone().enumerate() {
                if seen & (1 << i) == 0 && k.as_str().as_bytes() == key {
                    seen |= 1 << i;
                    found[i] = kv.value();
                }
            }
        }
    }
}

/// An attribute key with its byte search made once: policies look their key up in every
/// span of every trace.
#[derive(Debug, Clone)]
pub struct AttributeKey {
    key: String,
    finder: memchr::memmem::Finder<'static>,
}

impl AttributeKey {
    pub fn new(key: &str) -> Self {
        Self {
            key: key.to_owned(),
            finder: memchr::memmem::Finder::new(key.as_bytes()).into_owned(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// False when no encoded message in `bytes` can hold an attribute with this key: its
    /// bytes occur nowhere in them.
    pub fn may_be_in(&self, bytes: &[u8]) -> bool {
        may_hold(&self.key, &self.finder, bytes)
    }
}

/// False when `bytes` cannot hold an attribute named `key` (`finder` searches for it):
/// its bytes occur nowhere in them. Any message may hold an empty key.
fn may_hold(key: &str, finder: &memchr::memmem::Finder<'_>, bytes: &[u8]) -> bool {
    key.is_empty() || finder.find(bytes).is_some()
}

/// The `KeyValue`s of an [`Attributes`], in order.
pub struct KeyValues<'a> {
    /// The merged occurrences of the message holding the attributes, if they are nested.
    parents: Option<Messages<'a>>,
    inner: Messages<'a>,
    field: u32,
}

impl<'a> Iterator for KeyValues<'a> {
    type Item = KeyValueView<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(bytes) = self.inner.next() {
                return Some(KeyValueView { bytes });
            }
            let parent = self.parents.as_mut()?.next()?;
            self.inner = messages(parent, self.field);
        }
    }
}

/// One attribute, read in place.
#[derive(Debug, Clone, Copy)]
pub struct KeyValueView<'a> {
    bytes: &'a [u8],
}

impl<'a> KeyValueView<'a> {
    fn key_bytes(&self) -> &'a [u8] {
        let mut key: &[u8] = &[];
        for (tag, wire) in fields(self.bytes) {
            if let (1, Wire::Len(v)) = (tag, wire) {
                key = v;
            }
        }
        key
    }

    pub fn key(&self) -> &'a str {
        text(self.key_bytes())
    }

    /// The value, `None` when no member of the `AnyValue` oneof is set, or when the one set
    /// last is `string_value_strindex`: an index into a profile's string table, which OTLP
    /// tells receivers of other signals to read as if the value were absent.
    pub fn value(&self) -> Option<AnyValueView<'a>> {
        let mut value = None;
        for any in messages(self.bytes, 2) {
            for (tag, wire) in fields(any) {
                value = match (tag, wire) {
                    (1, Wire::Len(v)) => Some(AnyValueView::Str(text(v))),
                    (2, Wire::Varint(v)) => Some(AnyValueView::Bool(v != 0)),
                    (3, Wire::Varint(v)) => Some(AnyValueView::Int(v as i64)),
                    (4, Wire::Fixed64(v)) => Some(AnyValueView::Double(f64::from_bits(v))),
                    (5 | 6, Wire::Len(_)) => Some(AnyValueView::Composite(*self)),
                    (7, Wire::Len(v)) => Some(AnyValueView::Bytes(v)),
                    (8, Wire::Varint(_)) => None,
                    _ => continue,
                };
            }
        }
        value
    }
}

/// An attribute value, read in place.
#[derive(Debug, Clone, Copy)]
pub enum AnyValueView<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// An array or a key-value list; the attribute, to decode when needed.
    Composite(KeyValueView<'a>),
}

impl AnyValueView<'_> {
    /// Appends the value as a metric label or routing key shows it: strings as they are,
    /// numbers and booleans in their usual text form, anything else as its decoded Rust
    /// debug form.
    pub fn write_to(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = match self {
            AnyValueView::Str(s) => {
                out.push_str(s);
                Ok(())
            }
            AnyValueView::Bool(b) => write!(out, "{b}"),
            AnyValueView::Int(i) => write!(out, "{i}"),
            AnyValueView::Double(f) => write!(out, "{f}"),
            AnyValueView::Bytes(b) => write!(out, "{:?}", any_value::Value::BytesValue(b.to_vec())),
            AnyValueView::Composite(kv) => match KeyValue::decode(kv.bytes)
                .ok()
                .and_then(|kv| kv.value)
                .and_then(|v| v.value)
            {
                Some(v) => write!(out, "{v:?}"),
                None => Ok(()),
            },
        };
    }
}

/// The payloads of every occurrence of length-delimited field `field` of a message.
pub(super) fn messages(msg: &[u8], field: u32) -> Messages<'_> {
    Messages {
        fields: fields(msg),
        field,
    }
}

#[derive(Clone)]
pub(super) struct Messages<'a> {
    fields: Fields<'a>,
    field: u32,
}

impl<'a> Iterator for Messages<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        self.fields.find_map(|(tag, wire)| match wire {
            Wire::Len(v) if tag == self.field => Some(v),
            _ => None,
        })
    }
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("")
}
