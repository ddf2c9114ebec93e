//! The worker's write-ahead log, with `tail_storage` (or an exporter's
//! `sending_queue.storage`): every request is in the log before it is acknowledged,
//! decisions are recorded once made, and kept spans' exports once every sending queue is
//! done with them. A trace's first record stays on disk (pinned, with every later record)
//! until the trace is decided and, when kept, its export is settled; then compaction deletes
//! it with the rest of the log's oldest segments.
//!
//! At start the log is read twice: first the decisions and settled exports, then the
//! requests, each span going where that history says: nowhere when its export was settled
//! or its trace dropped, to the exporters again when its trace was kept, otherwise into the
//! buffer with its original arrival time, so its deadline is the one it had.
//!
//! Records: `REQUEST` (arrival, Unix nanoseconds, u64 LE; the OTLP request as received),
//! `DECIDED` (per trace: id, the decision's index, its chance, the deciding policy's name),
//! `SETTLED` (per trace: id, the `seq` of the last request whose spans the export held,
//! u64 LE).

use std::collections::HashMap;
use std::sync::Arc;

use metrics::{Counter, Gauge};

use crate::otlp::tracestate::Threshold;
use crate::otlp::{Outcome, Settlement, TraceId};
use crate::policy::{Chance, Decision, Verdict};
use crate::storage::{Appended, Class, FileStorageConfig, Log, Pin, Record, StorageError};
use crate::telemetry::{self, Registry};

const REQUEST: u8 = 1;
const DECIDED: u8 = 2;
const SETTLED: u8 = 3;

/// The directory of the worker's log under the extension's.
const LOG_NAME: &str = "tail_sampling";

/// The worker's log and its replay metrics.
pub struct Durable {
    log: Arc<Log>,
    /// Segments found at start, oldest first.
    found: Vec<u64>,
    replayed_records: Counter,
    pub(super) replayed_spans: Counter,
    replay_duration: Gauge,
}

/// What the log says about traces: decisions (with the record's `seq`) and how far each
/// trace's exports were settled.
#[derive(Default)]
pub struct History {
    pub decided: HashMap<TraceId, (Verdict, u64)>,
    pub settled: HashMap<TraceId, u64>,
}

/// A logged request read back.
pub struct Logged {
    pub seq: u64,
    pub arrival_unix_nanos: u64,
    pub bytes: bytes::Bytes,
}

impl Durable {
    /// Opens the log (at most `limit` bytes on disk) in the extension's directory.
    pub fn open(
        config: &FileStorageConfig,
        limit: u64,
        registry: &Registry,
    ) -> Result<Durable, StorageError> {
        let (log, found) = Log::open(config, LOG_NAME, limit, registry)?;
        Ok(Durable {
            log: Arc::new(log),
            found,
            replayed_records: registry.counter(telemetry::STORAGE_REPLAYED_RECORDS, &[]),
            replayed_spans: registry.counter(telemetry::STORAGE_REPLAYED_SPANS, &[]),
            replay_duration: registry.gauge(telemetry::STORAGE_REPLAY_DURATION, &[]),
        })
    }

    /// Writes an accepted request; refused when the log is full.
    pub fn log_request(
        &self,
        bytes: &[u8],
        arrival_unix_nanos: u64,
    ) -> Result<Appended, StorageError> {
        self.log.append(
            REQUEST,
            &[&arrival_unix_nanos.to_le_bytes(), bytes],
            Class::Data,
        )
    }

