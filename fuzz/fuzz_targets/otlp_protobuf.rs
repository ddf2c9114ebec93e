//! OTLP/protobuf request bodies as the receivers get them: the span count the receivers
//! report, the scan and id checks of the router and the worker, and the views the worker
//! reads spans through, which must agree with prost on every input (accept the same, find
//! the same spans, read the same fields).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailgate::receiver::{check_ids, Payload};

fuzz_target!(|data: &[u8]| {
    tailgate_testkit::assert_scan_agrees_with_prost(data);
    let payload = Payload::Protobuf(data.to_vec().into());
    let counted = payload.span_count();
    if let Ok(scanned) = payload.scan() {
        assert_eq!(counted, scanned.spans.len() as u64);
        let _ = check_ids(&scanned);
    }
});
