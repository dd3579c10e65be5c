//! RBAC's escalation prevention, as Kubernetes': a user may write a Role
//! only with rules they already hold (or the `escalate` verb on roles),
//! and bind a role only if they hold all of its rules (or the `bind` verb
//! on it). Without it, whoever may write roles or bindings in a namespace
//! could grant themselves anything there.

use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
use mube_apis::status::Reason;

use super::{Attributes, Authorizer, Decision, ResourceAttributes, UserInfo};
use crate::error::ApiError;

const GROUP: &str = "rbac.authorization.k8s.io";

/// Whether `user` holds `rule` in `namespace` ("" for cluster-wide): every
/// verb on every resource (and name) it names. A wildcard is held only as
/// a wildcard.
async fn holds(
    authz: &Authorizer,
    user: &UserInfo,
    namespace: &str,
    rule: &PolicyRule,
) -> Result<bool, ApiError> {
    let names: Vec<&str> = match &rule.resource_names {
        Some(n) if !n.is_empty() => n.iter().map(String::as_str).collect(),
        _ => vec![""],
    };
    for verb in &rule.verbs {
        if let Some(urls) = rule.non_resource_urls.as_ref().filter(|u| !u.is_empty()) {
            for url in urls {
                let asks = Attributes {
                    user,
                    verb,
                    resource: None,
                    path: url,
                };
                if authz.authorize(&asks).await? != Decision::Allow {
                    return Ok(false);
                }
            }
            continue;
        }
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                let (plural, sub) = resource.split_once('/').unwrap_or((resource, ""));
                for name in &names {
                    let asks = Attributes {
                        user,
                        verb,
                        resource: Some(ResourceAttributes {
                            api_group: group,
                            resource: plural,
                            subresource: sub,
                            namespace,
                            name,
                        }),
                        path: "",
                    };
                    if authz.authorize(&asks).await? != Decision::Allow {
                        return Ok(false);
                    }
                }
            }
        }
    }
    Ok(true)
}

fn refused(what: &str, name: &str, user: &UserInfo, rule: &PolicyRule) -> ApiError {
    let list = |v: &Option<Vec<String>>| format!("{:?}", v.clone().unwrap_or_default());
    ApiError::new(
        Reason::Forbidden,
        format!(
            "{what} {name:?} is forbidden: user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{{APIGroups:{}, Resources:{}, ResourceNames:{}, NonResourceURLs:{}, Verbs:{:?}}}",
            user.username,
            user.groups,
            list(&rule.api_groups),
            list(&rule.resources),
            list(&rule.resource_names),
            list(&rule.non_resource_urls),
            rule.verbs,
        ),
    )
}

/// Whether `user` may use `verb` (`escalate`, `bind`) on the role.
async fn may(
    authz: &Authorizer,
    user: &UserInfo,
    verb: &str,
    cluster: bool,
    namespace: &str,
    name: &str,
) -> Result<bool, ApiError> {
    let asks = Attributes {
        user,
        verb,
        resource: Some(ResourceAttributes {
            api_group: GROUP,
            resource: if cluster { "clusterroles" } else { "roles" },
            subresource: "",
            namespace,
            name,
        }),
        path: "",
    };
    Ok(authz.authorize(&asks).await? == Decision::Allow)
}

/// A write of a Role (in `namespace`) or a ClusterRole (`namespace` "")
/// named `name` with `rules`.
pub async fn check_role(
    authz: &Authorizer,
    user: &UserInfo,
    namespace: &str,
    name: &str,
    rules: &[PolicyRule],
) -> Result<(), ApiError> {
    let cluster = namespace.is_empty();
    if may(authz, user, "escalate", cluster, namespace, name).await? {
        return Ok(());
    }
    for rule in rules {
        if !holds(authz, user, namespace, rule).await? {
            let what = if cluster {
                "clusterroles.rbac.authorization.k8s.io"
            } else {
                "roles.rbac.authorization.k8s.io"
            };
            return Err(refused(what, name, user, rule));
        }
    }
    Ok(())
}

/// A write of a RoleBinding (in `namespace`) or a ClusterRoleBinding
/// (`namespace` "") named `name` granting `role`, whose rules are
/// `rules` (`None`: the role does not exist yet, and binding it grants
/// nothing until it does; then only `bind` allows it, as a role made later
/// could hold anything).
pub async fn check_binding(
    authz: &Authorizer,
    user: &UserInfo,
    namespace: &str,
    name: &str,
    role: &RoleRef,
    rules: Option<&[PolicyRule]>,
) -> Result<(), ApiError> {
    let cluster_role = role.kind == "ClusterRole";
    let role_ns = if cluster_role { "" } else { namespace };
    let what = if namespace.is_empty() {
        "clusterrolebindings.rbac.authorization.k8s.io"
    } else {
        "rolebindings.rbac.authorization.k8s.io"
    };
    if may(authz, user, "bind", cluster_role, role_ns, &role.name).await? {
        return Ok(());
    }
    let Some(rules) = rules else {
        return Err(ApiError::new(
            Reason::Forbidden,
            format!(
                "{what} {name:?} is forbidden: user {:?} may not bind {} {:?}, which does not exist (binding a role made later needs the bind verb)",
                user.username, role.kind, role.name
            ),
        ));
    };
    for rule in rules {
        if !holds(authz, user, namespace, rule).await? {
            return Err(refused(what, name, user, rule));
        }
    }
    Ok(())
}
