//! The scores of a node that passed the filters (0-100 each, summed):
//! Kubernetes' LeastAllocated (the share of CPU and memory left after the
//! pod, averaged) and spreading the pods of one owner (a ReplicaSet's
//! pods) across nodes.

use k8s_openapi::api::core::v1::Pod;

use super::resources::requests;
use super::NodeInfo;

pub fn score(pod: &Pod, info: &NodeInfo) -> i64 {
    least_allocated(pod, info) + spread(pod, info)
}

/// `(free - requested) × 100 / free`, for CPU and memory, averaged; a
/// resource the node does not report counts as fully used.
pub fn least_allocated(pod: &Pod, info: &NodeInfo) -> i64 {
    let room = info.allocatable;
    let used = info.requested;
    let asks = requests(pod);
    let share = |capacity: i128, taken: i128| -> i64 {
        if capacity <= 0 {
            return 0;
        }
        // 0..=100; capacity and taken are non-negative and bounded.
        ((capacity.saturating_sub(taken).max(0).saturating_mul(100)) / capacity) as i64
    };
    let total = used + asks;
    (share(room.cpu, total.cpu) + share(room.memory, total.memory)) / 2
}

/// The owner that keeps this pod (its controller reference), if any.
pub fn owner(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// 100 on a node with none of the owner's pods, less for each there (a
/// pod without an owner scores 100 everywhere).
pub fn spread(pod: &Pod, info: &NodeInfo) -> i64 {
    let Some(uid) = owner(pod) else {
        return 100;
    };
    100 / (1 + info.owned_by(uid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    #[test]
    fn emptier_nodes_score_higher() {
        let empty = node("a", "2", "2Gi", "10");
        let mut half = node("b", "2", "2Gi", "10");
        half.add(&pod("x", "1", "1Gi"));
        let p = pod("p", "500m", "512Mi");
        assert_eq!(least_allocated(&p, &empty), 75);
        assert_eq!(least_allocated(&p, &half), 25);
    }

    #[test]
    fn pods_of_one_owner_spread_out() {
        let owned = |name: &str| {
            let mut p = pod(name, "", "");
            p.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "rs".into(),
                uid: "u1".into(),
                controller: Some(true),
                block_owner_deletion: None,
            }]);
            p
        };
        let mut a = node("a", "2", "2Gi", "10");
        a.add(&owned("x"));
        let b = node("b", "2", "2Gi", "10");
        assert_eq!(spread(&owned("y"), &a), 50);
        assert_eq!(spread(&owned("y"), &b), 100);
        assert_eq!(spread(&pod("free", "", ""), &a), 100);
        assert_eq!(
            crate::schedule(&owned("y"), &[a, b]),
            crate::Decision::Bind("b".into())
        );
    }
}
