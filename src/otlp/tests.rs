use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::*;
use crate::testkit::{request, span, trace_id};

#[test]
fn ids_are_checked_as_otlp_defines_them() {
    let good = span(trace_id(1), 7, None);
    assert_eq!(validate_ids(&good), Ok(trace_id(1)));
    type Mutation = Box<dyn Fn(&mut Span)>;
    let cases: Vec<(Mutation, IdError)> = vec![
        (
            Box::new(|s| s.trace_id = vec![1; 15]),
            IdError::TraceIdLength(15),
        ),
        (Box::new(|s| s.trace_id = vec![]), IdError::TraceIdLength(0)),
        (Box::new(|s| s.trace_id = vec![0; 16]), IdError::TraceIdZero),
        (
            Box::new(|s| s.span_id = vec![1; 9]),
            IdError::SpanIdLength(9),
        ),
        (Box::new(|s| s.span_id = vec![0; 8]), IdError::SpanIdZero),
        (
            Box::new(|s| s.parent_span_id = vec![1; 4]),
            IdError::ParentSpanIdLength(4),
        ),
    ];
    for (mutate, want) in cases {
        let mut s = good.clone();
        mutate(&mut s);
        assert_eq!(validate_ids(&s), Err(want));
    }
}

#[test]
fn roots_have_an_empty_or_zero_parent() {
    assert!(is_root(&span(trace_id(1), 1, None)));
    assert!(!is_root(&span(trace_id(1), 2, Some(1))));
    let mut zero_parent = span(trace_id(1), 3, None);
    zero_parent.parent_span_id = vec![0; 8];
    assert!(is_root(&zero_parent));
}

#[test]
fn assembled_requests_decode_to_what_was_received() {
    let original = request(
        "checkout",
        vec![span(trace_id(1), 1, None), span(trace_id(1), 2, Some(1))],
    );
    let rs = &original.resource_spans[0];
    let ss = &rs.scope_spans[0];
    let head = Head::new(
        rs.resource.as_ref(),
        &rs.schema_url,
        ss.scope.as_ref(),
        &ss.schema_url,
    );
    let first = Chunk::encode(head.clone(), ss.spans[..1].iter());
    let second = Chunk::encode(head, ss.spans[1..].iter());
    assert_eq!(first.span_count, 1);
    let mut builder = RequestBuilder::default();
    builder.push(&first);
    builder.push(&second);
    assert_eq!(builder.span_count(), 2);
    let encoded = builder.take();
    assert!(builder.is_empty());
    assert_eq!(encoded.spans, 2);
    let decoded = ExportTraceServiceRequest::decode(encoded.bytes).unwrap();
    // One ResourceSpans per chunk, each with the resource, scope and schema URL as sent.
    assert_eq!(decoded.resource_spans.len(), 2);
    for (i, got) in decoded.resource_spans.iter().enumerate() {
        assert_eq!(got.resource, rs.resource);
        assert_eq!(got.schema_url, rs.schema_url);
        assert_eq!(got.scope_spans.len(), 1);
        assert_eq!(got.scope_spans[0].scope, ss.scope);
        assert_eq!(got.scope_spans[0].spans, vec![ss.spans[i].clone()]);
    }
}

#[test]
fn a_head_without_resource_or_scope_is_empty() {
    let head = Head::new(None, "", None, "");
    assert_eq!(head.size(), 0);
    let chunk = Chunk::encode(head, [span(trace_id(3), 1, None)].iter());
    let mut builder = RequestBuilder::default();
    builder.push(&chunk);
    let decoded = ExportTraceServiceRequest::decode(builder.take().bytes).unwrap();
    assert_eq!(decoded.resource_spans[0].resource, None);
    assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 1);
}
