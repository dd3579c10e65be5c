//! The `Store` contract as one suite, run against every backend, as
//! Kubernetes' `storage/testing` suite runs the same tests on each storage
//! implementation. A backend gets the suite by implementing `Harness` and
//! naming it in `conformance_suite!` (the log store's is at the end).
//!
//! The tests assume only what the trait promises, never one backend's
//! numbering: revisions grow with every write but need not start at 1 or
//! be consecutive under a prefix (an etcd cluster is shared with other
//! keys), and every test works under its own key prefix.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{
    guaranteed_update, guaranteed_update_cached, EventKind, Preconditions, ReadAt, Revision, Store,
    StoreError,
};

/// How the suite gets stores of one backend.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A store whose history outlives everything a test writes.
    async fn open(&self) -> Arc<dyn Store>;
    /// A store that forgets history beyond its last few writes, soon: it
    /// keeps at most `events` of them once later writes come.
    async fn open_with_short_history(&self, events: u64) -> Arc<dyn Store>;
    /// Closes `store` and opens the same data again, as after a restart.
    async fn reopen(&self, store: Arc<dyn Store>) -> Arc<dyn Store>;
}

/// A key prefix no other test uses: `/registry/{resource}/{unique}/`.
fn prefix(resource: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("/registry/{resource}/t{}-{n}/", std::process::id())
}

fn object(name: &str, uid: &str, data: u64) -> Value {
    json!({"metadata": {"name": name, "uid": uid}, "data": data})
}

fn data(json: &[u8]) -> Value {
    serde_json::from_slice::<Value>(json).unwrap()["data"].clone()
}

fn resource_version(json: &[u8]) -> Revision {
    serde_json::from_slice::<Value>(json).unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("a resourceVersion")
}

