//! Server-side printing: answering `Accept: application/json;as=Table;...`
//! with a `meta.k8s.io` Table, which `kubectl get` prints as is.

use axum::http::{header, HeaderMap};
use jiff::Timestamp;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::registry::Resource;

/// `includeObject`: what each row carries besides its cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

/// A request for a Table, and the API version it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRequest {
    pub api_version: &'static str,
    pub include: Include,
}

/// Reads the Accept header (the first media type we can produce wins) and
/// `includeObject`. `None` means plain JSON objects.
pub fn negotiate(
    headers: &HeaderMap,
    include_object: Option<&str>,
) -> Result<Option<TableRequest>, ApiError> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let include = match include_object {
        None | Some("") | Some("Metadata") => Include::Metadata,
        Some("Object") => Include::Object,
        Some("None") => Include::None,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "includeObject: unsupported value {other:?}"
            )))
        }
    };
    for media in accept.split(',') {
        let mut parts = media.split(';').map(str::trim);
        let base = parts.next().unwrap_or("");
        if !matches!(base, "application/json" | "application/*" | "*/*" | "") {
            continue;
        }
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        let get = |k: &str| params.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        match (get("as"), get("g"), get("v")) {
            (None, _, _) => return Ok(None),
            (Some("Table"), Some("meta.k8s.io"), Some("v1")) => {
                return Ok(Some(TableRequest {
                    api_version: "meta.k8s.io/v1",
                    include,
                }))
            }
            (Some("Table"), Some("meta.k8s.io"), Some("v1beta1")) => {
                return Ok(Some(TableRequest {
                    api_version: "meta.k8s.io/v1beta1",
                    include,
                }))
            }
            _ => continue,
        }
    }
    Ok(None)
}

/// One row: the kind's cells, and the object as `includeObject` asks.
fn row(r: &Resource, req: TableRequest, object: &Value, now: Timestamp) -> Value {
    let mut row = json!({"cells": r.table.cells(object, now)});
    match req.include {
        Include::None => {}
        Include::Object => row["object"] = object.clone(),
        Include::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
            })
        }
    }
    row
}

/// A Table of `objects`, encoded. `list_metadata` becomes the Table's
/// metadata (resourceVersion, continue); `headers` adds `columnDefinitions`.
///
/// Rows are encoded one at a time from each object's stored JSON, so a
/// Table of 100,000 nodes never holds 100,000 parsed objects at once.
pub fn render<'a>(
    r: &Resource,
    req: TableRequest,
    objects: impl IntoIterator<Item = &'a [u8]>,
    list_metadata: Value,
    headers: bool,
) -> Result<Vec<u8>, ApiError> {
    let now = Timestamp::now();
    let columns = if headers {
        serde_json::to_value(r.table.columns()).unwrap_or_else(|_| json!([]))
    } else {
        json!([])
    };
    let head = json!({
        "kind": "Table",
        "apiVersion": req.api_version,
        "metadata": list_metadata,
        "columnDefinitions": columns,
    })
    .to_string();
    let mut out = Vec::with_capacity(head.len() + 64);
    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    out.extend_from_slice(b",\"rows\":[");
    for (i, bytes) in objects.into_iter().enumerate() {
        let object: Value = serde_json::from_slice(bytes).map_err(|e| {
            ApiError::new(
                mube_apis::status::Reason::InternalError,
                format!("stored object is corrupt: {e}"),
            )
        })?;
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &row(r, req, &object, now))
            .map_err(|e| ApiError::new(mube_apis::status::Reason::InternalError, e.to_string()))?;
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}
