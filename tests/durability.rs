//! What the store guarantees, seen over HTTP against the real binary: paged
//! lists at one revision, Kubernetes' answer to a resourceVersion not yet
//! reached, and a server that stops serving data once its disk is full.
//! (Crashes under load: `crash_scenario_*` in bench_smoke.rs.)

use std::process::Command;
use std::time::Duration;

use mube_e2e::{node, rv, Api, ApiServer, Options};
use serde_json::{json, Value};

const NODES: &str = "/api/v1/nodes";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// Every page of a paged list is read at the first page's revision, however
/// the objects change between pages, as Kubernetes on etcd serves them; so
/// is `resourceVersionMatch=Exact` at an older revision.
#[tokio::test]
async fn every_page_of_a_paged_list_is_at_the_first_pages_revision() {
    let server = ApiServer::start(Options {
        nodes: vec![node("a"), node("b"), node("c")],
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    let whole = api.get(NODES).await.body;
    let first_rv = rv(&whole);
    let page = api.get(&format!("{NODES}?limit=1")).await.body;
    assert_eq!(rv(&page), first_rv);
    assert_eq!(names(&page), ["a"]);
    let mut token = page["metadata"]["continue"].as_str().unwrap().to_string();

    // Between the pages: b changes, c goes, d comes.
    let mut b = api.get(&format!("{NODES}/b")).await.body;
    b["metadata"]["labels"] = json!({"changed": "yes"});
    assert_eq!(api.put(&format!("{NODES}/b"), &b).await.code, 200);
    assert_eq!(api.delete(&format!("{NODES}/c")).await.code, 200);
    let d = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "d"}});
    assert_eq!(api.post(NODES, &d).await.code, 201);

    let mut later = Vec::new();
    loop {
        let page = api.get(&format!("{NODES}?limit=1&continue={token}")).await;
        assert_eq!(page.code, 200, "{}", page.body);
        assert_eq!(rv(&page.body), first_rv);
        later.extend(page.body["items"].as_array().unwrap().iter().cloned());
        match page.body["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => break,
        }
    }
    // Exactly the b and c of the first page's revision.
    assert_eq!(later, whole["items"].as_array().unwrap()[1..]);

    let exact = api
        .get(&format!(
            "{NODES}?resourceVersion={first_rv}&resourceVersionMatch=Exact"
        ))
        .await;
    assert_eq!(exact.code, 200, "{}", exact.body);
    assert_eq!(exact.body["items"], whole["items"]);
    assert_eq!(rv(&exact.body), first_rv);
}

