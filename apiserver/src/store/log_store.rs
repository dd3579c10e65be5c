//! The embedded default store: the current objects and recent history in
//! memory, made durable by an append-only write-ahead log of our own, with
//! group commit, log segments, and snapshots that let old segments go.
//!
//! Why not an embedded database: sled 0.34 (what mube started on) spent most
//! of each heartbeat's CPU in its own write path and never reclaimed its log
//! as fast as 100,000 leases were overwritten (the data directory grew past
//! 2 GiB in a minute; BENCHMARKS.md). The access pattern here is simple — every
//! read is served from memory, every write is an append — so the log is the
//! whole storage engine, and its space is reclaimed by deleting files.
//!
//! Write path: under one short lock a write takes the next revision, checks
//! its precondition against the object map, applies it in memory, appends its
//! log record to the pending buffer and its event to the history ring. It then
//! waits. One flusher thread repeatedly takes the whole pending buffer, writes
//! it and fsyncs once (group commit), marks everything up to it durable (waking
//! those writers together) and only then publishes the events to watchers, so
//! a watcher never sees a change that `kill -9` could take back.
//!
//! Space: the log is cut into segments. A compactor thread writes a snapshot
//! of the object map whenever the log since the last one has grown past the
//! snapshot's own size, then deletes every segment whose records are all both
//! in a snapshot and older than the retained history. Nothing of this runs on
//! the write path; writers never wait for it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use super::recovery::{self, Recovered};
use super::wal::{self, Segment, SegmentWriter};
use super::watch::{History, WatchStream};
use super::{
    check_revision, codec, resource_of, snapshot, Event, EventKind, ListResult, Preconditions,
    Revision, Store, StoreError, StoredObject,
};

/// Tuning for the log store; see `configs/apiserver.yaml` for the user-facing names.
#[derive(Debug, Clone)]
pub struct LogStoreOptions {
    /// How many change events history keeps for resuming watches.
    pub history_retention: u64,
    /// Events older than this are dropped from history even below
    /// `history_retention`: a small cluster would otherwise keep (in memory
    /// and on disk) days of lease renewals no watcher will ask for.
    pub history_max_age: Duration,
    /// Events a watcher may fall behind before it is dropped.
    pub watch_buffer: usize,
    /// A log segment is closed once it holds this many bytes. Snapshots are
    /// considered when one closes, and space is freed a segment at a time.
    pub segment_bytes: u64,
}

/// Objects copied per lock acquisition while a snapshot is written: small
/// enough that writers barely notice (well under a millisecond).
const SNAPSHOT_CHUNK: usize = 512;

struct State {
    revision: Revision,
    objects: BTreeMap<Arc<str>, StoredObject>,
    /// Events `(compacted, revision]`, oldest first, with when they were
    /// written (or, after a restart, loaded).
    history: VecDeque<(Instant, Arc<Event>)>,
    /// Durable in order but not yet published to watchers.
    unpublished: Vec<Arc<Event>>,
    /// Framed log records not yet handed to the flusher.
    pending: Vec<u8>,
    /// The revision of the first record in `pending`.
    pending_first: Revision,
    closed: bool,
    /// Set when the log could not be written: nothing more is acknowledged.
    failed: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Durable {
    upto: Revision,
    failed: bool,
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    /// Signalled when `pending` gains records or the store closes.
    work: Condvar,
    /// Per-resource live feeds. Held while a batch is published and while a
    /// watcher subscribes, so that subscribe + read of `published` is atomic
    /// with respect to publishing (no event can fall between history and live).
    channels: Mutex<HashMap<String, broadcast::Sender<Arc<Event>>>>,
    published: Arc<AtomicU64>,
    /// The newest revision dropped from history: written only under the
    /// state lock (with `history`), read without it by watches and cleanup.
    compacted: AtomicU64,
    durable: watch::Sender<Durable>,
    /// Every segment on disk, oldest first; the last is being appended to.
    segments: Mutex<Vec<Segment>>,
    snapshot_revision: AtomicU64,
    /// Log bytes written since the newest snapshot started.
    log_since_snapshot: AtomicU64,
    last_snapshot_bytes: AtomicU64,
    options: LogStoreOptions,
}

pub struct LogStore {
    shared: Arc<Shared>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    compactor: Mutex<Option<mpsc::Sender<()>>>,
    _lock: File,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Holds the data directory for one process: a second API server on the same
/// directory would interleave two logs.
fn lock_data_dir(dir: &Path) -> Result<File, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        backend(format!(
            "cannot create data directory {}: {e}",
            dir.display()
        ))
    })?;
    let lock_path = dir.join("apiserver.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| backend(format!("cannot open {}: {e}", lock_path.display())))?;
    if lock.try_lock().is_err() {
        return Err(backend(format!(
            "data directory {} is in use by another mube-apiserver (lock {} is held); stop it or choose another dataDir",
            dir.display(),
            lock_path.display()
        )));
    }
    Ok(lock)
}

