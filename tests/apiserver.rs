//! End-to-end tests of `mube-apiserver`: the real binary on a free port with
//! a temporary data directory, driven over HTTP.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mube_apis::watch::EventType;
use mube_e2e::{node, rv, state, Api, ApiServer, Options};
use serde_json::{json, Value};

const NODES: &str = "/api/v1/nodes";

fn new_node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

#[tokio::test]
async fn node_goes_unknown_ready_notready_and_the_watch_sees_exactly_that() {
    let server = ApiServer::start(Options {
        nodes: vec![node("node-a"), node("node-b")],
        notready_timeout: "2s",
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);

    // Registration -> Unknown.
    let list = api.get(NODES).await;
    assert_eq!(list.code, 200);
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|n| state(n) == "Unknown"), "{items:?}");
    let a = api.get("/api/v1/nodes/node-a").await.body;
    assert_eq!(
        a["status"]["addresses"][0],
        json!({"type": "InternalIP", "address": "127.0.0.1"})
    );
    assert_eq!(
        a["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"],
        10250
    );
    let list_rv = list.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut watch = api
        .watch(
            NODES,
            &format!("resourceVersion={list_rv}&fieldSelector=metadata.name%3Dnode-a"),
        )
        .await;

    // Heartbeat -> Ready, and a steady stream of heartbeats writes nothing more.
    let reply = api.heartbeat("node-a").await;
    assert_eq!(reply.code, 202);
    assert_eq!(state(&reply.body), "Ready");
    assert_eq!(
        reply.body["status"]["nodeInfo"]["containerRuntimeVersion"],
        "containerd"
    );
    assert_eq!(reply.body["status"]["capacity"]["pods"], "10");
    let ready_rv = rv(&reply.body);
    let mut last_beat = Instant::now();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // From the send: the Lease's renewTime is no earlier than this,
        // however long the answer takes on a loaded machine.
        let sent = Instant::now();
        let r = api.heartbeat("node-a").await;
        assert_eq!(r.code, 202);
        assert_eq!(
            rv(&r.body),
            ready_rv,
            "a heartbeat that changes nothing must not write the node"
        );
        last_beat = sent;
    }
    let lease = api
        .get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/node-a")
        .await;
    assert_eq!(lease.code, 200);
    assert_eq!(lease.body["spec"]["holderIdentity"], "node-a");

    // Heartbeats stop -> NotReady within timeout + 1 s.
    let first = watch
        .next(Duration::from_secs(5))
        .await
        .expect("Ready event");
    assert_eq!(first.type_, EventType::Modified);
    assert_eq!(state(&first.object), "Ready");
    let second = watch
        .next(Duration::from_secs(6))
        .await
        .expect("NotReady event");
    let took = last_beat.elapsed();
    assert_eq!(second.type_, EventType::Modified);
    assert_eq!(state(&second.object), "NotReady");
    let cond = &second.object["status"]["conditions"][0];
    assert_eq!(
        (cond["type"].as_str(), cond["status"].as_str()),
        (Some("Ready"), Some("False"))
    );
    assert!(
        took <= Duration::from_secs(3),
        "NotReady came {took:?} after the last heartbeat (timeout 2s)"
    );
    assert!(
        took >= Duration::from_millis(1900),
        "NotReady came too early: {took:?}"
    );
    // Nothing else: no heartbeat noise, no repeats.
    assert!(watch.next(Duration::from_millis(500)).await.is_none());

    // A node that never heartbeats goes from Unknown to NotReady.
    let b = api.get("/api/v1/nodes/node-b").await.body;
    assert_eq!(state(&b), "NotReady");
    assert_eq!(
        b["status"]["conditions"][0]["reason"],
        "NodeStatusNeverUpdated"
    );

    // And back to Ready with the next heartbeat.
    assert_eq!(state(&api.heartbeat("node-a").await.body), "Ready");
    let back = watch
        .next(Duration::from_secs(2))
        .await
        .expect("Ready again");
    assert_eq!(state(&back.object), "Ready");
}

