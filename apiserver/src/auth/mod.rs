//! Who may do what: identities (`user`), what a request asks (`attributes`),
//! and the authorizers Kubernetes chains (`authorization.mode`, default
//! `Node,RBAC`): the node authorizer (`node`), RBAC (`rbac`) over the
//! bootstrap policy made at first start (`bootstrap`), or `AlwaysAllow`
//! for experiments. Members of `system:masters` are allowed everything
//! before any authorizer is asked, as in kube-apiserver.

pub mod attributes;
pub mod bootstrap;
pub mod escalation;
pub mod node;
pub mod rbac;
pub mod user;

use std::sync::Arc;

use mube_apis::resources::{self, ResourceInfo};
use mube_apis::status::{self, Reason};
use serde::de::DeserializeOwned;

pub use attributes::{Attributes, ResourceAttributes};
pub use user::UserInfo;

use crate::error::ApiError;
use crate::registry::{Filter, Registry};
use crate::store::ReadAt;

/// One authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused, with the reason (ends the chain).
    Deny(String),
    /// Not this authorizer's business: the next one decides.
    NoOpinion,
}

/// An entry of `authorization.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Node,
    Rbac,
    AlwaysAllow,
}

/// Parses `authorization.mode`: a comma-separated list, as kube-apiserver's
/// `--authorization-mode`.
pub fn parse_modes(text: &str) -> Result<Vec<Mode>, String> {
    let mut modes = Vec::new();
    for name in text.split(',').map(str::trim) {
        let mode = match name {
            "Node" => Mode::Node,
            "RBAC" => Mode::Rbac,
            "AlwaysAllow" => Mode::AlwaysAllow,
            other => {
                return Err(format!(
                    "authorization.mode: unknown mode {other:?} (expected Node, RBAC or AlwaysAllow, comma-separated)"
                ))
            }
        };
        if modes.contains(&mode) {
            return Err(format!("authorization.mode: {name} is given twice"));
        }
        modes.push(mode);
    }
    Ok(modes)
}

/// The RBAC kinds, whose writes make the policy snapshot stale.
const RBAC_KINDS: [&ResourceInfo; 4] = [
    &resources::CLUSTER_ROLES,
    &resources::ROLES,
    &resources::CLUSTER_ROLE_BINDINGS,
    &resources::ROLE_BINDINGS,
];

struct Snapshot {
    /// The RBAC kinds' write count it was built at.
    generation: u64,
    policy: rbac::Policy,
}

pub struct Authorizer {
    modes: Vec<Mode>,
    registry: Arc<Registry>,
    snapshot: std::sync::RwLock<Arc<Snapshot>>,
    /// One rebuild at a time; the others wait for it and use its result.
    rebuilding: tokio::sync::Mutex<()>,
}

