//! `mubectl apply -f FILE`: create what is missing, update what exists.
//!
//! An update merges the manifest into the stored object (JSON merge patch
//! semantics, RFC 7386), so fields the manifest does not mention — the
//! status, annotations the server set — are kept, and re-applying an
//! unchanged manifest writes nothing. `--dry-run=server` sends the same
//! writes with `dryRun=All`; `--dry-run=client` sends none.

use serde::Deserialize;
use serde_json::Value;

use crate::client::{Client, CtlError};
use crate::DryRun;

/// Every object in a file: YAML documents (`---`-separated) or JSON, with
/// `List` kinds expanded into their items.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        match value {
            Value::Null => {}
            Value::Object(ref m)
                if m.get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List")) =>
            {
                out.extend(
                    m.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            Value::Object(_) => out.push(value),
            _ => return Err(format!("document {}: not an object", i + 1)),
        }
    }
    Ok(out)
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

pub async fn run(
    client: &Client,
    file: &str,
    default_namespace: &str,
    dry_run: DryRun,
) -> Result<(), CtlError> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| CtlError::Other(format!("reading stdin: {e}")))?
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| CtlError::Other(format!("cannot read {file}: {e}")))?
    };
    let docs = documents(&text).map_err(|e| CtlError::Other(format!("{file}: {e}")))?;
    if docs.is_empty() {
        return Err(CtlError::Other(format!(
            "no objects passed to apply ({file})"
        )));
    }
    let kinds = crate::discovery::kinds(client).await?;
    // Many objects take a while: a bar on a terminal (nothing for one).
    let bar = crate::progress::bar(docs.len() as u64, false);
    for doc in docs {
        let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        let info = crate::discovery::by_type(&kinds, api_version, kind).ok_or_else(|| {
            CtlError::Other(format!(
                "{file}: no kind {kind:?} is served in version {api_version:?}"
            ))
        })?;
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| CtlError::Other(format!("{file}: a {kind} without metadata.name")))?
            .to_string();
        let namespace = doc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(default_namespace)
            .to_string();
        let path = info.path(Some(&namespace), Some(&name));
        let outcome = match client.get(&path).await {
            Err(e) if e.code() == Some(404) => {
                if dry_run != DryRun::Client {
                    let collection = info.path(Some(&namespace), None);
                    client.post(&dry_run.path(&collection), &doc).await?;
                }
                "created"
            }
            Err(e) => return Err(e),
            Ok(live) => {
                let mut current = live.clone();
                let before = current.pointer("/metadata/resourceVersion").cloned();
                merge(&mut current, &doc);
                // Keep the version we read: a concurrent change is a conflict, not lost.
                if let (Some(meta), Some(rv)) = (
                    current.get_mut("metadata").and_then(Value::as_object_mut),
                    &before,
                ) {
                    meta.insert("resourceVersion".into(), rv.clone());
                }
                let unchanged = match dry_run {
                    // The server keeps the stored status on such a write.
                    DryRun::Client => without_status(&current) == without_status(&live),
                    // A dry run takes no new resourceVersion: compare the objects.
                    DryRun::Server => client.put(&dry_run.path(&path), &current).await? == live,
                    DryRun::None => {
                        let updated = client.put(&path, &current).await?;
                        updated.pointer("/metadata/resourceVersion") == before.as_ref()
                    }
                };
                if unchanged {
                    "unchanged"
                } else {
                    "configured"
                }
            }
        };
        bar.inc(1);
        bar.suspend(|| println!("{}/{name} {outcome}{}", info.singular, dry_run.suffix()));
    }
    bar.finish_and_clear();
    Ok(())
}

/// `object` less its `status`, which a write of the object never changes.
fn without_status(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(o) = object.as_object_mut() {
        o.remove("status");
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_multi_document_yaml_and_lists() {
        let docs = documents("apiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\n---\n{\"kind\": \"NodeList\", \"items\": [{\"metadata\": {\"name\": \"b\"}}]}\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["metadata"]["name"], "b");
        assert!(documents("- 1\n").is_err());
    }

    #[test]
    fn merge_patch() {
        let mut t = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "annotations": {"x": "y"}}, "status": {"s": 1}});
        merge(
            &mut t,
            &json!({"metadata": {"labels": {"a": "9", "b": null}}}),
        );
        assert_eq!(
            t,
            json!({"metadata": {"labels": {"a": "9"}, "annotations": {"x": "y"}}, "status": {"s": 1}})
        );
    }
}