    /// Records decisions; returns the record's `seq`, for late spans of kept traces to pin.
    pub fn log_decisions<'a>(
        &self,
        decisions: impl Iterator<Item = (&'a TraceId, &'a Verdict)>,
    ) -> Option<u64> {
        let mut payload = Vec::new();
        for (id, verdict) in decisions {
            put_verdict(&mut payload, id, verdict);
        }
        if payload.is_empty() {
            return None;
        }
        match self.log.append(DECIDED, &[&payload], Class::Note) {
            Ok(a) => Some(a.seq),
            Err(e) => {
                // Not recorded, the traces are decided again at the next start.
                tracing::warn!(error = %e, "could not record decisions");
                None
            }
        }
    }

    /// What an export of kept spans records once every sending queue is done with it
    /// (sent, or failed for good and counted): per trace, the last request whose spans it
    /// holds; `pins` keep those requests on disk until then. Abandoned (at shutdown), it
    /// records nothing, and the spans are exported again at the next start.
    pub fn settlement(&self, traces: &[(TraceId, u64)], pins: Vec<Pin>) -> Arc<Settlement> {
        let mut payload = Vec::with_capacity(traces.len() * 24);
        for (id, through) in traces {
            payload.extend_from_slice(id);
            payload.extend_from_slice(&through.to_le_bytes());
        }
        let log = self.log.clone();
        Arc::new(Settlement::new(move |outcome| {
            let _pins = pins;
            if outcome == Outcome::Abandoned {
                return;
            }
            if let Err(e) = log.append(SETTLED, &[&payload], Class::Note) {
                // Done but not recorded: at the next start it is sent again, which is
                // what at-least-once allows.
                tracing::warn!(error = %e, "could not record a finished export");
            }
        }))
    }

    /// A pin on the record at `seq`.
    pub fn pin(&self, seq: u64) -> Pin {
        self.log.pin(seq)
    }

    /// Deletes what nothing needs any more.
    pub fn compact(&self) -> Result<usize, StorageError> {
        self.log.compact()
    }

    /// The first pass of the replay: every decision and settled export in the log.
    pub fn history(&self) -> Result<History, StorageError> {
        let mut history = History::default();
        for &segment in &self.found {
            let records = self.log.read(segment, true)?;
            self.replayed_records.increment(records.len() as u64);
            for record in records {
                match record.kind {
                    DECIDED => {
                        let mut rest = &record.payload[..];
                        while let Some((id, verdict)) = get_verdict(&mut rest) {
                            history.decided.insert(id, (verdict, record.seq));
                        }
                    }
                    SETTLED => {
                        for entry in record.payload.chunks_exact(24) {
                            let id: TraceId = entry[..16].try_into().expect("16 bytes");
                            let through = u64::from_le_bytes(entry[16..].try_into().expect("8"));
                            let at = history.settled.entry(id).or_default();
                            *at = (*at).max(through);
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(history)
    }

    /// The second pass: every logged request, oldest first, one segment in memory at a
    /// time, handed to `take`.
    pub fn requests(&self, mut take: impl FnMut(Logged)) -> Result<(), StorageError> {
        for &segment in &self.found {
            for Record { seq, kind, payload } in self.log.read(segment, false)? {
                if kind != REQUEST || payload.len() < 8 {
                    continue;
                }
                let arrival = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                let mut bytes = bytes::Bytes::from(payload);
                take(Logged {
                    seq,
                    arrival_unix_nanos: arrival,
                    bytes: bytes.split_off(8),
                });
            }
        }
        Ok(())
    }

    /// Reports the replay's duration.
    pub fn replayed(&self, seconds: f64) {
        self.replay_duration.set(seconds);
    }
}

/// Appends a trace's decision: id, decision index, chance (0 unknown, 1 known without a
/// consistent threshold, 2 with one; the threshold u64 LE; the miss probability f64 LE),
/// the policy's name (length u8, then up to 255 bytes).
fn put_verdict(out: &mut Vec<u8>, id: &TraceId, verdict: &Verdict) {
    out.extend_from_slice(id);
    out.push(verdict.decision.index() as u8);
    let (tag, threshold, miss) = match verdict.chance {
        Chance::Unknown => (0, 0, 1.0),
        Chance::Known {
            consistent: None,
            miss,
        } => (1, 0, miss),
        Chance::Known {
            consistent: Some(t),
            miss,
        } => (2, t.value(), miss),
    };
    out.push(tag);
    out.extend_from_slice(&threshold.to_le_bytes());
    out.extend_from_slice(&f64::to_le_bytes(miss));
    let name = verdict.policy.as_deref().unwrap_or_default().as_bytes();
    let name = &name[..name.len().min(255)];
    out.push(name.len() as u8);
    out.extend_from_slice(name);
}

/// Reads one decision written by [`put_verdict`] off the front of `buf`.
fn get_verdict(buf: &mut &[u8]) -> Option<(TraceId, Verdict)> {
    const FIXED: usize = 16 + 1 + 1 + 8 + 8 + 1;
    let fixed = buf.get(..FIXED)?;
    let name_len = usize::from(fixed[FIXED - 1]);
    let name = buf.get(FIXED..FIXED + name_len)?;
    let id: TraceId = fixed[..16].try_into().ok()?;
    let threshold = u64::from_le_bytes(fixed[18..26].try_into().ok()?);
    let miss = f64::from_le_bytes(fixed[26..34].try_into().ok()?);
    let chance = match fixed[17] {
        0 => Chance::Unknown,
        1 => Chance::Known {
            consistent: None,
            miss,
        },
        _ => Chance::Known {
            consistent: Threshold::new(threshold),
            miss,
        },
    };
    let verdict = Verdict {
        decision: Decision::FINAL[usize::from(fixed[16]).min(2)],
        policy: (!name.is_empty()).then(|| String::from_utf8_lossy(name).into()),
        composite_policy: None,
        chance,
    };
    *buf = &buf[FIXED + name_len..];
    Some((id, verdict))
}

/// Now, in Unix nanoseconds.
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An export that every queue finished, delivered or failed for good, is recorded as
    /// settled; one abandoned (a queue dropped it at shutdown) is not, so the next start
    /// sends it again.
    #[test]
    fn settlements_record_finished_exports_only() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileStorageConfig {
            directory: dir.path().to_owned(),
            fsync: false,
            create_directory: false,
        };
        let registry = Registry::new();
        let ids: Vec<TraceId> = (1..=3u8).map(|i| [i; 16]).collect();
        {
            let durable = Durable::open(&config, 1 << 30, &registry).unwrap();
            for (id, outcome) in ids.iter().zip([Some(true), Some(false), None]) {
                let settlement = durable.settlement(&[(*id, 7)], Vec::new());
                settlement.enlist();
                if let Some(delivered) = outcome {
                    settlement.settle(delivered);
                }
            }
        }
        let durable = Durable::open(&config, 1 << 30, &registry).unwrap();
        let history = durable.history().unwrap();
        assert_eq!(history.settled.get(&ids[0]), Some(&7), "delivered");
        assert_eq!(history.settled.get(&ids[1]), Some(&7), "failed for good");
        assert_eq!(history.settled.get(&ids[2]), None, "abandoned");
    }
}
