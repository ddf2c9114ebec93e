//! `file_storage`, the collector's extension for local disk, and the log tailgate keeps in
//! it: segment files of length-prefixed, CRC-checked records, appended under one lock,
//! data records fsynced when asked (appenders waiting at once share one fsync), read back
//! in order at start (or one at a time by position), and deleted oldest first once nothing
//! pins them.
//!
//! What the records mean is the user's business (the worker's, see
//! `worker::durable`); this module owns the files: the directory lock, the segments, the
//! disk limit, the pins that keep a segment (and every later one) on disk, and the storage
//! metrics.
//!
//! Written here rather than taken from a crate: the embedded stores (sled, redb, fjall)
//! are key-value stores with their own compaction and write amplification, where this
//! needs an append-only log whose deletion follows the pipeline's pins, one write per
//! request and nothing else.

pub mod config;
mod segment;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram};

use crate::telemetry::{self, Registry};
pub use config::FileStorageConfig;
use segment::segment_path;

/// Slots of the pin table: a segment's pins live in slot `segment % PIN_SLOTS`. Segments
/// are sized so that a quarter as many fit under the disk limit (up to limits of 1 TiB;
/// above, segments stay at 1 GiB); should two live segments share a slot, each looks pinned
/// while the other is, which only delays deletion.
const PIN_SLOTS: usize = 4096;
/// Segments hold at least this much, and the limit is divided into at most
/// `PIN_SLOTS / 4` segments.
const MIN_SEGMENT_BYTES: u64 = 1 << 20;
/// Offsets in a segment fit the low 32 bits of a record's `seq`.
const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// Why the log refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is in use by another process (its lock file is held)", .0.display())]
    Locked(PathBuf),
    #[error("the log is full ({limit} bytes on disk)")]
    Full { limit: u64 },
    #[error("{} does not exist (create it, or set create_directory: true)", .0.display())]
    Missing(PathBuf),
}

impl StorageError {
    fn io(path: &Path, source: std::io::Error) -> StorageError {
        StorageError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// One record read back: where it is in the log, its kind and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Increasing with the position in the log: the segment in the high 32 bits, the
    /// record's offset in it in the low ones.
    pub seq: u64,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// What a record is to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// What was acknowledged: refused when the log would pass its limit (new data pushes
    /// back), and on the device before `append` returns when `fsync` is set.
    Data,
    /// Bookkeeping that lets the log shrink: always taken while the disk has room, and not
    /// fsynced on its own (lost to a machine's crash, the work it records is done again:
    /// at least once).
    Note,
}

/// A record's place in the log and a pin on its segment.
#[derive(Debug)]
pub struct Appended {
    pub seq: u64,
    pub pin: Pin,
}

/// Keeps a segment, and so every later one, on disk while held; cloned freely.
#[derive(Debug)]
pub struct Pin {
    pins: Arc<Pins>,
    segment: u64,
}

impl Pin {
    fn new(pins: Arc<Pins>, segment: u64) -> Pin {
        pins.slot(segment).fetch_add(1, Ordering::AcqRel);
        Pin { pins, segment }
    }

