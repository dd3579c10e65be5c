//! kube-rs against mube: `kube::Api` and `kube::runtime::watcher` with a
//! reflector, in list-then-watch and streaming-list modes, across an API
//! server restart.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use mube_e2e::{node, ApiServer, Options};
use serde_json::json;

/// A kube client from the kubeconfig the server wrote: HTTPS with the
/// cluster CA, as its admin.
async fn client(server: &ApiServer) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(server.data_dir().join("kubeconfig"))
        .expect("the written kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a config from the kubeconfig");
    Client::try_from(config).expect("kube client")
}

fn named(name: &str) -> Node {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
        .unwrap()
}

#[tokio::test]
async fn api_lists_gets_patches_and_watches_nodes() {
    let server = ApiServer::start(Options {
        secure: true,
        nodes: vec![node("node-a")],
        ..Default::default()
    })
    .await;
    let nodes: Api<Node> = Api::all(client(&server).await);

    let list = nodes.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let rv = list.metadata.resource_version.clone().unwrap();
    let a = nodes.get("node-a").await.unwrap();
    assert_eq!(
        a.status.as_ref().unwrap().addresses.as_ref().unwrap()[0].address,
        "127.0.0.1"
    );

    let mut stream = nodes
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    let patched = nodes
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "infra"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.labels().get("team").map(String::as_str),
        Some("infra")
    );
    let strategic = nodes
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    assert_eq!(strategic.spec.as_ref().unwrap().unschedulable, Some(true));
    nodes
        .create(&PostParams::default(), &named("node-b"))
        .await
        .unwrap();

    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await {
            Ok(Ok(Some(WatchEvent::Modified(n)))) => seen.push(("MODIFIED", n.name_any())),
            Ok(Ok(Some(WatchEvent::Added(n)))) => seen.push(("ADDED", n.name_any())),
            Ok(Ok(Some(WatchEvent::Bookmark(_)))) => {}
            other => panic!("unexpected watch result {other:?} after {seen:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            ("MODIFIED", "node-a".into()),
            ("MODIFIED", "node-a".into()),
            ("ADDED", "node-b".into())
        ]
    );

    let err = nodes.get("missing").await.unwrap_err();
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
        other => panic!("expected a Status error, got {other:?}"),
    }
}

/// name -> resourceVersion, as the server has it.
async fn server_state(nodes: &Api<Node>) -> BTreeMap<String, String> {
    nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| (n.name_any(), n.resource_version().unwrap_or_default()))
        .collect()
}

fn store_state(store: &reflector::Store<Node>) -> BTreeMap<String, String> {
    store
        .state()
        .iter()
        .map(|n| (n.name_any(), n.resource_version().unwrap_or_default()))
        .collect()
}

/// Waits until the reflector's store equals the server's state.
async fn converges(store: &reflector::Store<Node>, nodes: &Api<Node>, what: &str) {
    let mut last = (BTreeMap::new(), BTreeMap::new());
    for _ in 0..200 {
        let want = server_state(nodes).await;
        let have = store_state(store);
        if want == have {
            return;
        }
        last = (want, have);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{what}: the reflector never matched the server:\nserver {:?}\nstore  {:?}",
        last.0, last.1
    );
}

