//! What the node agent reports on its Node beyond the heartbeat: CPU and
//! memory capacity of the host, its addresses, and whether the container
//! runtime answers (the `ContainerRuntimeUnhealthy` condition). It also
//! reads the `spec.podCIDR` the API server gave the node and writes the
//! CNI config for it. Checked every heartbeat interval; the Node is
//! written only when something changed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::cri::Runtime;
use crate::network;

/// The runtime as it answered last: `containerd://1.6.20`, or why not.
pub type RuntimeName = Arc<Mutex<Option<String>>>;

/// How a node reports its runtime, as the kubelet: `containerd://1.6.20`.
pub fn reported_name(v: &crate::cri::api::VersionResponse) -> String {
    format!("{}://{}", v.runtime_name, v.runtime_version)
}

/// The host's CPUs (as Kubernetes counts them: the ones this process may
/// use) and memory in bytes.
pub fn host_resources() -> (usize, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let kb = l
                    .strip_prefix("MemTotal:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim();
                kb.parse::<u64>().ok()
            })
        })
        .map_or(0, |kb| kb * 1024);
    (cpus, memory)
}

/// The address other machines reach this one at: the one it would use to
/// reach the API server.
pub fn detect_ip(api_server: &reqwest::Url) -> Option<String> {
    let host = api_server.host_str()?.trim_matches(['[', ']']);
    let port = api_server.port_or_known_default().unwrap_or(443);
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()?
        .next()?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip().to_string())
}

