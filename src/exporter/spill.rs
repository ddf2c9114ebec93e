//! A sending queue's overflow on disk, with `file_storage`: export requests beyond the
//! queue's `queue_size` wait in a log of their own (`exporter_<id>` in the extension's
//! directory, `/` written `%2F`) instead of in memory, in order, and go back into the queue as it drains.
//! Only their size and settlement stay in memory (tens of bytes a request, with its
//! traces' ids), so a backend outage is bounded by the disk limit, not by memory.
//!
//! The log is scratch: the worker's write-ahead log holds the same kept spans until their
//! export settles, so what a previous run left here is deleted at start (the write-ahead
//! log's replay exports it again), it is never fsynced, and a request this log cannot take
//! or give back stays recoverable from the write-ahead log at the next start.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use metrics::Gauge;

use crate::otlp::{EncodedRequest, Settlement};
use crate::storage::{Class, FileStorageConfig, Log, Pin, StorageError};
use crate::telemetry::{self, Registry};

/// The one record kind: an export request's bytes.
const REQUEST: u8 = 1;

/// A sending queue's requests on disk, oldest first.
pub struct Spill {
    log: Log,
    waiting: Mutex<VecDeque<Waiting>>,
    spilled: Gauge,
}

/// A request on disk: where, and what stays in memory.
struct Waiting {
    seq: u64,
    /// Keeps its segment on disk until the request is read back.
    _pin: Pin,
    spans: u64,
    settlement: Option<Arc<Settlement>>,
}

impl Spill {
    /// Opens exporter `name`'s overflow under the extension's directory (at most `limit`
    /// bytes), deleting what an earlier run left there.
    pub fn open(
        storage: &FileStorageConfig,
        name: &str,
        limit: u64,
        registry: &Registry,
    ) -> Result<Spill, StorageError> {
        let scratch = FileStorageConfig {
            fsync: false,
            ..storage.clone()
        };
        // One directory per exporter id: `/` (and `%`, so that no two ids meet) escaped.
        let log_name = format!("exporter_{}", name.replace('%', "%25").replace('/', "%2F"));
        let (log, _leftovers) = Log::open(&scratch, &log_name, limit, registry)?;
        log.compact()?;
        Ok(Spill {
            log,
            waiting: Mutex::new(VecDeque::new()),
            spilled: registry.gauge(
                telemetry::EXPORTER_QUEUE_SPILLED,
                &[("exporter", name), ("data_type", "traces")],
            ),
        })
    }

    /// Requests waiting on disk.
    pub fn len(&self) -> usize {
        self.waiting.lock().expect("spill lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes `request` behind the others; gives it back when the log cannot take it (its
    /// limit, or a disk error).
    pub fn push(&self, request: EncodedRequest) -> Result<(), EncodedRequest> {
        let mut waiting = self.waiting.lock().expect("spill lock");
        match self.log.append(REQUEST, &[&request.bytes], Class::Data) {
            Ok(appended) => {
                waiting.push_back(Waiting {
                    seq: appended.seq,
                    _pin: appended.pin,
                    spans: request.spans,
                    settlement: request.settlement,
                });
                self.spilled.set(waiting.len() as f64);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "the sending queue's overflow on disk refused a request");
                Err(request)
            }
        }
    }

    /// The oldest request, read back; `Err` holds the spans of one that could not be read
    /// (counted as failed by the caller; the write-ahead log still has them).
    pub fn pop(&self) -> Option<Result<EncodedRequest, u64>> {
        let front = {
            let mut waiting = self.waiting.lock().expect("spill lock");
            let front = waiting.pop_front()?;
            self.spilled.set(waiting.len() as f64);
            front
        };
        let read = self.log.read_at(front.seq);
        drop(front._pin);
        if let Err(e) = self.log.compact() {
            tracing::warn!(error = %e, "could not delete the sending queue's overflow");
        }
        match read {
            Ok(Some(record)) if record.kind == REQUEST => Some(Ok(EncodedRequest {
                bytes: record.payload.into(),
                spans: front.spans,
                settlement: front.settlement,
            })),
            Ok(_) => {
                tracing::warn!(
                    seq = front.seq,
                    "a request in the sending queue's overflow is damaged"
                );
                Some(Err(front.spans))
            }
            Err(e) => {
                tracing::warn!(error = %e, "a request in the sending queue's overflow could not be read back");
                Some(Err(front.spans))
            }
        }
    }

    /// Lets go of every waiting request (at shutdown); returns their spans. Their
    /// settlements end abandoned, so the write-ahead log keeps them for the next start.
    pub fn abandon(&self) -> u64 {
        let mut waiting = self.waiting.lock().expect("spill lock");
        let spans = waiting.iter().map(|w| w.spans).sum();
        waiting.clear();
        self.spilled.set(0.0);
        spans
    }
}

/// Where sending queues overflow: the `file_storage` extension the worker's log is in, and
/// the most bytes each overflow may hold.
#[derive(Debug, Clone, Copy)]
pub struct SpillTo<'a> {
    pub storage: &'a FileStorageConfig,
    pub limit: u64,
}
