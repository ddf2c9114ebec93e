//! OTLP wire helpers shared by every component: the trace id type, span validation,
//! the pre-encoded protobuf pieces the trace buffer keeps (spans stay encoded) and
//! the assembly of export requests from those pieces without decoding them again.
//!
//! Invariants: a [`Head`] holds the encoded resource and scope of one received
//! `ScopeSpans` exactly as received; a [`Chunk`] is spans that all share one head, each
//! framed as field 2 of `ScopeSpans`, so `head.scope ++ chunk.spans` is a valid
//! `ScopeSpans` body; [`TraceSpans`] keeps a trace's chunks, their spans copied into span
//! blocks shared across traces.

mod codec;
pub mod scan;
pub mod settlement;
pub mod tracestate;
pub mod view;

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;

pub use codec::{RawExportCodec, EXPORT_PATH, TRACE_SERVICE};
pub use settlement::{Outcome, Settlement};
use view::{Attributes, ScopeView, SpanView};

/// A 128-bit trace id, as the 16 raw bytes of the wire format.
pub type TraceId = [u8; 16];

/// Why a span's ids were rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("trace_id must be 16 bytes, got {0}")]
    TraceIdLength(usize),
    #[error("trace_id is all zeros")]
    TraceIdZero,
    #[error("span_id must be 8 bytes, got {0}")]
    SpanIdLength(usize),
    #[error("span_id is all zeros")]
    SpanIdZero,
    #[error("parent_span_id must be empty or 8 bytes, got {0}")]
    ParentSpanIdLength(usize),
}

/// Checks a span's ids, as the OTLP specification defines them, and returns its trace id.
pub fn validate_id_fields(
    trace_id: &[u8],
    span_id: &[u8],
    parent_span_id: &[u8],
) -> Result<TraceId, IdError> {
    let trace_id: TraceId = trace_id
        .try_into()
        .map_err(|_| IdError::TraceIdLength(trace_id.len()))?;
    if trace_id == [0; 16] {
        return Err(IdError::TraceIdZero);
    }
    if span_id.len() != 8 {
        return Err(IdError::SpanIdLength(span_id.len()));
    }
    if span_id.iter().all(|b| *b == 0) {
        return Err(IdError::SpanIdZero);
    }
    if !parent_span_id.is_empty() && parent_span_id.len() != 8 {
        return Err(IdError::ParentSpanIdLength(parent_span_id.len()));
    }
    Ok(trace_id)
}

/// Every span of a request, in order.
pub fn spans(request: &ExportTraceServiceRequest) -> impl Iterator<Item = &Span> {
    request
        .resource_spans
        .iter()
        .flat_map(|r| r.scope_spans.iter())
        .flat_map(|s| s.spans.iter())
}

/// The lower-case hex form of a trace id, for logs and exemplars.
pub fn trace_id_hex(id: &TraceId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The resource and instrumentation scope of one received `ScopeSpans`, as received and
/// shared by every chunk cut from it ([`scan`] makes them).
#[derive(Debug)]
pub struct Head {
    /// The fields of `ResourceSpans` other than its scope spans, framed.
    resource: Bytes,
    /// The fields of `ScopeSpans` other than its spans, framed.
    scope: Bytes,
}

impl Head {
    /// Bytes held by this head.
    pub fn size(&self) -> usize {
        self.resource.len() + self.scope.len()
    }

    /// The resource's attributes, read in place.
    pub fn resource_attributes(&self) -> Attributes<'_> {
        Attributes::of_resource(&self.resource)
    }

    /// The instrumentation scope, read in place.
    pub fn scope(&self) -> ScopeView<'_> {
        ScopeView::parse(&self.scope)
    }
}

/// Spans of one trace that arrived in one `ScopeSpans`, read in place from a
/// [`TraceSpans`].
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub head: &'a Arc<Head>,
    /// Each span framed as field 2 of `ScopeSpans`.
    pub spans: &'a [u8],
    pub span_count: u32,
}

impl<'a> Chunk<'a> {
    /// The spans, read in place.
    pub fn spans(self) -> impl Iterator<Item = SpanView<'a>> {
        self.span_bodies().map(SpanView::parse)
    }

    /// Each span's encoded fields, a `Span` message body.
    pub fn span_bodies(self) -> impl Iterator<Item = &'a [u8]> + Clone {
        view::messages(self.spans, 2)
    }
}

