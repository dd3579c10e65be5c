//! Start-up: the newest readable snapshot, then the log after it.
//!
//! What is torn and what is damaged follows etcd's WAL: only the newest
//! segment may end in a write a crash cut short (never acknowledged), and
//! only that is cut off. A bad record with valid records after it, or any
//! bad record in an older segment, is damage to acknowledged data: start-up
//! stops, names the file and the byte offset, and changes nothing on disk,
//! unless the operator asked for a repair (`mube-apiserver --repair-log`),
//! which cuts the log at the first bad record and says what it dropped.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use super::frame::Tail;
use super::wal::{self, Segment};
use super::{snapshot, Event, Revision, StoreError, StoredObject};

pub struct Recovered {
    pub revision: Revision,
    pub compacted: Revision,
    pub objects: BTreeMap<Arc<str>, StoredObject>,
    /// The newest `retention` events, oldest first.
    pub history: VecDeque<Arc<Event>>,
    /// The segments kept (all closed; a new one is started for new writes).
    pub segments: Vec<Segment>,
    /// The snapshot loaded, and the one before it (kept as a fallback).
    pub snapshot_revision: Revision,
    pub fallback_revision: Revision,
    pub snapshot_bytes: u64,
    /// Log bytes after the snapshot: what the next snapshot would let go.
    pub log_bytes_since_snapshot: u64,
}

fn corrupt(msg: String) -> StoreError {
    StoreError::Corruption(msg)
}

const REPAIR_HINT: &str = "the log holds acknowledged writes after this point; \
    nothing was changed on disk. Keep a copy of the data directory, then start once with \
    `mube-apiserver --repair-log` to cut the log at the first bad record (the writes after \
    it are lost), or restore from a backup";

