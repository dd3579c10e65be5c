//! mube-apiserver on etcd (`storage.backend: etcd`): a real etcd on free
//! loopback ports with a temporary data directory, and two API servers on
//! it. Without etcd installed, or without protoc (the API server is then
//! built without its etcd backend, as `make test` says), these tests say so
//! and pass, except under `CI=true`, where they must run.

use std::time::Duration;

use mube_apis::watch::EventType;
use mube_e2e::etcd::Etcd;
use mube_e2e::{node, rv, state, Api, ApiServer, Mubelet, Options};
use serde_json::json;

/// etcd, or `None` (said on stderr) when this machine cannot run these:
/// without protoc the API server is built without its etcd backend.
fn etcd() -> Option<Etcd> {
    mube_e2e::etcd::available(&["etcd", "protoc"]).then(Etcd::start)
}

async fn on_etcd(etcd: &Etcd) -> ApiServer {
    ApiServer::start(Options {
        nodes: vec![],
        extra_config: format!(
            "storage:\n  backend: etcd\n  etcd:\n    endpoints: [\"{}\"]\n",
            etcd.url
        ),
        ..Options::default()
    })
    .await
}

/// `check`, every 100 ms, until it gives a value; after `within`, the test
/// fails with `what` and the last thing `check` saw.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: after {within:?}, {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits, through `api`, for node `name` to be in `wanted` state.
async fn node_becomes(api: &Api, name: &str, wanted: &str) {
    eventually(Duration::from_secs(20), name, || async {
        let n = api.get(&format!("/api/v1/nodes/{name}")).await;
        if state(&n.body) == wanted {
            Ok(())
        } else {
            Err(format!("not {wanted}: {}", n.body))
        }
    })
    .await
}

fn configmap(name: &str, value: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": value}})
}

/// Two API servers on one etcd serve the same data at the same
/// resourceVersions: a write through one is read through the other, a
/// watch on one sees writes through the other, and a list on one is
/// watched from on the other.
#[tokio::test(flavor = "multi_thread")]
async fn two_api_servers_on_one_etcd_serve_the_same_data() {
    let Some(etcd) = etcd() else { return };
    let (a, b) = (on_etcd(&etcd).await, on_etcd(&etcd).await);
    let (a, b) = (Api::new(&a), Api::new(&b));
    const CMS: &str = "/api/v1/namespaces/default/configmaps";

    let created = a.post(CMS, &configmap("one", "1")).await;
    assert_eq!(created.code, 201, "{}", created.body);
    let read = b.get(&format!("{CMS}/one")).await;
    assert_eq!(read.code, 200, "{}", read.body);
    assert_eq!(rv(&read.body), rv(&created.body));
    assert_eq!(read.body["data"]["v"], "1");

    // A list on A, then a watch on B from its resourceVersion: exactly the
    // writes after it, whichever server took them.
    let list = a.get(CMS).await;
    let from = list.body["metadata"]["resourceVersion"]
        .as_str()
        .expect("a list resourceVersion")
        .to_string();
    let mut watch = b.watch(CMS, &format!("resourceVersion={from}")).await;
    let two = a.post(CMS, &configmap("two", "2")).await;
    assert_eq!(two.code, 201, "{}", two.body);
    let mut one = b.get(&format!("{CMS}/one")).await.body;
    one["data"]["v"] = json!("1b");
    let updated = b.put(&format!("{CMS}/one"), &one).await;
    assert_eq!(updated.code, 200, "{}", updated.body);
    assert_eq!(a.delete(&format!("{CMS}/two")).await.code, 200);

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = watch
            .next(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("only {seen:?} came"));
        if event.type_ == EventType::Bookmark {
            continue;
        }
        seen.push((
            event.type_,
            event.object["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
            rv(&event.object),
        ));
    }
    assert_eq!(seen[0], (EventType::Added, "two".into(), rv(&two.body)));
    assert_eq!(
        seen[1],
        (EventType::Modified, "one".into(), rv(&updated.body))
    );
    assert_eq!(seen[2].0, EventType::Deleted);
    assert!(seen[2].2 > rv(&updated.body));

    // Optimistic concurrency across servers: B's stale write is a conflict.
    let stale = b.put(&format!("{CMS}/one"), &one).await;
    assert_eq!(stale.code, 409, "{}", stale.body);
}

