//! Kubernetes REST paths, parsed by hand because the shape is positional:
//!   /api/{version}[/namespaces/{ns}]/{plural}[/{name}[/{subresource}]]
//!   /apis/{group}/{version}[/namespaces/{ns}]/{plural}[/{name}[/{subresource}]]

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub plural: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// `None` when the path is not a resource path.
pub fn parse(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    let (group, segments) = match segments.split_first()? {
        (&"api", rest) => ("", rest),
        (&"apis", [group, rest @ ..]) => (*group, rest),
        _ => return None,
    };
    let (version, segments) = segments.split_first()?;
    let (namespace, segments) = match segments {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, segments),
    };
    let (plural, name, subresource) = match segments {
        [plural] => (plural, None, None),
        [plural, name] => (plural, Some(name.to_string()), None),
        [plural, name, sub] => (plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Target {
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        plural: plural.to_string(),
        name,
        subresource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let t = parse("/api/v1/nodes").unwrap();
        assert_eq!(
            (t.group.as_str(), t.version.as_str(), t.plural.as_str()),
            ("", "v1", "nodes")
        );
        let t = parse("/api/v1/nodes/n1/status").unwrap();
        assert_eq!(t.name.as_deref(), Some("n1"));
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let t = parse("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1").unwrap();
        assert_eq!(t.group, "coordination.k8s.io");
        assert_eq!(t.namespace.as_deref(), Some("kube-node-lease"));
        assert_eq!(t.name.as_deref(), Some("n1"));
        let t = parse("/apis/coordination.k8s.io/v1/leases").unwrap();
        assert_eq!(t.namespace, None);
        assert!(parse("/api/v1").is_none());
        assert!(parse("/api/v1//nodes").is_none());
        assert!(parse("/api/v1/nodes/a/b/c").is_none());
        assert!(parse("/other/v1/nodes").is_none());
    }
}
