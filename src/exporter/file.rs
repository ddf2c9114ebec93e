//! The `file` exporter: each export request as one line of OTLP JSON, the file rotated
//! when it would grow past `rotation.max_megabytes`, keeping `rotation.max_backups` old
//! files named `<path>.<n>` (1 the newest).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::config::FileExporterConfig;
use super::{BuildCause, SendError, Sent};
use crate::otlp::EncodedRequest;

pub(super) struct FileSink {
    state: Arc<Mutex<FileState>>,
}

struct FileState {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
    max_backups: usize,
}

impl FileSink {
    pub(super) fn new(config: &FileExporterConfig) -> Result<Self, BuildCause> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(BuildCause::read("path", dir))?;
        }
        let file = open(&config.path).map_err(BuildCause::read("path", &config.path))?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            state: Arc::new(Mutex::new(FileState {
                path: config.path.clone(),
                file,
                written,
                max_bytes: config.rotation.max_megabytes * 1024 * 1024,
                max_backups: config.rotation.max_backups,
            })),
        })
    }

    pub(super) async fn send(&self, request: &EncodedRequest) -> Result<Sent, SendError> {
        let decoded = ExportTraceServiceRequest::decode(request.bytes.clone())
            .map_err(|e| SendError::Permanent(format!("re-decoding the request: {e}")))?;
        let mut line =
            serde_json::to_vec(&decoded).map_err(|e| SendError::Permanent(format!("json: {e}")))?;
        line.push(b'\n');
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = state.lock().expect("file exporter lock");
            s.write_line(&line)
        })
        .await
        .map_err(|e| SendError::Permanent(format!("writer task: {e}")))?
        .map_err(|e| SendError::Permanent(format!("write: {e}")))?;
        Ok(Sent::default())
    }
}

impl FileState {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.written > 0 && self.written + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.file.flush()?;
        self.written += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.max_backups == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(backup(&self.path, self.max_backups));
            for n in (1..self.max_backups).rev() {
                let from = backup(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, backup(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, backup(&self.path, 1))?;
        }
        self.file = open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

fn backup(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}
