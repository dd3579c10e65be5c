//! etcd, the store Kubernetes uses, under the same heartbeat-shaped durable
//! write load: one key per node, a value the size of a Lease, C concurrent
//! clients. The benchmark starts etcd itself on loopback with a temporary
//! data directory; it installs nothing.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;

use crate::load::{run, LoadStats};
use crate::server::{free_port, node_name};

pub struct Etcd {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self._dir.path().join("etcd")
    }
}

impl Etcd {
    pub async fn start() -> Result<Etcd, String> {
        let binary = which("etcd").ok_or(
            "etcd is not installed: `apt-get install etcd-server` (Debian) provides /usr/bin/etcd",
        )?;
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let (client, peer) = (free_port()?, free_port()?);
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(binary)
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start etcd: {e}"))?;
        let etcd = Etcd {
            child,
            url,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        for _ in 0..500 {
            if let Ok(r) = client.get(format!("{}/health", etcd.url)).send().await {
                if r.status().is_success() {
                    return Ok(etcd);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("etcd did not become healthy in 10s".into())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A value the size of a node Lease as mube stores it.
pub fn lease_value(node: usize) -> String {
    format!(
        r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"creationTimestamp":"2026-01-01T00:00:00Z","generation":1,"name":"{n}","namespace":"kube-node-lease","ownerReferences":[{{"apiVersion":"v1","kind":"Node","name":"{n}","uid":"6f1c1b2e-8d3a-4c1e-9a55-2b7e0f3c9d41"}}],"resourceVersion":"1","uid":"0e6b7d0c-4f55-4d8f-8a62-1f0c2f7d8e93"}},"spec":{{"holderIdentity":"{n}","leaseDurationSeconds":30,"renewTime":"2026-01-01T00:00:00.000000Z"}}}}"#,
        n = node_name(node)
    )
}

fn key(node: usize) -> String {
    format!("/registry/leases/kube-node-lease/{}", node_name(node))
}

/// Puts through etcd's JSON gateway (`POST /v3/kv/put`).
pub async fn gateway_puts(
    url: &str,
    nodes: usize,
    connections: usize,
    duration: Duration,
) -> LoadStats {
    let put_url: Arc<str> = Arc::from(format!("{url}/v3/kv/put"));
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    run(connections, duration, move |c| {
        let put_url = put_url.clone();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .build()
            .expect("client");
        let mut node = c % nodes.max(1);
        move || {
            let body = format!(
                r#"{{"key":"{}","value":"{}"}}"#,
                b64(&key(node)),
                b64(&lease_value(node))
            );
            node = (node + connections) % nodes.max(1);
            let client = client.clone();
            let put_url = put_url.clone();
            async move {
                match client.post(&*put_url).body(body).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
        }
    })
    .await
}

/// Hands out `items` one per call, to the load's connections (`run`
/// calls its factory once per connection, through `Fn`).
#[cfg(feature = "etcd-grpc")]
fn one_each<T>(items: Vec<T>) -> impl Fn() -> T {
    let items = std::sync::Mutex::new(items);
    move || {
        items
            .lock()
            .ok()
            .and_then(|mut v| v.pop())
            .expect("one per connection")
    }
}

/// One gRPC client (its own connection) per load connection.
#[cfg(feature = "etcd-grpc")]
async fn grpc_clients(url: &str, connections: usize) -> Result<Vec<etcd_client::Client>, String> {
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(
            etcd_client::Client::connect([url], None)
                .await
                .map_err(|e| format!("etcd gRPC connect: {e}"))?,
        );
    }
    Ok(clients)
}

/// Puts through etcd's gRPC API with the etcd-client crate.
#[cfg(feature = "etcd-grpc")]
pub async fn grpc_puts(
    url: &str,
    nodes: usize,
    connections: usize,
    duration: Duration,
) -> Result<LoadStats, String> {
    let next_client = one_each(grpc_clients(url, connections).await?);
    Ok(run(connections, duration, move |c| {
        let client = next_client();
        let mut node = c % nodes.max(1);
        move || {
            let (k, v) = (key(node), lease_value(node));
            node = (node + connections) % nodes.max(1);
            let mut kv = client.kv_client();
            async move { kv.put(k, v, None).await.is_ok() }
        }
    })
    .await)
}

/// What mube asks of etcd per heartbeat, straight through gRPC: a
/// transaction that puts the Lease if its mod_revision is still the one
/// last written (as every mube write compares), while one watch of the
/// prefix with previous values is open and read (as each API server keeps
/// per resource). The ceiling for mube on etcd on this machine, next to
/// the bare puts above.
#[cfg(feature = "etcd-grpc")]
/// Also returns etcd's cores over the measured part (`etcd_pid`'s CPU).
pub async fn grpc_watched_cas(
    url: &str,
    etcd_pid: u32,
    nodes: usize,
    connections: usize,
    duration: Duration,
) -> Result<(LoadStats, f64), String> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp, WatchOptions};
    use futures::StreamExt;
    let watcher = etcd_client::Client::connect([url], None)
        .await
        .map_err(|e| format!("etcd gRPC connect: {e}"))?;
    let mut watch = watcher.watch_client();
    let mut events = watch
        .watch(
            "/registry/leases/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .map_err(|e| format!("etcd watch: {e}"))?;
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = events.next().await {} });
    let clients = grpc_clients(url, connections).await?;
    // Each connection's nodes written once, for the revisions to compare.
    let mut written = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        let mut kv = client.kv_client();
        let mut revisions = std::collections::HashMap::new();
        for node in (c..nodes).step_by(connections.max(1)) {
            let r = kv
                .put(key(node), lease_value(node), None)
                .await
                .map_err(|e| format!("etcd put: {e}"))?;
            revisions.insert(node, r.header().map_or(0, |h| h.revision()));
        }
        written.push(std::sync::Mutex::new(Some(revisions)));
    }
    let next_client = one_each(clients);
    let written = Arc::new(written);
    let cpu = || crate::server::proc_stats(etcd_pid).cpu_seconds;
    let before = cpu();
    let stats = run(connections, duration, move |c| {
        let client = next_client();
        let revisions = written[c]
            .lock()
            .ok()
            .and_then(|mut r| r.take())
            .unwrap_or_default();
        // Only this connection's own nodes, round and round: no two
        // connections write one key.
        let mut own: Vec<usize> = revisions.keys().copied().collect();
        own.sort_unstable();
        let revisions = Arc::new(std::sync::Mutex::new(revisions));
        let mut next = 0usize;
        move || {
            let this = own.get(next % own.len().max(1)).copied().unwrap_or(0);
            next += 1;
            let mut kv = client.kv_client();
            let revisions = revisions.clone();
            async move {
                let last = revisions
                    .lock()
                    .ok()
                    .and_then(|r| r.get(&this).copied())
                    .unwrap_or(0);
                let k = key(this);
                let txn = Txn::new()
                    .when([Compare::mod_revision(k.clone(), CompareOp::Equal, last)])
                    .and_then([TxnOp::put(k.clone(), lease_value(this), None)])
                    .or_else([TxnOp::get(k, None)]);
                match kv.txn(txn).await {
                    Ok(r) if r.succeeded() => {
                        if let Ok(mut map) = revisions.lock() {
                            map.insert(this, r.header().map_or(0, |h| h.revision()));
                        }
                        true
                    }
                    _ => false,
                }
            }
        }
    })
    .await;
    let cores = (cpu() - before) / stats.elapsed.as_secs_f64();
    drain.abort();
    Ok((stats, cores))
}
