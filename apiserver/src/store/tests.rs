//! The log store on a real temporary directory: restart, torn tails, and
//! space reclamation with tiny segments so every path runs in milliseconds.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use super::{EventKind, LogStore, LogStoreOptions, ReadAt, Store};

fn options(segment_bytes: u64, history_retention: u64) -> LogStoreOptions {
    LogStoreOptions {
        history_retention,
        watch_buffer: 1024,
        ..LogStoreOptions::with_segment_bytes(segment_bytes)
    }
}

fn lease_key(i: usize) -> String {
    format!("/registry/leases/kube-node-lease/node-{i}")
}

fn lease(i: usize, renew: u64) -> serde_json::Value {
    json!({"metadata": {"name": format!("node-{i}")}, "spec": {"renewTime": renew, "pad": "x".repeat(300)}})
}

fn log_files(dir: &Path) -> (usize, usize, u64) {
    let (mut segments, mut snapshots, mut bytes) = (0, 0, 0);
    for entry in std::fs::read_dir(dir.join("log")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        // The compactor may delete a file between listing and reading it.
        let Ok(meta) = entry.metadata() else { continue };
        bytes += meta.len();
        if name.starts_with("wal-") {
            segments += 1;
        } else if name.ends_with(".snap") {
            snapshots += 1;
        }
    }
    (segments, snapshots, bytes)
}

/// A closed store holding leases 0..n, one write each, in 1 MiB segments.
async fn closed_store_with_leases(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), options(1 << 20, 100)).unwrap();
    for i in 0..n {
        store.create(&lease_key(i), lease(i, 0)).await.unwrap();
    }
    store.close().await;
    dir
}

/// The newest log segment that holds records.
fn newest_segment(dir: &Path) -> super::wal::Segment {
    let segments = super::wal::list(&dir.join("log")).unwrap();
    segments
        .into_iter()
        .rev()
        .find(|s| std::fs::metadata(&s.path).unwrap().len() > 0)
        .unwrap()
}

/// The revision of a list and its objects (key, revision, JSON).
type Contents = (u64, Vec<(String, u64, serde_json::Value)>);

/// The byte offset where each record of a segment's `data` ends.
fn record_ends(data: &[u8]) -> Vec<usize> {
    let super::frame::Opened::Frames {
        format,
        body,
        offset,
    } = super::frame::open(data, super::codec::WAL_FILE_MAGIC)
    else {
        panic!("not a segment")
    };
    let mut frames = super::frame::Frames::new(body, format);
    let mut ends = Vec::new();
    while frames.next().is_some() {
        ends.push(offset + frames.valid_len());
    }
    ends
}

/// Every object and the revision counter as a comparable list.
async fn contents(store: &dyn Store) -> Contents {
    let list = store.list("/registry/", ReadAt::Newest).await.unwrap();
    let items = list
        .items
        .iter()
        .map(|o| (o.key.to_string(), o.revision, o.value().unwrap()))
        .collect();
    (list.revision, items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_history_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), options(1 << 20, 100)).unwrap();
    for i in 0..10 {
        store.create(&lease_key(i), lease(i, 0)).await.unwrap();
    }
    let updated = store
        .update(&lease_key(3), Some(4), lease(3, 1))
        .await
        .unwrap();
    assert_eq!(updated.revision, 11);
    let conflict = store.update(&lease_key(3), Some(4), lease(3, 2)).await;
    assert!(matches!(conflict, Err(super::StoreError::Conflict { .. })));
    store
        .delete(&lease_key(9), &Default::default())
        .await
        .unwrap();
    let before = contents(&store).await;
    store.close().await;
    drop(store);

    let store = LogStore::open(dir.path(), options(1 << 20, 100)).unwrap();
    assert_eq!(contents(&store).await, before);
    assert_eq!(before.0, 12);
    // A watch from before the restart replays the history, previous state included.
    let mut watch = store.watch("/registry/leases/", 10).unwrap();
    let e = watch.next().await.unwrap().unwrap();
    assert_eq!((e.revision, e.kind), (11, EventKind::Modified));
    assert!(e.previous.is_some());
    let e = watch.next().await.unwrap().unwrap();
    assert_eq!((e.revision, e.kind), (12, EventKind::Deleted));
    store.create(&lease_key(20), lease(20, 0)).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().revision, 13);
    store.close().await;
}

