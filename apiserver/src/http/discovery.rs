//! Discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}[/{version}]`,
//! all derived from the registry, so a new kind shows up by being registered.
//!
//! Only the classic (unaggregated) documents are served; clients that ask
//! for aggregated discovery (`as=APIGroupDiscoveryList`) see from the plain
//! `application/json` content type that they got the classic form and use it.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
    ServerAddressByClientCIDR,
};
use serde::Serialize;

use super::response::json;
use super::AppState;
use crate::registry::Resource;

/// The Kubernetes version whose API mube speaks (the k8s-openapi feature).
pub const KUBERNETES_MINOR: &str = "34";

fn reply<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json(StatusCode::OK, body),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

pub async fn version() -> Response {
    reply(&serde_json::json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v1.{KUBERNETES_MINOR}.0-mube.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "none (mube is written in Rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    }))
}

fn server_address(headers: &HeaderMap) -> Vec<ServerAddressByClientCIDR> {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    vec![ServerAddressByClientCIDR {
        client_cidr: "0.0.0.0/0".into(),
        server_address: host,
    }]
}

pub async fn core_versions(headers: HeaderMap) -> Response {
    reply(&APIVersions {
        versions: vec!["v1".into()],
        server_address_by_client_cidrs: server_address(&headers),
    })
}

/// Group name -> versions, in registration order.
fn groups(state: &AppState) -> BTreeMap<&'static str, Vec<&'static str>> {
    let mut groups: BTreeMap<&'static str, Vec<&'static str>> = BTreeMap::new();
    for r in state.registry.resources().iter() {
        if r.group.is_empty() {
            continue;
        }
        let versions = groups.entry(r.group).or_default();
        if !versions.contains(&r.version) {
            versions.push(r.version);
        }
    }
    for r in super::reviews::REVIEWS {
        let versions = groups.entry(r.group).or_default();
        if !versions.contains(&r.version) {
            versions.push(r.version);
        }
    }
    // Kubernetes' order, whose first is the preferred version: v1 before
    // v1beta1 before v1alpha1, whichever kind registered its version first.
    for versions in groups.values_mut() {
        versions.sort_by_key(|v| crate::registry::custom_kind::version_priority(v));
    }
    groups
}

/// A create-only review's discovery entry.
fn review_entry(r: &super::reviews::Review) -> APIResource {
    APIResource {
        name: r.plural.to_string(),
        singular_name: r.kind.to_ascii_lowercase(),
        namespaced: false,
        kind: r.kind.to_string(),
        verbs: vec!["create".into()],
        short_names: None,
        categories: None,
        group: None,
        version: None,
        storage_version_hash: None,
    }
}

fn api_group(name: &str, versions: &[&str]) -> APIGroup {
    let gv = |v: &&str| GroupVersionForDiscovery {
        group_version: format!("{name}/{v}"),
        version: v.to_string(),
    };
    APIGroup {
        name: name.to_string(),
        preferred_version: versions.first().map(gv),
        versions: versions.iter().map(gv).collect(),
        server_address_by_client_cidrs: None,
    }
}

pub async fn group_list(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    reply(&APIGroupList {
        groups: groups(&state)
            .iter()
            .map(|(name, versions)| api_group(name, versions))
            .collect(),
    })
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn resource_entries(r: &Resource) -> Vec<APIResource> {
    let mut out = vec![APIResource {
        name: r.plural.to_string(),
        singular_name: r.singular.to_string(),
        namespaced: r.namespaced,
        kind: r.kind.to_string(),
        verbs: VERBS.iter().map(|v| v.to_string()).collect(),
        short_names: Some(r.short_names.iter().map(|s| s.to_string()).collect())
            .filter(|s: &Vec<String>| !s.is_empty()),
        categories: Some(r.categories.iter().map(|c| c.to_string()).collect())
            .filter(|c: &Vec<String>| !c.is_empty()),
        group: None,
        version: None,
        storage_version_hash: None,
    }];
    if r.scale_subresource() {
        out.push(APIResource {
            name: format!("{}/scale", r.plural),
            singular_name: String::new(),
            namespaced: r.namespaced,
            kind: "Scale".into(),
            verbs: ["get", "patch", "update"]
                .iter()
                .map(|v| v.to_string())
                .collect(),
            short_names: None,
            categories: None,
            group: Some("autoscaling".into()),
            version: Some("v1".into()),
            storage_version_hash: None,
        });
    }
    if r.status_subresource() {
        out.push(APIResource {
            name: format!("{}/status", r.plural),
            singular_name: String::new(),
            namespaced: r.namespaced,
            kind: r.kind.to_string(),
            verbs: ["get", "patch", "update"]
                .iter()
                .map(|v| v.to_string())
                .collect(),
            short_names: None,
            categories: None,
            group: None,
            version: None,
            storage_version_hash: None,
        });
    }
    out
}

/// `/api/v1` or `/apis/{group}/{version}`, or `/apis/{group}`; `None` if
/// nothing is served there.
pub fn serve(state: &AppState, group: &str, version: Option<&str>) -> Option<Response> {
    match version {
        None => {
            let groups = groups(state);
            let versions = groups.get(group)?;
            Some(reply(&api_group(group, versions)))
        }
        Some(version) => {
            let resources: Vec<APIResource> = state
                .registry
                .resources()
                .iter()
                .filter(|r| r.group == group && r.version == version)
                .flat_map(|r| resource_entries(r))
                .chain(
                    super::reviews::REVIEWS
                        .iter()
                        .filter(|r| r.group == group && r.version == version)
                        .map(review_entry),
                )
                .collect();
            if resources.is_empty() {
                return None;
            }
            let group_version = if group.is_empty() {
                version.to_string()
            } else {
                format!("{group}/{version}")
            };
            Some(reply(&APIResourceList {
                group_version,
                resources,
            }))
        }
    }
}
