//! Custom kinds against the real API server, beyond what kubectl shows
//! (`kubectl.rs` covers that for every kubectl version): several versions
//! over one storage version, names a CRD may not take, CRDs that cannot be
//! served, custom objects across a restart, and the example NodeGroup
//! controller and its kube-rs twin reconciling real Nodes.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use mube_e2e::{bin, node, Api, ApiServer, Options};
use serde_json::{json, Value};

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const NODEGROUP_CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/nodegroup/crd.yaml"
);

async fn server(nodes: &[&'static str]) -> (ApiServer, Api) {
    let server = ApiServer::start(Options {
        nodes: nodes.iter().map(|n| node(n)).collect(),
        secure: true,
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    (server, api)
}

/// Waits up to 5 s for `check` to hold of what `path` answers; the last answer.
async fn eventually(api: &Api, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = api.get(path).await.body;
        if check(&body) || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn condition<'a>(crd: &'a Value, type_: &str) -> Option<&'a Value> {
    crd.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

async fn established(api: &Api, name: &str) -> Value {
    let crd = eventually(api, &format!("{CRDS}/{name}"), |c| {
        condition(c, "Established").is_some_and(|c| c["status"] == "True")
    })
    .await;
    assert_eq!(
        condition(&crd, "Established").map(|c| &c["status"]),
        Some(&json!("True")),
        "{crd}"
    );
    crd
}

fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.shop.example.com"},
        "spec": {
            "group": "shop.example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {"name": "v1beta1", "served": true, "storage": false,
                 "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}},
                {"name": "v1", "served": true, "storage": true,
                 "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}
            ]
        }
    })
}

#[tokio::test]
async fn several_versions_share_one_storage_version_and_survive_a_restart() {
    let (mut server, api) = server(&[]).await;
    assert_eq!(api.post(CRDS, &widget_crd()).await.code, 201);
    let crd = established(&api, "widgets.shop.example.com").await;
    assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
    // Discovery prefers the GA version.
    let group = api.get("/apis/shop.example.com").await.body;
    assert_eq!(group["preferredVersion"]["version"], "v1", "{group}");

    let beta = "/apis/shop.example.com/v1beta1/namespaces/default/widgets";
    let ga = "/apis/shop.example.com/v1/namespaces/default/widgets";
    let mut watch = api.watch(ga, "").await;
    let created = api
        .post(
            beta,
            &json!({"apiVersion": "shop.example.com/v1beta1", "kind": "Widget",
            "metadata": {"name": "w1"}, "spec": {"size": 3, "colour": "red"}}),
        )
        .await;
    assert_eq!(created.code, 201, "{}", created.body);
    assert_eq!(created.body["apiVersion"], "shop.example.com/v1beta1");
    // The None strategy: the same object at each version, apiVersion apart.
    let as_ga = api.get(&format!("{ga}/w1")).await.body;
    assert_eq!(as_ga["apiVersion"], "shop.example.com/v1");
    assert_eq!(as_ga["spec"]["size"], 3);
    let event = watch.next(Duration::from_secs(5)).await.expect("an event");
    assert_eq!(event.object["apiVersion"], "shop.example.com/v1");
    let list = api.get(beta).await.body;
    assert_eq!(
        list["items"][0]["apiVersion"], "shop.example.com/v1beta1",
        "{list}"
    );
    // A write through either version keeps the other's view.
    let updated = api
        .raw(
            reqwest::Method::PATCH,
            &format!("{beta}/w1"),
            "application/merge-patch+json",
            br#"{"spec":{"size":4}}"#.to_vec(),
        )
        .await;
    assert_eq!(updated.code, 200, "{}", updated.body);
    assert_eq!(updated.body["apiVersion"], "shop.example.com/v1beta1");
    assert_eq!(api.get(&format!("{ga}/w1")).await.body["spec"]["size"], 4);
    // A schema is per version: v1 checks the type.
    let bad = api
        .raw(
            reqwest::Method::PATCH,
            &format!("{ga}/w1"),
            "application/merge-patch+json",
            br#"{"spec":{"size":"big"}}"#.to_vec(),
        )
        .await;
    assert_eq!(bad.code, 422, "{}", bad.body);

    // After a restart the kind is served from the first request.
    server.terminate();
    server.restart().await;
    let again = api.get(&format!("{ga}/w1")).await;
    assert_eq!(again.code, 200, "{}", again.body);
    assert_eq!(again.body["spec"]["size"], 4);
}