/// Create, get, update and delete, each at a newer revision, stamped into
/// the object as its resourceVersion.
pub async fn writes_move_the_revision_and_stamp_it(h: &dyn Harness) {
    let store = h.open().await;
    let key = format!("{}a", prefix("configmaps"));
    let created = store.create(&key, object("a", "u1", 1)).await.unwrap();
    assert!(created.revision > 0);
    assert_eq!(resource_version(&created.json), created.revision);
    let got = store.get(&key).await.unwrap().expect("created");
    assert_eq!(
        (got.revision, data(&got.json)),
        (created.revision, json!(1))
    );
    assert!(matches!(
        store.create(&key, object("a", "u1", 2)).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let updated = store
        .update(&key, None, object("a", "u1", 2))
        .await
        .unwrap();
    assert!(updated.revision > created.revision);
    assert_eq!(resource_version(&updated.json), updated.revision);
    let deleted = store.delete(&key, &Preconditions::default()).await.unwrap();
    assert!(deleted.revision > updated.revision);
    assert!(store.get(&key).await.unwrap().is_none());
    assert!(matches!(
        store.delete(&key, &Preconditions::default()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.update(&key, None, object("a", "u1", 3)).await,
        Err(StoreError::NotFound { .. })
    ));
    store.close().await;
}

/// An update that expects an older revision is a `Conflict` naming both,
/// and changes nothing; `guaranteed_update` from many tasks at once loses
/// no increment.
pub async fn updates_compare_revisions(h: &dyn Harness) {
    let store = h.open().await;
    let key = format!("{}a", prefix("configmaps"));
    let first = store.create(&key, object("a", "u1", 0)).await.unwrap();
    let second = store
        .update(&key, Some(first.revision), object("a", "u1", 1))
        .await
        .unwrap();
    match store
        .update(&key, Some(first.revision), object("a", "u1", 9))
        .await
    {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (first.revision, second.revision)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let now = store.get(&key).await.unwrap().unwrap();
    assert_eq!((now.revision, data(&now.json)), (second.revision, json!(1)));

    increment_at_once(&store, &key, false).await;
    let end = store.get(&key).await.unwrap().unwrap();
    assert_eq!(data(&end.json), json!(41));
    store.close().await;
}

/// Eight tasks at once each add 1 to `data` five times, through
/// `guaranteed_update` (or its cached form).
async fn increment_at_once(store: &Arc<dyn Store>, key: &str, cached: bool) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, key) = (store.clone(), key.to_string());
            tokio::spawn(async move {
                for _ in 0..5 {
                    let add = |_: &super::StoredObject, mut v: Value| {
                        v["data"] = json!(v["data"].as_u64().unwrap_or(0) + 1);
                        Ok::<_, StoreError>(Some(v))
                    };
                    if cached {
                        guaranteed_update_cached(&*store, &key, add).await.unwrap();
                    } else {
                        guaranteed_update(&*store, &key, add).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// `get_cached` may lag, but catches up with every write and delete (on
/// etcd through the watch that feeds the cache), and
/// `guaranteed_update_cached` from many tasks at once loses no increment.
pub async fn cached_reads_catch_up_and_lose_no_update(h: &dyn Harness) {
    let store = h.open().await;
    let key = format!("{}a", prefix("leases"));
    // Nothing there yet: a cached read says so (and may start caching).
    assert!(store.get_cached(&key).await.unwrap().is_none());
    let created = store.create(&key, object("a", "u1", 0)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = store.get_cached(&key).await.unwrap();
        if let Some(seen) = &seen {
            assert_eq!(resource_version(&seen.json), seen.revision);
            if seen.revision == created.revision {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "get_cached never caught up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    increment_at_once(&store, &key, true).await;
    let end = store.get(&key).await.unwrap().unwrap();
    assert_eq!(data(&end.json), json!(40));
    // A delete is seen too.
    store.delete(&key, &Preconditions::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.get_cached(&key).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a delete never reached get_cached"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.close().await;
}

/// A delete's uid and resourceVersion preconditions, with Kubernetes'
/// messages; a failed one leaves the object as it was.
pub async fn deletes_check_preconditions(h: &dyn Harness) {
    let store = h.open().await;
    let key = format!("{}a", prefix("pods"));
    let created = store.create(&key, object("a", "u-1", 0)).await.unwrap();
    let rv = created.revision;
    let stale = (rv + 5).to_string();
    for (uid, version, message) in [
        (
            Some("wrong".to_string()),
            None,
            "Precondition failed: UID in precondition: wrong, UID in object meta: u-1".to_string(),
        ),
        (
            None,
            Some(stale.clone()),
            format!("Precondition failed: ResourceVersion in precondition: {stale}, ResourceVersion in object meta: {rv}"),
        ),
        (
            Some(String::new()),
            None,
            "Precondition failed: UID in precondition: , UID in object meta: u-1".to_string(),
        ),
    ] {
        let p = Preconditions {
            uid,
            resource_version: version,
        };
        match store.delete(&key, &p).await {
            Err(StoreError::PreconditionFailed { message: m, .. }) => assert_eq!(m, message),
            other => panic!("expected a failed precondition, got {other:?}"),
        }
    }
    assert_eq!(store.get(&key).await.unwrap().unwrap().revision, rv);
    let p = Preconditions {
        uid: Some("u-1".into()),
        resource_version: Some(rv.to_string()),
    };
    assert!(store.delete(&key, &p).await.unwrap().revision > rv);
    store.close().await;
}

/// `c`, `a` and `b` under `p`, in that order (lists sort them by key).
async fn create_c_a_b(store: &dyn Store, p: &str) {
    for name in ["c", "a", "b"] {
        store
            .create(&format!("{p}{name}"), object(name, name, 0))
            .await
            .unwrap();
    }
}

/// After a read: `updated` gets data 1, `deleted` goes, `created` comes.
async fn change(store: &dyn Store, p: &str, updated: &str, deleted: &str, created: &str) {
    store
        .update(&format!("{p}{updated}"), None, object(updated, updated, 1))
        .await
        .unwrap();
    store
        .delete(&format!("{p}{deleted}"), &Preconditions::default())
        .await
        .unwrap();
    store
        .create(&format!("{p}{created}"), object(created, created, 0))
        .await
        .unwrap();
}

/// A list is every object under the prefix, sorted by key, at one revision
/// no older than any of them; an exact revision inside history gives the
/// state as it was then, every page of a paged list included.
pub async fn lists_read_at_one_revision(h: &dyn Harness) {
    let store = h.open().await;
    let p = prefix("configmaps");
    let other = prefix("configmaps");
    create_c_a_b(&*store, &p).await;
    store
        .create(&format!("{other}x"), object("x", "x", 0))
        .await
        .unwrap();
    let first = store.list(&p, ReadAt::NewestPaged(2)).await.unwrap();
    let keys: Vec<_> = first.items.iter().map(|o| o.key.to_string()).collect();
    assert_eq!(keys, [format!("{p}a"), format!("{p}b"), format!("{p}c")]);
    assert!(first.items.iter().all(|o| o.revision <= first.revision));

    change(&*store, &p, "a", "b", "d").await;

    let then = store.list(&p, ReadAt::Exact(first.revision)).await.unwrap();
    assert_eq!(then.revision, first.revision);
    let seen: Vec<_> = then
        .items
        .iter()
        .map(|o| (o.key.to_string(), data(&o.json)))
        .collect();
    assert_eq!(
        seen,
        [
            (format!("{p}a"), json!(0)),
            (format!("{p}b"), json!(0)),
            (format!("{p}c"), json!(0)),
        ]
    );
    let now = store.list(&p, ReadAt::Newest).await.unwrap();
    assert!(now.revision > first.revision);
    let keys: Vec<_> = now.items.iter().map(|o| o.key.to_string()).collect();
    assert_eq!(keys, [format!("{p}a"), format!("{p}c"), format!("{p}d")]);
    assert!(matches!(
        store.list(&p, ReadAt::Exact(now.revision + 1_000)).await,
        Err(StoreError::TooLarge { .. })
    ));
    store.close().await;
}

/// `count` (`apiserver_storage_objects`) sees what is under its prefix
/// only, deletes included.
pub async fn counts_what_is_under_a_prefix(h: &dyn Harness) {
    let store = h.open().await;
    let p = prefix("configmaps");
    let other = prefix("configmaps");
    assert_eq!(store.count(&p).await.unwrap(), 0);
    for name in ["a", "b", "c"] {
        store
            .create(&format!("{p}{name}"), object(name, name, 0))
            .await
            .unwrap();
    }
    store
        .create(&format!("{other}x"), object("x", "x", 0))
        .await
        .unwrap();
    assert_eq!(store.count(&p).await.unwrap(), 3);
    store
        .delete(&format!("{p}b"), &Preconditions::default())
        .await
        .unwrap();
    assert_eq!(store.count(&p).await.unwrap(), 2);
    assert_eq!(store.count(&other).await.unwrap(), 1);
}

/// Waiting for a revision: at once when reads are there, `TooLarge` with
/// the newest revision when it does not come in time.
pub async fn waiting_for_a_revision_ends_or_says_too_large(h: &dyn Harness) {
    let store = h.open().await;
    let created = store
        .create(&format!("{}a", prefix("leases")), object("a", "a", 0))
        .await
        .unwrap();
    let short = Duration::from_millis(50);
    store.wait_for(created.revision, short).await.unwrap();
    let far = created.revision + 1_000_000;
    match store.wait_for(far, short).await {
        Err(StoreError::TooLarge { requested, current }) => {
            assert_eq!(requested, far);
            assert!(current >= created.revision);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    store.close().await;
}

/// A watch from a revision sees every later change under its prefix, and
/// only those, in order: ADDED, MODIFIED, DELETED with the state before.
pub async fn watches_start_at_a_revision(h: &dyn Harness) {
    let store = h.open().await;
    let p = prefix("configmaps");
    let other = prefix("configmaps");
    let a = store
        .create(&format!("{p}a"), object("a", "a", 0))
        .await
        .unwrap();
    let mut watch = store.watch(&p, a.revision).unwrap();
    store
        .create(&format!("{other}x"), object("x", "x", 0))
        .await
        .unwrap();
    let b = store
        .create(&format!("{p}b"), object("b", "b", 0))
        .await
        .unwrap();
    let a2 = store
        .update(&format!("{p}a"), None, object("a", "a", 1))
        .await
        .unwrap();
    let gone = store
        .delete(&format!("{p}b"), &Preconditions::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("an event in time")
            .expect("the watch goes on")
            .expect("no error");
        seen.push((event.kind, event.key.to_string(), event.revision));
        if event.kind == EventKind::Deleted {
            let before = event.previous.as_ref().expect("the state before");
            assert_eq!(data(before), json!(0));
        }
        if event.kind == EventKind::Modified {
            assert_eq!(data(&event.object), json!(1));
        }
    }
    assert_eq!(
        seen,
        [
            (EventKind::Added, format!("{p}b"), b.revision),
            (EventKind::Modified, format!("{p}a"), a2.revision),
            (EventKind::Deleted, format!("{p}b"), gone.revision),
        ]
    );
    // A second watch from the first write's revision replays the same.
    let mut again = store.watch(&p, a.revision).unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), again.next())
        .await
        .expect("history in time")
        .expect("the watch goes on")
        .expect("no error");
    assert_eq!((first.kind, first.revision), (EventKind::Added, b.revision));
    store.close().await;
}

/// A watch from a revision the store has moved past (the usual case: a
/// list, writes by others, then the watch) first replays every change
/// after it, then goes on live.
pub async fn watches_from_the_past_replay_what_came_after(h: &dyn Harness) {
    let store = h.open().await;
    let p = prefix("secrets");
    let a = store
        .create(&format!("{p}a"), object("a", "a", 0))
        .await
        .unwrap();
    let mut expected = Vec::new();
    for name in ["b", "c", "d"] {
        let o = store
            .create(&format!("{p}{name}"), object(name, name, 0))
            .await
            .unwrap();
        expected.push((format!("{p}{name}"), o.revision));
    }
    let mut watch = store.watch(&p, a.revision).unwrap();
    let live = store
        .update(&format!("{p}a"), None, object("a", "a", 1))
        .await
        .unwrap();
    expected.push((format!("{p}a"), live.revision));
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap_or_else(|_| panic!("only {seen:?} came"))
            .expect("the watch goes on")
            .expect("no error");
        seen.push((event.key.to_string(), event.revision));
    }
    assert_eq!(seen, expected);
    store.close().await;
}

/// Once history before a revision is dropped, a watch or an exact list
/// from before it is `Compacted` (410 Expired for the client).
pub async fn compacted_history_is_gone(h: &dyn Harness) {
    let store = h.open_with_short_history(3).await;
    let p = prefix("leases");
    let first = store
        .create(&format!("{p}a"), object("a", "a", 0))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    while store.compacted() <= first.revision {
        assert!(
            tokio::time::Instant::now() < deadline,
            "history was never compacted past {}",
            first.revision
        );
        i += 1;
        store
            .update(&format!("{p}a"), None, object("a", "a", i))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(
        store.watch(&p, first.revision - 1),
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        store.list(&p, ReadAt::Exact(first.revision)).await,
        Err(StoreError::Compacted { .. })
    ));
    // The newest state is still there.
    let a = store.get(&format!("{p}a")).await.unwrap().unwrap();
    assert_eq!(data(&a.json), json!(i));
    store.close().await;
}

/// What a write acknowledged is there after a restart, at the same
/// revision, and new writes go on from there.
pub async fn acknowledged_writes_survive_a_restart(h: &dyn Harness) {
    let store = h.open().await;
    let p = prefix("configmaps");
    let mut last = 0;
    for i in 0..20 {
        last = store
            .create(&format!("{p}{i:02}"), object("x", "x", i))
            .await
            .unwrap()
            .revision;
    }
    store
        .delete(&format!("{p}03"), &Preconditions::default())
        .await
        .unwrap();
    let before = store.list(&p, ReadAt::Newest).await.unwrap();
    let store = h.reopen(store).await;
    let after = store.list(&p, ReadAt::Newest).await.unwrap();
    let items = |l: &super::ListResult| -> Vec<(String, Revision, Value)> {
        l.items
            .iter()
            .map(|o| (o.key.to_string(), o.revision, data(&o.json)))
            .collect()
    };
    assert_eq!(items(&after), items(&before));
    assert_eq!(after.items.len(), 19);
    let next = store
        .create(&format!("{p}99"), object("x", "x", 99))
        .await
        .unwrap();
    assert!(next.revision > last);
    store.close().await;
}

/// A list cursor reads one revision as it is taken: writes after it is
/// opened do not show, and only the prefix's objects come, in key order.
pub async fn list_cursors_read_at_one_revision(h: &dyn Harness) {
    let store = h.open().await;
    let p = prefix("configmaps");
    // A prefix that sorts right after `p`'s keys: it must not show.
    let neighbour = format!("{}x/", p.trim_end_matches('/'));
    create_c_a_b(&*store, &p).await;
    store
        .create(&format!("{neighbour}z"), object("z", "z", 0))
        .await
        .unwrap();
    let listed = store.list(&p, ReadAt::Newest).await.unwrap();
    let mut cursor = store.list_cursor(&p).await.unwrap();
    assert_eq!(cursor.revision, listed.revision);
    let first = cursor.next().expect("a first object");
    change(&*store, &p, "b", "c", "bb").await;
    let rest: Vec<_> = cursor.collect();
    let read: Vec<_> = std::iter::once(&first)
        .chain(rest.iter())
        .map(|o| (o.key.to_string(), data(&o.json)))
        .collect();
    let want: Vec<_> = listed
        .items
        .iter()
        .map(|o| (o.key.to_string(), data(&o.json)))
        .collect();
    assert_eq!(read, want);
    assert_eq!(read.len(), 3);
    store.close().await;
}

/// One `#[tokio::test]` per contract test for a backend's harness;
/// `$harness` is an `Option` (`None`: the backend cannot run here, and its
/// harness said why).
macro_rules! conformance_suite {
    ($backend:ident, $harness:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;

            macro_rules! one {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        if let Some(harness) = $harness {
                            crate::store::conformance::$name(&harness).await;
                        }
                    }
                };
            }
            one!(writes_move_the_revision_and_stamp_it);
            one!(updates_compare_revisions);
            one!(cached_reads_catch_up_and_lose_no_update);
            one!(deletes_check_preconditions);
            one!(lists_read_at_one_revision);
            one!(list_cursors_read_at_one_revision);
            one!(counts_what_is_under_a_prefix);
            one!(waiting_for_a_revision_ends_or_says_too_large);
            one!(watches_start_at_a_revision);
            one!(watches_from_the_past_replay_what_came_after);
            one!(compacted_history_is_gone);
            one!(acknowledged_writes_survive_a_restart);
        }
    };
}

/// The log store, in a temporary directory per harness; on sled as its
/// medium with `sled`.
struct LogHarness {
    dir: tempfile::TempDir,
    sled: bool,
}

impl LogHarness {
    fn new() -> LogHarness {
        LogHarness {
            dir: tempfile::tempdir().unwrap(),
            sled: false,
        }
    }

    fn sled() -> LogHarness {
        LogHarness {
            sled: true,
            ..LogHarness::new()
        }
    }

    fn open_with(&self, history: u64) -> Arc<dyn Store> {
        let options = Self::options(history);
        Arc::new(if self.sled {
            super::LogStore::open_sled(self.dir.path(), options).unwrap()
        } else {
            super::LogStore::open(self.dir.path(), options).unwrap()
        })
    }

    fn options(history: u64) -> super::LogStoreOptions {
        super::LogStoreOptions {
            history_retention: history,
            ..super::LogStoreOptions::with_segment_bytes(1 << 20)
        }
    }
}

#[async_trait]
impl Harness for LogHarness {
    async fn open(&self) -> Arc<dyn Store> {
        self.open_with(10_000)
    }

    async fn open_with_short_history(&self, events: u64) -> Arc<dyn Store> {
        self.open_with(events)
    }

    async fn reopen(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        store.close().await;
        drop(store);
        self.open().await
    }
}

conformance_suite!(log, Some(LogHarness::new()));
conformance_suite!(sled, Some(LogHarness::sled()));

/// etcd, a real one per harness (`mube_e2e::etcd`). Without it installed,
/// the suite says so and passes, unless `CI=true`, where it must run.
#[cfg(feature = "etcd")]
mod etcd {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use mube_e2e::etcd::{available, Etcd};

    use super::Harness;
    use crate::store::{EtcdStore, EtcdStoreOptions, Store};

    pub struct EtcdHarness {
        etcd: Etcd,
    }

    impl EtcdHarness {
        /// `None` when etcd is not installed (and this is not CI).
        pub fn start() -> Option<EtcdHarness> {
            available(&["etcd"]).then(|| EtcdHarness {
                etcd: Etcd::start(),
            })
        }

        async fn connect(&self, history: usize, compaction: Option<Duration>) -> Arc<dyn Store> {
            let mut options = EtcdStoreOptions::new(vec![self.etcd.url.clone()]);
            options.history_per_resource = history;
            options.compaction_interval = compaction;
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                match EtcdStore::connect(options.clone()).await {
                    Ok(store) => return Arc::new(store),
                    Err(e) => {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "etcd never answered: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    #[async_trait]
    impl Harness for EtcdHarness {
        async fn open(&self) -> Arc<dyn Store> {
            self.connect(10_000, None).await
        }

        async fn open_with_short_history(&self, events: u64) -> Arc<dyn Store> {
            self.connect(events as usize, Some(Duration::from_millis(100)))
                .await
        }

        async fn reopen(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
            store.close().await;
            drop(store);
            self.open().await
        }
    }
}

#[cfg(feature = "etcd")]
conformance_suite!(etcd_backend, etcd::EtcdHarness::start());
