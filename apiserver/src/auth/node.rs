//! Kubernetes' node authorizer, for mube's kinds: a node agent
//! (`system:node:<name>` in `system:nodes`) may read nodes, change only its
//! own Node and its status, only its own Lease in `kube-node-lease`,
//! create Events, and request its own client certificate. Anything else
//! is not its business: the next authorizer (RBAC) decides.
//!
//! A create carries its name in the body, which an authorizer does not
//! see; `admit_create` checks it once the body is read (Kubernetes'
//! NodeRestriction admission plugin).

use mube_apis::NODE_LEASE_NAMESPACE;

use super::attributes::Attributes;
use super::user::UserInfo;
use super::Decision;

/// For the API server's identity towards one node's agent, its decision:
/// `nodes/proxy` of that node, never of another; anything else is left to
/// the chain (`None` for every other user).
pub fn apiserver_identity(request: &Attributes) -> Option<Decision> {
    let node = request
        .user
        .username
        .strip_prefix(super::user::KUBELET_CLIENT_PREFIX)?;
    match apiserver_towards(node, request) {
        Decision::NoOpinion => None,
        decided => Some(decided),
    }
}

pub fn authorize(request: &Attributes) -> Decision {
    let Some(node) = request.user.node_name() else {
        return Decision::NoOpinion;
    };
    let Some(r) = &request.resource else {
        return Decision::NoOpinion;
    };
    let verb = request.verb;
    let own = |what: &str| {
        if r.name == node {
            Decision::Allow
        } else {
            Decision::Deny(format!("node '{node}' cannot modify {what} '{}'", r.name))
        }
    };
    match (r.api_group, r.resource, r.subresource) {
        ("", "nodes", "") => match verb {
            "get" | "list" | "watch" | "create" => Decision::Allow,
            "update" | "patch" | "delete" => own("node"),
            _ => Decision::NoOpinion,
        },
        ("", "nodes", "status") => match verb {
            "get" => Decision::Allow,
            "update" | "patch" => own("node"),
            _ => Decision::NoOpinion,
        },
        ("coordination.k8s.io", "leases", "") => {
            // Leases elsewhere are not a node's own: RBAC decides.
            if r.namespace != NODE_LEASE_NAMESPACE {
                return Decision::NoOpinion;
            }
            match verb {
                "create" => Decision::Allow,
                "get" | "update" | "patch" | "delete" if r.name == node => Decision::Allow,
                "get" | "update" | "patch" | "delete" => Decision::Deny(
                    "can only access node lease with the same name as the requesting node".into(),
                ),
                _ => Decision::NoOpinion,
            }
        }
        ("", "events", "") | ("events.k8s.io", "events", "") => match verb {
            "create" | "update" | "patch" => Decision::Allow,
            _ => Decision::NoOpinion,
        },
        // The pods to run: `admit_pod_write` checks, with the stored pod
        // in hand, that a status write or a delete is of a pod bound here.
        ("", "pods", "") => match verb {
            "get" | "list" | "watch" | "delete" => Decision::Allow,
            _ => Decision::NoOpinion,
        },
        ("", "pods", "status") => match verb {
            "get" | "update" | "patch" => Decision::Allow,
            _ => Decision::NoOpinion,
        },
        // Services, for the pod environment (`{NAME}_SERVICE_HOST`), and
        // what mube-proxy in mubelet reads (Kubernetes' node role).
        ("", "services", "") | ("discovery.k8s.io", "endpointslices", "") => match verb {
            "get" | "list" | "watch" => Decision::Allow,
            _ => Decision::NoOpinion,
        },
        ("certificates.k8s.io", "certificatesigningrequests", "") => match verb {
            "create" | "get" | "list" | "watch" => Decision::Allow,
            _ => Decision::NoOpinion,
        },
        _ => Decision::NoOpinion,
    }
}

