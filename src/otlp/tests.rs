use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::*;
use tailgate_testkit::{request, span, trace_id};

/// A decoded span's ids, checked as the scan checks them.
fn validate_ids(span: &Span) -> Result<[u8; 16], IdError> {
    validate_id_fields(&span.trace_id, &span.span_id, &span.parent_span_id)
}

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
    let is_root = |span: Span| view::SpanView::parse(&span.encode_to_vec()).is_root();
    assert!(is_root(span(trace_id(1), 1, None)));
    assert!(!is_root(span(trace_id(1), 2, Some(1))));
    let mut zero_parent = span(trace_id(1), 3, None);
    zero_parent.parent_span_id = vec![0; 8];
    assert!(is_root(zero_parent));
}

#[test]
fn assembled_requests_decode_to_what_was_received() {
    let original = request(
        "checkout",
        vec![span(trace_id(1), 1, None), span(trace_id(1), 2, Some(1))],
    );
    let framed = scan::scan(original.encode_to_vec().into()).unwrap();
    let scope = &framed.scopes[0];
    let spans = framed.spans_of(scope);
    let mut trace = TraceSpans::default();
    trace.push(&scope.head, [framed.framed(&spans[0])].into_iter());
    trace.push(&scope.head, [framed.framed(&spans[1])].into_iter());
    let chunks: Vec<Chunk> = trace.chunks().collect();
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0].span_count, 1);
    assert_eq!(chunks[0].spans, framed.framed(&spans[0]));
    assert_eq!(chunks[1].spans, framed.framed(&spans[1]));
    assert_eq!(trace.size(), chunks[0].spans.len() + chunks[1].spans.len());
    let mut builder = RequestBuilder::default();
    builder.push(chunks[0]);
    builder.push(chunks[1]);
    assert_eq!(builder.span_count(), 2);
    let encoded = builder.take();
    assert!(builder.is_empty());
    assert_eq!(encoded.spans, 2);
    let decoded = ExportTraceServiceRequest::decode(encoded.bytes).unwrap();
    // One ResourceSpans per chunk, each with the resource, scope and schema URL as sent.
    let rs = &original.resource_spans[0];
    let ss = &rs.scope_spans[0];
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
    let trace = super::chunk_of_spans(vec![span(trace_id(3), 1, None)]);
    let chunk = trace.chunks().next().unwrap();
    assert_eq!(chunk.head.size(), 0);
    let mut builder = RequestBuilder::default();
    builder.push(chunk);
    let decoded = ExportTraceServiceRequest::decode(builder.take().bytes).unwrap();
    assert_eq!(decoded.resource_spans[0].resource, None);
    assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 1);
}

mod scanning {
    use opentelemetry_proto::tonic::common::v1::KeyValue;
    use proptest::prelude::*;
    use prost::encoding::{encode_key, encode_varint, WireType};

    use super::super::scan::{count_spans, scan};
    use super::*;
    use tailgate_testkit::{assert_scan_agrees_with_prost, nested_value};
    use tailgate_tools::{Generator, WorkloadConfig};

    fn generated(spans: u64, seed: u64) -> Vec<bytes::Bytes> {
        let config = WorkloadConfig {
            seed,
            ..WorkloadConfig::default()
        };
        Generator::new(config, spans, None)
            .map(|o| o.body)
            .collect()
    }

    /// `body` framed as length-delimited field `tag`.
    fn field(tag: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_key(tag, WireType::LengthDelimited, &mut out);
        encode_varint(body.len() as u64, &mut out);
        out.extend_from_slice(body);
        out
    }

    /// A request holding one span whose encoding is `span` followed by `extra` raw fields.
    fn with_span_fields(extra: &[u8]) -> Vec<u8> {
        let mut body = span(trace_id(1), 1, None).encode_to_vec();
        body.extend_from_slice(extra);
        field(1, &field(2, &field(2, &body)))
    }

    /// `depth` unknown groups (field 100) nested inside each other.
    fn groups(depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..depth {
            encode_key(100, WireType::StartGroup, &mut out);
        }
        out.extend_from_slice(&[0x08, 0x01]);
        for _ in 0..depth {
            encode_key(100, WireType::EndGroup, &mut out);
        }
        out
    }

