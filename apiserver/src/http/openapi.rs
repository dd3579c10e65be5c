//! `/openapi/v3`: just enough OpenAPI for clients to learn what the server
//! supports. kubectl reads it to see that PATCH takes `fieldValidation`, and
//! then leaves validation of `apply`/`create` to the server (Strict). Each
//! operation carries `x-kubernetes-group-version-kind` and
//! `x-kubernetes-action` as Kubernetes' own document does. Object schemas
//! are not served (`kubectl explain` is not supported).

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::response::json as json_response;
use super::rest::not_found_path;
use super::AppState;
use crate::error::ApiError;
use crate::registry::Resource;

/// The group-version paths (`api/v1`, `apis/coordination.k8s.io/v1`).
fn group_versions(state: &AppState) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in state.registry.resources() {
        let gv = if r.group.is_empty() {
            format!("api/{}", r.version)
        } else {
            format!("apis/{}/{}", r.group, r.version)
        };
        if !out.contains(&gv) {
            out.push(gv);
        }
    }
    out
}

pub async fn root(State(state): State<AppState>) -> Response {
    let paths: Map<String, Value> = group_versions(&state)
        .into_iter()
        .map(|gv| {
            let url = format!("/openapi/v3/{gv}?hash={}", env!("CARGO_PKG_VERSION"));
            (gv, json!({"serverRelativeURL": url}))
        })
        .collect();
    json_response(StatusCode::OK, json!({"paths": paths}).to_string())
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(r: &Resource, action: &str, params: Vec<Value>) -> Value {
    json!({
        "operationId": format!("{action}{}", r.kind),
        "parameters": params,
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
    })
}

fn paths_for(r: &Resource) -> Vec<(String, Value)> {
    let validation = || {
        query_param(
            "fieldValidation",
            "Ignore, Warn (default) or Strict: what to do with unknown fields.",
        )
    };
    let prefix = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let scope = if r.namespaced {
        "/namespaces/{namespace}"
    } else {
        ""
    };
    let collection = format!("{prefix}{scope}/{}", r.plural);
    let item = format!("{collection}/{{name}}");
    let list_params = || {
        [
            "labelSelector",
            "fieldSelector",
            "resourceVersion",
            "resourceVersionMatch",
            "limit",
            "continue",
            "watch",
            "allowWatchBookmarks",
            "sendInitialEvents",
            "timeoutSeconds",
        ]
        .iter()
        .map(|p| query_param(p, ""))
        .collect::<Vec<_>>()
    };
    let mut out = vec![
        (
            collection,
            json!({
                "get": operation(r, "list", list_params()),
                "post": operation(r, "post", vec![validation()]),
            }),
        ),
        (
            item.clone(),
            json!({
                "get": operation(r, "get", vec![]),
                "put": operation(r, "put", vec![validation()]),
                "patch": operation(r, "patch", vec![validation()]),
                "delete": operation(r, "delete", vec![]),
            }),
        ),
    ];
    if r.status_subresource {
        out.push((
            format!("{item}/status"),
            json!({
                "get": operation(r, "get", vec![]),
                "put": operation(r, "put", vec![validation()]),
                "patch": operation(r, "patch", vec![validation()]),
            }),
        ));
    }
    out
}

pub async fn group_version(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let gv = uri
        .path()
        .trim_start_matches("/openapi/v3/")
        .trim_end_matches('/');
    let mut paths = Map::new();
    for r in state.registry.resources() {
        let own = if r.group.is_empty() {
            format!("api/{}", r.version)
        } else {
            format!("apis/{}/{}", r.group, r.version)
        };
        if own == gv {
            paths.extend(paths_for(r));
        }
    }
    if paths.is_empty() {
        return Err(not_found_path(uri.path()));
    }
    let doc = json!({
        "openapi": "3.0.0",
        "info": {"title": "mube", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": {}},
    });
    Ok(json_response(StatusCode::OK, doc.to_string()))
}
