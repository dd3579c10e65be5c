//! The controller manager against the real API server, scheduler and
//! mubelets: Deployments on real containerd, driven by the real kubectl;
//! eviction, leader failover and cascading deletion on hollow nodes
//! (`mubelet hollow`, pods in memory), which make those runs fast.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mube_apis::watch::EventType;
use mube_e2e::{
    bin, free_port, join_token, metric, scrape, table, Api, ApiServer, Kubectl, Lines, Mubelet,
    Options,
};
use serde_json::{json, Value};

/// A child process killed when dropped, with its log lines.
struct Process {
    child: Option<Child>,
    log: Lines,
}

impl Process {
    fn start(mut command: Command) -> Process {
        let mut child = command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a component");
        let log = Lines::follow(child.stdout.take().expect("stdout"));
        Process {
            child: Some(child),
            log,
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Cluster {
    server: ApiServer,
    api: Api,
    kubectl: Kubectl,
    _scheduler: Process,
    _state: tempfile::TempDir,
}

/// The API server (a 2 s NotReady timeout), the scheduler.
async fn control_plane() -> Cluster {
    let server = ApiServer::start(Options {
        secure: true,
        notready_timeout: "2s",
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    let kubectl = Kubectl::new(&server);
    let mut scheduler = Command::new(bin("mube-scheduler"));
    scheduler
        .arg("--kubeconfig")
        .arg(server.data_dir().join("kubeconfig"))
        .args(["--leader-elect=false"]);
    Cluster {
        server,
        api,
        kubectl,
        _scheduler: Process::start(scheduler),
        _state: tempfile::tempdir().unwrap(),
    }
}

impl Cluster {
    fn controller_manager(&self, extra: &[&str]) -> Process {
        let mut command = Command::new(bin("mube-controller-manager"));
        command
            .arg("--kubeconfig")
            .arg(self.server.data_dir().join("kubeconfig"))
            .args(extra);
        Process::start(command)
    }

    /// `nodes` hollow nodes named `{prefix}-1..`, in one process.
    fn hollow(&self, prefix: &str, nodes: usize) -> Process {
        let token = join_token(&self.server, "10m");
        let mut command = Command::new(bin("mubelet"));
        command
            .args([
                "hollow",
                "--nodes",
                &nodes.to_string(),
                "--name-prefix",
                prefix,
            ])
            .env("MUBE_API_SERVER", self.server.url())
            .env("MUBELET_TOKEN", token)
            .env("MUBELET_CA_FILE", self.server.data_dir().join("pki/ca.crt"))
            .env("MUBELET_STATE_DIR", self._state.path())
            .env("MUBELET_HEARTBEAT_INTERVAL", "500ms")
            .env("MUBELET_SYNC_INTERVAL", "200ms")
            .env("MUBELET_SHUTDOWN_TIMEOUT", "2s");
        Process::start(command)
    }

    /// Polls `path` until `check` holds; fails with the last answer.
    async fn wait_for(&self, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.api.get(path).await;
            if r.code == 200 && check(&r.body) {
                return r.body;
            }
            assert!(Instant::now() < deadline, "never {what}: {}", r.body);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `path` until it is 404.
    async fn gone(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.api.get(path).await;
            if r.code == 404 {
                return;
            }
            assert!(Instant::now() < deadline, "never gone: {}", r.body);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn nodes_ready(&self, names: &[String]) {
        for n in names {
            self.wait_for(&format!("/api/v1/nodes/{n}"), "Ready", |v| {
                mube_e2e::state(v) == "Ready" && v.pointer("/spec/podCIDR").is_some()
            })
            .await;
        }
    }

    async fn pods(&self, selector: &str) -> Vec<Value> {
        let r = self
            .api
            .get(&format!(
                "/api/v1/namespaces/default/pods?labelSelector={selector}"
            ))
            .await;
        assert_eq!(r.code, 200, "{}", r.body);
        r.body["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until the Deployment reports `replicas` available and up to date.
    async fn available(&self, name: &str, replicas: i64) -> Value {
        self.wait_for(
            &format!("/apis/apps/v1/namespaces/default/deployments/{name}"),
            &format!("{replicas} replicas available"),
            |d| {
                let s = &d["status"];
                d["metadata"]["generation"] == s["observedGeneration"]
                    && s["availableReplicas"] == replicas
                    && s["updatedReplicas"] == replicas
                    && s["replicas"] == replicas
            },
        )
        .await
    }
}

fn active(pods: &[Value]) -> Vec<&Value> {
    pods.iter()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .collect()
}

fn node_of(pod: &Value) -> &str {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// A Deployment of `replicas` busybox pods that tolerate a lost node for
/// `tolerate` seconds.
fn deployment(name: &str, replicas: i64, tolerate: i64) -> Value {
    let toleration = |key: &str| json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": tolerate});
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "tolerations": [toleration("node.kubernetes.io/not-ready"), toleration("node.kubernetes.io/unreachable")],
                    "containers": [{"name": "main", "image": "mube.local/busybox", "command": ["sleep", "3600"]}]
                }
            }
        }
    })
}

/// The e2e the issue names, on real containers: a Deployment serving on a
/// port becomes Available; `kubectl scale` to 3 and back; `kubectl set
/// image` rolls out; `kubectl rollout undo` goes back to the first
/// ReplicaSet; deleting the Deployment takes its ReplicaSets and pods.
#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_on_containerd_scales_rolls_out_rolls_back_and_goes() {
    mube_e2e::containerd();
    let c = control_plane().await;
    let node = format!("deploy-{}", free_port());
    let state = tempfile::tempdir().unwrap();
    let token = join_token(&c.server, "10m");
    let ca = c.server.data_dir().join("pki/ca.crt");
    let logs = state.path().join("pods");
    let runtime = mube_e2e::containerd_endpoint();
    let mut mubelet = Mubelet::start_with(
        &c.server.url(),
        &node,
        "500ms",
        &[
            ("MUBELET_TOKEN", token.as_str()),
            ("MUBELET_CA_FILE", ca.to_str().unwrap()),
            ("MUBELET_STATE_DIR", state.path().to_str().unwrap()),
            ("MUBELET_POD_LOG_DIR", logs.to_str().unwrap()),
            ("MUBELET_SYNC_INTERVAL", "200ms"),
            ("MUBELET_CONTAINER_RUNTIME_ENDPOINT", runtime.as_str()),
        ],
    );
    c.nodes_ready(std::slice::from_ref(&node)).await;
    let _cm = c.controller_manager(&["--leader-elect=false"]);

    c.kubectl.ok(&[
        "create",
        "deployment",
        "web",
        "--image=mube.local/busybox",
        "--replicas=2",
        "--",
        "sh",
        "-c",
        // httpd as PID 1 ignores SIGTERM, which would hold every rollout
        // step for the 30 s grace period; the shell ends on it.
        "trap 'exit 0' TERM; httpd -f -p 8080 & wait",
    ]);
    c.kubectl
        .ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let d = c.available("web", 2).await;
    let conditions = d["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|x| x["type"] == "Available" && x["status"] == "True"),
        "{d}"
    );
    // Each pod answers on its port, from its own address. Ready is not
    // "listening" (the pod has no readiness probe), so each gets a while.
    for pod in active(&c.pods("app=web").await) {
        let ip = pod["status"]["podIP"].as_str().unwrap();
        answers_http(&format!("http://{ip}:8080/")).await;
    }
    let out = c.kubectl.ok(&["get", "deploy,rs,pods"]);
    assert!(out.contains("deployment.apps/web   2/2"), "{out}");

    c.kubectl.ok(&["scale", "deployment/web", "--replicas=3"]);
    c.available("web", 3).await;
    assert_eq!(active(&c.pods("app=web").await).len(), 3);
    c.kubectl.ok(&["scale", "deployment/web", "--replicas=2"]);
    c.available("web", 2).await;
    c.wait_for(
        "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
        "2 pods left",
        |l| l["items"].as_array().is_some_and(|i| i.len() == 2),
    )
    .await;

    let first_rs = |sets: &Value| -> Vec<String> {
        sets["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let sets = c
        .api
        .get("/apis/apps/v1/namespaces/default/replicasets")
        .await
        .body;
    let original = first_rs(&sets);
    assert_eq!(original.len(), 1, "{sets}");

    c.kubectl.ok(&[
        "set",
        "image",
        "deployment/web",
        "busybox=mube.local/busybox:latest",
    ]);
    c.kubectl
        .ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let pods = active(&c.pods("app=web").await)
        .into_iter()
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect::<Vec<_>>();
    assert_eq!(pods, ["mube.local/busybox:latest"; 2]);

    c.kubectl.ok(&["rollout", "undo", "deployment/web"]);
    c.kubectl
        .ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let sets = c
        .api
        .get("/apis/apps/v1/namespaces/default/replicasets")
        .await
        .body;
    let names = first_rs(&sets);
    assert_eq!(names.len(), 2, "undo reuses the first ReplicaSet: {sets}");
    let first = sets["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == original[0].as_str())
        .unwrap();
    assert_eq!(first["spec"]["replicas"], 2, "{first}");
    assert_eq!(
        first["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );

    c.kubectl.ok(&["delete", "deployment", "web"]);
    c.wait_for(
        "/apis/apps/v1/namespaces/default/replicasets",
        "ReplicaSets gone",
        |l| l["items"].as_array().is_some_and(Vec::is_empty),
    )
    .await;
    c.wait_for("/api/v1/namespaces/default/pods", "pods gone", |l| {
        l["items"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    // The runtime let go of every container.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mube_e2e::runtime_containers(&node).is_empty() {
        assert!(Instant::now() < deadline, "left in the runtime");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    mubelet.kill9();
}

/// Waits up to 30 s for any HTTP answer from `url`, in attempts of 3 s.
/// Fails with the last error and what the host knows of the address
/// (route and neighbour entry), which is what tells a slow server from
/// an unreachable one.
async fn answers_http(url: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client.get(url).timeout(Duration::from_secs(3)).send().await;
        let error = match answer {
            Ok(_) => return,
            Err(e) => e,
        };
        if Instant::now() > deadline {
            let host = url
                .trim_start_matches("http://")
                .split(':')
                .next()
                .unwrap_or_default();
            let ip = |args: &[&str]| {
                Command::new("ip")
                    .args(args)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            };
            panic!(
                "{url}: {error:?}\nroute: {}neighbour: {}",
                ip(&["route", "get", host]),
                ip(&["neigh", "show", host])
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A node that stops heartbeating gets the NoExecute taint, its pods are
/// evicted once their toleration runs out, and the ReplicaSet replaces
/// them on the node that is still there; the taint goes when the node
/// is back.
#[tokio::test(flavor = "multi_thread")]
async fn pods_leave_a_node_that_stops_heartbeating() {
    let c = control_plane().await;
    let mut lost = c.hollow("lost", 1);
    let _kept = c.hollow("kept", 1);
    c.nodes_ready(&["lost-1".into(), "kept-1".into()]).await;
    let metrics_port = free_port();
    let _cm = c.controller_manager(&[
        "--leader-elect=false",
        &format!("--metrics-address=127.0.0.1:{metrics_port}"),
    ]);
    let r = c
        .api
        .post(
            "/apis/apps/v1/namespaces/default/deployments",
            &deployment("spread", 6, 1),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    c.available("spread", 6).await;
    // Its metrics count the reconciles of both controllers.
    let text = scrape(&format!("http://127.0.0.1:{metrics_port}/metrics")).await;
    for name in ["deployment", "replicaset"] {
        assert!(
            metric(
                &text,
                "workqueue_work_duration_seconds_count",
                &[("name", name)]
            ) >= 1.0,
            "{name}: {text}"
        );
    }
    let on_lost = active(&c.pods("app=spread").await)
        .iter()
        .filter(|p| node_of(p) == "lost-1")
        .count();
    assert!(on_lost > 0, "the scheduler spreads pods over both nodes");

    lost.kill9();
    let node = c
        .wait_for("/api/v1/nodes/lost-1", "the NoExecute taint", |n| {
            n["spec"]["taints"].as_array().is_some_and(|t| {
                t.iter().any(|t| {
                    t["key"] == "node.kubernetes.io/not-ready" && t["effect"] == "NoExecute"
                })
            })
        })
        .await;
    assert_eq!(mube_e2e::state(&node), "NotReady");
    c.wait_for(
        "/api/v1/namespaces/default/pods?labelSelector=app%3Dspread",
        "6 live pods, all on kept-1",
        |l| {
            let items = l["items"].as_array().cloned().unwrap_or_default();
            let live = active(&items);
            live.len() == 6 && live.iter().all(|p| node_of(p) == "kept-1")
        },
    )
    .await;
    c.available("spread", 6).await;

    // Back: the taint goes.
    let _back = c.hollow("lost", 1);
    c.wait_for("/api/v1/nodes/lost-1", "no taint once Ready", |n| {
        mube_e2e::state(n) == "Ready"
            && n["spec"]["taints"]
                .as_array()
                .is_none_or(|t| t.iter().all(|t| t["effect"] != "NoExecute"))
    })
    .await;
}

/// Two controller managers: one leads. kill -9 the leader while a scale-up
/// waits; the other takes over within the lease duration and finishes it,
/// and no pod is ever created twice (every pod ADDED is counted).
#[tokio::test(flavor = "multi_thread")]
async fn the_other_controller_manager_takes_over_without_duplicates() {
    let c = control_plane().await;
    let _nodes = c.hollow("fo", 2);
    c.nodes_ready(&["fo-1".into(), "fo-2".into()]).await;
    let election = [
        "--leader-elect-lease-duration=3s",
        "--leader-elect-renew-deadline=2s",
        "--leader-elect-retry-period=500ms",
    ];
    let mut managers = [
        c.controller_manager(&election),
        c.controller_manager(&election),
    ];
    let mut watch = c.api.watch("/api/v1/namespaces/default/pods", "").await;
    let r = c
        .api
        .post(
            "/apis/apps/v1/namespaces/default/deployments",
            &deployment("fo", 4, 300),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    c.available("fo", 4).await;
    let leader = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = managers.iter_mut().position(|m| {
                m.log
                    .collect(Duration::from_millis(50))
                    .iter()
                    .any(|l| l.contains("became the leader"))
            });
            if let Some(i) = found {
                break i;
            }
            assert!(
                Instant::now() < deadline,
                "no controller manager said it leads"
            );
        }
    };
    managers[leader].kill9();
    let killed = Instant::now();
    // The dead leader's last renewal, by the machine's one clock.
    let lease = c
        .api
        .get("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager")
        .await;
    assert_eq!(lease.code, 200, "{}", lease.body);
    let renewed: jiff::Timestamp = lease.body["spec"]["renewTime"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("a renewTime");
    let r = c
        .api
        .raw(
            reqwest::Method::PATCH,
            "/apis/apps/v1/namespaces/default/deployments/fo/scale",
            "application/merge-patch+json",
            json!({"spec": {"replicas": 10}}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    let other = &mut managers[1 - leader];
    other
        .log
        .wait_for(Duration::from_secs(10), |l| l.contains("became the leader"))
        .expect("the other copy leads");
    // The other copy, watching the Lease, takes it when the lease of the
    // last renewal ends: not before, and within the lease duration of the
    // kill, not a retry period later (500 ms of slack for reading its log).
    let took = killed.elapsed();
    // When the new leader took it, by its own stamp on the Lease.
    let lease = c
        .api
        .get("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager")
        .await;
    let acquired: jiff::Timestamp = lease.body["spec"]["acquireTime"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("an acquireTime");
    let since_renewal = acquired.duration_since(renewed);
    eprintln!("took over {took:?} after the kill, {since_renewal:#} after the last renewal");
    assert!(
        since_renewal >= jiff::SignedDuration::from_secs(3),
        "took over {since_renewal:#} after the last renewal"
    );
    assert!(
        took <= Duration::from_millis(3000 + 500),
        "took over after {took:?}"
    );
    c.available("fo", 10).await;

    // Every pod ever added, by name: exactly 10, and none deleted.
    let events = watch.drain(Duration::from_millis(1000)).await;
    let added: std::collections::BTreeSet<String> = events
        .iter()
        .filter(|e| e.type_ == EventType::Added)
        .map(|e| {
            e.object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(added.len(), 10, "pods created: {added:?}");
    assert!(
        events.iter().all(|e| e.type_ != EventType::Deleted),
        "a pod was deleted"
    );
    eprintln!("takeover after {took:?}");
}

/// A leader that cannot renew its Lease (the API server frozen with
/// SIGSTOP) stops acting and exits within its renew deadline, before the
/// Lease could run out for anyone else.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_cannot_renew_stops_before_its_lease_runs_out() {
    let c = control_plane().await;
    let mut manager = c.controller_manager(&[
        "--leader-elect-lease-duration=4s",
        "--leader-elect-renew-deadline=2s",
        "--leader-elect-retry-period=500ms",
    ]);
    manager
        .log
        .wait_for(Duration::from_secs(10), |l| l.contains("became the leader"))
        .expect("it leads");
    c.server.signal("STOP");
    let frozen = Instant::now();
    let lost = manager.log.wait_for(Duration::from_secs(6), |l| {
        l.contains("leader election lost")
    });
    let after = frozen.elapsed();
    c.server.signal("CONT");
    assert!(lost.is_some(), "the leader never gave up");
    // The renew deadline (2 s) from the last renewal, which was at most one
    // retry (0.5 s) before the freeze; the lease is 4 s.
    assert!(
        after < Duration::from_millis(3500),
        "gave up after {after:?}"
    );
    let child = manager.child.as_mut().expect("started");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "it did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !status.success(),
        "a lost election is a failure: {status:?}"
    );
}

/// `kubectl delete --cascade=orphan` leaves the ReplicaSet and its pods,
/// without the owner reference; `--cascade=foreground` removes the pods
/// first, then the ReplicaSet, then the Deployment.
#[tokio::test(flavor = "multi_thread")]
async fn orphan_and_foreground_deletion() {
    let c = control_plane().await;
    let _nodes = c.hollow("gc", 1);
    c.nodes_ready(&["gc-1".into()]).await;
    let _cm = c.controller_manager(&["--leader-elect=false"]);
    for name in ["orphans", "fg"] {
        let r = c
            .api
            .post(
                "/apis/apps/v1/namespaces/default/deployments",
                &deployment(name, 2, 300),
            )
            .await;
        assert_eq!(r.code, 201, "{}", r.body);
        c.available(name, 2).await;
    }

    c.kubectl
        .ok(&["delete", "deployment", "orphans", "--cascade=orphan"]);
    c.gone("/apis/apps/v1/namespaces/default/deployments/orphans")
        .await;
    let sets = c
        .api
        .get("/apis/apps/v1/namespaces/default/replicasets?labelSelector=app%3Dorphans")
        .await
        .body;
    let items = sets["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{sets}");
    assert!(
        items[0]["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{sets}"
    );
    assert_eq!(active(&c.pods("app=orphans").await).len(), 2);

    let mut watch = c
        .api
        .watch("/api/v1/namespaces/default/pods", "labelSelector=app%3Dfg")
        .await;
    let mut sets_watch = c
        .api
        .watch(
            "/apis/apps/v1/namespaces/default/replicasets",
            "labelSelector=app%3Dfg",
        )
        .await;
    let (code, _, err) = c.kubectl.run(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    assert_eq!(code, 0, "{err}");
    let r = c
        .api
        .get("/apis/apps/v1/namespaces/default/deployments/fg")
        .await;
    assert_eq!(
        r.code, 404,
        "kubectl waits for the Deployment to go: {}",
        r.body
    );
    assert!(c.pods("app=fg").await.is_empty(), "pods went first");
    let pods_deleted = watch
        .drain(Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|e| e.type_ == EventType::Deleted)
        .count();
    assert_eq!(pods_deleted, 2);
    let set_deleted = sets_watch
        .drain(Duration::from_millis(300))
        .await
        .into_iter()
        .any(|e| e.type_ == EventType::Deleted);
    assert!(set_deleted);
}

/// The endpoint controller: a Service's EndpointSlice lists its ready
/// pods' addresses, with the target port, owned by the Service; it follows
/// a pod's deletion and a scale to none (one empty slice stays, as in
/// Kubernetes), and goes with the Service.
#[tokio::test(flavor = "multi_thread")]
async fn endpoint_slices_follow_the_pods_a_service_selects() {
    let c = control_plane().await;
    let _nodes = c.hollow("eps", 2);
    c.nodes_ready(&["eps-1".into(), "eps-2".into()]).await;
    let _cm = c.controller_manager(&["--leader-elect=false"]);
    let r = c
        .api
        .post(
            "/apis/apps/v1/namespaces/default/deployments",
            &deployment("web", 3, 300),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    c.available("web", 3).await;
    c.kubectl.ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
        "--name=web",
    ]);
    let slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io/service-name=web";
    // The addresses of the pods that are Ready, sorted.
    let ready_ips = |pods: &[Value]| {
        let mut ips: Vec<String> = active(pods)
            .iter()
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .map(|p| {
                format!(
                    "{} {}",
                    p["status"]["podIP"].as_str().unwrap_or("-"),
                    p["metadata"]["name"].as_str().unwrap_or("-")
                )
            })
            .collect();
        ips.sort();
        ips
    };
    let listed = |list: &Value| {
        let mut ips: Vec<String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == true)
            .map(|e| {
                format!(
                    "{} {}",
                    e["addresses"][0].as_str().unwrap_or("-"),
                    e["targetRef"]["name"].as_str().unwrap_or("-")
                )
            })
            .collect();
        ips.sort();
        ips
    };
    let pods = c.pods("app=web").await;
    let want = ready_ips(&pods);
    assert_eq!(want.len(), 3);
    let list = c
        .wait_for(slices, "the three pods in the slice", |l| listed(l) == want)
        .await;
    let slice = &list["items"][0];
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["ports"],
        json!([{"name": "", "port": 8080, "protocol": "TCP"}]),
        "{slice}"
    );
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    let endpoint = &slice["endpoints"][0];
    assert_eq!(endpoint["targetRef"]["kind"], "Pod");
    assert!(
        endpoint["nodeName"]
            .as_str()
            .is_some_and(|n| n.starts_with("eps-")),
        "{endpoint}"
    );
    let rows = table(&c.kubectl.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
    ]));
    assert_eq!(
        rows[0],
        ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    );
    assert_eq!(&rows[1][1..3], ["IPv4", "8080"]);

    // A deleted pod leaves; its replacement (which may get the same
    // address) comes in.
    let victim = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    c.kubectl.ok(&["delete", "pod", &victim, "--wait=false"]);
    c.wait_for(slices, "the deleted pod out of the slice", |l| {
        let listed = listed(l);
        !listed.iter().any(|e| e.ends_with(&format!(" {victim}"))) && listed.len() == 3
    })
    .await;

    // Scaled to none: one empty slice; the Service deleted: none.
    c.kubectl.ok(&["scale", "deployment/web", "--replicas=0"]);
    c.wait_for(slices, "an empty slice", |l| {
        l["items"].as_array().is_some_and(|items| {
            items.len() == 1 && items[0]["endpoints"].as_array().is_none_or(Vec::is_empty)
        })
    })
    .await;
    c.kubectl.ok(&["delete", "service", "web"]);
    c.wait_for(slices, "the slices gone with the Service", |l| {
        l["items"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
}
