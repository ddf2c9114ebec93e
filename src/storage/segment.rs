//! The log's files: segment `N` is `N.log` (20 digits, so names sort as numbers), a run of
//! records, each `[length: u32 LE][crc32: u32 LE][kind: u8][payload]`, the length and
//! checksum covering kind and payload.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{Record, StorageError};

/// Bytes before a record's kind.
pub const HEADER: usize = 8;
/// No record is longer; a length above it is damage, not an allocation to attempt.
const MAX_RECORD: usize = 1 << 30;

pub fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.log"))
}

/// Creates segment `segment`, empty.
pub fn create(dir: &Path, segment: u64) -> Result<File, StorageError> {
    let path = segment_path(dir, segment);
    File::options()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| StorageError::io(&path, e))
}

/// Appends one record to `out`.
pub fn encode(kind: u8, parts: &[&[u8]], out: &mut Vec<u8>) {
    let len: usize = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    for p in parts {
        crc.update(p);
    }
    out.reserve(HEADER + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// The segments in `dir`, oldest first, with their sizes on disk.
pub fn list(dir: &Path) -> Result<VecDeque<(u64, u64)>, StorageError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        let name = entry.file_name();
        let Some(segment) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let bytes = entry
            .metadata()
            .map_err(|e| StorageError::io(&entry.path(), e))?
            .len();
        found.push((segment, bytes));
    }
    found.sort_unstable();
    Ok(found.into())
}

/// A segment's records up to the first damaged one, and whether there was one.
pub fn read(dir: &Path, segment: u64) -> Result<(Vec<Record>, bool), StorageError> {
    let path = segment_path(dir, segment);
    let bytes = std::fs::read(&path).map_err(|e| StorageError::io(&path, e))?;
    Ok(decode(segment, &bytes))
}

/// The one record at `seq`, if it is whole and its checksum holds.
pub fn read_at(dir: &Path, seq: u64) -> Result<Option<Record>, StorageError> {
    use std::io::{Read, Seek, SeekFrom};
    let path = segment_path(dir, seq >> 32);
    let io = |e| StorageError::io(&path, e);
    let mut file = File::open(&path).map_err(io)?;
    file.seek(SeekFrom::Start(seq & u64::from(u32::MAX)))
        .map_err(io)?;
    let mut header = [0u8; HEADER];
    if file.read_exact(&mut header).is_err() {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD {
        return Ok(None);
    }
    let mut body = vec![0u8; len];
    if file.read_exact(&mut body).is_err() || crc32fast::hash(&body) != crc {
        return Ok(None);
    }
    let kind = body[0];
    body.remove(0);
    Ok(Some(Record {
        seq,
        kind,
        payload: body,
    }))
}

/// The records of one segment's bytes.
pub fn decode(segment: u64, bytes: &[u8]) -> (Vec<Record>, bool) {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + HEADER) else {
            return (records, true);
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let body = match bytes.get(at + HEADER..at + HEADER + len) {
            Some(body) if len > 0 && len <= MAX_RECORD => body,
            _ => return (records, true),
        };
        if crc32fast::hash(body) != crc {
            return (records, true);
        }
        records.push(Record {
            seq: (segment << 32) | at as u64,
            kind: body[0],
            payload: body[1..].to_vec(),
        });
        at += HEADER + len;
    }
    (records, false)
}
