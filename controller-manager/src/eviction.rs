//! Taint-based eviction, as Kubernetes' node lifecycle controller and taint
//! manager: a node whose Ready condition is False gets the
//! `node.kubernetes.io/not-ready:NoExecute` taint, one whose condition is
//! Unknown gets `node.kubernetes.io/unreachable:NoExecute`, and the taint
//! goes when the node is Ready again. A pod on a node with a NoExecute
//! taint it does not tolerate is deleted at once; one that tolerates it for
//! `tolerationSeconds` (300 s by default, set by the API server as
//! Kubernetes' DefaultTolerationSeconds admission does) is deleted when
//! that time has passed since the taint was added. Its ReplicaSet then
//! replaces it on a node that is healthy.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The NoExecute taint a node's Ready condition calls for.
pub fn wanted_taint(node: &Node) -> Option<&'static str> {
    let ready = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    match ready.status.as_str() {
        "False" => Some(NOT_READY),
        "Unknown" => Some(UNREACHABLE),
        _ => None,
    }
}

/// The node's taints with ours made to match its condition; `None` if they
/// already do.
pub fn retaint(node: &Node, now: Timestamp) -> Option<Vec<Taint>> {
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let wanted = wanted_taint(node);
    let ours = |t: &Taint| t.effect == "NoExecute" && (t.key == NOT_READY || t.key == UNREACHABLE);
    let has_wanted = current
        .iter()
        .any(|t| ours(t) && Some(t.key.as_str()) == wanted);
    let stale = current
        .iter()
        .any(|t| ours(t) && Some(t.key.as_str()) != wanted);
    if !stale && (has_wanted || wanted.is_none()) {
        return None;
    }
    let mut taints: Vec<Taint> = current.into_iter().filter(|t| !ours(t)).collect();
    if let Some(key) = wanted {
        taints.push(Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time(now)),
            value: None,
        });
    }
    Some(taints)
}

/// When `pod` must go from a node with `taints`: `None` if it tolerates
/// them all for ever; else the instant (which may have passed).
pub fn eviction_time(pod: &Pod, taints: &[Taint], now: Timestamp) -> Option<Timestamp> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut due: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let added = taint.time_added.as_ref().map_or(now, |t| t.0);
        let matching: Vec<_> = tolerations
            .iter()
            .filter(|t| mube_scheduler::filters::tolerates(t, taint))
            .collect();
        let at = if matching.is_empty() {
            Some(added)
        } else if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            None
        } else {
            // The shortest of the tolerations that match, as Kubernetes.
            let seconds = matching
                .iter()
                .filter_map(|t| t.toleration_seconds)
                .min()
                .unwrap_or(0)
                .max(0);
            added.checked_add(SignedDuration::from_secs(seconds)).ok()
        };
        if let Some(at) = at {
            due = Some(due.map_or(at, |d| d.min(at)));
        }
    }
    due
}

pub struct Eviction {
    pub client: Client,
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
    /// Rung on every node and pod change.
    pub changed: Arc<Notify>,
}

impl Eviction {
    pub async fn run(self, stop: CancellationToken) {
        let mut wait = Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            wait = match self.pass().await {
                Ok(next) => next.clamp(Duration::from_millis(100), Duration::from_secs(5)),
                Err(e) => {
                    tracing::warn!(error = %e, "taint eviction: retrying");
                    Duration::from_secs(1)
                }
            };
        }
    }

    /// Taints nodes, evicts pods that are due; returns when the next pod
    /// falls due.
    async fn pass(&self) -> Result<Duration, kube::Error> {
        let now = Timestamp::now();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut next = Duration::from_secs(5);
        let mut tainted = std::collections::HashMap::new();
        for node in self.nodes.state() {
            let mut taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            if let Some(new) = retaint(&node, now) {
                // The resourceVersion holds the write to the node as read.
                let patch = json!({
                    "metadata": {"resourceVersion": node.resource_version()},
                    "spec": {"taints": new},
                });
                match nodes
                    .patch(
                        &node.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                {
                    Ok(_) => {
                        tracing::info!(node = %node.name_any(), taint = ?wanted_taint(&node), "node taints changed");
                        taints = new;
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => continue,
                    Err(e) => return Err(e),
                }
            }
            if taints.iter().any(|t| t.effect == "NoExecute") {
                tainted.insert(node.name_any(), taints);
            }
        }
        if tainted.is_empty() {
            return Ok(next);
        }
        for pod in self.pods.state() {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or("");
            let Some(taints) = tainted.get(node) else {
                continue;
            };
            let Some(at) = eviction_time(&pod, taints, now) else {
                continue;
            };
            if at > now {
                let left = now.duration_until(at).unsigned_abs();
                next = next.min(left);
                continue;
            }
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: pod.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&pod.name_any(), &params).await {
                Ok(_) => {
                    tracing::info!(pod = %pod.name_any(), node, "evicted: its node has an untolerated NoExecute taint")
                }
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, PodSpec, Toleration};

    fn node(ready: &str, taints: Vec<Taint>) -> Node {
        Node {
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time(Timestamp::UNIX_EPOCH)),
            value: None,
        }
    }

    #[test]
    fn taints_follow_the_ready_condition() {
        let now = Timestamp::now();
        let set = retaint(&node("False", vec![]), now).unwrap();
        assert_eq!(
            set.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(),
            [NOT_READY]
        );
        let moved = retaint(&node("Unknown", vec![taint(NOT_READY)]), now).unwrap();
        assert_eq!(
            moved.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(),
            [UNREACHABLE]
        );
        assert!(retaint(&node("Unknown", vec![taint(UNREACHABLE)]), now).is_none());
        let other = Taint {
            key: "x".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let cleared = retaint(&node("True", vec![taint(UNREACHABLE), other.clone()]), now).unwrap();
        assert_eq!(cleared, [other]);
        assert!(retaint(&node("True", vec![]), now).is_none());
    }

    #[test]
    fn pods_go_after_their_toleration() {
        let now = Timestamp::now();
        let added = now - SignedDuration::from_secs(10);
        let taints = [Taint {
            time_added: Some(Time(added)),
            ..taint(UNREACHABLE)
        }];
        let pod = |tolerations: Vec<Toleration>| Pod {
            spec: Some(PodSpec {
                tolerations: Some(tolerations),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(eviction_time(&pod(vec![]), &taints, now), Some(added));
        let tolerate = |seconds: Option<i64>| Toleration {
            key: Some(UNREACHABLE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: seconds,
            value: None,
        };
        assert_eq!(
            eviction_time(&pod(vec![tolerate(Some(300))]), &taints, now),
            Some(added + SignedDuration::from_secs(300))
        );
        assert_eq!(
            eviction_time(&pod(vec![tolerate(None)]), &taints, now),
            None
        );
    }
}
