//! Options every write takes, over HTTP against the real binary: `dryRun=All`
//! on every verb writes nothing, delete preconditions are checked, and a
//! delete of a collection removes exactly what its selectors match.

use std::time::Duration;

use mube_e2e::{node, rv, Api, ApiServer, Options, Reply};
use reqwest::Method;
use serde_json::{json, Value};

const NODES: &str = "/api/v1/nodes";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";

async fn server(nodes: &[&'static str]) -> (ApiServer, Api) {
    let server = ApiServer::start(Options {
        nodes: nodes.iter().map(|n| node(n)).collect(),
        notready_timeout: "60s",
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    (server, api)
}

async fn send(api: &Api, method: Method, path: &str, content_type: &str, body: Value) -> Reply {
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    api.raw(method, path, content_type, bytes).await
}

/// The list's resourceVersion and every item, to compare before and after.
async fn snapshot(api: &Api, path: &str) -> (String, Value) {
    let list = api.get(path).await;
    assert_eq!(list.code, 200, "{:?}", list.body);
    (
        list.body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string(),
        list.body["items"].clone(),
    )
}

#[tokio::test]
async fn a_dry_run_of_every_write_answers_as_the_write_and_changes_nothing() {
    let (_server, api) = server(&["node-a", "node-b"]).await;
    assert_eq!(api.heartbeat("node-a").await.code, 202);
    let before = snapshot(&api, NODES).await;
    let leases_before = snapshot(&api, LEASES).await;
    let mut watch = api
        .watch(NODES, &format!("resourceVersion={}", before.0))
        .await;
    let node_a = api.get("/api/v1/nodes/node-a").await.body;
    let json_ct = "application/json";

    // create: 201, the object as it would be stored, with no resourceVersion.
    let created = send(
        &api,
        Method::POST,
        "/api/v1/nodes?dryRun=All",
        json_ct,
        json!({"metadata": {"name": "node-new", "labels": {"x": "1"}}}),
    )
    .await;
    assert_eq!(created.code, 201, "{:?}", created.body);
    assert_eq!(created.body["metadata"]["name"], "node-new");
    assert_eq!(created.body["status"]["state"], "Unknown");
    assert!(created.body["metadata"]["uid"].is_string());
    assert!(created.body["metadata"].get("resourceVersion").is_none());
    // Every check still runs: conflicts and validation.
    let exists = send(
        &api,
        Method::POST,
        "/api/v1/nodes?dryRun=All",
        json_ct,
        json!({"metadata": {"name": "node-a"}}),
    )
    .await;
    assert_eq!(exists.code, 409);
    let invalid = send(
        &api,
        Method::POST,
        "/api/v1/nodes?dryRun=All&fieldValidation=Strict",
        json_ct,
        json!({"metadata": {"name": "node-x"}, "spec": {"bogus": 1}}),
    )
    .await;
    assert_eq!(invalid.code, 400, "{:?}", invalid.body);

    // update and status update: 200, the change at the current resourceVersion.
    let mut changed = node_a.clone();
    changed["metadata"]["labels"] = json!({"env": "prod"});
    let updated = send(
        &api,
        Method::PUT,
        "/api/v1/nodes/node-a?dryRun=All",
        json_ct,
        changed.clone(),
    )
    .await;
    assert_eq!(updated.code, 200, "{:?}", updated.body);
    assert_eq!(updated.body["metadata"]["labels"]["env"], "prod");
    assert_eq!(rv(&updated.body), rv(&node_a));
    let mut stale = changed.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let stale = send(
        &api,
        Method::PUT,
        "/api/v1/nodes/node-a?dryRun=All",
        json_ct,
        stale,
    )
    .await;
    assert_eq!(stale.code, 409);
    let mut status = node_a.clone();
    status["status"]["capacity"] = json!({"pods": "99"});
    let status = send(
        &api,
        Method::PUT,
        "/api/v1/nodes/node-a/status?dryRun=All",
        json_ct,
        status,
    )
    .await;
    assert_eq!(status.code, 200, "{:?}", status.body);
    assert_eq!(status.body["status"]["capacity"]["pods"], "99");

    // patch, every type, on the object and on its status.
    for (content_type, body) in [
        (
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"m": "1"}}}),
        ),
        (
            "application/strategic-merge-patch+json",
            json!({"spec": {"unschedulable": true}}),
        ),
        (
            "application/json-patch+json",
            json!([{"op": "add", "path": "/metadata/labels", "value": {"j": "2"}}]),
        ),
    ] {
        for path in [
            "/api/v1/nodes/node-a?dryRun=All",
            "/api/v1/nodes/node-a/status?dryRun=All",
        ] {
            let patched = send(&api, Method::PATCH, path, content_type, body.clone()).await;
            assert_eq!(
                patched.code, 200,
                "{content_type} {path}: {:?}",
                patched.body
            );
            assert_eq!(rv(&patched.body), rv(&node_a));
        }
    }

    // delete: dryRun in the query, and in the DeleteOptions body (kubectl's way).
    let deleted = send(
        &api,
        Method::DELETE,
        "/api/v1/nodes/node-b?dryRun=All",
        json_ct,
        Value::Null,
    )
    .await;
    assert_eq!(deleted.code, 200, "{:?}", deleted.body);
    assert_eq!(deleted.body["metadata"]["name"], "node-b");
    let deleted = send(
        &api,
        Method::DELETE,
        "/api/v1/nodes/node-b",
        json_ct,
        json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background", "dryRun": ["All"]}),
    )
    .await;
    assert_eq!(deleted.code, 200, "{:?}", deleted.body);
    let collection = send(
        &api,
        Method::DELETE,
        "/api/v1/nodes?dryRun=All",
        json_ct,
        Value::Null,
    )
    .await;
    assert_eq!(collection.code, 200, "{:?}", collection.body);
    assert_eq!(collection.body["kind"], "NodeList");
    assert_eq!(collection.body["items"].as_array().unwrap().len(), 2);

    // A namespaced kind too.
    let lease = send(
        &api,
        Method::POST,
        &format!("{LEASES}?dryRun=All"),
        json_ct,
        json!({"metadata": {"name": "dry"}, "spec": {"holderIdentity": "x"}}),
    )
    .await;
    assert_eq!(lease.code, 201, "{:?}", lease.body);
    assert_eq!(lease.body["metadata"]["namespace"], "kube-node-lease");

    // Nothing changed: objects, resourceVersions, and the watch stream.
    assert_eq!(snapshot(&api, NODES).await.1, before.1);
    assert_eq!(snapshot(&api, LEASES).await.1, leases_before.1);
    let real = api
        .post(NODES, &json!({"metadata": {"name": "node-real"}}))
        .await;
    assert_eq!(real.code, 201);
    let first = watch.next(Duration::from_secs(10)).await.expect("an event");
    assert_eq!(first.object["metadata"]["name"], "node-real");
    assert_eq!(rv(&first.object), rv(&real.body));
    // Revisions in between went only to the server's own writes (Events).
    let (from, to) = (before.0.parse::<u64>().unwrap(), rv(&real.body));
    assert_eq!(
        (to - from - 1) as usize,
        api.objects_written_between(from, to).await,
        "a dry run used a revision"
    );
}

