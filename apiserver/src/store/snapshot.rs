//! Snapshots: every object at once, so that old log segments can be deleted.
//!
//! A snapshot is written while writes go on ("fuzzy", as in many databases):
//! it records the revision `S` at which it started, then copies the object
//! map in small chunks, each under the state lock for only a moment. Objects
//! may therefore be newer than `S`; recovery loads the snapshot and replays
//! the log after `S`, applying a record only where it is newer than what the
//! snapshot holds, which yields exactly the state at the log's end. The file
//! is written as `.tmp`, fsynced and renamed, so a snapshot either exists
//! whole or not at all.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::codec::{self, SnapshotRecord};
use super::frame::Frames;
use super::{Revision, StoredObject};

pub fn snapshot_path(dir: &Path, revision: Revision) -> PathBuf {
    dir.join(format!("snapshot-{revision:020}.snap"))
}

/// What a log directory holds besides segments.
pub struct Listing {
    /// Completed snapshots, oldest first.
    pub snapshots: Vec<(Revision, PathBuf)>,
    /// Snapshots a run did not finish.
    pub temporaries: Vec<PathBuf>,
}

pub fn list(dir: &Path) -> io::Result<Listing> {
    let mut snapshots = Vec::new();
    let mut temporaries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(rest) = name.strip_prefix("snapshot-") else {
            continue;
        };
        if rest.ends_with(".tmp") {
            temporaries.push(path);
        } else if let Some(revision) = rest.strip_suffix(".snap").and_then(|r| r.parse().ok()) {
            snapshots.push((revision, path));
        }
    }
    snapshots.sort_by_key(|(r, _)| *r);
    Ok(Listing {
        snapshots,
        temporaries,
    })
}

/// Writes a snapshot that starts at `revision`. `next_chunk(after)` returns
/// the next objects in key order after the key `after` (empty when done);
/// `settle()` is called before the file is committed and must return only
/// once every object handed out is durable in the log (false: give up).
/// Returns the snapshot's size in bytes.
pub fn write(
    dir: &Path,
    revision: Revision,
    mut next_chunk: impl FnMut(Option<&str>) -> Vec<StoredObject>,
    settle: impl FnOnce() -> bool,
) -> io::Result<Option<u64>> {
    let path = snapshot_path(dir, revision);
    let tmp = path.with_extension("tmp");
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    let mut buf = Vec::with_capacity(1 << 20);
    codec::put_snapshot_header(&mut buf, revision);
    let mut count = 0u64;
    let mut after: Option<std::sync::Arc<str>> = None;
    loop {
        let chunk = next_chunk(after.as_deref());
        let Some(last) = chunk.last() else { break };
        after = Some(last.key.clone());
        for object in &chunk {
            codec::put_snapshot_object(&mut buf, object);
        }
        count += chunk.len() as u64;
        out.write_all(&buf)?;
        buf.clear();
    }
    codec::put_snapshot_trailer(&mut buf, count);
    out.write_all(&buf)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    if !settle() {
        drop(file);
        let _ = std::fs::remove_file(&tmp);
        return Ok(None);
    }
    file.sync_all()?;
    let size = file.metadata()?.len();
    drop(file);
    std::fs::rename(&tmp, &path)?;
    super::wal::sync_dir(dir)?;
    Ok(Some(size))
}

/// Reads a whole snapshot: its start revision and its objects in key order.
pub fn read(path: &Path) -> Result<(Revision, Vec<StoredObject>), String> {
    let corrupt = |what: &str| format!("snapshot {} is corrupt: {what}", path.display());
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut frames = Frames::new(&data);
    let revision = frames
        .next()
        .and_then(codec::decode_snapshot_header)
        .ok_or_else(|| corrupt("no header"))?;
    let mut objects = Vec::new();
    for body in frames.by_ref() {
        match codec::decode_snapshot_record(body).ok_or_else(|| corrupt("bad record"))? {
            SnapshotRecord::Object(o) => objects.push(o),
            SnapshotRecord::Trailer { objects: n } => {
                if n != objects.len() as u64 {
                    return Err(corrupt("object count does not match"));
                }
                return Ok((revision, objects));
            }
        }
    }
    Err(corrupt("it ends before its trailer"))
}
