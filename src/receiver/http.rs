//! The OTLP/HTTP receiver: `POST <traces_url_path>` with a protobuf or JSON body,
//! optionally gzipped (every member). Errors carry a `google.rpc.Status` body in the
//! request's encoding. Bodies are read within the request bytes budget; connections have
//! a header timeout and an idle limit.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::admission::{gunzip, read_body, BodyError, RequestBudget};
use super::conn::{ended, Incoming};
use super::security::{tls_incoming, BearerAuth, Security};
use super::{ingest_and_wait, response, Ingest, IngestError, Payload, ReceiverMetrics, Relay};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

#[derive(Clone)]
struct HttpState {
    pipeline: Arc<dyn Ingest>,
    metrics: ReceiverMetrics,
    max_body: usize,
    auth: Option<BearerAuth>,
    budget: RequestBudget,
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

/// What the HTTP receiver serves with, besides its listener.
pub(super) struct HttpSettings {
    pub path: String,
    pub max_body: usize,
    pub read_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub budget: RequestBudget,
    pub security: Security,
}

/// Serves OTLP/HTTP (HTTP/1.1, and HTTP/2 with prior knowledge or ALPN) on `listener`
/// until `stop` is cancelled, then lets open requests finish.
pub(super) async fn serve_http(
    listener: TcpListener,
    pipeline: Arc<dyn Ingest>,
    metrics: ReceiverMetrics,
    settings: HttpSettings,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(&settings.path, post(export))
        // Bodies are read with our own limit below, so the 413 is ours.
        .layer(DefaultBodyLimit::disable())
        .with_state(HttpState {
            pipeline,
            metrics,
            max_body: settings.max_body,
            auth: settings.security.auth,
            budget: settings.budget,
        });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(
            (!settings.read_header_timeout.is_zero()).then_some(settings.read_header_timeout),
        );
    let graceful = GracefulShutdown::new();
    let serve = |io: Conn| {
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    };
    let (mut incoming, fatal) = Incoming::new(listener, settings.idle_timeout);
    match settings.security.tls {
        Some(tls) => {
            let mut connections = tls_incoming(incoming, tls, stop.clone());
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    accepted = connections.recv() => match accepted {
                        Some(stream) => serve(Box::new(stream)),
                        None => break,
                    },
                }
            }
        }
        None => loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                accepted = incoming.next() => match accepted {
                    Some(Ok(stream)) => serve(Box::new(stream)),
                    Some(Err(_)) => continue,
                    None => break,
                },
            }
        },
    }
    graceful.shutdown().await;
    ended(&stop, &fatal)
}

/// A plain or TLS connection.
type Conn = Box<dyn Io>;
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

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
    let mut reservation = s.budget.reservation();
    let body = match read_body(body, s.max_body, &mut reservation, |_| None).await {
        Ok(body) if gzip => gunzip(&body, s.max_body, &mut reservation).map(Bytes::from),
        other => other,
    };
    let body = match body {
        Ok(body) => body,
        Err(e) => return body_error(encoding, e),
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
    let total = request.refusal_count();
    let relay = Relay::from_headers(&headers);
    let result = ingest_and_wait(s.pipeline.as_ref(), request, relay.as_ref()).await;
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

/// The answer for a body that could not be read.
fn body_error(encoding: Encoding, e: BodyError) -> Response {
    let status = match e {
        BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        BodyError::Exhausted => StatusCode::TOO_MANY_REQUESTS,
        BodyError::Read(_) | BodyError::Gzip(_) => StatusCode::BAD_REQUEST,
    };
    let mut response = error(encoding, status, e.to_string());
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
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
