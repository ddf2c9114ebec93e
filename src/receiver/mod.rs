//! OTLP receivers (gRPC and HTTP) in front of whatever takes the spans (the worker's
//! pipeline or the router): hand the request to [`Ingest::ingest`] as a [`Payload`] —
//! protobuf bodies undecoded, for the taker to scan ([`Payload::scan`]) — and answer
//! with the OTLP status a client expects. One function per protocol maps [`IngestError`]
//! to statuses; nothing here panics on input.

mod admission;
pub mod config;
mod conn;
mod grpc;
mod http;
mod security;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use metrics::Counter;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::sync::oneshot;

pub use admission::RequestBudget;
use grpc::{serve_grpc, GrpcSettings};
use http::{serve_http, HttpSettings};
pub use security::SecurityError;
use security::{Security, Tasks};

use crate::net::{bind, BindError};
use crate::otlp::scan::{self, Scanned};
use crate::otlp::{spans, Outcome};
use crate::supervisor::{Group, Supervisor};
use crate::telemetry::{self, Registry};
use config::{ReceiverAuthConfig, ReceiversConfig, ServerTlsConfig, DEFAULT_REQUEST_LIMIT_MIB};

const MIB: u64 = 1024 * 1024;

/// Why a request was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// Every span in the request was invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// The buffer or a sending queue is full; the sender should retry later.
    #[error("{0}")]
    Overloaded(&'static str),
    /// Nowhere to send to right now (a router with no live backend); retryable.
    #[error("{0}")]
    Unavailable(&'static str),
}

/// What happened to an accepted request.
#[derive(Debug, Default)]
pub struct Ingested {
    pub accepted: u64,
    /// Invalid spans, reported to the client as OTLP partial success.
    pub rejected: u64,
    /// The first problem found, when `rejected > 0`.
    pub message: String,
    /// What the acknowledgement waits for, when it waits (a router with
    /// `wait_for_result`): the outcome of every backend's share.
    pub delivery: Option<oneshot::Receiver<Outcome>>,
}

impl Ingested {
    /// The request's result once its delivery is known, when its acknowledgement waits
    /// for one: a share some backend did not take fails the whole request with a
    /// retryable status, so the client sends it again.
    async fn delivered(mut self) -> Result<Ingested, IngestError> {
        let Some(delivery) = self.delivery.take() else {
            return Ok(self);
        };
        match delivery.await {
            Ok(Outcome::Delivered) => Ok(self),
            _ => Err(IngestError::Unavailable(
                "a worker did not take its share of the request",
            )),
        }
    }
}

/// Ingests a request and, when its acknowledgement waits for delivery, waits for it.
async fn ingest_and_wait(
    pipeline: &dyn Ingest,
    request: Payload,
    relay: Option<&Relay>,
) -> Result<Ingested, IngestError> {
    match pipeline.ingest(request, relay, tokio::time::Instant::now()) {
        Ok(ingested) => ingested.delivered().await,
        Err(e) => Err(e),
    }
}

/// A request as a receiver got it.
#[derive(Debug, Clone)]
pub enum Payload {
    /// The protobuf encoding, not decoded yet (gRPC, and OTLP/HTTP with a protobuf body).
    Protobuf(Bytes),
    /// Decoded already (OTLP/HTTP with a JSON body).
    Decoded(ExportTraceServiceRequest),
}

impl Payload {
    /// How many spans the request holds (0 for protobuf that does not frame).
    pub fn span_count(&self) -> u64 {
        match self {
            Payload::Protobuf(bytes) => scan::count_spans(bytes),
            Payload::Decoded(request) => spans(request).count() as u64,
        }
    }

    /// What counts the request's spans if it is refused: a protobuf request is walked only
    /// then (an accepted one is counted by its scan), a decoded one is counted now, before
    /// it is handed on.
    fn refusal_count(&self) -> RefusalCount {
        match self {
            Payload::Protobuf(bytes) => RefusalCount::Walk(bytes.clone()),
            Payload::Decoded(_) => RefusalCount::Counted(self.span_count()),
        }
    }

    /// The request's size on the wire (protobuf; a JSON request's once encoded).
    pub fn wire_bytes(&self) -> u64 {
        match self {
            Payload::Protobuf(bytes) => bytes.len() as u64,
            Payload::Decoded(request) => request.encoded_len() as u64,
        }
    }

    /// The request scanned: spans located and validated, not decoded (a JSON request is
    /// encoded first).
    pub fn scan(self) -> Result<Scanned, IngestError> {
        let bytes = match self {
            Payload::Protobuf(bytes) => bytes,
            Payload::Decoded(request) => request.encode_to_vec().into(),
        };
        scan::scan(bytes).map_err(invalid)
    }
}

/// A request's span count for `otelcol_receiver_refused_spans`, known only if needed.
enum RefusalCount {
    Walk(Bytes),
    Counted(u64),
}

impl RefusalCount {
    fn get(self) -> u64 {
        match self {
            RefusalCount::Walk(bytes) => scan::count_spans(&bytes),
            RefusalCount::Counted(n) => n,
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> IngestError {
    IngestError::InvalidArgument(format!("invalid OTLP request: {e}"))
}

/// The request header naming a request one worker sends another (the membership
/// handover protocol), and the header naming the sender as the resolver lists it.
pub const RELAY_HEADER: &str = "tailgate-relay";
pub const RELAY_FROM_HEADER: &str = "tailgate-relay-from";

/// How a worker passed a request on to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayKind {
    /// To the trace's owner on the sender's ring; the receiver takes the trace as owner.
    Forward,
    /// To a previous owner: take the spans if you hold the trace, else hand them on.
    Offer,
    /// Taken by the receiver, whatever it holds.
    Final,
}

impl RelayKind {
    pub const ALL: [RelayKind; 3] = [RelayKind::Forward, RelayKind::Offer, RelayKind::Final];

    pub fn as_str(self) -> &'static str {
        match self {
            RelayKind::Forward => "forward",
            RelayKind::Offer => "offer",
            RelayKind::Final => "final",
        }
    }
}

/// A relayed request's marks, as the headers carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    pub kind: RelayKind,
    /// The sender's endpoint as the resolver lists it.
    pub from: String,
}

impl Relay {
    /// The marks of a request, when both headers are present and valid.
    pub fn from_headers(headers: &::http::HeaderMap) -> Option<Relay> {
        let kind = headers.get(RELAY_HEADER)?.to_str().ok()?;
        let kind = RelayKind::ALL.into_iter().find(|k| k.as_str() == kind)?;
        let from = headers.get(RELAY_FROM_HEADER)?.to_str().ok()?.to_owned();
        Some(Relay { kind, from })
    }
}

/// What receivers hand their requests to; `relay` marks a request another worker sent.
pub trait Ingest: Send + Sync + 'static {
    fn ingest(
        &self,
        request: Payload,
        relay: Option<&Relay>,
        now: tokio::time::Instant,
    ) -> Result<Ingested, IngestError>;
}

