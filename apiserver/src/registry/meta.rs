//! The metadata rules every kind shares: `apiVersion`/`kind`, namespace,
//! and `metadata.resourceVersion` as a precondition.

use jiff::Timestamp;
use serde_json::{json, Value};

use super::Resource;
use crate::error::ApiError;
use crate::store::{Revision, StoreError, StoredObject};

pub(super) fn time(ts: Timestamp) -> Value {
    serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts))
        .unwrap_or(Value::Null)
}

/// `apiVersion` and `kind` must name this resource; missing ones are filled in.
pub(super) fn check_type(r: &Resource, object: &mut Value) -> Result<(), ApiError> {
    let obj = object
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    let api_version = r.api_version();
    for (field, want) in [("apiVersion", api_version.as_str()), ("kind", r.kind)] {
        match obj.get(field) {
            None | Some(Value::Null) => {
                obj.insert(field.into(), json!(want));
            }
            Some(Value::String(s)) if s == want => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "{field} {other} does not match the request: expected {want:?}"
                )))
            }
        }
    }
    Ok(())
}

pub(super) fn metadata_mut(
    object: &mut Value,
) -> Result<&mut serde_json::Map<String, Value>, ApiError> {
    let obj = object
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

pub(super) fn set_namespace(
    r: &Resource,
    meta: &mut serde_json::Map<String, Value>,
    namespace: Option<&str>,
) -> Result<(), ApiError> {
    if !r.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let Some(ns) = namespace else {
        return Err(ApiError::bad_request(format!(
            "{} are namespaced: use a /namespaces/{{namespace}}/ path",
            r.plural
        )));
    };
    match meta.get("namespace").and_then(Value::as_str) {
        Some(given) if !given.is_empty() && given != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            meta.insert("namespace".into(), json!(ns));
            Ok(())
        }
    }
}

/// The one parser of a resourceVersion a client sends, in a query, a body
/// or a continue token: a revision, or 400 naming `field`. mube's
/// resourceVersions are revisions, as etcd's are; clients must treat them
/// as opaque, and the server need not accept anything else.
pub fn parse_resource_version(value: &str, field: &str) -> Result<Revision, ApiError> {
    value.parse::<Revision>().map_err(|_| {
        ApiError::bad_request(format!(
            "{field}: invalid value {value:?}: must be a number"
        ))
    })
}

/// `metadata.resourceVersion` in a written object: a precondition when set
/// (a string holding a revision), none when absent or empty.
pub(super) fn resource_version_precondition(
    meta: &serde_json::Map<String, Value>,
) -> Result<Option<Revision>, ApiError> {
    match meta.get("resourceVersion") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => parse_resource_version(s, "metadata.resourceVersion").map(Some),
        Some(other) => Err(ApiError::bad_request(format!(
            "metadata.resourceVersion: must be a string, got {other}"
        ))),
    }
}

/// 409 Conflict unless the stored object is at `expected`.
pub(super) fn stale(
    expected: Option<Revision>,
    current: &StoredObject,
    r: &Resource,
    name: &str,
) -> Result<(), ApiError> {
    match expected {
        Some(expected) if expected != current.revision => Err(ApiError::from_store(
            StoreError::Conflict {
                key: current.key.to_string(),
                expected,
                actual: current.revision,
            },
            r,
            name,
        )),
        _ => Ok(()),
    }
}

/// The object's name is the URL's: a body naming another object is 400, a
/// body naming none gets the URL's.
pub(super) fn name_from_url(
    meta: &mut serde_json::Map<String, Value>,
    name: &str,
) -> Result<(), ApiError> {
    match meta.get("name").and_then(Value::as_str) {
        Some(n) if n != name => Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        ))),
        _ => {
            meta.insert("name".into(), json!(name));
            Ok(())
        }
    }
}

/// What a write to one named object checks of its body first (PUT and
/// apply alike): the kind, the name and namespace of the URL, and a
/// `metadata.resourceVersion` precondition, which it returns.
pub(super) fn identify(
    r: &Resource,
    object: &mut Value,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<Revision>, ApiError> {
    check_type(r, object)?;
    let meta = metadata_mut(object)?;
    name_from_url(meta, name)?;
    set_namespace(r, meta, namespace)?;
    resource_version_precondition(meta)
}
