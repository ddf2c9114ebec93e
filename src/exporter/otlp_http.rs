//! The `otlphttp` exporter: OTLP/HTTP with protobuf bodies, optionally gzipped, with the
//! OTLP/HTTP retry rules (429, 502, 503, 504 and Retry-After).

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER,
};
use reqwest::StatusCode;

use super::config::{Compression, OtlpHttpExporterConfig};
use super::{BuildCause, SendError, Sent};
use crate::otlp::EncodedRequest;

pub(super) struct HttpSink {
    client: reqwest::Client,
    url: String,
    gzip: bool,
}

impl HttpSink {
    pub(super) fn new(config: &OtlpHttpExporterConfig) -> Result<Self, BuildCause> {
        let url = match (&config.traces_endpoint, &config.endpoint) {
            (Some(url), _) => url.clone(),
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => {
                return Err(BuildCause::Unsupported(
                    "endpoint or traces_endpoint is required",
                ))
            }
        };
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            let header = || format!("headers.{k}");
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| BuildCause::invalid(header(), e))?;
            let value = HeaderValue::from_str(v).map_err(|e| BuildCause::invalid(header(), e))?;
            headers.insert(name, value);
        }
        let tls = &config.tls;
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .default_headers(headers)
            .danger_accept_invalid_certs(tls.insecure_skip_verify);
        if let Some(ca) = &tls.ca_file {
            let pem = std::fs::read(ca).map_err(BuildCause::read("tls.ca_file", ca))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| BuildCause::invalid("tls.ca_file", e))?;
            builder = builder.add_root_certificate(cert);
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                let mut pem =
                    std::fs::read(cert).map_err(BuildCause::read("tls.cert_file", cert))?;
                pem.extend(std::fs::read(key).map_err(BuildCause::read("tls.key_file", key))?);
                let identity =
                    reqwest::Identity::from_pem(&pem).map_err(|e| BuildCause::invalid("tls", e))?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(BuildCause::Unsupported(
                    "tls.cert_file and tls.key_file go together",
                ))
            }
        }
        Ok(Self {
            client: builder
                .build()
                .map_err(|e| BuildCause::invalid("http client", e))?,
            url,
            gzip: config.compression == Compression::Gzip,
        })
    }

    pub(super) async fn send(&self, request: &EncodedRequest) -> Result<Sent, SendError> {
        let mut req = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/x-protobuf");
        let body: Bytes = if self.gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&request.bytes)
                .and_then(|_| enc.finish())
                .map_err(|e| SendError::Permanent(format!("gzip: {e}")))?
                .into()
        } else {
            request.bytes.clone()
        };
        let response = req
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Retryable {
                message: format!("request: {e}"),
                after: None,
                // A timeout after the request was written leaves the outcome unknown.
                maybe_delivered: e.is_timeout(),
            })?;
        let status = response.status();
        let after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            let rejected = ExportTraceServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map(|p| p.rejected_spans.max(0) as u64)
                .unwrap_or(0);
            return Ok(Sent { rejected });
        }
        let message = format!("HTTP {status}");
        match status {
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Err(SendError::Retryable {
                message,
                after,
                maybe_delivered: false,
            }),
            _ => Err(SendError::Permanent(message)),
        }
    }
}
