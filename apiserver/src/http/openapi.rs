//! `/openapi/v3`: one document per group-version, as Kubernetes serves it.
//!
//! - **Paths.** kubectl reads them to see that PATCH takes
//!   `fieldValidation`, and then leaves validation of `apply`/`create` to the
//!   server (Strict), exactly as against Kubernetes; every write lists
//!   `dryRun`, so that no client falls back to a client-side dry run. Each
//!   operation carries `x-kubernetes-group-version-kind` and
//!   `x-kubernetes-action`.
//! - **Component schemas** for every served kind and every type it uses,
//!   generated from k8s-openapi's types (their `schemars` descriptions), not
//!   written here: `kubectl explain` renders them. Each kind's root schema is
//!   tagged with `x-kubernetes-group-version-kind`, which is how kubectl
//!   finds it.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use k8s_openapi::schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use super::response::json as json_response;
use super::rest::not_found_path;
use super::AppState;
use crate::error::ApiError;
use crate::registry::{Registry, Resource};

/// `api/v1`, `apis/coordination.k8s.io/v1`: how `/openapi/v3` names a
/// kind's group-version.
fn group_version_of(r: &Resource) -> String {
    if r.group.is_empty() {
        format!("api/{}", r.version)
    } else {
        format!("apis/{}/{}", r.group, r.version)
    }
}

/// Every group-version's document, rendered once per set of served kinds
/// (which changes only when a CustomResourceDefinition does). Each carries
/// a hash of its bytes, which clients use as a cache key (`?hash=`), as
/// with Kubernetes.
pub struct Documents {
    by_group_version: BTreeMap<String, (String, Bytes)>,
}

/// The documents of the kinds served now: rendered again on the first
/// request after the served kinds changed.
pub struct Cache {
    rendered: std::sync::RwLock<(u64, Arc<Documents>)>,
}

impl Cache {
    pub fn new(registry: &Registry) -> Cache {
        Cache {
            rendered: std::sync::RwLock::new((
                registry.served_changes(),
                Arc::new(Documents::new(registry)),
            )),
        }
    }

    pub fn current(&self, registry: &Registry) -> Arc<Documents> {
        let changes = registry.served_changes();
        if let Ok(r) = self.rendered.read() {
            if r.0 == changes {
                return r.1.clone();
            }
        }
        let documents = Arc::new(Documents::new(registry));
        if let Ok(mut w) = self.rendered.write() {
            *w = (changes, documents.clone());
        }
        documents
    }
}

impl Documents {
    pub fn new(registry: &Registry) -> Documents {
        let served = registry.resources();
        let mut kinds: BTreeMap<String, Vec<&Resource>> = BTreeMap::new();
        for r in served.iter() {
            kinds.entry(group_version_of(r)).or_default().push(r);
        }
        let by_group_version = kinds
            .into_iter()
            .map(|(gv, kinds)| {
                let paths: Map<String, Value> = kinds.iter().flat_map(|r| paths_for(r)).collect();
                let doc = json!({
                    "openapi": "3.0.0",
                    "info": {"title": "mube", "version": env!("CARGO_PKG_VERSION")},
                    "paths": paths,
                    "components": {"schemas": component_schemas(&kinds)},
                })
                .to_string();
                let mut hasher = std::hash::DefaultHasher::new();
                doc.hash(&mut hasher);
                (gv, (format!("{:016X}", hasher.finish()), Bytes::from(doc)))
            })
            .collect();
        Documents { by_group_version }
    }
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
    let paths: Map<String, Value> = state
        .openapi
        .current(&state.registry)
        .by_group_version
        .iter()
        .map(|(gv, (hash, _))| {
            let url = format!("/openapi/v3/{gv}?hash={hash}");
            (gv.clone(), json!({"serverRelativeURL": url}))
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
    if r.status_subresource() {
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

/// The schemas of `kinds` and of every type they use, keyed by the names
/// Kubernetes files them under (`io.k8s.api.core.v1.Node`).
pub fn component_schemas(kinds: &[&Resource]) -> Map<String, Value> {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let roots: Vec<(&Resource, String)> = kinds
        .iter()
        .map(|r| (*r, r.strategy.typed().schema(&mut generator)))
        .collect();
    let mut schemas = generator.take_definitions(true);
    for (r, name) in roots {
        let Some(Value::Object(root)) = schemas.get_mut(&name) else {
            continue;
        };
        root.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": r.group, "kind": r.kind, "version": r.version}]),
        );
        // The Rust type cannot leave metadata out, so k8s-openapi lists it
        // as required; Kubernetes' schema does not (a server fills it in).
        if let Some(Value::Array(required)) = root.get_mut("required") {
            required.retain(|field| field != "metadata");
            if required.is_empty() {
                root.remove("required");
            }
        }
    }
    schemas
}

pub async fn group_version(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let gv = uri
        .path()
        .trim_start_matches("/openapi/v3/")
        .trim_end_matches('/');
    let documents = state.openapi.current(&state.registry);
    let (_, doc) = documents
        .by_group_version
        .get(gv)
        .ok_or_else(|| not_found_path(uri.path()))?;
    Ok(json_response(StatusCode::OK, doc.clone()))
}