/// The spans of one trace as received: each chunk's spans, copied into span blocks
/// shared across traces, and the chunk's head.
///
/// A chunk's spans are copied once, into the 64 KiB block the ingesting thread is filling
/// (the next chunks of any trace follow them in it), or into an allocation of their own
/// when larger than [`TraceSpans::OWN_ALLOCATION_OVER`]. A block is freed when the last
/// trace holding spans in it is decided. One buffer per trace, grown as its chunks came,
/// left a trace's buffer rounded up to the allocator's next size class (about a tenth
/// unused) and copied the trace again on every growth; blocks of a size the allocator
/// serves exactly leave only the end of a block unused, and copy each span once. Blocks
/// fill in arrival order, so they are freed in about the order traces are decided.
#[derive(Debug, Clone, Default)]
pub struct TraceSpans {
    chunks: Vec<StoredChunk>,
}

/// One chunk's spans, in a block, and their head.
#[derive(Debug, Clone)]
struct StoredChunk {
    head: Arc<Head>,
    spans: Bytes,
    span_count: u32,
}

/// The size of a span block: a size the allocator serves without rounding up.
const BLOCK_BYTES: usize = 64 * 1024;

thread_local! {
    /// The block this thread copies chunks into; its filled part is shared by the chunks
    /// in it, the rest is room for the next.
    static BLOCK: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

impl TraceSpans {
    /// Chunks larger than this get an allocation of their own, so the end of a block
    /// left unused when a chunk does not fit stays under this size.
    pub const OWN_ALLOCATION_OVER: usize = BLOCK_BYTES / 8;

    /// Appends `spans` (all of this trace, all under `head`, each framed as field 2 of
    /// `ScopeSpans` as received) as one chunk.
    pub fn push<'a>(&mut self, head: &Arc<Head>, spans: impl Iterator<Item = &'a [u8]> + Clone) {
        let len: usize = spans.clone().map(<[u8]>::len).sum();
        let mut span_count = 0;
        let copy = |into: &mut BytesMut| {
            for span in spans {
                into.extend_from_slice(span);
                span_count += 1;
            }
            into.split().freeze()
        };
        let stored = if len > Self::OWN_ALLOCATION_OVER {
            copy(&mut BytesMut::with_capacity(len))
        } else {
            BLOCK.with(|block| {
                let mut block = block.borrow_mut();
                // Every chunk splits off what it filled: the capacity is the room left.
                if block.capacity() < len {
                    *block = BytesMut::with_capacity(BLOCK_BYTES);
                }
                copy(&mut block)
            })
        };
        // Room for exactly the chunks there are: most traces get a few, and a list grown
        // by doubling would leave a third of its room unused.
        self.chunks.reserve_exact(1);
        self.chunks.push(StoredChunk {
            head: head.clone(),
            spans: stored,
            span_count,
        });
    }

    /// Wire bytes of the spans, the size `maximum_trace_size_bytes` and
    /// `max_buffered_bytes` measure.
    pub fn size(&self) -> usize {
        self.chunks.iter().map(|c| c.spans.len()).sum()
    }

    /// The chunks, in the order they were pushed.
    pub fn chunks(&self) -> impl Iterator<Item = Chunk<'_>> {
        self.chunks.iter().map(|c| Chunk {
            head: &c.head,
            spans: &c.spans,
            span_count: c.span_count,
        })
    }
}

/// Every non-empty `ScopeSpans` of `request` as one chunk, as a worker would buffer them
/// were their spans one trace's: for callers that hold spans as structs (the load
/// generator's predictions, tests).
pub fn chunks_of(request: &ExportTraceServiceRequest) -> Result<TraceSpans, scan::ScanError> {
    let scanned = scan::scan(request.encode_to_vec().into())?;
    let mut out = TraceSpans::default();
    for scope in &scanned.scopes {
        let spans = scanned.spans_of(scope).iter().map(|s| scanned.framed(s));
        out.push(&scope.head, spans);
    }
    Ok(out)
}

/// `spans` as one chunk under no resource and no scope, as a worker buffers them: for the
/// unit tests, which need this crate's own chunks.
#[cfg(test)]
pub(crate) fn chunk_of_spans(
    spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
) -> TraceSpans {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let chunks = chunks_of(&request).expect("valid spans");
    assert_eq!(chunks.chunks().count(), 1, "one scope with spans");
    chunks
}

/// Builds an encoded `ExportTraceServiceRequest` from chunks, one `ResourceSpans` per
/// chunk, resource and scope exactly as received.
#[derive(Default)]
pub struct RequestBuilder {
    buf: BytesMut,
    spans: u64,
}

