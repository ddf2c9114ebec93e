//! OTLP/protobuf request bodies as the receivers get them: the span count the receivers
//! report, the worker's decode, framing and id checks, and the router's scan, which must
//! agree with prost on every input (accept the same, find the same spans).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailgate::receiver::{check_ids, Payload};

fuzz_target!(|data: &[u8]| {
    tailgate::testkit::assert_scan_agrees_with_prost(data);
    let payload = Payload::Protobuf(data.to_vec().into());
    let counted = payload.span_count();
    if let Ok((_, framed)) = payload.decode_and_frame() {
        assert_eq!(counted, framed.spans.len() as u64);
        let _ = check_ids(&framed);
    }
});
