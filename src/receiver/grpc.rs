//! The OTLP/gRPC receiver.

use std::sync::Arc;

use http::HeaderValue;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use http::header::AUTHORIZATION;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;

use super::security::{tls_incoming, Security};
use super::{response, span_count, Ingest, IngestError, ReceiverMetrics};

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

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = request.into_inner();
        let total = span_count(&request);
        let result = self.pipeline.ingest(request, tokio::time::Instant::now());
        self.metrics.record(&result, total);
        let ingested = result.map_err(|e| status(&e))?;
        Ok(Response::new(response(ingested)))
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
    let server = TraceServiceServer::new(GrpcReceiver { pipeline, metrics })
        .max_decoding_message_size(max_message_bytes)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
    let auth = security.auth;
    let service = InterceptedService::new(server, move |request: Request<()>| match &auth {
        Some(auth) if !auth.allows(request.metadata().as_ref().get(AUTHORIZATION)) => {
            Err(Status::unauthenticated("missing or invalid bearer token"))
        }
        _ => Ok(request),
    });
    let router = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            codec_errors_as_otlp_statuses,
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

/// tonic answers two kinds of bad input before our handler runs, with codes OTLP clients
/// do not expect: a message over `max_decoding_message_size` (OUT_OF_RANGE; gRPC and the
/// collector use RESOURCE_EXHAUSTED) and a body prost cannot decode (INTERNAL, which
/// suggests a server bug; it is the client's INVALID_ARGUMENT). Our handler itself never
/// returns either code, so matching on code and message is unambiguous.
fn codec_errors_as_otlp_statuses<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .replace("%20", " ");
    let mapped = match code {
        "11" if message.contains("too large") => Some("8"),
        "13" if message.contains("failed to decode Protobuf message") => Some("3"),
        _ => None,
    };
    if let Some(mapped) = mapped {
        headers.insert("grpc-status", HeaderValue::from_static(mapped));
    }
    response
}