    #[test]
    fn scan_finds_every_span_of_generated_requests_as_received() {
        for body in generated(2_000, 7) {
            assert_scan_agrees_with_prost(&body);
            let decoded = ExportTraceServiceRequest::decode(body.clone()).unwrap();
            assert_eq!(count_spans(&body), spans(&decoded).count() as u64);
            assert!(!scan(body).unwrap().spans.is_empty());
        }
    }

    #[test]
    fn scan_refuses_what_prost_refuses_and_accepts_what_it_accepts() {
        let good = request("a", vec![span(trace_id(1), 1, None)]).encode_to_vec();
        let mut bad_utf8 = good.clone();
        let at = bad_utf8.windows(4).position(|w| w == b"op-1").unwrap();
        bad_utf8[at] = 0xff;
        let mut varint_kind_as_len = Vec::new();
        encode_key(6, WireType::LengthDelimited, &mut varint_kind_as_len);
        varint_kind_as_len.push(0);
        let mut unknown_fixed = Vec::new();
        encode_key(99, WireType::SixtyFourBit, &mut unknown_fixed);
        unknown_fixed.extend_from_slice(&[0; 8]);
        let mut stray_end_group = Vec::new();
        encode_key(100, WireType::EndGroup, &mut stray_end_group);
        let mut mismatched_group = Vec::new();
        encode_key(100, WireType::StartGroup, &mut mismatched_group);
        encode_key(101, WireType::EndGroup, &mut mismatched_group);
        // A second `resource` field after the scope spans: prost merges the two.
        let rs = &request("a", vec![span(trace_id(1), 1, None)]).resource_spans[0];
        let mut two_resources = rs.encode_to_vec();
        prost::encoding::message::encode(1, rs.resource.as_ref().unwrap(), &mut two_resources);
        let two_resources = field(1, &two_resources);
        let mut invalid_ids = span(trace_id(1), 1, None);
        invalid_ids.span_id = vec![0; 8];

        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("good", good.clone(), true),
            ("empty", Vec::new(), true),
            ("truncated varint", vec![0x0a, 0xff], false),
            (
                "length past the end",
                vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
                false,
            ),
            (
                "nested length past the end",
                vec![0x0a, 0x05, 0x12, 0x7f, 0, 0, 0],
                false,
            ),
            ("unknown wire type", vec![0x0f, 0x00], false),
            ("tag 0", vec![0x02, 0x00], false),
            (
                "eleven-byte varint",
                vec![
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
                false,
            ),
            ("invalid UTF-8", bad_utf8, false),
            (
                "known varint field sent as bytes",
                with_span_fields(&varint_kind_as_len),
                false,
            ),
            (
                "unknown fixed64 field",
                with_span_fields(&unknown_fixed),
                true,
            ),
            ("unknown group", with_span_fields(&groups(3)), true),
            ("stray end group", with_span_fields(&stray_end_group), false),
            (
                "mismatched end group",
                with_span_fields(&mismatched_group),
                false,
            ),
            ("resource sent twice", two_resources, true),
            (
                "invalid span ids",
                request("a", vec![invalid_ids]).encode_to_vec(),
                true,
            ),
        ];
        for (what, bytes, accepted) in cases {
            assert_eq!(scan(bytes.clone().into()).is_ok(), accepted, "{what}");
            assert_scan_agrees_with_prost(&bytes);
        }
    }

