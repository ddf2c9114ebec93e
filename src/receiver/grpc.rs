//! The OTLP/gRPC receiver: the trace service's one method, served with a codec that
//! hands the request on as bytes ([`Payload::Protobuf`]), so router and worker scan it
//! without decoding. Messages are read within the request bytes budget, every gzip member
//! inflated; the collector's server keys bound streams and connection lifetimes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::HeaderValue;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use http_body_util::Full;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::server::{Grpc, NamedService};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::admission::{gunzip, read_body, BodyError, RequestBudget, Reservation};
use super::config::ServerParametersConfig;
use super::conn::{ended, Incoming};
use super::security::{tls_incoming, Security};
use super::{ingest_and_wait, response, Ingest, IngestError, Payload, ReceiverMetrics, Relay};

const GRPC_ENCODING: &str = "grpc-encoding";
use crate::otlp::{RawExportServerCodec, EXPORT_PATH, TRACE_SERVICE};

struct GrpcReceiver {
    pipeline: Arc<dyn Ingest>,
    metrics: ReceiverMetrics,
}

/// The gRPC status for a refused request. Overload is RESOURCE_EXHAUSTED, which OTLP
/// clients retry with backoff.
fn status(e: &IngestError) -> Status {
    match e {
        IngestError::InvalidArgument(m) => Status::invalid_argument(m.clone()),
        IngestError::Overloaded(m) => Status::resource_exhausted(*m),
        IngestError::Unavailable(m) => Status::unavailable(*m),
    }
}

impl GrpcReceiver {
    async fn export(
        &self,
        request: Bytes,
        relay: Option<&Relay>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = Payload::Protobuf(request);
        let total = request.span_count();
        let result = ingest_and_wait(self.pipeline.as_ref(), request, relay).await;
        self.metrics.record(&result, total);
        let ingested = result.map_err(|e| status(&e))?;
        Ok(Response::new(response(ingested)))
    }
}

/// The trace service as tonic serves it: `Export` with [`RawExportServerCodec`], gzip
/// responses, `UNIMPLEMENTED` for any other method. The request body is read here, not by
/// tonic: within the request bytes budget, and inflating every gzip member (tonic's
/// decompression reads only the first).
#[derive(Clone)]
struct TraceServer {
    receiver: Arc<GrpcReceiver>,
    max_message_bytes: usize,
    budget: RequestBudget,
}

impl NamedService for TraceServer {
    const NAME: &'static str = TRACE_SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

/// The gRPC message prefix: a compression flag and a 4-byte big-endian length.
const PREFIX: usize = 5;

/// The largest HTTP/2 frame clients may send. HTTP/2's default, 16 KiB, cuts a request of a
/// few hundred KiB into dozens of frames, each a write on the client and a body chunk here;
/// clients that honour this send one frame per window instead. What a connection may have
/// in flight is still bounded by the flow-control windows, not by this.
const MAX_FRAME_BYTES: u32 = 1 << 20;

impl<B> tower::Service<http::Request<B>> for TraceServer
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Display + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != EXPORT_PATH {
            return Box::pin(async {
                Ok(Status::unimplemented("only the trace service's Export is served").into_http())
            });
        }
        let server = self.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let gzip = match parts.headers.remove(GRPC_ENCODING) {
                None => false,
                Some(v) if v == "identity" => false,
                Some(v) if v == "gzip" => true,
                Some(v) => {
                    let message = format!(
                        "content is compressed with {v:?}, which is not supported; use gzip"
                    );
                    return Ok(Status::unimplemented(message).into_http());
                }
            };
            let mut reservation = server.budget.reservation();
            let message = match server.read_message(body, gzip, &mut reservation).await {
                Ok(message) => message,
                Err(status) => return Ok(status.into_http()),
            };
            let receiver = server.receiver.clone();
            let relay = Relay::from_headers(&parts.headers);
            let export = tower::service_fn(move |request: Request<Bytes>| {
                let (receiver, relay) = (receiver.clone(), relay.clone());
                async move { receiver.export(request.into_inner(), relay.as_ref()).await }
            });
            let codec = RawExportServerCodec::for_message(message.len().saturating_sub(PREFIX));
            let mut grpc = Grpc::new(codec)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(server.max_message_bytes);
            let request = http::Request::from_parts(parts, Full::new(message));
            let response = grpc.unary(export, request).await;
            drop(reservation);
            Ok(response)
        })
    }
}

