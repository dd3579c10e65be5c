//! NodeGroup: a set of nodes picked by labels, and how many of them must be
//! Ready. The controller's logic, shared by its two runtimes
//! (`nodegroup-controller` on mube's controller parts, and
//! `nodegroup-controller-kube` on kube-rs alone), is one pure function:
//! `status_for` a group, given the nodes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// Each printer column repeats `type_`: that is the derive's syntax, not a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
/// `spec` of a NodeGroup. The CRD (`crd.yaml` next to this crate, and
/// `NodeGroup::crd()`) is generated from and checked against this.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "example.mube.io",
    version = "v1",
    kind = "NodeGroup",
    plural = "nodegroups",
    shortname = "ng",
    category = "mube",
    status = "NodeGroupStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(name = "Min-Ready", type_ = "integer", json_path = ".spec.minReady"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.ready"),
    printcolumn(name = "Healthy", type_ = "boolean", json_path = ".status.healthy"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodeGroupSpec {
    /// Nodes whose labels include all of these belong to the group.
    pub selector: BTreeMap<String, String>,
    /// How many of the group's nodes must be Ready for it to be healthy.
    #[serde(default = "one")]
    pub min_ready: i32,
    /// How many nodes the group should have (the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}

fn one() -> i32 {
    1
}

/// What the controller reports.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeGroupStatus {
    /// How many of the group's nodes are Ready.
    pub ready: i32,
    /// The names of the group's nodes.
    pub nodes: Vec<String>,
    pub healthy: bool,
    /// How many nodes the group has (the scale subresource reads it).
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Whether `node`'s labels include all of `selector`.
pub fn selects(selector: &BTreeMap<String, String>, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// Whether a change of `node` may change `group`'s status: the group
/// selects it now, or listed it before (it may have left).
pub fn concerns(group: &NodeGroup, node: &Node) -> bool {
    selects(&group.spec.selector, node)
        || group.status.as_ref().is_some_and(|s| {
            s.nodes
                .iter()
                .any(|n| Some(n) == node.metadata.name.as_ref())
        })
}

/// Whether the node's Ready condition is True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The status `group` should have, given every node.
pub fn status_for<'a>(
    group: &NodeGroup,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> NodeGroupStatus {
    let mut members: Vec<(&str, bool)> = nodes
        .into_iter()
        .filter(|n| selects(&group.spec.selector, n))
        .map(|n| (n.metadata.name.as_deref().unwrap_or(""), is_ready(n)))
        .collect();
    members.sort();
    let ready = members.iter().filter(|(_, r)| *r).count() as i32;
    NodeGroupStatus {
        ready,
        nodes: members.iter().map(|(n, _)| n.to_string()).collect(),
        healthy: ready >= group.spec.min_ready,
        replicas: members.len() as i32,
        observed_generation: group.metadata.generation,
    }
}

/// The merge patch that sets `status`, or None when it is already so.
pub fn status_patch(group: &NodeGroup, status: &NodeGroupStatus) -> Option<serde_json::Value> {
    (group.status.as_ref() != Some(status)).then(|| serde_json::json!({ "status": status }))
}

/// What a reconcile reads: the client, and the cache of Nodes.
pub struct Context {
    pub client: kube::Client,
    pub nodes: kube::runtime::reflector::Store<Node>,
}

/// One reconcile, whichever runtime runs it: the group's status from the
/// cached Nodes, written (`/status`, a merge patch) only when it changed.
pub async fn reconcile(
    group: std::sync::Arc<NodeGroup>,
    ctx: std::sync::Arc<Context>,
) -> Result<kube::runtime::controller::Action, kube::Error> {
    use kube::api::{Api, Patch, PatchParams};
    use kube::ResourceExt;
    let nodes = ctx.nodes.state();
    let status = status_for(&group, nodes.iter().map(|n| n.as_ref()));
    if let Some(patch) = status_patch(&group, &status) {
        Api::<NodeGroup>::all(ctx.client.clone())
            .patch_status(
                &group.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
        tracing::info!(group = %group.name_any(), ready = status.ready, healthy = status.healthy, "status updated");
    }
    Ok(kube::runtime::controller::Action::await_change())
}

/// A failed reconcile is tried again a second later.
pub fn error_policy(
    _: std::sync::Arc<NodeGroup>,
    error: &kube::Error,
    _: std::sync::Arc<Context>,
) -> kube::runtime::controller::Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
    use kube::CustomResourceExt;

    fn node(name: &str, role: &str, ready: bool) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some([("role".to_string(), role.to_string())].into());
        n.status = Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        n
    }

    #[test]
    fn counts_the_selected_ready_nodes() {
        let group = NodeGroup::new(
            "workers",
            NodeGroupSpec {
                selector: [("role".to_string(), "worker".to_string())].into(),
                min_ready: 2,
                replicas: None,
            },
        );
        let nodes = [
            node("b", "worker", true),
            node("a", "worker", false),
            node("c", "edge", true),
        ];
        let s = status_for(&group, &nodes);
        assert_eq!((s.ready, s.healthy, s.replicas), (1, false, 2));
        assert_eq!(s.nodes, ["a", "b"]);
        let nodes = [node("b", "worker", true), node("a", "worker", true)];
        assert!(status_for(&group, &nodes).healthy);
    }

    /// The hand-written manifest (what the README applies) and the derived
    /// CRD name the same kind, so either controller serves either.
    #[test]
    fn the_manifest_matches_the_derived_kind() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crd.yaml")).unwrap();
        let manifest: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let derived = serde_json::to_value(NodeGroup::crd()).unwrap();
        for pointer in [
            "/metadata/name",
            "/spec/group",
            "/spec/scope",
            "/spec/names/kind",
            "/spec/names/plural",
            "/spec/names/shortNames",
            "/spec/versions/0/name",
        ] {
            assert_eq!(
                manifest.pointer(pointer),
                derived.pointer(pointer),
                "{pointer}"
            );
        }
    }
}
