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

/// Every object and the revision counter as a comparable list.
async fn contents(store: &dyn Store) -> (u64, Vec<(String, u64, serde_json::Value)>) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_record_at_the_end_is_dropped() {
    let dir = closed_store_with_leases(5).await;

    // What a crash in the middle of a write leaves: half a record.
    let newest = newest_segment(dir.path());
    let mut data = std::fs::read(&newest.path).unwrap();
    data.extend_from_slice(&[0, 0, 1, 0, 0xde, 0xad]);
    std::fs::write(&newest.path, data).unwrap();

    let store = LogStore::open(dir.path(), options(1 << 20, 100)).unwrap();
    let (revision, items) = contents(&store).await;
    assert_eq!((revision, items.len()), (5, 5));
    store.create(&lease_key(7), lease(7, 0)).await.unwrap();
    store.close().await;
    drop(store);
    let store = LogStore::open(dir.path(), options(1 << 20, 100)).unwrap();
    assert_eq!(contents(&store).await.0, 6);
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
    assert!(
        err.to_string().contains("not the newest log segment"),
        "{err}"
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
    let mut ends = Vec::new();
    let (format, body, offset) =
        super::frame::open(&data, super::codec::WAL_FILE_MAGIC).unwrap();
    let mut frames = super::frame::Frames::new(body, format);
    while frames.next().is_some() {
        ends.push(offset + frames.valid_len());
    }
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

/// A delete's uid and resourceVersion preconditions are checked with the
/// delete: a mismatch leaves the object and uses no revision.
#[tokio::test]
async fn delete_checks_uid_and_resource_version_preconditions() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), options(1 << 20, 100)).unwrap();
    let key = lease_key(1);
    let created = store
        .create(&key, json!({"metadata": {"name": "node-1", "uid": "u-1"}}))
        .await
        .unwrap();
    assert_eq!(created.revision, 1);
    for (uid, rv, message) in [
        (
            Some("wrong"),
            None,
            "Precondition failed: UID in precondition: wrong, UID in object meta: u-1",
        ),
        (
            None,
            Some("6"),
            "Precondition failed: ResourceVersion in precondition: 6, ResourceVersion in object meta: 1",
        ),
        (
            Some(""),
            None,
            "Precondition failed: UID in precondition: , UID in object meta: u-1",
        ),
        (
            Some("u-1"),
            Some("6"),
            "Precondition failed: ResourceVersion in precondition: 6, ResourceVersion in object meta: 1",
        ),
    ] {
        let preconditions = super::Preconditions {
            uid: uid.map(String::from),
            resource_version: rv.map(String::from),
        };
        match store.delete(&key, &preconditions).await {
            Err(super::StoreError::PreconditionFailed { message: m, .. }) => assert_eq!(m, message),
            other => panic!("expected a failed precondition, got {other:?}"),
        }
    }
    assert_eq!(store.get(&key).await.unwrap().unwrap().revision, 1);
    assert_eq!(store.list("/registry/", ReadAt::Newest).await.unwrap().revision, 1);
    let preconditions = super::Preconditions {
        uid: Some("u-1".into()),
        resource_version: Some("1".into()),
    };
    assert_eq!(
        store.delete(&key, &preconditions).await.unwrap().revision,
        2
    );
    assert!(store.get(&key).await.unwrap().is_none());
    store.close().await;
}
