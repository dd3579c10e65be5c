//! Start-up: the newest snapshot, then the log after it.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use super::wal::{self, Segment};
use super::{snapshot, Event, EventKind, Revision, StoreError, StoredObject};

pub struct Recovered {
    pub revision: Revision,
    pub compacted: Revision,
    pub objects: BTreeMap<Arc<str>, StoredObject>,
    /// The newest `retention` events, oldest first.
    pub history: VecDeque<Arc<Event>>,
    /// The segments kept (all closed; a new one is started for new writes).
    pub segments: Vec<Segment>,
    pub snapshot_revision: Revision,
    pub snapshot_bytes: u64,
    /// Log bytes after the snapshot: what the next snapshot would let go.
    pub log_bytes_since_snapshot: u64,
}

fn corrupt(msg: String) -> StoreError {
    StoreError::Backend(msg)
}

pub fn recover(dir: &Path, retention: usize) -> Result<Recovered, StoreError> {
    let io = |e: std::io::Error| corrupt(format!("cannot read {}: {e}", dir.display()));
    let snapshot::Listing {
        snapshots,
        temporaries,
    } = snapshot::list(dir).map_err(io)?;
    for tmp in temporaries {
        // A snapshot the last run did not finish; it was never relied on.
        let _ = std::fs::remove_file(tmp);
    }
    let mut objects = BTreeMap::new();
    let mut snapshot_revision = 0;
    let mut snapshot_bytes = 0;
    if let Some((_, path)) = snapshots.last() {
        snapshot_bytes = std::fs::metadata(path).map_err(io)?.len();
        let (revision, items) = snapshot::read(path).map_err(corrupt)?;
        snapshot_revision = revision;
        objects.extend(items.into_iter().map(|o| (o.key.clone(), o)));
    }

    let mut segments = wal::list(dir).map_err(io)?;
    let mut history: VecDeque<Arc<Event>> = VecDeque::new();
    let mut last: Option<Revision> = None;
    let mut log_bytes_since_snapshot = 0;
    let count = segments.len();
    let mut empty_tail = None;
    for (i, segment) in segments.iter().enumerate() {
        let contents = wal::read(segment).map_err(corrupt)?;
        let is_last = i + 1 == count;
        if contents.torn {
            if !is_last {
                return Err(corrupt(format!(
                    "{} is damaged after {} bytes, and it is not the newest log segment",
                    segment.path.display(),
                    contents.valid_len
                )));
            }
            // The write in progress when the process died; it was never
            // acknowledged. Cut it off so the segment reads cleanly next time.
            // (Damage in the middle of the newest segment looks the same and
            // would also cut off what follows; the byte counts tell them apart.)
            tracing::warn!(
                segment = %segment.path.display(),
                kept_bytes = contents.valid_len,
                dropped_bytes = contents.file_len - contents.valid_len,
                "dropping a torn record at the end of the log"
            );
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&segment.path)
                .map_err(io)?;
            file.set_len(contents.valid_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        if contents.records.is_empty() {
            if is_last {
                empty_tail = Some(i);
                continue;
            }
            return Err(corrupt(format!(
                "log segment {} is empty but is not the newest",
                segment.path.display()
            )));
        }
        for (event, bytes) in contents.records {
            let expected = last.map_or(segment.first, |l| l + 1);
            if event.revision != expected {
                return Err(corrupt(format!(
                    "{}: expected revision {expected}, found {}; the log has a gap",
                    segment.path.display(),
                    event.revision
                )));
            }
            if last.is_none() && event.revision > snapshot_revision + 1 {
                return Err(corrupt(format!(
                    "the log starts at revision {} but the newest snapshot ends at {snapshot_revision}",
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
    }
    if let Some(i) = empty_tail {
        // Created just before the process died; holds nothing.
        let removed = segments.remove(i);
        std::fs::remove_file(&removed.path).map_err(io)?;
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
        snapshot_bytes,
        log_bytes_since_snapshot,
    })
}

/// Replays one logged change onto objects loaded from a fuzzy snapshot:
/// only where it is newer than what is there.
fn apply(objects: &mut BTreeMap<Arc<str>, StoredObject>, event: &Event) {
    let current = objects.get(&event.key).map(|o| o.revision);
    if current.is_some_and(|r| r >= event.revision) {
        return;
    }
    match event.kind {
        EventKind::Deleted => {
            objects.remove(&event.key);
        }
        EventKind::Added | EventKind::Modified => {
            objects.insert(
                event.key.clone(),
                StoredObject {
                    key: event.key.clone(),
                    revision: event.revision,
                    json: event.object.clone(),
                },
            );
        }
    }
}