/// Tallies the id checks of a request's spans: the counts of valid and invalid spans and
/// the first problem, or `InvalidArgument` when no span is valid.
pub fn check_ids(request: &Scanned) -> Result<Ingested, IngestError> {
    let mut checked = Ingested::default();
    for span in &request.spans {
        match span.ids {
            Ok(_) => checked.accepted += 1,
            Err(e) => {
                if checked.rejected == 0 {
                    checked.message = format!("invalid span: {e}");
                }
                checked.rejected += 1;
            }
        }
    }
    if checked.accepted == 0 && checked.rejected > 0 {
        return Err(IngestError::InvalidArgument(checked.message));
    }
    Ok(checked)
}

/// Why the receivers could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("otlp {protocol} receiver TLS or auth: {source}")]
    Security {
        protocol: &'static str,
        source: SecurityError,
    },
}

/// The running OTLP receivers of one process; their tasks run in a supervisor group.
pub struct Receivers {
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
}

impl Receivers {
    /// Binds every configured protocol and serves it in `group` of `supervisor`, handing
    /// requests to `ingest`. `memory_spike` (the memory limiter's spike limit in bytes) is
    /// the request bytes budget unless `admission.request_limit_mib` sets one.
    pub async fn start(
        config: &ReceiversConfig,
        ingest: Arc<dyn Ingest>,
        registry: &Registry,
        memory_spike: Option<u64>,
        supervisor: &mut Supervisor,
        group: Group,
    ) -> Result<Self, ReceiverError> {
        let stop = supervisor.token(group);
        let mut tasks = Tasks { supervisor, group };
        let protocols = &config.otlp.protocols;
        let limit = match config.otlp.admission.request_limit_mib {
            Some(mib) => mib * MIB,
            None => memory_spike
                .unwrap_or(DEFAULT_REQUEST_LIMIT_MIB * MIB)
                .max(config.largest_request_in_flight()),
        };
        let budget = RequestBudget::new(limit, registry);
        tracing::debug!(bytes = budget.limit(), "request bytes budget");
        let mut grpc_addr = None;
        if let Some(grpc) = &protocols.grpc {
            let (listener, addr) = bind("otlp grpc", &grpc.endpoint).await?;
            grpc_addr = Some(addr);
            let settings = GrpcSettings {
                max_message_bytes: usize::try_from(grpc.max_recv_msg_size_mib * MIB)
                    .unwrap_or(usize::MAX),
                max_concurrent_streams: grpc.max_concurrent_streams,
                keepalive: grpc.keepalive.server_parameters.clone(),
                budget: budget.clone(),
                security: security(config, "grpc", grpc.tls.as_ref(), &grpc.auth, &mut tasks)?,
            };
            let metrics = ReceiverMetrics::new(registry, "grpc");
            tasks.supervisor.spawn(
                group,
                "otlp grpc receiver",
                serve_grpc(listener, ingest.clone(), metrics, settings, stop.clone()),
            );
        }
        let mut http_addr = None;
        if let Some(http) = &protocols.http {
            let (listener, addr) = bind("otlp http", &http.endpoint).await?;
            http_addr = Some(addr);
            let settings = HttpSettings {
                path: http.traces_url_path.clone(),
                max_body: usize::try_from(http.max_request_body_size).unwrap_or(usize::MAX),
                read_header_timeout: http.read_header_timeout,
                idle_timeout: http.idle_timeout,
                budget: budget.clone(),
                security: security(config, "http", http.tls.as_ref(), &http.auth, &mut tasks)?,
            };
            let metrics = ReceiverMetrics::new(registry, "http");
            tasks.supervisor.spawn(
                group,
                "otlp http receiver",
                serve_http(listener, ingest.clone(), metrics, settings, stop.clone()),
            );
        }
        Ok(Self {
            grpc_addr,
            http_addr,
        })
    }
}

