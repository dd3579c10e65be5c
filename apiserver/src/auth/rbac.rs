//! Kubernetes' RBAC authorizer: the rules of Roles and ClusterRoles, given
//! to users, groups and service accounts by RoleBindings and
//! ClusterRoleBindings (`rbac.authorization.k8s.io/v1`).
//!
//! A `Policy` is a snapshot of those four kinds, indexed by subject so that
//! a request looks only at the bindings that name its user or one of its
//! groups: the cost does not grow with bindings for other people.

use std::collections::HashMap;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};

use super::attributes::{Attributes, ResourceAttributes};

/// Which role a binding grants, and where.
#[derive(Debug, Clone)]
struct Grant {
    /// The RoleBinding's namespace; `None` for a ClusterRoleBinding.
    namespace: Option<String>,
    /// `Role` (in `namespace`) or `ClusterRole`.
    cluster_role: bool,
    role: String,
}

/// The RBAC objects, indexed for authorization.
#[derive(Debug, Default)]
pub struct Policy {
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    /// By (namespace, name).
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    by_user: HashMap<String, Vec<Grant>>,
    by_group: HashMap<String, Vec<Grant>>,
}

/// What a snapshot is built from.
#[derive(Default)]
pub struct Objects {
    pub cluster_roles: Vec<ClusterRole>,
    pub roles: Vec<Role>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub role_bindings: Vec<RoleBinding>,
}

impl Policy {
    pub fn new(objects: Objects) -> Policy {
        let mut policy = Policy::default();
        for role in objects.cluster_roles {
            if let Some(name) = role.metadata.name {
                policy
                    .cluster_roles
                    .insert(name, role.rules.unwrap_or_default());
            }
        }
        for role in objects.roles {
            if let (Some(ns), Some(name)) = (role.metadata.namespace, role.metadata.name) {
                policy
                    .roles
                    .insert((ns, name), role.rules.unwrap_or_default());
            }
        }
        for binding in objects.cluster_role_bindings {
            let grant = Grant {
                namespace: None,
                cluster_role: true,
                role: binding.role_ref.name,
            };
            policy.index(binding.subjects.unwrap_or_default(), grant, None);
        }
        for binding in objects.role_bindings {
            let Some(ns) = binding.metadata.namespace else {
                continue;
            };
            let grant = Grant {
                namespace: Some(ns.clone()),
                cluster_role: binding.role_ref.kind == "ClusterRole",
                role: binding.role_ref.name,
            };
            policy.index(binding.subjects.unwrap_or_default(), grant, Some(&ns));
        }
        policy
    }

    fn index(
        &mut self,
        subjects: Vec<k8s_openapi::api::rbac::v1::Subject>,
        grant: Grant,
        binding_namespace: Option<&str>,
    ) {
        for subject in subjects {
            match subject.kind.as_str() {
                "User" => self
                    .by_user
                    .entry(subject.name)
                    .or_default()
                    .push(grant.clone()),
                "Group" => self
                    .by_group
                    .entry(subject.name)
                    .or_default()
                    .push(grant.clone()),
                // A service account is the user
                // `system:serviceaccount:<namespace>:<name>`; in a
                // RoleBinding its namespace defaults to the binding's.
                "ServiceAccount" => {
                    let Some(ns) = subject.namespace.as_deref().or(binding_namespace) else {
                        continue;
                    };
                    self.by_user
                        .entry(format!("system:serviceaccount:{ns}:{}", subject.name))
                        .or_default()
                        .push(grant.clone());
                }
                _ => {}
            }
        }
    }

    /// Whether some binding of the user's allows the request.
    pub fn allows(&self, request: &Attributes) -> bool {
        let user = request.user;
        let grants = self
            .by_user
            .get(&user.username)
            .into_iter()
            .chain(user.groups.iter().filter_map(|g| self.by_group.get(g)))
            .flatten();
        let namespace = request.resource.as_ref().map_or("", |r| r.namespace);
        for grant in grants {
            // A RoleBinding grants only in its own namespace.
            if let Some(ns) = &grant.namespace {
                if ns != namespace {
                    continue;
                }
            }
            let rules = if grant.cluster_role {
                self.cluster_roles.get(&grant.role)
            } else {
                grant
                    .namespace
                    .as_ref()
                    .and_then(|ns| self.roles.get(&(ns.clone(), grant.role.clone())))
            };
            if rules.is_some_and(|rules| rules.iter().any(|rule| rule_allows(rule, request))) {
                return true;
            }
        }
        false
    }