/// A CRD created through one server is served by both (each server's CRD
/// controller watches etcd), and deleting it through the other deletes
/// its objects everywhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_custom_kind_defined_through_one_server_is_served_by_both() {
    let Some(etcd) = etcd() else { return };
    let (a, b) = (on_etcd(&etcd).await, on_etcd(&etcd).await);
    let (a, b) = (Api::new(&a), Api::new(&b));
    const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/nodegroup/crd.yaml"
    ))
    .unwrap();
    let crd: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(a.post(CRDS, &crd).await.code, 201);
    const GROUPS: &str = "/apis/example.mube.io/v1/nodegroups";
    let group = json!({"apiVersion": "example.mube.io/v1", "kind": "NodeGroup",
        "metadata": {"name": "workers"}, "spec": {"selector": {"role": "worker"}}});
    let created = eventually(Duration::from_secs(10), "served by B", || async {
        let r = b.post(GROUPS, &group).await;
        if r.code == 201 {
            Ok(r)
        } else {
            Err(format!("{} {}", r.code, r.body))
        }
    })
    .await;
    assert_eq!(created.body["spec"]["minReady"], 1);
    let read = eventually(Duration::from_secs(10), "served by A", || async {
        let r = a.get(&format!("{GROUPS}/workers")).await;
        if r.code == 200 {
            Ok(r)
        } else {
            Err(format!("{} {}", r.code, r.body))
        }
    })
    .await;
    assert_eq!(rv(&read.body), rv(&created.body));
    assert_eq!(
        b.delete(&format!("{CRDS}/nodegroups.example.mube.io"))
            .await
            .code,
        200
    );
    for api in [&a, &b] {
        eventually(Duration::from_secs(10), "no longer served", || async {
            let r = api.get(GROUPS).await;
            if r.code == 404 {
                Ok(())
            } else {
                Err(format!("{} {}", r.code, r.body))
            }
        })
        .await;
    }
    // Defined again: nothing of the old objects is left.
    assert_eq!(a.post(CRDS, &crd).await.code, 201);
    let list = eventually(Duration::from_secs(10), "served again", || async {
        let r = b.get(GROUPS).await;
        if r.code == 200 {
            Ok(r)
        } else {
            Err(format!("{} {}", r.code, r.body))
        }
    })
    .await;
    assert_eq!(list.body["items"], json!([]), "{}", list.body);
}