#[tokio::test]
async fn bad_dry_run_values_are_refused_and_the_heartbeat_never_dry_runs() {
    let (_server, api) = server(&["node-a"]).await;
    for (method, path, kind) in [
        (Method::POST, "/api/v1/nodes?dryRun=Bogus", "CreateOptions"),
        (Method::POST, "/api/v1/nodes?dryRun=", "CreateOptions"),
        (
            Method::PUT,
            "/api/v1/nodes/node-a?dryRun=all",
            "UpdateOptions",
        ),
        (
            Method::PATCH,
            "/api/v1/nodes/node-a?dryRun=All&dryRun=x",
            "PatchOptions",
        ),
        (
            Method::DELETE,
            "/api/v1/nodes/node-a?dryRun=Bogus",
            "DeleteOptions",
        ),
    ] {
        let reply = send(
            &api,
            method.clone(),
            path,
            "application/merge-patch+json",
            if method == Method::DELETE {
                Value::Null
            } else {
                json!({"metadata": {"name": "node-a"}})
            },
        )
        .await;
        assert_eq!(reply.code, 422, "{method} {path}: {:?}", reply.body);
        let message = reply.body["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!(
                "{kind}.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: []string{{"
            )),
            "{message}"
        );
        assert_eq!(reply.body["details"]["causes"][0]["field"], "dryRun");
    }
    assert_eq!(api.get("/api/v1/nodes/node-a").await.code, 200);

    let hb = json!({"name": "node-a", "runtime": "containerd", "version": "0.1.0", "capacity": 10});
    let before = snapshot(&api, NODES).await;
    for query in ["dryRun=All", "dryRun="] {
        let refused = send(
            &api,
            Method::POST,
            &format!("/api/v1/nodes/heartbeat?{query}"),
            "application/json",
            hb.clone(),
        )
        .await;
        assert_eq!(refused.code, 400, "{query}: {:?}", refused.body);
        assert!(refused.body["message"].as_str().unwrap().contains("dryRun"));
    }
    assert_eq!(snapshot(&api, NODES).await.1, before.1);
    assert_eq!(api.get(&format!("{LEASES}/node-a")).await.code, 404);
}

