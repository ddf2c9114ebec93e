//! The OTLP/gRPC receiver: the trace service's one method, served with a codec that
//! hands the request on as bytes ([`Payload::Protobuf`]), so router and worker scan it
//! without decoding.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::HeaderValue;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::server::{Grpc, NamedService};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::security::{tls_incoming, Security};
use super::{response, Ingest, IngestError, Payload, ReceiverMetrics};
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
    fn export(&self, request: Bytes) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = Payload::Protobuf(request);
        let total = request.span_count();
        let result = self.pipeline.ingest(request, tokio::time::Instant::now());
        self.metrics.record(&result, total);
        let ingested = result.map_err(|e| status(&e))?;
        Ok(Response::new(response(ingested)))
    }
}

/// The trace service as tonic serves it: `Export` with [`RawExportServerCodec`], gzip
/// both ways, `UNIMPLEMENTED` for any other method.
#[derive(Clone)]
struct TraceServer {
    receiver: Arc<GrpcReceiver>,
    max_message_bytes: usize,
}

impl NamedService for TraceServer {
    const NAME: &'static str = TRACE_SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl<B> tower::Service<http::Request<B>> for TraceServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
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
        let receiver = self.receiver.clone();
        let mut grpc = Grpc::new(RawExportServerCodec)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(self.max_message_bytes);
        Box::pin(async move {
            let export = tower::service_fn(move |request: Request<Bytes>| {
                std::future::ready(receiver.export(request.into_inner()))
            });
            Ok(grpc.unary(export, request).await)
        })
    }
}

/// Serves OTLP/gRPC on `listener` until `stop` is cancelled, then finishes in-flight calls.
pub async fn serve_grpc(
    listener: TcpListener,
    pipeline: Arc<dyn Ingest>,
    metrics: ReceiverMetrics,
    max_message_bytes: usize,
    security: Security,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let server = TraceServer {
        receiver: Arc::new(GrpcReceiver { pipeline, metrics }),
        max_message_bytes,
    };
    let auth = security.auth;
    let service = InterceptedService::new(server, move |request: Request<()>| match &auth {
        Some(auth) if !auth.allows(request.metadata().as_ref().get(AUTHORIZATION)) => {
            Err(Status::unauthenticated("missing or invalid bearer token"))
        }
        _ => Ok(request),
    });
    let router = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            oversize_as_resource_exhausted,
        ))
        .add_service(service);
    match security.tls {
        Some(tls) => {
            let incoming = tls_incoming(listener, tls, stop.clone());
            let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming)
                .map(|accepted| accepted.map(|(stream, _)| stream));
            router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop.cancelled_owned())
                .await
        }
    }
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
