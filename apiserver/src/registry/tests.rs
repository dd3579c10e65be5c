//! The generic registry over the real log store: a dry run of every verb runs
//! every check and writes nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::patch::Patch;
use super::{DryRun, Filter, Part, Registry, Resource};
use std::time::Duration;

use crate::store::{
    ListResult, LogStore, LogStoreOptions, Preconditions, ReadAt, Revision, Store, StoreError,
    StoredObject, WatchStream,
};

/// The real store, with a count of the writes that reach it.
struct CountingStore {
    inner: LogStore,
    writes: AtomicUsize,
}

#[async_trait]
impl Store for CountingStore {
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str, at: ReadAt) -> Result<ListResult, StoreError> {
        self.inner.list(prefix, at).await
    }
    async fn wait_for(&self, revision: Revision, within: Duration) -> Result<(), StoreError> {
        self.inner.wait_for(revision, within).await
    }
    async fn create(&self, key: &str, object: Value) -> Result<StoredObject, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.create(key, object).await
    }
    async fn update(
        &self,
        key: &str,
        expected: Option<Revision>,
        object: Value,
    ) -> Result<StoredObject, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.update(key, expected, object).await
    }
    async fn delete(
        &self,
        key: &str,
        preconditions: &Preconditions,
    ) -> Result<StoredObject, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(key, preconditions).await
    }
    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, after)
    }
    fn compacted(&self) -> Revision {
        self.inner.compacted()
    }
    fn failure(&self) -> Option<String> {
        self.inner.failure()
    }
    fn degraded(&self) -> Option<String> {
        self.inner.degraded()
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<CountingStore>,
    registry: Registry,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let inner = LogStore::open(
            dir.path(),
            LogStoreOptions {
                history_retention: 1000,
                watch_buffer: 1024,
                ..LogStoreOptions::with_segment_bytes(1 << 20)
            },
        )
        .unwrap();
        let store = Arc::new(CountingStore {
            inner,
            writes: AtomicUsize::new(0),
        });
        let registry = Registry::standard(store.clone());
        Fixture {
            _dir: dir,
            store,
            registry,
        }
    }

    fn nodes(&self) -> Arc<Resource> {
        self.registry
            .resource(&mube_apis::resources::NODES)
            .unwrap()
    }

    fn writes(&self) -> usize {
        self.store.writes.load(Ordering::SeqCst)
    }

    async fn revision(&self) -> Revision {
        self.store
            .list("/registry/", ReadAt::Newest)
            .await
            .unwrap()
            .revision
    }
}

fn node(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels}, "spec": {}})
}

