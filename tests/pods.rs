//! Pods on a real containerd: the API server, mube-scheduler and a
//! mubelet joined with a token, driven by the real kubectl. containerd is
//! the one `scripts/containerd.sh` starts (CI does; these tests start it
//! themselves when nothing answers on the socket), with mube's config and
//! local images. Each test has its own node name, so tests running side by
//! side on one containerd never touch each other's sandboxes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mube_e2e::{
    bin, containerd, containerd_endpoint as endpoint, free_port, join_token, runtime_containers,
    table, Api, ApiServer, Kubectl, Mubelet, Options,
};
use serde_json::{json, Value};

/// A control-plane component, killed when dropped.
struct Component(Child);

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Cluster {
    _server: ApiServer,
    api: Api,
    kubectl: Kubectl,
    mubelet: Mubelet,
    node: String,
    _scheduler: Component,
    _state: tempfile::TempDir,
}

async fn cluster(extra: &[(&str, &str)]) -> Cluster {
    cluster_with("", extra).await
}

/// With `server_config` lines added to the API server's config. The
/// mubelet's proxy is off (`Mubelet::start_with`) unless `extra` turns
/// it on.
async fn cluster_with(server_config: &str, extra: &[(&str, &str)]) -> Cluster {
    containerd();
    let server = ApiServer::start(Options {
        secure: true,
        extra_config: server_config.to_string(),
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    let scheduler = Component(
        Command::new(bin("mube-scheduler"))
            .arg("--kubeconfig")
            .arg(server.data_dir().join("kubeconfig"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start mube-scheduler"),
    );
    let node = format!("pods-{}", free_port());
    let state = tempfile::tempdir().unwrap();
    let token = join_token(&server, "10m");
    let ca = server.data_dir().join("pki/ca.crt");
    let logs = state.path().join("pods");
    let mut env = vec![
        ("MUBELET_TOKEN", token.as_str()),
        ("MUBELET_CA_FILE", ca.to_str().unwrap()),
        ("MUBELET_STATE_DIR", state.path().to_str().unwrap()),
        ("MUBELET_POD_LOG_DIR", logs.to_str().unwrap()),
        ("MUBELET_RESTART_BACKOFF", "1s"),
        ("MUBELET_SYNC_INTERVAL", "200ms"),
    ];
    let runtime = endpoint();
    if !extra
        .iter()
        .any(|(k, _)| *k == "MUBELET_CONTAINER_RUNTIME_ENDPOINT")
    {
        env.push(("MUBELET_CONTAINER_RUNTIME_ENDPOINT", runtime.as_str()));
    }
    env.extend_from_slice(extra);
    let mubelet = Mubelet::start_with(&server.url(), &node, "500ms", &env);
    let kubectl = Kubectl::new(&server);
    let c = Cluster {
        _server: server,
        api,
        kubectl,
        mubelet,
        node,
        _scheduler: scheduler,
        _state: state,
    };
    c.wait_for(
        &format!("/api/v1/nodes/{}", c.node),
        "node Ready with a pod CIDR",
        |n| mube_e2e::state(n) == "Ready" && n.pointer("/spec/podCIDR").is_some(),
    )
    .await;
    c
}

impl Cluster {
    /// Polls `path` until `check` holds; fails with the last answer.
    async fn wait_for(&self, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.api.get(path).await;
            if r.code == 200 && check(&r.body) {
                return r.body;
            }
            assert!(Instant::now() < deadline, "never {what}: {}", r.body);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn pod(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.wait_for(
            &format!("/api/v1/namespaces/default/pods/{name}"),
            what,
            check,
        )
        .await
    }

    /// Deletes every pod at once (grace 0) and waits until the mubelet
    /// removed all it ran from the runtime, so that tests leave nothing
    /// behind in a containerd that outlives them.
    async fn finish(self) {
        let r = self
            .api
            .delete("/api/v1/namespaces/default/pods?gracePeriodSeconds=0")
            .await;
        assert_eq!(r.code, 200, "{}", r.body);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = runtime_containers(&self.node);
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "left in the runtime: {left:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn create(&self, pod: Value) {
        let r = self.api.post("/api/v1/namespaces/default/pods", &pod).await;
        assert_eq!(r.code, 201, "{}", r.body);
    }

    /// Waits until pod `name` has finished: its phase and its logs.
    async fn finished(&self, name: &str) -> (String, String) {
        let pod = self
            .pod(name, "finished", |p| {
                matches!(phase(p), "Succeeded" | "Failed")
            })
            .await;
        (phase(&pod).to_string(), self.kubectl.ok(&["logs", name]))
    }

    /// `kubectl get pods` as rows (header first).
    fn rows(&self) -> Vec<Vec<String>> {
        table(&self.kubectl.ok(&["get", "pods", "-o", "wide"]))
    }
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn container(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

fn busybox(name: &str, policy: &str, script: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"restartPolicy": policy, "terminationGracePeriodSeconds": 2,
                    "containers": [{"name": name, "image": "mube.local/busybox",
                                    "command": ["sh", "-c", script]}]}})
}

/// Whether the runtime still has the container (`containerd://ID`).
fn runtime_has(container_id: &str) -> bool {
    let id = container_id.trim_start_matches("containerd://");
    let socket = endpoint().trim_start_matches("unix://").to_string();
    let out = Command::new("ctr")
        .args([
            "--address",
            &socket,
            "-n",
            "k8s.io",
            "containers",
            "ls",
            "-q",
        ])
        .output()
        .expect("ctr");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l == id)
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn kubectl_run_then_logs_and_exit_codes() {
    let c = cluster(&[]).await;
    let k = &c.kubectl;
    k.ok(&[
        "run",
        "hello",
        "--image=mube.local/busybox",
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "echo hello from mube",
    ]);
    let pod = c
        .pod("hello", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    assert_eq!(container(&pod)["state"]["terminated"]["exitCode"], 0);
    assert_eq!(k.ok(&["logs", "hello"]), "hello from mube\n");
    // -f of a container that has ended prints what it wrote, and ends.
    assert_eq!(k.ok(&["logs", "-f", "hello"]), "hello from mube\n");

    // --tail, -c, and -f that follows a running container to its end.
    let lines = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lines"},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "counter", "image": "mube.local/busybox",
             "command": ["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.3; done"]},
            {"name": "quiet", "image": "mube.local/busybox", "command": ["true"]}]}});
    c.create(lines).await;
    c.pod("lines", "started", |p| {
        p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| {
                cs.iter()
                    .any(|s| s["name"] == "counter" && !s["state"]["waiting"].is_object())
            })
    })
    .await;
    assert_eq!(
        k.ok(&["logs", "-f", "lines", "-c", "counter"]),
        "line 1\nline 2\nline 3\n",
        "followed to the container's end"
    );
    assert_eq!(
        k.ok(&["logs", "lines", "-c", "counter", "--tail", "1"]),
        "line 3\n"
    );
    // Without a container, the API asks for one (kubectl picks the first).
    let r = c.api.get("/api/v1/namespaces/default/pods/lines/log").await;
    assert_eq!(r.code, 400, "{}", r.body);
    assert!(
        r.body["message"].as_str().unwrap().contains(
            "a container name must be specified for pod lines, choose one of: [counter quiet]"
        ),
        "{}",
        r.body
    );
    let ip = pod["status"]["podIP"].as_str().expect("a pod IP");
    let cidr = c.api.get(&format!("/api/v1/nodes/{}", c.node)).await.body["spec"]["podCIDR"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ip.starts_with("10.") && !cidr.is_empty(),
        "pod IP {ip}, node CIDR {cidr}"
    );
    let rows = c.rows();
    assert_eq!(
        rows[0][..7],
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    );
    assert_eq!(rows[1][0], "hello");
    assert_eq!(rows[1][2], "Completed");
    assert_eq!(rows[1][5], ip);
    assert_eq!(rows[1][6], c.node);

    c.create(busybox("fails", "Never", "echo to stderr >&2; exit 1"))
        .await;
    let pod = c.pod("fails", "Failed", |p| phase(p) == "Failed").await;
    let terminated = &container(&pod)["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 1);
    assert_eq!(terminated["reason"], "Error");
    assert_eq!(
        k.ok(&["logs", "fails", "--timestamps"])
            .split_once(' ')
            .unwrap()
            .1,
        "to stderr\n"
    );
    let rows = c.rows();
    assert_eq!(rows.iter().find(|r| r[0] == "fails").unwrap()[2], "Error");

    // pods/log is its own permission: a user allowed only to read pods
    // cannot read their logs.
    k.ok(&[
        "create",
        "role",
        "pod-reader",
        "--verb=get",
        "--resource=pods",
    ]);
    k.ok(&[
        "create",
        "rolebinding",
        "nobody-reads",
        "--role=pod-reader",
        "--user=nobody",
    ]);
    let (code, _, err) = k.run(&["logs", "hello", "--as=nobody"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("forbidden") && err.contains("pods/log"),
        "{err}"
    );
    // A container that has not started has no logs yet, said as
    // Kubernetes says it.
    c.create(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "never-pulled"},
        "spec": {"containers": [{"name": "c", "image": "mube.local/absent:1", "imagePullPolicy": "Never"}]}}))
        .await;
    let pod = c
        .pod("never-pulled", "ErrImageNeverPull", |p| {
            container(p)["state"]["waiting"]["reason"] == "ErrImageNeverPull"
        })
        .await;
    assert_eq!(phase(&pod), "Pending");
    let (code, _, err) = k.run(&["logs", "never-pulled"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("is waiting to start: ErrImageNeverPull"),
        "{err}"
    );
    c.finish().await;
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn a_crashing_pod_backs_off_and_counts_restarts() {
    let c = cluster(&[]).await;
    c.create(busybox("crash", "Always", "echo boom; exit 3"))
        .await;
    // Back-off 1s doubling: restarts at ~0, 1, 3 s; in between the
    // container waits in CrashLoopBackOff with its last exit shown.
    let pod = c
        .pod("crash", "in CrashLoopBackOff after restarts", |p| {
            let s = container(p);
            s["restartCount"].as_u64().unwrap_or(0) >= 2
                && s["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
        .await;
    let s = container(&pod);
    assert_eq!(s["lastState"]["terminated"]["exitCode"], 3);
    assert!(
        s["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .starts_with("back-off "),
        "{s}"
    );
    assert_eq!(
        phase(&pod),
        "Running",
        "a crash-looping pod under Always is Running, as in Kubernetes"
    );
    let row = c.rows().into_iter().find(|r| r[0] == "crash").unwrap();
    assert_eq!(row[1], "0/1");
    assert_eq!(row[2], "CrashLoopBackOff");
    assert!(row[3].parse::<u32>().unwrap() >= 2, "{row:?}");
    assert_eq!(c.kubectl.ok(&["logs", "crash", "--previous"]), "boom\n");

    // OnFailure restarts a failure, not a success.
    c.create(busybox("once", "OnFailure", "exit 0")).await;
    let pod = c
        .pod("once", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    assert_eq!(container(&pod)["restartCount"], 0);
    c.finish().await;
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn delete_stops_the_container_within_the_grace_period() {
    let c = cluster(&[]).await;
    // `sleep` as PID 1 ignores SIGTERM: only the kill after the grace
    // period (2 s) stops it.
    c.create(busybox("sleeper", "Always", "exec sleep 3600"))
        .await;
    let pod = c
        .pod("sleeper", "Running", |p| {
            container(p)["state"]["running"].is_object()
        })
        .await;
    let id = container(&pod)["containerID"].as_str().unwrap().to_string();
    assert!(runtime_has(&id));
    let row = c.rows().into_iter().find(|r| r[0] == "sleeper").unwrap();
    assert_eq!((row[1].as_str(), row[2].as_str()), ("1/1", "Running"));

    let started = Instant::now();
    c.kubectl.ok(&["delete", "pod", "sleeper"]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "kubectl delete took {took:?}"
    );
    assert!(
        took >= Duration::from_millis(1800),
        "the grace period (2 s) was not given: {took:?}"
    );
    assert_eq!(
        c.api
            .get("/api/v1/namespaces/default/pods/sleeper")
            .await
            .code,
        404
    );
    assert!(!runtime_has(&id), "the container is gone from the runtime");

    // A pod on no node goes at once.
    let unbound = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nowhere"},
        "spec": {"schedulerName": "nobody", "containers": [{"name": "c", "image": "mube.local/busybox"}]}});
    c.create(unbound).await;
    let r = c
        .api
        .delete("/api/v1/namespaces/default/pods/nowhere")
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(
        c.api
            .get("/api/v1/namespaces/default/pods/nowhere")
            .await
            .code,
        404
    );
    c.finish().await;
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn pods_reach_each_other_and_the_host() {
    let c = cluster(&[]).await;
    c.create(busybox(
        "server",
        "Always",
        "mkdir -p /www && echo pong > /www/index.html && exec httpd -f -p 8080 -h /www",
    ))
    .await;
    let server = c
        .pod("server", "Running", |p| {
            container(p)["state"]["running"].is_object()
        })
        .await;
    let ip = server["status"]["podIP"].as_str().unwrap().to_string();
    // The bridge's address on the host: the pod network's gateway. A
    // listener there is reachable from pods only.
    let gateway = format!("{}.1", ip.rsplit_once('.').unwrap().0);
    let listener =
        std::net::TcpListener::bind((gateway.as_str(), 0)).expect("listen on the bridge");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            use std::io::{Read, Write};
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\nhost-hello\n");
        }
    });
    c.create(busybox(
        "client",
        "Never",
        // (No `wget -T`: Debian's static busybox 1.35 crashes on it.)
        &format!("wget -q -O- http://{ip}:8080/ && wget -q -O- http://{gateway}:{port}/"),
    ))
    .await;
    let (ended, logs) = c.finished("client").await;
    assert_eq!(ended, "Succeeded", "{logs}");
    assert_eq!(logs, "pong\nhost-hello\n");
    let client = c
        .api
        .get("/api/v1/namespaces/default/pods/client")
        .await
        .body;
    assert_ne!(client["status"]["podIP"], server["status"]["podIP"]);

    // hostNetwork: the pod has the host's address.
    let mut host = busybox("host", "Never", "true");
    host["spec"]["hostNetwork"] = json!(true);
    c.create(host).await;
    let pod = c
        .pod("host", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    assert_eq!(pod["status"]["podIP"], pod["status"]["hostIP"]);
    c.finish().await;
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn a_pod_asking_more_cpu_than_any_node_has_stays_pending() {
    let c = cluster(&[]).await;
    // The capacity comes with the agent's first status report, which may
    // follow Ready.
    let node = c
        .wait_for(&format!("/api/v1/nodes/{}", c.node), "a capacity", |n| {
            n.pointer("/status/capacity/cpu").is_some()
        })
        .await;
    let cpus: u64 = node["status"]["capacity"]["cpu"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(cpus >= 1);
    assert!(node["status"]["capacity"]["memory"]
        .as_str()
        .unwrap()
        .ends_with("Ki"));
    let mut big = busybox("big", "Never", "true");
    big["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": format!("{}", cpus + 1)}});
    c.create(big).await;
    let events = c
        .wait_for(
            "/api/v1/namespaces/default/events",
            "FailedScheduling",
            |list| {
                list["items"]
                    .as_array()
                    .is_some_and(|items| items.iter().any(|e| e["reason"] == "FailedScheduling"))
            },
        )
        .await;
    let message = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "FailedScheduling")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("Insufficient cpu"), "{message}");
    let pod = c.api.get("/api/v1/namespaces/default/pods/big").await.body;
    assert_eq!(phase(&pod), "Pending");
    assert!(pod["spec"]["nodeName"].is_null());
    c.finish().await;
}

#[cfg_attr(not(has_kubectl), ignore = "kubectl not found on PATH")]
#[tokio::test]
async fn a_restarted_mubelet_adopts_its_pods_without_restarting_them() {
    let mut c = cluster(&[]).await;
    c.create(busybox("steady", "Always", "exec sleep 3600"))
        .await;
    let before = c
        .pod("steady", "Running", |p| {
            container(p)["state"]["running"].is_object()
        })
        .await;
    let id = container(&before)["containerID"].clone();
    c.mubelet.kill9();
    c.mubelet.restart();
    c.mubelet
        .log
        .wait_for(Duration::from_secs(10), |l| l.contains("mubelet started"))
        .expect("mubelet started again");
    // Proof that the restarted agent works: a new pod runs; by then it
    // has been over the old one many times (every 200 ms).
    c.create(busybox("newer", "Always", "exec sleep 3600"))
        .await;
    c.pod("newer", "Running", |p| {
        container(p)["state"]["running"].is_object()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = c
        .api
        .get("/api/v1/namespaces/default/pods/steady")
        .await
        .body;
    assert_eq!(container(&after)["containerID"], id, "the same container");
    assert_eq!(container(&after)["restartCount"], 0);
    assert!(container(&after)["state"]["running"].is_object(), "{after}");
    // And it still stops it when asked.
    c.kubectl
        .ok(&["delete", "pod", "steady", "--grace-period=1"]);
    assert!(!runtime_has(id.as_str().unwrap()));
    c.finish().await;
}

#[tokio::test]
async fn without_a_runtime_the_node_heartbeats_and_says_why_pods_wait() {
    // No containerd needed: the endpoint names a socket nobody serves.
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("unix://{}", dir.path().join("none.sock").display());
    let server = ApiServer::start(Options {
        secure: true,
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    let token = join_token(&server, "10m");
    let ca = server.data_dir().join("pki/ca.crt");
    let node = format!("noruntime-{}", free_port());
    let mut mubelet = Mubelet::start_with(
        &server.url(),
        &node,
        "300ms",
        &[
            ("MUBELET_TOKEN", &token),
            ("MUBELET_CA_FILE", ca.to_str().unwrap()),
            ("MUBELET_STATE_DIR", dir.path().to_str().unwrap()),
            ("MUBELET_CONTAINER_RUNTIME_ENDPOINT", &missing),
            ("MUBELET_RUNTIME_REQUEST_TIMEOUT", "1s"),
            ("MUBELET_SYNC_INTERVAL", "200ms"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let node_object = loop {
        let n = api.get(&format!("/api/v1/nodes/{node}")).await.body;
        let unhealthy = n["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "ContainerRuntimeUnhealthy" && c["status"] == "True")
        });
        if mube_e2e::state(&n) == "Ready" && unhealthy {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "never Ready and ContainerRuntimeUnhealthy: {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(node_object
        .to_string()
        .contains("container runtime unreachable"));
    // A pod bound to it says why it waits.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "waits"},
        "spec": {"nodeName": null, "containers": [{"name": "c", "image": "mube.local/busybox"}]}});
    assert_eq!(
        api.post("/api/v1/namespaces/default/pods", &pod).await.code,
        201
    );
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "waits"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    let r = api
        .post("/api/v1/namespaces/default/pods/waits/binding", &binding)
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = api.get("/api/v1/namespaces/default/pods/waits").await.body;
        if container(&p)["state"]["waiting"]["reason"] == "ContainerRuntimeUnhealthy" {
            break;
        }
        assert!(Instant::now() < deadline, "no waiting reason: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // NodeRestriction: another node may neither write this pod's status
    // nor delete it, nor read its logs through the API.
    let other = api.with(server.node_client("someone-else"));
    let path = "/api/v1/namespaces/default/pods/waits";
    let patch = other
        .raw(
            reqwest::Method::PATCH,
            &format!("{path}/status"),
            "application/merge-patch+json",
            br#"{"status":{"phase":"Failed"}}"#.to_vec(),
        )
        .await;
    assert_eq!(patch.code, 403, "{}", patch.body);
    assert_eq!(other.delete(path).await.code, 403);
    assert_eq!(other.get(&format!("{path}/log")).await.code, 403);
    assert_eq!(api.get(path).await.code, 200, "still there");
    assert!(mubelet.is_running(), "mubelet did not crash");
    // A node deleted takes its pods with it: no agent is left to stop them.
    mubelet.kill9();
    assert_eq!(api.delete(&format!("/api/v1/nodes/{node}")).await.code, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.get(path).await.code != 404 {
        assert!(
            Instant::now() < deadline,
            "the pod of a deleted node stayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Containers get the Kubernetes service environment of the Services in
/// their namespace at start (and the `kubernetes` Service's), under what
/// they set themselves; `enableServiceLinks: false` leaves only the
/// `kubernetes` Service's.
#[tokio::test]
async fn containers_get_the_service_environment() {
    let c = cluster(&[]).await;
    c.kubectl.ok(&[
        "create",
        "service",
        "clusterip",
        "web-front",
        "--tcp=80:8080",
        "--clusterip=10.96.5.5",
    ]);
    let mut linked = busybox("linked", "Never", "env | sort");
    linked["spec"]["containers"][0]["env"] =
        json!([{"name": "WEB_FRONT_SERVICE_PORT", "value": "mine"}]);
    c.create(linked).await;
    let mut unlinked = busybox("unlinked", "Never", "env | sort");
    unlinked["spec"]["enableServiceLinks"] = json!(false);
    c.create(unlinked).await;
    for name in ["linked", "unlinked"] {
        c.pod(name, "Succeeded", |p| phase(p) == "Succeeded").await;
    }
    let env = c.kubectl.ok(&["logs", "linked"]);
    for line in [
        "WEB_FRONT_SERVICE_HOST=10.96.5.5",
        "WEB_FRONT_SERVICE_PORT=mine",
        "WEB_FRONT_SERVICE_PORT_80_8080=80",
        "WEB_FRONT_PORT=tcp://10.96.5.5:80",
        "WEB_FRONT_PORT_80_TCP_ADDR=10.96.5.5",
        "KUBERNETES_SERVICE_HOST=10.96.0.1",
        "KUBERNETES_SERVICE_PORT=443",
        "KUBERNETES_SERVICE_PORT_HTTPS=443",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in:\n{env}");
    }
    let env = c.kubectl.ok(&["logs", "unlinked"]);
    assert!(env.contains("KUBERNETES_SERVICE_HOST=10.96.0.1"), "{env}");
    assert!(!env.contains("WEB_FRONT"), "{env}");
    c.finish().await;
}

/// `GET /` on `addr` from this host, plainly: the body, or the error
/// (a refused connection is `ConnectionRefused`).
fn http_get(addr: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr.parse().expect("an address");
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    Ok(reply
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.trim().to_string()))
}

/// The nftables table of `node`'s proxy, as `nft` prints it ("" if none).
fn proxy_table(node: &str) -> String {
    let table = format!("mube_proxy_{}", node.replace(['-', '.'], "_"));
    let out = Command::new("nft")
        .args(["list", "table", "ip", &table])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// mube-proxy on a real node: a Service's cluster IP and node port reach
/// its ready pods, spread over them, from a pod and from the host; a
/// deleted endpoint pod leaves the rotation; a Service without ready
/// endpoints refuses connections at once; a restarted mubelet rebuilds
/// its rules from the API and drops stale ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reach_their_ready_pods_through_mube_proxy() {
    if Command::new("nft").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "nft is missing (apt-get install nftables)"
        );
        eprintln!("SKIPPED: nft is not installed");
        return;
    }
    // A service range of this test's own: rules of other runs on this
    // machine never hold its addresses.
    let p = free_port();
    let cidr = format!("10.{}.{}.0/24", 100 + p % 100, (p / 100) % 256);
    let mut c = cluster_with(
        &format!("serviceCIDR: {cidr}\n"),
        &[("MUBELET_PROXY_MODE", "nftables")],
    )
    .await;
    // The rules stay when mubelet stops (by design); the test's go with it,
    // pass or fail.
    struct ProxyTable(String);
    impl Drop for ProxyTable {
        fn drop(&mut self) {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", &self.0])
                .status();
        }
    }
    let table = ProxyTable(format!("mube_proxy_{}", c.node.replace(['-', '.'], "_")));
    let _controllers = Component(
        Command::new(bin("mube-controller-manager"))
            .arg("--kubeconfig")
            .arg(c._server.data_dir().join("kubeconfig"))
            .args(["--leader-elect=false", "--metrics-address=127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start mube-controller-manager"),
    );
    let echo = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "echo"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "echo"}},
                 "template": {"metadata": {"labels": {"app": "echo"}},
                              "spec": {"terminationGracePeriodSeconds": 3, "containers": [{
                                  "name": "httpd", "image": "mube.local/busybox",
                                  "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]}]}}}});
    let r = c
        .api
        .post("/apis/apps/v1/namespaces/default/deployments", &echo)
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    c.kubectl.ok(&[
        "expose",
        "deployment",
        "echo",
        "--port=80",
        "--target-port=8080",
        "--type=NodePort",
    ]);
    let service = c
        .api
        .get("/api/v1/namespaces/default/services/echo")
        .await
        .body;
    let ip = service["spec"]["clusterIP"].as_str().unwrap().to_string();
    let node_port = service["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    let pods = c
        .wait_for(
            "/api/v1/namespaces/default/pods?labelSelector=app=echo",
            "two echo pods ready",
            |l| {
                l["items"].as_array().is_some_and(|items| {
                    items.len() == 2
                        && items.iter().all(|p| {
                            p["status"]["conditions"].as_array().is_some_and(|cs| {
                                cs.iter()
                                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
                            })
                        })
                })
            },
        )
        .await;
    let mut names: Vec<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    // One of the host's own addresses that is not loopback (node ports
    // are not served on 127.0.0.0/8, as with kube-proxy's nftables mode):
    // the pod bridge's, the pod network's gateway.
    let pod_ip = pods["items"][0]["status"]["podIP"].as_str().unwrap();
    let host_ip = format!("{}.1", pod_ip.rsplit_once('.').unwrap().0);

    // From the host: the cluster IP and the node port, each reaching both
    // pods (random choice: 40 tries miss one with odds of 2^-39).
    for addr in [format!("{ip}:80"), format!("{host_ip}:{node_port}")] {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = std::collections::BTreeSet::new();
        let mut tries = 0;
        while seen.len() < 2 || tries < 40 {
            match http_get(&addr) {
                Ok(body) => {
                    assert!(
                        names.contains(&body),
                        "{addr} answered {body:?}, not one of {names:?}"
                    );
                    seen.insert(body);
                    tries += 1;
                }
                Err(e) => assert!(Instant::now() < deadline, "{addr} never answered: {e}"),
            }
            assert!(Instant::now() < deadline, "{addr} reached only {seen:?}");
        }
    }

    // From a pod, by the cluster IP its environment names.
    c.create(busybox(
        "client",
        "Never",
        "for i in 1 2 3 4 5 6; do wget -q -O- http://$ECHO_SERVICE_HOST:$ECHO_SERVICE_PORT/; done",
    ))
    .await;
    let (ended, logs) = c.finished("client").await;
    assert_eq!(ended, "Succeeded", "{logs}");
    assert_eq!(logs.lines().count(), 6, "{logs}");
    assert!(logs.lines().all(|l| names.iter().any(|n| n == l)), "{logs}");

    // A deleted endpoint pod leaves the rotation (as soon as it is
    // terminating: its endpoint is no longer ready).
    let victim = names[0].clone();
    let deleted = Instant::now();
    c.kubectl.ok(&["delete", "pod", &victim, "--wait=false"]);
    let deadline = deleted + Duration::from_secs(10);
    let mut clean_streak = 0;
    let mut left_after = None;
    while clean_streak < 20 {
        let body = http_get(&format!("{ip}:80")).unwrap_or_default();
        if body == victim {
            clean_streak = 0;
            left_after = None;
        } else {
            left_after.get_or_insert(deleted.elapsed());
            clean_streak += 1;
        }
        assert!(
            Instant::now() < deadline,
            "{victim} still answers 10 s after its delete"
        );
    }
    eprintln!(
        "the deleted endpoint left the rotation after {:?}",
        left_after.unwrap_or_default()
    );
    // Meanwhile (its container ignores SIGTERM for the grace period) the
    // slice lists it as Kubernetes does: terminating, serving, not ready.
    let slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io/service-name=echo";
    let list = c
        .wait_for(slices, "the terminating endpoint", |l| {
            l["items"].as_array().into_iter().flatten().any(|s| {
                s["endpoints"].as_array().into_iter().flatten().any(|e| {
                    e["targetRef"]["name"] == victim.as_str()
                        && e["conditions"]["terminating"] == true
                })
            })
        })
        .await;
    let endpoint = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .find(|e| e["targetRef"]["name"] == victim.as_str())
        .unwrap();
    assert_eq!(
        endpoint["conditions"],
        json!({"ready": false, "serving": true, "terminating": true}),
        "{endpoint}"
    );

    // No ready endpoints: refused at once, by the cluster IP and the node port.
    c.kubectl.ok(&["scale", "deployment/echo", "--replicas=0"]);
    for addr in [format!("{ip}:80"), format!("{host_ip}:{node_port}")] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let started = Instant::now();
            match http_get(&addr) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    assert!(
                        started.elapsed() < Duration::from_secs(1),
                        "a refusal took {:?}",
                        started.elapsed()
                    );
                    break;
                }
                other => assert!(Instant::now() < deadline, "{addr} still answers: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Restarted, mubelet rebuilds its rules from the API: a Service
    // deleted meanwhile, and a rule nobody asked for, are gone.
    c.mubelet.kill9();
    assert!(
        proxy_table(&c.node).contains(&ip),
        "the rules stay while mubelet is down"
    );
    c.kubectl.ok(&["delete", "service", "echo"]);
    let stale = Command::new("nft")
        .args(["add", "chain", "ip", &table.0, "stale_by_hand"])
        .status()
        .unwrap();
    assert!(stale.success());
    c.mubelet.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rules = proxy_table(&c.node);
        if !rules.contains(&ip) && !rules.contains("stale_by_hand") && rules.contains("service-ips")
        {
            break;
        }
        assert!(Instant::now() < deadline, "stale rules stayed:\n{rules}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.finish().await;
}

/// The ESTABLISHED TCP connections of process `pid`: (local port, remote
/// port), from /proc.
fn connections_of(pid: u32) -> Vec<(u16, u16)> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local, remote, state (01: ESTABLISHED), ..., inode (10th).
            if f.len() < 10 || f[3] != "01" || !inodes.contains(f[9]) {
                continue;
            }
            let port =
                |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or("0"), 16).unwrap_or(0);
            out.push((port(f[1]), port(f[2])));
        }
    }
    out
}

fn running_in(c: &Cluster, pod: &str, needle: &str) -> usize {
    c.kubectl
        .ok(&["exec", pod, "--", "ps"])
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// kubectl exec (with and without a TTY, stdin, exit codes), attach, cp
/// both ways and port-forward, through the API server and mubelet to
/// containerd's streaming server; the Python client's exec and
/// port-forward; and a client dropped mid-stream leaves no process and no
/// connection behind on either hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_attach_cp_and_port_forward_reach_the_container() {
    let c = cluster(&[]).await;
    c.create(busybox(
        "box",
        "Always",
        "mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 8080 -h /www",
    ))
    .await;
    c.pod("box", "Running", |p| {
        container(p)["state"]["running"].is_object()
    })
    .await;

    assert_eq!(
        c.kubectl.ok(&["exec", "box", "--", "cat", "/etc/hostname"]),
        "box\n"
    );
    let (code, _, err) = c
        .kubectl
        .run(&["exec", "box", "--", "sh", "-c", "echo gone >&2; exit 7"]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("gone"), "{err}");
    // Standard input.
    let mut child = c
        .kubectl
        .command(&[
            "exec",
            "-i",
            "box",
            "--",
            "sh",
            "-c",
            "read a; read b; echo $b-$a",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"one\ntwo\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two-one\n");
    // A terminal (script(1) gives kubectl one): its size arrives, the exit
    // code comes back.
    let kubectl = std::env::var("MUBE_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let line = format!(
        "stty rows 31 cols 101; {kubectl} --kubeconfig {} exec -it box -- sh -c 'sleep 1; stty size; tty; exit 5'",
        c.kubectl.kubeconfig.display()
    );
    let tty = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .expect("script(1)");
    let text = String::from_utf8_lossy(&tty.stdout);
    assert_eq!(tty.status.code(), Some(5), "{text}");
    assert!(
        text.contains("31 101") && text.contains("/dev/pts/"),
        "{text}"
    );

    // cp both ways.
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up.txt");
    std::fs::write(&up, "uploaded\n").unwrap();
    c.kubectl
        .ok(&["cp", up.to_str().unwrap(), "box:/tmp/up.txt"]);
    assert_eq!(
        c.kubectl.ok(&["exec", "box", "--", "cat", "/tmp/up.txt"]),
        "uploaded\n"
    );
    let down = dir.path().join("down.txt");
    c.kubectl
        .ok(&["cp", "box:/www/index.html", down.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&down).unwrap(), "hi\n");

    // port-forward.
    let local = free_port();
    let (mut forward, mut lines) =
        c.kubectl
            .follow(&["port-forward", "pod/box", &format!("{local}:8080")]);
    lines
        .wait_for(Duration::from_secs(20), |l| l.contains("Forwarding from"))
        .expect("port-forward starts");
    let body = http_get(&format!("127.0.0.1:{local}")).unwrap_or_default();
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(body, "hi");

    // Every other kubectl the machine has (1.27-1.29 speak SPDY; 1.30
    // and later try WebSocket first, which containerd 1.6 refuses, and
    // fall back to SPDY): exec with its exit code, and port-forward.
    let others: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/google-cloud-sdk/bin")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("kubectl.1."))
                })
                .collect()
        })
        .unwrap_or_default();
    for binary in others {
        let run = |args: &[&str]| {
            Command::new(&binary)
                .arg("--kubeconfig")
                .arg(&c.kubectl.kubeconfig)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        let out = run(&[
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "cat /www/index.html; exit 3",
        ]);
        let v = binary.display();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{v}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "{v}");
        let local = free_port();
        let mut forward = Command::new(&binary)
            .arg("--kubeconfig")
            .arg(&c.kubectl.kubeconfig)
            .args(["port-forward", "pod/box", &format!("{local}:8080")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = mube_e2e::Lines::follow(forward.stdout.take().unwrap());
        let started = lines.wait_for(Duration::from_secs(20), |l| l.contains("Forwarding from"));
        let body = http_get(&format!("127.0.0.1:{local}")).unwrap_or_default();
        let _ = forward.kill();
        let _ = forward.wait();
        assert!(started.is_some(), "{v}: port-forward did not start");
        assert_eq!(body, "hi", "{v}");
    }

    // attach, to a container that reads its standard input.
    let mut reader = busybox("reader", "Never", "while read x; do echo line-$x; done");
    reader["spec"]["containers"][0]["stdin"] = json!(true);
    c.create(reader).await;
    c.pod("reader", "Running", |p| {
        container(p)["state"]["running"].is_object()
    })
    .await;
    let mut attach = c
        .kubectl
        .command(&["attach", "-i", "reader"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Standard input stays open while the answers are read: its end
    // would end the attach before they came back.
    let mut stdin = attach.stdin.take().unwrap();
    let mut answers = mube_e2e::Lines::follow(attach.stdout.take().unwrap());
    {
        use std::io::Write;
        stdin.write_all(b"one\ntwo\n").unwrap();
        stdin.flush().unwrap();
    }
    answers
        .wait_for(Duration::from_secs(20), |l| l.contains("line-two"))
        .expect("the attached container answers");
    let _ = attach.kill();
    let _ = attach.wait();
    drop(stdin);

    // The Python client (kubernetes on PyPI): exec and port-forward over
    // WebSocket.
    let python = Command::new("python3")
        .args(["-c", "import kubernetes"])
        .status()
        .is_ok_and(|s| s.success());
    if python {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/stream.py");
        let out = Command::new("python3")
            .arg(&script)
            .arg(&c.kubectl.kubeconfig)
            .arg("box")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("exec-out: py-exec rc: 6"), "{text}");
        assert!(text.contains("pf-body: hi"), "{text}");
    } else {
        assert!(
            std::env::var("CI").is_err(),
            "the Python client is missing (pip install kubernetes)"
        );
        eprintln!("SKIPPED: the Python client's exec and port-forward (pip install kubernetes)");
    }

    // Who may only get pods/exec opens no stream, whichever the method (a
    // WebSocket upgrade is a GET): a stream is a create.
    let rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/default";
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "peek"},
        "rules": [{"apiGroups": [""], "resources": ["pods", "pods/exec"], "verbs": ["get"]}]});
    assert_eq!(c.api.post(&format!("{rbac}/roles"), &role).await.code, 201);
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "peek"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "peek"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "peeker"}]});
    assert_eq!(
        c.api
            .post(&format!("{rbac}/rolebindings"), &binding)
            .await
            .code,
        201
    );
    let peeker = c.api.with(
        c._server
            .client_as(Some(&c._server.client_certificate("peeker", &[])), None),
    );
    assert_eq!(
        peeker.get("/api/v1/namespaces/default/pods/box").await.code,
        200
    );
    let r = peeker
        .get("/api/v1/namespaces/default/pods/box/exec?command=true&stdout=true")
        .await;
    assert_eq!(r.code, 403, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot create resource \"pods/exec\"")),
        "{}",
        r.body
    );

    // A client that goes away mid-stream: its process is killed, and no
    // connection stays open on either hop.
    let server_pid = c._server.pid();
    let agent_port = c.api.get(&format!("/api/v1/nodes/{}", c.node)).await.body["status"]
        ["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap() as u16;
    let api_port = c._server.port;
    let streams = |c: &Cluster| {
        let to_agent = connections_of(server_pid)
            .iter()
            .filter(|(_, r)| *r == agent_port)
            .count();
        // The agent's connections but those with the API server (its
        // watches and writes): the streams, in and out.
        let agent = connections_of(c.mubelet.pid())
            .iter()
            .filter(|(_, r)| *r != api_port)
            .count();
        (to_agent, agent)
    };
    let before = streams(&c);
    let mut dropped = c
        .kubectl
        .command(&["exec", "-i", "box", "--", "sh", "-c", "sleep 1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while running_in(&c, "box", "sleep 1000") == 0 {
        assert!(Instant::now() < deadline, "the exec never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = streams(&c);
    assert!(
        during.0 > before.0 && during.1 > before.1,
        "{before:?} {during:?}"
    );
    dropped.kill().unwrap();
    let _ = dropped.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = running_in(&c, "box", "sleep 1000");
        let now = streams(&c);
        if left == 0 && now.0 <= before.0 && now.1 <= before.1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {left} processes, connections {now:?} (before: {before:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.finish().await;
}