    /// Attributes take a short path through the scan when they are a short key and a short
    /// scalar value in order; every variation on that shape is judged as prost judges it.
    #[test]
    fn attributes_of_every_shape_are_judged_as_prost_judges_them() {
        let any = |value: &[u8]| field(2, value);
        let kv = |key: &[u8], value: &[u8]| [field(1, key), value.to_vec()].concat();
        let string = |s: &[u8]| field(1, s);
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("string", kv(b"k", &any(&string(b"v"))), true),
            ("bool", kv(b"k", &any(&[0x10, 1])), true),
            ("int", kv(b"k", &any(&[0x18, 0xff, 0x01])), true),
            (
                "double",
                kv(b"k", &any(&[[0x21].as_slice(), &[0; 8]].concat())),
                true,
            ),
            ("bytes", kv(b"k", &any(&field(7, &[0xff]))), true),
            ("empty value", kv(b"k", &any(&[])), true),
            ("no value", field(1, b"k"), true),
            (
                "value first",
                [any(&string(b"v")), field(1, b"k")].concat(),
                true,
            ),
            (
                "two values",
                kv(b"k", &any(&[string(b"v"), vec![0x18, 1]].concat())),
                true,
            ),
            ("unknown field", kv(b"k", &any(&[0x48, 1])), true),
            ("long key", kv(&[b'k'; 200], &any(&string(b"v"))), true),
            ("key not UTF-8", kv(&[0xff], &any(&string(b"v"))), false),
            ("value not UTF-8", kv(b"k", &any(&string(&[0xc3]))), false),
            (
                "int of eleven bytes",
                kv(b"k", &any(&[[0x18].as_slice(), &[0xff; 10], &[1]].concat())),
                false,
            ),
            ("int cut short", kv(b"k", &any(&[0x18, 0x80])), false),
            (
                "double cut short",
                kv(b"k", &any(&[[0x21].as_slice(), &[0; 7]].concat())),
                false,
            ),
            ("string as varint", kv(b"k", &any(&[0x08, 1])), false),
            // string_value_strindex (8), a profile's string-table index: read as absent.
            ("profile string index", kv(b"k", &any(&[0x40, 3])), true),
            (
                "string, then a profile string index",
                kv(b"k", &any(&[string(b"v"), vec![0x40, 3]].concat())),
                true,
            ),
            (
                "profile string index as bytes",
                kv(b"k", &any(&field(8, b"v"))),
                false,
            ),
        ];
        for (what, attribute, accepted) in cases {
            let bytes = with_span_fields(&field(9, &attribute));
            assert_eq!(scan(bytes.clone().into()).is_ok(), accepted, "{what}");
            assert_scan_agrees_with_prost(&bytes);
        }
    }

    /// Protobuf merges a singular message sent twice and lets the last scalar and the last
    /// oneof member win; the views must read such bytes as prost decodes them.
    #[test]
    fn views_read_repeated_and_merged_fields_as_prost_decodes_them() {
        use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope};
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use opentelemetry_proto::tonic::trace::v1::span::Event;
        use opentelemetry_proto::tonic::trace::v1::Status;
        let attr = |key: &str, v: Option<any_value::Value>| KeyValue {
            key: key.into(),
            value: v.map(|v| AnyValue { value: Some(v) }),
            ..Default::default()
        };
        let str_value = |s: &str| Some(any_value::Value::StringValue(s.into()));
        let array = Some(any_value::Value::ArrayValue(Default::default()));
        let mut first = span(trace_id(1), 1, Some(9));
        first.name = "first".into();
        first.kind = 2;
        first.status = Some(Status {
            code: 2,
            message: "boom".into(),
        });
        first.attributes = vec![attr("dup", str_value("one")), attr("dup", str_value("two"))];
        first.events = vec![Event {
            name: "e1".into(),
            time_unix_nano: 5,
            attributes: vec![attr("x", Some(any_value::Value::IntValue(-3)))],
            ..Default::default()
        }];
        let mut second = span(trace_id(2), 2, None);
        second.name = "second".into();
        second.status = Some(Status {
            code: 0,
            message: String::new(),
        });
        second.flags = 0x301;
        second.trace_state = "k=v".into();
        let mut body = first.encode_to_vec();
        body.extend_from_slice(&second.encode_to_vec());
        // One attribute sent as two KeyValue encodings: the key of the first, the value of
        // the second; then oneof members replacing each other within one value.
        let mut merged = attr("merged", str_value("text")).encode_to_vec();
        merged
            .extend_from_slice(&attr("", Some(any_value::Value::BoolValue(true))).encode_to_vec());
        body.extend_from_slice(&field(9, &merged));
        let mut to_text = attr("to_text", array.clone()).encode_to_vec();
        to_text.extend_from_slice(&attr("", str_value("last")).encode_to_vec());
        body.extend_from_slice(&field(9, &to_text));
        let mut to_array = attr("to_array", str_value("first")).encode_to_vec();
        to_array.extend_from_slice(&attr("", array).encode_to_vec());
        body.extend_from_slice(&field(9, &to_array));
        body.extend_from_slice(&field(9, &attr("unset", None).encode_to_vec()));
        body.extend_from_slice(&groups(2));
        let scope = |name: &str, key: &str| InstrumentationScope {
            name: name.into(),
            attributes: vec![attr(key, str_value(name))],
            ..Default::default()
        };
        let mut scope_spans = field(2, &body);
        prost::encoding::message::encode(1, &scope("lib", "a"), &mut scope_spans);
        prost::encoding::message::encode(1, &scope("lib2", "b"), &mut scope_spans);
        let resource = |key: &str| Resource {
            attributes: vec![attr(key, str_value(key))],
            ..Default::default()
        };
        let mut resource_spans = Vec::new();
        prost::encoding::message::encode(1, &resource("service.name"), &mut resource_spans);
        resource_spans.extend_from_slice(&field(2, &scope_spans));
        prost::encoding::message::encode(1, &resource("host.name"), &mut resource_spans);
        let bytes = field(1, &resource_spans);

        assert_scan_agrees_with_prost(&bytes);
        let scanned = scan(bytes.into()).unwrap();
        let view = view::SpanView::parse(scanned.body(&scanned.spans[0]));
        assert_eq!(
            (
                view.name(),
                view.kind,
                view.status_code,
                view.status_message()
            ),
            // The second status sets no field (zero values are not sent): the first stays.
            ("second", 2, 2, "boom")
        );
        let attributes = view.attributes();
        assert!(matches!(
            attributes.get("dup"),
            Some(view::AnyValueView::Str("one"))
        ));
        assert!(matches!(
            attributes.get("merged"),
            Some(view::AnyValueView::Bool(true))
        ));
        assert!(matches!(
            attributes.get("to_text"),
            Some(view::AnyValueView::Str("last"))
        ));
        assert!(matches!(
            attributes.get("to_array"),
            Some(view::AnyValueView::Composite(_))
        ));
        assert!(attributes.get("unset").is_none() && attributes.get("absent").is_none());
        let head = &scanned.scopes[0].head;
        assert_eq!(head.scope().name(), "lib2");
        assert!(head.scope().attributes().get("a").is_some());
        assert!(head.resource_attributes().get("host.name").is_some());
        assert!(head.resource_attributes().get("service.name").is_some());
    }

    /// prost refuses messages nested more than 100 deep, and counts groups as nesting;
    /// the scan must draw the line at the same place.
    #[test]
    fn scan_draws_the_recursion_limit_where_prost_does() {
        let mut verdicts = Vec::new();
        for depth in 25..40 {
            let mut deep = span(trace_id(1), 1, None);
            deep.attributes = vec![KeyValue {
                key: "deep".into(),
                value: Some(nested_value(depth)),
                ..Default::default()
            }];
            let bytes = request("a", vec![deep]).encode_to_vec();
            assert_scan_agrees_with_prost(&bytes);
            verdicts.push(scan(bytes.into()).is_ok());
        }
        for depth in 90..100 {
            let bytes = with_span_fields(&groups(depth));
            assert_scan_agrees_with_prost(&bytes);
            verdicts.push(scan(bytes.into()).is_ok());
        }
        assert!(verdicts.contains(&true) && verdicts.contains(&false));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Realistic requests with a few bytes overwritten, cut short or extended: the scan
        /// and prost agree on every one.
        #[test]
        fn scan_agrees_with_prost_on_damaged_requests(
            seed in 0u64..1_000,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let mut bytes = generated(20, seed)[0].to_vec();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            assert_scan_agrees_with_prost(&bytes);
        }
    }
}