impl LogStore {
    /// Opens (or creates) the store under `dir`. Fails if another API server
    /// already holds that directory.
    pub fn open(dir: &Path, options: LogStoreOptions) -> Result<LogStore, StoreError> {
        let lock = lock_data_dir(dir)?;
        if dir.join("store").join("conf").exists() {
            tracing::warn!(
                path = %dir.join("store").display(),
                "found data from an older mube (sled store); it is not read any more: \
                 nodes are registered again from the config, agents renew their leases"
            );
        }
        let log_dir = dir.join("log");
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| backend(format!("cannot create {}: {e}", log_dir.display())))?;
        let retention = usize::try_from(options.history_retention.max(1)).unwrap_or(usize::MAX);
        let Recovered {
            revision,
            compacted,
            objects,
            history,
            mut segments,
            snapshot_revision,
            snapshot_bytes,
            log_bytes_since_snapshot,
        } = recovery::recover(&log_dir, retention)?;
        let writer = SegmentWriter::create(&log_dir, revision + 1).map_err(|e| {
            backend(format!(
                "cannot start a log segment in {}: {e}",
                log_dir.display()
            ))
        })?;
        segments.push(Segment {
            first: revision + 1,
            path: wal::segment_path(&log_dir, revision + 1),
        });
        tracing::info!(
            revision,
            objects = objects.len(),
            history = history.len(),
            segments = segments.len(),
            snapshot_revision,
            "store recovered"
        );

