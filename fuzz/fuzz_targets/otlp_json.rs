//! OTLP/JSON request bodies: serde's decode, then the path of the router and the worker
//! (encoded again, scanned, ids checked); the encoding must scan and read as prost decodes
//! it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tailgate::receiver::{check_ids, Payload};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<ExportTraceServiceRequest>(data) {
        tailgate_testkit::assert_scan_agrees_with_prost(&request.encode_to_vec());
        if let Ok(scanned) = Payload::Decoded(request).scan() {
            let _ = check_ids(&scanned);
        }
    }
});
