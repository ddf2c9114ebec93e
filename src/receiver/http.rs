//! The OTLP/HTTP receiver: `POST <traces_url_path>` with a protobuf or JSON body,
//! optionally gzipped. Errors carry a `google.rpc.Status` body in the request's encoding.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::security::{tls_incoming, BearerAuth, Security};
use super::{response, Ingest, IngestError, Payload, ReceiverMetrics};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

#[derive(Clone)]
struct HttpState {
    pipeline: Arc<dyn Ingest>,
    metrics: ReceiverMetrics,
    max_body: usize,
    auth: Option<BearerAuth>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// `google.rpc.Status`, the body of OTLP/HTTP errors.
#[derive(Clone, PartialEq, Message, serde::Serialize)]
pub(super) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub(super) code: i32,
    #[prost(string, tag = "2")]
    pub(super) message: String,
}

/// Serves OTLP/HTTP on `listener` until `stop` is cancelled.
pub async fn serve_http(
    listener: TcpListener,
    pipeline: Arc<dyn Ingest>,
    metrics: ReceiverMetrics,
    path: &str,
    max_body: usize,
    security: Security,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(path, post(export))
        // Bodies are read with our own limit below, so the 413 is ours.
        .layer(DefaultBodyLimit::disable())
        .with_state(HttpState {
            pipeline,
            metrics,
            max_body,
            auth: security.auth,
        });
    match security.tls {
        Some(tls) => {
            let local = listener.local_addr()?;
            let incoming = TlsListener {
                incoming: tls_incoming(listener, tls, stop.clone()),
                local,
            };
            axum::serve(incoming, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
    }
}

/// TLS connections, handshakes done, as axum serves them.
struct TlsListener {
    incoming: tokio::sync::mpsc::Receiver<
        std::io::Result<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    >,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            match self.incoming.recv().await {
                Some(Ok(accepted)) => return accepted,
                Some(Err(_)) => continue,
                // The acceptor stopped: shutdown is under way; wait for it.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn export(State(s): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let encoding = match content_type.split(';').next().unwrap_or("").trim() {
        PROTOBUF => Encoding::Protobuf,
        JSON => Encoding::Json,
        other => {
            return error(
                Encoding::Protobuf,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported content type {other:?}; use {PROTOBUF} or {JSON}"),
            )
        }
    };
    if s.auth
        .as_ref()
        .is_some_and(|auth| !auth.allows(headers.get(header::AUTHORIZATION)))
    {
        return error(
            encoding,
            StatusCode::UNAUTHORIZED,
            "missing or invalid bearer token".into(),
        );
    }
    let body = match axum::body::to_bytes(body, s.max_body).await {
        Ok(b) => b,
        Err(_) => return too_large(encoding, s.max_body),
    };
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return error(
                encoding,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported content encoding {other:?}"),
            )
        }
    };
    let body = if gzip {
        match gunzip(&body, s.max_body) {
            Ok(Some(b)) => b,
            Ok(None) => return too_large(encoding, s.max_body),
            Err(e) => {
                return error(
                    encoding,
                    StatusCode::BAD_REQUEST,
                    format!("invalid gzip body: {e}"),
                )
            }
        }
    } else {
        body
    };
    let request = match encoding {
        Encoding::Protobuf => Payload::Protobuf(body),
        Encoding::Json => match serde_json::from_slice::<ExportTraceServiceRequest>(&body) {
            Ok(request) => Payload::Decoded(request),
            Err(e) => {
                return error(
                    encoding,
                    StatusCode::BAD_REQUEST,
                    format!("invalid OTLP request: {e}"),
                )
            }
        },
    };
    let total = request.span_count();
    let result = s.pipeline.ingest(request, tokio::time::Instant::now());
    s.metrics.record(&result, total);
    match result {
        Ok(ingested) => {
            let response = response(ingested);
            match encoding {
                Encoding::Protobuf => {
                    ([(header::CONTENT_TYPE, PROTOBUF)], response.encode_to_vec()).into_response()
                }
                Encoding::Json => (
                    [(header::CONTENT_TYPE, JSON)],
                    serde_json::to_vec(&response).unwrap_or_default(),
                )
                    .into_response(),
            }
        }
        Err(IngestError::InvalidArgument(m)) => error(encoding, StatusCode::BAD_REQUEST, m),
        Err(IngestError::Unavailable(m)) => {
            let mut r = error(encoding, StatusCode::SERVICE_UNAVAILABLE, m.to_owned());
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
        Err(IngestError::Overloaded(m)) => {
            let mut r = error(encoding, StatusCode::TOO_MANY_REQUESTS, m.to_owned());
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
    }
}

/// Decompresses at most `limit` bytes; `None` when the body inflates past it.
fn gunzip(body: &[u8], limit: usize) -> std::io::Result<Option<Bytes>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)?;
    Ok((out.len() <= limit).then(|| out.into()))
}

fn too_large(encoding: Encoding, limit: usize) -> Response {
    error(
        encoding,
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body exceeds {limit} bytes"),
    )
}

fn error(encoding: Encoding, status: StatusCode, message: String) -> Response {
    let grpc_code = match status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYLOAD_TOO_LARGE => {
            tonic::Code::ResourceExhausted
        }
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        _ => tonic::Code::InvalidArgument,
    };
    let body = RpcStatus {
        code: grpc_code as i32,
        message,
    };
    match encoding {
        Encoding::Protobuf => (
            status,
            [(header::CONTENT_TYPE, PROTOBUF)],
            body.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => (
            status,
            [(header::CONTENT_TYPE, JSON)],
            serde_json::to_vec(&body).unwrap_or_default(),
        )
            .into_response(),
    }
}