#[tokio::test]
async fn watch_resumes_across_a_restart_and_old_versions_are_gone() {
    let mut server = ApiServer::start(Options {
        nodes: vec![],
        extra_config: "historyRetention: 20\n".into(),
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    // resourceVersion "0" means "from the current state", so start from a real write.
    let first = api.post(NODES, &new_node("first")).await;
    assert_eq!(first.code, 201);
    let start_rv = rv(&first.body).to_string();
    assert_eq!(api.post(NODES, &new_node("before")).await.code, 201);
    server.kill9();
    server.restart().await;
    assert_eq!(api.post(NODES, &new_node("after")).await.code, 201);
    assert_eq!(api.delete("/api/v1/nodes/before").await.code, 200);

    let mut watch = api
        .watch(NODES, &format!("resourceVersion={start_rv}"))
        .await;
    let mut seen = Vec::new();
    while let Some(e) = watch.next(Duration::from_millis(500)).await {
        seen.push((
            e.type_,
            e.object["metadata"]["name"].as_str().unwrap().to_string(),
            rv(&e.object),
        ));
    }
    let kinds: Vec<_> = seen.iter().map(|(t, n, _)| (*t, n.as_str())).collect();
    assert_eq!(
        kinds,
        vec![
            (EventType::Added, "before"),
            (EventType::Added, "after"),
            (EventType::Deleted, "before")
        ],
        "{seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0].2 < w[1].2),
        "events must come in revision order: {seen:?}"
    );

    // Push the start out of the retained history: 410 Expired, then the end.
    for i in 0..25 {
        assert_eq!(api.post(NODES, &new_node(&format!("n{i}"))).await.code, 201);
    }
    let mut gone = api
        .watch(NODES, &format!("resourceVersion={start_rv}"))
        .await;
    let events = gone.drain(Duration::from_secs(3)).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].type_, EventType::Error);
    assert_eq!(events[0].object["code"], 410);
    assert_eq!(events[0].object["reason"], "Expired");
    assert!(gone.ended, "the stream must close after the 410");
}

