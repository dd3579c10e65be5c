//! Core `v1` Node: the declaration, its strategy and its Table. The node
//! services (registration from the config, the heartbeat) are API users and
//! live in `crate::nodes`.


use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use mube_apis::node::{self as state_rules, NodeState};
use mube_apis::table::Column;
use mube_apis::validation::FieldError;
use serde_json::{json, Value};

use super::{
    age_of, name_of, Resource, Strategy, TableConvertor,
    Typed, TypedAs,
};

/// Marks nodes that the config registered, so that start-up can delete the
/// ones no longer listed without touching nodes created through the API.
pub const REGISTERED_BY: &str = "mube.io/registered-by";

pub fn resource() -> Resource {
    Resource {
        info: &mube_apis::resources::NODES,
        strategy: Box::new(NodeStrategy),
        table: Box::new(NodeStrategy),
    }
}

struct NodeStrategy;

impl Strategy for NodeStrategy {
    fn typed(&self) -> &dyn Typed {
        &TypedAs::<Node>::NEW
    }

    fn extra_fields(&self) -> &'static [&'static str] {
        &["status.state"]
    }

    fn status_subresource(&self) -> bool {
        true
    }

    /// As Kubernetes' node validation: a pod CIDR, once set, is fixed.
    /// The pod ranges are the API server's to give (at create): an
    /// update keeps them as they are, set or not, so no two nodes can end
    /// up with one range.
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        ["podCIDR", "podCIDRs"]
            .into_iter()
            .filter(|f| new.pointer(&format!("/spec/{f}")) != old.pointer(&format!("/spec/{f}")))
            .map(|f| {
                FieldError::new(
                    format!("spec.{f}"),
                    "Forbidden: node updates may not change podCIDR (the API server assigns it when the node is created)",
                )
            })
            .collect()
    }

    fn validate(&self, object: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(state) = object.pointer("/status/state") {
            match state.as_str().and_then(NodeState::parse) {
                None => errors.push(FieldError::new(
                    "status.state",
                    format!("Unsupported value: {state}: supported values: \"Unknown\", \"Ready\", \"NotReady\""),
                )),
                Some(s) => {
                    let condition = state_rules::ready_condition(object)
                        .and_then(|c| c.get("status"))
                        .and_then(Value::as_str);
                    if condition != Some(s.condition_status()) {
                        errors.push(FieldError::new(
                            "status.conditions[Ready].status",
                            format!(
                                "Invalid value: {condition:?}: must be \"{}\" when status.state is \"{}\"",
                                s.condition_status(),
                                s.as_str()
                            ),
                        ));
                    }
                }
            }
        }
        errors
    }

    /// Every new node starts Unknown, waiting for its first heartbeat; the
    /// state belongs to the server, whatever the creator sent.
    fn prepare_for_create(&self, object: &mut Value, now: Timestamp) {
        state_rules::set_state(object, NodeState::Unknown, now, None);
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["metadata.name", "status.state", "spec.unschedulable"]
    }

    fn field_value(&self, object: &Value, field: &str) -> Option<String> {
        match field {
            "metadata.name" => object
                .pointer("/metadata/name")?
                .as_str()
                .map(str::to_string),
            "status.state" => object
                .pointer("/status/state")?
                .as_str()
                .map(str::to_string),
            "spec.unschedulable" => Some(
                object
                    .pointer("/spec/unschedulable")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string(),
            ),
            _ => None,
        }
    }
}

impl TableConvertor for NodeStrategy {
    /// The columns a Kubernetes API server prints for nodes.
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new("Status", "string", "", "The status of the node", 0),
            Column::new("Roles", "string", "", "The roles of the node", 0),
            Column::age(),
            Column::new("Version", "string", "", "Kubelet Version reported by the node.", 0),
            Column::new("Internal-IP", "string", "", "List of addresses reachable to the node.", 1),
            Column::new("External-IP", "string", "", "List of addresses reachable to the node.", 1),
            Column::new("OS-Image", "string", "", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).", 1),
            Column::new("Kernel-Version", "string", "", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).", 1),
            Column::new("Container-Runtime", "string", "", "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).", 1),
        ]
    }

    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        let text = |p: &str, none: &str| {
            object
                .pointer(p)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or(none)
                .to_string()
        };
        let address = |kind: &str| {
            object
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter()
                        .find(|x| x.get("type").and_then(Value::as_str) == Some(kind))
                })
                .and_then(|x| x.get("address").and_then(Value::as_str))
                .unwrap_or("<none>")
                .to_string()
        };
        vec![
            json!(name_of(object)),
            json!(node_status_column(object)),
            json!(node_roles(object)),
            json!(age_of(object, now)),
            json!(text("/status/nodeInfo/kubeletVersion", "")),
            json!(address("InternalIP")),
            json!(address("ExternalIP")),
            json!(text("/status/nodeInfo/osImage", "<unknown>")),
            json!(text("/status/nodeInfo/kernelVersion", "<unknown>")),
            json!(text(
                "/status/nodeInfo/containerRuntimeVersion",
                "<unknown>"
            )),
        ]
    }
}

/// STATUS as Kubernetes prints it: from the Ready condition (`Ready` when
/// True, `NotReady` otherwise, `Unknown` without one), plus
/// `SchedulingDisabled` when cordoned.
fn node_status_column(object: &Value) -> String {
    let mut status = match state_rules::ready_condition(object)
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
    {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if object
        .pointer("/spec/unschedulable")
        .and_then(Value::as_bool)
        == Some(true)
    {
        status.push_str(",SchedulingDisabled");
    }
    status
}

/// ROLES: `node-role.kubernetes.io/<role>` labels and `kubernetes.io/role`.
fn node_roles(object: &Value) -> String {
    let mut roles: Vec<String> = Vec::new();
    if let Some(labels) = object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
    {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role.to_string());
                }
            } else if k == "kubernetes.io/role" {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    roles.push(v.to_string());
                }
            }
        }
    }
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}