/// A protocol's TLS and `auth` (the authenticator is known to exist: the config checked).
fn security(
    config: &ReceiversConfig,
    protocol: &'static str,
    tls: Option<&ServerTlsConfig>,
    auth: &Option<ReceiverAuthConfig>,
    tasks: &mut Tasks<'_>,
) -> Result<Security, ReceiverError> {
    let auth = auth
        .as_ref()
        .and_then(|a| config.authenticators.get(&a.authenticator));
    Security::new(tls, auth, tasks).map_err(|source| ReceiverError::Security { protocol, source })
}

/// `otelcol_receiver_*` for one transport.
#[derive(Clone)]
struct ReceiverMetrics {
    accepted: Counter,
    refused: Counter,
}

impl ReceiverMetrics {
    fn new(registry: &Registry, transport: &str) -> Self {
        let labels = [("receiver", "otlp"), ("transport", transport)];
        Self {
            accepted: registry.counter(telemetry::RECEIVER_ACCEPTED_SPANS, &labels),
            refused: registry.counter(telemetry::RECEIVER_REFUSED_SPANS, &labels),
        }
    }

    /// Counts a request's spans: accepted ones, and rejected or refused ones.
    fn record(&self, result: &Result<Ingested, IngestError>, total: RefusalCount) {
        match result {
            Ok(i) => {
                self.accepted.increment(i.accepted);
                self.refused.increment(i.rejected);
            }
            Err(_) => self.refused.increment(total.get()),
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

#[cfg(test)]
mod tests;
