//! The heartbeat (`POST /api/v1/nodes/heartbeat`, the original Mube's
//! body): marks the Node Ready with what the agent reports, and renews its
//! Lease in `kube-node-lease` on a fast path.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use mube_apis::heartbeat::Heartbeat;
use mube_apis::node::{self as state_rules, NodeState};
use mube_apis::resources;
use mube_apis::status::Reason;
use mube_apis::NODE_LEASE_NAMESPACE;

use crate::auth::UserInfo;
use crate::error::ApiError;
use crate::registry::{managed, Manager, Part, Registry};
use crate::store::{StoreError, StoredObject};

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
    // Reads are from memory where the store keeps a copy (on etcd, its
    // watch cache), so that a heartbeat that changes nothing a client sees
    // is one store write: the Lease's, with its revision as precondition.
    let node_key = nodes.key(None, &hb.name);
    let cached_node = || registry.store().get_cached(&node_key);
    if cached_node().await?.is_none() {
        return Err(not_registered());
    }
    let now = Timestamp::now();
    renew_lease(registry, &hb.name, now, lease_duration).await?;
    // Read again after the renewal, so a NotReady the controller wrote in
    // between is seen and undone here (from a cache, one that reached it
    // is: a NotReady written a moment ago is undone by the next beat).
    if let Ok(Some(node)) = cached_node().await {
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

async fn renew_lease(
    registry: &Registry,
    node: &str,
    now: Timestamp,
    duration: Duration,
) -> Result<(), ApiError> {
    let leases = registry.resource(&resources::LEASES)?;
    let seconds = duration
        .as_secs_f64()
        .ceil()
        .clamp(1.0, f64::from(i32::MAX)) as i32;
    // Built as Kubernetes' type, so it serializes as Kubernetes' does.
    let spec = LeaseSpec {
        holder_identity: Some(node.to_string()),
        lease_duration_seconds: Some(seconds),
        renew_time: Some(MicroTime(now)),
        ..Default::default()
    };
    let spec_json = serde_json::to_value(&spec)
        .map_err(|e| ApiError::new(Reason::InternalError, format!("encoding a lease spec: {e}")))?;
    // The renewal replaces only the spec, with one the server builds itself
    // (a valid holder, duration and time), and keeps the stored metadata as
    // it is: the generic update path's identity fix-ups, no-change check and
    // validation have nothing to find, on every heartbeat (the whole generic
    // path was about a fifth of a heartbeat's CPU; BENCHMARKS.md). So it goes
    // straight to the store's read-modify-write.
    let key = leases.key(Some(NODE_LEASE_NAMESPACE), node);
    for _ in 0..3 {
        let renewed = crate::store::guaranteed_update_cached(
            registry.store().as_ref(),
            &key,
            |_, mut lease| -> Result<_, StoreError> {
                if let Some(object) = lease.as_object_mut() {
                    object.insert("spec".into(), spec_json.clone());
                }
                Ok(Some(lease))
            },
        )
        .await
        .map_err(|e| ApiError::from_store(e, &leases, node));
        match renewed {
            Err(e) if e.is_not_found() => {
                let uid = registry
                    .get(&*registry.resource(&resources::NODES)?, None, node)
                    .await
                    .ok()
                    .and_then(|n| n.value().ok())
                    .and_then(|n| n.pointer("/metadata/uid")?.as_str().map(str::to_string))
                    .unwrap_or_default();
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(node.to_string()),
                        owner_references: Some(vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: node.to_string(),
                            uid,
                            ..Default::default()
                        }]),
                        ..Default::default()
                    },
                    spec: Some(spec.clone()),
                };
                let lease = serde_json::to_value(&lease).map_err(|e| {
                    ApiError::new(Reason::InternalError, format!("encoding a lease: {e}"))
                })?;
                // Untracked: the renewal above rewrites this Lease on every
                // heartbeat, and a managedFields entry would make each
                // renewal ~60 % more bytes to decode, encode and log
                // (BENCHMARKS.md, 2026-11-27 (2)).
                match registry
                    .create_untracked(&leases, Some(NODE_LEASE_NAMESPACE), lease)
                    .await
                {
                    // Another heartbeat of the same node created it first.
                    Err(e) if e.is_already_exists() || e.is_conflict() => continue,
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

/// Only a node may send a heartbeat, and only its own: the identity
/// `system:node:<name>` (group `system:nodes`) for the body's `name`.
pub fn authorize_heartbeat(user: &UserInfo, name: &str) -> Result<(), ApiError> {
    if user.node_name() == Some(name) {
        return Ok(());
    }
    let reason = match user.node_name() {
        Some(own) => format!("node {own:?} may only send its own heartbeat"),
        None => "only a node's own identity may send its heartbeat".into(),
    };
    Err(crate::auth::forbidden(
        &crate::auth::Attributes {
            user,
            verb: "create",
            resource: Some(crate::auth::ResourceAttributes {
                resource: "nodes",
                subresource: "heartbeat",
                name,
                ..Default::default()
            }),
            path: "/api/v1/nodes/heartbeat",
        },
        &reason,
    ))
}