/// The API server's identity towards one node's agent may get
/// `nodes/proxy` of that node, never of another, whatever RBAC says. Its
/// other requests (the agent's access review of it) are RBAC's to decide,
/// as for any authenticated user.
fn apiserver_towards(node: &str, request: &Attributes) -> Decision {
    match &request.resource {
        Some(r) if r.api_group.is_empty() && r.resource == "nodes" && r.subresource == "proxy" => {
            if r.name == node && request.verb == "get" {
                Decision::Allow
            } else {
                Decision::Deny(format!("this identity may only read node {node:?}'s agent"))
            }
        }
        _ => Decision::NoOpinion,
    }
}

/// NodeRestriction for a create: a node creates only its own Node and its
/// own Lease. `Err` is the reason, for a 403.
pub fn admit_create(user: &UserInfo, resource: &str, name: &str) -> Result<(), String> {
    let Some(node) = user.node_name() else {
        return Ok(());
    };
    match resource {
        "nodes" if name != node => Err(format!(
            "node {node:?} is not allowed to modify node {name:?}"
        )),
        "leases" if name != node => {
            Err("can only access node lease with the same name as the requesting node".into())
        }
        _ => Ok(()),
    }
}

/// NodeRestriction for a pod: a node writes the status of, and deletes,
/// only the pods bound to it. `bound_to` is the stored pod's node.
pub fn admit_pod_write(user: &UserInfo, bound_to: &str) -> Result<(), String> {
    match user.node_name() {
        Some(node) if node != bound_to => Err(format!(
            "node {node:?} can only modify pods bound to it, not to {bound_to:?}"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::attributes::ResourceAttributes;
    use crate::auth::user::NODES_GROUP;

    fn ask(
        user: &UserInfo,
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> Decision {
        authorize(&Attributes {
            user,
            verb,
            resource: Some(ResourceAttributes {
                api_group: group,
                resource,
                subresource: sub,
                namespace: ns,
                name,
            }),
            path: "",
        })
    }

    #[test]
    fn a_node_acts_only_as_itself() {
        let n1 = UserInfo::authenticated("system:node:n1", vec![NODES_GROUP.into()]);
        assert_eq!(ask(&n1, "list", "", "nodes", "", "", ""), Decision::Allow);
        assert_eq!(
            ask(&n1, "update", "", "nodes", "status", "", "n1"),
            Decision::Allow
        );
        assert!(matches!(
            ask(&n1, "update", "", "nodes", "status", "", "n2"),
            Decision::Deny(_)
        ));
        let lease = |verb, name| {
            ask(
                &n1,
                verb,
                "coordination.k8s.io",
                "leases",
                "",
                NODE_LEASE_NAMESPACE,
                name,
            )
        };
        assert_eq!(lease("update", "n1"), Decision::Allow);
        assert!(matches!(lease("update", "n2"), Decision::Deny(_)));
        assert_eq!(
            ask(&n1, "create", "", "events", "", "default", ""),
            Decision::Allow
        );
        assert_eq!(
            ask(&n1, "delete", "", "configmaps", "", "default", "c"),
            Decision::NoOpinion
        );
        assert!(admit_create(&n1, "leases", "n2").is_err());
        assert!(admit_create(&n1, "leases", "n1").is_ok());
        // The API server towards n1's agent: n1's logs, no one else's.
        let towards = UserInfo::authenticated(
            format!("{}n1", crate::auth::user::KUBELET_CLIENT_PREFIX),
            vec![],
        );
        let decide = |verb: &str, name: &str| {
            apiserver_identity(&Attributes {
                user: &towards,
                verb,
                resource: Some(ResourceAttributes {
                    resource: "nodes",
                    subresource: "proxy",
                    name,
                    ..Default::default()
                }),
                path: "",
            })
        };
        assert_eq!(decide("get", "n1"), Some(Decision::Allow));
        assert!(matches!(decide("get", "n2"), Some(Decision::Deny(_))));
        assert!(matches!(decide("create", "n1"), Some(Decision::Deny(_))));
        let admin = UserInfo::authenticated("admin", vec![]);
        assert_eq!(
            ask(&admin, "update", "", "nodes", "status", "", "n2"),
            Decision::NoOpinion
        );
    }
}
