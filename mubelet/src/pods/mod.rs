//! Running the pods bound to this node: an informer (list and watch of the
//! API), one worker per pod, and a sweep that removes what the runtime
//! holds for pods that no longer exist.

pub mod backoff;
mod service_env;
mod spec;
pub mod status;
mod worker;

pub use worker::instances;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cri::{self, Runtime};

/// What every pod worker shares.
pub struct Shared {
    pub runtime: Runtime,
    pub node: String,
    pub api_servers: crate::servers::ApiServers,
    pub client: watch::Receiver<reqwest::Client>,
    pub log_root: PathBuf,
    pub backoff: backoff::Policy,
    pub host_ip: Option<String>,
    /// How often a worker looks at its pod without being told to.
    pub resync: Duration,
    /// The pod workers' writes to the API (status, final delete) in flight
    /// at once, as the kubelet's status manager sends one at a time: a
    /// node starting a hundred pods must not open a hundred connections
    /// (each a TLS handshake, on both sides) to write their statuses.
    pub api_writes: tokio::sync::Semaphore,
}

/// The number of `Shared::api_writes` permits.
pub const API_WRITES: usize = 4;

struct Running {
    updates: watch::Sender<Option<Arc<Pod>>>,
    task: JoinHandle<()>,
}

/// Runs pods until `shutdown`. Containers keep running when mubelet stops:
/// the next mubelet adopts them by their labels.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let (tx, mut pods) = watch::channel::<crate::informer::Objects<Pod>>(None);
    let source = tokio::spawn(crate::informer::run(
        shared.api_servers.clone(),
        crate::informer::Source {
            path: "api/v1/pods",
            field_selector: Some(format!("spec.nodeName={}", shared.node)),
            what: "this node's pods",
        },
        shared.client.clone(),
        tx,
        shutdown.clone(),
    ));
    let mut workers: HashMap<String, Running> = HashMap::new();
    let mut sweep = tokio::time::interval(shared.resync.max(Duration::from_secs(1)) * 5);
    let mut sweeping: Option<JoinHandle<()>> = None;
    loop {
        let tick = tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = pods.changed() => if changed.is_err() { break } else { false },
            _ = sweep.tick() => true,
        };
        let Some(snapshot) = pods.borrow_and_update().clone() else {
            continue;
        };
        for (uid, pod) in snapshot.iter() {
            match workers.get(uid) {
                Some(w) => {
                    // Only a worker whose pod changed is woken.
                    w.updates.send_if_modified(|current| {
                        let changed = current.as_ref().map(|p| &p.metadata.resource_version)
                            != Some(&pod.metadata.resource_version);
                        if changed {
                            *current = Some(pod.clone());
                        }
                        changed
                    });
                }
                None => {
                    let (updates, rx) = watch::channel(Some(pod.clone()));
                    let worker = worker::Worker::new(shared.clone(), uid.clone());
                    let task = tokio::spawn(worker.run(rx, shutdown.clone()));
                    workers.insert(uid.clone(), Running { updates, task });
                }
            }
        }
        // Pods gone from the API: their workers clean up and end.
        for (uid, w) in &workers {
            if !snapshot.contains_key(uid) {
                w.updates.send_replace(None);
            }
        }
        workers.retain(|_, w| !w.task.is_finished());
        // The sweep runs beside the loop (a slow runtime must not hold up
        // new pods), one at a time.
        if tick && sweeping.as_ref().is_none_or(|t| t.is_finished()) {
            let known: std::collections::HashSet<String> =
                snapshot.keys().chain(workers.keys()).cloned().collect();
            let taken = jiff::Timestamp::now().as_nanosecond();
            sweeping = Some(tokio::spawn(sweep_orphans(shared.clone(), known, taken)));
        }
    }
    for (_, w) in workers {
        let _ = w.task.await;
    }
    let _ = source.await;
}

/// Sandboxes of this node whose pod neither exists nor has a worker (left
/// from before a restart of mubelet, say) are stopped and removed. Other
/// nodes' sandboxes, and anything not labelled by mubelet, are never
/// touched.
/// Sandboxes made after `taken` (when `known` was read) may belong to pods
/// `known` does not name yet: only older ones can be orphans.
async fn sweep_orphans(shared: Arc<Shared>, known: std::collections::HashSet<String>, taken: i128) {
    let mine = HashMap::from([(cri::NODE.to_string(), shared.node.clone())]);
    let Ok(sandboxes) = shared.runtime.sandboxes(mine).await else {
        return;
    };
    for s in sandboxes {
        let Some(uid) = s.labels.get(cri::POD_UID) else {
            continue;
        };
        if known.contains(uid) || i128::from(s.created_at) >= taken {
            continue;
        }
        tracing::info!(pod_uid = %uid, sandbox = %s.id, "removing the sandbox of a pod that no longer exists");
        let selector = HashMap::from([
            (cri::POD_UID.to_string(), uid.clone()),
            (cri::NODE.to_string(), shared.node.clone()),
        ]);
        if let Err(e) =
            worker::remove_pod(&shared.runtime, selector, Duration::ZERO, &shared.log_root).await
        {
            tracing::warn!(pod_uid = %uid, error = %e, "cannot remove an orphaned sandbox yet");
        }
    }
}
