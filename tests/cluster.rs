//! End-to-end tests of the three binaries together: mube-apiserver, mubelet
//! and mubectl, as a user runs them.

use std::time::{Duration, Instant};

use mube_e2e::{mubectl, node, state, Api, ApiServer, MubectlWatch, Mubelet, Options};

/// A `get nodes -w` row for `name` whose STATUS column is `status`.
fn row_is(line: &str, name: &str, status: &str) -> bool {
    let cols: Vec<&str> = line.split_whitespace().collect();
    cols.first() == Some(&name) && cols.get(1) == Some(&status)
}

#[tokio::test]
async fn agent_start_kill_and_restart_show_up_in_mubectl_watch() {
    let server = ApiServer::start(Options {
        nodes: vec![node("node-a")],
        notready_timeout: "2s",
        ..Default::default()
    })
    .await;
    let url = server.url();
    let mut watch = MubectlWatch::start(&url, &["get", "nodes", "-w"]);
    assert!(watch
        .out
        .wait_for(Duration::from_secs(5), |l| l.starts_with("NAME")
            && l.contains("STATUS"))
        .is_some());
    assert!(watch
        .out
        .wait_for(Duration::from_secs(5), |l| row_is(l, "node-a", "Unknown"))
        .is_some());

    let mut agent = Mubelet::start(&url, "node-a", "300ms");
    assert!(
        watch
            .out
            .wait_for(Duration::from_secs(5), |l| row_is(l, "node-a", "Ready"))
            .is_some(),
        "agent start -> Ready; saw {:?}",
        watch.out.seen
    );

    // Let a few heartbeats pass, then kill the agent without warning.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    agent.kill9();
    let killed = Instant::now();
    let (at, _) = watch
        .out
        .wait_for(Duration::from_secs(6), |l| row_is(l, "node-a", "NotReady"))
        .expect("agent killed -> NotReady");
    let took = at.duration_since(killed);
    assert!(
        took <= Duration::from_secs(3),
        "NotReady {took:?} after the kill (timeout 2s + 1s)"
    );

    agent.restart();
    assert!(
        watch
            .out
            .wait_for(Duration::from_secs(5), |l| row_is(l, "node-a", "Ready"))
            .is_some(),
        "agent restarted -> Ready"
    );
    // Heartbeats are not changes: no more rows while the agent runs steadily.
    let extra = watch
        .out
        .wait_for(Duration::from_millis(1200), |l| l.contains("node-a"));
    assert!(extra.is_none(), "heartbeat noise in the watch: {extra:?}");
}

