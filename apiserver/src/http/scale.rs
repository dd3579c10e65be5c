//! The `scale` subresource (`autoscaling/v1` Scale): a view of a workload's
//! `spec.replicas`, `status.replicas` and selector, which `kubectl scale`
//! (and autoscalers) read and write without knowing the workload's kind.
//! A write changes only `spec.replicas`, through the same patch path as any
//! other write (validation, managedFields, dry run).

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use mube_apis::status::Reason;
use mube_apis::validation::FieldError;
use serde_json::{json, Value};

use super::options;
use super::response::{json, read_body, read_object};
use super::rest::Params;
use super::AppState;
use crate::error::ApiError;
use crate::registry::patch::Patch;
use crate::registry::{DryRun, Part, Resource};

/// The Scale of a stored workload: at `spec.replicas`, `status.replicas`
/// and a `spec.selector` LabelSelector, or where a custom kind's CRD says.
fn scale_of(r: &Resource, object: &Value) -> Value {
    let paths = r.strategy.scale_paths();
    let meta = &object["metadata"];
    let mut metadata = serde_json::Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(field) {
            metadata.insert(field.into(), v.clone());
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": object.pointer(spec_replicas(r)).and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": object.pointer(paths.map_or("/status/replicas", |p| &p.status_replicas)).and_then(Value::as_i64).unwrap_or(0),
            "selector": match paths {
                Some(p) => p.label_selector.as_deref().and_then(|s| object.pointer(s)).and_then(Value::as_str).unwrap_or_default().to_string(),
                None => crate::registry::apps::selector_string(object).unwrap_or_default(),
            },
        },
    })
}

/// Where the kind keeps its wanted replicas (a JSON pointer).
fn spec_replicas(r: &Resource) -> &str {
    r.strategy
        .scale_paths()
        .map_or("/spec/replicas", |p| &p.spec_replicas)
}

/// The replicas and resourceVersion precondition a written Scale asks for.
fn wanted(r: &Resource, name: &str, scale: &Value) -> Result<(i64, Option<String>), ApiError> {
    let replicas = match scale.pointer("/spec/replicas") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_i64().ok_or_else(|| {
            ApiError::invalid(
                r,
                name,
                vec![FieldError::new(
                    "spec.replicas",
                    format!("Invalid value: {v}: must be an integer"),
                )],
            )
        })?,
    };
    if replicas < 0 {
        return Err(ApiError::invalid(
            r,
            name,
            vec![FieldError::new(
                "spec.replicas",
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            )],
        ));
    }
    let version = scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    Ok((replicas, version))
}

#[allow(clippy::too_many_arguments)] // the request's parts, each distinct
pub async fn serve(
    state: &AppState,
    r: &Resource,
    ns: Option<&str>,
    name: &str,
    method: Method,
    query: Option<&str>,
    params: &Params,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let registry = &state.registry;
    let reply = |object: &Value| Ok(json(StatusCode::OK, scale_of(r, object).to_string()));
    match method {
        Method::GET => reply(&registry.get(r, ns, name).await?.value()?),
        Method::PUT => {
            let dry_run = options::dry_run(query, "UpdateOptions")?;
            let manager = params.manager(headers, "UpdateOptions")?;
            let body = read_object(headers, body).await?;
            let (replicas, version) = wanted(r, name, &body)?;
            let written = write(state, r, ns, name, replicas, version, &manager, dry_run).await?;
            reply(&written)
        }
        Method::PATCH => {
            let dry_run = options::dry_run(query, "PatchOptions")?;
            let manager = params.manager(headers, "PatchOptions")?;
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let bytes = read_body(body).await?;
            let patch = match Patch::parse(content_type, &bytes) {
                Some(p) => p.map_err(ApiError::bad_request)?,
                None => return Err(ApiError::new(
                    Reason::UnsupportedMediaType,
                    format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"),
                )),
            };
            // The patch applies to the Scale as it is now; a write between
            // the read and ours is retried on the newer one, unless the
            // patch itself named the resourceVersion it expects.
            let mut attempts = 0;
            loop {
                let current = scale_of(r, &registry.get(r, ns, name).await?.value()?);
                let mut patched = current.clone();
                patch.apply(&mut patched).map_err(ApiError::bad_request)?;
                let (replicas, version) = wanted(r, name, &patched)?;
                let client_version = patched.pointer("/metadata/resourceVersion")
                    != current.pointer("/metadata/resourceVersion");
                match write(state, r, ns, name, replicas, version, &manager, dry_run).await {
                    Err(e) if e.code() == 409 && !client_version && attempts < 5 => attempts += 1,
                    Err(e) => return Err(e),
                    Ok(written) => return reply(&written),
                }
            }
        }
        _ => Err(ApiError::new(
            Reason::MethodNotAllowed,
            format!("the server does not allow this method on the requested resource: {method} on {}/{name}/scale", r.plural),
        )),
    }
}

#[allow(clippy::too_many_arguments)] // the request's parts, each distinct
async fn write(
    state: &AppState,
    r: &Resource,
    ns: Option<&str>,
    name: &str,
    replicas: i64,
    version: Option<String>,
    manager: &str,
    dry_run: DryRun,
) -> Result<Value, ApiError> {
    // A merge patch of the one field, built along the kind's path.
    let mut change = json!(replicas);
    for key in spec_replicas(r).rsplit('/').filter(|k| !k.is_empty()) {
        let key = key.replace("~1", "/").replace("~0", "~");
        change = json!({ key: change });
    }
    if let Some(v) = version {
        change["metadata"] = json!({"resourceVersion": v});
    }
    let written = state
        .registry
        .patch(
            r,
            ns,
            name,
            Part::Main,
            &Patch::Merge(change),
            manager,
            dry_run,
        )
        .await?;
    Ok(written.value()?)
}
