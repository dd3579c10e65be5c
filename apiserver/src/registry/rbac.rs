//! `rbac.authorization.k8s.io/v1`: Role, ClusterRole, RoleBinding and
//! ClusterRoleBinding, as Kubernetes validates and prints them. The
//! authorizer that reads them is `crate::auth::rbac`.

use jiff::Timestamp;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use mube_apis::resources;
use mube_apis::table::Column;
use mube_apis::validation::FieldError;
use serde_json::{json, Value};

use super::{age_of, name_of, CreatedAtTable, Resource, Strategy, TableConvertor, Typed, TypedAs};

const GROUP: &str = "rbac.authorization.k8s.io";

/// Roles print NAME and CREATED AT, as kubectl shows them.
const ROLE_TABLE: CreatedAtTable = CreatedAtTable {
    description: "Time the role was created.",
};

pub fn role() -> Resource {
    Resource {
        info: &resources::ROLES,
        strategy: Box::new(RoleStrategy { cluster: false }),
        table: Box::new(ROLE_TABLE),
    }
}

pub fn cluster_role() -> Resource {
    Resource {
        info: &resources::CLUSTER_ROLES,
        strategy: Box::new(RoleStrategy { cluster: true }),
        table: Box::new(ROLE_TABLE),
    }
}

pub fn role_binding() -> Resource {
    Resource {
        info: &resources::ROLE_BINDINGS,
        strategy: Box::new(BindingStrategy { cluster: false }),
        table: Box::new(BindingTable),
    }
}

pub fn cluster_role_binding() -> Resource {
    Resource {
        info: &resources::CLUSTER_ROLE_BINDINGS,
        strategy: Box::new(BindingStrategy { cluster: true }),
        table: Box::new(BindingTable),
    }
}

struct RoleStrategy {
    cluster: bool,
}

/// Kubernetes' `ValidateRBACName`: any path segment (`system:node` is a
/// role name), not `.` or `..`, no `/` or `%`.
fn rbac_name(name: &str) -> Result<(), String> {
    if name == "." || name == ".." {
        return Err(format!("Invalid value: {name:?}: may not be '{name}'"));
    }
    for bad in ["/", "%"] {
        if name.contains(bad) {
            return Err(format!("Invalid value: {name:?}: may not contain '{bad}'"));
        }
    }
    Ok(())
}

fn count(value: Option<&Value>) -> usize {
    value.and_then(Value::as_array).map_or(0, Vec::len)
}

impl Strategy for RoleStrategy {
    fn typed(&self) -> &dyn Typed {
        if self.cluster {
            &TypedAs::<ClusterRole>::NEW
        } else {
            &TypedAs::<Role>::NEW
        }
    }

    fn validate_name(&self, name: &str) -> Result<(), String> {
        rbac_name(name)
    }

    /// As Kubernetes' `ValidatePolicyRule`.
    fn validate(&self, object: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let rules = object.get("rules").and_then(Value::as_array);
        for (i, rule) in rules.into_iter().flatten().enumerate() {
            let at = |f: &str| format!("rules[{i}].{f}");
            if count(rule.get("verbs")) == 0 {
                errors.push(FieldError::new(
                    at("verbs"),
                    "Required value: verbs must contain at least one value",
                ));
            }
            let urls = rule.get("nonResourceURLs");
            let (groups, kinds) = (count(rule.get("apiGroups")), count(rule.get("resources")));
            if count(urls) > 0 {
                let shown = urls.map(Value::to_string).unwrap_or_default();
                if !self.cluster {
                    errors.push(FieldError::new(
                        at("nonResourceURLs"),
                        format!("Invalid value: {shown}: namespaced rules cannot apply to non-resource URLs"),
                    ));
                }
                if groups > 0 || kinds > 0 {
                    errors.push(FieldError::new(
                        at("nonResourceURLs"),
                        format!("Invalid value: {shown}: rules cannot apply to both regular resources and non-resource URLs"),
                    ));
                }
                continue;
            }
            if groups == 0 {
                errors.push(FieldError::new(
                    at("apiGroups"),
                    "Required value: resource rules must supply at least one api group",
                ));
            }
            if kinds == 0 {
                errors.push(FieldError::new(
                    at("resources"),
                    "Required value: resource rules must supply at least one resource",
                ));
            }
        }
        errors
    }
}

struct BindingStrategy {
    cluster: bool,
}

impl Strategy for BindingStrategy {
    fn typed(&self) -> &dyn Typed {
        if self.cluster {
            &TypedAs::<ClusterRoleBinding>::NEW
        } else {
            &TypedAs::<RoleBinding>::NEW
        }
    }

    fn validate_name(&self, name: &str) -> Result<(), String> {
        rbac_name(name)
    }

    /// As Kubernetes' `ValidateRoleBinding`.
    fn validate(&self, object: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let text = |p: &str| object.pointer(p).and_then(Value::as_str).unwrap_or("");
        let group = text("/roleRef/apiGroup");
        if group != GROUP {
            errors.push(FieldError::new(
                "roleRef.apiGroup",
                format!("Unsupported value: {group:?}: supported values: {GROUP:?}"),
            ));
        }
        let kind = text("/roleRef/kind");
        let kinds: &[&str] = if self.cluster {
            &["ClusterRole"]
        } else {
            &["Role", "ClusterRole"]
        };
        if !kinds.contains(&kind) {
            let supported: Vec<String> = kinds.iter().map(|k| format!("{k:?}")).collect();
            errors.push(FieldError::new(
                "roleRef.kind",
                format!(
                    "Unsupported value: {kind:?}: supported values: {}",
                    supported.join(", ")
                ),
            ));
        }
        if text("/roleRef/name").is_empty() {
            errors.push(FieldError::new("roleRef.name", "Required value"));
        }
        let subjects = object.get("subjects").and_then(Value::as_array);
        for (i, subject) in subjects.into_iter().flatten().enumerate() {
            let field = |p: &str| subject.get(p).and_then(Value::as_str).unwrap_or("");
            if field("name").is_empty() {
                errors.push(FieldError::new(
                    format!("subjects[{i}].name"),
                    "Required value",
                ));
            }
            let kind = field("kind");
            if !matches!(kind, "User" | "Group" | "ServiceAccount") {
                errors.push(FieldError::new(
                    format!("subjects[{i}].kind"),
                    format!("Unsupported value: {kind:?}: supported values: \"ServiceAccount\", \"User\", \"Group\""),
                ));
            }
        }
        errors
    }

    /// A binding's role cannot change: delete and create it again.
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        if new.get("roleRef") != old.get("roleRef") {
            let shown = new.get("roleRef").map(Value::to_string).unwrap_or_default();
            return vec![FieldError::new(
                "roleRef",
                format!("Invalid value: {shown}: cannot change roleRef"),
            )];
        }
        Vec::new()
    }
}

/// Bindings print NAME, ROLE and AGE, as kubectl shows them.
struct BindingTable;

impl TableConvertor for BindingTable {
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new("Role", "string", "", "The role this binding grants.", 0),
            Column::age(),
        ]
    }

    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        let text = |p: &str| object.pointer(p).and_then(Value::as_str).unwrap_or("");
        vec![
            json!(name_of(object)),
            json!(format!(
                "{}/{}",
                text("/roleRef/kind"),
                text("/roleRef/name")
            )),
            json!(age_of(object, now)),
        ]
    }
}