/// What a crash in the middle of a write leaves at the end of the newest
/// segment: half a record, or zero-filled blocks (which some file systems
/// leave past the last write; eight zero bytes once read as an empty frame
/// and stopped start-up). Both are the end of the log, and are cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_or_zero_filled_tail_is_the_end_of_the_log() {
    for tail in [&[0, 0, 1, 0, 0xde, 0xad][..], &[0u8; 8192][..]] {
        let dir = closed_store_with_leases(5).await;
        let newest = newest_segment(dir.path());
        let mut data = std::fs::read(&newest.path).unwrap();
        let len = data.len() as u64;
        data.extend_from_slice(tail);
        std::fs::write(&newest.path, data).unwrap();

        let store = LogStore::open(dir.path(), options(1 << 20, 100)).unwrap();
        let (revision, items) = contents(&store).await;
        assert_eq!((revision, items.len()), (5, 5));
        assert_eq!(std::fs::metadata(&newest.path).unwrap().len(), len);
        goes_on_across_a_restart(store, dir.path(), 5).await;
    }
}

/// The store at `revision` takes a write, and starts again with it.
async fn goes_on_across_a_restart(store: LogStore, dir: &Path, revision: u64) {
    store.create(&lease_key(99), lease(99, 0)).await.unwrap();
    store.close().await;
    drop(store);
    let store = LogStore::open(dir, options(1 << 20, 100)).unwrap();
    assert_eq!(contents(&store).await.0, revision + 1);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_newest_segment_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), options(4096, 10_000)).unwrap();
    for i in 0..40 {
        store.create(&lease_key(i), lease(i, 0)).await.unwrap();
    }
    store.close().await;
    drop(store);
    let segments = super::wal::list(&dir.path().join("log")).unwrap();
    assert!(segments.len() > 2, "{segments:?}");
    let mut data = std::fs::read(&segments[0].path).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&segments[0].path, data).unwrap();
    let err = LogStore::open(dir.path(), options(4096, 10_000))
        .err()
        .unwrap();
    let message = err.to_string();
    assert!(
        message.contains("the write-ahead log is damaged")
            && message.contains(&*segments[0].path.to_string_lossy())
            && message.contains("newer segments follow"),
        "{message}"
    );
}

/// Overwrites a fixed set of keys many times, as heartbeats do, with 4 KiB
/// segments: snapshots must be taken (while writes go on) and old segments
/// deleted, so the log stays a few times the live data instead of growing
/// with every write; and a restart must still give back exactly the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrites_do_not_grow_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path(), options(4096, 50)).unwrap());
    let keys = 20;
    for i in 0..keys {
        store.create(&lease_key(i), lease(i, 0)).await.unwrap();
    }
    let mut sizes = Vec::new();
    for round in 1..=60u64 {
        let mut writers = Vec::new();
        for i in 0..keys {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                super::guaranteed_update(&*store, &lease_key(i), |_, _| {
                    Ok::<_, super::StoreError>(Some(lease(i, round)))
                })
                .await
                .unwrap();
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        sizes.push(log_files(dir.path()).2);
    }
    // ~1,220 writes of > 400 bytes each, logged twice (object and previous).
    // What must stay: the 50 events of history, the log since the last
    // snapshot (at most about one snapshot's size), and the snapshot.
    let written: u64 = 1220 * 400 * 2;
    let bound = written / 4;
    // The compactor runs beside the writers; give it a moment to catch up.
    let mut files = log_files(dir.path());
    for _ in 0..200 {
        if files.2 < bound {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        files = log_files(dir.path());
    }
    let (segments, snapshots, bytes) = files;
    assert!(snapshots >= 1, "no snapshot was written");
    assert!(
        bytes < bound,
        "log holds {bytes} bytes in {segments} segments after writing ~{written}"
    );
    let before = contents(&*store).await;
    assert_eq!(before.0, (keys + 60 * keys) as u64);
    store.close().await;
    drop(store);

    let store = LogStore::open(dir.path(), options(4096, 50)).unwrap();
    assert_eq!(contents(&store).await, before);
    // History is the newest 50 events; older is 410.
    assert!(store.watch("/registry/leases/", before.0 - 50).is_ok());
    assert!(store.watch("/registry/leases/", before.0 - 51).is_err());
    store.close().await;
}

/// A small cluster's history is bounded by age, not only by count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_older_than_its_max_age_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(1 << 20, 1000);
    opts.history_max_age = std::time::Duration::from_millis(50);
    let store = LogStore::open(dir.path(), opts).unwrap();
    for i in 0..5 {
        store.create(&lease_key(i), lease(i, 0)).await.unwrap();
    }
    assert!(store.watch("/registry/leases/", 0).is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    store.create(&lease_key(5), lease(5, 0)).await.unwrap();
    // Only the newest write is young enough to keep.
    assert_eq!(store.compacted(), 5);
    assert!(store.watch("/registry/leases/", 4).is_err());
    let mut watch = store.watch("/registry/leases/", 5).unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().revision, 6);
    store.close().await;
}

