use std::sync::Arc;

use super::*;
use crate::telemetry::Registry;

fn config(dir: &Path) -> FileStorageConfig {
    FileStorageConfig {
        directory: dir.to_owned(),
        fsync: false,
        create_directory: false,
    }
}

fn open(dir: &Path, limit: u64) -> (Log, Vec<u64>, Registry) {
    let registry = Registry::new();
    let (log, found) = Log::open(&config(dir), "test", limit, &registry).unwrap();
    (log, found, registry)
}

fn read_all(log: &Log, found: &[u64]) -> Vec<Record> {
    found
        .iter()
        .flat_map(|s| log.read(*s, true).unwrap())
        .collect()
}

fn metric(registry: &Registry, name: &str) -> f64 {
    let mut text = String::new();
    crate::telemetry::MetricsSource::render(registry, &mut text, crate::telemetry::Format::Text);
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A payload of `len` bytes saying which record it is.
fn payload(i: u32, len: usize) -> Vec<u8> {
    let mut p = i.to_le_bytes().to_vec();
    p.resize(len.max(4), i as u8);
    p
}

#[test]
fn records_come_back_in_order_across_segments_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut seqs = Vec::new();
    {
        let (log, found, _) = open(dir.path(), 1 << 30);
        assert!(found.is_empty());
        // 300 KiB records roll the 1 MiB segments every few records.
        for i in 0..20 {
            seqs.push(
                log.append(7, &[&payload(i, 300 << 10)], Class::Data)
                    .unwrap()
                    .seq,
            );
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert!(seqs.last().unwrap() >> 32 > 3, "segments rolled: {seqs:?}");
    let (log, found, _) = open(dir.path(), 1 << 30);
    let records = read_all(&log, &found);
    assert_eq!(records.len(), 20);
    for (i, r) in records.iter().enumerate() {
        assert_eq!((r.seq, r.kind), (seqs[i], 7));
        assert_eq!(r.payload, payload(i as u32, 300 << 10));
    }
    // New records go to a new segment, after every old one.
    let next = log.append(1, &[b"x"], Class::Data).unwrap().seq;
    assert!(next >> 32 > *found.last().unwrap());
}

#[test]
fn a_torn_tail_and_a_bad_checksum_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _, _) = open(dir.path(), 1 << 30);
        for i in 0..6 {
            log.append(1, &[&payload(i, 400 << 10)], Class::Data)
                .unwrap();
        }
    }
    let (_, segments, _) = open(dir.path(), 1 << 30);
    let segments: Vec<u64> = segments.into_iter().filter(|s| *s < 3).collect();
    // Segment 1 holds records 0 and 1, segment 2 records 2 and 3. Cut the first short (a
    // torn write) and flip a byte of the second's second record.
    let first = segment_path(&dir.path().join("test"), segments[0]);
    let len = std::fs::metadata(&first).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let second = segment_path(&dir.path().join("test"), segments[1]);
    let mut bytes = std::fs::read(&second).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0xff;
    std::fs::write(&second, bytes).unwrap();

    let (log, found, registry) = open(dir.path(), 1 << 30);
    let ids: Vec<u32> = read_all(&log, &found)
        .iter()
        .map(|r| u32::from_le_bytes(r.payload[..4].try_into().unwrap()))
        .collect();
    assert_eq!(ids, [0, 2, 4, 5]);
    assert_eq!(
        metric(&registry, "tailgate_storage_corrupt_records_total"),
        2.0
    );
}

#[test]
fn a_directory_in_use_is_refused_and_a_missing_one_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, _, _) = open(dir.path(), 1 << 30);
    let registry = Registry::new();
    let e = Log::open(&config(dir.path()), "test", 1 << 30, &registry)
        .err()
        .unwrap();
    assert!(matches!(e, StorageError::Locked(_)), "{e}");
    assert!(e.to_string().contains("in use by another process"), "{e}");
    let missing = dir.path().join("nope");
    let e = Log::open(&config(&missing), "test", 1 << 30, &registry)
        .err()
        .unwrap();
    assert!(e.to_string().contains("create_directory"), "{e}");
    let created = FileStorageConfig {
        create_directory: true,
        ..config(&missing)
    };
    assert!(Log::open(&created, "test", 1 << 30, &registry).is_ok());
}