/// Kept spans get a threshold written into their encoded bytes; prost decodes the result
/// as the same span with only its tracestate changed.
#[test]
fn thresholds_are_written_into_spans_without_touching_anything_else() {
    use tracestate::Threshold;
    let mut with_state = span(trace_id(1), 1, None);
    with_state.trace_state = "vendor=a,ot=rv:0123456789abcd;th:c".into();
    with_state.name = "with state".into();
    let mut without_state = span(trace_id(1), 2, Some(1));
    without_state.name = "without state".into();
    let request = request("svc", vec![with_state.clone(), without_state.clone()]);
    let trace = chunks_of(&request).unwrap();
    let chunk = trace.chunks().next().unwrap();
    let mut out = GroupedRequest::default();
    // 50 % after the incoming 25 %: the larger threshold stays.
    out.push_with_thresholds(chunk.head, &[], std::iter::once(chunk.spans), |incoming| {
        incoming.max(Threshold::parse("8"))
    });
    let sent = ExportTraceServiceRequest::decode(out.take().bytes).unwrap();
    let got: Vec<Span> = spans(&sent).cloned().collect();
    let expect = |mut s: Span, state: &str| {
        s.trace_state = state.into();
        s
    };
    assert_eq!(
        got,
        vec![
            expect(with_state, "ot=th:c;rv:0123456789abcd,vendor=a"),
            expect(without_state, "ot=th:8"),
        ]
    );
    // Erasing the threshold of a span that has none changes no byte.
    let mut same = GroupedRequest::default();
    same.push_with_thresholds(chunk.head, &[], std::iter::once(chunk.spans), |_| None);
    let mut plain = RequestBuilder::default();
    plain.push(chunk);
    let erased = ExportTraceServiceRequest::decode(same.take().bytes).unwrap();
    assert_eq!(spans(&erased).nth(1), spans(&request).nth(1));
    assert_eq!(
        spans(&erased).next().unwrap().trace_state,
        "ot=rv:0123456789abcd,vendor=a"
    );
    assert_eq!(plain.take().bytes.len(), {
        let mut b = GroupedRequest::default();
        b.push_with_thresholds(chunk.head, &[], std::iter::once(chunk.spans), |i| i);
        b.take().bytes.len()
    });
}