    pub fn segment(&self) -> u64 {
        self.segment
    }
}

impl Clone for Pin {
    fn clone(&self) -> Pin {
        Pin::new(self.pins.clone(), self.segment)
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.pins.slot(self.segment).fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Pins {
    slots: Box<[AtomicU64]>,
}

impl Pins {
    fn slot(&self, segment: u64) -> &AtomicU64 {
        &self.slots[(segment % PIN_SLOTS as u64) as usize]
    }
}

struct Metrics {
    bytes: Gauge,
    corrupt: Counter,
    fsync: Histogram,
    refused: Counter,
}

/// The segment being written.
struct Active {
    /// Shared with a concurrent fsync.
    file: Arc<File>,
    segment: u64,
    written: u64,
    /// Record bytes of this and every older segment still on disk.
    on_disk: u64,
    /// Encoding buffer, reused.
    scratch: Vec<u8>,
}

/// An append-only log in one directory of a `file_storage` extension.
pub struct Log {
    dir: PathBuf,
    fsync: bool,
    segment_bytes: u64,
    limit: u64,
    active: Mutex<Active>,
    /// One fsync at a time, and how far the log is known to be on the device (a position
    /// as in `seq`): an appender whose record an earlier fsync covered waits no more.
    syncing: Mutex<()>,
    synced: AtomicU64,
    /// Segments on disk before the active one, oldest first, with their sizes.
    sealed: Mutex<std::collections::VecDeque<(u64, u64)>>,
    pins: Arc<Pins>,
    metrics: Metrics,
    /// Held for the log's life: another process opening the directory is refused.
    _lock: File,
}

impl Log {
    /// Opens (creating it) `name` under the extension's directory and takes its lock;
    /// returns the log and the segments already there, oldest first, for [`Log::read`].
    /// New records go to a new segment. The log holds at most `limit` bytes on disk.
    pub fn open(
        config: &FileStorageConfig,
        name: &str,
        limit: u64,
        registry: &Registry,
    ) -> Result<(Log, Vec<u64>), StorageError> {
        if !config.create_directory && !config.directory.is_dir() {
            return Err(StorageError::Missing(config.directory.clone()));
        }
        let dir = config.directory.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| StorageError::io(&dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StorageError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StorageError::Locked(dir)),
            Err(std::fs::TryLockError::Error(e)) => return Err(StorageError::io(&lock_path, e)),
        }
        let metrics = Metrics {
            bytes: registry.gauge(telemetry::STORAGE_BYTES, &[("log", name)]),
            corrupt: registry.counter(telemetry::STORAGE_CORRUPT_RECORDS, &[("log", name)]),
            fsync: registry.histogram(telemetry::STORAGE_FSYNC_LATENCY, &[("log", name)]),
            refused: registry.counter(telemetry::STORAGE_REFUSED_RECORDS, &[("log", name)]),
        };
        let sealed = segment::list(&dir)?;
        let next = sealed.back().map_or(1, |(s, _)| s + 1);
        let on_disk: u64 = sealed.iter().map(|(_, bytes)| bytes).sum();
        let file = segment::create(&dir, next)?;
        if config.fsync {
            sync_dir(&dir)?;
        }
        metrics.bytes.set(on_disk as f64);
        let found = sealed.iter().map(|(s, _)| *s).collect();
        let segment_bytes =
            (limit / (PIN_SLOTS as u64 / 4)).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
        let log = Log {
            dir,
            fsync: config.fsync,
            segment_bytes,
            limit,
            active: Mutex::new(Active {
                file: Arc::new(file),
                segment: next,
                written: 0,
                on_disk,
                scratch: Vec::new(),
            }),
            sealed: Mutex::new(sealed),
            syncing: Mutex::new(()),
            synced: AtomicU64::new(0),
            pins: Arc::new(Pins {
                slots: (0..PIN_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            }),
            metrics,
            _lock: lock,
        };
        Ok((log, found))
    }

    /// The records of a segment found at open, in order, up to the first damaged one (a
    /// torn write at a crash, or a bad checksum); the damage is counted when `count`.
    pub fn read(&self, segment: u64, count: bool) -> Result<Vec<Record>, StorageError> {
        let (records, damaged) = segment::read(&self.dir, segment)?;
        if damaged && count {
            tracing::warn!(segment = %segment_path(&self.dir, segment).display(), records = records.len(), "damaged record: the rest of the segment is skipped");
            self.metrics.corrupt.increment(1);
        }
        Ok(records)
    }

    /// The record at `seq` (written by this log), if it is whole and its checksum holds.
    pub fn read_at(&self, seq: u64) -> Result<Option<Record>, StorageError> {
        segment::read_at(&self.dir, seq)
    }

    /// A pin on the segment holding the record at `seq` (a record read back at open).
    pub fn pin(&self, seq: u64) -> Pin {
        Pin::new(self.pins.clone(), seq >> 32)
    }

    /// Appends one record of `kind` made of `parts`; written when this returns, and for
    /// [`Class::Data`] fsynced too when configured.
    pub fn append(
        &self,
        kind: u8,
        parts: &[&[u8]],
        class: Class,
    ) -> Result<Appended, StorageError> {
        let limited = class == Class::Data;
        let len: usize = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
        let record = (segment::HEADER + len) as u64;
        let mut active = self.active.lock().expect("log lock");
        if limited && active.on_disk + record > self.limit {
            self.metrics.refused.increment(1);
            return Err(StorageError::Full { limit: self.limit });
        }
        if active.written > 0 && active.written + record > self.segment_bytes.max(record) {
            self.roll(&mut active)?;
        }
        let path = segment_path(&self.dir, active.segment);
        let written = {
            let Active { file, scratch, .. } = &mut *active;
            scratch.clear();
            segment::encode(kind, parts, scratch);
            (&**file).write_all(scratch)
        };
        if let Err(e) = written {
            // A record cut short by a full disk would end the segment's reading: cut it
            // off, or start a new segment when even that fails.
            if active.file.set_len(active.written).is_err() {
                self.roll(&mut active)?;
            }
            self.metrics.refused.increment(1);
            return Err(match e.kind() {
                std::io::ErrorKind::StorageFull => StorageError::Full { limit: self.limit },
                _ => StorageError::io(&path, e),
            });
        }
        let seq = (active.segment << 32) | active.written;
        active.written += record;
        active.on_disk += record;
        self.metrics.bytes.set(active.on_disk as f64);
        let pin = Pin::new(self.pins.clone(), active.segment);
        drop(active);
        if self.fsync && class == Class::Data {
            self.sync_through(seq + record)?;
        }
        Ok(Appended { seq, pin })
    }

    /// Makes every record before position `end` durable. One fsync covers every record
    /// written before it, so appenders waiting at once share one (group commit).
    fn sync_through(&self, end: u64) -> Result<(), StorageError> {
        let _one = self.syncing.lock().expect("sync lock");
        if self.synced.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        let (file, upto, segment) = {
            let active = self.active.lock().expect("log lock");
            (
                active.file.clone(),
                (active.segment << 32) | active.written,
                active.segment,
            )
        };
        let started = Instant::now();
        file.sync_data()
            .map_err(|e| StorageError::io(&segment_path(&self.dir, segment), e))?;
        self.metrics.fsync.record(started.elapsed().as_secs_f64());
        self.synced.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// Seals the active segment and starts the next.
    fn roll(&self, active: &mut Active) -> Result<(), StorageError> {
        let next = active.segment + 1;
        let file = segment::create(&self.dir, next)?;
        let sealed = std::mem::replace(&mut active.file, Arc::new(file));
        let (segment, end) = (active.segment, (active.segment << 32) | active.written);
        self.sealed
            .lock()
            .expect("sealed lock")
            .push_back((active.segment, active.written));
        active.segment = next;
        active.written = 0;
        if self.fsync {
            // The sealed segment's records are durable before any of the next one's.
            sealed
                .sync_data()
                .map_err(|e| StorageError::io(&segment_path(&self.dir, segment), e))?;
            self.synced.fetch_max(end, Ordering::AcqRel);
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Deletes sealed segments, oldest first, up to the first one pinned; returns how many.
    /// A crash part way leaves a shorter prefix deleted, which is as good.
    pub fn compact(&self) -> Result<usize, StorageError> {
        let mut deleted = 0;
        let mut freed = 0;
        let mut sealed = self.sealed.lock().expect("sealed lock");
        while let Some(&(segment, bytes)) = sealed.front() {
            if self.pins.slot(segment).load(Ordering::Acquire) > 0 {
                break;
            }
            let path = segment_path(&self.dir, segment);
            std::fs::remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
            sealed.pop_front();
            deleted += 1;
            freed += bytes;
        }
        drop(sealed);
        if deleted > 0 {
            let mut active = self.active.lock().expect("log lock");
            active.on_disk -= freed;
            self.metrics.bytes.set(active.on_disk as f64);
        }
        Ok(deleted)
    }

    /// Record bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.active.lock().expect("log lock").on_disk
    }
}

/// Makes a new segment's directory entry durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir, e))
}
