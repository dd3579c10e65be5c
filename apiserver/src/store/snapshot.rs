//! Snapshots: every object at once, so that old log segments can be deleted.
//!
//! A snapshot is the durable state at one revision `S`: the store's read
//! view (a persistent map, cloned in O(1)) is written out while writes go on,
//! without holding any lock. Recovery loads it and replays the log after `S`.
//! (Snapshots of format 1 were "fuzzy", copied from the live map in chunks,
//! so objects could be newer than `S`; replay still applies a record only
//! where it is newer than what the snapshot holds, which reads both.)
//! The file is written as `.tmp`, fsynced, renamed and read back, so a
//! snapshot either exists whole or not at all.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::codec::{self, SnapshotRecord};
use super::frame::{self, Frames};
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

/// Writes the snapshot of `objects`, the whole state at `revision`, and
/// reads it back before it counts. On any failure the temporary file is
/// removed (a failed snapshot must not take the space the log needs).
/// Returns the snapshot's size in bytes.
pub fn write<'a>(
    dir: &Path,
    revision: Revision,
    objects: impl Iterator<Item = &'a StoredObject>,
) -> io::Result<u64> {
    let path = snapshot_path(dir, revision);
    let tmp = path.with_extension("tmp");
    let result = write_file(&tmp, &path, revision, objects).and_then(|size| {
        super::wal::sync_dir(dir)?;
        Ok(size)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let size = result?;
    // Read it back before anything older is let go.
    if let Err(e) = verify(&path) {
        let _ = std::fs::remove_file(&path);
        return Err(io::Error::other(format!(
            "the snapshot did not read back: {e}"
        )));
    }
    Ok(size)
}

fn write_file<'a>(
    tmp: &Path,
    path: &Path,
    revision: Revision,
    objects: impl Iterator<Item = &'a StoredObject>,
) -> io::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(tmp)?);
    let mut buf = Vec::with_capacity(1 << 20);
    buf.extend_from_slice(codec::SNAPSHOT_FILE_MAGIC);
    codec::put_snapshot_header(&mut buf, revision);
    let mut count = 0u64;
    for object in objects {
        codec::put_snapshot_object(&mut buf, object);
        count += 1;
        if buf.len() >= 1 << 20 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    codec::put_snapshot_trailer(&mut buf, count);
    out.write_all(&buf)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let size = file.metadata()?.len();
    drop(file);
    std::fs::rename(tmp, path)?;
    Ok(size)
}

/// Checks every frame and the trailer's count, reading the file a frame at
/// a time and keeping nothing (a snapshot can be hundreds of megabytes).
pub fn verify(path: &Path) -> Result<Revision, String> {
    let corrupt = |what: &str| format!("snapshot {} is corrupt: {what}", path.display());
    let file = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let size = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    let mut file = std::io::BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; frame::MAGIC_LEN];
    io::Read::read_exact(&mut file, &mut magic).map_err(|_| corrupt("no magic"))?;
    if &magic != codec::SNAPSHOT_FILE_MAGIC {
        return Err(corrupt("not a snapshot of the current format"));
    }
    let mut frames = frame::FrameReader::new(
        file,
        frame::Format::V2,
        size.saturating_sub(frame::MAGIC_LEN as u64),
    );
    let revision = frames
        .next_frame()
        .map_err(|e| corrupt(&e))?
        .and_then(codec::decode_snapshot_header)
        .ok_or_else(|| corrupt("no header"))?;
    let mut seen = 0u64;
    while let Some(body) = frames.next_frame().map_err(|e| corrupt(&e))? {
        match body.first() {
            Some(b'o') => seen += 1,
            _ => match codec::decode_snapshot_record(body) {
                Some(SnapshotRecord::Trailer { objects }) if objects == seen => {
                    return Ok(revision)
                }
                Some(SnapshotRecord::Trailer { .. }) => {
                    return Err(corrupt("object count does not match"))
                }
                _ => return Err(corrupt("bad record")),
            },
        }
    }
    Err(corrupt("it ends before its trailer"))
}

