//! Nodes from the static registry in `configs/apiserver.yaml`: created,
//! corrected (the config is authoritative for ip and port) and removed
//! when no longer listed, through the registry like any API client.

use std::net::IpAddr;

use mube_apis::node as state_rules;
use mube_apis::resources;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::registry::node::REGISTERED_BY;
use crate::registry::{managed, DryRun, Manager, Part, Registry, Resource};
use crate::store::{Preconditions, ReadAt};

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
///
/// On a store several API servers share (`exclusive` false), each one's
/// config only adds: it creates the nodes it lists that are missing, and
/// corrects or deletes nothing, so that two servers whose configs differ
/// do not undo each other at every start. Changing or removing a node is
/// then done through the API (`kubectl delete node`).
pub async fn register_from_config(
    registry: &Registry,
    nodes: &[RegisteredNode],
    exclusive: bool,
) -> Result<(), ApiError> {
    use futures::{StreamExt, TryStreamExt};
    let r = registry.resource(&resources::NODES)?;
    // Concurrently, so that group commit makes one flush serve many nodes:
    // registering 100,000 nodes one durable write at a time would take minutes.
    let created: usize = futures::stream::iter(nodes)
        .map(|node| register_one(registry, &r, node, exclusive))
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
    if !exclusive {
        return Ok(());
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
    correct: bool,
) -> Result<bool, ApiError> {
    let ip = node.ip.to_string();
    match registry.get(r, None, &node.name).await {
        Err(e) if e.is_not_found() => {
            let mut object = json!({
                "metadata": {"name": node.name, "annotations": {REGISTERED_BY: "config"}},
                "spec": {},
            });
            state_rules::set_address(&mut object, &ip, node.port);
            match registry
                .create(r, None, object, managed::APISERVER, DryRun::No)
                .await
            {
                // Another API server on the same store registered it first.
                Err(e) if e.is_already_exists() => return Ok(false),
                other => other?,
            };
            tracing::debug!(node = %node.name, %ip, port = node.port, "registered node from config");
            Ok(true)
        }
        Err(e) => Err(e),
        Ok(_) if !correct => Ok(false),
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
