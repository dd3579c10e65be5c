//! Core `v1` ConfigMap: configuration data for workloads, as Kubernetes
//! serves it. Also the example of what a kind takes: this file, and its
//! name in the registry's `kinds!` list. Discovery, OpenAPI schemas,
//! server-side Tables, watches, apply and kubectl support all follow.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use mube_apis::resources::ResourceInfo;
use mube_apis::table::Column;
use mube_apis::validation::FieldError;
use serde_json::{json, Map, Value};

use super::{age_of, name_of, Resource, Strategy, TableConvertor, Typed, TypedAs};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    plural: "configmaps",
    singular: "configmap",
    short_names: &["cm"],
    namespaced: true,
    categories: &[],
};

pub fn resource() -> Resource {
    Resource {
        info: &INFO,
        strategy: Box::new(ConfigMapStrategy),
        table: Box::new(ConfigMapStrategy),
    }
}

struct ConfigMapStrategy;

/// Kubernetes' limit on a ConfigMap's data (`MaxSecretSize`, 1 MiB).
const MAX_BYTES: usize = 1024 * 1024;

fn entries<'a>(object: &'a Value, field: &str) -> impl Iterator<Item = (&'a String, &'a Value)> {
    object
        .get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(Map::iter)
}

/// Kubernetes' `IsConfigMapKey`.
pub(super) fn config_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 253 {
        return Err("must be no more than 253 characters and not empty".into());
    }
    if key == "." || key == ".." || key.starts_with("..") {
        return Err("must not be '.' or '..' or start with '..'".into());
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".into());
    }
    Ok(())
}

impl Strategy for ConfigMapStrategy {
    fn garbage_collected(&self) -> bool {
        true
    }

    fn typed(&self) -> &dyn Typed {
        &TypedAs::<ConfigMap>::NEW
    }

    /// As Kubernetes' `ValidateConfigMap`: valid keys, none in both `data`
    /// and `binaryData`, at most 1 MiB in all.
    fn validate(&self, object: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut size = 0;
        for (field, key, value) in entries(object, "data")
            .map(|(k, v)| ("data", k, v))
            .chain(entries(object, "binaryData").map(|(k, v)| ("binaryData", k, v)))
        {
            if let Err(m) = config_key(key) {
                errors.push(FieldError::new(
                    format!("{field}[{key}]"),
                    format!("Invalid value: {key:?}: {m}"),
                ));
            }
            size += key.len() + value.as_str().map_or(0, str::len);
        }
        for (key, _) in entries(object, "binaryData") {
            if object.pointer("/data").and_then(|d| d.get(key)).is_some() {
                errors.push(FieldError::new(
                    format!("data[{key}]"),
                    format!("Invalid value: {key:?}: duplicate of key present in binaryData"),
                ));
            }
        }
        if size > MAX_BYTES {
            errors.push(FieldError::new(
                "[]",
                format!("Too long: may not be more than {MAX_BYTES} bytes"),
            ));
        }
        errors
    }
}

impl TableConvertor for ConfigMapStrategy {
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new("Data", "integer", "", "Number of data entries.", 0),
            Column::age(),
        ]
    }

    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        let count = entries(object, "data").count() + entries(object, "binaryData").count();
        vec![
            json!(name_of(object)),
            json!(count),
            json!(age_of(object, now)),
        ]
    }
}
