//! OTLP receivers (gRPC and HTTP) in front of the worker pipeline: decode, hand the
//! request to [`Pipeline::ingest`], and answer with the OTLP status a client expects.
//! One function per protocol maps pipeline errors to statuses; nothing here panics on
//! input.

mod grpc;
mod http;

use metrics::Counter;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

pub use grpc::serve_grpc;
pub use http::serve_http;

use crate::telemetry::{self, Registry};
use crate::worker::pipeline::{IngestError, Ingested};

/// `otelcol_receiver_*` for one transport.
#[derive(Clone)]
pub struct ReceiverMetrics {
    accepted: Counter,
    refused: Counter,
}

impl ReceiverMetrics {
    pub fn new(registry: &Registry, transport: &str) -> Self {
        let labels = [("receiver", "otlp"), ("transport", transport)];
        Self {
            accepted: registry.counter(telemetry::RECEIVER_ACCEPTED_SPANS, &labels),
            refused: registry.counter(telemetry::RECEIVER_REFUSED_SPANS, &labels),
        }
    }

    /// Counts a request's spans: accepted ones, and rejected or refused ones.
    fn record(&self, result: &Result<Ingested, IngestError>, total: u64) {
        match result {
            Ok(i) => {
                self.accepted.increment(i.accepted);
                self.refused.increment(i.rejected);
            }
            Err(_) => self.refused.increment(total),
        }
    }
}

/// The OTLP response for an accepted request: a partial success when spans were rejected.
fn response(ingested: Ingested) -> ExportTraceServiceResponse {
    let partial_success = (ingested.rejected > 0).then_some(ExportTracePartialSuccess {
        rejected_spans: i64::try_from(ingested.rejected).unwrap_or(i64::MAX),
        error_message: ingested.message,
    });
    ExportTraceServiceResponse { partial_success }
}

fn span_count(request: &ExportTraceServiceRequest) -> u64 {
    request
        .resource_spans
        .iter()
        .flat_map(|r| r.scope_spans.iter())
        .map(|s| s.spans.len() as u64)
        .sum()
}

#[cfg(test)]
mod tests;
