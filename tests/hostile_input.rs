//! Nasty inputs kept as regression tests: each gets a precise error (or is accepted), the
//! worker never panics, and it keeps serving afterwards.

mod common;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use tailgate::receiver::Payload;
use tailgate::worker::Worker;
use tailgate_testkit::{kv, metric, nested_value, request, span, trace_id, Sink};

const KEEP_ALL: &str = "  decision_wait: 100ms\n  policies: [{name: all, type: always_sample}]\n";

async fn post(worker: &Worker, body: Vec<u8>) -> u16 {
    reqwest::Client::new()
        .post(common::http_url(worker))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn hostile_protobuf_is_refused_precisely_and_the_worker_keeps_serving() {
    let sink = Sink::start(vec![]).await;
    let mut config = common::config(&sink, KEEP_ALL);
    config
        .receivers
        .otlp
        .protocols
        .http
        .as_mut()
        .unwrap()
        .max_request_body_size = 8 * 1024 * 1024;
    let worker = Worker::start(config).await.unwrap();

    let good = request("a", vec![span(trace_id(1), 1, None)]).encode_to_vec();
    // A valid span whose name bytes are not UTF-8.
    let mut bad_utf8 = good.clone();
    let at = bad_utf8.windows(4).position(|w| w == b"op-1").unwrap();
    bad_utf8[at] = 0xff;
    // Attribute values nested past prost's recursion limit.
    let mut deep = span(trace_id(2), 1, None);
    deep.attributes = vec![KeyValue {
        key: "deep".into(),
        value: Some(nested_value(200)),
        ..Default::default()
    }];
    let corpus: Vec<(&str, Vec<u8>, u16)> = vec![
        ("truncated varint", vec![0x0a, 0xff], 400),
        (
            "length prefix past the end",
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
            400,
        ),
        (
            "length prefix of a nested message past the end",
            vec![0x0a, 0x05, 0x12, 0x7f, 0x00, 0x00, 0x00],
            400,
        ),
        ("unknown wire type", vec![0x0f, 0x00], 400),
        ("invalid UTF-8 in a string", bad_utf8, 400),
        (
            "nesting past the recursion limit",
            request("a", vec![deep]).encode_to_vec(),
            400,
        ),
        ("empty request", Vec::new(), 200),
    ];
    for (what, body, want) in corpus {
        assert_eq!(post(&worker, body).await, want, "{what}");
    }
    // An attribute flood within the size limit is accepted and handled.
    let mut flood = span(trace_id(3), 1, None);
    flood.attributes = (0..50_000).map(|i| kv(&format!("k{i}"), "v")).collect();
    assert_eq!(
        post(&worker, request("a", vec![flood]).encode_to_vec()).await,
        200
    );
    // And a good request still goes all the way through.
    assert_eq!(post(&worker, good).await, 200);
    assert_eq!(
        sink.wait_for_spans(2, std::time::Duration::from_secs(20))
            .await,
        2
    );
    let text = common::scrape(worker.admin_addr).await;
    assert_eq!(
        metric(&text, "otelcol_receiver_accepted_spans_total", &[]),
        2.0
    );
    worker.shutdown().await;
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever bytes arrive, the scan refuses them cleanly or yields a request the worker's
    /// id checks accept or reject and its views read as prost decodes it; never a panic.
    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        if let Ok(scanned) = Payload::Protobuf(bytes.clone().into()).scan() {
            let _ = tailgate::receiver::check_ids(&scanned);
        }
        tailgate_testkit::assert_scan_agrees_with_prost(&bytes);
        let _ = serde_json::from_slice::<ExportTraceServiceRequest>(&bytes);
    }

    /// Any config text loads or fails with errors; never a panic.
    #[test]
    fn arbitrary_config_text_never_panics(text in "(receivers|tail_sampling|policies|exporters|\\{|\\}|\\[|\\]|:|-|name|type|latency|,| |\n|[a-z0-9_]{1,8}){0,40}") {
        let _ = tailgate::worker::config::parse_worker(&text);
        let _ = tailgate::router::config::parse_router(&text);
        let _ = tailgate::local::parse_local(&text);
    }
}
