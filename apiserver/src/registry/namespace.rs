//! Core `v1` Namespace. Namespaced objects live only in a namespace that
//! exists (a write into a missing one is 404, as in Kubernetes). Deleting
//! a namespace marks it `Terminating`; the namespace controller deletes
//! what it holds, and then the namespace goes (`Strategy::terminates`).
//! `default`, `kube-system`, `kube-public` and `kube-node-lease` are made
//! at start and cannot be deleted.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use mube_apis::resources;
use mube_apis::table::Column;
use serde_json::{json, Value};

use super::{age_of, name_of, string_at, Resource, Strategy, TableConvertor, Typed, TypedAs};

/// The namespaces every cluster has.
pub const SYSTEM: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

pub fn resource() -> Resource {
    Resource {
        info: &resources::NAMESPACES,
        strategy: Box::new(NamespaceStrategy),
        table: Box::new(NamespaceStrategy),
    }
}

struct NamespaceStrategy;

impl Strategy for NamespaceStrategy {
    fn typed(&self) -> &dyn Typed {
        &TypedAs::<Namespace>::NEW
    }

    fn validate_name(&self, name: &str) -> Result<(), String> {
        mube_apis::validation::dns1123_label(name)
    }

    /// Active, with Kubernetes' finalizer (the namespace controller's).
    fn prepare_for_create(&self, object: &mut Value, _now: Timestamp) {
        if let Some(obj) = object.as_object_mut() {
            obj.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
            obj.insert("status".into(), json!({"phase": "Active"}));
        }
    }

    fn status_subresource(&self) -> bool {
        true
    }

    fn terminates(&self) -> bool {
        true
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["metadata.name", "status.phase"]
    }

    fn field_value(&self, object: &Value, field: &str) -> Option<String> {
        match field {
            "metadata.name" => string_at(object, "/metadata/name"),
            "status.phase" => string_at(object, "/status/phase"),
            _ => None,
        }
    }
}

impl TableConvertor for NamespaceStrategy {
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new(
                "Status",
                "string",
                "",
                "The status of the namespace",
                0,
            ),
            Column::age(),
        ]
    }

    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        vec![
            json!(name_of(object)),
            json!(string_at(object, "/status/phase").unwrap_or_default()),
            json!(age_of(object, now)),
        ]
    }
}

/// Creates each system namespace that does not exist.
pub async fn ensure_system_namespaces(registry: &super::Registry) -> Result<(), crate::error::ApiError> {
    let r = registry.resource(&resources::NAMESPACES)?;
    for name in SYSTEM {
        let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match registry
            .create(&r, None, object, super::managed::APISERVER, super::DryRun::No)
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