#[tokio::test]
async fn watch_without_version_lists_first_and_honours_selectors_bookmarks_and_timeouts() {
    let server = ApiServer::start(Options {
        nodes: vec![],
        extra_config: "watchBookmarkInterval: 200ms\n".into(),
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    let mut labelled = new_node("web-1");
    labelled["metadata"]["labels"] = json!({"tier": "web"});
    assert_eq!(api.post(NODES, &labelled).await.code, 201);
    assert_eq!(api.post(NODES, &new_node("db-1")).await.code, 201);

    let mut all = api.watch(NODES, "").await;
    let mut web = api
        .watch(
            NODES,
            "labelSelector=tier%20in%20(web)&allowWatchBookmarks=true&timeoutSeconds=2",
        )
        .await;
    let names = |events: &[mube_apis::watch::WatchEvent]| {
        events
            .iter()
            .map(|e| {
                (
                    e.type_,
                    e.object["metadata"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let first = [
        all.next(Duration::from_secs(2)).await.unwrap(),
        all.next(Duration::from_secs(2)).await.unwrap(),
    ];
    assert_eq!(
        names(&first),
        vec![
            (EventType::Added, "db-1".into()),
            (EventType::Added, "web-1".into())
        ]
    );
    let w = web.next(Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        (w.type_, w.object["metadata"]["name"].as_str()),
        (EventType::Added, Some("web-1"))
    );

    // Relabel db-1 into the selector and web-1 out of it.
    let mut db = api.get("/api/v1/nodes/db-1").await.body;
    db["metadata"]["labels"] = json!({"tier": "web"});
    assert_eq!(api.put("/api/v1/nodes/db-1", &db).await.code, 200);
    let mut w1 = api.get("/api/v1/nodes/web-1").await.body;
    w1["metadata"]["labels"] = json!({"tier": "cache"});
    assert_eq!(api.put("/api/v1/nodes/web-1", &w1).await.code, 200);

    let events = web.drain(Duration::from_secs(4)).await;
    let changes: Vec<_> = names(&events)
        .into_iter()
        .filter(|(t, _)| *t != EventType::Bookmark)
        .collect();
    assert_eq!(
        changes,
        vec![
            (EventType::Added, "db-1".into()),
            (EventType::Deleted, "web-1".into())
        ]
    );
    let bookmark = events
        .iter()
        .find(|e| e.type_ == EventType::Bookmark)
        .expect("a bookmark within 2s at 200ms interval");
    assert!(rv(&bookmark.object) >= rv(&api.get("/api/v1/nodes/web-1").await.body));
    assert!(web.ended, "timeoutSeconds=2 must end the watch");

    let rest = all.drain(Duration::from_millis(500)).await;
    assert_eq!(
        names(&rest),
        vec![
            (EventType::Modified, "db-1".into()),
            (EventType::Modified, "web-1".into())
        ]
    );

    // Field selector on status.state; unsupported fields are refused.
    let unknown = api
        .get("/api/v1/nodes?fieldSelector=status.state%3DUnknown")
        .await;
    assert_eq!(unknown.body["items"].as_array().unwrap().len(), 2);
    let ready = api
        .get("/api/v1/nodes?fieldSelector=status.state%3DReady")
        .await;
    assert_eq!(ready.body["items"].as_array().unwrap().len(), 0);
    assert_eq!(
        api.get("/api/v1/nodes?fieldSelector=spec.podCIDR%3Dx")
            .await
            .code,
        400
    );
    assert_eq!(
        api.get("/api/v1/nodes?labelSelector=tier%20in%20web")
            .await
            .code,
        400
    );
}

fn assert_status(reply: &mube_e2e::Reply, code: u16, reason: &str) {
    assert_eq!(reply.code, code, "{}", reply.body);
    assert_eq!(reply.body["kind"], "Status", "{}", reply.body);
    assert_eq!(reply.body["status"], "Failure");
    assert_eq!(reply.body["code"], code);
    assert_eq!(reply.body["reason"], reason, "{}", reply.body);
}

#[tokio::test]
async fn errors_are_kubernetes_status_objects() {
    let server = ApiServer::start(Options::default()).await;
    let api = Api::new(&server);

    let r = api.heartbeat("stranger").await;
    assert_status(&r, 403, "Forbidden");
    assert!(r.body["message"].as_str().unwrap().contains("\"stranger\""));

    for (body, field) in [
        (
            json!({"runtime": "c", "version": "v", "capacity": 1}),
            "name",
        ),
        (
            json!({"name": "node-a", "version": "v", "capacity": 1}),
            "runtime",
        ),
        (
            json!({"name": "node-a", "runtime": "c", "capacity": 1}),
            "version",
        ),
        (
            json!({"name": "node-a", "runtime": "c", "version": "v"}),
            "capacity",
        ),
        (
            json!({"name": "node-a", "runtime": "c", "version": "v", "capacity": 0}),
            "capacity",
        ),
    ] {
        let r = api.post("/api/v1/nodes/heartbeat", &body).await;
        assert_status(&r, 400, "BadRequest");
        assert!(
            r.body["message"].as_str().unwrap().contains(field),
            "{} should name {field}",
            r.body
        );
    }
    let r = api
        .raw(
            reqwest::Method::POST,
            "/api/v1/nodes/heartbeat",
            "application/json",
            b"{not json".to_vec(),
        )
        .await;
    assert_status(&r, 400, "BadRequest");

    assert_status(
        &api.post(NODES, &new_node("node-a")).await,
        409,
        "AlreadyExists",
    );
    let mut stale = api.get("/api/v1/nodes/node-a").await.body;
    let mut fresh = stale.clone();
    fresh["metadata"]["labels"] = json!({"a": "1"});
    assert_eq!(api.put("/api/v1/nodes/node-a", &fresh).await.code, 200);
    stale["metadata"]["labels"] = json!({"a": "2"});
    assert_status(
        &api.put("/api/v1/nodes/node-a", &stale).await,
        409,
        "Conflict",
    );

    let big = vec![b' '; 3 * 1024 * 1024 + 1];
    assert_status(
        &api.raw(reqwest::Method::POST, NODES, "application/json", big)
            .await,
        413,
        "RequestEntityTooLarge",
    );

    let r = api.post(NODES, &new_node("Not_A_Name")).await;
    assert_status(&r, 422, "Invalid");
    assert_eq!(r.body["details"]["causes"][0]["field"], "metadata.name");
    let mut bad_label = new_node("ok-name");
    bad_label["metadata"]["labels"] = json!({"bad key": "v"});
    let r = api.post(NODES, &bad_label).await;
    assert_status(&r, 422, "Invalid");
    assert_eq!(r.body["details"]["causes"][0]["field"], "metadata.labels");
    bad_label["metadata"]["labels"] = json!({"k": "bad value!"});
    assert_status(&api.post(NODES, &bad_label).await, 422, "Invalid");

    assert_status(&api.get("/api/v1/nodes/missing").await, 404, "NotFound");
    assert_status(&api.get("/api/v1/deployments").await, 404, "NotFound");
    assert_status(
        &api.raw(reqwest::Method::POST, NODES, "text/plain", b"x".to_vec())
            .await,
        415,
        "UnsupportedMediaType",
    );
    assert_status(
        &api.raw(
            reqwest::Method::PATCH,
            "/api/v1/nodes/node-a/status/x",
            "application/json",
            vec![],
        )
        .await,
        404,
        "NotFound",
    );
    assert_status(&api.put(NODES, &json!({})).await, 405, "MethodNotAllowed");
    assert_status(
        &api.get("/api/v1/nodes?watch=true&resourceVersion=abc")
            .await,
        400,
        "BadRequest",
    );

    // A state that contradicts the Ready condition is refused.
    let mut node = api.get("/api/v1/nodes/node-a").await.body;
    node["status"]["state"] = json!("Ready");
    assert_status(
        &api.put("/api/v1/nodes/node-a/status", &node).await,
        422,
        "Invalid",
    );
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let server = kill_9_under_writers("").await;
    drop(server);
}

/// The same with 4 KiB log segments and a short history: segments rotate,
/// snapshots are written beside the writers and old segments are deleted
/// while the process is killed, and start-up must still give back every
/// acknowledged write from the snapshot plus the log.
#[tokio::test]
async fn acknowledged_writes_survive_kill_9_during_snapshots_and_segment_deletion() {
    let server = kill_9_under_writers("logSegmentBytes: 4096\nhistoryRetention: 50\n").await;
    let log_dir = server.data_dir().join("log");
    let names: Vec<String> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with(".snap")),
        "no snapshot was written: {names:?}"
    );
    let first_segment = names
        .iter()
        .filter_map(|n| {
            n.strip_prefix("wal-")?
                .strip_suffix(".log")?
                .parse::<u64>()
                .ok()
        })
        .min()
        .unwrap();
    assert!(
        first_segment > 1,
        "the oldest log segments were never deleted: {names:?}"
    );
}

/// 16 writers create nodes and then relabel each one twice, as fast as they
/// are answered; the server is killed under them and restarted. Every
/// acknowledged write must be there: each node at least at the version its
/// last acknowledged write returned (a write in flight at the kill may or
/// may not have landed; it was never acknowledged).
async fn kill_9_under_writers(extra_config: &str) -> ApiServer {
    let mut server = ApiServer::start(Options {
        nodes: vec![],
        extra_config: extra_config.into(),
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    let acked = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        u64,
    >::new()));
    let mut writers = Vec::new();
    for w in 0..16 {
        let api = api.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w}-{i}");
                let created = api
                    .http
                    .post(format!("{}{NODES}", api.base))
                    .json(&new_node(&name));
                let Some(version) = acknowledged(created, 201).await else {
                    return;
                };
                acked.lock().unwrap().insert(name.clone(), version);
                for round in 0..2 {
                    let relabel = api
                        .http
                        .patch(format!("{}{NODES}/{name}", api.base))
                        .header("content-type", "application/merge-patch+json")
                        .json(&json!({"metadata": {"labels": {"round": round.to_string()}}}));
                    let Some(version) = acknowledged(relabel, 200).await else {
                        return;
                    };
                    acked.lock().unwrap().insert(name.clone(), version);
                }
            }
        }));
    }
    // Let the writers run, then kill the server under them.
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    server.restart().await;
    let list = api.get(NODES).await.body;
    let stored: std::collections::HashMap<String, u64> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["metadata"]["name"].as_str().unwrap().to_string(), rv(n)))
        .collect();
    for (name, version) in &acked {
        let found = stored.get(name).copied();
        assert!(
            found.is_some_and(|f| f >= *version),
            "acknowledged write of {name} at {version} was lost (found {found:?})"
        );
    }
    eprintln!(
        "{} nodes with acknowledged writes, all present after kill -9",
        acked.len()
    );
    server
}