#[tokio::test]
async fn a_dry_run_of_every_verb_checks_everything_and_writes_nothing() {
    let f = Fixture::new();
    let nodes = f.nodes();
    let real = f
        .registry
        .create(
            &nodes,
            None,
            node("n1", json!({"a": "1"})),
            "test",
            DryRun::No,
        )
        .await
        .unwrap();
    f.registry
        .create(
            &nodes,
            None,
            node("n2", json!({"a": "1"})),
            "test",
            DryRun::No,
        )
        .await
        .unwrap();
    let n1 = real.value().unwrap();
    let uid = n1["metadata"]["uid"].as_str().unwrap().to_string();
    let (writes, revision) = (f.writes(), f.revision().await);
    assert_eq!((writes, revision), (2, 2));
    let mut watch = f.registry.watch(&nodes, None, revision).unwrap();
    let dry = DryRun::All;

    // create: the object as it would be stored, without a resourceVersion.
    let created = f
        .registry
        .create(&nodes, None, node("n3", json!({})), "test", dry)
        .await
        .unwrap();
    let created = created.value().unwrap();
    assert_eq!(created["metadata"]["name"], "n3");
    assert!(created["metadata"]["uid"].is_string());
    assert_eq!(created["status"]["state"], "Unknown", "defaulting ran");
    assert!(created["metadata"].get("resourceVersion").is_none());
    let exists = f
        .registry
        .create(&nodes, None, node("n1", json!({})), "test", dry)
        .await
        .unwrap_err();
    assert_eq!(exists.code(), 409);
    let invalid = f
        .registry
        .create(&nodes, None, node("Bad_Name", json!({})), "test", dry)
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), 422);

    // update (main and status): the change at the current resourceVersion.
    let mut changed = n1.clone();
    changed["metadata"]["labels"]["b"] = json!("2");
    let updated = f
        .registry
        .update(&nodes, None, "n1", Part::Main, changed.clone(), "test", dry)
        .await
        .unwrap();
    assert_eq!(updated.revision, real.revision);
    let updated = updated.value().unwrap();
    assert_eq!(updated["metadata"]["labels"]["b"], "2");
    assert_eq!(updated["metadata"]["resourceVersion"], "1");
    changed["metadata"]["resourceVersion"] = json!("99");
    let stale = f
        .registry
        .update(&nodes, None, "n1", Part::Main, changed, "test", dry)
        .await
        .unwrap_err();
    assert_eq!(stale.code(), 409);
    let mut status = n1.clone();
    status["status"]["state"] = json!("Ready");
    let bad_status = f
        .registry
        .update(&nodes, None, "n1", Part::Status, status, "test", dry)
        .await
        .unwrap_err();
    assert_eq!(bad_status.code(), 422, "state without its condition");
    let mut status = n1.clone();
    status["status"]["addresses"] = json!([{"type": "InternalIP", "address": "10.1.1.1"}]);
    let status = f
        .registry
        .update(&nodes, None, "n1", Part::Status, status, "test", dry)
        .await
        .unwrap();
    assert_eq!(
        status.value().unwrap()["status"]["addresses"][0]["address"],
        "10.1.1.1"
    );

    // patch, every type, main and status.
    for (content_type, body) in [
        (
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"m":"1"}}}"#,
        ),
        (
            "application/strategic-merge-patch+json",
            r#"{"spec":{"unschedulable":true}}"#,
        ),
        (
            "application/json-patch+json",
            r#"[{"op":"add","path":"/metadata/labels/j","value":"2"}]"#,
        ),
    ] {
        let patch = Patch::parse(content_type, body.as_bytes())
            .unwrap()
            .unwrap();
        for part in [Part::Main, Part::Status] {
            let patched = f
                .registry
                .patch(&nodes, None, "n1", part, &patch, "test", dry)
                .await
                .unwrap();
            assert_eq!(patched.revision, real.revision, "{content_type}");
        }
    }
    // A status patch that changes the status: answered, not stored.
    let status_patch = Patch::parse(
        "application/merge-patch+json",
        br#"{"status":{"addresses":[{"type":"InternalIP","address":"10.9.9.9"}]}}"#,
    )
    .unwrap()
    .unwrap();
    let patched = f
        .registry
        .patch(&nodes, None, "n1", Part::Status, &status_patch, "test", dry)
        .await
        .unwrap();
    assert_eq!(patched.revision, real.revision);
    assert_eq!(
        patched.value().unwrap()["status"]["addresses"][0]["address"],
        "10.9.9.9"
    );
    let stale = Patch::parse(
        "application/merge-patch+json",
        br#"{"metadata":{"resourceVersion":"99","labels":{"x":"y"}}}"#,
    )
    .unwrap()
    .unwrap();
    let stale = f
        .registry
        .patch(&nodes, None, "n1", Part::Main, &stale, "test", dry)
        .await
        .unwrap_err();
    assert_eq!(stale.code(), 409);

    // delete: the preconditions are checked; the object is answered.
    let wrong_uid = Preconditions {
        uid: Some("wrong".into()),
        resource_version: None,
    };
    let refused = f
        .registry
        .delete(&nodes, None, "n1", &wrong_uid, dry)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), 409);
    assert!(refused
        .to_string()
        .contains("Precondition failed: UID in precondition: wrong, UID in object meta: "));
    let right = Preconditions {
        uid: Some(uid),
        resource_version: Some(real.revision.to_string()),
    };
    let deleted = f
        .registry
        .delete(&nodes, None, "n1", &right, dry)
        .await
        .unwrap();
    assert_eq!(deleted.value().unwrap()["metadata"]["name"], "n1");
    let missing = f
        .registry
        .delete(&nodes, None, "nope", &Preconditions::default(), dry)
        .await
        .unwrap_err();
    assert_eq!(missing.code(), 404);

    // deletecollection.
    let filter = Filter::parse(&nodes, Some("a=1"), None).unwrap();
    let (gone, _) = f
        .registry
        .delete_collection(
            &nodes,
            None,
            &filter,
            &Preconditions::default(),
            None,
            Default::default(),
            dry,
        )
        .await
        .unwrap();
    assert_eq!(gone.len(), 2);

    assert_eq!(f.writes(), writes, "a dry run reached the store's writes");
    assert_eq!(f.revision().await, revision, "a dry run used a revision");
    assert!(f.registry.get(&nodes, None, "n1").await.is_ok());
    assert_eq!(
        f.registry.get(&nodes, None, "n1").await.unwrap().revision,
        real.revision
    );
    assert!(f.registry.get(&nodes, None, "n3").await.is_err());
    // The watch's first event is the next real write, not a dry run.
    f.registry
        .delete(&nodes, None, "n2", &Preconditions::default(), DryRun::No)
        .await
        .unwrap();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.revision, revision + 1);
    assert_eq!(&*first.key, "/registry/nodes/n2");
}