#[tokio::test]
async fn names_already_taken_are_refused_with_a_reason() {
    let (_server, api) = server(&[]).await;
    let text = std::fs::read_to_string(NODEGROUP_CRD).unwrap();
    let nodegroups: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(api.post(CRDS, &nodegroups).await.code, 201);
    established(&api, "nodegroups.example.mube.io").await;

    // A second kind in the group that wants the short name `ng`.
    let pools = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "pools.example.mube.io"},
        "spec": {"group": "example.mube.io", "scope": "Cluster",
            "names": {"plural": "pools", "kind": "Pool", "shortNames": ["ng"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    });
    assert_eq!(api.post(CRDS, &pools).await.code, 201);
    let crd = eventually(&api, &format!("{CRDS}/pools.example.mube.io"), |c| {
        condition(c, "NamesAccepted").is_some()
    })
    .await;
    let accepted = condition(&crd, "NamesAccepted").expect("NamesAccepted");
    assert_eq!(
        (&accepted["status"], &accepted["reason"]),
        (&json!("False"), &json!("ShortNamesConflict")),
        "{crd}"
    );
    assert_eq!(accepted["message"], "\"ng\" is already in use");
    assert_eq!(
        condition(&crd, "Established").map(|c| &c["status"]),
        Some(&json!("False"))
    );
    assert_eq!(api.get("/apis/example.mube.io/v1/pools").await.code, 404);
    // The older CRD keeps its names.
    assert_eq!(
        api.get("/apis/example.mube.io/v1/nodegroups").await.code,
        200
    );

    // A built-in kind's plural in its own group.
    let roles = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "roles.rbac.authorization.k8s.io"},
        "spec": {"group": "rbac.authorization.k8s.io", "scope": "Namespaced",
            "names": {"plural": "roles", "kind": "MyRole"},
            "versions": [{"name": "v9", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object"}}}]}
    });
    assert_eq!(api.post(CRDS, &roles).await.code, 201);
    let crd = eventually(
        &api,
        &format!("{CRDS}/roles.rbac.authorization.k8s.io"),
        |c| condition(c, "NamesAccepted").is_some(),
    )
    .await;
    assert_eq!(
        condition(&crd, "NamesAccepted").map(|c| &c["reason"]),
        Some(&json!("PluralConflict")),
        "{crd}"
    );
    assert_eq!(
        api.get("/apis/rbac.authorization.k8s.io/v9/roles")
            .await
            .code,
        404
    );
}

#[tokio::test]
async fn definitions_that_cannot_be_served_are_refused_with_the_field() {
    let (_server, api) = server(&[]).await;
    let bad = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.com"},
        "spec": {"group": "example.com", "scope": "Galaxy",
            "names": {"plural": "things", "kind": "Thing"},
            "conversion": {"strategy": "Webhook"},
            "versions": [
                {"name": "v1", "served": true, "storage": true,
                 "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"properties": {"n": {"type": "integer"}}}}}}},
                {"name": "v2", "served": true, "storage": true}
            ]}
    });
    let reply = api.post(CRDS, &bad).await;
    assert_eq!(reply.code, 422, "{}", reply.body);
    let fields = mube_e2e::cause_fields(&reply.body);
    for want in [
        "spec.scope",
        "spec.conversion.strategy",
        "spec.versions",
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].type",
        "spec.versions[1].schema.openAPIV3Schema",
    ] {
        assert!(fields.contains(&want), "{want} missing from {fields:?}");
    }
    let misnamed = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.com"},
        "spec": {"group": "other.example.com", "scope": "Cluster", "names": {"plural": "things", "kind": "Thing"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}}]}
    });
    let reply = api.post(CRDS, &misnamed).await;
    assert_eq!(reply.code, 422);
    assert!(reply.body["message"].as_str().unwrap().contains("metadata.name: Invalid value: \"things.example.com\": must be spec.names.plural+\".\"+spec.group"), "{}", reply.body);
}

/// A controller process, killed when dropped.
struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Three Ready nodes; `worker-1` and `worker-2` labelled role=worker.
async fn labelled_nodes(api: &Api) {
    for (name, role) in [
        ("worker-1", "worker"),
        ("worker-2", "worker"),
        ("edge-1", "edge"),
    ] {
        assert_eq!(api.heartbeat(name).await.code, 202);
        label(api, name, role).await;
    }
}