#[test]
fn pins_hold_their_segment_and_the_limit_pushes_back_until_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, registry) = open(dir.path(), 4 << 20);
    let mut pins = Vec::new();
    let mut refused = 0;
    for i in 0..20 {
        match log.append(1, &[&payload(i, 500 << 10)], Class::Data) {
            Ok(a) => pins.push(a.pin),
            Err(StorageError::Full { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // 4 MiB hold eight records of 500 KiB and a bit, two to a 1 MiB segment.
    assert_eq!(pins.len(), 8);
    assert_eq!(refused, 12);
    assert_eq!(
        metric(&registry, "tailgate_storage_refused_records_total"),
        12.0
    );
    assert_eq!(log.compact().unwrap(), 0, "every segment is pinned");
    // Unpin the records of the second segment only: the first still holds everything.
    let second = pins[2].segment();
    pins.retain(|p| p.segment() != second);
    assert_eq!(log.compact().unwrap(), 0);
    // Unpin the first: it goes, and the second with it; the third stays.
    let first = pins[0].segment();
    pins.retain(|p| p.segment() != first);
    assert_eq!(log.compact().unwrap(), 2);
    assert!(log
        .append(1, &[&payload(99, 500 << 10)], Class::Data)
        .is_ok());
    assert!(log.bytes() < 4 << 20);
}

#[test]
fn a_crash_part_way_through_compaction_leaves_a_readable_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _, _) = open(dir.path(), 1 << 30);
        for i in 0..8 {
            log.append(1, &[&payload(i, 400 << 10)], Class::Data)
                .unwrap();
        }
    }
    // Compaction deletes oldest first; a crash after the first deletion leaves the rest.
    std::fs::remove_file(segment_path(&dir.path().join("test"), 1)).unwrap();
    let (log, found, registry) = open(dir.path(), 1 << 30);
    let ids: Vec<u32> = read_all(&log, &found)
        .iter()
        .map(|r| u32::from_le_bytes(r.payload[..4].try_into().unwrap()))
        .collect();
    assert_eq!(ids, [2, 3, 4, 5, 6, 7]);
    assert_eq!(
        metric(&registry, "tailgate_storage_corrupt_records_total"),
        0.0
    );
}

#[test]
fn concurrent_appends_with_fsync_share_syncs_and_all_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new();
    let fsynced = FileStorageConfig {
        fsync: true,
        ..config(dir.path())
    };
    let (log, _) = Log::open(&fsynced, "test", 1 << 30, &registry).unwrap();
    let log = Arc::new(log);
    let seqs: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u32)
            .map(|t| {
                let log = log.clone();
                // 100 KiB records: segments roll under the appenders.
                s.spawn(move || {
                    (0..50u32)
                        .map(|i| {
                            log.append(1, &[&payload(t * 1000 + i, 100 << 10)], Class::Data)
                                .unwrap()
                                .seq
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut unique = seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 200);
    let syncs = metric(&registry, "tailgate_storage_fsync_latency_seconds_count");
    assert!((1.0..=200.0).contains(&syncs), "{syncs} fsyncs");
    drop(log);
    let (log, found, _) = open(dir.path(), 1 << 30);
    let mut ids: Vec<u32> = read_all(&log, &found)
        .iter()
        .map(|r| u32::from_le_bytes(r.payload[..4].try_into().unwrap()))
        .collect();
    ids.sort_unstable();
    let expected: Vec<u32> = (0..4)
        .flat_map(|t| (0..50).map(move |i| t * 1000 + i))
        .collect();
    assert_eq!(ids, expected);
}