#[tokio::test]
async fn a_continue_token_older_than_the_history_is_410() {
    let server = ApiServer::start(Options {
        nodes: vec![node("a"), node("b"), node("c")],
        extra_config: "historyRetention: 5\n".into(),
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    let page = api.get(&format!("{NODES}?limit=1")).await.body;
    let token = page["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_string();
    assert_eq!(page["metadata"]["remainingItemCount"], 2);
    let next = api.get(&format!("{NODES}?limit=1&continue={token}")).await;
    assert_eq!(names(&next.body), ["b"]);
    for i in 0..10 {
        let mut n = api.get(&format!("{NODES}/a")).await.body;
        n["metadata"]["labels"] = json!({"i": i.to_string()});
        assert_eq!(api.put(&format!("{NODES}/a"), &n).await.code, 200);
    }
    let expired = api.get(&format!("{NODES}?limit=1&continue={token}")).await;
    assert_eq!(expired.code, 410, "{}", expired.body);
    assert_eq!(expired.body["reason"], "Expired");
    let exact = api
        .get(&format!(
            "{NODES}?resourceVersion={}&resourceVersionMatch=Exact",
            rv(&page)
        ))
        .await;
    assert_eq!(exact.code, 410, "{}", exact.body);
}

fn assert_too_large(reply: &mube_e2e::Reply, requested: u64) {
    assert_eq!(reply.code, 504, "{}", reply.body);
    assert_eq!(reply.body["reason"], "Timeout", "{}", reply.body);
    let message = reply.body["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "Timeout: Too large resource version: {requested}, current: "
        )),
        "{message}"
    );
    assert_eq!(
        reply.body["details"]["causes"][0]["reason"], "ResourceVersionTooLarge",
        "{}",
        reply.body
    );
}

/// A list or watch from a resourceVersion the server has not reached waits a
/// moment for it, then gets Kubernetes' 504 ResourceVersionTooLarge, which
/// clients (the reflector) answer by relisting; a watch never sits silent.
#[tokio::test]
async fn a_resource_version_not_yet_reached_is_504_too_large() {
    // The wait is long enough that a write started within it lands in time
    // even on a busy CI disk; the three refusals are awaited together so the
    // test still takes one wait, not three.
    let server = ApiServer::start(Options {
        nodes: vec![node("a")],
        extra_config: "resourceVersionWait: 2s\n".into(),
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    let current = rv(&api.get(NODES).await.body);
    let future = current + 1000;
    let started = std::time::Instant::now();
    let list = format!("{NODES}?resourceVersion={future}");
    let exact = format!("{NODES}?resourceVersion={future}&resourceVersionMatch=Exact");
    let watch = format!("{NODES}?watch=true&resourceVersion={future}");
    let (list, exact, watch) = tokio::time::timeout(
        Duration::from_secs(20),
        futures::future::join3(api.get(&list), api.get(&exact), api.get(&watch)),
    )
    .await
    .expect("a list or watch from the future must be answered, not left open");
    assert_too_large(&list, future);
    assert_too_large(&exact, future);
    assert_too_large(&watch, future);
    assert!(started.elapsed() >= Duration::from_secs(2));

    // A revision that arrives within the wait is served.
    let lease = json!({"metadata": {"name": "soon"}, "spec": {"holderIdentity": "x"}});
    let next = rv(&api.get(NODES).await.body) + 1;
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            api.post(LEASES, &lease).await.code
        })
    };
    let list = api.get(&format!("{LEASES}?resourceVersion={next}")).await;
    assert_eq!(list.code, 200, "{}", list.body);
    assert!(rv(&list.body) >= next);
    assert_eq!(writer.await.unwrap(), 201);
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed ({status}): this test fills a small file system and needs root, as CI runs"
        );
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A disk that fills up: the write that fails is answered 503 and never
/// seen; from then on the server serves no data (503 on every request for
/// it), `/livez` and `/readyz` fail so that a supervisor restarts it, open
/// watches end, and no snapshot leaves a temporary file behind.
#[tokio::test]
async fn a_full_disk_stops_the_server_serving_data() {
    let fs = Tmpfs::mount("3m");
    let data = fs.dir.path().join("data");
    let server = ApiServer::start(Options {
        nodes: vec![node("a")],
        extra_config: "logSegmentBytes: 65536\n".into(),
        data_dir: Some(data.clone()),
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    let mut watch = api.watch(LEASES, "").await;

    let pad = "x".repeat(100_000);
    let mut failed = None;
    for i in 0..200 {
        let lease = json!({"metadata": {"name": format!("l{i}"), "annotations": {"pad": pad}}});
        let reply = api.post(LEASES, &lease).await;
        if reply.code != 201 {
            failed = Some((i, reply));
            break;
        }
    }
    let (i, reply) = failed.expect("the file system never filled up");
    assert!(i > 0, "nothing could be written: {}", reply.body["message"]);
    assert_eq!(reply.code, 503, "{}", reply.body["message"]);

    for path in [
        format!("{LEASES}/l{i}"),
        format!("{LEASES}/l0"),
        LEASES.to_string(),
        NODES.to_string(),
        "/api".to_string(),
    ] {
        let r = api.get(&path).await;
        assert_eq!(r.code, 503, "{path}: {}", r.body["reason"]);
        assert_eq!(r.body["reason"], "ServiceUnavailable", "{}", r.body);
    }
    assert_eq!(
        api.post(LEASES, &json!({"metadata": {"name": "more"}}))
            .await
            .code,
        503
    );
    assert_eq!(api.heartbeat("a").await.code, 503);
    for probe in ["/livez", "/readyz"] {
        assert_eq!(api.get(probe).await.code, 503, "{probe}");
    }
    // The open watch ended without showing the failed write.
    let events = watch.drain(Duration::from_secs(5)).await;
    assert!(watch.ended, "the watch is still open");
    assert!(
        events
            .iter()
            .all(|e| e.object["metadata"]["name"] != format!("l{i}")),
        "{events:?}"
    );
    let leftovers: Vec<String> = std::fs::read_dir(data.join("log"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        server.logs().contains("the write-ahead log failed"),
        "{}",
        server.logs()
    );
}

/// A bit flipped in an acknowledged record: the server refuses to start,
/// naming the segment and the byte offset, and leaves it as it was;
/// `--repair-log` starts it, cut at the bad record, saying what it dropped.
#[tokio::test]
async fn a_damaged_log_refuses_to_start_until_repaired() {
    let mut server = ApiServer::start(Options {
        nodes: vec![node("a")],
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    for i in 0..40 {
        let lease = json!({"metadata": {"name": format!("l{i}")}, "spec": {"holderIdentity": "x"}});
        assert_eq!(api.post(LEASES, &lease).await.code, 201);
    }
    assert!(server.terminate().success());

    // The newest segment holding records; flip a bit a third of the way in.
    let log = server.data_dir().join("log");
    let mut segments: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 8)
        .collect();
    segments.sort();
    let segment = segments.last().unwrap().clone();
    let mut data = std::fs::read(&segment).unwrap();
    let at = data.len() / 3;
    data[at] ^= 0x01;
    std::fs::write(&segment, &data).unwrap();

    let refused = server.command().output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("the write-ahead log is damaged")
            && stderr.contains(&*segment.to_string_lossy())
            && stderr.contains(" at byte ")
            && stderr.contains("--repair-log"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        data,
        "start-up changed the segment"
    );

    let mut repair = server.command();
    repair.arg("--repair-log");
    let mut child = repair.spawn().unwrap();
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("{}/readyz", server.url())).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the repaired server did not become ready"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("mube-apiserver --repair-log exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kept = api.get(LEASES).await;
    assert_eq!(kept.code, 200);
    let kept = kept.body["items"].as_array().unwrap().len();
    assert!(kept < 40, "nothing was cut: {kept} leases");
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        logs.contains("cutting the log at its first bad record")
            && logs.contains("dropped_records"),
        "{logs}"
    );
}
