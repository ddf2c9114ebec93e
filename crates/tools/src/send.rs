//! Sending generated requests over OTLP gRPC or HTTP: one connection per emitting
//! instance (up to `connections`), one request in flight per connection as an SDK's batch
//! processor does, retries with backoff on the statuses OTLP calls retryable, and the
//! counts of what was delivered, partly rejected or refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::workload::Outgoing;
use tailgate::exporter::retryable;
use tailgate::otlp::{RawExportCodec, EXPORT_PATH};

/// How requests reach the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Grpc,
    Http,
}

const MAX_ATTEMPTS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What happened to the spans handed to the sender.
#[derive(Debug, Default)]
pub struct SendStats {
    /// Spans in requests the target accepted (minus `rejected`).
    pub delivered: AtomicU64,
    /// Spans the target reported as rejected in a partial success.
    pub rejected: AtomicU64,
    /// Spans in requests refused with a non-retryable status or after the last retry.
    pub refused: AtomicU64,
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub wire_bytes: AtomicU64,
}

impl SendStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A pool of connections, each sending its requests one at a time.
pub struct Sender {
    lanes: Vec<mpsc::Sender<Outgoing>>,
    tasks: JoinSet<()>,
    pub stats: Arc<SendStats>,
}

impl Sender {
    /// Opens `connections` connections to `endpoint` (`host:port`, or a URL).
    pub fn start(endpoint: &str, protocol: Protocol, connections: usize) -> anyhow::Result<Sender> {
        let stats = Arc::new(SendStats::default());
        let mut tasks = JoinSet::new();
        let mut lanes = Vec::new();
        let base = if endpoint.contains("://") {
            endpoint.trim_end_matches('/').to_owned()
        } else {
            format!("http://{endpoint}")
        };
        for _ in 0..connections.max(1) {
            let (tx, rx) = mpsc::channel::<Outgoing>(2);
            let target = match protocol {
                // A channel of its own per lane: its own HTTP/2 connection.
                Protocol::Grpc => Target::Grpc(
                    Endpoint::from_shared(base.clone())?
                        .timeout(REQUEST_TIMEOUT)
                        .connect_lazy(),
                ),
                Protocol::Http => Target::Http {
                    client: reqwest::Client::builder()
                        .timeout(REQUEST_TIMEOUT)
                        .pool_max_idle_per_host(1)
                        .build()?,
                    url: format!("{base}/v1/traces"),
                },
            };
            tasks.spawn(lane(target, rx, stats.clone()));
            lanes.push(tx);
        }
        Ok(Sender {
            lanes,
            tasks,
            stats,
        })
    }

    /// Queues one request on its instance's connection, waiting while that connection is
    /// busy (which is what paces a run at the target's speed).
    pub async fn send(&self, outgoing: Outgoing) {
        let lane = &self.lanes[outgoing.instance % self.lanes.len()];
        // A lane's task ends only when its sender is dropped, in `finish`.
        let _ = lane.send(outgoing).await;
    }

    /// Waits for every queued request to be answered.
    pub async fn finish(mut self) -> Arc<SendStats> {
        self.lanes.clear();
        while self.tasks.join_next().await.is_some() {}
        self.stats
    }
}

enum Target {
    Grpc(Channel),
    Http {
        client: reqwest::Client,
        url: String,
    },
}

enum Attempt {
    Accepted { rejected: u64 },
    Retry(String),
    Refused(String),
}

async fn lane(target: Target, mut rx: mpsc::Receiver<Outgoing>, stats: Arc<SendStats>) {
    while let Some(outgoing) = rx.recv().await {
        let spans = u64::from(outgoing.spans);
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats
            .wire_bytes
            .fetch_add(outgoing.body.len() as u64, Ordering::Relaxed);
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match export(&target, outgoing.body.clone()).await {
                Attempt::Accepted { rejected } => {
                    stats
                        .delivered
                        .fetch_add(spans - rejected.min(spans), Ordering::Relaxed);
                    stats
                        .rejected
                        .fetch_add(rejected.min(spans), Ordering::Relaxed);
                    break;
                }
                Attempt::Retry(why) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(attempt, error = %why, "retrying a refused request");
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
                Attempt::Retry(why) | Attempt::Refused(why) => {
                    tracing::warn!(spans, error = %why, "request refused");
                    stats.refused.fetch_add(spans, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

async fn export(target: &Target, body: Bytes) -> Attempt {
    match target {
        Target::Grpc(channel) => {
            let mut client = tonic::client::Grpc::new(channel.clone());
            if let Err(e) = client.ready().await {
                return Attempt::Retry(format!("connect: {e}"));
            }
            let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
            let codec = RawExportCodec::for_message(body.len());
            match client.unary(tonic::Request::new(body), path, codec).await {
                Ok(response) => Attempt::Accepted {
                    rejected: rejected(response.get_ref()),
                },
                Err(status) => {
                    let why = format!("{:?}: {}", status.code(), status.message());
                    if retryable(status.code()) {
                        Attempt::Retry(why)
                    } else {
                        Attempt::Refused(why)
                    }
                }
            }
        }
        Target::Http { client, url } => {
            let sent = client
                .post(url)
                .header("content-type", "application/x-protobuf")
                .body(body)
                .send()
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => return Attempt::Retry(e.to_string()),
            };
            let status = response.status();
            let bytes = response.bytes().await.unwrap_or_default();
            match status.as_u16() {
                200..=299 => Attempt::Accepted {
                    rejected: ExportTraceServiceResponse::decode(bytes)
                        .map(|r| rejected(&r))
                        .unwrap_or(0),
                },
                429 | 502 | 503 | 504 => Attempt::Retry(format!("HTTP {status}")),
                _ => Attempt::Refused(format!("HTTP {status}")),
            }
        }
    }
}

fn rejected(response: &ExportTraceServiceResponse) -> u64 {
    response
        .partial_success
        .as_ref()
        .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
}