/// Encodes `attributes` as a `ScopeSpans` field-1 fragment holding only those scope
/// attributes. Appended after a chunk's own scope, protobuf's merge rule for a repeated
/// singular message field adds them to the scope's attributes: annotation without decoding.
pub fn scope_attributes_fragment(attributes: Vec<KeyValue>) -> Bytes {
    let scope = InstrumentationScope {
        attributes,
        ..Default::default()
    };
    let mut buf = BytesMut::new();
    prost::encoding::message::encode(1, &scope, &mut buf);
    buf.freeze()
}

impl RequestBuilder {
    /// Adds one `ResourceSpans` holding a chunk's spans under its head.
    pub fn push(&mut self, chunk: Chunk<'_>) {
        self.push_parts(
            [&chunk.head.resource, &chunk.head.scope, &[]],
            std::iter::once(chunk.spans),
            u64::from(chunk.span_count),
        );
    }

    /// Adds one `ResourceSpans` of `head` holding `spans`, each framed as field 2 of
    /// `ScopeSpans` (as [`scan::Scanned::framed`] gives them), with a
    /// [`scope_attributes_fragment`] (or nothing) added to the scope.
    pub fn push_spans<'a>(
        &mut self,
        head: &Head,
        scope_fragment: &[u8],
        spans: impl Iterator<Item = &'a [u8]> + Clone,
    ) {
        let span_count = spans.clone().count() as u64;
        self.push_parts(
            [&head.resource, &head.scope, scope_fragment],
            spans,
            span_count,
        );
    }

    /// Adds one `ResourceSpans` of the resource's fields, the scope's fields and a scope
    /// fragment, holding `spans` (pieces of framed spans that may each hold several, as a
    /// buffered chunk's do): `span_count` says how many there are in all.
    fn push_parts<'a>(
        &mut self,
        [resource, scope, scope_fragment]: [&[u8]; 3],
        spans: impl Iterator<Item = &'a [u8]> + Clone,
        span_count: u64,
    ) {
        let spans_len: usize = spans.clone().map(<[u8]>::len).sum();
        let scope_spans_len = scope.len() + scope_fragment.len() + spans_len;
        let resource_spans_len =
            resource.len() + 1 + encoded_len_varint(scope_spans_len as u64) + scope_spans_len;
        self.buf
            .reserve(1 + encoded_len_varint(resource_spans_len as u64) + resource_spans_len);
        encode_key(1, WireType::LengthDelimited, &mut self.buf);
        encode_varint(resource_spans_len as u64, &mut self.buf);
        self.buf.put_slice(resource);
        encode_key(2, WireType::LengthDelimited, &mut self.buf);
        encode_varint(scope_spans_len as u64, &mut self.buf);
        self.buf.put_slice(scope);
        self.buf.put_slice(scope_fragment);
        for span in spans {
            self.buf.put_slice(span);
        }
        self.spans += span_count;
    }

    pub fn span_count(&self) -> u64 {
        self.spans
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// The finished request; the builder is empty again afterwards.
    pub fn take(&mut self) -> EncodedRequest {
        EncodedRequest {
            bytes: self.buf.split().freeze(),
            spans: std::mem::take(&mut self.spans),
            settlement: None,
        }
    }
}

/// Builds an encoded `ExportTraceServiceRequest` as [`RequestBuilder`] does, but with the
/// spans of every chunk that has the same resource, scope and scope fragment (compared
/// byte for byte) under one `ResourceSpans`: a worker's export gathers chunks of many
/// traces from a few services, and a resource of a few hundred bytes repeated for every
/// chunk of two or three spans was a third of what it sent.
#[derive(Default)]
pub struct GroupedRequest {
    groups: Vec<Group>,
    /// Group by hash of (resource, scope, fragment); a group whose bytes differ under the
    /// same hash is not indexed, and takes the chunks it is first found for.
    index: std::collections::HashMap<u64, usize, ahash::RandomState>,
    hasher: ahash::RandomState,
    spans: u64,
    /// The request's size without the groups' own framing.
    bytes: usize,
    /// The span buffers of the last request's groups, emptied, for the next groups: a
    /// group's buffer grows to its share of a request, and growing a new one for every
    /// request copied it on each doubling and touched fresh pages. Only a buffer with room
    /// for at most twice what it held, or `SPARE_SLACK` more, is kept: their room is at
    /// most twice the last request and `SPARE_SLACK` per group.
    spare: Vec<BytesMut>,
}

/// What a kept span buffer may have beyond twice what it last held.
const SPARE_SLACK: usize = 64 * 1024;

