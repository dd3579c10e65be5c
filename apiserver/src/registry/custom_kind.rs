//! A custom kind, served from one version of a CustomResourceDefinition:
//! the same `Resource` (names, strategy, table) as a built-in kind, built
//! at run time from the CRD's data, so that the generic registry, watch,
//! apply, selectors, Tables and discovery serve it through the code every
//! kind shares (Kubernetes' apiextensions server does the same with its
//! `customResourceStrategy`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::schemars::SchemaGenerator;
use mube_apis::jsonpath::JsonPath;
use mube_apis::resources::ResourceInfo;
use mube_apis::schema::Schema;
use mube_apis::table::Column;
use mube_apis::validation::FieldError;
use serde_json::{json, Value};

use super::{age_of, name_of, Resource, ScalePaths, Strategy, TableConvertor, Typed};

/// A kind's names outlive any one request (`Resource::info` is
/// `&'static`, as for built-in kinds), so the names of a custom kind are
/// leaked once per distinct set of names and reused after: serving the
/// same CRD again (after an update, or deleted and created again) costs
/// nothing more, and the total is bounded by the distinct definitions a
/// server ever sees.
fn intern(group: &str, version: &str, names: &Names, namespaced: bool) -> &'static ResourceInfo {
    type Key = (String, String, Names, bool);
    static INTERNED: OnceLock<Mutex<HashMap<Key, &'static ResourceInfo>>> = OnceLock::new();
    let key: Key = (group.into(), version.into(), names.clone(), namespaced);
    let mut map = match INTERNED.get_or_init(Default::default).lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.entry(key).or_insert_with(|| {
        let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
        let leak_all = |v: &[String]| -> &'static [&'static str] {
            Box::leak(
                v.iter()
                    .map(|s| leak(s))
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            )
        };
        Box::leak(Box::new(ResourceInfo {
            group: leak(group),
            version: leak(version),
            kind: leak(&names.kind),
            plural: leak(&names.plural),
            singular: leak(&names.singular),
            short_names: leak_all(&names.short_names),
            namespaced,
            categories: leak_all(&names.categories),
        }))
    })
}

/// The strings of a JSON list (none when it is not one).
pub fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The accepted names of a CRD (`spec.names`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Names {
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
}

impl Names {
    pub fn of(crd: &Value) -> Names {
        let names = &crd["spec"]["names"];
        let s = |k: &str| {
            names
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let kind = s("kind");
        Names {
            plural: s("plural"),
            singular: Some(s("singular"))
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| kind.to_ascii_lowercase()),
            list_kind: Some(s("listKind"))
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| format!("{kind}List")),
            kind,
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "plural": self.plural, "singular": self.singular,
            "kind": self.kind, "listKind": self.list_kind,
        });
        if !self.short_names.is_empty() {
            v["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            v["categories"] = json!(self.categories);
        }
        v
    }
}

/// Kubernetes' version order: GA before beta before alpha, higher
/// numbers first, then anything else by name (`kube-aware` sorting),
/// which discovery uses to pick the preferred version.
pub fn version_priority(version: &str) -> (u8, i64, i64, String) {
    let parse = |rest: &str| -> Option<(u8, i64, i64)> {
        let (major, tail) = match rest.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let major: i64 = major.parse().ok()?;
        if tail.is_empty() {
            return Some((0, -major, 0));
        }
        for (stage, word) in [(1, "beta"), (2, "alpha")] {
            if let Some(n) = tail.strip_prefix(word) {
                let minor: i64 = if n.is_empty() { 0 } else { n.parse().ok()? };
                return Some((stage, -major, -minor));
            }
        }
        None
    };
    match version.strip_prefix('v').and_then(parse) {
        Some((stage, major, minor)) => (stage, major, minor, String::new()),
        None => (3, 0, 0, version.to_string()),
    }
}

/// A custom kind's shape, as `Typed` gives it to the registry: what is
/// stored is the object pruned and defaulted by its schema, its
/// metadata as an ObjectMeta, at the storage version.
struct CustomTyped {
    schema: Arc<Schema>,
    /// `openAPIV3Schema` as written, for `/openapi/v3`.
    raw: Value,
    stored_api_version: String,
    /// `io.mube.example.v1.NodeGroup`: where `/openapi/v3` files the schema.
    component: String,
}

