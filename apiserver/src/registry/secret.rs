//! Core `v1` Secret. mube keeps join (bootstrap) tokens in them, as
//! Kubernetes does (`kube-system/bootstrap-token-<id>`, type
//! `bootstrap.kubernetes.io/token`). Values are stored as given; like
//! Kubernetes without an encryption config, at rest they are only
//! base64, so the data directory is the owner's alone (0700).

use base64::Engine;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use mube_apis::resources;
use mube_apis::table::Column;
use mube_apis::validation::FieldError;
use serde_json::{json, Map, Value};

use super::{age_of, name_of, string_at, Part, Resource, Strategy, TableConvertor, Typed, TypedAs};

pub fn resource() -> Resource {
    Resource {
        info: &resources::SECRETS,
        strategy: Box::new(SecretStrategy),
        table: Box::new(SecretStrategy),
    }
}

struct SecretStrategy;

/// `stringData` is a write-only convenience: merged into `data` (encoded)
/// and never stored, as Kubernetes does.
fn merge_string_data(object: &mut Value) {
    let Some(obj) = object.as_object_mut() else {
        return;
    };
    if obj.get("type").and_then(Value::as_str).unwrap_or("").is_empty() {
        obj.insert("type".into(), json!("Opaque"));
    }
    let Some(Value::Object(strings)) = obj.remove("stringData") else {
        return;
    };
    let data = obj
        .entry("data")
        .or_insert_with(|| Value::Object(Map::new()));
    if !data.is_object() {
        *data = Value::Object(Map::new());
    }
    if let Some(data) = data.as_object_mut() {
        for (key, value) in strings {
            let text = value.as_str().unwrap_or_default();
            let encoded = base64::engine::general_purpose::STANDARD.encode(text);
            data.insert(key, json!(encoded));
        }
    }
}

impl Strategy for SecretStrategy {
    fn garbage_collected(&self) -> bool {
        true
    }

    fn typed(&self) -> &dyn Typed {
        &TypedAs::<Secret>::NEW
    }

    fn prepare_for_create(&self, object: &mut Value, _now: Timestamp) {
        merge_string_data(object);
    }

    fn prepare_for_update(&self, _part: Part, mut new: Value, _old: Value) -> Value {
        merge_string_data(&mut new);
        new
    }

    fn validate(&self, object: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let data = object.get("data").and_then(Value::as_object);
        for key in data.into_iter().flat_map(Map::keys) {
            if let Err(m) = super::configmap::config_key(key) {
                errors.push(FieldError::new(
                    format!("data[{key}]"),
                    format!("Invalid value: {key:?}: {m}"),
                ));
            }
        }
        errors
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["metadata.name", "metadata.namespace", "type"]
    }

    fn field_value(&self, object: &Value, field: &str) -> Option<String> {
        match field {
            "metadata.name" => string_at(object, "/metadata/name"),
            "metadata.namespace" => string_at(object, "/metadata/namespace"),
            "type" => string_at(object, "/type"),
            _ => None,
        }
    }
}

impl TableConvertor for SecretStrategy {
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new("Type", "string", "", "The type of secret", 0),
            Column::new("Data", "string", "", "Number of items in the secret", 0),
            Column::age(),
        ]
    }

    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        let data = object
            .get("data")
            .and_then(Value::as_object)
            .map_or(0, Map::len);
        vec![
            json!(name_of(object)),
            json!(string_at(object, "/type").unwrap_or_default()),
            json!(data),
            json!(age_of(object, now)),
        ]
    }
}