/// etcd stops under a server while a writer keeps writing: `/readyz`
/// fails and data requests get 503, naming etcd; when etcd is back,
/// everything resumes without a restart, nothing acknowledged is lost, and
/// a watch opened before goes on and sees every acknowledged write in
/// order.
#[tokio::test(flavor = "multi_thread")]
async fn an_etcd_restart_loses_nothing_and_watches_go_on() {
    let Some(mut etcd) = etcd() else { return };
    let server = on_etcd(&etcd).await;
    let api = Api::new(&server);
    const CMS: &str = "/api/v1/namespaces/default/configmaps";
    let list = api.get(CMS).await;
    let from = list.body["metadata"]["resourceVersion"]
        .as_str()
        .expect("a list resourceVersion")
        .to_string();
    let mut watch = api.watch(CMS, &format!("resourceVersion={from}")).await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let r = api.post(CMS, &configmap(&format!("before-{i}"), "x")).await;
        assert_eq!(r.code, 201, "{}", r.body);
        acknowledged.push(format!("before-{i}"));
    }

    // Load: one writer, back to back, through the outage and after it.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (api, writing) = (api.clone(), writing.clone());
        tokio::spawn(async move {
            let (mut ok, mut tried) = (Vec::new(), Vec::new());
            let mut i = 0;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("load-{i:05}");
                i += 1;
                tried.push(name.clone());
                let r = api.post(CMS, &configmap(&name, "l")).await;
                match r.code {
                    201 => ok.push(name),
                    // Refused while etcd is away.
                    503 | 500 | 504 => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("a write answered {other}: {}", r.body),
                }
            }
            (ok, tried)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.stop();
    let ready = |code: u16| {
        let api = &api;
        eventually(Duration::from_secs(15), "/readyz", move || async move {
            let r = api.get("/readyz").await;
            if r.code == code {
                Ok(r)
            } else {
                Err(format!("not {code}: {} {}", r.code, r.body))
            }
        })
    };
    let down = ready(503).await;
    assert!(down.body.to_string().contains("etcd"), "{}", down.body);
    let refused = api.get(&format!("{CMS}/before-0")).await;
    assert_eq!(refused.code, 503, "{}", refused.body);
    assert!(
        refused.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("etcd"),
        "{}",
        refused.body
    );

    etcd.spawn();
    ready(200).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let (loaded, tried) = writer.await.expect("the writer");
    assert!(
        loaded.len() > 2,
        "the writer got too little through: {loaded:?}"
    );
    let after = api.post(CMS, &configmap("after", "y")).await;
    assert_eq!(after.code, 201, "{}", after.body);
    acknowledged.extend(loaded);
    acknowledged.push("after".into());
    let names: Vec<String> = api.get(CMS).await.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    // Every acknowledged write is there; anything else is a write whose
    // answer was lost in the outage (tried, in doubt), never an invention.
    for name in &acknowledged {
        assert!(names.contains(name), "{name} was acknowledged and is gone");
    }
    for name in &names {
        assert!(
            acknowledged.contains(name) || tried.contains(name),
            "{name} was never written"
        );
    }
    // The watch opened before the outage saw every acknowledged write,
    // in the order they were acknowledged (one writer).
    let mut seen = Vec::new();
    while acknowledged.iter().any(|a| !seen.contains(a)) {
        let event = watch
            .next(Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("the watch stopped after {seen:?}"));
        if event.type_ == EventType::Added {
            seen.push(
                event.object["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    seen.retain(|s| acknowledged.contains(s));
    assert_eq!(seen, acknowledged);
}

/// Two API servers on one etcd, with the same nodes in their configs and
/// short election durations. Pod CIDRs given out through both at once
/// never collide. Mubelets that know both servers keep their nodes Ready
/// when one server is killed (-9): they heartbeat through the other well
/// within the NotReady timeout. The controllers, elected across the two,
/// run on the survivor: a node that falls silent afterwards goes NotReady.
#[tokio::test(flavor = "multi_thread")]
async fn mubelets_fail_over_and_the_controllers_go_on_in_the_survivor() {
    let Some(etcd) = etcd() else { return };
    let extra = format!(
        "storage:\n  backend: etcd\n  etcd:\n    endpoints: [\"{}\"]\nleaderElection: {{leaseDuration: 3s, renewDeadline: 2s, retryPeriod: 500ms}}\n",
        etcd.url
    );
    let start = || {
        ApiServer::start(Options {
            nodes: vec![node("n1"), node("n2")],
            notready_timeout: "2s",
            extra_config: extra.clone(),
            ..Options::default()
        })
    };
    let mut a = start().await;
    let b = start().await;
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));

    // Sixteen nodes created through both servers at once.
    let creates = (0..16).map(|i| {
        let api = if i % 2 == 0 { &api_a } else { &api_b };
        async move {
            let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("extra-{i}")}});
            api.post("/api/v1/nodes", &node).await
        }
    });
    for reply in futures::future::join_all(creates).await {
        assert_eq!(reply.code, 201, "{}", reply.body);
    }
    let nodes = api_b.get("/api/v1/nodes").await;
    let ranges: Vec<String> = nodes.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|n| {
            n.pointer("/spec/podCIDR")
                .and_then(|c| c.as_str())
                .unwrap_or_else(|| panic!("a node without a pod CIDR: {n}"))
                .to_string()
        })
        .collect();
    assert_eq!(ranges.len(), 18);
    let distinct: std::collections::HashSet<&String> = ranges.iter().collect();
    assert_eq!(distinct.len(), 18, "a pod CIDR given twice: {ranges:?}");

    let servers = format!("{},{}", a.url(), b.url());
    let _m1 = Mubelet::start(&servers, "n1", "300ms");
    let mut m2 = Mubelet::start(&servers, "n2", "300ms");
    node_becomes(&api_b, "n1", "Ready").await;
    node_becomes(&api_b, "n2", "Ready").await;

    // Kill A; for three NotReady timeouts, neither node leaves Ready.
    let list = api_b.get("/api/v1/nodes").await;
    let from = list.body["metadata"]["resourceVersion"]
        .as_str()
        .expect("a list resourceVersion")
        .to_string();
    let mut watch = api_b
        .watch("/api/v1/nodes", &format!("resourceVersion={from}"))
        .await;
    a.kill9();
    for event in watch.drain(Duration::from_secs(6)).await {
        let name = event.object["metadata"]["name"].as_str().unwrap_or("");
        if name == "n1" || name == "n2" {
            assert_eq!(
                state(&event.object),
                "Ready",
                "{name} left Ready after A was killed: {}",
                event.object
            );
        }
    }
    for name in ["n1", "n2"] {
        let n = api_b.get(&format!("/api/v1/nodes/{name}")).await;
        assert_eq!(state(&n.body), "Ready", "{}", n.body);
    }

    // The node lifecycle controller runs on B now (elected there if A
    // led): a node that falls silent goes NotReady.
    m2.kill9();
    node_becomes(&api_b, "n2", "NotReady").await;
    let n1 = api_b.get("/api/v1/nodes/n1").await;
    assert_eq!(state(&n1.body), "Ready", "{}", n1.body);
}

