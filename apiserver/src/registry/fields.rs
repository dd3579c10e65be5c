//! The typed shape of objects: what is stored (the kind's Kubernetes type,
//! serialized), which fields a body sends that the type does not define
//! (`fieldValidation`), and the checks every object passes.

use mube_apis::validation::{self, FieldError};
use serde_json::{json, Value};

use super::Resource;
use crate::error::ApiError;

/// Paths (`spec.foo`) of fields in `sent` that the typed form `kept` lacks:
/// the unknown fields `fieldValidation=Strict` refuses. `extra` lists mube's
/// own additions, which are known. Nulls and `$` directives are not fields.
pub fn unknown_fields(
    sent: &Value,
    kept: &Value,
    path: &str,
    extra: &[&str],
    out: &mut Vec<String>,
) {
    match (sent, kept) {
        (Value::Object(s), Value::Object(k)) => {
            for (key, value) in s {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if value.is_null() || key.starts_with('$') || extra.contains(&child.as_str()) {
                    continue;
                }
                match k.get(key) {
                    Some(kept_value) => unknown_fields(value, kept_value, &child, extra, out),
                    None => out.push(child),
                }
            }
        }
        (Value::Array(s), Value::Array(k)) => {
            for (i, (a, b)) in s.iter().zip(k.iter()).enumerate() {
                unknown_fields(a, b, &format!("{path}[{i}]"), extra, out);
            }
        }
        _ => {}
    }
}

fn shape_error(r: &Resource, message: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{} in version \"{}\" cannot be handled as a {}: {message}",
        r.kind, r.version, r.kind
    ))
}

/// `fieldValidation`: what to do with fields the kind does not define.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(value: Option<&str>) -> Result<FieldValidation, ApiError> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: invalid value {other:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
            ))),
        }
    }
}

/// Checks a request body (an object, or a merge/strategic patch) for fields
/// the kind does not define. Strict refuses them (400, as Kubernetes does);
/// Warn returns them as warnings; either way nothing is dropped from storage.
pub fn check_fields(
    r: &Resource,
    body: &Value,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    if mode == FieldValidation::Ignore || !body.is_object() {
        return Ok(Vec::new());
    }
    // A patch deletes with null and steers with `$` directives: neither is a field.
    let mut typed = without_nulls_and_directives(body.clone());
    if let Some(obj) = typed.as_object_mut() {
        obj.insert("apiVersion".into(), json!(r.api_version()));
        obj.insert("kind".into(), json!(r.kind));
    }
    let kept = r
        .strategy
        .typed()
        .canonical(&typed)
        .map_err(|m| shape_error(r, &m))?;
    let mut unknown = Vec::new();
    unknown_fields(&typed, &kept, "", r.strategy.extra_fields(), &mut unknown);
    let messages: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if mode == FieldValidation::Strict && !messages.is_empty() {
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            messages.join(", ")
        )));
    }
    Ok(messages)
}

fn without_nulls_and_directives(value: Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, v)| !v.is_null() && !k.starts_with('$'))
                .map(|(k, v)| (k, without_nulls_and_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls_and_directives).collect()),
        other => other,
    }
}

/// The object as the kind's Kubernetes type serializes it: every field the
/// type requires present, fields it does not define dropped (a client was
/// warned of them, or refused under `fieldValidation=Strict`), as a
/// Kubernetes server stores what it decoded. mube's own additions to a
/// type (`extra_fields`) are kept. Every write goes through this, so
/// every object served has Kubernetes' shape.
pub(super) fn canonicalize(r: &Resource, object: &mut Value) -> Result<(), ApiError> {
    let mut kept = r
        .strategy
        .typed()
        .canonical(object)
        .map_err(|m| shape_error(r, &m))?;
    for extra in r.strategy.extra_fields() {
        let mut from = Some(&*object);
        for key in extra.split('.') {
            from = from.and_then(|v| v.get(key));
        }
        if let Some(value) = from {
            let keys: Vec<&str> = extra.split('.').collect();
            put(&mut kept, &keys, value.clone());
        }
    }
    *object = kept;
    Ok(())
}

/// Sets the field at `keys`, making the objects on the way.
fn put(target: &mut Value, keys: &[&str], value: Value) {
    let Some(map) = target.as_object_mut() else {
        return;
    };
    match keys {
        [last] => {
            map.insert((*last).to_string(), value);
        }
        [first, rest @ ..] => put(map.entry(*first).or_insert_with(|| json!({})), rest, value),
        [] => {}
    }
}

/// Generic checks (name, labels, annotations) plus the kind's own, on an
/// object already `canonicalize`d.
pub(super) fn validate(r: &Resource, name: &str, object: &Value) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if name.is_empty() {
        errors.push(FieldError::new(
            "metadata.name",
            "Required value: name or generateName is required",
        ));
    } else if let Err(m) = r.strategy.validate_name(name) {
        errors.push(FieldError::new("metadata.name", m));
    }
    let meta = object.get("metadata");
    let labels = meta.and_then(|m| m.get("labels"));
    let annotations = meta.and_then(|m| m.get("annotations"));
    let as_map = |v: Option<&Value>,
                  field: &str|
     -> Result<Option<std::collections::BTreeMap<String, String>>, ApiError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| ApiError::bad_request(format!("{field}: {e}"))),
        }
    };
    let labels = as_map(labels, "metadata.labels")?;
    let annotations = as_map(annotations, "metadata.annotations")?;
    errors.extend(validation::labels_and_annotations(
        labels.as_ref(),
        annotations.as_ref(),
    ));
    errors.extend(r.strategy.validate(object));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(r, name, errors))
    }
}