impl Authorizer {
    pub fn new(modes: Vec<Mode>, registry: Arc<Registry>) -> Authorizer {
        Authorizer {
            modes,
            registry,
            snapshot: std::sync::RwLock::new(Arc::new(Snapshot {
                generation: u64::MAX,
                policy: rbac::Policy::default(),
            })),
            rebuilding: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether every request is allowed (`AlwaysAllow` first in the chain).
    pub fn allows_all(&self) -> bool {
        self.modes.first() == Some(&Mode::AlwaysAllow)
    }

    pub async fn authorize(&self, request: &Attributes<'_>) -> Result<Decision, ApiError> {
        if request.user.in_group(user::MASTERS) {
            return Ok(Decision::Allow);
        }
        // The server's own identity towards node agents is the server's
        // to decide, in every mode (as system:masters is).
        if let Some(decision) = node::apiserver_identity(request) {
            return Ok(decision);
        }
        for mode in &self.modes {
            let decision = match mode {
                Mode::AlwaysAllow => Decision::Allow,
                Mode::Node => node::authorize(request),
                Mode::Rbac => {
                    if self.policy().await?.policy.allows(request) {
                        Decision::Allow
                    } else {
                        Decision::NoOpinion
                    }
                }
            };
            if decision != Decision::NoOpinion {
                return Ok(decision);
            }
        }
        Ok(Decision::NoOpinion)
    }

    /// `authorize`, as a 403 in Kubernetes' wording when not allowed.
    pub async fn check(&self, request: &Attributes<'_>) -> Result<(), ApiError> {
        match self.authorize(request).await? {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => Err(forbidden(request, &reason)),
            Decision::NoOpinion => Err(forbidden(request, "")),
        }
    }

    fn generation(&self) -> u64 {
        RBAC_KINDS
            .iter()
            .map(|kind| self.registry.writes(kind))
            .sum()
    }

    /// The current policy: rebuilt from the store when an RBAC object was
    /// written since. The count is read before the lists, so a write that
    /// lands during a rebuild makes the next request rebuild again: a
    /// request after a binding's write was acknowledged always sees it.
    async fn policy(&self) -> Result<Arc<Snapshot>, ApiError> {
        let current = self.snapshot.read().map(|s| s.clone());
        let current = current.unwrap_or_else(|e| e.into_inner().clone());
        if current.generation == self.generation() {
            return Ok(current);
        }
        let _one = self.rebuilding.lock().await;
        let generation = self.generation();
        {
            let latest = self.snapshot.read().map(|s| s.clone());
            let latest = latest.unwrap_or_else(|e| e.into_inner().clone());
            if latest.generation == generation {
                return Ok(latest);
            }
        }
        let objects = rbac::Objects {
            cluster_roles: self.all(&resources::CLUSTER_ROLES).await?,
            roles: self.all(&resources::ROLES).await?,
            cluster_role_bindings: self.all(&resources::CLUSTER_ROLE_BINDINGS).await?,
            role_bindings: self.all(&resources::ROLE_BINDINGS).await?,
        };
        let fresh = Arc::new(Snapshot {
            generation,
            policy: rbac::Policy::new(objects),
        });
        match self.snapshot.write() {
            Ok(mut s) => *s = fresh.clone(),
            Err(e) => *e.into_inner() = fresh.clone(),
        }
        Ok(fresh)
    }

    async fn all<T: DeserializeOwned>(&self, kind: &ResourceInfo) -> Result<Vec<T>, ApiError> {
        let r = self.registry.resource(kind)?;
        let (items, _) = self
            .registry
            .list(&r, None, &Filter::default(), ReadAt::Newest)
            .await?;
        let mut objects = Vec::with_capacity(items.len());
        for item in items {
            match serde_json::from_slice(&item.json) {
                Ok(object) => objects.push(object),
                // Stored objects passed validation as this type.
                Err(e) => {
                    tracing::warn!(key = %item.key, error = %e, "an RBAC object does not decode; skipped")
                }
            }
        }
        Ok(objects)
    }
}

/// A 403 as Kubernetes words it, e.g. `nodes "n2" is forbidden: User
/// "system:node:n1" cannot update resource "nodes/status" in API group ""
/// at the cluster scope`, with `: reason` when there is one.
pub fn forbidden(request: &Attributes, reason: &str) -> ApiError {
    let user = &request.user.username;
    let reason = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    let Some(r) = &request.resource else {
        return ApiError::new(
            Reason::Forbidden,
            format!(
                "forbidden: User {user:?} cannot {} path {:?}{reason}",
                request.verb, request.path
            ),
        );
    };
    let qualified = if r.api_group.is_empty() {
        r.resource.to_string()
    } else {
        format!("{}.{}", r.resource, r.api_group)
    };
    let what = if r.name.is_empty() {
        qualified
    } else {
        format!("{qualified} {:?}", r.name)
    };
    let resource = if r.subresource.is_empty() {
        r.resource.to_string()
    } else {
        format!("{}/{}", r.resource, r.subresource)
    };
    let scope = if r.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", r.namespace)
    };
    ApiError::from(status::failure_for(
        Reason::Forbidden,
        format!(
            "{what} is forbidden: User {user:?} cannot {} resource {resource:?} in API group {:?} {scope}{reason}",
            request.verb, r.api_group
        ),
        r.api_group,
        r.resource,
        r.name,
        vec![],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_kube_apiserver_names_them() {
        assert_eq!(parse_modes("Node,RBAC").unwrap(), [Mode::Node, Mode::Rbac]);
        assert_eq!(parse_modes("AlwaysAllow").unwrap(), [Mode::AlwaysAllow]);
        assert!(parse_modes("ABAC").unwrap_err().contains("ABAC"));
        assert!(parse_modes("RBAC,RBAC").is_err());
    }

    #[test]
    fn denials_in_kubernetes_wording() {
        let user = UserInfo::authenticated("system:node:n1", vec![user::NODES_GROUP.into()]);
        let request = Attributes {
            user: &user,
            verb: "update",
            resource: Some(ResourceAttributes {
                api_group: "",
                resource: "nodes",
                subresource: "status",
                namespace: "",
                name: "n2",
            }),
            path: "",
        };
        let e = forbidden(&request, "");
        assert_eq!(e.code(), 403);
        assert_eq!(
            e.status.message.as_deref().unwrap_or_default(),
            "nodes \"n2\" is forbidden: User \"system:node:n1\" cannot update resource \"nodes/status\" in API group \"\" at the cluster scope"
        );
        let lease = Attributes {
            resource: Some(ResourceAttributes {
                api_group: "coordination.k8s.io",
                resource: "leases",
                subresource: "",
                namespace: "kube-node-lease",
                name: "n2",
            }),
            ..request.clone()
        };
        assert_eq!(
            forbidden(&lease, "no").status.message.as_deref().unwrap_or_default(),
            "leases.coordination.k8s.io \"n2\" is forbidden: User \"system:node:n1\" cannot update resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"kube-node-lease\": no"
        );
        let path = Attributes {
            resource: None,
            path: "/metrics",
            verb: "get",
            ..request
        };
        assert_eq!(
            forbidden(&path, "")
                .status
                .message
                .as_deref()
                .unwrap_or_default(),
            "forbidden: User \"system:node:n1\" cannot get path \"/metrics\""
        );
    }
}
