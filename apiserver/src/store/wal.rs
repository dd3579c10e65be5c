//! Write-ahead log segments: `wal-{first revision:020}.log` files of framed
//! change records, appended by one thread and fsynced per group commit.
//!
//! A segment is closed (never written again) once the next one starts, so
//! only the newest segment can end in a torn record; recovery truncates that
//! tail and treats damage anywhere else as corruption.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::codec;
use super::frame::{self, Frames};
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
    File::open(dir)?.sync_all()
}

/// What reading one segment found.
pub struct SegmentContents {
    /// Each record's change and its size in the file.
    pub records: Vec<(Event, u64)>,
    /// Bytes of whole records; anything after them is a torn tail.
    pub valid_len: u64,
    pub file_len: u64,
    pub torn: bool,
}

pub fn read(segment: &Segment) -> Result<SegmentContents, String> {
    let data = std::fs::read(&segment.path)
        .map_err(|e| format!("cannot read {}: {e}", segment.path.display()))?;
    let mut frames = Frames::new(&data);
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
    Ok(SegmentContents {
        records,
        valid_len: frames.valid_len() as u64,
        file_len: data.len() as u64,
        torn: frames.torn,
    })
}

/// The segment being appended to.
pub struct SegmentWriter {
    file: File,
    pub bytes: u64,
}

impl SegmentWriter {
    /// Creates a new, empty segment whose first record will be `first`.
    pub fn create(dir: &Path, first: Revision) -> io::Result<SegmentWriter> {
        let path = segment_path(dir, first);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        // The file must survive a crash before any record in it is acknowledged.
        sync_dir(dir)?;
        Ok(SegmentWriter { file, bytes: 0 })
    }

    /// Appends framed records and makes them durable.
    pub fn append(&mut self, records: &[u8]) -> io::Result<()> {
        self.file.write_all(records)?;
        self.file.sync_data()?;
        self.bytes += records.len() as u64;
        Ok(())
    }
}