    /// How many bindings' subjects are indexed (for the start-up log).
    pub fn subjects(&self) -> usize {
        self.by_user.len() + self.by_group.len()
    }
}

fn has(list: &Option<Vec<String>>, wanted: &str) -> bool {
    list.iter().flatten().any(|v| v == "*" || v == wanted)
}

/// Kubernetes' `RuleAllows`.
pub fn rule_allows(rule: &PolicyRule, request: &Attributes) -> bool {
    if !rule.verbs.iter().any(|v| v == "*" || v == request.verb) {
        return false;
    }
    match &request.resource {
        Some(r) => {
            has(&rule.api_groups, r.api_group)
                && resource_matches(rule, r)
                && rule
                    .resource_names
                    .as_ref()
                    .is_none_or(|names| names.is_empty() || names.iter().any(|n| n == r.name))
        }
        None => rule.non_resource_urls.iter().flatten().any(|url| {
            url == "*"
                || url == request.path
                || url
                    .strip_suffix('*')
                    .is_some_and(|prefix| request.path.starts_with(prefix))
        }),
    }
}

/// `resources`: `*`, `plural`, `plural/sub`, or `*/sub`.
fn resource_matches(rule: &PolicyRule, r: &ResourceAttributes) -> bool {
    rule.resources.iter().flatten().any(|res| {
        if res == "*" {
            return true;
        }
        if r.subresource.is_empty() {
            return res == r.resource;
        }
        match res.split_once('/') {
            Some((plural, sub)) => (plural == r.resource || plural == "*") && sub == r.subresource,
            None => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::user::UserInfo;
    use k8s_openapi::api::rbac::v1::{RoleRef, Subject};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        let v = |s: &[&str]| Some(s.iter().map(|x| x.to_string()).collect());
        PolicyRule {
            verbs: verbs.iter().map(|x| x.to_string()).collect(),
            api_groups: v(groups),
            resources: v(resources),
            ..Default::default()
        }
    }

    fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: ns.map(str::to_string),
            ..Default::default()
        }
    }

    fn subject(kind: &str, name: &str) -> Subject {
        Subject {
            kind: kind.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn policy() -> Policy {
        Policy::new(Objects {
            cluster_roles: vec![ClusterRole {
                metadata: meta(None, "view"),
                rules: Some(vec![rule(&["get", "list"], &[""], &["pods", "pods/log"])]),
                ..Default::default()
            }],
            roles: vec![Role {
                metadata: meta(Some("team"), "editor"),
                rules: Some(vec![rule(&["*"], &[""], &["configmaps"])]),
            }],
            cluster_role_bindings: vec![ClusterRoleBinding {
                metadata: meta(None, "viewers"),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: "view".into(),
                },
                subjects: Some(vec![subject("Group", "viewers")]),
            }],
            role_bindings: vec![RoleBinding {
                metadata: meta(Some("team"), "alice-edits"),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "editor".into(),
                },
                subjects: Some(vec![subject("User", "alice")]),
            }],
        })
    }

    fn ask(user: &UserInfo, verb: &str, resource: &str, sub: &str, ns: &str) -> bool {
        policy().allows(&Attributes {
            user,
            verb,
            resource: Some(ResourceAttributes {
                api_group: "",
                resource,
                subresource: sub,
                namespace: ns,
                name: "x",
            }),
            path: "",
        })
    }

    #[test]
    fn bindings_grant_their_roles_rules_only() {
        let viewer = UserInfo::authenticated("bob", vec!["viewers".into()]);
        assert!(ask(&viewer, "list", "pods", "", "default"));
        assert!(ask(&viewer, "get", "pods", "log", "default"));
        assert!(!ask(&viewer, "get", "pods", "exec", "default"));
        assert!(!ask(&viewer, "delete", "pods", "", "default"));
        let alice = UserInfo::authenticated("alice", vec![]);
        assert!(ask(&alice, "delete", "configmaps", "", "team"));
        assert!(!ask(&alice, "delete", "configmaps", "", "other"));
        assert!(!ask(&alice, "list", "pods", "", "team"));
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_prefix() {
        let mut r = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: Some(vec!["/healthz".into(), "/apis/*".into()]),
            ..Default::default()
        };
        let user = UserInfo::anonymous();
        let at = |path| Attributes {
            user: &user,
            verb: "get",
            resource: None,
            path,
        };
        assert!(rule_allows(&r, &at("/healthz")));
        assert!(rule_allows(&r, &at("/apis/apps/v1")));
        assert!(!rule_allows(&r, &at("/metrics")));
        r.verbs = vec!["post".into()];
        assert!(!rule_allows(&r, &at("/healthz")));
    }
}
