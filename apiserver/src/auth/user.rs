//! Who a request is from, with Kubernetes' well-known users and groups.

/// A request's identity, as authentication found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub groups: Vec<String>,
}

/// Everyone authenticated is in this group.
pub const AUTHENTICATED: &str = "system:authenticated";
/// Anonymous requests (when allowed) are in this group.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// Allowed everything, before any authorizer is asked (kube-apiserver's
/// privileged group).
pub const MASTERS: &str = "system:masters";
/// Node agents' group; each is `system:node:<name>`.
pub const NODES_GROUP: &str = "system:nodes";
pub const NODE_PREFIX: &str = "system:node:";
/// Holders of a join (bootstrap) token: `system:bootstrap:<token id>`.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
pub const BOOTSTRAP_PREFIX: &str = "system:bootstrap:";

impl UserInfo {
    pub fn anonymous() -> UserInfo {
        UserInfo {
            username: "system:anonymous".into(),
            groups: vec![UNAUTHENTICATED.into()],
        }
    }

    /// An authenticated user: `groups` and `system:authenticated`.
    pub fn authenticated(username: impl Into<String>, mut groups: Vec<String>) -> UserInfo {
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.into());
        }
        UserInfo {
            username: username.into(),
            groups,
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The node this identity is, as Kubernetes' node authorizer tells:
    /// user `system:node:<name>` in group `system:nodes`.
    pub fn node_name(&self) -> Option<&str> {
        self.username
            .strip_prefix(NODE_PREFIX)
            .filter(|name| !name.is_empty() && self.in_group(NODES_GROUP))
    }
}

/// The user the API server is towards one node's agent:
/// `kube-apiserver-kubelet-client:<node>` (kube-apiserver's kubelet client
/// certificate is named `kube-apiserver-kubelet-client`). Each node gets a
/// token of its own, so a node that keeps the token it was shown can do
/// no more than read its own logs (auth/node.rs).
pub const KUBELET_CLIENT_PREFIX: &str = "kube-apiserver-kubelet-client:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_identity_needs_the_name_and_the_group() {
        let node = UserInfo::authenticated("system:node:n1", vec![NODES_GROUP.into()]);
        assert_eq!(node.node_name(), Some("n1"));
        let impostor = UserInfo::authenticated("system:node:n1", vec![]);
        assert_eq!(impostor.node_name(), None);
        assert!(impostor.in_group(AUTHENTICATED));
    }
}
