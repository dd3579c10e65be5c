//! Core `v1` Node: the declaration, its strategy, registration from the
//! static registry in the config, and the heartbeat.

use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use mube_apis::heartbeat::Heartbeat;
use mube_apis::node::{self as state_rules, NodeState};
use mube_apis::resources;
use mube_apis::status::Reason;
use mube_apis::table::Column;
use mube_apis::validation::FieldError;
use mube_apis::NODE_LEASE_NAMESPACE;
use serde_json::{json, Value};

use super::{
    age_of, managed, name_of, DryRun, Manager, Part, Registry, Resource, Strategy, TableConvertor,
    Typed, TypedAs,
};
use crate::error::ApiError;
use crate::store::{Preconditions, ReadAt, StoreError, StoredObject};

/// Marks nodes that the config registered, so that start-up can delete the
/// ones no longer listed without touching nodes created through the API.
pub const REGISTERED_BY: &str = "mube.io/registered-by";

pub fn resource() -> Resource {
    Resource {
        info: &mube_apis::resources::NODES,
        strategy: Box::new(NodeStrategy),
        table: &NodeStrategy,
    }
}

struct NodeStrategy;

impl Strategy for NodeStrategy {
    fn typed(&self) -> &'static dyn Typed {
        &TypedAs::<Node>::NEW
    }

    fn extra_fields(&self) -> &'static [&'static str] {
        &["status.state"]
    }

    fn status_subresource(&self) -> bool {
        true
    }

    /// As Kubernetes' node validation: a pod CIDR, once set, is fixed.
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        let cidrs = |o: &Value| o.pointer("/spec/podCIDRs").cloned();
        match cidrs(old) {
            Some(before)
                if before.as_array().is_some_and(|a| !a.is_empty())
                    && cidrs(new) != Some(before.clone()) =>
            {
                vec![FieldError::new(
                    "spec.podCIDRs",
                    "Forbidden: node updates may not change podCIDR except from \"\" to valid",
                )]
            }
            _ => Vec::new(),
        }
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

/// A node from the static registry in `configs/apiserver.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredNode {
    pub name: String,
    pub ip: IpAddr,
    pub port: u16,
}

/// Brings the stored nodes in line with the config: creates missing nodes,
/// corrects ip/port (the config is authoritative), and deletes nodes the
/// config registered earlier but no longer lists.
pub async fn register_from_config(
    registry: &Registry,
    nodes: &[RegisteredNode],
) -> Result<(), ApiError> {
    use futures::{StreamExt, TryStreamExt};
    let r = registry.resource(&resources::NODES)?;
    // Concurrently, so that group commit makes one flush serve many nodes:
    // registering 100,000 nodes one durable write at a time would take minutes.
    let created: usize = futures::stream::iter(nodes)
        .map(|node| register_one(registry, &r, node))
        .buffer_unordered(256)
        .try_fold(0, |n, created| async move { Ok(n + usize::from(created)) })
        .await?;
    if created > 0 {
        tracing::info!(
            created,
            listed = nodes.len(),
            "registered nodes from config"
        );
    }
    let listed: std::collections::HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let (existing, _) = registry
        .list(&r, None, &Default::default(), ReadAt::Newest)
        .await?;
    for stored in existing {
        let object = stored.value()?;
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let from_config = object
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(REGISTERED_BY))
            .and_then(Value::as_str)
            == Some("config");
        if from_config && !listed.contains(name) {
            registry
                .delete(
                    &r,
                    None,
                    name,
                    &Preconditions::revision(stored.revision),
                    DryRun::No,
                )
                .await?;
            tracing::info!(node = %name, "deleted node no longer listed in config");
        }
    }
    Ok(())
}

/// Creates one config node, or corrects its ip/port. Returns whether it was created.
async fn register_one(
    registry: &Registry,
    r: &Resource,
    node: &RegisteredNode,
) -> Result<bool, ApiError> {
    let ip = node.ip.to_string();
    match registry.get(r, None, &node.name).await {
        Err(e) if e.is_not_found() => {
            let mut object = json!({
                "metadata": {"name": node.name, "annotations": {REGISTERED_BY: "config"}},
                "spec": {},
            });
            state_rules::set_address(&mut object, &ip, node.port);
            registry
                .create(r, None, object, managed::APISERVER, DryRun::No)
                .await?;
            tracing::debug!(node = %node.name, %ip, port = node.port, "registered node from config");
            Ok(true)
        }
        Err(e) => Err(e),
        Ok(_) => {
            registry
                .modify(
                    r,
                    None,
                    &node.name,
                    &Manager {
                        name: managed::APISERVER,
                        part: Part::Main,
                    },
                    |_, mut object| {
                        let mut changed = state_rules::set_address(&mut object, &ip, node.port);
                        let marked = object
                            .pointer("/metadata/annotations")
                            .and_then(|a| a.get(REGISTERED_BY))
                            .and_then(Value::as_str)
                            == Some("config");
                        if !marked {
                            if let Some(meta) = object["metadata"].as_object_mut() {
                                let annotations =
                                    meta.entry("annotations").or_insert_with(|| json!({}));
                                if let Some(a) = annotations.as_object_mut() {
                                    a.insert(REGISTERED_BY.into(), json!("config"));
                                    changed = true;
                                }
                            }
                        }
                        Ok(changed.then_some(object))
                    },
                )
                .await?;
            Ok(false)
        }
    }
}