/// A crash can cut the newest segment anywhere: at every cut, start-up must
/// succeed with exactly the records wholly before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cut_of_the_newest_segment_recovers_a_prefix() {
    let dir = closed_store_with_leases(6).await;
    let newest = newest_segment(dir.path());
    let data = std::fs::read(&newest.path).unwrap();
    // Where each record ends: the only cuts that keep it.
    let ends = record_ends(&data);
    assert_eq!(ends.len(), 6);
    for cut in (0..data.len()).step_by(7).chain([data.len() - 1]) {
        let copy = tempfile::tempdir().unwrap();
        std::fs::create_dir(copy.path().join("log")).unwrap();
        std::fs::write(
            copy.path()
                .join("log")
                .join(newest.path.file_name().unwrap()),
            &data[..cut],
        )
        .unwrap();
        let kept = ends.iter().filter(|&&end| end <= cut).count();
        let store = LogStore::open(copy.path(), options(1 << 20, 100)).unwrap();
        let (revision, items) = contents(&store).await;
        assert_eq!(
            (revision, items.len()),
            (kept as u64, kept),
            "cut at byte {cut}"
        );
        // And the store goes on from there.
        store.create(&lease_key(99), lease(99, 0)).await.unwrap();
        assert_eq!(contents(&store).await.0, kept as u64 + 1);
        store.close().await;
    }
}

/// A delete whose precondition fails uses no revision (the messages and
/// the rest are in the conformance suite, which cannot count revisions on
/// a backend shared with other writers).
#[tokio::test]
async fn a_failed_delete_precondition_uses_no_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), options(1 << 20, 100)).unwrap();
    let key = lease_key(1);
    let created = store
        .create(&key, json!({"metadata": {"name": "node-1", "uid": "u-1"}}))
        .await
        .unwrap();
    assert_eq!(created.revision, 1);
    let preconditions = super::Preconditions {
        uid: Some("wrong".into()),
        resource_version: None,
    };
    assert!(matches!(
        store.delete(&key, &preconditions).await,
        Err(super::StoreError::PreconditionFailed { .. })
    ));
    assert_eq!(contents(&store).await.0, 1);
    let preconditions = super::Preconditions {
        uid: Some("u-1".into()),
        resource_version: Some("1".into()),
    };
    assert_eq!(
        store.delete(&key, &preconditions).await.unwrap().revision,
        2
    );
    store.close().await;
}

fn with_faults(mut opts: LogStoreOptions) -> (LogStoreOptions, Arc<super::Faults>) {
    let faults = Arc::new(super::Faults::default());
    opts.faults = Some(faults.clone());
    (opts, faults)
}

/// A write is not seen by any reader until it is durable: between the
/// flusher's write and its fdatasync, GET, LIST and a watch still show the
/// state before it (a crash then could take it back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_show_only_durable_writes() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let (opts, faults) = with_faults(options(1 << 20, 100));
    let store = Arc::new(LogStore::open(dir.path(), opts).unwrap());
    store.create(&lease_key(1), lease(1, 0)).await.unwrap();
    let mut watch = store.watch("/registry/leases/", 1).unwrap();

    faults.sync_delay_ms.store(400, Relaxed);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { store.create(&lease_key(2), lease(2, 0)).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert!(
        !writer.is_finished(),
        "the write was acknowledged before its fdatasync"
    );
    assert!(store.get(&lease_key(2)).await.unwrap().is_none());
    let list = store.list("/registry/", ReadAt::Newest).await.unwrap();
    assert_eq!((list.revision, list.items.len()), (1, 1));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(50), watch.next())
            .await
            .is_err(),
        "a watcher saw a write that was not durable"
    );
    faults.sync_delay_ms.store(0, Relaxed);

    // Acknowledged means readable: read-your-writes holds.
    let created = writer.await.unwrap().unwrap();
    assert_eq!(created.revision, 2);
    assert_eq!(store.get(&lease_key(2)).await.unwrap().unwrap().revision, 2);
    assert_eq!(watch.next().await.unwrap().unwrap().revision, 2);
    store.close().await;
}