impl Typed for CustomTyped {
    fn canonical(&self, object: &Value) -> Result<Value, String> {
        let mut out = object.clone();
        let map = out
            .as_object_mut()
            .ok_or_else(|| "the object must be a JSON object".to_string())?;
        if let Some(meta) = map.get("metadata") {
            let meta: ObjectMeta =
                serde_json::from_value(meta.clone()).map_err(|e| format!("metadata: {e}"))?;
            map.insert(
                "metadata".into(),
                serde_json::to_value(meta).map_err(|e| e.to_string())?,
            );
        }
        map.insert("apiVersion".into(), json!(self.stored_api_version));
        // As Kubernetes: defaults first, then pruning, so that a default
        // holding fields its schema does not define is pruned too.
        self.schema.apply_defaults(&mut out);
        let mut pruned = Vec::new();
        self.schema.prune(&mut out, "", &mut pruned);
        Ok(out)
    }

    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        let meta = generator.subschema_for::<ObjectMeta>();
        let mut schema = self.raw.clone();
        if let Some(props) = schema
            .as_object_mut()
            .map(|s| s.entry("properties").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
        {
            props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
            props.insert(
                "metadata".into(),
                json!({"allOf": [meta.to_value()], "description": "Standard object's metadata."}),
            );
        }
        generator
            .definitions_mut()
            .insert(self.component.clone(), schema);
        self.component.clone()
    }
}

/// `example.mube.io` + `v1` + `NodeGroup` -> `io.mube.example.v1.NodeGroup`,
/// Kubernetes' name for a custom kind's schema.
fn component_name(group: &str, version: &str, kind: &str) -> String {
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", reversed.join("."))
}

/// Not `garbage_collected`: the controller manager's garbage collector
/// watches a fixed set of kinds, so a foreground or orphan delete of a
/// custom object means what Background means (its finalizer would wait
/// for a collector that never comes).
struct CustomStrategy {
    typed: CustomTyped,
    status: bool,
    scale: Option<ScalePaths>,
    storage_root: String,
    /// Set when this version is not the storage version.
    storage_version: Option<String>,
    /// This version stands for the stored objects when walking every kind.
    stands_for_storage: bool,
}

impl Strategy for CustomStrategy {
    fn typed(&self) -> &dyn Typed {
        &self.typed
    }

    fn validate(&self, object: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.typed.schema.validate(object, "", &mut errors);
        errors
    }

    fn prepare_for_create(&self, object: &mut Value, _now: Timestamp) {
        // With a status subresource, status is written only through it.
        if self.status {
            if let Some(map) = object.as_object_mut() {
                map.remove("status");
            }
        }
    }

    fn status_subresource(&self) -> bool {
        self.status
    }

    fn scale_subresource(&self) -> bool {
        self.scale.is_some()
    }

    fn scale_paths(&self) -> Option<&ScalePaths> {
        self.scale.as_ref()
    }

    fn storage_root(&self) -> Option<&str> {
        Some(&self.storage_root)
    }

    fn storage_version(&self) -> Option<&str> {
        self.storage_version.as_deref()
    }

    fn stands_for_storage(&self) -> bool {
        self.stands_for_storage
    }

    /// As Kubernetes for custom kinds: any change but to metadata moves
    /// the generation, and with a status subresource not status either.
    fn generation_changed(&self, new: &Value, old: &Value) -> bool {
        let rest = |v: &Value| -> Value {
            let mut v = v.clone();
            if let Some(map) = v.as_object_mut() {
                map.remove("metadata");
                map.remove("apiVersion");
                if self.status {
                    map.remove("status");
                }
            }
            v
        };
        rest(new) != rest(old)
    }
}

/// One `additionalPrinterColumns` entry.
struct PrinterColumn {
    column: Column,
    path: JsonPath,
}

/// A custom kind's server-side Table: NAME, then the CRD's columns (AGE
/// when it names none), as Kubernetes prints custom kinds.
struct CustomTable {
    columns: Vec<PrinterColumn>,
}

