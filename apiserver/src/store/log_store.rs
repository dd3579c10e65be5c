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
//! its precondition against the writers' map (which holds writes not yet
//! durable, so that the next writer's checks see them), appends its log
//! record to the pending buffer and its event to the history ring. It then
//! waits. One flusher thread repeatedly takes the whole pending buffer,
//! writes it and fsyncs once (group commit), and only then applies the batch
//! to the read view, wakes those writers together and publishes the events
//! to watchers.
//!
//! Reads: every GET, LIST and watch is served from the read view, which holds
//! only durable writes (as etcd applies an entry only once its WAL record is
//! committed): nothing a client sees can be taken back by a crash, so a
//! resourceVersion is never handed out twice. The view is a persistent map
//! (`imbl::OrdMap`, structural sharing), so a list takes it in O(1) and
//! copies it without holding any lock, and a few past views are kept so
//! that every page of a paged list is served at the first page's revision.
//!
//! Failure: once the log cannot be written (an error from write or
//! fdatasync, which is never retried: after a failed fsync the kernel may
//! have dropped the dirty pages), the store stops: the view stays at the last
//! durable revision, writes are refused, watches end, and `failure()` says
//! why, which the HTTP layer turns into 503 for every data request and a
//! failing `/livez` so that a supervisor restarts the process.
//!
//! Medium: the engine above (writers' map, read views, history, watches) is
//! the same whichever medium makes a batch durable: mube's own log (the
//! default) or, with `storage.backend: sled`, an embedded sled database
//! (`open_sled`): the design's embedded store, kept as a choice with its
//! measured limits (README, BENCHMARKS.md). sled keeps the objects and the
//! revision, not the history: after a restart on sled, watches from before
//! it get 410 and relist.
//!
//! Space: the log is cut into segments. A compactor thread writes a snapshot
//! of the read view whenever the log since the last one has grown past the
//! snapshot's own size, reads it back, then deletes every segment whose
//! records are all both in the snapshot before it (kept as a fallback) and
//! older than the retained history. Nothing of this runs on the write path.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use imbl::OrdMap;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use super::recovery::{self, Recovered};
use super::wal::{self, Faults, Segment, SegmentWriter};
use super::watch::{History, WatchStream};
use super::{
    check_revision, codec, resource_of, snapshot, Event, EventKind, ListResult, Preconditions,
    ReadAt, Revision, Store, StoreError, StoredObject,
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
    /// Free bytes a snapshot must leave on the file system, so that the log
    /// can always take new writes: without them the snapshot is skipped (and
    /// `/readyz` says so).
    pub reserve_bytes: u64,
    /// Start even though the log is damaged, cutting it at the first bad
    /// record (`mube-apiserver --repair-log`).
    pub repair: bool,
    /// Injected I/O errors, for tests.
    pub faults: Option<Arc<Faults>>,
}

impl LogStoreOptions {
    /// The defaults the API server uses, with `segment_bytes` per segment.
    pub fn with_segment_bytes(segment_bytes: u64) -> LogStoreOptions {
        LogStoreOptions {
            history_retention: 100_000,
            history_max_age: Duration::from_secs(300),
            watch_buffer: 4096,
            segment_bytes,
            reserve_bytes: 2 * segment_bytes,
            repair: false,
            faults: None,
        }
    }
}

/// Past read views kept for the later pages of paged lists and for exact
/// reads: each holds on to the objects changed since, so only a few.
const KEPT_VIEWS: usize = 4;

/// History events dropped at most per write (see `write`).
const HISTORY_TRIM_PER_WRITE: usize = 64;

/// How often the compactor lets go of kept views no read can use any more.
const KEPT_VIEW_SWEEP: Duration = Duration::from_secs(1);

/// History events copied per lock acquisition when a past view is rebuilt.
const HISTORY_CHUNK: usize = 4096;

/// The durable state at one revision, shared by every reader.
struct View {
    revision: Revision,
    objects: OrdMap<Arc<str>, StoredObject>,
}