/// After a failed fdatasync (or write) the store stops: the failed write is
/// never visible, nothing more is written, watches end, `failure()` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_write_nothing_undurable_is_served_and_writes_stop() {
    use std::sync::atomic::Ordering::Relaxed;
    for fail_syncs in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (opts, faults) = with_faults(options(1 << 20, 100));
        let store = LogStore::open(dir.path(), opts).unwrap();
        store.create(&lease_key(1), lease(1, 0)).await.unwrap();
        let mut watch = store.watch("/registry/leases/", 1).unwrap();
        if fail_syncs {
            faults.fail_syncs.store(true, Relaxed);
        } else {
            faults.fail_writes.store(true, Relaxed);
        }
        assert!(store.create(&lease_key(2), lease(2, 0)).await.is_err());
        assert!(store.failure().is_some());
        assert!(store.get(&lease_key(2)).await.unwrap().is_none());
        assert_eq!(contents(&store).await.0, 1);
        // The watch ends instead of delivering the failed write.
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next())
            .await
            .expect("the watch did not end");
        assert!(next.is_none(), "{next:?}");
        assert!(store.watch("/registry/leases/", 1).is_err());
        // Even with the disk healthy again: fsync is never retried, and no
        // later write is acknowledged.
        faults.fail_syncs.store(false, Relaxed);
        faults.fail_writes.store(false, Relaxed);
        assert!(store.create(&lease_key(3), lease(3, 0)).await.is_err());
        assert!(store
            .update(&lease_key(1), None, lease(1, 1))
            .await
            .is_err());
        store.close().await;
        drop(store);
        // After a restart the failed write is not there either: the records
        // a failed fdatasync left in the page cache were cut off the file.
        let store = LogStore::open(dir.path(), options(1 << 20, 100)).unwrap();
        let (revision, items) = contents(&store).await;
        assert_eq!((revision, items.len()), (1, 1), "fail_syncs: {fail_syncs}");
        store.close().await;
    }
}

/// One flipped bit in an acknowledged record of the newest segment, with
/// records after it: start-up refuses, names the file and the offset, and
/// leaves the file as it was. `repair` cuts there and keeps what is before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_inside_the_newest_segment_refuses_to_start_until_repaired() {
    let dir = closed_store_with_leases(8).await;
    let newest = newest_segment(dir.path());
    let mut data = std::fs::read(&newest.path).unwrap();
    let ends = record_ends(&data);
    // A bit in the body of the fourth record.
    data[ends[2] + 20] ^= 0x04;
    std::fs::write(&newest.path, &data).unwrap();

    let err = LogStore::open(dir.path(), options(1 << 20, 100))
        .err()
        .expect("a damaged log must not start");
    let message = err.to_string();
    let at = format!(
        "{} at byte {} (after revision 3)",
        newest.path.display(),
        ends[2]
    );
    assert!(message.contains(&at), "{message}");
    assert!(message.contains("4 valid records after it"), "{message}");
    assert!(message.contains("--repair-log"), "{message}");
    assert_eq!(
        std::fs::read(&newest.path).unwrap(),
        data,
        "start-up changed the file"
    );

    let mut repair = options(1 << 20, 100);
    repair.repair = true;
    let store = LogStore::open(dir.path(), repair).unwrap();
    let (revision, items) = contents(&store).await;
    assert_eq!((revision, items.len()), (3, 3));
    // And it goes on from there, and starts normally next time.
    goes_on_across_a_restart(store, dir.path(), 3).await;
}