/// The README's recipe with security on: B gets A's `pki/` before its
/// first start; a mubelet joins with a token through A (its certificate
/// signed by whichever server leads the controllers) and, knowing both
/// servers, keeps its node Ready through B when A is killed.
#[tokio::test(flavor = "multi_thread")]
async fn a_joined_node_fails_over_between_servers_that_share_a_ca() {
    let Some(etcd) = etcd() else { return };
    let extra = format!(
        "storage:\n  backend: etcd\n  etcd:\n    endpoints: [\"{}\"]\nleaderElection: {{leaseDuration: 3s, renewDeadline: 2s, retryPeriod: 500ms}}\n",
        etcd.url
    );
    let options = |data_dir: Option<std::path::PathBuf>| Options {
        nodes: vec![],
        notready_timeout: "2s",
        extra_config: extra.clone(),
        secure: true,
        data_dir,
        ..Options::default()
    };
    let mut a = ApiServer::start(options(None)).await;
    let b_dir = tempfile::tempdir().expect("temp dir");
    let b_data = b_dir.path().join("data");
    std::fs::create_dir_all(b_data.join("pki")).expect("pki dir");
    for file in std::fs::read_dir(a.data_dir().join("pki")).expect("A's pki") {
        let file = file.expect("a pki file").path();
        let name = file.file_name().expect("a file name");
        std::fs::copy(&file, b_data.join("pki").join(name)).expect("copy pki");
    }
    let b = ApiServer::start(options(Some(b_data))).await;
    let api_b = Api::new(&b);

    let token = mube_e2e::join_token(&a, "1h");
    let agent_dir = tempfile::tempdir().expect("state dir");
    let ca = a.data_dir().join("pki/ca.crt");
    let servers = format!("{},{}", a.url(), b.url());
    let agent = Mubelet::start_with(
        &servers,
        "joined",
        "300ms",
        &[
            ("MUBELET_TOKEN", token.as_str()),
            ("MUBELET_CA_FILE", ca.to_str().expect("a path")),
            (
                "MUBELET_STATE_DIR",
                agent_dir.path().to_str().expect("a path"),
            ),
        ],
    );
    node_becomes(&api_b, "joined", "Ready").await;

    a.kill9();
    let killed = jiff::Timestamp::now();
    // Three NotReady timeouts later it is still Ready, and the agent's
    // latest heartbeats went through B.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let n = api_b.get("/api/v1/nodes/joined").await;
    assert_eq!(state(&n.body), "Ready", "{}", n.body);
    let status = agent.status().await;
    assert_eq!(status["lastHeartbeat"]["result"], "accepted", "{status}");
    let at: jiff::Timestamp = status["lastHeartbeat"]["time"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("a heartbeat time");
    assert!(at > killed, "no heartbeat since A was killed: {status}");
}

/// Pod CIDRs on two servers with room for two nodes: a range freed by a
/// delete through one server is given out again through the other (which
/// had counted it taken), and never twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_range_freed_through_one_server_is_reused_through_the_other() {
    let Some(etcd) = etcd() else { return };
    let extra = format!(
        "clusterCIDR: 10.244.0.0/23\nstorage:\n  backend: etcd\n  etcd:\n    endpoints: [\"{}\"]\n",
        etcd.url
    );
    let start = || {
        ApiServer::start(Options {
            nodes: vec![],
            extra_config: extra.clone(),
            ..Options::default()
        })
    };
    let (a, b) = (start().await, start().await);
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));
    let create = |api: &Api, name: &str| {
        let (api, node) = (
            api.clone(),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}),
        );
        async move {
            let r = api.post("/api/v1/nodes", &node).await;
            assert_eq!(r.code, 201, "{}", r.body);
            r.body
                .pointer("/spec/podCIDR")
                .and_then(|c| c.as_str())
                .map(str::to_string)
        }
    };
    let one = create(&api_a, "one").await.expect("a range for one");
    let two = create(&api_b, "two").await.expect("a range for two");
    assert_ne!(one, two);
    // Both ranges are out: a third node gets none, through either server.
    assert_eq!(create(&api_b, "three").await, None);
    let deleted = api_a.delete("/api/v1/nodes/one").await;
    assert_eq!(deleted.code, 200, "{}", deleted.body);
    // B counted `one`'s range as taken; it finds it free in the claims.
    // The claim is given up just after the delete's answer.
    let four = eventually(Duration::from_secs(10), "the freed range", || async {
        let name = format!("four-{}", rv(&api_b.get("/api/v1/nodes").await.body));
        create(&api_b, &name)
            .await
            .ok_or_else(|| "not given out again".to_string())
    })
    .await;
    assert_eq!(four, one);
}

/// The watch fan-out on etcd: pod watches by `spec.nodeName` on one server
/// get exactly their nodes' events while the other server takes the
/// writes; the watches start from a list etcd itself answered, which the
/// server's watch cache may not have reached yet.
#[tokio::test(flavor = "multi_thread")]
async fn indexed_watches_on_one_server_see_the_other_servers_writes() {
    let Some(etcd) = etcd() else { return };
    let (a, b) = (on_etcd(&etcd).await, on_etcd(&etcd).await);
    let (a, b) = (Api::new(&a), Api::new(&b));
    mube_e2e::indexed_watches_get_exactly_their_nodes_events(&a, &b).await;
}
