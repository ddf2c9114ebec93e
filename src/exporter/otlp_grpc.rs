//! The `otlp` exporter: OTLP/gRPC to a backend, sending the pre-encoded request bytes as
//! they are (see `otlp::RawExportCodec`).

use std::str::FromStr;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use super::config::{ClientTlsConfig as TlsConfig, Compression, OtlpExporterConfig};
use super::{BuildCause, SendError, Sent};
use crate::otlp::{EncodedRequest, RawExportCodec, EXPORT_PATH};

pub(super) struct GrpcSink {
    client: tonic::client::Grpc<Channel>,
    headers: MetadataMap,
    timeout: std::time::Duration,
}

impl GrpcSink {
    pub(super) fn new(config: &OtlpExporterConfig) -> Result<Self, BuildCause> {
        let url = if config.endpoint.contains("://") {
            config.endpoint.clone()
        } else if config.tls.insecure {
            format!("http://{}", config.endpoint)
        } else {
            format!("https://{}", config.endpoint)
        };
        let mut endpoint =
            Endpoint::from_str(&url).map_err(|e| BuildCause::invalid("endpoint", e))?;
        if url.starts_with("https://") {
            endpoint = endpoint
                .tls_config(tls_config(&config.tls)?)
                .map_err(|e| BuildCause::invalid("tls", e))?;
        }
        let channel = endpoint.timeout(config.timeout).connect_lazy();
        let mut client =
            tonic::client::Grpc::new(channel).max_decoding_message_size(16 * 1024 * 1024);
        if config.compression == Compression::Gzip {
            client = client
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        let mut headers = MetadataMap::new();
        for (k, v) in &config.headers {
            let header = || format!("headers.{k}");
            let key = MetadataKey::from_str(&k.to_ascii_lowercase())
                .map_err(|e| BuildCause::invalid(header(), e))?;
            let value = MetadataValue::from_str(v).map_err(|e| BuildCause::invalid(header(), e))?;
            headers.insert(key, value);
        }
        Ok(Self {
            client,
            headers,
            timeout: config.timeout,
        })
    }

    pub(super) async fn send(&self, request: &EncodedRequest) -> Result<Sent, SendError> {
        let mut client = self.client.clone();
        client.ready().await.map_err(|e| SendError::Retryable {
            message: format!("connection: {e}"),
            after: None,
            maybe_delivered: false,
        })?;
        let codec = RawExportCodec::for_message(request.bytes.len());
        let mut req = Request::new(request.bytes.clone());
        *req.metadata_mut() = self.headers.clone();
        req.set_timeout(self.timeout);
        let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
        let response: Result<tonic::Response<ExportTraceServiceResponse>, Status> =
            client.unary(req, path, codec).await;
        match response {
            Ok(r) => Ok(Sent {
                rejected: r
                    .into_inner()
                    .partial_success
                    .map(|p| p.rejected_spans.max(0) as u64)
                    .unwrap_or(0),
            }),
            Err(status) => Err(classify(&status)),
        }
    }
}

/// The collector's retryable codes: the ones the OTLP specification calls retryable, plus
/// RESOURCE_EXHAUSTED, which tailgate's and the collector's push back use.
pub fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
    )
}

/// Retryable codes (see [`retryable`]) are retried; everything else is permanent. A
/// deadline or cancellation (tonic's own timeout) leaves the outcome unknown: the backend
/// may have taken the request.
fn classify(status: &Status) -> SendError {
    let message = format!("{:?}: {}", status.code(), status.message());
    if retryable(status.code()) {
        SendError::Retryable {
            message,
            after: None,
            maybe_delivered: matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        }
    } else {
        SendError::Permanent(message)
    }
}

fn tls_config(tls: &TlsConfig) -> Result<ClientTlsConfig, BuildCause> {
    if tls.insecure_skip_verify {
        return Err(BuildCause::Unsupported(
            "tls.insecure_skip_verify is not supported by the otlp exporter",
        ));
    }
    let mut config = ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &tls.ca_file {
        let pem = std::fs::read(ca).map_err(BuildCause::read("tls.ca_file", ca))?;
        config = config.ca_certificate(Certificate::from_pem(pem));
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let cert = std::fs::read(cert).map_err(BuildCause::read("tls.cert_file", cert))?;
            let key = std::fs::read(key).map_err(BuildCause::read("tls.key_file", key))?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        _ => {
            return Err(BuildCause::Unsupported(
                "tls.cert_file and tls.key_file go together",
            ))
        }
    }
    if let Some(name) = &tls.server_name_override {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}
