//! Pods on a real containerd: one mubelet joined to a secure API server,
//! with mube-scheduler. Measures the start latency of `pods` pods (create
//! to Running, seen on a watch, with a local image), created at a steady
//! rate, and the mubelet's resident memory with `running` pods running.
//! containerd must be up with mube's images (scripts/containerd.sh).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::server::{each_event, free_port, get_json, KillOnDrop, Security, Server, ADMIN_TOKEN};
use crate::Report;

pub struct Args<'a> {
    pub mubelet: &'a Path,
    pub scheduler: &'a Path,
    pub runtime_endpoint: &'a str,
    pub pods: usize,
    pub rate: f64,
    pub running: usize,
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "pods"}},
        "spec": {"terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": "mube.local/busybox", "command": ["sleep", "3600"]}]}})
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// A real node joined to `server`: mubelet on `runtime_endpoint`, with a
/// join token, Ready with a pod CIDR. Killed when dropped.
pub struct Node {
    pub name: String,
    pub pid: u32,
    pub health: u16,
    _process: KillOnDrop,
    _state: tempfile::TempDir,
}

pub async fn join(
    server: &Server,
    mubelet: &Path,
    runtime_endpoint: &str,
    capacity: usize,
    env: &[(&str, &str)],
) -> Result<Node, String> {
    let endpoint = server.endpoint();
    let http = endpoint.connection();
    let base = endpoint.url.clone();
    // A join token for the node, made as `mubectl token create` makes one.
    let token = mube_apis::join_token::generate(&mut || fastrand::u8(..));
    let secret = mube_apis::join_token::secret(&token, None, "mube-bench")
        .ok_or("cannot build a join token")?;
    let made = http
        .post(format!("{base}/api/v1/namespaces/kube-system/secrets"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&secret)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !made.status().is_success() {
        return Err(format!("join token: {}", made.status()));
    }
    let state = tempfile::tempdir().map_err(|e| e.to_string())?;
    let name = format!("bench-{}", std::process::id());
    let health = free_port()?;
    let process = Command::new(mubelet)
        .env("MUBELET_NODE_NAME", &name)
        .env("MUBE_API_SERVER", &base)
        .env("MUBELET_TOKEN", &token)
        .env("MUBELET_CA_FILE", server.data_dir().join("pki/ca.crt"))
        .env("MUBELET_STATE_DIR", state.path())
        .env("MUBELET_POD_LOG_DIR", state.path().join("pods"))
        .env("MUBELET_HEALTH_LISTEN", format!("127.0.0.1:{health}"))
        .env("MUBELET_CAPACITY", capacity.to_string())
        .env("MUBELET_CONTAINER_RUNTIME_ENDPOINT", runtime_endpoint)
        .env("MUBELET_PROXY_MODE", "off")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", mubelet.display()))?;
    let pid = process.id();
    let node = Node {
        name,
        pid,
        health,
        _process: KillOnDrop(process),
        _state: state,
    };
    let node_url = format!("{base}/api/v1/nodes/{}", node.name);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = get_json(&http, &node_url, Some(ADMIN_TOKEN))
            .await
            .unwrap_or_default();
        if n["status"]["state"] == "Ready" && n["spec"]["podCIDR"].is_string() {
            return Ok(node);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "node {} never Ready with a pod CIDR: {n}",
                node.name
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// mube-scheduler (or another control-plane binary taking
/// `--kubeconfig`) for `server`, killed when dropped.
pub fn scheduler(binary: &Path, server: &Server) -> Result<KillOnDrop, String> {
    Ok(KillOnDrop(
        Command::new(binary)
            .arg("--kubeconfig")
            .arg(server.data_dir().join("kubeconfig"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?,
    ))
}

pub async fn run(bin: &Path, args: Args<'_>, report: &mut Report) -> Result<(), String> {
    for b in [args.mubelet, args.scheduler] {
        if !b.exists() {
            return Err(format!(
                "{} is missing: build it with `cargo build --release -p mubelet -p mube-scheduler`",
                b.display()
            ));
        }
    }
    let server = Server::start_with(bin, 0, "", Security::Secure).await?;
    let endpoint = server.endpoint();
    let http = endpoint.connection();
    let base = endpoint.url.clone();
    let node = join(
        &server,
        args.mubelet,
        args.runtime_endpoint,
        args.pods + args.running + 10,
        &[],
    )
    .await?;
    let mubelet_pid = node.pid;
    let _scheduler = scheduler(args.scheduler, &server)?;

    let pods_url = format!("{base}/api/v1/namespaces/default/pods");
    let result = measure(&http, &pods_url, mubelet_pid, &args, report).await;
    // Whatever happened: every pod deleted and stopped by the mubelet, so
    // nothing is left running in containerd.
    let _ = http
        .delete(format!("{pods_url}?labelSelector=bench%3Dpods"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await;
    wait_count(&http, &pods_url, 0, Duration::from_secs(120)).await?;
    result
}

async fn wait_count(
    http: &reqwest::Client,
    url: &str,
    want: usize,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let list = get_json(http, url, Some(ADMIN_TOKEN)).await?;
        let n = list["items"].as_array().map_or(0, Vec::len);
        if n == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{n} pods, not {want}, after {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

/// Creates `count` pods named `prefix-i` at `rate` per second, and returns
/// each one's time from its create request to Running, seen on a watch.
async fn start_pods(
    http: &reqwest::Client,
    pods_url: &str,
    prefix: &str,
    count: usize,
    rate: f64,
) -> Result<Vec<Duration>, String> {
    let list = get_json(http, pods_url, Some(ADMIN_TOKEN)).await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let watch = http
        .get(format!("{pods_url}?watch=1&resourceVersion={rv}"))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    tokio::spawn(each_event(watch, move |event| {
        if !running(&event["object"]) {
            return true;
        }
        let name = event["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        tx.send((name, Instant::now())).is_ok()
    }));
    let mut created = std::collections::HashMap::new();
    let gap = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let start = Instant::now();
    for i in 0..count {
        let at = start + gap * i as u32;
        tokio::time::sleep_until(at.into()).await;
        let name = format!("{prefix}-{i}");
        let sent = Instant::now();
        let r = http
            .post(pods_url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&pod(&name))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("create {name}: {}", r.status()));
        }
        created.insert(name, sent);
    }
    let mut latencies = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while latencies.len() < count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((name, at))) => {
                if let Some(sent) = created.get(&name) {
                    latencies.entry(name).or_insert(at - *sent);
                }
            }
            _ => {
                return Err(format!(
                    "{} of {count} pods Running after 120 s",
                    latencies.len()
                ))
            }
        }
    }
    Ok(latencies.into_values().collect())
}

async fn measure(
    http: &reqwest::Client,
    pods_url: &str,
    mubelet_pid: u32,
    args: &Args<'_>,
    report: &mut Report,
) -> Result<(), String> {
    report.add("scenario", "pods");
    report.add("pods", args.pods);
    report.add("create_rate_per_s", args.rate);
    let mut latencies = start_pods(http, pods_url, "lat", args.pods, args.rate).await?;
    latencies.sort();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    report.add("start_p50_ms", at(0.50).as_millis());
    report.add("start_p99_ms", at(0.99).as_millis());
    report.add("start_max_ms", at(1.0).as_millis());
    report.add(
        "mubelet_rss_mib_with_all",
        format!("{:.1}", rss_kib(mubelet_pid).unwrap_or(0) as f64 / 1024.0),
    );

    // Memory with `running` pods: the others deleted, then settled.
    let deleted = Instant::now();
    let r = http
        .delete(format!("{pods_url}?labelSelector=bench%3Dpods"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("delete the pods: {}", r.status()));
    }
    wait_count(http, pods_url, 0, Duration::from_secs(120)).await?;
    report.add(
        "delete_all_s",
        format!("{:.2}", deleted.elapsed().as_secs_f64()),
    );
    start_pods(http, pods_url, "rss", args.running, args.rate).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    report.add("running", args.running);
    report.add(
        "mubelet_rss_mib",
        format!("{:.1}", rss_kib(mubelet_pid).unwrap_or(0) as f64 / 1024.0),
    );
    Ok(())
}