struct State {
    /// The newest revision handed out (durable or not).
    revision: Revision,
    /// What writers check their preconditions against: the read view plus
    /// the writes not yet durable. Never read by clients.
    objects: BTreeMap<Arc<str>, StoredObject>,
    /// Events `(compacted, revision]`, oldest first, with when they were
    /// written (or, after a restart, loaded).
    history: VecDeque<(Instant, Arc<Event>)>,
    /// Framed log records not yet handed to the flusher, and their events.
    pending: Vec<u8>,
    pending_events: Vec<Arc<Event>>,
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
    /// Whether writes are framed as log records (the log medium).
    log_records: bool,
    state: Mutex<State>,
    /// Signalled when `pending` gains records or the store closes.
    work: Condvar,
    /// The durable state every read is served from; replaced (not changed)
    /// by the flusher after each fsync.
    view: RwLock<Arc<View>>,
    /// Recent past views, with when they were last used.
    kept: Mutex<VecDeque<(Instant, Arc<View>)>>,
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
    /// The newest snapshot, and the one before it, kept with the log after
    /// it in case the newest cannot be read at the next start.
    snapshot_revision: AtomicU64,
    fallback_revision: AtomicU64,
    /// Log bytes written since the newest snapshot.
    log_since_snapshot: AtomicU64,
    last_snapshot_bytes: AtomicU64,
    /// Why the last snapshot was skipped or failed, until one succeeds.
    snapshot_trouble: Mutex<Option<String>>,
    options: LogStoreOptions,
}

