//! tailgate's test kit: span and request builders, the one in-process OTLP/gRPC sink (for
//! tests, the load generator's verifier and the benchmark), a Prometheus text reader, and
//! the cross-checks of the scan and the views against prost. A dev-dependency of the
//! service, never a dependency.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};

use tailgate::otlp::view::{AnyValueView, AttributeKey, Attributes, SpanView};

/// A loopback port nothing listens on (bound, then released): for a peer that is gone, or
/// for a process that must know its own endpoint before it binds.
///
/// Taken below Linux's ephemeral range (32768 and up by default), not from port 0: a port
/// the kernel hands out for port 0 is also one it hands to outgoing connections, so between
/// this call and the process that binds it another test's client could take it. Ports are
/// tried in turn from a point that depends on the process id (test binaries run side by
/// side), each checked by binding it.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let turn = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (FIRST + (start + turn) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port from {FIRST} to {}", FIRST + SPAN)
}

/// [`free_port`] as a loopback address.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A router's config: OTLP/gRPC on `grpc`, `/metrics` on `admin`, one `loadbalancing` route
/// over the static `backends`, whose `protocol.otlp` holds `otlp` (the inside of a flow
/// mapping, e.g. `timeout: 1s`) besides `tls: {insecure: true}`.
pub fn router_yaml(grpc: &str, admin: &str, backends: &[String], otlp: &str) -> String {
    let hostnames: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: \"{grpc}\"}}}}}}}}\n\
         exporters:\n  loadbalancing:\n    protocol: {{otlp: {{tls: {{insecure: true}}, {otlp}}}}}\n    \
         resolver: {{static: {{hostnames: [{}]}}}}\n\
         admin: {{endpoint: \"{admin}\"}}\n",
        hostnames.join(", ")
    )
}

/// A trace id whose every byte is derived from `n` (never all zero).
pub fn trace_id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    id[8..].copy_from_slice(&(n + 1).to_be_bytes());
    id
}

/// A span of `trace`, with id `span_id` (non-zero) and the given parent (`None`: root).
pub fn span(trace: [u8; 16], span_id: u64, parent: Option<u64>) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: span_id.to_be_bytes().to_vec(),
        parent_span_id: parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
        name: format!("op-{span_id}"),
        kind: 2,
        start_time_unix_nano: 1_700_000_000_000_000_000 + span_id,
        end_time_unix_nano: 1_700_000_000_100_000_000 + span_id,
        attributes: vec![kv("http.route", "/api/items")],
        ..Default::default()
    }
}

pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// One request holding `spans` under one resource (`service.name` = `service`) and one
/// scope.
pub fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "testkit".into(),
                    version: "1".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
        }],
    }
}

/// The Prometheus text an admin listener at `addr` serves on `/metrics`.
pub async fn scrape(addr: SocketAddr) -> reqwest::Result<String> {
    reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await
}

/// Every span in a request.
pub use tailgate::otlp::spans as all_spans;

/// One root span (span id 1) for each trace number in `traces`.
pub fn roots(traces: impl IntoIterator<Item = u64>) -> Vec<Span> {
    traces
        .into_iter()
        .map(|t| span(trace_id(t), 1, None))
        .collect()
}

/// Takes each accepted request with its metadata and the client's address, instead of the
/// sink keeping it (the load generator's verifier folds a million spans into counts).
pub type Recorder = Arc<
    dyn Fn(&tonic::metadata::MetadataMap, Option<SocketAddr>, ExportTraceServiceRequest)
        + Send
        + Sync,
>;

#[derive(Default)]
struct SinkState {
    requests: Vec<ExportTraceServiceRequest>,
    /// Codes to answer with before accepting, one per call.
    failures: Vec<Code>,
    refused_calls: usize,
}

/// An OTLP/gRPC server on loopback that keeps what it is sent, or hands it to a
/// [`Recorder`].
#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<Mutex<SinkState>>,
    stop: CancellationToken,
    server: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

struct SinkService {
    state: Arc<Mutex<SinkState>>,
    recorder: Option<Recorder>,
}