/// The resourceVersion of a write's answer, if it got the expected status.
async fn acknowledged(request: reqwest::RequestBuilder, status: u16) -> Option<u64> {
    let resp = request.send().await.ok()?;
    if resp.status().as_u16() != status {
        return None;
    }
    Some(rv(&resp.json::<Value>().await.ok()?))
}

#[tokio::test]
async fn concurrent_writers_get_success_or_conflict_and_nothing_else() {
    let server = ApiServer::start(Options::default()).await;
    let api = Api::new(&server);
    let mut tasks = Vec::new();
    for w in 0..50 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut node = api.get("/api/v1/nodes/node-a").await.body;
            let labels = node["metadata"]
                .as_object_mut()
                .unwrap()
                .entry("labels")
                .or_insert(json!({}));
            labels[format!("writer-{w}")] = json!("yes");
            let reply = api.put("/api/v1/nodes/node-a", &node).await;
            (w, reply.code)
        }));
    }
    let mut succeeded = BTreeSet::new();
    for t in tasks {
        let (w, code) = t.await.unwrap();
        assert!(code == 200 || code == 409, "writer {w} got {code}");
        if code == 200 {
            succeeded.insert(format!("writer-{w}"));
        }
    }
    assert!(!succeeded.is_empty());
    let labels: BTreeSet<String> = api.get("/api/v1/nodes/node-a").await.body["metadata"]["labels"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        labels, succeeded,
        "the final object must carry exactly the successful writes"
    );
}