#[tokio::test]
async fn delete_preconditions_are_checked_with_the_delete() {
    let (_server, api) = server(&["node-a"]).await;
    let node = api.get("/api/v1/nodes/node-a").await.body;
    let uid = node["metadata"]["uid"].as_str().unwrap().to_string();
    let version = rv(&node);
    let delete = |preconditions: Value| {
        let api = api.clone();
        async move {
            send(
                &api,
                Method::DELETE,
                "/api/v1/nodes/node-a",
                "application/json",
                json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": preconditions}),
            )
            .await
        }
    };

    let wrong_uid = delete(json!({"uid": "wrong"})).await;
    assert_eq!(wrong_uid.code, 409, "{:?}", wrong_uid.body);
    assert_eq!(wrong_uid.body["reason"], "Conflict");
    let message = wrong_uid.body["message"].as_str().unwrap();
    assert!(
        message.starts_with("Operation cannot be fulfilled on nodes \"node-a\": "),
        "{message}"
    );
    assert!(
        message.ends_with(&format!(
            "Precondition failed: UID in precondition: wrong, UID in object meta: {uid}"
        )),
        "{message}"
    );
    let stale = delete(json!({"resourceVersion": (version - 1).to_string()})).await;
    assert_eq!(stale.code, 409, "{:?}", stale.body);
    assert!(stale.body["message"]
        .as_str()
        .unwrap()
        .ends_with(&format!(
            "Precondition failed: ResourceVersion in precondition: {}, ResourceVersion in object meta: {version}",
            version - 1
        )));
    let right_uid_stale_version =
        delete(json!({"uid": uid, "resourceVersion": (version + 1).to_string()})).await;
    assert_eq!(right_uid_stale_version.code, 409);
    // The object is untouched.
    let still = api.get("/api/v1/nodes/node-a").await;
    assert_eq!(still.code, 200);
    assert_eq!(rv(&still.body), version);

    let empty_uid = delete(json!({"uid": ""})).await;
    assert_eq!(empty_uid.code, 409, "an empty uid is a precondition too");
    // dryRun in the query with a DeleteOptions body that names none: a dry run.
    let dry = send(
        &api,
        Method::DELETE,
        "/api/v1/nodes/node-a?dryRun=All",
        "application/json",
        json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}),
    )
    .await;
    assert_eq!(dry.code, 200, "{:?}", dry.body);
    assert_eq!(api.get("/api/v1/nodes/node-a").await.code, 200);

    // Options that make no sense are refused, not dropped.
    for options in [
        json!({"propagationPolicy": "Sideways"}),
        json!({"propagationPolicy": "Orphan", "orphanDependents": true}),
    ] {
        let reply = send(
            &api,
            Method::DELETE,
            "/api/v1/nodes/node-a",
            "application/json",
            options.clone(),
        )
        .await;
        assert_eq!(reply.code, 422, "{options}: {:?}", reply.body);
        assert_eq!(reply.body["details"]["kind"], "DeleteOptions");
    }
    assert_eq!(api.get("/api/v1/nodes/node-a").await.code, 200);

    let done = delete(json!({"uid": uid, "resourceVersion": version.to_string()})).await;
    assert_eq!(done.code, 200, "{:?}", done.body);
    assert_eq!(api.get("/api/v1/nodes/node-a").await.code, 404);
}