#[tonic::async_trait]
impl TraceService for SinkService {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut s = self.state.lock().expect("sink lock");
        if !s.failures.is_empty() {
            let code = s.failures.remove(0);
            s.refused_calls += 1;
            return Err(Status::new(code, "sink told to fail"));
        }
        match &self.recorder {
            Some(record) => {
                drop(s);
                let (metadata, peer) = (request.metadata().clone(), request.remote_addr());
                record(&metadata, peer, request.into_inner());
            }
            None => s.requests.push(request.into_inner()),
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Sink {
    /// Starts a sink that first fails one call with each of `failures`, then accepts.
    pub async fn start(failures: Vec<Code>) -> Sink {
        Self::serve("127.0.0.1:0", failures, None, None)
            .await
            .expect("bind sink")
    }

    /// Starts a sink listening on `addr` (another loopback address, say).
    pub async fn start_at(addr: &str) -> Sink {
        Self::serve(addr, vec![], None, None)
            .await
            .expect("bind sink")
    }

    /// Like [`Sink::start`], on `addr`.
    pub async fn start_failing_at(addr: &str, failures: Vec<Code>) -> Sink {
        Self::serve(addr, failures, None, None)
            .await
            .expect("bind sink")
    }

    /// Starts a sink that accepts only TLS, with the PEM certificate chain and key given.
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Sink {
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        Self::serve("127.0.0.1:0", vec![], Some(tls), None)
            .await
            .expect("bind sink")
    }

    /// Starts a sink on `addr` that hands every request to `recorder`.
    pub async fn start_recording(addr: &str, recorder: Recorder) -> std::io::Result<Sink> {
        Self::serve(addr, vec![], None, Some(recorder)).await
    }

    async fn serve(
        addr: &str,
        failures: Vec<Code>,
        tls: Option<tonic::transport::ServerTlsConfig>,
        recorder: Option<Recorder>,
    ) -> std::io::Result<Sink> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(SinkState {
            failures,
            ..Default::default()
        }));
        let stop = CancellationToken::new();
        let service = TraceServiceServer::new(SinkService {
            state: state.clone(),
            recorder,
        })
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(64 * 1024 * 1024);
        let token = stop.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).expect("sink TLS config");
        }
        let server = tokio::spawn(async move {
            let _ = builder
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    token.cancelled_owned(),
                )
                .await;
        });
        Ok(Sink {
            addr,
            state,
            stop,
            server: Arc::new(Mutex::new(Some(server))),
        })
    }

    /// Stops the server and waits (at most 10 s) until its address is free again; clients
    /// then get connection refused.
    pub async fn stop(&self) {
        self.stop.cancel();
        let server = self.server.lock().expect("sink lock").take();
        if let Some(server) = server {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
    }

    pub fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.state.lock().expect("sink lock").requests.clone()
    }

    pub fn refused_calls(&self) -> usize {
        self.state.lock().expect("sink lock").refused_calls
    }

    pub fn span_count(&self) -> usize {
        self.state
            .lock()
            .expect("sink lock")
            .requests
            .iter()
            .map(|r| all_spans(r).count())
            .sum()
    }

    /// Waits until at least `n` spans arrived, or `limit` passed; returns the count.
    pub async fn wait_for_spans(&self, n: usize, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let have = self.span_count();
            if have >= n || tokio::time::Instant::now() >= deadline {
                return have;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The value of the series `name{labels}` in Prometheus text, summed over series whose
/// labels include every pair in `labels`; 0 when there is none.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all = labels.iter().all(|(k, v)| {
                series_labels
                    .split(',')
                    .any(|p| p == format!("{k}=\"{v}\""))
            });
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Panics unless the router's scan ([`tailgate::otlp::scan`]) and prost agree on `bytes`: both
/// accept or both refuse; when they accept, the same spans with the same id verdicts, the
/// scanned spans reassembled under their scanned resource and scope decode to the request
/// prost decoded (one `ResourceSpans` per non-empty `ScopeSpans`), and the views
/// ([`tailgate::otlp::view`]) read every span, resource and scope as prost decoded it.
/// Shared by the property tests and the fuzz target.
pub fn assert_scan_agrees_with_prost(bytes: &[u8]) {
    use prost::Message;
    use tailgate::otlp::{scan, RequestBuilder};
    let scanned = scan::scan(bytes::Bytes::copy_from_slice(bytes));
    let decoded = ExportTraceServiceRequest::decode(bytes);
    let (scanned, decoded) = match (scanned, decoded) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(_), Err(_)) => return,
        (s, d) => panic!(
            "scan and prost disagree: scan {:?}, prost {:?}",
            s.err(),
            d.err()
        ),
    };
    let spans: Vec<&Span> = tailgate::otlp::spans(&decoded).collect();
    assert_eq!(scanned.spans.len(), spans.len(), "span count");
    for (s, d) in scanned.spans.iter().zip(&spans) {
        let ids = tailgate::otlp::validate_id_fields(&d.trace_id, &d.span_id, &d.parent_span_id);
        assert_eq!(s.ids, ids, "id verdict");
        assert_eq!(&Span::decode(scanned.body(s)).unwrap(), *d, "span bytes");
        assert_view_reads(&SpanView::parse(scanned.body(s)), d);
        assert_view_reads(&scanned.view(s), d);
    }
    let mut rebuilt = RequestBuilder::default();
    for scope in &scanned.scopes {
        let framed = scanned.spans[scope.spans.clone()]
            .iter()
            .map(|s| scanned.framed(s));
        rebuilt.push_spans(&scope.head, &[], framed);
    }
    let rebuilt = ExportTraceServiceRequest::decode(rebuilt.take().bytes).unwrap();
    let expected: Vec<ResourceSpans> = decoded
        .resource_spans
        .iter()
        .flat_map(|rs| {
            rs.scope_spans
                .iter()
                .filter(|ss| !ss.spans.is_empty())
                .map(|ss| ResourceSpans {
                    resource: rs.resource.clone(),
                    scope_spans: vec![ss.clone()],
                    schema_url: rs.schema_url.clone(),
                })
        })
        .collect();
    assert_eq!(rebuilt.resource_spans, expected, "resources and scopes");
    for (scope, rs) in scanned.scopes.iter().zip(&expected) {
        let resource = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes);
        assert_attributes_read(scope.head.resource_attributes(), resource);
        let decoded = rs.scope_spans[0].scope.clone().unwrap_or_default();
        let view = scope.head.scope();
        assert_eq!(
            (view.name(), view.version()),
            (&*decoded.name, &*decoded.version)
        );
        assert_attributes_read(view.attributes(), &decoded.attributes);
    }
}