impl TableConvertor for CustomTable {
    fn columns(&self) -> Vec<Column> {
        if self.columns.is_empty() {
            return vec![Column::name(), Column::age()];
        }
        std::iter::once(Column::name())
            .chain(self.columns.iter().map(|c| c.column.clone()))
            .collect()
    }

    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        if self.columns.is_empty() {
            return vec![json!(name_of(object)), json!(age_of(object, now))];
        }
        let mut cells = vec![json!(name_of(object))];
        for c in &self.columns {
            let found = c.path.find(object);
            let cell = match found.as_slice() {
                [] => Value::Null,
                [one] if c.column.type_ == "date" => {
                    match one.as_str().and_then(|s| s.parse::<Timestamp>().ok()) {
                        Some(t) => json!(mube_apis::table::human_age(Some(t), now)),
                        None => (*one).clone(),
                    }
                }
                [one] => (*one).clone(),
                many => json!(many
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")),
            };
            cells.push(cell);
        }
        cells
    }
}

/// The kinds a CRD serves: one `Resource` per served version, or why its
/// data cannot be served (validation refuses such a CRD, so this is for a
/// CRD stored before a rule existed).
pub fn served_versions(crd: &Value) -> Result<Vec<Resource>, String> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or("");
    let names = Names::of(crd);
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let storage = versions
        .iter()
        .find(|v| v["storage"].as_bool() == Some(true))
        .and_then(|v| v["name"].as_str())
        .ok_or("no storage version")?
        .to_string();
    let mut served: Vec<&Value> = versions
        .iter()
        .filter(|v| v["served"].as_bool() == Some(true))
        .collect();
    served.sort_by_key(|v| version_priority(v["name"].as_str().unwrap_or("")));
    // When the storage version is not served, the preferred served one
    // stands for the stored objects (namespace deletion must reach them).
    let storage_served = served
        .iter()
        .any(|v| v["name"].as_str() == Some(storage.as_str()));
    let mut out = Vec::new();
    for (i, v) in served.into_iter().enumerate() {
        let version = v["name"].as_str().unwrap_or("");
        let raw = v
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .unwrap_or_else(
                || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        let schema = Schema::compile(&raw, "openAPIV3Schema").map_err(|errors| {
            errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join(", ")
        })?;
        let info = intern(group, version, &names, namespaced);
        let subresources = &v["subresources"];
        let scale = subresources
            .get("scale")
            .filter(|s| s.is_object())
            .and_then(|s| {
                let pointer = |k: &str| {
                    s.get(k)
                        .and_then(Value::as_str)
                        .and_then(|p| JsonPath::parse(p).ok())
                        .and_then(|p| p.pointer())
                };
                Some(ScalePaths {
                    spec_replicas: pointer("specReplicasPath")?,
                    status_replicas: pointer("statusReplicasPath")?,
                    label_selector: pointer("labelSelectorPath"),
                })
            });
        let columns = v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
                Some(PrinterColumn {
                    column: Column::new(
                        s("name"),
                        s("type"),
                        s("format"),
                        s("description"),
                        c.get("priority").and_then(Value::as_i64).unwrap_or(0) as i32,
                    ),
                    path: JsonPath::parse(s("jsonPath")).ok()?,
                })
            })
            .collect();
        out.push(Resource {
            info,
            strategy: Box::new(CustomStrategy {
                typed: CustomTyped {
                    schema: Arc::new(schema),
                    raw,
                    stored_api_version: format!("{group}/{storage}"),
                    component: component_name(group, version, &names.kind),
                },
                status: subresources.get("status").is_some_and(Value::is_object),
                scale,
                storage_root: format!("/registry/{group}/{}", names.plural),
                storage_version: (version != storage).then(|| format!("{group}/{storage}")),
                stands_for_storage: version == storage || (!storage_served && i == 0),
            }),
            table: Box::new(CustomTable { columns }),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_as_kubernetes_prefers_them() {
        let mut v = vec![
            "v1alpha1", "foo", "v2beta1", "v1", "v1beta2", "v2", "v1beta1",
        ];
        v.sort_by_key(|v| version_priority(v));
        assert_eq!(
            v,
            ["v2", "v1", "v2beta1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
        );
    }

    #[test]
    fn component_names_reverse_the_group() {
        assert_eq!(
            component_name("example.mube.io", "v1", "NodeGroup"),
            "io.mube.example.v1.NodeGroup"
        );
    }
}
