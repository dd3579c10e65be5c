//! The catalogue of kinds mube serves: names, group/version, scope and URL
//! paths. The API server builds its registry on these; clients (mubectl)
//! use them to map a manifest's `apiVersion`/`kind` to a path.

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
}

pub const NODES: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Node",
    plural: "nodes",
    singular: "node",
    short_names: &["no"],
    namespaced: false,
};

pub const LEASES: ResourceInfo = ResourceInfo {
    group: "coordination.k8s.io",
    version: "v1",
    kind: "Lease",
    plural: "leases",
    singular: "lease",
    short_names: &[],
    namespaced: true,
};

pub const PODS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Pod",
    plural: "pods",
    singular: "pod",
    short_names: &["po"],
    namespaced: true,
};

pub const EVENTS: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Event",
    plural: "events",
    singular: "event",
    short_names: &["ev"],
    namespaced: true,
};

/// Every kind mube serves.
pub const ALL: &[&ResourceInfo] = &[&NODES, &LEASES, &PODS, &EVENTS];

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

/// The kind a manifest's `apiVersion` and `kind` name.
pub fn by_type(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    ALL.iter()
        .copied()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// The kind a user's word names.
pub fn by_name(word: &str) -> Option<&'static ResourceInfo> {
    ALL.iter().copied().find(|r| r.is_named(word))
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
        assert_eq!(by_name("no"), Some(&NODES));
        assert_eq!(by_name("Lease"), Some(&LEASES));
        assert_eq!(by_type("coordination.k8s.io/v1", "Lease"), Some(&LEASES));
        assert_eq!(by_type("v1", "Pod"), Some(&PODS));
        assert_eq!(by_type("apps/v1", "Deployment"), None);
    }
}
