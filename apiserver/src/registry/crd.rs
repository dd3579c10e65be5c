//! `apiextensions.k8s.io/v1` CustomResourceDefinition: the kind through
//! which users add kinds. Validation here refuses what could not be served
//! (names, versions, non-structural schemas); `custom_kind.rs` builds the
//! served kinds from a CRD, and `controllers/crd.rs` starts and stops
//! serving them and reports the CRD's conditions.

use jiff::Timestamp;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use mube_apis::jsonpath::JsonPath;
use mube_apis::resources;
use mube_apis::schema::Schema;
use mube_apis::validation::{dns1123_label, dns1123_subdomain, FieldError};
use serde_json::{json, Value};

use super::custom_kind::Names;
use super::{name_of, CreatedAtTable, Resource, Strategy, Typed, TypedAs};

/// Held by every CRD until its objects are deleted (Kubernetes' name).
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

pub fn resource() -> Resource {
    Resource {
        info: &resources::CUSTOM_RESOURCE_DEFINITIONS,
        strategy: Box::new(CrdStrategy),
        table: Box::new(CreatedAtTable {
            description: "The time the resource was created",
        }),
    }
}

struct CrdStrategy;

fn fe(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError::new(field, message)
}

/// Fills in what Kubernetes defaults: `singular`, `listKind`, the `None`
/// conversion strategy.
fn set_defaults(object: &mut Value) {
    let names = Names::of(object);
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(n) = spec.get_mut("names").and_then(Value::as_object_mut) {
            if !names.kind.is_empty() {
                n.entry("singular").or_insert(json!(names.singular));
                n.entry("listKind").or_insert(json!(names.list_kind));
            }
        }
        spec.entry("conversion")
            .or_insert_with(|| json!({"strategy": "None"}));
    }
}

impl Strategy for CrdStrategy {
    fn typed(&self) -> &dyn Typed {
        &TypedAs::<CustomResourceDefinition>::NEW
    }

    fn prepare_for_create(&self, object: &mut Value, _now: Timestamp) {
        set_defaults(object);
        if let Some(obj) = object.as_object_mut() {
            obj.remove("status");
            let meta = obj.entry("metadata").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(list) = finalizers.as_array_mut() {
                    if !list.iter().any(|f| f == CLEANUP_FINALIZER) {
                        list.push(json!(CLEANUP_FINALIZER));
                    }
                }
            }
        }
    }

    fn prepare_for_update(&self, part: super::Part, mut new: Value, old: Value) -> Value {
        if part == super::Part::Main {
            set_defaults(&mut new);
        }
        super::keep_status_apart(part, new, old)
    }

    fn status_subresource(&self) -> bool {
        true
    }

    fn validate(&self, object: &Value) -> Vec<FieldError> {
        validate(object)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for field in ["group", "scope"] {
            if new["spec"][field] != old["spec"][field] {
                errors.push(fe(
                    format!("spec.{field}"),
                    format!("Invalid value: {}: field is immutable", new["spec"][field]),
                ));
            }
        }
        errors
    }
}