#[tokio::test]
async fn registry_follows_the_config_and_restart_keeps_healthy_nodes_ready() {
    let mut server = ApiServer::start(Options {
        nodes: vec![node("node-a"), node("node-b")],
        notready_timeout: "2s",
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    assert_eq!(api.post(NODES, &new_node("api-made")).await.code, 201);
    assert_eq!(api.heartbeat("node-a").await.code, 202);
    server.kill9();
    // Down for longer than the timeout: the heartbeats could not arrive.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.write_config(
        &[mube_e2e::NodeSpec {
            name: "node-a",
            ip: "10.1.2.3",
            port: 10255,
        }],
        "",
    );
    server.restart().await;
    let names: BTreeSet<String> = api.get(NODES).await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["api-made", "node-a"].map(String::from).into(),
        "node-b left the config; api-made was not from it"
    );
    let a = api.get("/api/v1/nodes/node-a").await.body;
    assert_eq!(a["status"]["addresses"][0]["address"], "10.1.2.3");
    assert_eq!(
        a["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"],
        10255
    );
    assert_eq!(
        state(&a),
        "Ready",
        "start-up grace keeps a healthy node Ready"
    );
    // The agent comes back within the grace period: it never flaps.
    let mut watch = api
        .watch(
            NODES,
            &format!(
                "resourceVersion={}&fieldSelector=metadata.name%3Dnode-a",
                rv(&a)
            ),
        )
        .await;
    for _ in 0..6 {
        assert_eq!(api.heartbeat("node-a").await.code, 202);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        watch.next(Duration::from_millis(100)).await.is_none(),
        "node-a must not flap through NotReady"
    );
    // Silent past the timeout: NotReady.
    let e = watch
        .next(Duration::from_secs(4))
        .await
        .expect("NotReady after heartbeats stop");
    assert_eq!(state(&e.object), "NotReady");
}