async fn reflector_survives_restart(config: watcher::Config) {
    let mut server = ApiServer::start(Options {
        secure: true,
        nodes: vec![node("node-a"), node("node-b")],
        ..Default::default()
    })
    .await;
    let nodes: Api<Node> = Api::all(client(&server).await);
    let (store, writer) = reflector::store::<Node>();
    let stream = reflector(writer, watcher(nodes.clone(), config))
        .default_backoff()
        .touched_objects();
    let task = tokio::spawn(stream.for_each(|_| futures::future::ready(())));
    tokio::time::timeout(Duration::from_secs(10), store.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    converges(&store, &nodes, "initial list").await;

    nodes
        .create(&PostParams::default(), &named("node-c"))
        .await
        .unwrap();
    nodes
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await
        .unwrap();
    converges(&store, &nodes, "live changes").await;

    server.kill9();
    server.restart().await;
    nodes.delete("node-b", &Default::default()).await.unwrap();
    nodes
        .create(&PostParams::default(), &named("node-d"))
        .await
        .unwrap();
    nodes
        .patch(
            "node-c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"y": "2"}}})),
        )
        .await
        .unwrap();
    converges(&store, &nodes, "after an API server restart").await;
    let names: Vec<String> = store_state(&store).into_keys().collect();
    assert_eq!(names, ["node-a", "node-c", "node-d"]);
    task.abort();
}

#[tokio::test]
async fn reflector_stays_equal_across_a_restart_with_list_then_watch() {
    reflector_survives_restart(watcher::Config::default()).await;
}

#[tokio::test]
async fn reflector_stays_equal_across_a_restart_with_streaming_lists() {
    reflector_survives_restart(watcher::Config::default().streaming_lists()).await;
}

#[tokio::test]
async fn dry_runs_and_preconditions_through_kube_rs() {
    let server = ApiServer::start(Options {
        secure: true,
        nodes: vec![node("node-a"), node("node-b")],
        ..Default::default()
    })
    .await;
    let nodes: Api<Node> = Api::all(client(&server).await);
    let before = nodes.list(&ListParams::default()).await.unwrap().items;

    let dry_post = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let created = nodes.create(&dry_post, &named("node-dry")).await.unwrap();
    assert_eq!(created.name_any(), "node-dry");
    assert!(created.metadata.resource_version.is_none());
    let patched = nodes
        .patch(
            "node-a",
            &PatchParams {
                dry_run: true,
                ..Default::default()
            },
            &Patch::Merge(json!({"metadata": {"labels": {"dry": "run"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.labels().get("dry").map(String::as_str), Some("run"));
    let dry_delete = kube::api::DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    nodes.delete("node-b", &dry_delete).await.unwrap();
    nodes
        .delete_collection(&dry_delete, &ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        nodes.list(&ListParams::default()).await.unwrap().items,
        before
    );

    // A uid precondition: the wrong one is a 409 Conflict, the right one deletes.
    let wrong = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match nodes.delete("node-b", &wrong).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409),
        other => panic!("expected 409, got {other:?}"),
    }
    let uid = before
        .iter()
        .find(|n| n.name_any() == "node-b")
        .unwrap()
        .uid();
    let right = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    };
    nodes.delete("node-b", &right).await.unwrap();
    assert!(nodes.get_opt("node-b").await.unwrap().is_none());
}

/// kube-rs `Patch::Apply` (server-side apply), the way controllers write:
/// it creates, updates, records the manager in managedFields, refuses to
/// take a field another manager owns (409 with the field named), takes it
/// with `force`, and applies status through the status subresource.
#[tokio::test]
async fn server_side_apply_through_kube_rs() {
    use k8s_openapi::api::coordination::v1::Lease;
    let server = ApiServer::start(Options {
        secure: true,
        nodes: vec![node("node-a")],
        ..Default::default()
    })
    .await;
    let client = client(&server).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let lease = |holder: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "owned"}, "spec": {"holderIdentity": holder}})
    };
    let ours = PatchParams::apply("controller-a");
    let created = leases
        .patch("owned", &ours, &Patch::Apply(lease("a")))
        .await
        .unwrap();
    assert_eq!(created.spec.unwrap().holder_identity.as_deref(), Some("a"));
    let managers = created.metadata.managed_fields.unwrap();
    assert_eq!(managers.len(), 1);
    assert_eq!(managers[0].manager.as_deref(), Some("controller-a"));
    assert_eq!(managers[0].operation.as_deref(), Some("Apply"));

    let theirs = PatchParams::apply("controller-b");
    let err = leases
        .patch("owned", &theirs, &Patch::Apply(lease("b")))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(status.code, 409, "{status:?}");
    assert_eq!(
        status.message,
        r#"Apply failed with 1 conflict: conflict with "controller-a": .spec.holderIdentity"#
    );
    // Applying the value it already has is no conflict: the field is shared.
    leases
        .patch("owned", &theirs, &Patch::Apply(lease("a")))
        .await
        .unwrap();
    let taken = leases
        .patch("owned", &theirs.clone().force(), &Patch::Apply(lease("b")))
        .await
        .unwrap();
    assert_eq!(taken.spec.unwrap().holder_identity.as_deref(), Some("b"));
    let owners: Vec<String> = taken
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:holderIdentity").is_some())
        })
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(owners, ["controller-b"]);

    // Status through its subresource, as a node agent would.
    let nodes: Api<Node> = Api::all(client);
    let status = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"capacity": {"pods": "7"}}});
    let node = nodes
        .patch_status(
            "node-a",
            &PatchParams::apply("agent"),
            &Patch::Apply(status),
        )
        .await
        .unwrap();
    let capacity = node.status.unwrap().capacity.unwrap();
    assert_eq!(capacity["pods"].0, "7");
    let entry = node
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .find(|m| m.manager.as_deref() == Some("agent"))
        .expect("the agent's apply is recorded");
    assert_eq!(entry.subresource.as_deref(), Some("status"));
}