/// Handles one heartbeat: renews the node's Lease, and writes the Node only
/// when something a client would see changes (runtime, version, capacity, or
/// the state becoming Ready), so steady heartbeats cause no Node events.
pub async fn heartbeat(
    registry: &Registry,
    hb: &Heartbeat,
    lease_duration: Duration,
) -> Result<StoredObject, ApiError> {
    let nodes = registry.resource(&resources::NODES)?;
    let not_registered = || {
        ApiError::new(
            Reason::Forbidden,
            format!(
                "node \"{}\" is not registered: add it to nodes in configs/apiserver.yaml (name, ip, port) or create it with POST /api/v1/nodes",
                hb.name
            ),
        )
    };
    match registry.get(&nodes, None, &hb.name).await {
        Err(e) if e.is_not_found() => return Err(not_registered()),
        other => other?,
    };
    let now = Timestamp::now();
    renew_lease(registry, &hb.name, now, lease_duration).await?;
    // Read again after the renewal, so a NotReady the controller wrote in
    // between is seen and undone here.
    if let Ok(node) = registry.get(&nodes, None, &hb.name).await {
        if state_rules::heartbeat_would_change(&node.json, hb) == Some(false) {
            return Ok(node);
        }
    }
    let result = registry
        .modify(
            &nodes,
            None,
            &hb.name,
            &Manager {
                name: managed::MUBELET,
                part: Part::Status,
            },
            |_, mut node| {
                let mut changed = state_rules::apply_heartbeat(&mut node, hb);
                if state_rules::state_of(&node) != Some(NodeState::Ready) {
                    state_rules::set_state(&mut node, NodeState::Ready, now, Some(now));
                    changed = true;
                }
                Ok(changed.then_some(node))
            },
        )
        .await;
    match result {
        Err(e) if e.is_not_found() => Err(not_registered()),
        other => other,
    }
}

fn micro_time(ts: Timestamp) -> Value {
    serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        ts,
    ))
    .unwrap_or(Value::Null)
}

async fn renew_lease(
    registry: &Registry,
    node: &str,
    now: Timestamp,
    duration: Duration,
) -> Result<(), ApiError> {
    let leases = registry.resource(&resources::LEASES)?;
    let seconds = duration.as_secs_f64().ceil().max(1.0) as i64;
    let spec = |lease: &mut Value| {
        lease["spec"] = json!({
            "holderIdentity": node,
            "leaseDurationSeconds": seconds,
            "renewTime": micro_time(now),
        });
    };
    // The renewal replaces only the spec, with one the server builds itself
    // (a valid holder, duration and time), and keeps the stored metadata as
    // it is: the generic update path's identity fix-ups, no-change check and
    // validation have nothing to find, on every heartbeat (the whole generic
    // path was about a fifth of a heartbeat's CPU; BENCHMARKS.md). So it goes
    // straight to the store's read-modify-write.
    let key = leases.key(Some(NODE_LEASE_NAMESPACE), node);
    for _ in 0..3 {
        let renewed = crate::store::guaranteed_update(
            registry.store().as_ref(),
            &key,
            |_, mut lease| -> Result<_, StoreError> {
                spec(&mut lease);
                Ok(Some(lease))
            },
        )
        .await
        .map_err(|e| ApiError::from_store(e, &leases, node));
        match renewed {
            Err(e) if e.is_not_found() => {
                let mut lease = json!({
                    "metadata": {
                        "name": node,
                        "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": ""}],
                    },
                });
                spec(&mut lease);
                if let Some(uid) = registry
                    .get(&*registry.resource(&resources::NODES)?, None, node)
                    .await
                    .ok()
                    .and_then(|n| n.value().ok())
                    .and_then(|n| n.pointer("/metadata/uid").cloned())
                {
                    lease["metadata"]["ownerReferences"][0]["uid"] = uid;
                }
                // Untracked: the renewal below rewrites this Lease on every
                // heartbeat, and a managedFields entry would make each
                // renewal ~60 % more bytes to decode, encode and log
                // (BENCHMARKS.md, 2026-11-27 (2)).
                match registry
                    .create_untracked(&leases, Some(NODE_LEASE_NAMESPACE), lease)
                    .await
                {
                    Err(e) if e.is_conflict() => continue,
                    other => return other.map(|_| ()),
                }
            }
            other => return other.map(|_| ()),
        }
    }
    Err(ApiError::new(
        Reason::Conflict,
        format!("could not renew the lease of node {node:?}"),
    ))
}
