//! mube-proxy, in mubelet (`MUBELET_PROXY_MODE=nftables`, the default on a
//! node that runs containers): watches Services and EndpointSlices and
//! programs this node with nftables rules, so that a connection to a
//! Service's cluster IP and port, or to a node port, reaches one of its
//! ready endpoints. At start it replaces its table whole (stale rules of
//! an earlier run go); after, it writes only what changed. A failed write
//! is followed by a whole rebuild.

pub mod model;
pub mod nft;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::informer::{self, Objects, Source};

/// How mube-proxy programs the node (`MUBELET_PROXY_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Nftables,
    Off,
}

impl Mode {
    pub fn parse(text: &str) -> Result<Mode, String> {
        match text {
            "nftables" => Ok(Mode::Nftables),
            "off" => Ok(Mode::Off),
            other => Err(format!("{other:?}: must be nftables or off")),
        }
    }
}

/// Runs `nft -f -` with `script`.
async fn apply(script: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run nft (Debian: apt-get install nftables): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft refused the rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Kubernetes' network programming latency: for each slice whose
/// `endpoints.kubernetes.io/last-change-trigger-time` is new since the
/// last write, the time from it to now (its rules are in place).
fn observe_programming(
    slices: &HashMap<String, Arc<EndpointSlice>>,
    programmed: &mut HashMap<String, String>,
) {
    const TRIGGER: &str = "endpoints.kubernetes.io/last-change-trigger-time";
    let now = jiff::Timestamp::now();
    programmed.retain(|uid, _| slices.contains_key(uid));
    for (uid, slice) in slices {
        let Some(trigger) = slice
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TRIGGER))
        else {
            continue;
        };
        if programmed.get(uid) == Some(trigger) {
            continue;
        }
        programmed.insert(uid.clone(), trigger.clone());
        if let Ok(at) = trigger.parse::<jiff::Timestamp>() {
            let took = now.duration_since(at).as_secs_f64();
            if took >= 0.0 {
                crate::metrics::metrics().network_programming.observe(took);
            }
        }
    }
}

/// Keeps this node's rules in step with the API until `shutdown`. The
/// rules stay when mubelet stops, so Services keep working through a
/// restart; the next start replaces them.
pub async fn run(
    servers: crate::servers::ApiServers,
    client: watch::Receiver<reqwest::Client>,
    node: String,
    shutdown: CancellationToken,
) {
    let (services_tx, mut services) = watch::channel::<Objects<Service>>(None);
    let (slices_tx, mut slices) = watch::channel::<Objects<EndpointSlice>>(None);
    let sources = [
        tokio::spawn(informer::run(
            servers.clone(),
            Source {
                path: "api/v1/services",
                field_selector: None,
                what: "services",
            },
            client.clone(),
            services_tx,
            shutdown.clone(),
        )),
        tokio::spawn(informer::run(
            servers,
            Source {
                path: "apis/discovery.k8s.io/v1/endpointslices",
                field_selector: None,
                what: "endpointslices",
            },
            client,
            slices_tx,
            shutdown.clone(),
        )),
    ];
    let table = nft::table_name(&node);
    // Each slice's last trigger time seen in place (by UID).
    let mut programmed: HashMap<String, String> = HashMap::new();
    // What the table holds; `None`: unknown, rebuild it whole.
    let mut current: Option<model::Model> = None;
    let mut failures = 0u32;
    loop {
        // The snapshots the rules are made from (and the latency of the
        // slices in them measured against).
        let seen_services = services.borrow_and_update().clone();
        let seen_slices = slices.borrow_and_update().clone();
        // Nothing is removed before both lists are in.
        let wanted = match (&seen_services, &seen_slices) {
            (Some(s), Some(e)) => Some(model::model(s, e)),
            _ => None,
        };
        if let (Some(wanted), Some(seen_slices)) = (wanted, &seen_slices) {
            let script = match &current {
                None => Some(nft::full(&table, &wanted)),
                Some(old) if *old == wanted => None,
                Some(old) => Some(nft::update(&table, old, &wanted)),
            };
            if script.is_none() {
                // Nothing to write: what the slices say is in place.
                observe_programming(seen_slices, &mut programmed);
            }
            if let Some(script) = script {
                let started = Instant::now();
                let whole = current.is_none();
                match apply(&script).await {
                    Ok(()) => {
                        failures = 0;
                        tracing::debug!(whole, services = wanted.len(), took = ?started.elapsed(), "proxy rules written");
                        crate::metrics::proxy_synced(started.elapsed());
                        observe_programming(seen_slices, &mut programmed);
                        current = Some(wanted);
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(30) {
                            tracing::warn!(error = %e, "cannot write the Service rules; rebuilding them");
                        }
                        current = None;
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1).min(Duration::from_millis(100) * failures)) => {}
                        }
                        continue;
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = services.changed() => if r.is_err() { break },
            r = slices.changed() => if r.is_err() { break },
        }
    }
    for s in sources {
        let _ = s.await;
    }
}
