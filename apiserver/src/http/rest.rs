//! The one REST handler every resource kind is served by.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use mube_apis::status::Reason;
use serde_json::Value;

use super::path::{self, Target};
use super::response::{json, read_body, read_object};
use super::{watch, AppState};
use crate::error::ApiError;
use crate::registry::{Filter, Part, Resource};
use crate::store::{Revision, StoredObject};

/// Query parameters of list, watch and delete.
#[derive(Debug, Default)]
pub struct Params {
    pub watch: bool,
    pub resource_version: Option<String>,
    pub timeout: Option<Duration>,
    pub allow_bookmarks: bool,
    pub send_initial_events: bool,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
}

fn flag(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" | "1" | "True" => Ok(true),
        "false" | "0" | "False" | "" => Ok(false),
        other => Err(ApiError::bad_request(format!(
            "{name}: invalid boolean {other:?}"
        ))),
    }
}

impl Params {
    pub fn parse(query: Option<&str>) -> Result<Params, ApiError> {
        let pairs: HashMap<String, String> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| pairs.get(k).map(String::as_str);
        let timeout = match get("timeoutSeconds") {
            None | Some("") => None,
            Some(s) => Some(Duration::from_secs(s.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("timeoutSeconds: invalid value {s:?}"))
            })?)),
        };
        Ok(Params {
            watch: get("watch")
                .map(|v| flag("watch", v))
                .transpose()?
                .unwrap_or(false),
            resource_version: get("resourceVersion")
                .filter(|v| !v.is_empty())
                .map(str::to_string),
            timeout,
            allow_bookmarks: get("allowWatchBookmarks")
                .map(|v| flag("allowWatchBookmarks", v))
                .transpose()?
                .unwrap_or(false),
            send_initial_events: get("sendInitialEvents")
                .map(|v| flag("sendInitialEvents", v))
                .transpose()?
                .unwrap_or(false),
            label_selector: get("labelSelector").map(str::to_string),
            field_selector: get("fieldSelector").map(str::to_string),
        })
    }

    /// `resourceVersion` as a revision; `None` for absent or "0" (any).
    pub fn revision(&self) -> Result<Option<Revision>, ApiError> {
        match self.resource_version.as_deref() {
            None | Some("0") => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| {
                ApiError::new(
                    Reason::BadRequest,
                    format!("resourceVersion: invalid value {s:?}: must be a number"),
                )
            }),
        }
    }
}

/// Serves `/api/...` (the core group) and `/apis/...` (named groups).
pub async fn handle(
    State(state): State<AppState>,
    uri: Uri,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let target = path::parse(uri.path()).ok_or_else(|| not_found_path(uri.path()))?;
    serve(
        state,
        target,
        method,
        uri.query().map(str::to_string),
        headers,
        body,
    )
    .await
}

pub fn not_found_path(path: &str) -> ApiError {
    ApiError::new(
        Reason::NotFound,
        format!("the server could not find the requested resource ({path})"),
    )
}

fn method_not_allowed(method: &Method, what: &str) -> ApiError {
    ApiError::new(
        Reason::MethodNotAllowed,
        format!(
            "the server does not allow this method on the requested resource: {method} on {what}"
        ),
    )
}

fn object_response(code: StatusCode, object: &StoredObject) -> Response {
    json(code, object.json.clone())
}

async fn serve(
    state: AppState,
    target: Target,
    method: Method,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let r = state
        .registry
        .lookup(&target.group, &target.version, &target.plural)
        .ok_or_else(|| not_found_path(&target.plural))?;
    if target.namespace.is_some() && !r.namespaced {
        return Err(ApiError::new(
            Reason::NotFound,
            format!("{} are not namespaced", r.plural),
        ));
    }
    let ns = target.namespace.as_deref();
    let registry = &state.registry;
    let params = Params::parse(query.as_deref())?;
    match (&target.name, target.subresource.as_deref()) {
        (None, _) => match method {
            Method::GET => {
                let filter = Filter::parse(
                    &r,
                    params.label_selector.as_deref(),
                    params.field_selector.as_deref(),
                )?;
                if params.watch {
                    watch::serve(&state, r, ns, filter, &params).await
                } else {
                    list(&state, &r, ns, &filter).await
                }
            }
            Method::POST if ns.is_some() || !r.namespaced => {
                let object = read_object(&headers, body).await?;
                let created = registry.create(&r, ns, object).await?;
                Ok(object_response(StatusCode::CREATED, &created))
            }
            _ => Err(method_not_allowed(&method, r.plural)),
        },
        (Some(name), sub @ (None | Some("status"))) => {
            let part = if sub.is_some() {
                if !r.status_subresource {
                    return Err(not_found_path(&format!("{}/{name}/status", r.plural)));
                }
                Part::Status
            } else {
                Part::Main
            };
            match method {
                Method::GET => Ok(object_response(
                    StatusCode::OK,
                    &registry.get(&r, ns, name).await?,
                )),
                Method::PUT => {
                    let object = read_object(&headers, body).await?;
                    let updated = registry.update(&r, ns, name, part, object).await?;
                    Ok(object_response(StatusCode::OK, &updated))
                }
                Method::DELETE if part == Part::Main => {
                    let precondition = delete_precondition(body).await?;
                    let deleted = registry.delete(&r, ns, name, precondition).await?;
                    Ok(object_response(StatusCode::OK, &deleted))
                }
                _ => Err(method_not_allowed(&method, &format!("{}/{name}", r.plural))),
            }
        }
        (Some(name), Some(sub)) => Err(not_found_path(&format!("{}/{name}/{sub}", r.plural))),
    }
}

/// `DeleteOptions.preconditions.resourceVersion`, if the body carries one.
async fn delete_precondition(body: Body) -> Result<Option<Revision>, ApiError> {
    let bytes = read_body(body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let options: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}"))
    })?;
    match options.pointer("/preconditions/resourceVersion") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "preconditions.resourceVersion: invalid value {s:?}"
            ))
        }),
        Some(other) => Err(ApiError::bad_request(format!(
            "preconditions.resourceVersion: invalid value {other}"
        ))),
    }
}

/// `{kind}List` with the revision it was read at. Items are the stored JSON
/// bytes, spliced in without re-encoding.
async fn list(
    state: &AppState,
    r: &Arc<Resource>,
    ns: Option<&str>,
    filter: &Filter,
) -> Result<Response, ApiError> {
    let (items, revision) = state.registry.list(r, ns, filter).await?;
    let head = serde_json::json!({
        "kind": format!("{}List", r.kind),
        "apiVersion": r.api_version(),
        "metadata": {"resourceVersion": revision.to_string()},
    })
    .to_string();
    let total: usize = items.iter().map(|i| i.json.len() + 1).sum();
    let mut out = Vec::with_capacity(head.len() + total + 16);
    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&item.json);
    }
    out.extend_from_slice(b"]}");
    Ok(json(StatusCode::OK, out))
}
