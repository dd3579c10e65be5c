//! The controller manager at scale, on hollow nodes (`mubelet hollow`):
//! one Deployment scaled from 0 to R replicas over N nodes, a rolling
//! update of it (the fewest replicas available at any sample), the loss of
//! some nodes (eviction after a short toleration, and replacement), a
//! leader failover between two controller managers (time to take over,
//! pods created during it against those asked for), and the controller
//! manager's memory.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::server::{each_event, get_json, proc_stats, KillOnDrop, Security, Server, ADMIN_TOKEN};
use crate::Report;

pub struct Args<'a> {
    pub mubelet: &'a Path,
    pub scheduler: &'a Path,
    pub controller_manager: &'a Path,
    pub nodes: usize,
    pub lost: usize,
    pub replicas: usize,
    /// The pods' tolerationSeconds for not-ready/unreachable nodes.
    pub toleration: u64,
}

const TOLERATED: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

fn deployment(replicas: usize, toleration: u64) -> Value {
    let tolerations: Vec<Value> = TOLERATED
        .iter()
        .map(|k| json!({"key": k, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": toleration}))
        .collect();
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bench"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "bench"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "bench"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "tolerations": tolerations,
                    "containers": [{"name": "c", "image": "mube.local/busybox", "command": ["sleep", "1d"]}]
                }
            }
        }
    })
}

struct Cluster {
    http: reqwest::Client,
    base: String,
}

impl Cluster {
    async fn get(&self, path: &str) -> Result<Value, String> {
        get_json(
            &self.http,
            &format!("{}{path}", self.base),
            Some(ADMIN_TOKEN),
        )
        .await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: &Value,
    ) -> Result<Value, String> {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let code = r.status();
        let body: Value = r.json().await.map_err(|e| e.to_string())?;
        if !code.is_success() {
            return Err(format!("{path}: {code}: {body}"));
        }
        Ok(body)
    }

    async fn scale(&self, replicas: usize) -> Result<(), String> {
        self.send(
            reqwest::Method::PATCH,
            "/apis/apps/v1/namespaces/default/deployments/bench/scale",
            "application/merge-patch+json",
            &json!({"spec": {"replicas": replicas}}),
        )
        .await
        .map(|_| ())
    }

    async fn deployment(&self) -> Result<Value, String> {
        self.get("/apis/apps/v1/namespaces/default/deployments/bench")
            .await
    }