/// The spans under one resource, scope and scope fragment.
struct Group {
    resource: Bytes,
    scope: Bytes,
    fragment: Bytes,
    spans: BytesMut,
    count: u64,
}

impl GroupedRequest {
    fn group(&mut self, head: &Head, fragment: &[u8]) -> &mut Group {
        let key = (&head.resource[..], &head.scope[..], fragment);
        let hash = self.hasher.hash_one(key);
        let same = |g: &Group| (&g.resource[..], &g.scope[..], &g.fragment[..]) == key;
        let i = match self.index.get(&hash) {
            Some(&i) if same(&self.groups[i]) => i,
            indexed => {
                if indexed.is_none() {
                    self.index.insert(hash, self.groups.len());
                }
                self.bytes += head.size() + fragment.len();
                self.groups.push(Group {
                    resource: head.resource.clone(),
                    scope: head.scope.clone(),
                    fragment: Bytes::copy_from_slice(fragment),
                    spans: self.spare.pop().unwrap_or_default(),
                    count: 0,
                });
                self.groups.len() - 1
            }
        };
        &mut self.groups[i]
    }

    /// Adds `span_count` spans (pieces of spans framed as field 2 of `ScopeSpans`) under
    /// `head` and `scope_fragment` (see [`scope_attributes_fragment`]).
    pub fn push_counted<'a>(
        &mut self,
        head: &Head,
        scope_fragment: &[u8],
        spans: impl Iterator<Item = &'a [u8]>,
        span_count: u64,
    ) {
        let group = self.group(head, scope_fragment);
        let before = group.spans.len();
        for span in spans {
            group.spans.extend_from_slice(span);
        }
        group.count += span_count;
        self.bytes += group.spans.len() - before;
        self.spans += span_count;
    }

    /// Adds `spans` (framed as field 2 of `ScopeSpans`) under `head` and `scope_fragment`,
    /// each with the `th` of its tracestate replaced by what `threshold` makes of the one
    /// it carries (`None` erases it); every other byte as received.
    pub fn push_with_thresholds<'a>(
        &mut self,
        head: &Head,
        scope_fragment: &[u8],
        spans: impl Iterator<Item = &'a [u8]>,
        threshold: impl Fn(Option<tracestate::Threshold>) -> Option<tracestate::Threshold>,
    ) {
        let group = self.group(head, scope_fragment);
        let before = group.spans.len();
        let mut count = 0;
        // The spans of a trace mostly share one tracestate: the last rewrite is reused.
        let mut last: Option<(&str, Option<String>)> = None;
        for body in spans.flat_map(|framed| view::messages(framed, 2)) {
            let (at, old) = view::trace_state_field(body);
            let new = match &last {
                Some((seen, new)) if *seen == old => new,
                _ => {
                    let t = threshold(tracestate::read(old).threshold);
                    &last.insert((old, tracestate::with_threshold(old, t))).1
                }
            };
            let state = new.as_deref().unwrap_or(old);
            view::put_span_with_trace_state(body, at, state, &mut group.spans);
            count += 1;
        }
        group.count += count;
        self.bytes += group.spans.len() - before;
        self.spans += count;
    }

    pub fn span_count(&self) -> u64 {
        self.spans
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// The encoded size, but for a few bytes of framing per group.
    pub fn encoded_len(&self) -> usize {
        self.bytes
    }

    /// The finished request, groups in the order they were begun; the builder is empty
    /// again afterwards.
    pub fn take(&mut self) -> EncodedRequest {
        let mut out = RequestBuilder {
            // Each group's framing is at most 12 bytes.
            buf: BytesMut::with_capacity(self.bytes + 12 * self.groups.len()),
            spans: 0,
        };
        self.spare.clear();
        for mut g in self.groups.drain(..) {
            let parts = [&g.resource[..], &g.scope[..], &g.fragment[..]];
            out.push_parts(parts, std::iter::once(&g.spans[..]), g.count);
            if g.spans.capacity() <= 2 * g.spans.len() + SPARE_SLACK {
                g.spans.clear();
                self.spare.push(g.spans);
            }
        }
        self.index.clear();
        self.spans = 0;
        self.bytes = 0;
        out.take()
    }
}

/// An encoded `ExportTraceServiceRequest` and the number of spans in it. Cheap to clone,
/// so every exporter shares one copy.
#[derive(Debug, Clone)]
pub struct EncodedRequest {
    pub bytes: Bytes,
    pub spans: u64,
    /// What waits for every sending queue to be done with the request: a worker's log,
    /// or a router's client.
    pub settlement: Option<Arc<Settlement>>,
}

#[cfg(test)]
mod tests;