/// Snapshots and log segments on disk, oldest first.
fn snapshots(dir: &Path) -> Vec<std::path::PathBuf> {
    super::snapshot::list(&dir.join("log"))
        .unwrap()
        .snapshots
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// Ten leases overwritten until two snapshots exist (the compactor runs
/// beside the writers), in 4 KiB segments.
async fn store_with_two_snapshots(dir: &Path, history: u64) -> LogStore {
    let store = LogStore::open(dir, options(4096, history)).unwrap();
    for i in 0..10 {
        store.create(&lease_key(i), lease(i, 0)).await.unwrap();
    }
    let mut round = 0;
    while snapshots(dir).len() < 2 {
        round += 1;
        assert!(round < 2000, "no second snapshot was written");
        for i in 0..10 {
            store
                .update(&lease_key(i), None, lease(i, round))
                .await
                .unwrap();
        }
    }
    store
}

/// A damaged newest snapshot is set aside and the one before it, with the
/// log after it (kept for this), gives back exactly the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_newest_snapshot_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_two_snapshots(dir.path(), 50).await;
    // Let the compactor finish whatever it was doing (segment deletion).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let before = contents(&store).await;
    store.close().await;
    drop(store);

    let snaps = snapshots(dir.path());
    let newest = snaps.last().unwrap();
    let mut data = std::fs::read(newest).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0x10;
    std::fs::write(newest, data).unwrap();

    let store = LogStore::open(dir.path(), options(4096, 50)).unwrap();
    assert_eq!(contents(&store).await, before);
    assert!(newest.with_extension("snap.damaged").exists());
    store.close().await;
}

/// A snapshot that would eat into the space the log keeps in reserve is
/// skipped (and `degraded()` says so); no temporary file is left behind;
/// writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_would_take_the_logs_reserve_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(4096, 50);
    opts.reserve_bytes = u64::MAX / 2;
    let store = LogStore::open(dir.path(), opts).unwrap();
    for round in 0..40 {
        for i in 0..10 {
            store
                .update(&lease_key(i), None, lease(i, round))
                .await
                .ok();
            if round == 0 {
                store.create(&lease_key(i), lease(i, 0)).await.unwrap();
            }
        }
    }
    let mut degraded = store.degraded();
    for _ in 0..100 {
        if degraded.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        degraded = store.degraded();
    }
    let degraded = degraded.expect("the skipped snapshot is not reported");
    assert!(degraded.contains("snapshot skipped"), "{degraded}");
    assert!(snapshots(dir.path()).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(store.failure().is_none());
    store.create(&lease_key(99), lease(99, 0)).await.unwrap();
    store.close().await;
}

/// Every page of a paged list, and an exact read, is served at one revision
/// while writes go on: from a kept view, or from the current one with
/// history undone. Before the history, it is `Compacted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_served_at_any_revision_inside_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), options(1 << 20, 200)).unwrap();
    // The state after every revision, as the list at that revision must be.
    let mut states: Vec<Contents> = Vec::new();
    for i in 0..6 {
        store.create(&lease_key(i), lease(i, 0)).await.unwrap();
        states.push(contents(&store).await);
    }
    let first = store
        .list("/registry/", ReadAt::NewestPaged(2))
        .await
        .unwrap();
    assert_eq!(first.revision, 6);
    for round in 1..=5u64 {
        store
            .update(&lease_key(0), None, lease(0, round))
            .await
            .unwrap();
        states.push(contents(&store).await);
        store
            .delete(&lease_key(round as usize), &Default::default())
            .await
            .unwrap();
        states.push(contents(&store).await);
        store
            .create(&lease_key(10 + round as usize), lease(0, round))
            .await
            .unwrap();
        states.push(contents(&store).await);
    }
    for (revision, expected) in &states {
        let list = store
            .list("/registry/", ReadAt::Exact(*revision))
            .await
            .unwrap();
        let got: Vec<_> = list
            .items
            .iter()
            .map(|o| (o.key.to_string(), o.revision, o.value().unwrap()))
            .collect();
        assert_eq!((list.revision, &got), (*revision, expected));
    }
    // A prefix inside the store is read at that revision too.
    let leases = store
        .list("/registry/leases/kube-node-lease/node-1", ReadAt::Exact(6))
        .await
        .unwrap();
    assert_eq!(leases.items.len(), 1);
    let newest = store.list("/registry/", ReadAt::Newest).await.unwrap();
    assert!(matches!(
        store
            .list("/registry/", ReadAt::Exact(newest.revision + 1))
            .await,
        Err(super::StoreError::TooLarge { .. })
    ));
    store.close().await;

    // With a history of 5 events, revision 3 is gone.
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), options(1 << 20, 5)).unwrap();
    for i in 0..12 {
        store.create(&lease_key(i), lease(i, 0)).await.unwrap();
    }
    assert!(matches!(
        store.list("/registry/", ReadAt::Exact(3)).await,
        Err(super::StoreError::Compacted { .. })
    ));
    assert_eq!(
        store
            .list("/registry/", ReadAt::Exact(8))
            .await
            .unwrap()
            .items
            .len(),
        8
    );
    store.close().await;
}