#[test]
fn chunks_are_copied_one_after_another_into_shared_span_blocks() {
    // A thread of its own: the block being filled is the thread's.
    std::thread::spawn(|| {
        let request = request("svc", vec![span(trace_id(1), 1, None)]);
        let scanned = scan::scan(request.encode_to_vec().into()).unwrap();
        let scope = &scanned.scopes[0];
        let one = scanned.framed(&scanned.spans_of(scope)[0]);
        let end = |c: &Chunk| c.spans.as_ptr() as usize + c.spans.len();
        let start = |c: &Chunk| c.spans.as_ptr() as usize;
        let (mut a, mut b) = (TraceSpans::default(), TraceSpans::default());
        a.push(&scope.head, [one, one].into_iter());
        // The next chunk, of another trace, follows in the same block.
        b.push(&scope.head, std::iter::once(one));
        a.push(&scope.head, std::iter::once(one));
        let (a0, b0) = (a.chunks().next().unwrap(), b.chunks().next().unwrap());
        let a1 = a.chunks().nth(1).unwrap();
        assert_eq!(end(&a0), start(&b0));
        assert_eq!(end(&b0), start(&a1));
        // A chunk over the limit gets an allocation of its own; the block goes on after it.
        let big = vec![one; TraceSpans::OWN_ALLOCATION_OVER / one.len() + 1];
        b.push(&scope.head, big.iter().copied());
        b.push(&scope.head, std::iter::once(one));
        let b: Vec<Chunk> = b.chunks().collect();
        assert_eq!(b[1].span_count as usize, big.len());
        assert_eq!(b[1].spans.len(), big.len() * one.len());
        assert_eq!(end(&a1), start(&b[2]));
        // Filling the block: a chunk that does not fit starts a new one, and every chunk
        // keeps its bytes.
        let mut long = TraceSpans::default();
        let chunk = vec![one; TraceSpans::OWN_ALLOCATION_OVER / one.len()];
        let mut new_blocks = 0;
        for _ in 0..40 {
            let before = long.chunks().last().map(|c| end(&c));
            long.push(&scope.head, chunk.iter().copied());
            let last = long.chunks().last().unwrap();
            new_blocks += usize::from(before.is_some_and(|e| e != start(&last)));
        }
        assert!((4..=6).contains(&new_blocks), "{new_blocks} new blocks");
        assert_eq!(long.size(), 40 * chunk.len() * one.len());
        for c in long.chunks().chain(a.chunks()) {
            assert!(c.spans().all(|s| s.span_id == 1u64.to_be_bytes()));
        }
        assert_eq!(a.size(), 3 * one.len());
        assert_eq!(
            a.chunks.capacity(),
            2,
            "room for exactly the chunks there are"
        );
        assert_eq!(a.chunks().map(|c| c.span_count).sum::<u32>(), 3);
    })
    .join()
    .unwrap();
}

#[test]
fn a_key_found_only_as_another_attributes_value_is_not_an_attribute() {
    let mut s = span(trace_id(1), 1, None);
    s.name = "url.path".into();
    s.attributes = vec![tailgate_testkit::kv("http.route", "url.path")];
    let body = s.encode_to_vec();
    let attributes = view::Attributes::of_span(&body);
    // The key's bytes are in the span (as the name and as a value): read, and not found.
    assert!(attributes.get("url.path").is_none());
    assert!(matches!(
        attributes.get("http.route"),
        Some(view::AnyValueView::Str("url.path"))
    ));
    // Bytes that occur nowhere: not found without reading.
    assert!(attributes.get("absent").is_none());
    // A key made once says whether its bytes occur at all (an empty key always may).
    assert!(view::AttributeKey::new("url.path").may_be_in(&body));
    assert!(!view::AttributeKey::new("absent").may_be_in(&body));
    assert!(view::AttributeKey::new("").may_be_in(&body));
    // The same for several keys in one pass.
    let mut found = [None; 3];
    let keys = ["url.path", "absent", "http.route"].map(view::AttributeKey::new);
    attributes.get_each(keys.iter(), &mut found);
    assert!(found[0].is_none() && found[1].is_none());
    assert!(matches!(
        found[2],
        Some(view::AnyValueView::Str("url.path"))
    ));
}