        let (durable, _) = watch::channel(Durable {
            upto: revision,
            failed: false,
        });
        let shared = Arc::new(Shared {
            dir: log_dir,
            state: Mutex::new(State {
                revision,
                objects,
                history: {
                    let loaded = Instant::now();
                    history.into_iter().map(|e| (loaded, e)).collect()
                },
                unpublished: Vec::new(),
                pending: Vec::new(),
                pending_first: 0,
                closed: false,
                failed: None,
            }),
            work: Condvar::new(),
            channels: Mutex::new(HashMap::new()),
            published: Arc::new(AtomicU64::new(revision)),
            compacted: AtomicU64::new(compacted),
            durable,
            segments: Mutex::new(segments),
            snapshot_revision: AtomicU64::new(snapshot_revision),
            log_since_snapshot: AtomicU64::new(log_bytes_since_snapshot),
            last_snapshot_bytes: AtomicU64::new(snapshot_bytes),
            options,
        });
        let (tick, ticks) = mpsc::channel();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(f)
                .map_err(|e| backend(format!("cannot start the {name} thread: {e}")))
        };
        let s = shared.clone();
        let compactor_tick = tick.clone();
        let flusher = spawn(
            "mube-log-flush",
            Box::new(move || flusher(s, writer, compactor_tick)),
        )?;
        let s = shared.clone();
        spawn("mube-log-compact", Box::new(move || compactor(s, ticks)))?;
        // Look once at start-up: a log replayed from a long run may already
        // be worth a snapshot.
        let _ = tick.send(());
        Ok(LogStore {
            shared,
            flusher: Mutex::new(Some(flusher)),
            compactor: Mutex::new(Some(tick)),
            _lock: lock,
        })
    }

    /// Applies one write under the state lock, then waits until it is durable.
    async fn write(
        &self,
        key: &str,
        apply: impl FnOnce(Option<&StoredObject>) -> Result<Option<Value>, StoreError>,
    ) -> Result<StoredObject, StoreError> {
        let (result, revision) = {
            let mut state = self.shared.lock_state();
            if state.closed {
                return Err(StoreError::Closed);
            }
            if let Some(failed) = &state.failed {
                return Err(backend(failed));
            }
            let current = state.objects.get(key).cloned();
            let next = apply(current.as_ref())?;
            let revision = state.revision + 1;
            let key: Arc<str> = current
                .as_ref()
                .map(|c| c.key.clone())
                .unwrap_or_else(|| Arc::from(key));
            let (kind, json) = match next {
                Some(value) => (
                    if current.is_some() {
                        EventKind::Modified
                    } else {
                        EventKind::Added
                    },
                    codec::stamp(value, revision)?,
                ),
                None => {
                    let last = current.as_ref().ok_or_else(|| StoreError::NotFound {
                        key: key.to_string(),
                    })?;
                    (EventKind::Deleted, codec::stamp(last.value()?, revision)?)
                }
            };
            let event = Arc::new(Event {
                revision,
                kind,
                key: key.clone(),
                object: json.clone(),
                previous: current.map(|c| c.json),
            });
            if state.pending.is_empty() {
                state.pending_first = revision;
            }
            codec::put_event(&mut state.pending, &event);
            state.revision = revision;

            // History keeps the newest `history_retention` events, none older
            // than `history_max_age`. Trimming happens here, a few events per
            // write: bounded work on every write, never a long pause.
            let now = Instant::now();
            state.history.push_back((now, event.clone()));
            let retention = self.shared.options.history_retention.max(1) as usize;
            let max_age = self.shared.options.history_max_age;
            while let Some((written, old)) = state.history.front() {
                let expired = now.duration_since(*written) > max_age && old.revision < revision;
                if state.history.len() <= retention && !expired {
                    break;
                }
                self.shared.compacted.store(old.revision, Ordering::Release);
                state.history.pop_front();
            }

            let stored = StoredObject {
                key: key.clone(),
                revision,
                json,
            };
            match kind {
                EventKind::Deleted => {
                    state.objects.remove(&key);
                }
                _ => {
                    state.objects.insert(key, stored.clone());
                }
            }
            state.unpublished.push(event);
            (stored, revision)
        };
        self.shared.work.notify_one();
        let mut durable = self.shared.durable.subscribe();
        let reached = durable
            .wait_for(|d| d.upto >= revision || d.failed)
            .await
            .map_err(|_| StoreError::Closed)?;
        if reached.upto < revision {
            return Err(backend(
                "the write-ahead log could not be written; see the API server's log",
            ));
        }
        Ok(result)
    }
}

