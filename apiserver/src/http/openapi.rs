//! `/openapi/v3`: just enough OpenAPI for clients to learn what the server
//! supports. kubectl reads it to see that PATCH takes `fieldValidation`, and
//! then leaves validation of `apply`/`create` to the server (Strict); every
//! write lists `dryRun`, as Kubernetes' document does, so that no client
//! falls back to a client-side dry run. Each
//! operation carries `x-kubernetes-group-version-kind` and
//! `x-kubernetes-action` as Kubernetes' own document does. Object schemas
//! are not served (`kubectl explain` is not supported).

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
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

/// The protobuf media type of `/openapi/v2` answers. Clients ask for
/// `...spec.v2@v1.0+protobuf`, but `@` is not valid in a Content-Type (Go's
/// MIME parser rejects it), so the answer spells it with a dot, as
/// Kubernetes does.
const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// One length-delimited protobuf field.
fn protobuf_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    let varint = |mut v: u64, out: &mut Vec<u8>| {
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    };
    varint(u64::from(field << 3 | 2), out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `/openapi/v2`: an empty Swagger 2.0 document. Older kubectl (1.27, 1.28)
/// fetch it before `apply` and stop if it is missing; with no paths in it
/// they fall back to their built-in knowledge of the Kubernetes types and
/// to the server's field validation. Clients ask for protobuf (gnostic's
/// `openapi.v2.Document`); the four fields it needs are encoded by hand
/// rather than pulling in a protobuf toolchain for them.
pub async fn v2(headers: axum::http::HeaderMap) -> Response {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("protobuf") {
        let mut info = Vec::new();
        protobuf_field(&mut info, 1, b"mube");
        protobuf_field(&mut info, 2, env!("CARGO_PKG_VERSION").as_bytes());
        let mut doc = Vec::new();
        protobuf_field(&mut doc, 1, b"2.0"); // swagger
        protobuf_field(&mut doc, 2, &info); // info
        protobuf_field(&mut doc, 8, &[]); // paths
        return ([(axum::http::header::CONTENT_TYPE, V2_PROTOBUF)], doc).into_response();
    }
    let doc = json!({"swagger": "2.0", "info": {"title": "mube", "version": env!("CARGO_PKG_VERSION")}, "paths": {}});
    json_response(StatusCode::OK, doc.to_string())
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
    let dry_run = || {
        query_param(
            "dryRun",
            "All: run every step of the write (validation, preconditions, conflicts) and persist nothing.",
        )
    };
    let write = || vec![dry_run(), validation()];
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
                "post": operation(r, "post", write()),
                "delete": operation(r, "deletecollection", {
                    let mut params = list_params();
                    params.push(dry_run());
                    params
                }),
            }),
        ),
        (
            item.clone(),
            json!({
                "get": operation(r, "get", vec![]),
                "put": operation(r, "put", write()),
                "patch": operation(r, "patch", write()),
                "delete": operation(r, "delete", vec![dry_run()]),
            }),
        ),
    ];
    if r.status_subresource {
        out.push((
            format!("{item}/status"),
            json!({
                "get": operation(r, "get", vec![]),
                "put": operation(r, "put", write()),
                "patch": operation(r, "patch", write()),
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