#[tokio::test]
async fn delete_collection_removes_exactly_the_matching_objects() {
    let f = Fixture::new();
    let nodes = f.nodes();
    for (name, pool) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
        f.registry
            .create(
                &nodes,
                None,
                node(name, json!({"pool": pool})),
                "test",
                DryRun::No,
            )
            .await
            .unwrap();
    }
    let filter = Filter::parse(&nodes, Some("pool=a"), None).unwrap();
    let (gone, _) = f
        .registry
        .delete_collection(
            &nodes,
            None,
            &filter,
            &Preconditions::default(),
            None,
            Default::default(),
            DryRun::No,
        )
        .await
        .unwrap();
    let names: Vec<String> = gone
        .iter()
        .map(|o| {
            o.value().unwrap()["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["a1", "a2"]);
    let (left, _) = f
        .registry
        .list(&nodes, None, &Filter::default(), ReadAt::Newest)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].value().unwrap()["metadata"]["name"], "b1");
}

/// The kind's update hook sees the old object: a Node's pod CIDRs, once
/// set, may not change (422 naming the field), while the status
/// subresource rule (also the strategy's) keeps a main write off the status.
#[tokio::test]
async fn a_strategy_validates_an_update_against_the_old_object() {
    let f = Fixture::new();
    let nodes = f.nodes();
    let mut object = node("n1", json!({}));
    object["spec"]["podCIDRs"] = json!(["10.0.0.0/24"]);
    f.registry
        .create(&nodes, None, object.clone(), "test", DryRun::No)
        .await
        .unwrap();
    object["spec"]["podCIDRs"] = json!(["10.0.1.0/24"]);
    let err = f
        .registry
        .update(
            &nodes,
            None,
            "n1",
            Part::Main,
            object.clone(),
            "test",
            DryRun::No,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), 422);
    assert!(err
        .status
        .message
        .as_deref()
        .unwrap()
        .contains("spec.podCIDRs: Forbidden"));
    object["spec"]["podCIDRs"] = json!(["10.0.0.0/24"]);
    object["status"] = json!({"capacity": {"pods": "5"}});
    let kept = f
        .registry
        .update(&nodes, None, "n1", Part::Main, object, "test", DryRun::No)
        .await
        .unwrap();
    let kept: Value = serde_json::from_slice(&kept.json).unwrap();
    assert!(kept.pointer("/status/capacity/pods").is_none(), "{kept}");
}