/// Start-up makes durable what it relies on: a new data directory and its
/// `log/` in their parents, and every segment it replays (a previous run's
/// writes may still be only in the page cache after `kill -9`; a power loss
/// must not leave a gap before the segment this run starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_syncs_new_directories_and_replayed_segments() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("a").join("data");
    let store = LogStore::open(&data, options(1 << 20, 100)).unwrap();
    let synced = super::wal::synced::under(root.path());
    for dir in [
        root.path().to_path_buf(),
        root.path().join("a"),
        data.clone(),
    ] {
        assert!(
            synced.contains(&dir),
            "{} not synced: {synced:?}",
            dir.display()
        );
    }
    store.create(&lease_key(1), lease(1, 0)).await.unwrap();
    store.close().await;
    drop(store);
    let written = newest_segment(&data).path;

    let store = LogStore::open(&data, options(1 << 20, 100)).unwrap();
    let synced = super::wal::synced::under(root.path());
    assert!(
        synced.contains(&written),
        "the replayed segment {} was not synced: {synced:?}",
        written.display()
    );
    store.close().await;
}

/// Damage in a segment the newest snapshot already covers costs only
/// history: `repair` cuts the bad record, keeps every later segment, and the
/// state is exactly as before; later starts need no flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairing_damage_the_snapshot_covers_keeps_every_later_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_two_snapshots(dir.path(), 10_000).await;
    // Writes after the snapshot too.
    for i in 0..10 {
        store
            .update(&lease_key(i), None, lease(i, 9999))
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let before = contents(&store).await;
    store.close().await;
    drop(store);

    let newest: u64 = snapshots(dir.path())
        .last()
        .and_then(|p| {
            p.file_stem()?
                .to_str()?
                .strip_prefix("snapshot-")?
                .parse()
                .ok()
        })
        .unwrap();
    let segments = super::wal::list(&dir.path().join("log")).unwrap();
    // A segment wholly before the snapshot, with a record damaged mid-way.
    let victim = segments
        .windows(2)
        .find(|w| w[1].first <= newest && w[0].first > 1)
        .map(|w| w[0].clone())
        .expect("a segment the snapshot covers");
    let mut data = std::fs::read(&victim.path).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0x08;
    std::fs::write(&victim.path, &data).unwrap();

    assert!(LogStore::open(dir.path(), options(4096, 10_000)).is_err());
    let mut repair = options(4096, 10_000);
    repair.repair = true;
    let store = LogStore::open(dir.path(), repair).unwrap();
    assert_eq!(contents(&store).await, before);
    store
        .update(&lease_key(0), None, lease(0, 1))
        .await
        .unwrap();
    let after = contents(&store).await;
    store.close().await;
    drop(store);
    let store = LogStore::open(dir.path(), options(4096, 10_000)).unwrap();
    assert_eq!(contents(&store).await, after);
    store.close().await;
}

/// A watcher the live feed overruns (its buffer holds 2 events; 60 writes
/// go by unread, interleaved with another resource's) reads what it
/// missed from history: every event of its prefix, in order, none twice.
#[tokio::test]
async fn an_overrun_watcher_catches_up_from_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(
        dir.path(),
        LogStoreOptions {
            watch_buffer: 2,
            ..options(1 << 20, 10_000)
        },
    )
    .unwrap();
    let start = store
        .list("/registry/leases/", ReadAt::Newest)
        .await
        .unwrap()
        .revision;
    let mut watch = store.watch("/registry/leases/", start).unwrap();
    for i in 0..60 {
        store.create(&lease_key(i), lease(i, 0)).await.unwrap();
        store
            .create(
                &format!("/registry/configmaps/default/c{i}"),
                json!({"metadata": {"name": format!("c{i}")}}),
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 60 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next())
            .await
            .expect("an event")
            .expect("the stream goes on")
            .expect("no error: history has what the feed dropped");
        seen.push(event.key.to_string());
    }
    let want: Vec<String> = (0..60).map(lease_key).collect();
    assert_eq!(seen, want);
    // And live again afterwards.
    store.create(&lease_key(60), lease(60, 0)).await.unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&*next.key, lease_key(60).as_str());
    store.close().await;
}