/// Panics unless `view` reads every field of `span` as prost decoded it.
fn assert_view_reads(view: &SpanView<'_>, span: &Span) {
    let status = span.status.clone().unwrap_or_default();
    assert_eq!(
        (view.trace_id, view.span_id, view.parent_span_id),
        (&*span.trace_id, &*span.span_id, &*span.parent_span_id),
        "ids"
    );
    assert_eq!(
        (view.name(), view.kind, view.trace_state(), view.flags),
        (&*span.name, span.kind, &*span.trace_state, span.flags),
        "name, kind, trace state, flags"
    );
    assert_eq!(
        (view.start_time_unix_nano, view.end_time_unix_nano),
        (span.start_time_unix_nano, span.end_time_unix_nano),
        "times"
    );
    assert_eq!(
        (view.status_code, view.status_message()),
        (status.code, &*status.message),
        "status"
    );
    assert_eq!(
        view.dropped_attributes_count, span.dropped_attributes_count,
        "dropped attributes"
    );
    assert_attributes_read(view.attributes(), &span.attributes);
    let events: Vec<_> = view.events().collect();
    assert_eq!(events.len(), span.events.len(), "events");
    for (e, d) in events.iter().zip(&span.events) {
        assert_eq!((e.name(), e.time_unix_nano), (&*d.name, d.time_unix_nano));
        assert_attributes_read(e.attributes(), &d.attributes);
    }
}

/// The value of attribute `key` of decoded attributes, as pdata's `Get` finds it: the
/// first attribute with that key, if its value is set (a profile's string-table index,
/// `string_value_strindex`, reads as absent outside profiles, as OTLP says).
fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .filter(|v| !matches!(v, any_value::Value::StringValueStrindex(_)))
}

/// Panics unless `view` holds `decoded`'s attributes in order and finds each key's value
/// as [`attribute`] finds it in the decoded ones.
fn assert_attributes_read(view: Attributes<'_>, decoded: &[KeyValue]) {
    let keys: Vec<&str> = view.iter().map(|kv| kv.key()).collect();
    let mut expected: Vec<&str> = decoded.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, expected, "attribute keys");
    expected.push("absent");
    let mut found = vec![None; expected.len()];
    let keys: Vec<AttributeKey> = expected.iter().map(|k| AttributeKey::new(k)).collect();
    view.get_each(keys.iter(), &mut found);
    for (key, found) in expected.iter().zip(&found) {
        let one = view.get(key);
        assert_eq!(format!("{found:?}"), format!("{one:?}"), "get_each {key:?}");
    }
    for kv in decoded {
        let found = view.get(&kv.key);
        let want = attribute(decoded, &kv.key);
        let same = match (found, want) {
            (None, None) => true,
            (Some(AnyValueView::Str(a)), Some(any_value::Value::StringValue(b))) => a == b,
            (Some(AnyValueView::Bool(a)), Some(any_value::Value::BoolValue(b))) => a == *b,
            (Some(AnyValueView::Int(a)), Some(any_value::Value::IntValue(b))) => a == *b,
            (Some(AnyValueView::Double(a)), Some(any_value::Value::DoubleValue(b))) => {
                a.to_bits() == b.to_bits()
            }
            (Some(AnyValueView::Bytes(a)), Some(any_value::Value::BytesValue(b))) => a == &b[..],
            (
                Some(v @ AnyValueView::Composite(_)),
                Some(w @ (any_value::Value::ArrayValue(_) | any_value::Value::KvlistValue(_))),
            ) => {
                let mut shown = String::new();
                v.write_to(&mut shown);
                shown == format!("{w:?}")
            }
            _ => false,
        };
        assert!(
            same,
            "attribute {:?}: view {found:?}, prost {want:?}",
            kv.key
        );
    }
}

/// An attribute value nested `depth` key-value lists deep, for the decoders' recursion limit.
pub fn nested_value(depth: usize) -> AnyValue {
    let mut v = AnyValue {
        value: Some(any_value::Value::StringValue("leaf".into())),
    };
    for _ in 0..depth {
        v = AnyValue {
            value: Some(any_value::Value::KvlistValue(
                opentelemetry_proto::tonic::common::v1::KeyValueList {
                    values: vec![KeyValue {
                        key: "k".into(),
                        value: Some(v),
                        ..Default::default()
                    }],
                },
            )),
        };
    }
    v
}