#[tokio::test]
async fn a_slow_watcher_is_dropped_without_slowing_writers() {
    let server = ApiServer::start(Options {
        nodes: vec![],
        extra_config: "watchBuffer: 8\n".into(),
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    let start = rv(&api.get(NODES).await.body);
    let mut watch = api.watch(NODES, &format!("resourceVersion={start}")).await;
    // ~25 MB of events that nobody reads: far more than socket buffers hold.
    let padding = "x".repeat(256 * 1024);
    let started = Instant::now();
    for i in 0..100 {
        let mut n = new_node(&format!("big-{i}"));
        n["metadata"]["annotations"] = json!({"padding": padding});
        assert_eq!(api.post(NODES, &n).await.code, 201);
    }
    let writes = started.elapsed();
    let events = watch.drain(Duration::from_secs(10)).await;
    let last = events.last().expect("some events");
    assert_eq!(
        last.type_,
        EventType::Error,
        "the stream must end with an error"
    );
    assert_eq!(last.object["code"], 410);
    assert!(events.len() < 101, "the slow watcher was not dropped");
    assert!(
        writes < Duration::from_secs(20),
        "writers were held up: {writes:?}"
    );
}

#[tokio::test]
async fn shutdown_is_graceful_and_the_data_directory_is_exclusive() {
    let mut server = ApiServer::start(Options::default()).await;
    let api = Api::new(&server);

    let second = server.command().output().expect("run a second server");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use by another mube-apiserver"),
        "{stderr}"
    );

    let mut watch = api.watch(NODES, "").await;
    assert!(watch.next(Duration::from_secs(2)).await.is_some());
    let started = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(watch.drain(Duration::from_secs(2)).await.is_empty());
    assert!(watch.ended, "watches end at shutdown");
    server.restart().await;
    assert_eq!(api.get("/api/v1/nodes/node-a").await.code, 200);
}

#[tokio::test]
async fn bad_config_stops_start_up_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "nodes:\n  - {name: a, ip: 1.2.3.4, port: 70000}\n",
            "nodes[0].port",
        ),
        ("nodes:\n  - {name: a, ip: nope, port: 1}\n", "nodes[0].ip"),
        (
            "nodes:\n  - {name: a, ip: 1.2.3.4, port: 1}\n  - {name: a, ip: 1.2.3.5, port: 1}\n",
            "nodes[1].name",
        ),
        ("listenAdress: \":1\"\n", "listenAdress"),
        ("nodes: [\n", "apiserver.yaml"),
    ];
    for (yaml, field) in cases {
        let path = dir.path().join("apiserver.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = std::process::Command::new(mube_e2e::bin("mube-apiserver"))
            .env("MUBE_APISERVER_CONFIG", &path)
            .env("MUBE_APISERVER_DATA_DIR", dir.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{yaml:?} was accepted");
        assert!(
            stderr.contains(&path.display().to_string()) && stderr.contains(field),
            "{yaml:?}: {stderr}"
        );
    }
    std::fs::write(dir.path().join("apiserver.yaml"), "nodes: []\n").unwrap();
    let out = std::process::Command::new(mube_e2e::bin("mube-apiserver"))
        .env("MUBE_APISERVER_CONFIG", dir.path().join("apiserver.yaml"))
        .env("MUBE_NODE_NOTREADY_TIMEOUT", "soon")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("MUBE_NODE_NOTREADY_TIMEOUT"),
        "{stderr}"
    );
}

/// POST /api/v1/nodes/heartbeat is the original heartbeat; every other
/// method on that path is the Node named "heartbeat", like any other name.
#[tokio::test]
async fn a_node_named_heartbeat_is_an_ordinary_node() {
    let server = ApiServer::start(Options::default()).await;
    let api = Api::new(&server);
    let path = "/api/v1/nodes/heartbeat";
    assert_eq!(api.post(NODES, &new_node("heartbeat")).await.code, 201);
    let got = api.get(path).await;
    assert_eq!(got.code, 200, "{}", got.body);
    assert_eq!(got.body["metadata"]["name"], "heartbeat");
    let mut node = got.body;
    node["metadata"]["labels"] = json!({"edited": "yes"});
    let put = api.put(path, &node).await;
    assert_eq!(put.code, 200, "{}", put.body);
    let patch = api
        .raw(
            reqwest::Method::PATCH,
            path,
            "application/merge-patch+json",
            br#"{"metadata":{"labels":{"patched":"yes"}}}"#.to_vec(),
        )
        .await;
    assert_eq!(patch.code, 200, "{}", patch.body);
    assert_eq!(patch.body["metadata"]["labels"]["patched"], "yes");
    // The heartbeat itself still works.
    assert_eq!(api.heartbeat("node-a").await.code, 202);
    assert_eq!(api.delete(path).await.code, 200);
    assert_eq!(api.get(path).await.code, 404);
}