async fn label(api: &Api, node: &str, role: &str) {
    let patch = json!({"metadata": {"labels": {"role": role}}}).to_string();
    let reply = api
        .raw(
            reqwest::Method::PATCH,
            &format!("/api/v1/nodes/{node}"),
            "application/merge-patch+json",
            patch.into_bytes(),
        )
        .await;
    assert_eq!(reply.code, 200, "{}", reply.body);
}

/// What each controller must do: report the group's Ready nodes, and
/// follow a node leaving the group.
async fn reconciles_node_groups(api: &Api) {
    let group = json!({"apiVersion": "example.mube.io/v1", "kind": "NodeGroup",
        "metadata": {"name": "workers"}, "spec": {"selector": {"role": "worker"}, "minReady": 2}});
    let created = api
        .post("/apis/example.mube.io/v1/nodegroups", &group)
        .await;
    assert_eq!(created.code, 201, "{}", created.body);
    let path = "/apis/example.mube.io/v1/nodegroups/workers";
    let got = eventually(api, path, |g| g["status"]["ready"] == 2).await;
    assert_eq!(
        got["status"],
        json!({"ready": 2, "nodes": ["worker-1", "worker-2"], "healthy": true, "replicas": 2, "observedGeneration": 1}),
        "{got}"
    );
    label(api, "worker-2", "edge").await;
    let got = eventually(api, path, |g| g["status"]["ready"] == 1).await;
    assert_eq!(got["status"]["nodes"], json!(["worker-1"]), "{got}");
    assert_eq!(got["status"]["healthy"], false, "{got}");
}

#[tokio::test]
async fn the_example_nodegroup_controller_reports_its_nodes() {
    let (server, api) = server(&["worker-1", "worker-2", "edge-1"]).await;
    let text = std::fs::read_to_string(NODEGROUP_CRD).unwrap();
    let crd: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(api.post(CRDS, &crd).await.code, 201);
    established(&api, "nodegroups.example.mube.io").await;
    labelled_nodes(&api).await;
    let _controller = Controller(
        Command::new(bin("nodegroup-controller"))
            .arg("--kubeconfig")
            .arg(server.data_dir().join("kubeconfig"))
            .arg("--leader-elect=false")
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start nodegroup-controller"),
    );
    reconciles_node_groups(&api).await;
}

#[tokio::test]
async fn its_kube_rs_twin_installs_the_derived_crd_and_does_the_same() {
    let (server, api) = server(&["worker-1", "worker-2", "edge-1"]).await;
    labelled_nodes(&api).await;
    let _controller = Controller(
        Command::new(bin("nodegroup-controller-kube"))
            .arg("--install-crd")
            .env("KUBECONFIG", server.data_dir().join("kubeconfig"))
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start nodegroup-controller-kube"),
    );
    // The CRD kube-rs derived from the Rust type is accepted and served.
    let crd = established(&api, "nodegroups.example.mube.io").await;
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["ng"]));
    reconciles_node_groups(&api).await;
}

/// A kind whose storage version is not served is still reached by what
/// walks every kind: deleting a namespace deletes its objects.
#[tokio::test]
async fn objects_of_an_unserved_storage_version_go_with_their_namespace() {
    let (_server, api) = server(&[]).await;
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.shop.example.com"},
        "spec": {"group": "shop.example.com", "scope": "Namespaced",
            "names": {"plural": "gadgets", "kind": "Gadget"},
            "versions": [
                {"name": "v1", "served": false, "storage": true,
                 "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                {"name": "v2", "served": true, "storage": false,
                 "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
            ]}
    });
    assert_eq!(api.post(CRDS, &crd).await.code, 201);
    established(&api, "gadgets.shop.example.com").await;
    assert_eq!(
        api.post("/api/v1/namespaces", &json!({"metadata": {"name": "shop"}}))
            .await
            .code,
        201
    );
    let gadget =
        json!({"apiVersion": "shop.example.com/v2", "kind": "Gadget", "metadata": {"name": "g1"}});
    let created = api
        .post("/apis/shop.example.com/v2/namespaces/shop/gadgets", &gadget)
        .await;
    assert_eq!(created.code, 201, "{}", created.body);
    assert_eq!(created.body["apiVersion"], "shop.example.com/v2");
    assert_eq!(api.delete("/api/v1/namespaces/shop").await.code, 200);
    let gone = eventually(&api, "/api/v1/namespaces/shop", |n| n["code"] == 404).await;
    assert_eq!(gone["code"], 404, "the namespace is still there: {gone}");
    let left = api.get("/apis/shop.example.com/v2/gadgets").await.body;
    assert_eq!(left["items"], json!([]), "{left}");
}