pub async fn run(
    config: Arc<Config>,
    runtime: Runtime,
    runtime_name: RuntimeName,
    host_ip: Option<String>,
    client: watch::Receiver<reqwest::Client>,
    shutdown: CancellationToken,
) {
    let (cpus, memory) = host_resources();
    let mut cni_written: Option<String> = None;
    let mut logged_down = false;
    loop {
        let health = match runtime.version().await {
            Ok(v) => {
                let name = reported_name(&v);
                *runtime_name.lock().unwrap_or_else(|p| p.into_inner()) = Some(name);
                if logged_down {
                    logged_down = false;
                    tracing::info!(endpoint = %runtime.endpoint, "container runtime answers again");
                }
                Ok(())
            }
            Err(e) => {
                if !logged_down {
                    logged_down = true;
                    tracing::warn!(endpoint = %runtime.endpoint, error = %e, "container runtime unreachable; the node keeps heartbeating and reports ContainerRuntimeUnhealthy");
                }
                Err(e.message)
            }
        };
        let client_now = client.borrow().clone();
        // Compared with the Node as it is now, every time: a Node made
        // again, or changed by someone else, gets its values back.
        // The same read gives the podCIDR the API server assigned.
        match update_node(
            &config,
            &client_now,
            cpus,
            memory,
            host_ip.as_deref(),
            &health,
        )
        .await
        {
            Ok(Some(cidr)) if cni_written.as_deref() != Some(&cidr) => {
                runtime.set_pod_cidr(&cidr);
                match network::write_cni_config(&config.cni_conf_dir, &cidr) {
                    Ok(Some(path)) => {
                        tracing::info!(pod_cidr = %cidr, path = %path.display(), "CNI config written");
                        cni_written = Some(cidr);
                    }
                    Ok(None) => {
                        tracing::info!(pod_cidr = %cidr, dir = %config.cni_conf_dir.display(), "another node's CNI config is already there (one runtime shared by several mubelets); pods take addresses from its range");
                        cni_written = Some(cidr);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot write the CNI config"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot update the node's status yet"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(config.heartbeat_interval.min(Duration::from_secs(10))) => {}
        }
    }
}

async fn get_node(config: &Config, client: &reqwest::Client) -> Result<Value, String> {
    let url = config
        .api_servers
        .join(&format!("api/v1/nodes/{}", config.node_name))?;
    let r = client
        .get(url)
        .send()
        .await
        .map_err(|e| mube_apis::errors::chain(&e))?;
    if !r.status().is_success() {
        return Err(format!("GET node: {}", r.status()));
    }
    r.json().await.map_err(|e| mube_apis::errors::chain(&e))
}

/// Read, change, write back with the read's resourceVersion; a conflict
/// (a heartbeat wrote in between) is tried again. Returns the node's
/// `spec.podCIDR`, as read.
async fn update_node(
    config: &Config,
    client: &reqwest::Client,
    cpus: usize,
    memory: u64,
    host_ip: Option<&str>,
    health: &Result<(), String>,
) -> Result<Option<String>, String> {
    let url = config.api_servers.join(&format!(
        "api/v1/nodes/{}/status?fieldManager=mubelet",
        config.node_name
    ))?;
    for _ in 0..5 {
        let mut node = get_node(config, client).await?;
        let pod_cidr = node
            .pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        let before = node.clone();
        if !node.get("status").is_some_and(Value::is_object) {
            node["status"] = json!({});
        }
        let Some(status) = node.get_mut("status").and_then(Value::as_object_mut) else {
            return Err("the Node is not an object".into());
        };
        for key in ["capacity", "allocatable"] {
            let map = status.entry(key).or_insert_with(|| json!({}));
            map["cpu"] = json!(cpus.to_string());
            map["memory"] = json!(format!("{}Ki", memory / 1024));
        }
        if let Some(ip) = host_ip {
            // The address the API server reaches this agent at.
            let addresses = status.entry("addresses").or_insert_with(|| json!([]));
            if !addresses.is_array() {
                *addresses = json!([]);
            }
            if let Some(list) = addresses.as_array_mut() {
                // A detected address does not replace one the node was
                // registered with (configs/apiserver.yaml's ip);
                // MUBELET_NODE_IP does.
                let has = list.iter().any(|a| a["type"] == "InternalIP");
                if config.node_ip.is_some() || !has {
                    list.retain(|a| a["type"] != "InternalIP");
                    list.insert(0, json!({"type": "InternalIP", "address": ip}));
                }
                if !list.iter().any(|a| a["type"] == "Hostname") {
                    list.push(json!({"type": "Hostname", "address": config.node_name}));
                }
            }
        }
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let (state, reason, message) = match health {
            Ok(()) => (
                "False",
                "RuntimeReady",
                "the container runtime answers".to_string(),
            ),
            Err(e) => (
                "True",
                "RuntimeUnreachable",
                format!("container runtime unreachable: {e}"),
            ),
        };
        let conditions = status.entry("conditions").or_insert_with(|| json!([]));
        if !conditions.is_array() {
            *conditions = json!([]);
        }
        if let Some(list) = conditions.as_array_mut() {
            let old = list
                .iter()
                .position(|c| c["type"] == "ContainerRuntimeUnhealthy");
            let same = old
                .and_then(|i| list.get(i))
                .filter(|c| c["status"] == state);
            let since = same
                .and_then(|c| c.get("lastTransitionTime").cloned())
                .unwrap_or_else(|| json!(now));
            // Written only when it changes: a steady node causes no Node
            // events (its liveness is the Lease's business).
            let checked = same
                .filter(|c| c["reason"] == reason && c["message"] == message.as_str())
                .and_then(|c| c.get("lastHeartbeatTime").cloned())
                .unwrap_or_else(|| json!(now));
            let condition = json!({
                "type": "ContainerRuntimeUnhealthy", "status": state, "reason": reason,
                "message": message, "lastHeartbeatTime": checked, "lastTransitionTime": since,
            });
            match old {
                Some(i) => list[i] = condition,
                None => list.push(condition),
            }
        }
        if node == before {
            return Ok(pod_cidr);
        }
        let r = client
            .put(url.clone())
            .json(&node)
            .send()
            .await
            .map_err(|e| mube_apis::errors::chain(&e))?;
        if r.status().is_success() {
            return Ok(pod_cidr);
        }
        if r.status() != reqwest::StatusCode::CONFLICT {
            return Err(format!(
                "PUT node status: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ));
        }
    }
    Err("PUT node status: conflicts kept happening".into())
}