pub struct LogStore {
    shared: Arc<Shared>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    compactor: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    _lock: File,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Holds the data directory for one process: a second API server on the same
/// directory would interleave two logs.
fn lock_data_dir(dir: &Path) -> Result<File, StoreError> {
    wal::create_dir_durably(dir).map_err(|e| {
        io(format!(
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
        .map_err(|e| io(format!("cannot open {}: {e}", lock_path.display())))?;
    if lock.try_lock().is_err() {
        return Err(io(format!(
            "data directory {} is in use by another mube-apiserver (lock {} is held); stop it or choose another dataDir",
            dir.display(),
            lock_path.display()
        )));
    }
    Ok(lock)
}

impl LogStore {
    /// Opens (or creates) the store under `dir`. Fails if another API server
    /// already holds that directory, or if the log is damaged (see `recovery`).
    pub fn open(dir: &Path, options: LogStoreOptions) -> Result<LogStore, StoreError> {
        let lock = lock_data_dir(dir)?;
        if dir.join("store").join("conf").exists() {
            tracing::warn!(
                path = %dir.join("store").display(),
                "found data from an older mube (sled store); it is not read any more: \
                 nodes are registered again from the config, agents renew their leases"
            );
        }
        if dir.join("sled").exists() {
            tracing::warn!(
                path = %dir.join("sled").display(),
                "found a sled database from storage.backend: sled; the log backend does not read it"
            );
        }
        let log_dir = dir.join("log");
        wal::create_dir_durably(&log_dir)
            .map_err(|e| io(format!("cannot create {}: {e}", log_dir.display())))?;
        let retention = usize::try_from(options.history_retention.max(1)).unwrap_or(usize::MAX);
        let mut recovered = recovery::recover(&log_dir, retention, options.repair)?;
        let first = recovered.revision + 1;
        let writer =
            SegmentWriter::create(&log_dir, first, options.faults.clone()).map_err(|e| {
                io(format!(
                    "cannot start a log segment in {}: {e}",
                    log_dir.display()
                ))
            })?;
        recovered.segments.push(Segment {
            first,
            path: wal::segment_path(&log_dir, first),
        });
        tracing::info!(
            revision = recovered.revision,
            objects = recovered.objects.len(),
            history = recovered.history.len(),
            segments = recovered.segments.len(),
            snapshot_revision = recovered.snapshot_revision,
            "store recovered"
        );
        LogStore::start(lock, recovered, log_dir, Medium::Log(writer), options)
    }

    /// Opens (or creates) a sled database under `dir`/sled as the medium
    /// (`storage.backend: sled`); history starts empty at its revision.
    pub fn open_sled(dir: &Path, options: LogStoreOptions) -> Result<LogStore, StoreError> {
        let lock = lock_data_dir(dir)?;
        if dir.join("log").exists() {
            tracing::warn!(
                path = %dir.join("log").display(),
                "found a write-ahead log from storage.backend: log; the sled backend does not read it"
            );
        }
        let path = dir.join("sled");
        let db = sled::Config::new()
            .path(&path)
            // Durability comes from the flusher's group commit, not a timer.
            .flush_every_ms(None)
            // Reads are served from memory (the read view); sled's cache
            // only serves start-up, so it need not take its default 1 GiB.
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(|e| {
                io(format!(
                    "cannot open the sled store {}: {e}",
                    path.display()
                ))
            })?;
        let revision = db
            .get(SLED_REVISION)
            .map_err(|e| io(format!("sled: {e}")))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let mut objects = BTreeMap::new();
        for item in db.scan_prefix(SLED_OBJECT) {
            let (k, v) = item.map_err(|e| io(format!("sled: {e}")))?;
            let key: Arc<str> = std::str::from_utf8(&k[SLED_OBJECT.len()..])
                .map_err(|_| StoreError::Corruption("a sled key that is not UTF-8".into()))?
                .into();
            let json = bytes::Bytes::copy_from_slice(&v);
            let object_revision = codec::revision_of(&json).ok_or_else(|| {
                StoreError::Corruption(format!("stored object {key} has no resourceVersion"))
            })?;
            objects.insert(
                key.clone(),
                StoredObject {
                    key,
                    revision: object_revision,
                    json,
                },
            );
        }
        tracing::info!(revision, objects = objects.len(), "sled store opened");
        LogStore::start(
            lock,
            Recovered {
                revision,
                compacted: revision,
                objects,
                history: VecDeque::new(),
                segments: Vec::new(),
                snapshot_revision: 0,
                fallback_revision: 0,
                snapshot_bytes: 0,
                log_bytes_since_snapshot: 0,
            },
            path,
            Medium::Sled(db),
            options,
        )
    }

    /// The engine on recovered state, with its flusher and compactor.
    fn start(
        lock: File,
        recovered: Recovered,
        dir: PathBuf,
        medium: Medium,
        options: LogStoreOptions,
    ) -> Result<LogStore, StoreError> {
        let Recovered {
            revision,
            compacted,
            objects,
            history,
            segments,
            snapshot_revision,
            fallback_revision,
            snapshot_bytes,
            log_bytes_since_snapshot,
        } = recovered;
        let log_records = matches!(medium, Medium::Log(_));
        let view: OrdMap<Arc<str>, StoredObject> = objects
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (durable, _) = watch::channel(Durable {
            upto: revision,
            failed: false,
        });
        let shared = Arc::new(Shared {
            dir,
            log_records,
            state: Mutex::new(State {
                revision,
                objects,
                history: {
                    let loaded = Instant::now();
                    history.into_iter().map(|e| (loaded, e)).collect()
                },
                pending: Vec::new(),
                pending_events: Vec::new(),
                pending_first: 0,
                closed: false,
                failed: None,
            }),
            work: Condvar::new(),
            view: RwLock::new(Arc::new(View {
                revision,
                objects: view.clone(),
            })),
            kept: Mutex::new(VecDeque::new()),
            channels: Mutex::new(HashMap::new()),
            published: Arc::new(AtomicU64::new(revision)),
            compacted: AtomicU64::new(compacted),
            durable,
            segments: Mutex::new(segments),
            snapshot_revision: AtomicU64::new(snapshot_revision),
            fallback_revision: AtomicU64::new(fallback_revision),
            log_since_snapshot: AtomicU64::new(log_bytes_since_snapshot),
            last_snapshot_bytes: AtomicU64::new(snapshot_bytes),
            snapshot_trouble: Mutex::new(None),
            options,
        });
        let (tick, ticks) = mpsc::channel();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(f)
                .map_err(|e| io(format!("cannot start the {name} thread: {e}")))
        };
        let s = shared.clone();
        let compactor_tick = tick.clone();
        let flusher = spawn(
            "mube-log-flush",
            Box::new(move || flusher(s, medium, view, compactor_tick)),
        )?;
        let s = shared.clone();
        let compacting = spawn("mube-log-compact", Box::new(move || compactor(s, ticks)))?;
        // Look once at start-up: a log replayed from a long run may already
        // be worth a snapshot.
        let _ = tick.send(());
        Ok(LogStore {
            shared,
            flusher: Mutex::new(Some(flusher)),
            compactor: Mutex::new(Some((tick, compacting))),
            _lock: lock,
        })
    }

    /// Applies one write under the state lock, then waits until it is durable.
    async fn write(
        &self,
        key: &str,
        apply: impl FnOnce(Option<&StoredObject>) -> Result<Option<Value>, StoreError>,
    ) -> Result<StoredObject, StoreError> {
        let mut seen = 0;
        let (result, revision) = match self.apply_locked(key, apply, &mut seen) {
            Ok(written) => written,
            Err(e @ (StoreError::Closed | StoreError::Failed(_))) => return Err(e),
            Err(refused) => return Err(self.once_durable(seen, refused).await),
        };
        self.shared.work.notify_one();
        let mut durable = self.shared.durable.subscribe();
        let reached = durable
            .wait_for(|d| d.upto >= revision || d.failed)
            .await
            .map_err(|_| StoreError::Closed)?
            .upto;
        if reached < revision {
            return Err(StoreError::Failed(self.failure().unwrap_or_else(|| {
                "the write-ahead log could not be written; see the API server's log".into()
            })));
        }
        Ok(result)
    }

    /// The locked half of `write`: the new object and its revision, or why
    /// it was refused; `seen` is the newest revision the decision saw.
    fn apply_locked(
        &self,
        key: &str,
        apply: impl FnOnce(Option<&StoredObject>) -> Result<Option<Value>, StoreError>,
        seen: &mut Revision,
    ) -> Result<(StoredObject, Revision), StoreError> {
        {
            let mut state = self.shared.lock_state();
            *seen = state.revision;
            if state.closed {
                return Err(StoreError::Closed);
            }
            if let Some(failed) = &state.failed {
                return Err(StoreError::Failed(failed.clone()));
            }
            let current = state.objects.get(key).cloned();
            // A refusal is decided against the writers' map, which may hold
            // writes not yet durable (a crash could still take them back):
            // `write` answers it only once what it saw is durable.
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
                derived: Default::default(),
            });
            // Framed for the log; sled takes the events themselves.
            if self.shared.log_records {
                if state.pending.is_empty() {
                    state.pending_first = revision;
                }
                codec::put_event(&mut state.pending, &event);
            }
            state.revision = revision;

            // History keeps the newest `history_retention` events, none older
            // than `history_max_age`. Trimming happens here, a few events per
            // write: bounded work on every write, never a long pause.
            let now = Instant::now();
            state.history.push_back((now, event.clone()));
            let retention = self.shared.options.history_retention.max(1) as usize;
            let max_age = self.shared.options.history_max_age;
            // At most a few per write: after an idle spell (or 5 minutes
            // after a restart, when every loaded event is as old) the rest
            // go over the next writes, never in one long pause.
            let mut budget = HISTORY_TRIM_PER_WRITE;
            while let Some((written, old)) = state.history.front() {
                let expired = now.duration_since(*written) > max_age && old.revision < revision;
                if budget == 0 || (state.history.len() <= retention && !expired) {
                    break;
                }
                budget -= 1;
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
            state.pending_events.push(event);
            Ok((stored, revision))
        }
    }

    /// `error`, once every write up to `seen` is durable; the store's
    /// failure instead if it fails first.
    async fn once_durable(&self, seen: Revision, error: StoreError) -> StoreError {
        let mut durable = self.shared.durable.subscribe();
        let reached = durable
            .wait_for(|d| d.upto >= seen || d.failed)
            .await
            .map(|d| d.upto);
        match reached {
            Ok(upto) if upto >= seen => error,
            Ok(_) => StoreError::Failed(
                self.failure()
                    .unwrap_or_else(|| "the write-ahead log failed".into()),
            ),
            Err(_) => StoreError::Closed,
        }
    }

    /// The durable state exactly at `revision`: the current view, a kept
    /// one, or the current view with history's changes after `revision`
    /// undone (each event carries the state it replaced).
    fn view_at(&self, revision: Revision) -> Result<Arc<View>, StoreError> {
        let current = self.shared.view();
        if revision == current.revision {
            return Ok(current);
        }
        if revision > current.revision {
            return Err(StoreError::TooLarge {
                requested: revision,
                current: current.revision,
            });
        }
        // The window is history's, as for watches: a view kept longer would
        // hold on to memory no limit accounts for.
        let too_old = || StoreError::Compacted {
            requested: revision,
            compacted: self.shared.compacted.load(Ordering::Acquire),
        };
        if revision < self.shared.compacted.load(Ordering::Acquire) {
            return Err(too_old());
        }
        if let Some(view) = self.shared.kept_view(revision) {
            return Ok(view);
        }
        let history = LogHistory {
            shared: self.shared.clone(),
        };
        let mut events: Vec<Arc<Event>> = Vec::new();
        let mut after = revision;
        while after < current.revision {
            let chunk = history.read(after, current.revision, HISTORY_CHUNK)?;
            match chunk.first() {
                Some(first) if first.revision == after + 1 => {}
                // Compaction got there first (or already had).
                _ => return Err(too_old()),
            }
            after = chunk.last().map_or(after, |e| e.revision);
            events.extend(chunk);
        }
        let mut objects = current.objects.clone();
        for event in events.iter().rev() {
            match &event.previous {
                Some(previous) => {
                    let revision = codec::revision_of(previous).ok_or_else(|| {
                        StoreError::Corruption(format!(
                            "history of {} at revision {} holds an object without a resourceVersion",
                            event.key, event.revision
                        ))
                    })?;
                    objects.insert(
                        event.key.clone(),
                        StoredObject {
                            key: event.key.clone(),
                            revision,
                            json: previous.clone(),
                        },
                    );
                }
                None => {
                    objects.remove(&event.key);
                }
            }
        }
        let view = Arc::new(View { revision, objects });
        self.shared.keep(view.clone());
        Ok(view)
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

    fn lock_snapshot_trouble(&self) -> MutexGuard<'_, Option<String>> {
        self.snapshot_trouble
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn lock_kept(&self) -> MutexGuard<'_, VecDeque<(Instant, Arc<View>)>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_view(&self, view: View) {
        let old = std::mem::replace(
            &mut *self.view.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(view),
        );
        // Freeing what only the old view held happens after readers are let in.
        drop(old);
    }

    /// Whether a kept view can still serve a read: inside the history (as
    /// every read at a past revision must be) and used within
    /// `history_max_age`.
    fn usable(&self, used: Instant, view: &View, now: Instant) -> bool {
        view.revision >= self.compacted.load(Ordering::Acquire)
            && now.duration_since(used) <= self.options.history_max_age
    }

    /// Keeps `view` for later pages and exact reads; only the newest
    /// `KEPT_VIEWS` that are still usable.
    fn keep(&self, view: Arc<View>) {
        let now = Instant::now();
        let mut kept = self.lock_kept();
        kept.retain(|(used, v)| self.usable(*used, v, now) && v.revision != view.revision);
        kept.push_back((now, view));
        while kept.len() > KEPT_VIEWS {
            kept.pop_front();
        }
    }

    /// Lets go of kept views no read can use any more: each holds on to
    /// every object changed since it was taken. Runs on the compactor's
    /// thread, so that freeing them costs neither writers nor the flusher.
    fn drop_stale_views(&self) {
        let now = Instant::now();
        let stale: VecDeque<_> = {
            let mut kept = self.lock_kept();
            let (fresh, stale) = kept
                .drain(..)
                .partition(|(used, v)| self.usable(*used, v, now));
            *kept = fresh;
            stale
        };
        // Freed here, after the lock is released.
        drop(stale);
    }

    fn kept_view(&self, revision: Revision) -> Option<Arc<View>> {
        let now = Instant::now();
        let mut kept = self.lock_kept();
        let (used, view) = kept.iter_mut().find(|(_, v)| v.revision == revision)?;
        if !self.usable(*used, view, now) {
            return None;
        }
        *used = now;
        Some(view.clone())
    }

    /// Watchers get `events`, in order, then `published` says they have.
    fn publish(&self, events: Vec<Arc<Event>>, upto: Revision) {
        let channels = self.lock_channels();
        for event in events {
            if let Some(tx) = channels.get(resource_of(&event.key)) {
                // No receivers is fine: nobody is watching this resource.
                let _ = tx.send(event);
            }
        }
        self.published.store(upto, Ordering::Release);
    }

    /// The log could not be written: stop. What was acknowledged before is
    /// on disk and in the read view; what is pending is reported failed and
    /// never becomes visible; watches end (their clients reconnect and are
    /// refused), and `failure()` reports it from now on.
    fn fail(&self, error: String) {
        tracing::error!(
            %error,
            "the write-ahead log failed: the API server stops serving data (503) and /livez fails until it is restarted"
        );
        self.lock_state().failed = Some(format!("the write-ahead log failed: {error}"));
        self.durable.send_modify(|d| d.failed = true);
        self.lock_channels().clear();
    }
}

/// The group-commit loop, on its own thread: one write + fsync covers every
/// record pending when it starts; then the batch is applied to the read view
/// (`objects`, owned here), those writers are woken and the events published.
/// Where the flusher makes each batch durable.
enum Medium {
    Log(SegmentWriter),
    Sled(sled::Db),
}

/// sled's keys: each object under `o` + its key, and the revision.
const SLED_OBJECT: &[u8] = b"o";
const SLED_REVISION: &[u8] = b"m/revision";

/// One batch into sled, then one flush (fsync), as the log's group commit.
fn sled_commit(db: &sled::Db, events: &[Arc<Event>], upto: Revision) -> Result<(), String> {
    let mut batch = sled::Batch::default();
    for event in events {
        let key = [SLED_OBJECT, event.key.as_bytes()].concat();
        match event.kind {
            EventKind::Deleted => batch.remove(key),
            _ => batch.insert(key, event.object.as_ref()),
        }
    }
    batch.insert(SLED_REVISION, &upto.to_be_bytes());
    db.apply_batch(batch).map_err(|e| format!("sled: {e}"))?;
    db.flush().map_err(|e| format!("sled flush: {e}"))?;
    Ok(())
}

fn flusher(
    shared: Arc<Shared>,
    mut medium: Medium,
    mut objects: OrdMap<Arc<str>, StoredObject>,
    compactor: mpsc::Sender<()>,
) {
    let mut spare = Vec::new();
    loop {
        let (mut records, events, first, upto) = {
            let mut s = shared.lock_state();
            while s.pending_events.is_empty() && !s.closed {
                s = shared.work.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if s.pending_events.is_empty() {
                return;
            }
            let records = std::mem::replace(&mut s.pending, std::mem::take(&mut spare));
            let events = std::mem::take(&mut s.pending_events);
            (records, events, s.pending_first, s.revision)
        };
        let committing = Instant::now();
        match &mut medium {
            Medium::Log(segment) => {
                if segment.bytes >= shared.options.segment_bytes {
                    let started = Instant::now();
                    match SegmentWriter::create(&shared.dir, first, shared.options.faults.clone()) {
                        Ok(next) => {
                            tracing::debug!(
                                first,
                                micros = started.elapsed().as_micros() as u64,
                                "log segment started"
                            );
                            *segment = next;
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
                    if let Err(cut) = segment.discard_unsynced() {
                        tracing::error!(error = %cut, "cannot cut the failed write off the log segment");
                    }
                    shared.fail(format!("cannot write the log: {e}"));
                    return;
                }
                shared
                    .log_since_snapshot
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            Medium::Sled(db) => {
                if let Err(e) = sled_commit(db, &events, upto) {
                    shared.fail(e);
                    return;
                }
            }
        }
        let metrics = crate::metrics::metrics();
        metrics
            .commit_duration
            .observe(committing.elapsed().as_secs_f64());
        metrics.commit_writes.observe(events.len() as f64);
        for event in &events {
            match event.after() {
                Some(object) => objects.insert(event.key.clone(), object),
                None => objects.remove(&event.key),
            };
        }
        // Readers first, then the writers: a writer that is told its write
        // is done can read it back.
        shared.set_view(View {
            revision: upto,
            objects: objects.clone(),
        });
        shared.durable.send_modify(|d| d.upto = upto);
        shared.publish(events, upto);
        records.clear();
        spare = records;
    }
}

/// Background space reclamation: snapshots and deleting old segments.
fn compactor(shared: Arc<Shared>, ticks: mpsc::Receiver<()>) {
    loop {
        match ticks.recv_timeout(KEPT_VIEW_SWEEP) {
            Ok(()) => {
                // Several ticks may have queued up while a snapshot was written.
                while ticks.try_recv().is_ok() {}
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                shared.drop_stale_views();
                // A skipped or failed snapshot is tried again (the space may
                // be back), so `/readyz` recovers on an idle server too.
                if shared.lock_snapshot_trouble().is_none() {
                    continue;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        shared.drop_stale_views();
        let since = shared.log_since_snapshot.load(Ordering::Relaxed);
        let threshold = shared
            .last_snapshot_bytes
            .load(Ordering::Relaxed)
            .max(2 * shared.options.segment_bytes);
        if since >= threshold {
            let trouble = take_snapshot(&shared, since).err();
            if let Some(t) = &trouble {
                tracing::error!(problem = %t, "no snapshot was written; old log segments are kept");
            }
            *shared.lock_snapshot_trouble() = trouble;
        }
        delete_old_segments(&shared);
    }
}

/// Bytes of the files under `dir`, its subdirectories included (sled
/// keeps some); what cannot be read counts as nothing.
fn files_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => files_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Free bytes for an unprivileged writer on the file system holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

fn take_snapshot(shared: &Shared, log_bytes_before: u64) -> Result<(), String> {
    let started = Instant::now();
    // The read view is durable and immutable: written without any lock.
    let view = shared.view();
    if view.revision <= shared.snapshot_revision.load(Ordering::Acquire) {
        return Ok(());
    }
    // Never let a snapshot take the space the log needs to accept writes.
    let estimate: u64 = view
        .objects
        .values()
        .map(|o| (o.key.len() + o.json.len() + 32) as u64)
        .sum();
    let free = free_bytes(&shared.dir).map_err(|e| format!("cannot read free space: {e}"))?;
    let needed = estimate + shared.options.reserve_bytes;
    if free < needed {
        return Err(format!(
            "snapshot skipped: {free} bytes free in {}, a snapshot needs about {estimate} and the log keeps {} in reserve",
            shared.dir.display(),
            shared.options.reserve_bytes
        ));
    }
    let size = snapshot::write(&shared.dir, view.revision, view.objects.values())
        .map_err(|e| format!("snapshot at revision {} failed: {e}", view.revision))?;
    let previous = shared
        .snapshot_revision
        .swap(view.revision, Ordering::AcqRel);
    shared.fallback_revision.store(previous, Ordering::Release);
    shared
        .log_since_snapshot
        .fetch_sub(log_bytes_before, Ordering::Relaxed);
    shared.last_snapshot_bytes.store(size, Ordering::Relaxed);
    // Keep this one and the one before it; the log after that one is kept
    // too (see `delete_old_segments`), so either can be started from.
    let listing = snapshot::list(&shared.dir).map_err(|e| e.to_string())?;
    for (revision, path) in listing.snapshots {
        if revision < previous {
            let _ = std::fs::remove_file(path);
        }
    }
    crate::metrics::metrics()
        .snapshot_duration
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(
        revision = view.revision,
        bytes = size,
        millis = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    Ok(())
}

/// Deletes the oldest segments whose every record is covered by both kept
/// snapshots and older than the history watchers may still ask for.
fn delete_old_segments(shared: &Shared) {
    let limit = shared
        .fallback_revision
        .load(Ordering::Acquire)
        .min(shared.snapshot_revision.load(Ordering::Acquire))
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
        Ok(self.shared.view().objects.get(key).cloned())
    }

    async fn list(&self, prefix: &str, at: ReadAt) -> Result<ListResult, StoreError> {
        let view = match at {
            ReadAt::Newest | ReadAt::NewestPaged(_) => self.shared.view(),
            ReadAt::Exact(revision) => self.view_at(revision)?,
        };
        // Copied outside every lock: writers and the flusher go on meanwhile.
        let items: Vec<StoredObject> = view
            .objects
            .range::<_, str>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        // Kept only when a later page can come: a kept view holds on to
        // every object changed after it, up to a copy of the data.
        if let ReadAt::NewestPaged(limit) = at {
            if items.len() > limit {
                self.shared.keep(view.clone());
            }
        }
        Ok(ListResult {
            items,
            revision: view.revision,
        })
    }

    async fn list_cursor(&self, prefix: &str) -> Result<super::ListCursor, StoreError> {
        // The snapshot is a persistent map: readers holding it share it,
        // and each write copies only its own path.
        let view = self.shared.view();
        let prefix = prefix.to_string();
        let mut last: Option<Arc<str>> = None;
        Ok(super::ListCursor::new(view.revision, move || {
            let lower = match &last {
                Some(key) => std::ops::Bound::Excluded(&**key),
                None => std::ops::Bound::Included(prefix.as_str()),
            };
            let (key, object) = view
                .objects
                .range::<_, str>((lower, std::ops::Bound::Unbounded))
                .next()?;
            if !key.starts_with(&prefix) {
                return None;
            }
            last = Some(key.clone());
            Some(object.clone())
        }))
    }

    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        let view = self.shared.view();
        let n = view
            .objects
            .range::<_, str>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .count();
        Ok(n as u64)
    }

    fn disk_bytes(&self) -> Option<u64> {
        Some(files_bytes(&self.shared.dir))
    }

    async fn wait_for(&self, revision: Revision, within: Duration) -> Result<(), StoreError> {
        let mut durable = self.shared.durable.subscribe();
        let waited =
            tokio::time::timeout(within, durable.wait_for(|d| d.upto >= revision || d.failed))
                .await;
        match waited {
            Ok(Ok(d)) if d.upto >= revision => Ok(()),
            Ok(Ok(_)) => Err(StoreError::Failed(
                self.failure()
                    .unwrap_or_else(|| "the write-ahead log failed".into()),
            )),
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::TooLarge {
                requested: revision,
                current: self.shared.view().revision,
            }),
        }
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
            // Under the channels lock: `fail` marks the store failed before it
            // takes this lock to end every watch, so a watch either sees the
            // failure here or is ended there.
            if let Some(failed) = self.failure() {
                return Err(StoreError::Failed(failed));
            }
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
        // Asked on every request: a read of the durable flag, not the
        // writers' lock, unless the store has failed.
        if !self.shared.durable.borrow().failed {
            return None;
        }
        self.shared.lock_state().failed.clone()
    }

    fn degraded(&self) -> Option<String> {
        self.shared.lock_snapshot_trouble().clone()
    }

    async fn close(&self) {
        self.shared.lock_state().closed = true;
        self.shared.work.notify_one();
        // The compactor stops once a snapshot it is writing is done: nothing
        // of this store touches the directory after `close`.
        let compactor = self
            .compactor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((ticks, handle)) = compactor {
            drop(ticks);
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
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
