//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and
//! Kubernetes' strategic merge patch.
//!
//! RFC 7386 and RFC 6902 come from the `json-patch` crate. Strategic merge
//! patch is written here: no crate implements it outside Go. It is a merge
//! patch whose lists are merged element by element where Kubernetes declares
//! a merge key for that field (conditions and addresses by `type`, owner
//! references by `uid`, finalizers as a set), and which honours the
//! `$patch: replace|delete`, `$deleteFromPrimitiveList/` and
//! `$setElementOrder/` directives kubectl sends.

use serde_json::{Map, Value};

/// A parsed PATCH body.
#[derive(Debug, Clone)]
pub enum Patch {
    Merge(Value),
    Json(json_patch::Patch),
    Strategic(Value),
}

/// How a list field merges under a strategic merge patch.
pub(super) enum ListMerge {
    /// Elements are objects matched by this key.
    ByKey(&'static str),
    /// Elements are scalars kept as a set.
    Set,
}

/// Fields with a patch strategy of `merge` in the Kubernetes types mube
/// serves. Server-side apply reads lists by the same table (`fieldset.rs`).
pub(super) fn list_strategy(path: &str) -> Option<ListMerge> {
    match path {
        "status.conditions" | "status.addresses" => Some(ListMerge::ByKey("type")),
        "metadata.ownerReferences" => Some(ListMerge::ByKey("uid")),
        "spec.containers" | "spec.initContainers" | "spec.volumes" | "spec.containers.env" => {
            Some(ListMerge::ByKey("name"))
        }
        // A workload's pod template merges as a pod does (`kubectl set
        // image` patches one container by name).
        "spec.template.spec.containers"
        | "spec.template.spec.initContainers"
        | "spec.template.spec.volumes"
        | "spec.template.spec.containers.env" => Some(ListMerge::ByKey("name")),
        "metadata.finalizers" | "spec.podCIDRs" => Some(ListMerge::Set),
        "status.images" => None,
        _ => None,
    }
}

impl Patch {
    /// Parses a body by its Content-Type; `None` for types that are not patches.
    pub fn parse(content_type: &str, body: &[u8]) -> Option<Result<Patch, String>> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        let parse_json = || {
            serde_json::from_slice::<Value>(body)
                .map_err(|e| format!("the patch is not valid JSON: {e}"))
        };
        Some(match media {
            "application/merge-patch+json" => parse_json().map(Patch::Merge),
            "application/strategic-merge-patch+json" => parse_json().map(Patch::Strategic),
            "application/json-patch+json" => serde_json::from_slice::<json_patch::Patch>(body)
                .map(Patch::Json)
                .map_err(|e| format!("the JSON patch is not valid: {e}")),
            _ => return None,
        })
    }

    /// Applies the patch to `target`.
    pub fn apply(&self, target: &mut Value) -> Result<(), String> {
        match self {
            Patch::Merge(p) => {
                json_patch::merge(target, p);
                Ok(())
            }
            Patch::Json(p) => json_patch::patch(target, p)
                .map_err(|e| format!("the JSON patch cannot be applied: {e}")),
            Patch::Strategic(p) => strategic(target, p, ""),
        }
    }
}

/// The dotted path the list table knows lists by (`status.conditions`):
/// field names only, list elements left out.
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn strategic(target: &mut Value, patch: &Value, path: &str) -> Result<(), String> {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            *target = Value::Object(replaced);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) => return Err(format!("{path}: unknown $patch directive {other:?}")),
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(object) = target else {
        unreachable!("just made an object")
    };
    for (key, value) in patch {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" {
            // Ordering hints: the merged order is already the stored order.
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (object.get_mut(field), value)
            {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        let child_path = join(path, key);
        if value.is_null() {
            object.remove(key);
            continue;
        }
        match (object.get_mut(key), value, list_strategy(&child_path)) {
            (
                Some(Value::Array(current)),
                Value::Array(items),
                Some(ListMerge::ByKey(merge_key)),
            ) => {
                merge_list_by_key(current, items, merge_key, &child_path)?;
            }
            (Some(Value::Array(current)), Value::Array(items), Some(ListMerge::Set)) => {
                for item in items {
                    if !current.contains(item) {
                        current.push(item.clone());
                    }
                }
            }
            (Some(existing @ Value::Object(_)), Value::Object(_), _) => {
                strategic(existing, value, &child_path)?;
                if existing.is_null() {
                    object.remove(key);
                }
            }
            _ => {
                let mut fresh = Value::Null;
                strategic(&mut fresh, value, &child_path)?;
                if fresh.is_null() {
                    object.remove(key);
                } else {
                    object.insert(key.clone(), strip_directives(fresh));
                }
            }
        }
    }
    Ok(())
}

/// Directives have no meaning in a value that replaces nothing.
fn strip_directives(value: Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k, strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_directives).collect()),
        other => other,
    }
}

fn merge_list_by_key(
    current: &mut Vec<Value>,
    items: &[Value],
    key: &str,
    path: &str,
) -> Result<(), String> {
    for item in items {
        let Some(id) = item.get(key) else {
            return Err(format!("{path}: every element needs the merge key {key:?}"));
        };
        let position = current.iter().position(|c| c.get(key) == Some(id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                current.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic(&mut current[i], item, path)?,
            (None, false) => current.push(strip_directives(item.clone())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(target: Value, patch: Value) -> Value {
        let mut t = target;
        Patch::Strategic(patch).apply(&mut t).unwrap();
        t
    }

    #[test]
    fn strategic_merges_maps_and_keyed_lists() {
        let node = json!({
            "metadata": {"labels": {"a": "1"}, "finalizers": ["x"]},
            "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Disk", "status": "False"}]}
        });
        let out = smp(
            node.clone(),
            json!({
                "metadata": {"labels": {"b": "2", "a": null}, "finalizers": ["y"]},
                "spec": {"unschedulable": true, "taints": [{"key": "other", "effect": "NoExecute"}]},
                "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Disk", "$patch": "delete"}],
                           "$setElementOrder/conditions": [{"type": "Ready"}]}
            }),
        );
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(out["spec"]["unschedulable"], true);
        // Taints have no merge strategy: the list is replaced.
        assert_eq!(
            out["spec"]["taints"],
            json!([{"key": "other", "effect": "NoExecute"}])
        );
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "Ready", "status": "False"}])
        );
        let replaced = smp(
            node,
            json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}}}),
        );
        assert_eq!(replaced["metadata"]["labels"], json!({"c": "3"}));
    }

    #[test]
    fn merge_and_json_patch() {
        let mut t = json!({"a": {"b": 1, "c": 2}});
        Patch::parse("application/merge-patch+json", br#"{"a":{"b":null,"d":3}}"#)
            .unwrap()
            .unwrap()
            .apply(&mut t)
            .unwrap();
        assert_eq!(t, json!({"a": {"c": 2, "d": 3}}));
        Patch::parse(
            "application/json-patch+json",
            br#"[{"op":"add","path":"/a/e","value":5},{"op":"remove","path":"/a/c"}]"#,
        )
        .unwrap()
        .unwrap()
        .apply(&mut t)
        .unwrap();
        assert_eq!(t, json!({"a": {"d": 3, "e": 5}}));
        let bad = Patch::parse(
            "application/json-patch+json",
            br#"[{"op":"remove","path":"/nope"}]"#,
        )
        .unwrap()
        .unwrap();
        assert!(bad.apply(&mut t).is_err());
        assert!(Patch::parse("application/json", b"{}").is_none());
    }
}