#[tokio::test]
async fn agent_rides_out_an_api_server_outage() {
    let mut server = ApiServer::start(Options {
        nodes: vec![node("node-a")],
        notready_timeout: "10s",
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    let mut agent = Mubelet::start(&server.url(), "node-a", "300ms");
    let ready = async {
        for _ in 0..100 {
            if state(&api.get("/api/v1/nodes/node-a").await.body) == "Ready" {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(ready.await, "agent start -> Ready");
    // The agent reports its machine; the server copies it into nodeInfo.
    let info = api.get("/api/v1/nodes/node-a").await.body["status"]["nodeInfo"].clone();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(info["kernelVersion"], kernel.trim(), "{info}");
    assert_eq!(info["operatingSystem"], "linux", "{info}");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(info["architecture"], arch, "{info}");
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(info["bootID"], boot_id.trim(), "{info}");

    // Down for much longer than the interval.
    server.kill9();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let status = agent.status().await;
    assert_eq!(status["lastHeartbeat"]["result"], "unreachable", "{status}");
    assert!(
        status["consecutiveFailures"].as_u64().unwrap() >= 3,
        "{status}"
    );
    assert!(agent.is_running());

    server.restart().await;
    let back = Instant::now();
    let mut recovered = None;
    while back.elapsed() < Duration::from_secs(3) {
        let s = agent.status().await;
        if s["lastHeartbeat"]["result"] == "accepted" {
            recovered = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let recovered = recovered.expect("the agent must recover on its own");
    // Backoff is capped at the interval (300ms): back within one interval, plus slack for a loaded machine.
    assert!(
        recovered <= Duration::from_millis(1300),
        "recovered {recovered:?} after the server returned"
    );
    assert_eq!(state(&api.get("/api/v1/nodes/node-a").await.body), "Ready");

    let log = agent.log.collect(Duration::from_millis(200));
    let outages = log
        .iter()
        .filter(|l| l.contains("API server unavailable"))
        .count();
    assert_eq!(
        outages,
        1,
        "one log line per outage, got:\n{}",
        log.join("\n")
    );
    assert!(log.iter().any(|l| l.contains("heartbeats accepted again")));
}

#[tokio::test]
async fn an_unregistered_agent_reports_403_and_keeps_running() {
    let server = ApiServer::start(Options::default()).await;
    let mut agent = Mubelet::start(&server.url(), "ghost", "200ms");
    let line = agent.log.wait_for(Duration::from_secs(5), |l| {
        l.contains("configuration error")
    });
    let line = line.expect("a configuration error in the log").1;
    assert!(
        line.contains("configs/apiserver.yaml") && line.contains("ghost"),
        "{line}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(agent.is_running(), "a 403 must not stop the agent");
    let status = agent.status().await;
    assert_eq!(status["nodeName"], "ghost");
    assert_eq!(status["lastHeartbeat"]["code"], 403, "{status}");
    assert_eq!(status["lastHeartbeat"]["result"], "rejected");
    assert!(status["lastHeartbeat"]["message"]
        .as_str()
        .unwrap()
        .contains("not registered"));
    assert!(status["consecutiveFailures"].as_u64().unwrap() >= 2);
    let repeats = agent
        .log
        .collect(Duration::from_millis(100))
        .iter()
        .filter(|l| l.contains("configuration error"))
        .count();
    assert_eq!(repeats, 1, "the 403 is logged once, then retried quietly");

    // SIGTERM: a clean, quick exit.
    let started = Instant::now();
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(agent.pid().to_string())
        .status()
        .unwrap();
    let exit = agent
        .wait(Duration::from_secs(3))
        .expect("mubelet stops on SIGTERM");
    assert!(exit.success(), "{exit}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn mubelet_refuses_bad_settings_naming_the_variable() {
    for (var, value) in [
        ("MUBELET_CAPACITY", "0"),
        ("MUBELET_HEARTBEAT_INTERVAL", "often"),
        ("MUBE_API_SERVER", "nowhere"),
    ] {
        let out = std::process::Command::new(mube_e2e::bin("mubelet"))
            .env("MUBELET_NODE_NAME", "n1")
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(var),
            "{var}={value}: {stderr}"
        );
    }
}

#[tokio::test]
async fn mubectl_reports_errors_in_one_line_with_a_non_zero_exit() {
    let nowhere = format!("http://127.0.0.1:{}", mube_e2e::free_port());
    let (code, out, err) = mubectl(&nowhere, &["get", "nodes"]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&nowhere) && err.contains("cannot reach the API server"),
        "{err}"
    );

    let server = ApiServer::start(Options::default()).await;
    let (code, _, err) = mubectl(&server.url(), &["get", "node", "nope"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "Error from server (NotFound): nodes \"nope\" not found"
    );
    let (code, _, err) = mubectl(&server.url(), &["delete", "node", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("NotFound"), "{err}");
    let (code, _, err) = mubectl(&server.url(), &["get", "statefulsets"]);
    assert_eq!(code, 1);
    assert!(err.contains("statefulsets"), "{err}");
}

#[tokio::test]
async fn mubectl_gets_describes_applies_and_deletes() {
    let server = ApiServer::start(Options {
        nodes: vec![node("node-a")],
        notready_timeout: "30s",
        ..Default::default()
    })
    .await;
    let url = server.url();
    let api = Api::new(&server);
    assert_eq!(api.heartbeat("node-a").await.code, 202);

    let (code, out, _) = mubectl(&url, &["get", "nodes"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "STATUS", "AGE", "VERSION"]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!((row[0], row[1], row[3]), ("node-a", "Ready", "0.1.0"));

    let (_, out, _) = mubectl(&url, &["get", "nodes", "-o", "wide"]);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATUS",
            "AGE",
            "VERSION",
            "INTERNAL-IP",
            "PORT",
            "RUNTIME",
            "CAPACITY",
            "LAST-HEARTBEAT"
        ]
    );
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[4..8], ["127.0.0.1", "10250", "containerd", "10"]);
    assert!(row[8].ends_with('s') && row[9] == "ago", "{row:?}");

    let (_, out, _) = mubectl(&url, &["get", "node", "node-a", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["status"]["state"], "Ready");
    let (_, out, _) = mubectl(&url, &["get", "nodes", "-o", "yaml"]);
    assert!(
        out.contains("kind: Node") && out.contains("state: Ready"),
        "{out}"
    );
    // A list query prints a List even with one node, as kubectl does.
    let list: serde_json::Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(list["kind"], "List", "{out}");
    assert_eq!(list["items"][0]["metadata"]["name"], "node-a");
    let (_, out, _) = mubectl(&url, &["get", "nodes", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            &list["kind"],
            &list["apiVersion"],
            list["items"].as_array().map(Vec::len)
        ),
        (
            &serde_json::json!("List"),
            &serde_json::json!("v1"),
            Some(1)
        ),
        "{out}"
    );

    let (code, out, _) = mubectl(&url, &["describe", "node", "node-a"]);
    assert_eq!(code, 0);
    for want in [
        "InternalIP:  127.0.0.1",
        "Port:               10250",
        "State:              Ready",
        "KubeletReady",
        "containerd",
        "pods:  10",
        "HolderIdentity:  node-a",
        "RenewTime:",
    ] {
        assert!(out.contains(want), "describe lacks {want:?}:\n{out}");
    }

    let (_, out, _) = mubectl(&url, &["get", "leases", "-n", "kube-node-lease"]);
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..2], ["node-a", "node-a"]);

    // A kind mubectl has no code for is found through discovery and printed
    // with the columns its server declares (ConfigMap: NAME, DATA, AGE).
    let dir = tempfile::tempdir().unwrap();
    let cm = dir.path().join("cm.yaml");
    std::fs::write(
        &cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: \"1\"}\n",
    )
    .unwrap();
    let (code, out, err) = mubectl(&url, &["apply", "-f", cm.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "configmap/settings created");
    let (_, out, _) = mubectl(&url, &["get", "cm"]);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["NAME", "DATA", "AGE"]);
    assert_eq!(rows[1][..2], ["settings", "1"]);
    // -w prints the server's rows too, as they change; the manager of
    // mubectl's writes is mubectl.
    let mut watch = MubectlWatch::start(&url, &["get", "cm", "-w"]);
    assert!(watch
        .out
        .wait_for(Duration::from_secs(5), |l| l.starts_with("settings ")
            && l.split_whitespace().nth(1) == Some("1"))
        .is_some());
    std::fs::write(
        &cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: \"1\", b: \"2\"}\n",
    )
    .unwrap();
    let (code, out, err) = mubectl(&url, &["apply", "-f", cm.to_str().unwrap()]);
    assert_eq!(
        (code, out.trim()),
        (0, "configmap/settings configured"),
        "{err}"
    );
    assert!(
        watch
            .out
            .wait_for(Duration::from_secs(5), |l| l.starts_with("settings ")
                && l.split_whitespace().nth(1) == Some("2"))
            .is_some(),
        "the change must be printed with the server's columns"
    );
    drop(watch);
    let stored = api
        .get("/api/v1/namespaces/default/configmaps/settings")
        .await
        .body;
    assert_eq!(stored["metadata"]["managedFields"][0]["manager"], "mubectl");

    // apply: created, then unchanged, then configured; labels select it.
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/node.yaml");
    let manifest = manifest.to_str().unwrap();
    assert_eq!(
        mubectl(&url, &["apply", "-f", manifest]).1.trim(),
        "node/mube-node-2 created"
    );
    assert_eq!(
        mubectl(&url, &["apply", "-f", manifest]).1.trim(),
        "node/mube-node-2 unchanged"
    );
    let edited = server.dir.path().join("edited.yaml");
    let text = std::fs::read_to_string(manifest)
        .unwrap()
        .replace("mube.io/pool: example", "mube.io/pool: edited");
    std::fs::write(&edited, text).unwrap();
    assert_eq!(
        mubectl(&url, &["apply", "-f", edited.to_str().unwrap()])
            .1
            .trim(),
        "node/mube-node-2 configured"
    );
    let (_, out, _) = mubectl(
        &url,
        &["get", "nodes", "-l", "mube.io/pool=edited", "-o", "name"],
    );
    assert_eq!(out.trim(), "node/mube-node-2");

    let (code, out, _) = mubectl(&url, &["delete", "node", "mube-node-2"]);
    assert_eq!((code, out.trim()), (0, "node \"mube-node-2\" deleted"));
    let (_, out, _) = mubectl(&url, &["get", "nodes", "-o", "name"]);
    assert_eq!(out.trim(), "node/node-a");
}

#[tokio::test]
async fn mubectl_watch_survives_an_api_server_restart_without_loss_or_repeats() {
    let mut server = ApiServer::start(Options {
        nodes: vec![],
        ..Default::default()
    })
    .await;
    let url = server.url();
    let api = Api::new(&server);
    let new_node = |name: &str| serde_json::json!({"metadata": {"name": name}});
    assert_eq!(api.post("/api/v1/nodes", &new_node("n1")).await.code, 201);

    let mut watch = MubectlWatch::start(&url, &["get", "nodes", "--watch-only"]);
    assert!(watch
        .out
        .wait_for(Duration::from_secs(5), |l| l.starts_with("NAME"))
        .is_some());
    assert_eq!(api.post("/api/v1/nodes", &new_node("n2")).await.code, 201);
    assert!(watch
        .out
        .wait_for(Duration::from_secs(5), |l| l.starts_with("n2 "))
        .is_some());

    server.kill9();
    assert!(watch
        .err
        .wait_for(Duration::from_secs(5), |l| l
            .contains("lost the connection"))
        .is_some());
    server.restart().await;
    assert_eq!(api.post("/api/v1/nodes", &new_node("n3")).await.code, 201);
    assert_eq!(api.delete("/api/v1/nodes/n1").await.code, 200);
    assert!(
        watch
            .out
            .wait_for(Duration::from_secs(8), |l| l.starts_with("n1 "))
            .is_some(),
        "the delete after the restart: {:?}",
        watch.out.seen
    );
    let lines = watch.out.collect(Duration::from_millis(500));
    let count = |p: &str| lines.iter().filter(|l| l.starts_with(p)).count();
    assert_eq!(
        (count("n1 "), count("n2 "), count("n3 ")),
        (1, 1, 1),
        "each change exactly once: {lines:?}"
    );
}

#[tokio::test]
async fn the_local_cluster_script_runs_both_and_ctrl_c_stops_both() {
    let dir = tempfile::tempdir().unwrap();
    let port = mube_e2e::free_port();
    let health = mube_e2e::free_port();
    let config = dir.path().join("apiserver.yaml");
    std::fs::write(
        &config,
        format!("listenAddress: \"127.0.0.1:{port}\"\ndataDir: {}\nnodes:\n  - {{name: mube-node-1, ip: 127.0.0.1, port: 10250}}\n", dir.path().join("data").display()),
    )
    .unwrap();
    let bin_dir = mube_e2e::bin("mubelet").parent().unwrap().to_path_buf();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/local-cluster.sh");
    let mut child = std::process::Command::new("bash")
        .arg(script)
        .env("MUBE_BIN_DIR", bin_dir)
        .env("MUBE_APISERVER_CONFIG", &config)
        .env("MUBELET_HEALTH_LISTEN", format!("127.0.0.1:{health}"))
        .env("MUBELET_HEARTBEAT_INTERVAL", "200ms")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Secure by default: the script's cluster speaks HTTPS, and only the
    // admin of the kubeconfig it wrote (or a node) gets in.
    let data = dir.path().join("data");
    let mut ready = false;
    let mut http = None;
    for _ in 0..200 {
        let pki = data.join("pki");
        if http.is_none() && pki.join("admin.key").exists() {
            let pem = mube_e2e::admin_identity(&pki);
            http = Some(mube_e2e::client_for(
                Some(pki.join("ca.crt")),
                Some(&pem),
                None,
            ));
        }
        let Some(client) = &http else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if let Ok(r) = client
            .get(format!("https://127.0.0.1:{port}/api/v1/nodes/mube-node-1"))
            .send()
            .await
        {
            if let Ok(node) = r.json::<serde_json::Value>().await {
                if state(&node) == "Ready" {
                    ready = true;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the local cluster must bring mube-node-1 to Ready");
    assert!(
        data.join("mubelet/client.pem").exists(),
        "the mubelet joined with a token and keeps its own certificate"
    );
    let anonymous = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .get(format!("https://127.0.0.1:{port}/api/v1/nodes"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401, "no credentials, no access");
    // The scheduler runs too: a pod is bound to the node.
    let client = http.as_ref().unwrap();
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "mube.local/busybox"}]}});
    let created = client
        .post(format!(
            "https://127.0.0.1:{port}/api/v1/namespaces/default/pods"
        ))
        .json(&pod)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: serde_json::Value = client
            .get(format!(
                "https://127.0.0.1:{port}/api/v1/namespaces/default/pods/p"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if got["spec"]["nodeName"] == "mube-node-1" {
            break;
        }
        assert!(Instant::now() < deadline, "the pod was not bound: {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    std::process::Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the script did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = status;
    for p in [port, health] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", p)).is_err(),
            "port {p} still served after Ctrl-C"
        );
    }
}

#[tokio::test]
async fn mubectl_dry_runs_of_apply_and_delete_write_nothing() {
    let server = ApiServer::start(Options {
        nodes: vec![node("node-a")],
        ..Default::default()
    })
    .await;
    let url = server.url();
    let api = Api::new(&server);
    let manifest = |name: &str, pool: &str| {
        let path = server.dir.path().join(format!("{name}-{pool}.yaml"));
        std::fs::write(
            &path,
            format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    pool: {pool}\n"),
        )
        .unwrap();
        path.to_str().unwrap().to_string()
    };
    let (a, a_edited, fresh) = (
        manifest("node-m", "a"),
        manifest("node-m", "b"),
        manifest("node-fresh", "a"),
    );
    let (code, out, err) = mubectl(&url, &["apply", "-f", &a]);
    assert_eq!((code, out.trim()), (0, "node/node-m created"), "{err}");
    let list = || async { api.get("/api/v1/nodes").await.body["items"].clone() };
    let before = list().await;

    for (args, expected) in [
        (
            vec!["apply", "-f", &a_edited, "--dry-run=server"],
            "node/node-m configured (server dry run)",
        ),
        (
            vec!["apply", "-f", &a, "--dry-run=server"],
            "node/node-m unchanged (server dry run)",
        ),
        (
            vec!["apply", "-f", &fresh, "--dry-run=server"],
            "node/node-fresh created (server dry run)",
        ),
        (
            vec!["apply", "-f", &a_edited, "--dry-run=client"],
            "node/node-m configured (dry run)",
        ),
        (
            vec!["apply", "-f", &fresh, "--dry-run"],
            "node/node-fresh created (dry run)",
        ),
        (
            vec!["delete", "node", "node-m", "--dry-run=server"],
            "node \"node-m\" deleted (server dry run)",
        ),
        (
            vec!["delete", "node", "node-m", "--dry-run=client"],
            "node \"node-m\" deleted (dry run)",
        ),
    ] {
        let (code, out, err) = mubectl(&url, &args);
        assert_eq!((code, out.trim()), (0, expected), "mubectl {args:?}: {err}");
    }
    // A server dry run is still checked by the server.
    let bad = manifest("Bad_Name", "a");
    let (code, _, err) = mubectl(&url, &["apply", "-f", &bad, "--dry-run=server"]);
    assert_ne!(code, 0);
    assert!(err.contains("is invalid"), "{err}");
    let (code, _, err) = mubectl(&url, &["delete", "node", "nope", "--dry-run=client"]);
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");
    assert_eq!(list().await, before, "a dry run changed the cluster");
}

/// `mubectl delete` of several objects waits until each is gone (a pod
/// until its node stops it: here until a forced deletion), says so with a
/// progress bar on a terminal, and prints only its results in a pipe.
#[tokio::test]
async fn mubectl_delete_waits_until_gone_with_progress_on_a_terminal() {
    let server = ApiServer::start(Options::default()).await;
    let api = Api::new(&server);
    let pod = |name: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "busybox"}]}
        })
    };
    for name in ["slow", "other"] {
        let r = api
            .post("/api/v1/namespaces/default/pods", &pod(name))
            .await;
        assert_eq!(r.code, 201, "{}", r.body);
    }
    // On a terminal (script(1) gives it one): the bar names what it waits for.
    let command = format!(
        "{} --server {} delete pod slow other",
        mube_e2e::bin("mubectl").display(),
        server.url()
    );
    let transcript = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new("script")
        .args(["-qfec", &command])
        .arg(transcript.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("script(1)");
    // The transcript once it shows `text`.
    let shows = |text: &'static str| {
        let path = transcript.path().to_path_buf();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut seen = String::new();
            while Instant::now() < deadline && !seen.contains(text) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                seen = std::fs::read_to_string(&path).unwrap_or_default();
            }
            assert!(seen.contains(text), "{text:?} not in {seen}");
            seen
        }
    };
    let seen = shows("waiting for pod/slow to be gone").await;
    assert!(seen.contains("0/2"), "{seen}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "it returned before the pod was gone"
    );
    // The node would stop each; no agent runs here, so force them.
    for name in ["slow", "other"] {
        if name == "other" {
            shows("waiting for pod/other to be gone").await;
        }
        let forced = api
            .delete(&format!(
                "/api/v1/namespaces/default/pods/{name}?gracePeriodSeconds=0"
            ))
            .await;
        assert_eq!(forced.code, 200, "{}", forced.body);
    }
    // Ends once both are gone; a regression fails here instead of hanging.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mubectl delete did not return once the pods were gone");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success());
    let seen = std::fs::read_to_string(transcript.path()).unwrap();
    assert!(seen.contains("pod \"slow\" deleted"), "{seen}");
    assert!(seen.contains("pod \"other\" deleted"), "{seen}");

    // In a pipe: the results only, and --wait=false returns at once.
    for name in ["p1", "p2"] {
        assert_eq!(
            api.post("/api/v1/namespaces/default/pods", &pod(name))
                .await
                .code,
            201
        );
    }
    let (code, out, err) = mubectl(
        &server.url(),
        &["delete", "pod", "p1", "p2", "--wait=false"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "pod \"p1\" deleted\npod \"p2\" deleted\n");
    assert_eq!(err, "");
    assert_eq!(
        api.get("/api/v1/namespaces/default/pods/p1").await.code,
        200,
        "still terminating"
    );
}
