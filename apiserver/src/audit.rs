//! The audit log: one JSON line per write and per denied request, in
//! Kubernetes' audit `Event` format (`audit.k8s.io/v1`, level `Metadata`),
//! so that tools that read kube-apiserver's audit log read mube's.
//!
//! A request appends its line to a shared buffer; a writer thread takes the
//! whole buffer every `FLUSH_EVERY` and writes it, so a request never waits
//! on the disk, and never wakes a thread (waking the writer for every line
//! cost a third of heartbeat throughput). The file is rotated by size:
//! `audit.log` becomes `audit.log.1` (and `.1` becomes `.2`, up to
//! `BACKUPS`). Like kube-apiserver's batching backend, a buffer that is full
//! drops the line and says so in the log, rather than slow the API down.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Rotated files kept besides the live one.
const BACKUPS: usize = 3;
/// Bytes that may wait for the writer; past it, lines are dropped.
const MAX_PENDING: usize = 64 * 1024 * 1024;
/// How often the writer takes what is pending.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Where the audit log goes and how big a file may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
}

pub struct AuditLog {
    pending: Mutex<Vec<u8>>,
    closed: AtomicBool,
    dropped: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditLog {
    /// Opens (appends to) the log and starts its writer.
    pub fn open(config: &AuditConfig) -> Result<Arc<AuditLog>, String> {
        let mut file = Rotating::open(config.path.clone(), config.max_bytes)?;
        let log = Arc::new(AuditLog {
            pending: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            writer: Mutex::new(None),
        });
        let shared = log.clone();
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || loop {
                std::thread::park_timeout(FLUSH_EVERY);
                let closed = shared.closed.load(Ordering::Acquire);
                let batch = match shared.pending.lock() {
                    Ok(mut pending) => std::mem::take(&mut *pending),
                    Err(_) => return,
                };
                file.write_batch(&batch);
                if closed {
                    return;
                }
            })
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        if let Ok(mut slot) = log.writer.lock() {
            *slot = Some(writer);
        }
        Ok(log)
    }

    /// Queues one line (without its newline).
    pub fn record(&self, line: Vec<u8>) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if pending.len() + line.len() >= MAX_PENDING {
            drop(pending);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "the audit log cannot keep up: lines dropped");
            }
            return;
        }
        pending.extend_from_slice(&line);
        pending.push(b'\n');
    }

    /// Writes out what is pending and stops the writer (at shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            writer.thread().unpark();
            let _ = writer.join();
        }
    }
}

/// The live file, rotated by size.
struct Rotating {
    path: PathBuf,
    max_bytes: u64,
    out: BufWriter<File>,
    size: u64,
}

fn open_append(path: &Path) -> Result<(File, u64), String> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((file, size))
}

fn backup(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl Rotating {
    fn open(path: PathBuf, max_bytes: u64) -> Result<Rotating, String> {
        let (file, size) = open_append(&path)?;
        Ok(Rotating {
            path,
            max_bytes,
            out: BufWriter::new(file),
            size,
        })
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            if let Err(e) = self.rotate() {
                // Keep appending to the live file rather than lose lines;
                // try again once it has grown by another max_bytes.
                tracing::error!(error = %e, path = %self.path.display(), "rotating the audit log failed");
                self.size = 0;
            }
        }
        self.out.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        for n in (1..BACKUPS).rev() {
            let from = backup(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, backup(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, backup(&self.path, 1))?;
        let (file, size) =
            open_append(&self.path).map_err(|e| std::io::Error::other(e.to_string()))?;
        self.out = BufWriter::new(file);
        self.size = size;
        Ok(())
    }

    /// Writes whole lines, rotating between them, and flushes.
    fn write_batch(&mut self, batch: &[u8]) {
        for line in batch.split_inclusive(|b| *b == b'\n') {
            if let Err(e) = self.write(line) {
                tracing::error!(error = %e, path = %self.path.display(), "writing the audit log failed");
                return;
            }
        }
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_and_rotated_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&AuditConfig {
            path: path.clone(),
            max_bytes: 100,
        })
        .unwrap();
        for i in 0..30 {
            log.record(format!("{{\"line\":{i:03}}}").into_bytes());
        }
        log.close();
        // 30 lines of 13 bytes, at most 7 a file: the live file and three
        // backups hold the newest 28 or so; the oldest are gone.
        let live = std::fs::read_to_string(&path).unwrap();
        assert!(live.ends_with("{\"line\":029}\n"), "{live}");
        assert!(live.len() <= 100);
        for n in 1..=BACKUPS {
            let b = std::fs::read_to_string(backup(&path, n)).unwrap();
            assert!(!b.is_empty() && b.len() <= 100, "backup {n}: {b}");
        }
        assert!(!backup(&path, BACKUPS + 1).exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