/// An apply creates through the main resource only: through `/status` a
/// missing object is 404, as in Kubernetes.
#[tokio::test]
async fn an_apply_to_status_does_not_create() {
    let f = Fixture::new();
    let nodes = f.nodes();
    let config = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n9"},
                        "status": {"capacity": {"pods": "3"}}});
    let err = f
        .registry
        .apply(
            &nodes,
            None,
            "n9",
            Part::Status,
            config.clone(),
            "m",
            false,
            DryRun::No,
            &|_| Ok(()),
        )
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(f.writes(), 0);
    let (_, created) = f
        .registry
        .apply(
            &nodes,
            None,
            "n9",
            Part::Main,
            config,
            "m",
            false,
            DryRun::No,
            &|_| Ok(()),
        )
        .await
        .unwrap();
    assert!(created);
}

/// Finalizers hold a deleted object (marked, not removed) until the write
/// that takes the last one away; none may be added meanwhile. A propagation
/// policy adds its own.
#[tokio::test]
async fn finalizers_hold_a_deleted_object_until_they_are_removed() {
    use super::Propagation;
    let f = Fixture::new();
    let nodes = f.nodes();
    let mut object = node("n1", json!({}));
    object["metadata"]["finalizers"] = json!(["example.com/hold"]);
    f.registry
        .create(&nodes, None, object, "test", DryRun::No)
        .await
        .unwrap();
    let none = Preconditions::default();
    let held = f
        .registry
        .delete(&nodes, None, "n1", &none, DryRun::No)
        .await
        .unwrap()
        .value()
        .unwrap();
    assert!(
        held.pointer("/metadata/deletionTimestamp").is_some(),
        "{held}"
    );
    assert_eq!(held["metadata"]["deletionGracePeriodSeconds"], 0);
    let add = Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold", "x.io/more"]}}));
    let err = f
        .registry
        .patch(&nodes, None, "n1", Part::Main, &add, "test", DryRun::No)
        .await
        .unwrap_err();
    assert_eq!(err.code(), 422, "{err:?}");
    // A dry run of the last removal removes nothing.
    let clear = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    f.registry
        .patch(&nodes, None, "n1", Part::Main, &clear, "test", DryRun::All)
        .await
        .unwrap();
    assert!(f.registry.get(&nodes, None, "n1").await.is_ok());
    f.registry
        .patch(&nodes, None, "n1", Part::Main, &clear, "test", DryRun::No)
        .await
        .unwrap();
    assert!(f
        .registry
        .get(&nodes, None, "n1")
        .await
        .unwrap_err()
        .is_not_found());

    // Foreground and Orphan on a kind the garbage collector watches: the
    // object waits for it; a second delete may change the policy.
    super::ensure_system_namespaces(&f.registry).await.unwrap();
    let cms = f.registry.resource(&super::configmap::INFO).unwrap();
    let ns = Some("default");
    for (policy, finalizer) in [
        (Propagation::Foreground, "foregroundDeletion"),
        (Propagation::Orphan, "orphan"),
    ] {
        f.registry
            .create(
                &cms,
                ns,
                json!({"metadata": {"name": "c"}}),
                "test",
                DryRun::No,
            )
            .await
            .unwrap();
        let other = if policy == Propagation::Orphan {
            Propagation::Foreground
        } else {
            Propagation::Orphan
        };
        f.registry
            .delete_with_grace(&cms, ns, "c", &none, None, other, DryRun::No)
            .await
            .unwrap();
        let held = f
            .registry
            .delete_with_grace(&cms, ns, "c", &none, None, policy, DryRun::No)
            .await
            .unwrap()
            .value()
            .unwrap();
        assert_eq!(held["metadata"]["finalizers"], json!([finalizer]));
        f.registry
            .patch(&cms, ns, "c", Part::Main, &clear, "test", DryRun::No)
            .await
            .unwrap();
        assert!(f
            .registry
            .get(&cms, ns, "c")
            .await
            .unwrap_err()
            .is_not_found());
    }
    // On a kind it does not watch, they mean Background: gone at once.
    f.registry
        .create(&nodes, None, node("n2", json!({})), "test", DryRun::No)
        .await
        .unwrap();
    f.registry
        .delete_with_grace(
            &nodes,
            None,
            "n2",
            &none,
            None,
            Propagation::Orphan,
            DryRun::No,
        )
        .await
        .unwrap();
    assert!(f
        .registry
        .get(&nodes, None, "n2")
        .await
        .unwrap_err()
        .is_not_found());
}
