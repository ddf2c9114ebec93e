//! The `debug` exporter: logs a summary of each export (`basic`), the trace ids too
//! (`normal`), or every span's name and ids (`detailed`).

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::config::{DebugExporterConfig, Verbosity};
use super::{SendError, Sent};
use crate::otlp::{trace_id_hex, EncodedRequest};

pub(super) struct DebugSink {
    name: String,
    verbosity: Verbosity,
}

impl DebugSink {
    pub(super) fn new(name: &str, config: &DebugExporterConfig) -> Self {
        Self {
            name: name.to_owned(),
            verbosity: config.verbosity,
        }
    }

    pub(super) fn send(&self, request: &EncodedRequest) -> Result<Sent, SendError> {
        if self.verbosity == Verbosity::Basic {
            tracing::info!(exporter = %self.name, spans = request.spans, bytes = request.bytes.len(), "traces exported");
            return Ok(Sent::default());
        }
        let decoded = ExportTraceServiceRequest::decode(request.bytes.clone())
            .map_err(|e| SendError::Permanent(format!("re-decoding the request: {e}")))?;
        let spans = decoded
            .resource_spans
            .iter()
            .flat_map(|rs| rs.scope_spans.iter())
            .flat_map(|ss| ss.spans.iter());
        let mut trace_ids: Vec<String> = Vec::new();
        for span in spans {
            let trace_id = <[u8; 16]>::try_from(span.trace_id.as_slice())
                .map(|id| trace_id_hex(&id))
                .unwrap_or_default();
            if self.verbosity == Verbosity::Detailed {
                tracing::info!(exporter = %self.name, trace_id = %trace_id, span_name = %span.name, kind = span.kind, "span");
            }
            if !trace_ids.contains(&trace_id) {
                trace_ids.push(trace_id);
            }
        }
        tracing::info!(
            exporter = %self.name,
            spans = request.spans,
            resource_spans = decoded.resource_spans.len(),
            trace_ids = %trace_ids.join(","),
            "traces exported"
        );
        Ok(Sent::default())
    }
}
