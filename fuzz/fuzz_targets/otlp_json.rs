//! OTLP/JSON request bodies: serde's decode, then the worker's path (encoded again and
//! framed, ids checked); the encoding must scan as prost decodes it, since that is how
//! the router takes JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tailgate::receiver::{check_ids, Payload};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<ExportTraceServiceRequest>(data) {
        tailgate::testkit::assert_scan_agrees_with_prost(&request.encode_to_vec());
        if let Ok((_, framed)) = Payload::Decoded(request).decode_and_frame() {
            let _ = check_ids(&framed);
        }
    }
});