/// A Node that has heartbeated reads as Kubernetes' own type: `nodeInfo`
/// carries every field the schema requires (clients that validate
/// responses, such as the Python client, refused it before).
#[tokio::test]
async fn a_heartbeated_node_has_every_required_node_info_field() {
    use k8s_openapi::api::core::v1::Node;
    let server = ApiServer::start(Options::default()).await;
    let api = Api::new(&server);
    assert_eq!(api.heartbeat("node-a").await.code, 202);
    let got = api.get("/api/v1/nodes/node-a").await;
    assert_eq!(got.code, 200);
    let info = &got.body["status"]["nodeInfo"];
    for key in mube_apis::node::NODE_INFO_REQUIRED {
        assert!(info[key].is_string(), "nodeInfo.{key} missing: {info}");
    }
    assert_eq!(info["containerRuntimeVersion"], "containerd");
    let node: Node =
        serde_json::from_value(got.body.clone()).expect("a Node as Kubernetes types it");
    assert_eq!(
        node.status
            .and_then(|s| s.node_info)
            .map(|i| i.kubelet_version),
        Some("0.1.0".to_string())
    );
    let list = api.get(NODES).await;
    for item in list.body["items"].as_array().unwrap() {
        serde_json::from_value::<Node>(item.clone())
            .expect("every listed Node as Kubernetes types it");
    }
}

