//! The scheduling algorithm, without I/O: given a pod and the nodes with
//! the pods already on them, which node it should run on, or why none
//! fits, in Kubernetes' words. The `mube-scheduler` process (watching
//! pods without a node and binding them through `pods/binding`) is built
//! on it.
//!
//! As Kubernetes' scheduling framework: every node goes through the
//! filters (`filters.rs`); the nodes that pass are scored (`scores.rs`);
//! the best wins. A pod no node takes gets the summary Kubernetes puts in
//! its `FailedScheduling` event: `0/3 nodes are available: 1 node(s) were
//! unschedulable, 2 Insufficient cpu.`

pub mod filters;
pub mod resources;
pub mod scores;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use resources::{allocatable, holds_resources, requests, Amount};

/// A node, with what the pods bound to it take, summed as they are added:
/// a pass places thousands of pods over the same nodes, and the filters
/// and scores read these for every pod and node (as Kubernetes'
/// `NodeInfo` keeps `Requested`), so nothing is summed again per pod.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    /// Allocatable CPU and memory, and pods; read once, when made.
    pub allocatable: Amount,
    pub max_pods: i128,
    /// What the pods holding resources here ask for, and how many they are.
    pub requested: Amount,
    pub pods: i128,
    /// Those pods per controller owner's uid, for spreading.
    owners: HashMap<String, i64>,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> NodeInfo {
        let (allocatable, max_pods) = allocatable(&node);
        NodeInfo {
            node,
            allocatable,
            max_pods,
            requested: Amount::default(),
            pods: 0,
            owners: HashMap::new(),
        }
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    /// Counts a pod bound here (one that has finished takes nothing).
    pub fn add(&mut self, pod: &Pod) {
        if !holds_resources(pod) {
            return;
        }
        self.requested = self.requested + requests(pod);
        self.pods += 1;
        if let Some(uid) = scores::owner(pod) {
            *self.owners.entry(uid.to_string()).or_default() += 1;
        }
    }

    /// How many of the pods here the owner `uid` keeps.
    pub fn owned_by(&self, uid: &str) -> i64 {
        self.owners.get(uid).copied().unwrap_or(0)
    }
}

/// Where a pod goes, or why it goes nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Bind(String),
    /// The `FailedScheduling` message.
    Unschedulable(String),
}

/// Runs the filters and scores for `pod` over `nodes`.
pub fn schedule(pod: &Pod, nodes: &[NodeInfo]) -> Decision {
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut feasible = Vec::new();
    for info in nodes {
        match filters::check(pod, info) {
            Ok(()) => feasible.push(info),
            Err(reason) => *reasons.entry(reason.text()).or_default() += 1,
        }
    }
    if feasible.is_empty() {
        return Decision::Unschedulable(summary(nodes.len(), &reasons));
    }
    // The highest score; among equals, the first by name, so that a run
    // is repeatable (the spread score keeps equal pods apart).
    let best = feasible
        .iter()
        .map(|info| (scores::score(pod, info), info.name()))
        .max_by(|(a, an), (b, bn)| a.cmp(b).then_with(|| bn.cmp(an)))
        .map(|(_, name)| name.to_string())
        .unwrap_or_default();
    Decision::Bind(best)
}

/// Kubernetes' `FitError` message: the count of nodes per reason, sorted.
pub fn summary(total: usize, reasons: &BTreeMap<&'static str, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if parts.is_empty() {
        return format!("0/{total} nodes are available.");
    }
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Nodes and pods for the unit tests.
    use k8s_openapi::api::core::v1::{
        Container, Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodSpec, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::NodeInfo;

    pub fn node(name: &str, cpu: &str, memory: &str, pods: &str) -> NodeInfo {
        let resources = [
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
            ("pods".to_string(), Quantity(pods.into())),
        ]
        .into();
        NodeInfo::new(std::sync::Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(resources),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }))
    }

    pub fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
        let mut requests = std::collections::BTreeMap::new();
        if !cpu.is_empty() {
            requests.insert("cpu".to_string(), Quantity(cpu.into()));
        }
        if !memory.is_empty() {
            requests.insert("memory".to_string(), Quantity(memory.into()));
        }
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("i".into()),
                    resources: Some(ResourceRequirements {
                        requests: Some(requests),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{node, pod};
    use super::*;

    #[test]
    fn the_least_allocated_node_wins_and_failures_are_summed_up_as_kubernetes_does() {
        let mut a = node("a", "2", "4Gi", "10");
        a.add(&pod("busy", "1500m", "1Gi"));
        let b = node("b", "2", "4Gi", "10");
        assert_eq!(
            schedule(&pod("p", "500m", "1Gi"), &[a.clone(), b.clone()]),
            Decision::Bind("b".into())
        );

        let mut cordoned = node("c", "8", "8Gi", "10");
        Arc::make_mut(&mut cordoned.node)
            .spec
            .as_mut()
            .unwrap()
            .unschedulable = Some(true);
        let nodes = [a, b, cordoned];
        assert_eq!(
            schedule(&pod("big", "3", ""), &nodes),
            Decision::Unschedulable(
                "0/3 nodes are available: 1 node(s) were unschedulable, 2 Insufficient cpu.".into()
            )
        );
        assert_eq!(
            schedule(&pod("p", "", ""), &[]),
            Decision::Unschedulable("0/0 nodes are available.".into())
        );
    }
}
