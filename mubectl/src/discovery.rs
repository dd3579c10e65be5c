//! The kinds the server serves, learned from its discovery documents
//! (`/api/v1`, `/apis`, `/apis/{group}/{version}`) as kubectl learns them:
//! a kind added to the server is usable from mubectl without a new mubectl.

use mube_apis::resources::ResourceInfo;
use serde_json::Value;

use crate::client::{Client, CtlError};

/// Every served kind (subresources left out). Each `ResourceInfo` is leaked
/// to get the `&'static` form the rest of mubectl shares with the server's
/// catalogue: a short-lived CLI learns a few dozen kinds once per run.
pub async fn kinds(client: &Client) -> Result<Vec<&'static ResourceInfo>, CtlError> {
    let mut out = Vec::new();
    let core = client.get("/api/v1").await?;
    collect(&core, "", "v1", &mut out);
    let groups = client.get("/apis").await?;
    for group in groups["groups"].as_array().into_iter().flatten() {
        let name = group["name"].as_str().unwrap_or("");
        let Some(version) = group
            .pointer("/preferredVersion/version")
            .and_then(Value::as_str)
        else {
            continue;
        };
        let list = client.get(&format!("/apis/{name}/{version}")).await?;
        collect(&list, name, version, &mut out);
    }
    Ok(out)
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn collect(list: &Value, group: &str, version: &str, out: &mut Vec<&'static ResourceInfo>) {
    for r in list["resources"].as_array().into_iter().flatten() {
        let plural = r["name"].as_str().unwrap_or("");
        if plural.is_empty() || plural.contains('/') {
            continue;
        }
        let short_names: Vec<&'static str> = r["shortNames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(leak)
            .collect();
        let kind = r["kind"].as_str().unwrap_or("");
        let singular = match r["singularName"].as_str() {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => kind.to_ascii_lowercase(),
        };
        out.push(Box::leak(Box::new(ResourceInfo {
            group: leak(group),
            version: leak(version),
            kind: leak(kind),
            plural: leak(plural),
            singular: leak(&singular),
            short_names: Box::leak(short_names.into_boxed_slice()),
            namespaced: r["namespaced"].as_bool().unwrap_or(false),
            categories: &[],
        })));
    }
}

/// The kind a user's word (`nodes`, `no`, `configmap`) names.
pub async fn by_name(client: &Client, word: &str) -> Result<&'static ResourceInfo, CtlError> {
    let kinds = kinds(client).await?;
    kinds
        .iter()
        .copied()
        .find(|r| r.is_named(word))
        .ok_or_else(|| {
            CtlError::Other(format!(
                "the server doesn't have a resource type \"{word}\" (it serves: {})",
                kinds
                    .iter()
                    .map(|r| r.plural)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// The kind a manifest's `apiVersion` and `kind` name, if served.
pub fn by_type(
    kinds: &[&'static ResourceInfo],
    api_version: &str,
    kind: &str,
) -> Option<&'static ResourceInfo> {
    kinds
        .iter()
        .copied()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}