/// Each node is created with its own /24 of clusterCIDR as spec.podCIDR;
/// a deleted node's range is given again, and after a restart the ranges
/// in use are known.
#[tokio::test]
async fn nodes_get_their_own_pod_cidrs() {
    let mut server = ApiServer::start(Options {
        nodes: vec![],
        extra_config: "clusterCIDR: 10.10.0.0/22\n".into(),
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    let cidr = |r: &mube_e2e::Reply| r.body["spec"]["podCIDR"].as_str().unwrap_or("").to_string();
    let a = api.post(NODES, &new_node("a")).await;
    let b = api.post(NODES, &new_node("b")).await;
    assert_eq!(
        (cidr(&a).as_str(), cidr(&b).as_str()),
        ("10.10.0.0/24", "10.10.1.0/24")
    );
    assert_eq!(b.body["spec"]["podCIDRs"], json!(["10.10.1.0/24"]));
    assert_eq!(api.delete("/api/v1/nodes/a").await.code, 200);
    assert_eq!(cidr(&api.post(NODES, &new_node("c")).await), "10.10.0.0/24");
    server.kill9();
    server.restart().await;
    assert_eq!(cidr(&api.post(NODES, &new_node("d")).await), "10.10.2.0/24");
    assert_eq!(cidr(&api.post(NODES, &new_node("e")).await), "10.10.3.0/24");
    // A range a client names must be a free node range of clusterCIDR, and
    // an update may not change one.
    let mut bad = new_node("bad");
    bad["spec"] = json!({"podCIDR": "10.10.0.0/22"});
    assert_eq!(api.post(NODES, &bad).await.code, 422);
    bad["spec"] = json!({"podCIDR": "10.10.2.0/24"});
    let taken = api.post(NODES, &bad).await;
    assert_eq!(taken.code, 422, "{}", taken.body);
    assert!(
        taken.body.to_string().contains("already in use"),
        "{}",
        taken.body
    );
    let mut c = api.get("/api/v1/nodes/c").await.body;
    c["spec"]["podCIDR"] = json!("10.10.3.0/24");
    c["spec"]["podCIDRs"] = json!(["10.10.3.0/24"]);
    assert_eq!(api.put("/api/v1/nodes/c", &c).await.code, 422);
    // The range is used up: a node without one, said in the log once.
    let f = api.post(NODES, &new_node("f")).await;
    assert_eq!(f.code, 201);
    assert!(f.body["spec"]["podCIDR"].is_null(), "{}", f.body);
}

/// A watcher whose client stops reading is closed once its queued events
/// have waited `watchStuckTimeout` (counted in
/// `apiserver_terminated_watchers_total`, and its connection closed),
/// while another watcher of the same resource gets every event, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_closed_and_the_others_get_every_event() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = ApiServer::start(Options {
        nodes: vec![],
        extra_config: "watchStuckTimeout: 1s\n".into(),
        ..Options::default()
    })
    .await;
    let api = Api::new(&server);
    const CMS: &str = "/api/v1/namespaces/default/configmaps";
    let open_watches = || async {
        let text = api.get("/metrics").await.body;
        mube_e2e::metric(
            text.as_str().unwrap_or(""),
            "apiserver_longrunning_requests",
            &[],
        )
    };
    let mut reader = api.watch(CMS, "").await;
    // A client that asks and then never reads, with a small receive buffer.
    let addr: std::net::SocketAddr = server
        .url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(addr).await.unwrap();
    stuck
        .write_all(format!("GET {CMS}?watch=true HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_watches().await < 2.0 {
        assert!(Instant::now() < deadline, "the two watches never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The reader reads as the events come (a reader that paused longer
    // than the budget would be closed too).
    let reading = tokio::spawn(async move {
        let mut names = Vec::new();
        while names.len() < 200 {
            let Some(event) = reader.next(Duration::from_secs(10)).await else {
                break;
            };
            assert_eq!(event.type_, EventType::Added, "{:?}", event.object);
            names.push(
                event.object["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        (reader, names)
    });
    // 200 ConfigMaps of 64 KiB: far more than the stuck client's socket
    // buffers (the kernel's grow to a few MiB on loopback) and the
    // server's budget for it hold.
    let started = Instant::now();
    let value = "x".repeat(64 * 1024);
    for i in 0..200 {
        let cm = json!({"metadata": {"name": format!("cm-{i:03}")}, "data": {"v": value}});
        assert_eq!(api.post(CMS, &cm).await.code, 201);
    }
    let (mut reader, names) = reading.await.expect("the reader");
    let wanted: Vec<String> = (0..200).map(|i| format!("cm-{i:03}")).collect();
    assert_eq!(names, wanted, "every event, in order");

    // The stuck watcher goes within its budget (1 s of no progress, and a
    // second's grace for the closing event), and its connection with it.
    loop {
        let text = api.get("/metrics").await.body;
        let text = text.as_str().unwrap_or("");
        let terminated = mube_e2e::metric(
            text,
            "apiserver_terminated_watchers_total",
            &[("resource", "configmaps")],
        );
        if terminated == 1.0 && open_watches().await == 1.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the stuck watcher is still open: terminated={terminated}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sink = vec![0u8; 1 << 20];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stuck.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server must close the stuck connection");
    // The reader is still served.
    let cm = json!({"metadata": {"name": "after"}, "data": {"v": "1"}});
    assert_eq!(api.post(CMS, &cm).await.code, 201);
    let event = reader
        .next(Duration::from_secs(5))
        .await
        .expect("the event after");
    assert_eq!(event.object["metadata"]["name"], "after");
}

/// Watches of pods by `spec.nodeName` are found through the fan-out's
/// index: each receives exactly its node's events (see
/// `mube_e2e::indexed_watches_get_exactly_their_nodes_events`).
#[tokio::test]
async fn an_indexed_watch_receives_exactly_its_nodes_events() {
    let server = ApiServer::start(Options {
        nodes: vec![],
        ..Options::default()
    })
    .await;
    let api = Api::new(&server);
    mube_e2e::indexed_watches_get_exactly_their_nodes_events(&api, &api).await;
}