#[tokio::test]
async fn delete_collection_removes_exactly_what_the_selectors_match() {
    let (_server, api) = server(&[]).await;
    for (name, pool) in [("a-1", "a"), ("a-2", "a"), ("b-1", "b"), ("c-1", "c")] {
        let reply = api
            .post(
                NODES,
                &json!({"metadata": {"name": name, "labels": {"pool": pool}}}),
            )
            .await;
        assert_eq!(reply.code, 201);
    }
    let names = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    // A dry run answers what it would delete, and deletes nothing.
    let dry = send(
        &api,
        Method::DELETE,
        "/api/v1/nodes?labelSelector=pool%3Da&dryRun=All",
        "application/json",
        Value::Null,
    )
    .await;
    assert_eq!(dry.code, 200, "{:?}", dry.body);
    assert_eq!(names(&dry.body), ["a-1", "a-2"]);
    assert_eq!(names(&api.get(NODES).await.body).len(), 4);

    let deleted = send(
        &api,
        Method::DELETE,
        "/api/v1/nodes?labelSelector=pool%3Da",
        "application/json",
        Value::Null,
    )
    .await;
    assert_eq!(deleted.code, 200, "{:?}", deleted.body);
    assert_eq!(deleted.body["kind"], "NodeList");
    assert_eq!(names(&deleted.body), ["a-1", "a-2"]);
    assert_eq!(names(&api.get(NODES).await.body), ["b-1", "c-1"]);

    let by_field = send(
        &api,
        Method::DELETE,
        "/api/v1/nodes?fieldSelector=metadata.name%3Dc-1",
        "application/json",
        json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}),
    )
    .await;
    assert_eq!(names(&by_field.body), ["c-1"]);
    assert_eq!(names(&api.get(NODES).await.body), ["b-1"]);

    // Preconditions apply per item: a uid matches at most one object.
    let b1 = api.get("/api/v1/nodes/b-1").await.body;
    let refused = send(
        &api,
        Method::DELETE,
        NODES,
        "application/json",
        json!({"preconditions": {"uid": "wrong"}}),
    )
    .await;
    assert_eq!(refused.code, 409, "{:?}", refused.body);
    assert_eq!(names(&api.get(NODES).await.body), ["b-1"]);
    let matched = send(
        &api,
        Method::DELETE,
        NODES,
        "application/json",
        json!({"preconditions": {"uid": b1["metadata"]["uid"]}}),
    )
    .await;
    assert_eq!(matched.code, 200);
    assert_eq!(names(&api.get(NODES).await.body), Vec::<String>::new());

    // A namespaced kind: within one namespace; never across all of them.
    for ns in ["team-a", "team-b"] {
        let made = api
            .post(
                "/api/v1/namespaces",
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .await;
        assert_eq!(made.code, 201, "{:?}", made.body);
    }
    for (ns, name) in [("team-a", "l1"), ("team-a", "l2"), ("team-b", "l1")] {
        let reply = api
            .post(
                &format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"),
                &json!({"metadata": {"name": name}, "spec": {}}),
            )
            .await;
        assert_eq!(reply.code, 201, "{:?}", reply.body);
    }
    let across = send(
        &api,
        Method::DELETE,
        "/apis/coordination.k8s.io/v1/leases",
        "application/json",
        Value::Null,
    )
    .await;
    assert_eq!(across.code, 405, "{:?}", across.body);
    let team_a = send(
        &api,
        Method::DELETE,
        "/apis/coordination.k8s.io/v1/namespaces/team-a/leases",
        "application/json",
        Value::Null,
    )
    .await;
    assert_eq!(team_a.code, 200, "{:?}", team_a.body);
    assert_eq!(names(&team_a.body), ["l1", "l2"]);
    let left = api.get("/apis/coordination.k8s.io/v1/leases").await.body;
    assert_eq!(names(&left), ["l1"]);
    assert_eq!(left["items"][0]["metadata"]["namespace"], "team-b");
}