    /// Waits until the Deployment has `replicas` ready, available and up
    /// to date, sampling `on_sample` with its status every 100 ms.
    async fn settled(
        &self,
        replicas: usize,
        limit: Duration,
        mut on_sample: impl FnMut(&Value),
    ) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let d = self.deployment().await?;
            on_sample(&d["status"]);
            let s = &d["status"];
            let n = replicas as u64;
            if d["metadata"]["generation"] == s["observedGeneration"]
                && s["readyReplicas"].as_u64() == Some(n)
                && s["availableReplicas"].as_u64() == Some(n)
                && s["updatedReplicas"].as_u64() == Some(n)
                && s["replicas"].as_u64() == Some(n)
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                return Err(format!("not settled at {replicas} after {limit:?}: {s}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Pods of the Deployment: (live, running, live on `nodes`).
    async fn pods(&self, nodes: &BTreeSet<String>) -> Result<(usize, usize, usize), String> {
        let list = self
            .get("/api/v1/namespaces/default/pods?labelSelector=app%3Dbench")
            .await?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let live: Vec<&Value> = items
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        let running = live
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        let on = live
            .iter()
            .filter(|p| {
                p["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| nodes.contains(n))
            })
            .count();
        Ok((live.len(), running, on))
    }
}

/// What a watch of the Deployment's pods saw, from its start: when each
/// pod was first seen (created), bound to a node, and Running.
#[derive(Default)]
struct Seen {
    created: std::collections::HashMap<String, Duration>,
    bound: std::collections::HashMap<String, Duration>,
    running: std::collections::HashMap<String, Duration>,
}

impl Seen {
    /// When the last of the pods seen reached each stage.
    fn last(&self) -> [Option<Duration>; 3] {
        [&self.created, &self.bound, &self.running].map(|m| m.values().max().copied())
    }
}

/// A watch of the Deployment's pods from now on; the stage times are
/// counted from when this returns.
async fn watch_pods(
    c: &Cluster,
) -> Result<
    (
        std::sync::Arc<std::sync::Mutex<Seen>>,
        tokio::task::JoinHandle<()>,
    ),
    String,
> {
    let list = c
        .get("/api/v1/namespaces/default/pods?labelSelector=app%3Dbench")
        .await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let watch = c
        .http
        .get(format!(
            "{}/api/v1/namespaces/default/pods?labelSelector=app%3Dbench&watch=1&resourceVersion={rv}",
            c.base
        ))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(900))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let shared = seen.clone();
    let start = Instant::now();
    let task = tokio::spawn(each_event(watch, move |e| {
        let pod = &e["object"];
        let Some(name) = pod["metadata"]["name"].as_str() else {
            return true;
        };
        let at = start.elapsed();
        let mut seen = shared.lock().unwrap_or_else(|p| p.into_inner());
        if e["type"] == "ADDED" {
            seen.created.entry(name.to_string()).or_insert(at);
        }
        if pod["spec"]["nodeName"].is_string() {
            seen.bound.entry(name.to_string()).or_insert(at);
        }
        if pod["status"]["phase"] == "Running" {
            seen.running.entry(name.to_string()).or_insert(at);
        }
        true
    }));
    Ok((seen, task))
}

/// Lines of a child's stdout, as they come.
fn lines(child: &mut std::process::Child) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    rx
}

pub async fn run(bin: &Path, args: Args<'_>, report: &mut Report) -> Result<(), String> {
    for b in [args.mubelet, args.scheduler, args.controller_manager] {
        if !b.exists() {
            return Err(format!(
                "{} is missing: build it with `cargo build --release -p mubelet -p mube-scheduler -p mube-controller-manager`",
                b.display()
            ));
        }
    }
    // Nodes heartbeat every 2 s and go NotReady 5 s after their last one,
    // so that the node-loss step is short. (A hollow process that falls
    // behind its heartbeats shows here as nodes lost during the other
    // steps: that was measured before its pod workers shared their pods
    // and connections, and is what the short timeout keeps watching for.)
    std::env::set_var("MUBE_NODE_NOTREADY_TIMEOUT", "5s");
    let server = Server::start_with(bin, 0, "", Security::Secure).await?;
    let endpoint = server.endpoint();
    let c = Cluster {
        http: endpoint.connection(),
        base: endpoint.url.clone(),
    };
    let token = mube_apis::join_token::generate(&mut || fastrand::u8(..));
    let secret = mube_apis::join_token::secret(&token, None, "mube-bench deployments")
        .ok_or("cannot build a join token")?;
    let secret = serde_json::to_value(&secret).map_err(|e| e.to_string())?;
    c.send(
        reqwest::Method::POST,
        "/api/v1/namespaces/kube-system/secrets",
        "application/json",
        &secret,
    )
    .await?;
    let kubeconfig = server.data_dir().join("kubeconfig");
    let state = tempfile::tempdir().map_err(|e| e.to_string())?;
    let hollow = |prefix: &str, nodes: usize| -> Result<KillOnDrop, String> {
        Command::new(args.mubelet)
            .args([
                "hollow",
                "--nodes",
                &nodes.to_string(),
                "--name-prefix",
                prefix,
            ])
            .env("MUBE_API_SERVER", &c.base)
            .env("MUBELET_TOKEN", &token)
            .env("MUBELET_CA_FILE", server.data_dir().join("pki/ca.crt"))
            .env("MUBELET_STATE_DIR", state.path())
            .env("MUBELET_HEARTBEAT_INTERVAL", "2s")
            .env("MUBELET_CAPACITY", "250")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map(KillOnDrop)
            .map_err(|e| format!("cannot start {}: {e}", args.mubelet.display()))
    };
    let kept = hollow("kept", args.nodes - args.lost)?;
    let mut lost = hollow("lost", args.lost)?;
    let lost_names: BTreeSet<String> = (1..=args.lost).map(|i| format!("lost-{i}")).collect();
    let scheduler = KillOnDrop(
        Command::new(args.scheduler)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    let manager = |which: &str| -> Result<
        (KillOnDrop, tokio::sync::mpsc::UnboundedReceiver<String>),
        String,
    > {
        let mut child = Command::new(args.controller_manager)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("controller manager {which}: {e}"))?;
        let log = lines(&mut child);
        Ok((KillOnDrop(child), log))
    };
    let mut managers = vec![manager("a")?];

    let started = Instant::now();
    loop {
        let nodes = c.get("/api/v1/nodes").await?;
        let ready = nodes["items"].as_array().map_or(0, |n| {
            n.iter()
                .filter(|n| n["status"]["state"] == "Ready" && n["spec"]["podCIDR"].is_string())
                .count()
        });
        if ready == args.nodes {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "{ready} of {} hollow nodes Ready after 2 min",
                args.nodes
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.add(
        "hollow nodes Ready",
        format!("{} in {:.1?}", args.nodes, started.elapsed()),
    );

    // 1. Scale-up 0 -> R.
    c.send(
        reqwest::Method::POST,
        "/apis/apps/v1/namespaces/default/deployments",
        "application/json",
        &deployment(0, args.toleration),
    )
    .await?;
    c.settled(0, Duration::from_secs(30), |_| {}).await?;
    let (seen, watcher) = watch_pods(&c).await?;
    // CPU time of each process over the scale-up: where the seconds go.
    let processes = [
        ("API server", server.pid()),
        ("scheduler", scheduler.0.id()),
        ("controller manager", managers[0].0 .0.id()),
        ("hollow nodes", kept.0.id()),
        ("hollow nodes to lose", lost.0.id()),
    ];
    let cpu_before = processes.map(|(_, pid)| proc_stats(pid).cpu_seconds);
    c.scale(args.replicas).await?;
    let took = c
        .settled(args.replicas, Duration::from_secs(600), |_| {})
        .await?;
    let (live, running, _) = c.pods(&BTreeSet::new()).await?;
    report.add(
        "scale-up 0 -> replicas, all Running",
        format!(
            "{} replicas on {} nodes: {:.2?} ({live} live, {running} Running)",
            args.replicas, args.nodes, took
        ),
    );
    let cpu = processes
        .iter()
        .zip(cpu_before)
        .map(|((what, pid), before)| format!("{what} {:.1}", proc_stats(*pid).cpu_seconds - before))
        .collect::<Vec<_>>()
        .join(", ");
    report.add("scale-up, CPU seconds", cpu);
    watcher.abort();
    let stages = seen.lock().unwrap_or_else(|p| p.into_inner()).last();
    let [created, bound, running] = stages.map(|d| d.map_or("-".into(), |d| format!("{d:.2?}")));
    report.add(
        "scale-up, when the last pod was",
        format!(
            "created {created}, bound {bound}, Running {running} (as the bench's watch saw them)"
        ),
    );
    let cm_pid = managers[0].0 .0.id();
    let stats = proc_stats(cm_pid);
    report.add(
        "controller manager RSS",
        format!(
            "{:.1} MiB with {} pods and {} nodes",
            stats.rss_bytes as f64 / (1 << 20) as f64,
            args.replicas,
            args.nodes
        ),
    );

    // 2. Rolling update.
    let mut fewest = u64::MAX;
    c.send(
        reqwest::Method::PATCH,
        "/apis/apps/v1/namespaces/default/deployments/bench",
        "application/strategic-merge-patch+json",
        &json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "mube.local/busybox:v2"}]}}}}),
    )
    .await?;
    let took = c
        .settled(args.replicas, Duration::from_secs(600), |s| {
            if let Some(a) = s["availableReplicas"].as_u64() {
                fewest = fewest.min(a);
            }
        })
        .await?;
    report.add(
        "rolling update (25 % surge, 25 % unavailable)",
        format!(
            "{took:.2?}; fewest available {fewest} of {} ({:.1} %, floor 75 %)",
            args.replicas,
            fewest as f64 * 100.0 / args.replicas as f64
        ),
    );

    // 3. Node loss.
    let (_, _, on_lost) = c.pods(&lost_names).await?;
    let _ = lost.0.kill();
    let _ = lost.0.wait();
    let killed = Instant::now();
    // The eviction deadline: the last lost node's taint + the toleration.
    let deadline = loop {
        let mut latest: Option<jiff::Timestamp> = None;
        let mut tainted = 0;
        for n in &lost_names {
            let node = c.get(&format!("/api/v1/nodes/{n}")).await?;
            let added = node["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["effect"] == "NoExecute")
                .filter_map(|t| t["timeAdded"].as_str()?.parse::<jiff::Timestamp>().ok())
                .max();
            if let Some(a) = added {
                tainted += 1;
                latest = Some(latest.map_or(a, |l| l.max(a)));
            }
        }
        if tainted == lost_names.len() {
            break latest.unwrap_or_else(jiff::Timestamp::now)
                + jiff::SignedDuration::from_secs(args.toleration as i64);
        }
        if killed.elapsed() > Duration::from_secs(120) {
            return Err("lost nodes never tainted".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let tainted_after = killed.elapsed();
    loop {
        let (live, running, on) = c.pods(&lost_names).await?;
        let d = c.deployment().await?;
        if on == 0
            && live == args.replicas
            && running == args.replicas
            && d["status"]["availableReplicas"].as_u64() == Some(args.replicas as u64)
        {
            break;
        }
        if killed.elapsed() > Duration::from_secs(600) {
            return Err(format!(
                "not replaced: {live} live, {running} running, {on} on lost nodes"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after_deadline = jiff::Timestamp::now().duration_since(deadline);
    report.add(
        "node loss",
        format!(
            "{} of {} nodes stopped ({on_lost} pods on them): tainted after {tainted_after:.1?}; all {} Running again {:.2}s after the eviction deadline (toleration {} s)",
            args.lost, args.nodes, args.replicas, after_deadline.as_secs_f64(), args.toleration
        ),
    );

    // 4. Leader failover: a second copy; kill -9 the leader during a scale-up.
    managers.push(manager("b")?);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = args.replicas;
    let (seen, watcher) = watch_pods(&c).await?;
    // The first copy leads (it ran alone).
    let more = before / 10;
    c.scale(before + more).await?;
    let mut leader = managers.remove(0);
    let _ = leader.0 .0.kill();
    let _ = leader.0 .0.wait();
    let killed = Instant::now();
    // The dead leader's last renewal: its lease runs 15 s from there.
    let lease = c
        .get("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager")
        .await?;
    let renewed: Option<jiff::Timestamp> = lease["spec"]["renewTime"]
        .as_str()
        .and_then(|t| t.parse().ok());
    let mut other = managers.remove(0);
    let (took_over, at) = loop {
        match tokio::time::timeout(Duration::from_secs(60), other.1.recv()).await {
            Ok(Some(line)) if line.contains("became the leader") => {
                break (killed.elapsed(), jiff::Timestamp::now())
            }
            Ok(Some(_)) => {}
            _ => return Err("the second controller manager never led".into()),
        }
    };
    let after_renewal = renewed.map_or("-".into(), |r| {
        format!(
            "{:.1}s",
            (at - r).total(jiff::Unit::Second).unwrap_or(f64::NAN)
        )
    });
    c.settled(before + more, Duration::from_secs(300), |_| {})
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    watcher.abort();
    let created = seen.lock().unwrap_or_else(|p| p.into_inner()).created.len();
    let (live, _, _) = c.pods(&BTreeSet::new()).await?;
    report.add(
        "leader failover (kill -9, lease 15 s)",
        format!("took over {took_over:.1?} after the kill, {after_renewal} after the dead leader's last renewal; scaled {before} -> {}: {created} pods created (asked {more}), {live} live", before + more),
    );
    Ok(())
}