/// Reads a whole snapshot: its revision and its objects in key order.
#[cfg(test)]
pub fn read(path: &Path) -> Result<(Revision, Vec<StoredObject>), String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(path, &data)
}

/// The revision and objects of the snapshot `data` read from `path`; an
/// error only when the data itself is damaged (reading it is the caller's,
/// so that an I/O error is never taken for damage).
pub fn parse(path: &Path, data: &[u8]) -> Result<(Revision, Vec<StoredObject>), String> {
    let mut objects = Vec::new();
    let revision = parse_with(path, data, |o| objects.push(o))?;
    Ok((revision, objects))
}

fn parse_with(
    path: &Path,
    data: &[u8],
    mut each: impl FnMut(StoredObject),
) -> Result<Revision, String> {
    let corrupt = |what: &str| format!("snapshot {} is corrupt: {what}", path.display());
    let frame::Opened::Frames { format, body, .. } = frame::open(data, codec::SNAPSHOT_FILE_MAGIC)
    else {
        return Err(corrupt("not a snapshot this version of mube can read"));
    };
    let mut frames = Frames::new(body, format);
    let revision = frames
        .next()
        .and_then(codec::decode_snapshot_header)
        .ok_or_else(|| corrupt("no header"))?;
    let mut seen = 0u64;
    for body in frames.by_ref() {
        match codec::decode_snapshot_record(body).ok_or_else(|| corrupt("bad record"))? {
            SnapshotRecord::Object(o) => {
                seen += 1;
                each(o);
            }
            SnapshotRecord::Trailer { objects: n } => {
                if n != seen {
                    return Err(corrupt("object count does not match"));
                }
                return Ok(revision);
            }
        }
    }
    Err(corrupt("it ends before its trailer"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    fn object(i: usize) -> StoredObject {
        StoredObject {
            key: Arc::from(format!("/registry/leases/default/l{i}")),
            revision: i as u64 + 1,
            json: Bytes::from(format!("{{\"i\":{i}}}")),
        }
    }

    #[test]
    fn a_snapshot_is_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let objects: Vec<StoredObject> = (0..1000).map(object).collect();
        let size = write(dir.path(), 1000, objects.iter()).unwrap();
        let path = snapshot_path(dir.path(), 1000);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        let (revision, back) = read(&path).unwrap();
        assert_eq!((revision, back.len()), (1000, 1000));
        assert_eq!(&back[7].json[..], b"{\"i\":7}");
        assert!(verify(&path).is_ok());
        let data = std::fs::read(&path).unwrap();
        // The trailer cut short, or missing altogether.
        std::fs::write(&path, &data[..data.len() - 3]).unwrap();
        assert!(verify(&path).unwrap_err().contains("cut short"));
        std::fs::write(&path, &data[..data.len() - 17]).unwrap();
        assert!(verify(&path)
            .unwrap_err()
            .contains("ends before its trailer"));
        // A flipped bit in an object.
        let mut bad = data.clone();
        bad[data.len() / 2] ^= 0x20;
        std::fs::write(&path, &bad).unwrap();
        assert!(verify(&path).unwrap_err().contains("checksum"));
        assert!(read(&path).is_err());
    }

    /// A snapshot that cannot be completed leaves nothing behind: no
    /// temporary file to fill the disk, however often it is retried.
    #[test]
    fn a_failed_snapshot_removes_its_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The final name is taken by a directory: the rename fails, after
        // the whole temporary file was written.
        std::fs::create_dir(snapshot_path(dir.path(), 5)).unwrap();
        let objects: Vec<StoredObject> = (0..100).map(object).collect();
        for _ in 0..3 {
            assert!(write(dir.path(), 5, objects.iter()).is_err());
        }
        let listing = list(dir.path()).unwrap();
        assert!(listing.temporaries.is_empty(), "{:?}", listing.temporaries);
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
    }
}