pub fn recover(dir: &Path, retention: usize, repair: bool) -> Result<Recovered, StoreError> {
    let io = |e: std::io::Error| StoreError::Io(format!("cannot read {}: {e}", dir.display()));
    let snapshot::Listing {
        snapshots,
        temporaries,
    } = snapshot::list(dir).map_err(io)?;
    for tmp in temporaries {
        // A snapshot the last run did not finish; it was never relied on.
        let _ = std::fs::remove_file(tmp);
    }
    // The newest snapshot that reads back whole; a damaged one is set aside
    // (renamed, not deleted) and the one before it is used with the log
    // after it, which is kept for exactly this.
    let mut objects = BTreeMap::new();
    let mut snapshot_revision = 0;
    let mut fallback_revision = 0;
    let mut snapshot_bytes = 0;
    for (i, (revision, path)) in snapshots.iter().enumerate().rev() {
        // An I/O error stops start-up; only damage sets a snapshot aside.
        let data = std::fs::read(path).map_err(io)?;
        match snapshot::parse(path, &data) {
            Ok((start, items)) => {
                snapshot_revision = start;
                snapshot_bytes = std::fs::metadata(path).map_err(io)?.len();
                objects.extend(items.into_iter().map(|o| (o.key.clone(), o)));
                fallback_revision = i.checked_sub(1).map_or(0, |previous| snapshots[previous].0);
                break;
            }
            Err(e) => {
                let aside = path.with_extension("snap.damaged");
                tracing::error!(
                    snapshot = %path.display(),
                    revision,
                    error = %e,
                    set_aside = %aside.display(),
                    "the newest snapshot cannot be read; starting from the one before it and the log after that"
                );
                std::fs::rename(path, &aside).map_err(io)?;
                wal::sync_dir(dir).map_err(io)?;
            }
        }
    }

    let mut segments = wal::list(dir).map_err(io)?;
    let mut history: VecDeque<Arc<Event>> = VecDeque::new();
    let mut last: Option<Revision> = None;
    let mut log_bytes_since_snapshot = 0;
    let mut empty = Vec::new();
    // With --repair-log: the segment the log ends in after a cut.
    let mut cut_at: Option<usize> = None;
    let count = segments.len();
    for (i, segment) in segments.iter().enumerate() {
        let contents = wal::read(segment).map_err(corrupt)?;
        let is_last = i + 1 == count;
        let last_good = contents
            .records
            .last()
            .map_or(last.unwrap_or(segment.first.saturating_sub(1)), |(e, _)| {
                e.revision
            });
        let at = || {
            format!(
                "{} at byte {} (after revision {last_good})",
                segment.path.display(),
                contents.valid_len,
            )
        };
        let mut cut_here = false;
        match contents.tail {
            Tail::Clean => {}
            Tail::Torn | Tail::Zeroed if is_last => {
                // The write in progress when the process or machine stopped;
                // it was never acknowledged. Cut it off so the segment reads
                // cleanly next time.
                tracing::warn!(
                    segment = %segment.path.display(),
                    kept_bytes = contents.valid_len,
                    dropped_bytes = contents.file_len - contents.valid_len,
                    zeroed = contents.tail == Tail::Zeroed,
                    "dropping a torn write at the end of the log"
                );
                truncate(&segment.path, contents.valid_len).map_err(io)?;
            }
            tail if repair => {
                // Cut at the first bad record. Damage at or below the
                // snapshot only cost history: the segments after it are
                // kept (replay skips the gap). Above it, the log ends here.
                let covered = last_good < snapshot_revision;
                let later: Vec<&Segment> = if covered {
                    Vec::new()
                } else {
                    segments[i + 1..].iter().collect()
                };
                let mut records = contents.records_after + usize::from(tail != Tail::Zeroed);
                let mut bytes = contents.file_len - contents.valid_len;
                for s in &later {
                    let c = wal::read(s).map_err(corrupt)?;
                    records += c.records.len() + c.records_after;
                    bytes += c.file_len;
                }
                tracing::warn!(
                    segment = %segment.path.display(),
                    offset = contents.valid_len,
                    after_revision = last_good,
                    dropped_records = records,
                    dropped_bytes = bytes,
                    dropped_segments = later.len(),
                    "--repair-log: cutting the log at its first bad record"
                );
                truncate(&segment.path, contents.valid_len).map_err(io)?;
                for s in later {
                    std::fs::remove_file(&s.path).map_err(io)?;
                }
                wal::sync_dir(dir).map_err(io)?;
                cut_here = !covered;
            }
            _ => {
                let newer = count - i - 1;
                let follow = if newer > 0 {
                    format!(", and {newer} newer segments follow")
                } else {
                    String::new()
                };
                return Err(corrupt(format!(
                    "the write-ahead log is damaged: a bad record in {}, with {} valid records after it{follow}; {REPAIR_HINT}",
                    at(),
                    contents.records_after
                )));
            }
        }
        if contents.records.is_empty() {
            // Created just before the process died, or emptied by a cut.
            empty.push(i);
            if cut_here {
                cut_at = Some(i);
                break;
            }
            continue;
        }
        for (event, bytes) in contents.records {
            let expected = last.map_or(segment.first, |l| l + 1);
            if event.revision != expected {
                // Revisions the snapshot holds the result of: only history
                // is missing (a repair, or old segments whose deletion a
                // power loss half undid). History restarts after the gap.
                if event.revision <= snapshot_revision + 1 && expected <= event.revision {
                    tracing::warn!(
                        segment = %segment.path.display(),
                        missing_from = expected,
                        missing_to = event.revision - 1,
                        snapshot_revision,
                        "the log skips revisions the snapshot covers; history before them is not kept"
                    );
                    history.clear();
                } else {
                    return Err(corrupt(format!(
                        "{}: expected revision {expected}, found {}; the log has a gap",
                        segment.path.display(),
                        event.revision
                    )));
                }
            }
            if last.is_none() && event.revision > snapshot_revision + 1 {
                return Err(corrupt(format!(
                    "the log starts at revision {} but the snapshot read ends at {snapshot_revision}",
                    event.revision
                )));
            }
            last = Some(event.revision);
            if event.revision > snapshot_revision {
                log_bytes_since_snapshot += bytes;
                apply(&mut objects, &event);
            }
            history.push_back(Arc::new(event));
            if history.len() > retention {
                history.pop_front();
            }
        }
        // What a previous run wrote but may not have made durable (a kill
        // between write and fdatasync leaves it in the page cache, where
        // this run just read it): make it durable before serving it, so a
        // power loss now cannot leave a gap before the segment this run
        // starts. Cheap for segments that were already synced.
        wal::sync_path(&segment.path).map_err(io)?;
        if cut_here {
            cut_at = Some(i);
            break;
        }
    }
    if let Some(i) = cut_at {
        segments.truncate(i + 1);
    }
    for i in empty.into_iter().rev() {
        let removed = segments.remove(i);
        std::fs::remove_file(&removed.path).map_err(io)?;
        wal::sync_dir(dir).map_err(io)?;
    }
    // A log that ends before the snapshot (a repair cut it there): new
    // writes follow the snapshot, and history cannot bridge the two.
    if last.is_some_and(|l| l < snapshot_revision) {
        history.clear();
    }

    let newest_object = objects.values().map(|o| o.revision).max().unwrap_or(0);
    let revision = last.unwrap_or(0).max(snapshot_revision).max(newest_object);
    let compacted = history
        .front()
        .map_or(revision, |e| e.revision.saturating_sub(1));
    Ok(Recovered {
        revision,
        compacted,
        objects,
        history,
        segments,
        snapshot_revision,
        fallback_revision,
        snapshot_bytes,
        log_bytes_since_snapshot,
    })
}

fn truncate(path: &Path, len: u64) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// Replays one logged change onto objects loaded from a snapshot: only where
/// it is newer than what is there (a snapshot of format 1 was fuzzy).
fn apply(objects: &mut BTreeMap<Arc<str>, StoredObject>, event: &Event) {
    let current = objects.get(&event.key).map(|o| o.revision);
    if current.is_some_and(|r| r >= event.revision) {
        return;
    }
    match event.after() {
        Some(object) => objects.insert(event.key.clone(), object),
        None => objects.remove(&event.key),
    };
}