fn validate(crd: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or("");
    let names = Names::of(crd);
    if group.is_empty() {
        errors.push(fe("spec.group", "Required value"));
    } else if let Err(m) = dns1123_subdomain(group) {
        errors.push(fe("spec.group", m));
    } else if !group.contains('.') {
        errors.push(fe(
            "spec.group",
            format!("Invalid value: {group:?}: should be a domain with at least one dot"),
        ));
    }
    let want = format!("{}.{group}", names.plural);
    if name_of(crd) != want {
        errors.push(fe(
            "metadata.name",
            format!(
                "Invalid value: {:?}: must be spec.names.plural+\".\"+spec.group",
                name_of(crd)
            ),
        ));
    }
    for (field, value) in [("plural", &names.plural), ("singular", &names.singular)] {
        if value.is_empty() {
            errors.push(fe(format!("spec.names.{field}"), "Required value"));
        } else if let Err(m) = dns1123_label(value) {
            errors.push(fe(format!("spec.names.{field}"), m));
        }
    }
    for (i, short) in names.short_names.iter().enumerate() {
        if let Err(m) = dns1123_label(short) {
            errors.push(fe(format!("spec.names.shortNames[{i}]"), m));
        }
    }
    for (field, value) in [("kind", &names.kind), ("listKind", &names.list_kind)] {
        if value.is_empty() {
            errors.push(fe(format!("spec.names.{field}"), "Required value"));
        } else if !value.chars().all(|c| c.is_ascii_alphanumeric())
            || !value.starts_with(|c: char| c.is_ascii_alphabetic())
        {
            errors.push(fe(
                format!("spec.names.{field}"),
                format!("Invalid value: {value:?}: may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?"),
            ));
        }
    }
    if names.kind == names.list_kind && !names.kind.is_empty() {
        errors.push(fe(
            "spec.names.listKind",
            format!("Invalid value: {:?}: kind and listKind may not be the same", names.list_kind),
        ));
    }
    match spec["scope"].as_str() {
        Some("Cluster" | "Namespaced") => {}
        Some(other) => errors.push(fe(
            "spec.scope",
            format!("Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""),
        )),
        None => errors.push(fe("spec.scope", "Required value")),
    }
    match spec.pointer("/conversion/strategy").and_then(Value::as_str) {
        None | Some("None") => {}
        Some(other) => errors.push(fe(
            "spec.conversion.strategy",
            format!("Unsupported value: {other:?}: supported values: \"None\" (mube does not call conversion webhooks)"),
        )),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        errors.push(fe("spec.versions", "Invalid value: null: must have exactly one version marked as storage version"));
    }
    let storage = versions.iter().filter(|v| v["storage"].as_bool() == Some(true)).count();
    if !versions.is_empty() && storage != 1 {
        errors.push(fe(
            "spec.versions",
            format!("Invalid value: {storage}: must have exactly one version marked as storage version"),
        ));
    }
    if !versions.is_empty() && !versions.iter().any(|v| v["served"].as_bool() == Some(true)) {
        errors.push(fe("spec.versions", "Invalid value: must have at least one served version"));
    }
    let mut seen = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        let name = v["name"].as_str().unwrap_or("");
        if let Err(m) = dns1123_label(name) {
            errors.push(fe(format!("{at}.name"), m));
        }
        if seen.contains(&name) {
            errors.push(fe(format!("{at}.name"), format!("Duplicate value: {name:?}")));
        }
        seen.push(name);
        match v.pointer("/schema/openAPIV3Schema") {
            None => errors.push(fe(
                format!("{at}.schema.openAPIV3Schema"),
                "Required value: schemas are required",
            )),
            Some(schema) => {
                if let Err(e) = Schema::compile(schema, &format!("{at}.schema.openAPIV3Schema")) {
                    errors.extend(e);
                }
            }
        }
        if let Some(scale) = v.pointer("/subresources/scale").filter(|s| s.is_object()) {
            for (field, root, required) in [
                ("specReplicasPath", ".spec.", true),
                ("statusReplicasPath", ".status.", true),
                ("labelSelectorPath", "", false),
            ] {
                let at = format!("{at}.subresources.scale.{field}");
                match scale.get(field).and_then(Value::as_str) {
                    None if required => errors.push(fe(at, "Required value")),
                    None => {}
                    Some(p) => {
                        let plain = JsonPath::parse(p).ok().and_then(|j| j.pointer());
                        if plain.is_none() || !p.starts_with(root) || (root.is_empty() && !(p.starts_with(".spec.") || p.starts_with(".status."))) {
                            errors.push(fe(
                                at,
                                format!("Invalid value: {p:?}: should be a json path under either .spec or .status"),
                            ));
                        }
                    }
                }
            }
        }
        for (j, c) in v["additionalPrinterColumns"].as_array().into_iter().flatten().enumerate() {
            let at = format!("{at}.additionalPrinterColumns[{j}]");
            if c["name"].as_str().unwrap_or("").is_empty() {
                errors.push(fe(format!("{at}.name"), "Required value"));
            }
            match c["type"].as_str() {
                Some("integer" | "number" | "string" | "boolean" | "date") => {}
                other => errors.push(fe(
                    format!("{at}.type"),
                    format!("Unsupported value: {:?}: supported values: \"boolean\", \"date\", \"integer\", \"number\", \"string\"", other.unwrap_or("")),
                )),
            }
            match c["jsonPath"].as_str() {
                None => errors.push(fe(format!("{at}.jsonPath"), "Required value")),
                Some(p) => {
                    if let Err(m) = JsonPath::parse(p) {
                        errors.push(fe(format!("{at}.jsonPath"), format!("Invalid value: {p:?}: {m}")));
                    }
                }
            }
        }
    }
    errors
}
