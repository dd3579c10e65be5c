//! Write-ahead log segments: `wal-{first revision:020}.log` files of framed
//! change records, appended by one thread and fsynced per group commit.
//!
//! A segment is closed (never written again) once the next one starts, so
//! only the newest segment can end in a torn record (see `frame::classify`);
//! recovery cuts that tail off and treats damage anywhere else as corruption.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::codec;
use super::frame::{self, Frames, Opened, Tail};
use super::{Event, Revision};

#[derive(Debug, Clone)]
pub struct Segment {
    /// The revision of its first record.
    pub first: Revision,
    pub path: PathBuf,
}

pub fn segment_path(dir: &Path, first: Revision) -> PathBuf {
    dir.join(format!("wal-{first:020}.log"))
}

/// The segments in `dir`, oldest first.
pub fn list(dir: &Path) -> io::Result<Vec<Segment>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("wal-")?.strip_suffix(".log"))
            .and_then(|n| n.parse().ok());
        if let Some(first) = first {
            segments.push(Segment { first, path });
        }
    }
    segments.sort_by_key(|s| s.first);
    Ok(segments)
}

/// Makes a directory's entries (a new, renamed or removed file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    sync_path(dir)
}

/// fsyncs a file or directory by path.
pub fn sync_path(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()?;
    #[cfg(test)]
    synced::record(path);
    Ok(())
}

/// Which paths were fsynced by path, for tests of what start-up makes
/// durable (what only a power loss would show otherwise).
#[cfg(test)]
pub mod synced {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static SYNCED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub fn record(path: &Path) {
        SYNCED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(path.to_path_buf());
    }

    /// Every path synced so far under `root` (tests run in parallel).
    pub fn under(root: &Path) -> Vec<PathBuf> {
        SYNCED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|p| p.starts_with(root) || root.starts_with(p))
            .cloned()
            .collect()
    }
}

/// `create_dir_all`, then fsyncs the parent of every directory it created,
/// so that the directories themselves survive a power loss.
pub fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    std::fs::create_dir_all(dir)?;
    for created in missing.into_iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

/// What reading one segment found.
pub struct SegmentContents {
    /// Each record's change and its size in the file.
    pub records: Vec<(Event, u64)>,
    /// Bytes from the start of the file through the last whole record.
    pub valid_len: u64,
    pub file_len: u64,
    /// What follows the last whole record.
    pub tail: Tail,
    /// Valid records after the first bad one (what a repair would drop).
    pub records_after: usize,
}

pub fn read(segment: &Segment) -> Result<SegmentContents, String> {
    let data = std::fs::read(&segment.path)
        .map_err(|e| format!("cannot read {}: {e}", segment.path.display()))?;
    let (format, body, offset) = match frame::open(&data, codec::WAL_FILE_MAGIC) {
        Opened::Frames {
            format,
            body,
            offset,
        } => (format, body, offset),
        // Created, then cut by a crash before anything was written to it.
        Opened::TornMagic => {
            return Ok(SegmentContents {
                records: Vec::new(),
                valid_len: 0,
                file_len: data.len() as u64,
                tail: if data.is_empty() {
                    Tail::Clean
                } else {
                    Tail::Torn
                },
                records_after: 0,
            })
        }
        // A damaged magic (or a file of a newer mube): what follows is
        // counted as it would be read, and nothing is guessed at.
        Opened::Foreign => {
            return Ok(SegmentContents {
                records: Vec::new(),
                valid_len: 0,
                file_len: data.len() as u64,
                tail: Tail::Damaged,
                records_after: data
                    .get(frame::MAGIC_LEN..)
                    .map_or(0, |rest| frame::count_valid(rest, 0, frame::Format::V2)),
            })
        }
    };
    let mut frames = Frames::new(body, format);
    let mut records: Vec<(Event, u64)> = Vec::new();
    for body in frames.by_ref() {
        let event = codec::decode_event(body).ok_or_else(|| {
            format!(
                "{}: record after revision {} cannot be decoded",
                segment.path.display(),
                records
                    .last()
                    .map_or(segment.first.saturating_sub(1), |(e, _)| e.revision)
            )
        })?;
        records.push((event, (frame::HEADER + body.len()) as u64));
    }
    let valid_len = (offset + frames.valid_len()) as u64;
    let tail = frames.tail(offset);
    let records_after = match tail {
        Tail::Damaged => frame::count_valid(body, frames.valid_len(), format),
        _ => 0,
    };
    Ok(SegmentContents {
        records,
        valid_len,
        file_len: data.len() as u64,
        tail,
        records_after,
    })
}

/// Makes the log's writes fail on demand, to test what the store does after
/// an I/O error (tests only; `None` in a real server).
#[derive(Debug, Default)]
pub struct Faults {
    /// The next appends fail before writing anything.
    pub fail_writes: std::sync::atomic::AtomicBool,
    /// The next appends write, then fail their fdatasync.
    pub fail_syncs: std::sync::atomic::AtomicBool,
    /// Milliseconds each append waits between its write and its fdatasync:
    /// a window in which a test can look at what readers see.
    pub sync_delay_ms: std::sync::atomic::AtomicU64,
}

/// The segment being appended to.
pub struct SegmentWriter {
    file: File,
    pub bytes: u64,
    /// The file's length up to its last successful fdatasync.
    durable_len: u64,
    faults: Option<std::sync::Arc<Faults>>,
}

impl SegmentWriter {
    /// Creates a new, empty segment whose first record will be `first`.
    pub fn create(
        dir: &Path,
        first: Revision,
        faults: Option<std::sync::Arc<Faults>>,
    ) -> io::Result<SegmentWriter> {
        let path = segment_path(dir, first);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        file.write_all(codec::WAL_FILE_MAGIC)?;
        file.sync_data()?;
        // The file must survive a crash before any record in it is acknowledged.
        sync_dir(dir)?;
        Ok(SegmentWriter {
            file,
            bytes: 0,
            durable_len: codec::WAL_FILE_MAGIC.len() as u64,
            faults,
        })
    }

    /// After a failed append: cuts the file back to what the last fdatasync
    /// made durable. After a failed fdatasync the kernel may hold the
    /// records in its page cache, marked clean: a restart would read them
    /// back as if they were durable, and a power loss later lose them.
    pub fn discard_unsynced(&mut self) -> io::Result<()> {
        self.file.set_len(self.durable_len)
    }

    /// Appends framed records and makes them durable.
    pub fn append(&mut self, records: &[u8]) -> io::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let injected = |what| io::Error::other(format!("injected {what} failure"));
        if let Some(f) = &self.faults {
            if f.fail_writes.load(Relaxed) {
                return Err(injected("write"));
            }
        }
        self.file.write_all(records)?;
        if let Some(f) = &self.faults {
            std::thread::sleep(std::time::Duration::from_millis(
                f.sync_delay_ms.load(Relaxed),
            ));
            if f.fail_syncs.load(Relaxed) {
                return Err(injected("fdatasync"));
            }
        }
        self.file.sync_data()?;
        self.bytes += records.len() as u64;
        self.durable_len += records.len() as u64;
        Ok(())
    }
}