/// A CRD named after a built-in kind is never served, and deleting it
/// deletes nothing of the built-in kind (its cleanup walks only its own
/// storage prefix).
#[tokio::test]
async fn deleting_a_crd_named_after_a_built_in_kind_leaves_that_kind_alone() {
    let (_server, api) = server(&[]).await;
    let leases = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
    let lease = json!({"metadata": {"name": "keep-me"}, "spec": {"holderIdentity": "x"}});
    assert_eq!(api.post(leases, &lease).await.code, 201);
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "leases.coordination.k8s.io"},
        "spec": {"group": "coordination.k8s.io", "scope": "Namespaced",
            "names": {"plural": "leases", "kind": "Lease"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    });
    assert_eq!(api.post(CRDS, &crd).await.code, 201);
    let path = format!("{CRDS}/leases.coordination.k8s.io");
    let crd = eventually(&api, &path, |c| condition(c, "NamesAccepted").is_some()).await;
    assert_eq!(
        condition(&crd, "NamesAccepted").map(|c| &c["reason"]),
        Some(&json!("PluralConflict")),
        "{crd}"
    );
    assert_eq!(api.delete(&path).await.code, 200);
    let gone = eventually(&api, &path, |c| c["code"] == 404).await;
    assert_eq!(gone["code"], 404, "{gone}");
    assert_eq!(
        api.get(&format!("{leases}/keep-me")).await.code,
        200,
        "the built-in Lease must stay"
    );
}

/// Objects written before a CRD moved its storage version are served,
/// and patched, at any served version.
#[tokio::test]
async fn objects_stored_before_a_storage_version_change_stay_usable() {
    let (_server, api) = server(&[]).await;
    let mut crd = widget_crd();
    crd["spec"]["versions"][0]["storage"] = json!(true);
    crd["spec"]["versions"][1]["storage"] = json!(false);
    assert_eq!(api.post(CRDS, &crd).await.code, 201);
    established(&api, "widgets.shop.example.com").await;
    let beta = "/apis/shop.example.com/v1beta1/namespaces/default/widgets";
    let ga = "/apis/shop.example.com/v1/namespaces/default/widgets";
    let w = json!({"apiVersion": "shop.example.com/v1beta1", "kind": "Widget", "metadata": {"name": "old"}, "spec": {"size": 1}});
    assert_eq!(api.post(beta, &w).await.code, 201);
    // Storage moves to v1.
    let path = format!("{CRDS}/widgets.shop.example.com");
    let mut current = api.get(&path).await.body;
    current["spec"]["versions"][0]["storage"] = json!(false);
    current["spec"]["versions"][1]["storage"] = json!(true);
    let updated = api.put(&path, &current).await;
    assert_eq!(updated.code, 200, "{}", updated.body);
    let crd = eventually(&api, &path, |c| {
        c["status"]["storedVersions"] == json!(["v1beta1", "v1"])
    })
    .await;
    assert_eq!(
        crd["status"]["storedVersions"],
        json!(["v1beta1", "v1"]),
        "{crd}"
    );
    // Wait until this server serves v1 as the storage version.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = api.get(&format!("{ga}/old")).await;
        assert_eq!(got.code, 200, "{}", got.body);
        assert_eq!(
            got.body["apiVersion"], "shop.example.com/v1",
            "{}",
            got.body
        );
        let patched = api
            .raw(
                reqwest::Method::PATCH,
                &format!("{ga}/old"),
                "application/merge-patch+json",
                br#"{"spec":{"size":2}}"#.to_vec(),
            )
            .await;
        if patched.code == 200 {
            assert_eq!(patched.body["apiVersion"], "shop.example.com/v1");
            break;
        }
        assert!(Instant::now() < deadline, "{}", patched.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = api.get(ga).await.body;
    assert_eq!(
        list["items"][0]["apiVersion"], "shop.example.com/v1",
        "{list}"
    );
    // And server-side apply creates through the non-storage version.
    let applied = api
        .raw(reqwest::Method::PATCH, &format!("{beta}/new?fieldManager=test"), "application/apply-patch+yaml",
            br#"{"apiVersion":"shop.example.com/v1beta1","kind":"Widget","metadata":{"name":"new"},"spec":{"size":3}}"#.to_vec())
        .await;
    assert_eq!(applied.code, 201, "{}", applied.body);
    assert_eq!(applied.body["apiVersion"], "shop.example.com/v1beta1");
}
