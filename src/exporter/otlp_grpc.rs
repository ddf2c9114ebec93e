//! The `otlp` exporter: OTLP/gRPC to a backend. The unary call is made here on tonic's
//! channel (which brings TLS, connecting and the timeout) rather than through tonic's
//! client, so the message is framed once from the request's encoded bytes: gzipped
//! straight into the frame, or copied into it once. tonic's client copies the bytes into
//! its own buffer and then gzips that through a stream of 8 KiB pieces, at zlib's level 6
//! with no way to choose the compressor; here libdeflate compresses the whole message in
//! one call at the same level, a fifth faster on spans (BENCHMARKS.md), on the blocking
//! pool.

use std::str::FromStr;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use tower::{Service, ServiceExt};

use super::config::{ClientTlsConfig as TlsConfig, Compression, OtlpExporterConfig};
use super::{BuildCause, SendError, Sent};
use crate::otlp::{EncodedRequest, EXPORT_PATH};

/// A gRPC message's prefix: the compressed flag and the length.
const PREFIX: usize = 5;
/// The gzip level: zlib's default, which grpc-go's gzip compressor (the collector's) and
/// tonic's use too.
const GZIP_LEVEL: i32 = 6;
/// The largest response read: an export response is a few bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

pub(super) struct GrpcSink {
    channel: Channel,
    /// The call's headers: the configured ones, the content type, `te`, `grpc-timeout`
    /// and, with gzip, `grpc-encoding`.
    headers: HeaderMap,
    gzip: bool,
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
        let mut metadata = MetadataMap::new();
        for (k, v) in &config.headers {
            let header = || format!("headers.{k}");
            let key = MetadataKey::from_str(&k.to_ascii_lowercase())
                .map_err(|e| BuildCause::invalid(header(), e))?;
            let value = MetadataValue::from_str(v).map_err(|e| BuildCause::invalid(header(), e))?;
            metadata.insert(key, value);
        }
        let gzip = config.compression == Compression::Gzip;
        let mut headers = metadata.into_headers();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert("grpc-timeout", grpc_timeout(config.timeout));
        if gzip {
            headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        }
        Ok(Self {
            channel,
            headers,
            gzip,
        })
    }

    pub(super) async fn send(&self, request: &EncodedRequest) -> Result<Sent, SendError> {
        let mut channel = self.channel.clone();
        channel.ready().await.map_err(|e| SendError::Retryable {
            message: format!("connection: {e}"),
            after: None,
            maybe_delivered: false,
        })?;
        let message = if self.gzip {
            let bytes = request.bytes.clone();
            tokio::task::spawn_blocking(move || gzip_message(&bytes))
                .await
                .map_err(|e| SendError::Permanent(format!("gzip: {e}")))?
        } else {
            message(&request.bytes)
        };
        let mut call = http::Request::post(EXPORT_PATH)
            .version(http::Version::HTTP_2)
            .body(tonic::body::Body::new(Full::new(message)))
            .expect("a static path and a body make a request");
        *call.headers_mut() = self.headers.clone();
        let response = channel
            .call(call)
            .await
            .map_err(|e| Status::from_error(e.into()));
        match response {
            Ok(response) => match read_response(response).await {
                Ok(r) => Ok(Sent {
                    rejected: r
                        .partial_success
                        .map(|p| p.rejected_spans.max(0) as u64)
                        .unwrap_or(0),
                }),
                Err(status) => Err(classify(&status)),
            },
            Err(status) => Err(classify(&status)),
        }
    }
}

/// The request's bytes as one uncompressed gRPC message.
fn message(bytes: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(PREFIX + bytes.len());
    framed.put_u8(0);
    framed.put_u32(bytes.len() as u32);
    framed.extend_from_slice(bytes);
    framed.into()
}

/// The request's bytes gzipped into one compressed gRPC message. Tens of milliseconds
/// for a request of a few MiB: callers run it on the blocking pool, off the threads that
/// receive and decide.
fn gzip_message(bytes: &[u8]) -> Bytes {
    COMPRESSOR.with_borrow_mut(|compressor| {
        // Zeroed room for libdeflate's bound; pages the output does not reach are never
        // touched when they come fresh from the system.
        let mut framed = vec![0; PREFIX + compressor.gzip_compress_bound(bytes.len())];
        let len = compressor
            .gzip_compress(bytes, &mut framed[PREFIX..])
            .expect("the output is sized by libdeflate's bound");
        framed.truncate(PREFIX + len);
        framed.shrink_to_fit();
        framed[0] = 1;
        framed[1..PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
        framed.into()
    })
}

thread_local! {
    /// Each thread's compressor, kept between calls: its state is a few hundred KiB.
    static COMPRESSOR: std::cell::RefCell<libdeflater::Compressor> =
        std::cell::RefCell::new(libdeflater::Compressor::new(
            libdeflater::CompressionLvl::new(GZIP_LEVEL).expect("6 is a valid level"),
        ));
}

/// `grpc-timeout` for the exporter's timeout, in milliseconds (at most eight digits, as
/// gRPC allows).
fn grpc_timeout(timeout: Duration) -> HeaderValue {
    let ms = timeout.as_millis().clamp(1, 99_999_999);
    HeaderValue::from_str(&format!("{ms}m")).expect("digits and a unit are a header value")
}

/// The call's outcome, as gRPC defines it: a `grpc-status` in the headers (a
/// trailers-only response) or in the trailers, else the HTTP status mapped as gRPC maps
/// it; then the one response message, which must not be compressed since none was asked
/// for.
async fn read_response(
    response: http::Response<tonic::body::Body>,
) -> Result<ExportTraceServiceResponse, Status> {
    let (parts, body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers) {
        return match status.code() {
            Code::Ok => Ok(ExportTraceServiceResponse::default()),
            _ => Err(status),
        };
    }
    if parts.status != StatusCode::OK {
        return Err(Status::new(
            code_of_http(parts.status),
            format!("HTTP status {}", parts.status),
        ));
    }
    let collected = Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(Status::from_error)?;
    let status = collected
        .trailers()
        .and_then(Status::from_header_map)
        .unwrap_or_else(|| Status::unknown("the response ended without a grpc-status"));
    if status.code() != Code::Ok {
        return Err(status);
    }
    let data = collected.to_bytes();
    if data.is_empty() {
        return Ok(ExportTraceServiceResponse::default());
    }
    let Some((&[flag, a, b, c, d], rest)) = data.split_first_chunk::<PREFIX>() else {
        return Err(Status::internal("a response message cut short"));
    };
    match flag {
        0 => {}
        1 => return Err(Status::internal("a compressed response, not asked for")),
        _ => return Err(Status::internal("a response with a bad message prefix")),
    }
    let message = rest
        .get(..u32::from_be_bytes([a, b, c, d]) as usize)
        .ok_or_else(|| Status::internal("a response message cut short"))?;
    ExportTraceServiceResponse::decode(message)
        .map_err(|e| Status::internal(format!("invalid export response: {e}")))
}

/// gRPC's mapping of HTTP statuses to codes, for responses without a `grpc-status`.
fn code_of_http(status: StatusCode) -> Code {
    match status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
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