impl Drop for LogStore {
    /// Without `close`, still let the flusher drain what is pending and end
    /// (it holds the shared state and would otherwise wait forever).
    fn drop(&mut self) {
        self.shared.lock_state().closed = true;
        self.shared.work.notify_one();
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // The state is only changed in whole steps under the lock, and the
        // log is the source of truth after a restart; a poisoned lock (a
        // panic elsewhere while holding it) is still safe to keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_channels(&self) -> MutexGuard<'_, HashMap<String, broadcast::Sender<Arc<Event>>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_segments(&self) -> MutexGuard<'_, Vec<Segment>> {
        self.segments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watchers get the events up to `upto`, in order.
    fn publish(&self, upto: Revision) {
        let events: Vec<Arc<Event>> = {
            let mut s = self.lock_state();
            let n = s.unpublished.partition_point(|e| e.revision <= upto);
            s.unpublished.drain(..n).collect()
        };
        let channels = self.lock_channels();
        for event in events {
            if let Some(tx) = channels.get(resource_of(&event.key)) {
                // No receivers is fine: nobody is watching this resource.
                let _ = tx.send(event);
            }
        }
        self.published.store(upto, Ordering::Release);
    }

    /// The log could not be written: stop acknowledging anything. What was
    /// acknowledged before is on disk; what is pending is reported failed.
    fn fail(&self, error: String) {
        tracing::error!(%error, "the write-ahead log failed; writes are refused until the API server restarts");
        self.lock_state().failed = Some(format!("the write-ahead log failed: {error}"));
        self.durable.send_modify(|d| d.failed = true);
    }
}

/// The group-commit loop, on its own thread: one write + fsync covers every
/// record pending when it starts; then those writers are woken and their
/// events published.
fn flusher(shared: Arc<Shared>, mut segment: SegmentWriter, compactor: mpsc::Sender<()>) {
    let mut spare = Vec::new();
    loop {
        let (mut records, first, upto) = {
            let mut s = shared.lock_state();
            while s.pending.is_empty() && !s.closed {
                s = shared.work.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if s.pending.is_empty() {
                return;
            }
            let records = std::mem::replace(&mut s.pending, std::mem::take(&mut spare));
            (records, s.pending_first, s.revision)
        };
        if segment.bytes >= shared.options.segment_bytes {
            let started = Instant::now();
            match SegmentWriter::create(&shared.dir, first) {
                Ok(next) => {
                    tracing::debug!(
                        first,
                        micros = started.elapsed().as_micros() as u64,
                        "log segment started"
                    );
                    segment = next;
                    shared.lock_segments().push(Segment {
                        first,
                        path: wal::segment_path(&shared.dir, first),
                    });
                    let _ = compactor.send(());
                }
                Err(e) => {
                    shared.fail(format!("cannot start a new log segment: {e}"));
                    return;
                }
            }
        }
        if let Err(e) = segment.append(&records) {
            shared.fail(format!("cannot write the log: {e}"));
            return;
        }
        shared
            .log_since_snapshot
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        shared.durable.send_modify(|d| d.upto = upto);
        shared.publish(upto);
        records.clear();
        spare = records;
    }
}

/// Background space reclamation: snapshots and deleting old segments.
fn compactor(shared: Arc<Shared>, ticks: mpsc::Receiver<()>) {
    while ticks.recv().is_ok() {
        // Several ticks may have queued up while a snapshot was written.
        while ticks.try_recv().is_ok() {}
        let since = shared.log_since_snapshot.load(Ordering::Relaxed);
        let threshold = shared
            .last_snapshot_bytes
            .load(Ordering::Relaxed)
            .max(2 * shared.options.segment_bytes);
        if since >= threshold {
            if let Err(e) = take_snapshot(&shared, since) {
                tracing::error!(error = %e, "snapshot failed; old log segments are kept");
            }
        }
        delete_old_segments(&shared);
    }
}

fn take_snapshot(shared: &Shared, log_bytes_before: u64) -> std::io::Result<()> {
    let started = Instant::now();
    let start = shared.lock_state().revision;
    // The longest the snapshot held the state lock (one chunk's copy): the
    // longest it can have made a writer wait.
    let mut longest_pause = Duration::ZERO;
    let next_chunk = |after: Option<&str>| -> Vec<StoredObject> {
        let state = shared.lock_state();
        let locked = Instant::now();
        let from = match after {
            Some(k) => std::ops::Bound::Excluded(k),
            None => std::ops::Bound::Unbounded,
        };
        let chunk = state
            .objects
            .range::<str, _>((from, std::ops::Bound::Unbounded))
            .take(SNAPSHOT_CHUNK)
            .map(|(_, o)| o.clone())
            .collect::<Vec<_>>();
        drop(state);
        longest_pause = longest_pause.max(locked.elapsed());
        chunk
    };
    // Objects copied late may be newer than `start`; they must be durable
    // in the log before the snapshot may stand in for it.
    let settle = || {
        let end = shared.lock_state().revision;
        loop {
            let d = *shared.durable.borrow();
            if d.upto >= end {
                return true;
            }
            if d.failed || shared.lock_state().closed {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let Some(size) = snapshot::write(&shared.dir, start, next_chunk, settle)? else {
        return Ok(());
    };
    shared.snapshot_revision.store(start, Ordering::Release);
    shared
        .log_since_snapshot
        .fetch_sub(log_bytes_before, Ordering::Relaxed);
    shared.last_snapshot_bytes.store(size, Ordering::Relaxed);
    for (revision, path) in snapshot::list(&shared.dir)?.snapshots {
        if revision < start {
            std::fs::remove_file(path)?;
        }
    }
    tracing::debug!(
        revision = start,
        bytes = size,
        millis = started.elapsed().as_millis() as u64,
        longest_pause_us = longest_pause.as_micros() as u64,
        "snapshot written"
    );
    Ok(())
}

/// Deletes the oldest segments whose every record is both covered by the
/// snapshot and older than the history watchers may still ask for.
fn delete_old_segments(shared: &Shared) {
    let limit = shared
        .snapshot_revision
        .load(Ordering::Acquire)
        .min(shared.compacted.load(Ordering::Acquire));
    let doomed: Vec<Segment> = {
        let mut segments = shared.lock_segments();
        let n = (0..segments.len().saturating_sub(1))
            .take_while(|&i| segments[i + 1].first - 1 <= limit)
            .count();
        segments.drain(..n).collect()
    };
    for segment in doomed {
        if let Err(e) = std::fs::remove_file(&segment.path) {
            tracing::warn!(segment = %segment.path.display(), error = %e, "cannot delete an old log segment");
        }
    }
}

struct LogHistory {
    shared: Arc<Shared>,
}

impl History for LogHistory {
    fn read(
        &self,
        after: Revision,
        upto: Revision,
        max: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let state = self.shared.lock_state();
        let Some(front) = state.history.front().map(|(_, e)| e.revision) else {
            return Ok(Vec::new());
        };
        // Revisions in history are consecutive, so the position is arithmetic.
        let skip = usize::try_from((after + 1).saturating_sub(front)).unwrap_or(usize::MAX);
        Ok(state
            .history
            .range(skip.min(state.history.len())..)
            .map(|(_, e)| e)
            .take_while(|e| e.revision <= upto)
            .take(max)
            .cloned()
            .collect())
    }

    fn compacted(&self) -> Revision {
        self.shared.compacted.load(Ordering::Acquire)
    }
}

#[async_trait]
impl Store for LogStore {
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        Ok(self.shared.lock_state().objects.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<ListResult, StoreError> {
        let state = self.shared.lock_state();
        let items = state
            .objects
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        Ok(ListResult {
            items,
            revision: state.revision,
        })
    }

    async fn create(&self, key: &str, object: Value) -> Result<StoredObject, StoreError> {
        self.write(key, |current| match current {
            Some(_) => Err(StoreError::AlreadyExists {
                key: key.to_string(),
            }),
            None => Ok(Some(object)),
        })
        .await
    }

    async fn update(
        &self,
        key: &str,
        expected: Option<Revision>,
        object: Value,
    ) -> Result<StoredObject, StoreError> {
        self.write(key, |current| {
            check_revision(key, current, expected)?;
            Ok(Some(object))
        })
        .await
    }

    async fn delete(
        &self,
        key: &str,
        preconditions: &Preconditions,
    ) -> Result<StoredObject, StoreError> {
        self.write(key, |current| {
            let current = current.ok_or_else(|| StoreError::NotFound {
                key: key.to_string(),
            })?;
            preconditions.check(current)?;
            Ok(None)
        })
        .await
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let (live, published) = {
            let mut channels = self.shared.lock_channels();
            let tx = channels
                .entry(resource_of(prefix).to_string())
                .or_insert_with(|| broadcast::channel(self.shared.options.watch_buffer.max(1)).0);
            (
                tx.subscribe(),
                self.shared.published.load(Ordering::Acquire),
            )
        };
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let history = Arc::new(LogHistory {
            shared: self.shared.clone(),
        });
        Ok(WatchStream::new(
            prefix,
            after,
            published,
            history,
            live,
            self.shared.published.clone(),
        ))
    }

    fn compacted(&self) -> Revision {
        self.shared.compacted.load(Ordering::Acquire)
    }

    fn failure(&self) -> Option<String> {
        self.shared.lock_state().failed.clone()
    }

    async fn close(&self) {
        self.shared.lock_state().closed = true;
        self.shared.work.notify_one();
        // The compactor stops at its next look; a snapshot it is writing is
        // a temporary file the next start removes.
        self.compactor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let handle = self
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = handle {
            // The flusher drains what is pending before it returns.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        // Dropping the senders ends every live watch.
        self.shared.lock_channels().clear();
    }
}
