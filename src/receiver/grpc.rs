//! The OTLP/gRPC receiver: the trace service's one method, its request handed on as the
//! bytes received ([`Payload::Protobuf`]), so router and worker scan it without
//! decoding. Messages are read within the request bytes budget, every gzip member
//! inflated; the collector's server keys bound streams and connection lifetimes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::AUTHORIZATION;
use http::HeaderValue;
use http_body::Frame;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use http_body_util::StreamBody;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

use super::admission::{gunzip, read_body, BodyError, RequestBudget, Reservation};
use super::config::ServerParametersConfig;
use super::conn::{ended, Incoming};
use super::security::{tls_incoming, Security};
use super::{ingest_and_wait, response, Ingest, IngestError, Payload, ReceiverMetrics, Relay};

const GRPC_ENCODING: &str = "grpc-encoding";
use crate::otlp::{EXPORT_PATH, TRACE_SERVICE};

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
    ) -> Result<ExportTraceServiceResponse, Status> {
        let request = Payload::Protobuf(request);
        let total = request.refusal_count();
        let result = ingest_and_wait(self.pipeline.as_ref(), request, relay).await;
        self.metrics.record(&result, total);
        let ingested = result.map_err(|e| status(&e))?;
        Ok(response(ingested))
    }
}

/// The trace service's `Export`, served on tonic's transport; `UNIMPLEMENTED` for any other
/// method. The unary call is handled here rather than by tonic's `Grpc::unary`: the body is
/// read within the request bytes budget, every gzip member is inflated (tonic's
/// decompression reads only the first), the message is handed on as the bytes received
/// (tonic's decoder copies every message into a buffer of its own), and the response is
/// framed here, uncompressed (a few bytes, which gRPC lets a server send uncompressed
/// whatever the client accepts).
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

/// The largest HTTP/2 frame clients may send, and each stream's flow-control window.
/// HTTP/2's default frame, 16 KiB, cuts a request of a few hundred KiB into dozens of
/// frames, each a write on the client and a body chunk here, and a body of several chunks
/// is copied into one buffer before it is read. With 1 MiB frames and windows a request up
/// to that size can arrive as one frame and is read where it landed. Bytes a call has not
/// taken yet are bounded by the windows; bytes taken, by the receiver's request budget (a
/// chunk is acknowledged as soon as it is taken).
const MAX_FRAME_BYTES: u32 = 1 << 20;
/// The connection's flow-control window: room for four requests of `MAX_FRAME_BYTES` at
/// once, the concurrency of an exporter's consumers on one connection. hyper's default,
/// 1 MiB for the whole connection, made concurrent requests wait for window updates and
/// arrive in pieces. grpc-go, the collector's server, grows its windows up to 16 MiB as it
/// measures the connection.
const CONNECTION_WINDOW_BYTES: u32 = 4 * MAX_FRAME_BYTES;

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
            let relay = Relay::from_headers(&parts.headers);
            let response = server.receiver.export(message, relay.as_ref()).await;
            drop(reservation);
            Ok(match response {
                Ok(response) => unary_response(&response),
                Err(status) => status.into_http(),
            })
        })
    }
}

impl TraceServer {
    /// The request's one message, uncompressed, read within the size limit and the budget.
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
        let (compressed, message) = one_message(framed, max)?;
        if !compressed {
            return Ok(message);
        }
        if !gzip {
            return Err(Status::internal(
                "a compressed message without a grpc-encoding header",
            ));
        }
        gunzip(&message, max, reservation)
            .map(Bytes::from)
            .map_err(|e| body_status(e, max))
    }
}

/// The one message of a unary request's body (`framed`: length-prefixed messages), and
/// whether it is compressed; its stated length at most `max`.
fn one_message(framed: Bytes, max: usize) -> Result<(bool, Bytes), Status> {
    let Some(stated) = stated_length(&framed) else {
        return Err(Status::internal(if framed.is_empty() {
            "the request has no message"
        } else {
            "the request ends inside a message prefix"
        }));
    };
    let compressed = match framed[0] {
        0 => false,
        1 => true,
        flag => {
            return Err(Status::internal(format!(
                "invalid message compression flag {flag} (0 or 1)"
            )))
        }
    };
    if stated - PREFIX > max {
        return Err(body_status(BodyError::TooLarge(max), max));
    }
    match framed.len().cmp(&stated) {
        std::cmp::Ordering::Less => {
            Err(Status::internal("the request ends before its message does"))
        }
        std::cmp::Ordering::Greater => Err(Status::invalid_argument(
            "the request must hold exactly one message",
        )),
        std::cmp::Ordering::Equal => Ok((compressed, framed.slice(PREFIX..))),
    }
}

/// A successful unary response: `message` framed uncompressed, then status OK in the
/// trailers.
fn unary_response(message: &ExportTraceServiceResponse) -> http::Response<tonic::body::Body> {
    let len = message.encoded_len();
    let mut data = BytesMut::with_capacity(PREFIX + len);
    data.put_u8(0);
    data.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode_raw(&mut data);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = [Frame::data(data.freeze()), Frame::trailers(trailers)];
    let body = StreamBody::new(tokio_stream::iter(frames.map(Ok::<_, Infallible>)));
    let mut response = http::Response::new(tonic::body::Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
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
        .initial_stream_window_size(MAX_FRAME_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .http2_keepalive_interval(nonzero(keepalive.time))
        .http2_keepalive_timeout(Some(keepalive.timeout));
    if let Some(age) = nonzero(keepalive.max_connection_age) {
        builder = builder.max_connection_age(age);
    }
    if let Some(grace) = nonzero(keepalive.max_connection_age_grace) {
        builder = builder.max_connection_age_grace(grace);
    }
    let router = builder.add_service(service);
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

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn framed(flag: u8, stated: u32, message: &[u8]) -> Bytes {
        let mut out = vec![flag];
        out.extend(stated.to_be_bytes());
        out.extend(message);
        out.into()
    }

    #[test]
    fn a_unary_body_must_hold_exactly_one_whole_message() {
        let code = |body: Bytes| one_message(body, 100).map(|_| ()).unwrap_err().code();
        assert_eq!(code(Bytes::new()), Code::Internal);
        assert_eq!(code(Bytes::from_static(&[0, 0, 0])), Code::Internal);
        assert_eq!(code(framed(2, 3, b"abc")), Code::Internal);
        assert_eq!(code(framed(0, 101, &[0; 101])), Code::ResourceExhausted);
        assert_eq!(code(framed(0, 4, b"abc")), Code::Internal);
        assert_eq!(code(framed(0, 2, b"abc")), Code::InvalidArgument);
        let (compressed, message) = one_message(framed(0, 3, b"abc"), 100).unwrap();
        assert!(!compressed);
        assert_eq!(message, "abc");
        let (compressed, message) = one_message(framed(1, 0, b""), 100).unwrap();
        assert!(compressed);
        assert!(message.is_empty());
    }
}
