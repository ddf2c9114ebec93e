//! Bad input against real gRPC and HTTP listeners: each gets its precise status, and the
//! worker keeps serving afterwards.

use std::io::Write;

use bytes::Bytes;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::Code;

use crate::worker::config::parse_worker;
use crate::worker::Worker;
use tailgate_testkit::{metric, request, span, trace_id};

async fn worker() -> Worker {
    let config = parse_worker(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:0", max_recv_msg_size_mib: 1}
      http: {endpoint: "127.0.0.1:0", max_request_body_size: 4096}
tail_sampling:
  decision_wait: 1s
  policies: [{name: all, type: always_sample}]
exporters: {debug: {}}
admin: {endpoint: "127.0.0.1:0"}
"#,
    )
    .unwrap();
    Worker::start(config).await.unwrap()
}

async fn grpc(w: &Worker) -> TraceServiceClient<tonic::transport::Channel> {
    TraceServiceClient::connect(format!("http://{}", w.grpc_addr.unwrap()))
        .await
        .unwrap()
        .max_encoding_message_size(8 * 1024 * 1024)
}

fn post(w: &Worker, content_type: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("http://{}/v1/traces", w.http_addr.unwrap()))
        .header("content-type", content_type)
        .body(body)
}

fn with_bad_trace_id(
    mut req: ExportTraceServiceRequest,
    index: usize,
) -> ExportTraceServiceRequest {
    req.resource_spans[0].scope_spans[0].spans[index].trace_id = vec![0; 16];
    req
}

#[tokio::test]
async fn grpc_rejects_bad_ids_whole_or_in_part() {
    let w = worker().await;
    let mut client = grpc(&w).await;
    let all_bad = with_bad_trace_id(request("a", vec![span(trace_id(1), 1, None)]), 0);
    let status = client.export(all_bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("trace_id is all zeros"),
        "{}",
        status.message()
    );

    let some_bad = with_bad_trace_id(
        request(
            "a",
            vec![
                span(trace_id(1), 1, None),
                span(trace_id(1), 2, Some(1)),
                span(trace_id(2), 3, None),
            ],
        ),
        1,
    );
    let response = client.export(some_bad).await.unwrap().into_inner();
    let partial = response.partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 1);
    assert!(partial.error_message.contains("trace_id"));
    let text = w.registry.render();
    assert_eq!(
        metric(
            &text,
            "otelcol_receiver_accepted_spans_total",
            &[("transport", "grpc")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "otelcol_receiver_refused_spans_total",
            &[("transport", "grpc")]
        ),
        2.0
    );
    w.shutdown().await;
}

#[tokio::test]
async fn grpc_oversized_request_is_resource_exhausted() {
    let w = worker().await;
    let mut client = grpc(&w).await;
    let mut big = span(trace_id(1), 1, None);
    big.name = "x".repeat(2 * 1024 * 1024);
    let status = client.export(request("a", vec![big])).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // The worker still serves.
    client
        .export(request("a", vec![span(trace_id(2), 1, None)]))
        .await
        .unwrap();
    w.shutdown().await;
}

#[tokio::test]
async fn grpc_malformed_protobuf_is_invalid_argument() {
    let w = worker().await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", w.grpc_addr.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    // A length prefix that runs past the end of the message.
    let garbage = bytes::Bytes::from_static(&[0x0a, 0xff, 0xff, 0x03, 0x01]);
    let garbage_len = garbage.len();
    let status = raw
        .unary(
            tonic::Request::new(garbage),
            http::uri::PathAndQuery::from_static(crate::otlp::EXPORT_PATH),
            crate::otlp::RawExportCodec::for_message(garbage_len),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    w.shutdown().await;
}

#[tokio::test]
async fn http_answers_each_kind_of_bad_input_precisely() {
    let w = worker().await;
    let good = request("a", vec![span(trace_id(1), 1, None)]);

    let r = post(&w, "application/x-protobuf", vec![0x0a, 0xff, 0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let status = super::http::RpcStatus::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, Code::InvalidArgument as i32);
    assert!(
        status.message.contains("invalid OTLP request"),
        "{}",
        status.message
    );

    let r = post(&w, "application/json", b"{\"resourceSpans\": [".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["code"], Code::InvalidArgument as i32);

    let r = post(&w, "application/json", br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"0102030405060708"}]}]}]}"#.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a trace id that is not hex");

    let r = post(&w, "text/plain", good.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    let mut huge = span(trace_id(1), 1, None);
    huge.name = "x".repeat(8192);
    let r = post(
        &w,
        "application/x-protobuf",
        request("a", vec![huge.clone()]).encode_to_vec(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 413);

    // A small gzip body that inflates past the limit is refused too.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&request("a", vec![huge]).encode_to_vec())
        .unwrap();
    let r = post(&w, "application/x-protobuf", gz.finish().unwrap())
        .header("content-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let r = post(&w, "application/x-protobuf", b"not gzip".to_vec())
        .header("content-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let all_bad = with_bad_trace_id(good.clone(), 0);
    let r = post(&w, "application/x-protobuf", all_bad.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // And good input still works: gzip, protobuf and JSON.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&good.encode_to_vec()).unwrap();
    let r = post(&w, "application/x-protobuf", gz.finish().unwrap())
        .header("content-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    let response = ExportTraceServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(response.partial_success, None);
    let r = post(
        &w,
        "application/json; charset=utf-8",
        serde_json::to_vec(&good).unwrap(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let text = w.registry.render();
    assert_eq!(
        metric(
            &text,
            "otelcol_receiver_accepted_spans_total",
            &[("transport", "http")]
        ),
        2.0
    );
    w.shutdown().await;
}

/// The gRPC receiver lets a client send four requests of 1 MiB at once before any window
/// update: its frames and stream windows are 1 MiB and its connection window 4 MiB
/// (HTTP/2's default is 64 KiB, hyper's 1 MiB for the whole connection), so such requests
/// arrive as one frame each and are read without being gathered from pieces.
#[tokio::test]
async fn grpc_takes_four_requests_of_a_mebibyte_without_waiting_for_a_window() {
    const MIB: usize = 1 << 20;
    let w = worker().await;
    let addr = w.grpc_addr.unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .max_send_buffer_size(8 * MIB)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut client = client.clone().ready().await.unwrap();
        let request = http::Request::post(format!(
            "http://{addr}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        ))
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
        let (_response, mut send) = client.send_request(request, false).unwrap();
        send.reserve_capacity(MIB);
        streams.push(send);
    }
    // Capacity is granted as the server's settings and window updates arrive; with smaller
    // windows it would stop short, so the wait is bounded.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        for send in &mut streams {
            while send.capacity() < MIB {
                std::future::poll_fn(|cx| send.poll_capacity(cx))
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
    })
    .await
    .expect("four streams were never granted 1 MiB each");
    for send in &mut streams {
        assert_eq!(send.capacity(), MIB);
        send.send_reset(h2::Reason::CANCEL);
    }
    connection.abort();
    w.shutdown().await;
}
