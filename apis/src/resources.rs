//! Typed descriptors of kinds: names, group/version, scope and URL paths.
//! Each kind the API server serves declares one (these are the kinds
//! mube's own components name in code: a typo is a compile error, not a
//! 404); clients learn the full list from the server's discovery.

/// One served kind, as discovery would describe it.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    /// Groups a user can name at once (`kubectl get all`).
    pub categories: &'static [&'static str],
}

pub const NODES: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Node",
    plural: "nodes",
    singular: "node",
    short_names: &["no"],
    namespaced: false,
    categories: &[],
};

pub const LEASES: ResourceInfo = ResourceInfo {
    group: "coordination.k8s.io",
    version: "v1",
    kind: "Lease",
    plural: "leases",
    singular: "lease",
    short_names: &[],
    namespaced: true,
    categories: &[],
};

pub const PODS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Pod",
    plural: "pods",
    singular: "pod",
    short_names: &["po"],
    namespaced: true,
    categories: &["all"],
};

pub const EVENTS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Event",
    plural: "events",
    singular: "event",
    short_names: &["ev"],
    namespaced: true,
    categories: &[],
};

pub const NAMESPACES: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    singular: "namespace",
    short_names: &["ns"],
    namespaced: false,
    categories: &[],
};

pub const SECRETS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Secret",
    plural: "secrets",
    singular: "secret",
    short_names: &[],
    namespaced: true,
    categories: &[],
};

pub const CERTIFICATE_SIGNING_REQUESTS: ResourceInfo = ResourceInfo {
    group: "certificates.k8s.io",
    version: "v1",
    kind: "CertificateSigningRequest",
    plural: "certificatesigningrequests",
    singular: "certificatesigningrequest",
    short_names: &["csr"],
    namespaced: false,
    categories: &[],
};

pub const ROLES: ResourceInfo = ResourceInfo {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "Role",
    plural: "roles",
    singular: "role",
    short_names: &[],
    namespaced: true,
    categories: &[],
};

pub const CLUSTER_ROLES: ResourceInfo = ResourceInfo {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "ClusterRole",
    plural: "clusterroles",
    singular: "clusterrole",
    short_names: &[],
    namespaced: false,
    categories: &[],
};

pub const ROLE_BINDINGS: ResourceInfo = ResourceInfo {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "RoleBinding",
    plural: "rolebindings",
    singular: "rolebinding",
    short_names: &[],
    namespaced: true,
    categories: &[],
};

pub const CLUSTER_ROLE_BINDINGS: ResourceInfo = ResourceInfo {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "ClusterRoleBinding",
    plural: "clusterrolebindings",
    singular: "clusterrolebinding",
    short_names: &[],
    namespaced: false,
    categories: &[],
};

pub const DEPLOYMENTS: ResourceInfo = ResourceInfo {
    group: "apps",
    version: "v1",
    kind: "Deployment",
    plural: "deployments",
    singular: "deployment",
    short_names: &["deploy"],
    namespaced: true,
    categories: &["all"],
};

pub const REPLICA_SETS: ResourceInfo = ResourceInfo {
    group: "apps",
    version: "v1",
    kind: "ReplicaSet",
    plural: "replicasets",
    singular: "replicaset",
    short_names: &["rs"],
    namespaced: true,
    categories: &["all"],
};

pub const CUSTOM_RESOURCE_DEFINITIONS: ResourceInfo = ResourceInfo {
    group: "apiextensions.k8s.io",
    version: "v1",
    kind: "CustomResourceDefinition",
    plural: "customresourcedefinitions",
    singular: "customresourcedefinition",
    short_names: &["crd", "crds"],
    namespaced: false,
    categories: &["api-extensions"],
};

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `nodes`, `leases.coordination.k8s.io`: how Kubernetes names a resource in messages.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The URL path of a collection (`name` = None) or of one object.
    /// `namespace` None on a namespaced kind means "all namespaces".
    pub fn path(&self, namespace: Option<&str>, name: Option<&str>) -> String {
        let mut path = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        if let Some(ns) = namespace.filter(|_| self.namespaced) {
            path.push_str("/namespaces/");
            path.push_str(ns);
        }
        path.push('/');
        path.push_str(self.plural);
        if let Some(name) = name {
            path.push('/');
            path.push_str(name);
        }
        path
    }

    /// Whether a user's word (`nodes`, `node`, `no`, `Node`) names this kind.
    pub fn is_named(&self, word: &str) -> bool {
        let word = word.to_ascii_lowercase();
        word == self.plural
            || word == self.singular
            || word == self.kind.to_ascii_lowercase()
            || self.short_names.contains(&word.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_names() {
        assert_eq!(NODES.path(None, Some("n1")), "/api/v1/nodes/n1");
        assert_eq!(NODES.path(Some("x"), None), "/api/v1/nodes");
        assert_eq!(
            LEASES.path(Some("kube-node-lease"), Some("n1")),
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1"
        );
        assert_eq!(
            LEASES.path(None, None),
            "/apis/coordination.k8s.io/v1/leases"
        );
        assert!(NODES.is_named("no") && NODES.is_named("Node") && NODES.is_named("nodes"));
        assert!(!LEASES.is_named("lea"));
        assert_eq!(LEASES.api_version(), "coordination.k8s.io/v1");
        assert_eq!(PODS.api_version(), "v1");
    }
}