fn first(t: &TraceSpans) -> Chunk<'_> {
    t.chunks().next().unwrap()
}

/// The chunk of a request from `service` holding one span, of trace `span_id` too.
fn chunk_of(service: &str, span_id: u64) -> TraceSpans {
    chunks_of(&request(
        service,
        vec![span(trace_id(span_id), span_id, None)],
    ))
    .unwrap()
}

/// Chunks of one resource, scope and scope fragment go out under one `ResourceSpans`, in
/// the order they came, however many requests their heads were read from.
#[test]
fn a_grouped_request_puts_chunks_of_one_head_together() {
    let (a1, b1, a2, a3) = (
        chunk_of("a", 1),
        chunk_of("b", 2),
        chunk_of("a", 3),
        chunk_of("a", 4),
    );
    let policy = scope_attributes_fragment(vec![tailgate_testkit::kv("policy", "p")]);
    let mut out = GroupedRequest::default();
    out.push_counted(first(&a1).head, &[], std::iter::once(first(&a1).spans), 1);
    out.push_counted(first(&b1).head, &[], std::iter::once(first(&b1).spans), 1);
    out.push_counted(first(&a2).head, &[], std::iter::once(first(&a2).spans), 1);
    out.push_with_thresholds(
        first(&a3).head,
        &policy,
        std::iter::once(first(&a3).spans),
        |t| t,
    );
    assert_eq!(out.span_count(), 4);
    let encoded = out.take();
    assert!(out.is_empty());
    assert_eq!(encoded.spans, 4);
    let sent = ExportTraceServiceRequest::decode(encoded.bytes).unwrap();
    let groups: Vec<(String, usize, Vec<u64>)> = sent
        .resource_spans
        .iter()
        .map(|rs| {
            let service = match &rs.resource.as_ref().unwrap().attributes[0].value {
                Some(v) => format!("{:?}", v.value),
                None => String::new(),
            };
            let scope = &rs.scope_spans[0];
            let ids = scope
                .spans
                .iter()
                .map(|s| u64::from_be_bytes(s.span_id[..].try_into().unwrap()))
                .collect();
            (service, scope.scope.as_ref().unwrap().attributes.len(), ids)
        })
        .collect();
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let service = |s: &str| format!("{:?}", Some(Value::StringValue(s.into())));
    assert_eq!(
        groups,
        vec![
            (service("a"), 0, vec![1, 3]),
            (service("b"), 0, vec![2]),
            (service("a"), 1, vec![4]),
        ]
    );
}

/// A grouped request's next groups grow in the buffers its last groups used, emptied: the
/// next request holds its own spans only.
#[test]
fn a_grouped_request_reuses_its_groups_buffers_emptied() {
    let span_ids = |encoded: EncodedRequest| -> Vec<u64> {
        spans(&ExportTraceServiceRequest::decode(encoded.bytes).unwrap())
            .map(|s| u64::from_be_bytes(s.span_id[..].try_into().unwrap()))
            .collect()
    };
    let mut out = GroupedRequest::default();
    for id in [1, 2] {
        let c = chunk_of("a", id);
        out.push_counted(first(&c).head, &[], std::iter::once(first(&c).spans), 1);
    }
    let c = chunk_of("b", 3);
    out.push_counted(first(&c).head, &[], std::iter::once(first(&c).spans), 1);
    assert_eq!(span_ids(out.take()), vec![1, 2, 3]);
    assert_eq!(out.spare.len(), 2);
    let reused = out.spare[1].as_ptr();
    let c = chunk_of("b", 4);
    out.push_with_thresholds(first(&c).head, &[], std::iter::once(first(&c).spans), |t| t);
    assert_eq!(out.spare.len(), 1);
    assert_eq!(out.groups[0].spans.as_ptr(), reused);
    assert_eq!(span_ids(out.take()), vec![4]);
}