impl TraceServer {
    /// The request's one message, uncompressed and framed again, read within the size
    /// limit and the budget.
    async fn read_message<B>(
        &self,
        body: B,
        gzip: bool,
        reservation: &mut Reservation,
    ) -> Result<Bytes, Status>
    where
        B: http_body::Body,
        B::Error: std::fmt::Display,
    {
        let max = self.max_message_bytes;
        let framed = read_body(body, max + PREFIX, reservation, stated_length)
            .await
            .map_err(|e| body_status(e, max))?;
        if framed.len() < PREFIX {
            // No message at all: tonic answers this itself.
            return Ok(framed);
        }
        let compressed = framed[0] == 1;
        let length = stated_length(&framed).map_or(0, |l| l - PREFIX);
        if length > max {
            return Err(body_status(BodyError::TooLarge(max), max));
        }
        if !compressed {
            return Ok(framed);
        }
        if !gzip {
            return Err(Status::internal(
                "a compressed message without a grpc-encoding header",
            ));
        }
        if framed.len() != PREFIX + length {
            return Err(Status::invalid_argument(
                "the request must hold exactly one message",
            ));
        }
        let mut inflated =
            gunzip(&framed[PREFIX..], PREFIX, max, reservation).map_err(|e| body_status(e, max))?;
        let length = u32::try_from(inflated.len() - PREFIX).unwrap_or(u32::MAX);
        inflated[0] = 0;
        inflated[1..PREFIX].copy_from_slice(&length.to_be_bytes());
        Ok(inflated.into())
    }
}

/// The body length a gRPC message prefix states: the prefix and the message after it.
pub(super) fn stated_length(first: &[u8]) -> Option<usize> {
    let length = first
        .get(1..PREFIX)?
        .try_into()
        .ok()
        .map(u32::from_be_bytes)?;
    Some(PREFIX + length as usize)
}

/// The gRPC status for a body that could not be read.
fn body_status(e: BodyError, max: usize) -> Status {
    match e {
        BodyError::TooLarge(_) => Status::resource_exhausted(format!(
            "the message is larger than the limit of {max} bytes"
        )),
        BodyError::Exhausted => Status::resource_exhausted(e.to_string()),
        BodyError::Read(_) => Status::cancelled(e.to_string()),
        BodyError::Gzip(_) => Status::invalid_argument(e.to_string()),
    }
}

/// What the gRPC receiver serves with, besides its listener.
pub(super) struct GrpcSettings {
    pub max_message_bytes: usize,
    pub max_concurrent_streams: u32,
    pub keepalive: ServerParametersConfig,
    pub budget: RequestBudget,
    pub security: Security,
}

/// Serves OTLP/gRPC on `listener` until `stop` is cancelled, then finishes in-flight calls.
pub(super) async fn serve_grpc(
    listener: TcpListener,
    pipeline: Arc<dyn Ingest>,
    metrics: ReceiverMetrics,
    settings: GrpcSettings,
    stop: CancellationToken,
) -> Result<(), GrpcServeError> {
    let server = TraceServer {
        receiver: Arc::new(GrpcReceiver { pipeline, metrics }),
        max_message_bytes: settings.max_message_bytes,
        budget: settings.budget,
    };
    let auth = settings.security.auth;
    let service = InterceptedService::new(server, move |request: Request<()>| match &auth {
        Some(auth) if !auth.allows(request.metadata().as_ref().get(AUTHORIZATION)) => {
            Err(Status::unauthenticated("missing or invalid bearer token"))
        }
        _ => Ok(request),
    });
    let keepalive = &settings.keepalive;
    let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
    let mut builder = tonic::transport::Server::builder()
        .max_frame_size(MAX_FRAME_BYTES)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .http2_keepalive_interval(nonzero(keepalive.time))
        .http2_keepalive_timeout(Some(keepalive.timeout));
    if let Some(age) = nonzero(keepalive.max_connection_age) {
        builder = builder.max_connection_age(age);
    }
    if let Some(grace) = nonzero(keepalive.max_connection_age_grace) {
        builder = builder.max_connection_age_grace(grace);
    }
    let router = builder
        .layer(tower::util::MapResponseLayer::new(
            oversize_as_resource_exhausted,
        ))
        .add_service(service);
    let (incoming, fatal) = Incoming::new(listener, keepalive.max_connection_idle);
    match settings.security.tls {
        Some(tls) => {
            let connections = tls_incoming(incoming, tls, stop.clone());
            let connections = tokio_stream::wrappers::ReceiverStream::new(connections)
                .map(Ok::<_, std::io::Error>);
            router
                .serve_with_incoming_shutdown(connections, stop.clone().cancelled_owned())
                .await?
        }
        None => {
            router
                .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned())
                .await?
        }
    }
    ended(&stop, &fatal).map_err(GrpcServeError::Listener)
}

/// Why the gRPC receiver stopped serving.
#[derive(Debug, thiserror::Error)]
pub(super) enum GrpcServeError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("listener: {0}")]
    Listener(std::io::Error),
}

/// tonic answers a message over `max_decoding_message_size` before our handler runs, with
/// OUT_OF_RANGE; gRPC and the collector use RESOURCE_EXHAUSTED, which OTLP clients expect.
/// Our handler itself never returns OUT_OF_RANGE, so matching on code and message is
/// unambiguous.
fn oversize_as_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let code = headers.get("grpc-status").and_then(|v| v.to_str().ok());
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .replace("%20", " ");
    if code == Some("11") && message.contains("too large") {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
    }
    response
}