/// Server-side apply's request options, answered as Kubernetes answers
/// them: `fieldManager` is required, `force` belongs to apply alone, an
/// apply that creates is 201, a dry-run apply stores nothing, and a
/// manager can not smuggle managedFields in.
#[tokio::test]
async fn apply_request_options() {
    let server = mube_e2e::ApiServer::start(Default::default()).await;
    let api = mube_e2e::Api::new(&server);
    let path = "/apis/coordination.k8s.io/v1/namespaces/default/leases/applied";
    let apply = |query: &'static str, body: &'static str| {
        let api = api.clone();
        async move {
            api.raw(
                reqwest::Method::PATCH,
                &format!("{path}{query}"),
                "application/apply-patch+yaml",
                body.as_bytes().to_vec(),
            )
            .await
        }
    };
    let yaml = "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: applied}\nspec: {holderIdentity: a}\n";

    let missing = apply("", yaml).await;
    assert_eq!(missing.code, 422, "{}", missing.body);
    assert_eq!(
        missing.body["message"],
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );
    let dry = apply("?fieldManager=m&dryRun=All", yaml).await;
    assert_eq!(dry.code, 201, "{}", dry.body);
    assert_eq!(api.get(path).await.code, 404, "a dry run stores nothing");
    let created = apply("?fieldManager=m", yaml).await;
    assert_eq!(created.code, 201, "{}", created.body);
    assert_eq!(created.body["metadata"]["managedFields"][0]["manager"], "m");
    let again = apply("?fieldManager=m", yaml).await;
    assert_eq!(again.code, 200, "{}", again.body);
    assert_eq!(
        again.body["metadata"]["resourceVersion"], created.body["metadata"]["resourceVersion"],
        "an apply that changes nothing writes nothing"
    );

    let smuggled = apply(
        "?fieldManager=m",
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: applied, managedFields: [{manager: x}]}\n",
    )
    .await;
    assert_eq!(smuggled.code, 400, "{}", smuggled.body);
    let no_kind = apply("?fieldManager=m", "metadata: {name: applied}\n").await;
    assert_eq!(no_kind.code, 400, "{}", no_kind.body);
    let not_yaml = apply("?fieldManager=m", "spec: [unclosed\n").await;
    assert_eq!(not_yaml.code, 400, "{}", not_yaml.body);

    let forced_merge = api
        .raw(
            reqwest::Method::PATCH,
            &format!("{path}?force=true"),
            "application/merge-patch+json",
            br#"{"spec":{"holderIdentity":"b"}}"#.to_vec(),
        )
        .await;
    assert_eq!(forced_merge.code, 422, "{}", forced_merge.body);
    // A merge patch is an update: recorded beside the apply, under the
    // client's User-Agent (this client sends none).
    let merged = api
        .raw(
            reqwest::Method::PATCH,
            path,
            "application/merge-patch+json",
            br#"{"metadata":{"labels":{"x":"y"}}}"#.to_vec(),
        )
        .await;
    assert_eq!(merged.code, 200, "{}", merged.body);
    let managers: Vec<&str> = merged.body["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert_eq!(managers.len(), 2, "{}", merged.body);
    assert_eq!(managers[0], "m");
    assert_eq!(managers[1], "", "{managers:?}");
    assert_eq!(
        merged.body["metadata"]["managedFields"][1]["operation"],
        "Update"
    );
}
