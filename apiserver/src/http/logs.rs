//! `GET .../pods/{name}/log`: the API server checks the request against
//! the pod (bound to a node, the container named and started), then
//! proxies it to the node agent's `/containerLogs/{ns}/{pod}/{container}`,
//! the kubelet's endpoint, and streams the answer back. Authorization of
//! `pods/log` happened in the request chain already; the node agent in
//! turn asks this server whether the caller (this server's own kubelet
//! client identity) may read node logs, as the kubelet's webhook
//! authorization does.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::AppState;
use crate::error::ApiError;
use crate::registry::Resource;
use mube_apis::status::Reason;

/// The client for node agents, with this server's identity towards each:
/// a token per node, made when first needed and kept only in memory, so
/// that what one node is shown opens no other node's logs.
pub struct NodeClient {
    pub http: reqwest::Client,
    /// node -> token, and token -> node.
    tokens: std::sync::Mutex<(HashMap<String, String>, HashMap<String, String>)>,
}

impl NodeClient {
    pub fn new() -> Result<NodeClient, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| format!("building the node client: {e}"))?;
        Ok(NodeClient {
            http,
            tokens: Default::default(),
        })
    }

    pub fn token_for(&self, node: &str) -> Result<String, ApiError> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tokens.0.get(node) {
            return Ok(t.clone());
        }
        let token =
            crate::pki::random_token().map_err(|e| ApiError::new(Reason::InternalError, e))?;
        tokens.0.insert(node.to_string(), token.clone());
        tokens.1.insert(token.clone(), node.to_string());
        Ok(token)
    }

    /// The node whose agent `token` was made for.
    pub fn node_of(&self, token: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.1.get(token).cloned()
    }
}

/// PodLogOptions that pass through to the node agent as they are.
const PASSED: &[&str] = &[
    "follow",
    "previous",
    "timestamps",
    "tailLines",
    "limitBytes",
    "sinceSeconds",
];

fn bad_request(message: String) -> ApiError {
    ApiError::bad_request(message)
}

/// The container a request names (`container`), or the pod's only one.
pub fn container_of(pod: &Value, name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let names: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name")?.as_str())
        .collect();
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if names.contains(&c) => Ok(c.to_string()),
        Some(c) => Err(bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if names.len() == 1 => Ok(names[0].to_string()),
        None => Err(bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            names.join(" ")
        ))),
    }
}

/// The node the pod is bound to.
pub fn node_of<'a>(pod: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad_request(format!("pod {name} does not have a host assigned")))
}

/// The URL of `path` on `node`'s agent (its InternalIP and kubelet port),
/// with the host and port for messages.
pub async fn agent_url(
    state: &AppState,
    node: &str,
    path: &[&str],
) -> Result<(reqwest::Url, String, u64), ApiError> {
    let nodes = state.registry.resource(&mube_apis::resources::NODES)?;
    let node_object = state.registry.get(&nodes, None, node).await?.value()?;
    let address = node_object
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|x| x.get("type").and_then(Value::as_str) == Some("InternalIP"))
        })
        .and_then(|x| x.get("address")?.as_str())
        .ok_or_else(|| {
            ApiError::new(
                Reason::ServiceUnavailable,
                format!("node {node:?} has no InternalIP address to reach its agent at"),
            )
        })?;
    let port = node_object
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .unwrap_or(10250);
    let host = match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => address.to_string(),
    };
    let mut url = reqwest::Url::parse(&format!("http://{host}:{port}/"))
        .map_err(|e| ApiError::new(Reason::InternalError, format!("node address: {e}")))?;
    url.path_segments_mut()
        .map_err(|_| ApiError::new(Reason::InternalError, "node address"))?
        .extend(path);
    Ok((url, host, port))
}

pub async fn serve(
    state: &AppState,
    r: &Resource,
    ns: Option<&str>,
    name: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let pod = state.registry.get(r, ns, name).await?.value()?;
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |k: &str| {
        pairs
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    for number in ["tailLines", "limitBytes", "sinceSeconds"] {
        if let Some(v) = get(number) {
            if v.parse::<i64>()
                .map_or(true, |n| n < 0 || (number != "tailLines" && n == 0))
            {
                return Err(bad_request(format!("{number}: invalid value {v:?}")));
            }
        }
    }
    let container = container_of(&pod, name, get("container"))?;
    let node = node_of(&pod, name)?;
    // As kube-apiserver: a container that has not started has no logs yet.
    let status = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .and_then(|all| {
            all.iter()
                .find(|s| s.get("name").and_then(Value::as_str) == Some(&container))
        });
    let started = status.is_some_and(|s| {
        s.pointer("/state/running").is_some()
            || s.pointer("/state/terminated").is_some()
            || s.pointer("/lastState/terminated").is_some()
    });
    if !started {
        let reason = status
            .and_then(|s| s.pointer("/state/waiting/reason"))
            .and_then(Value::as_str)
            .unwrap_or("ContainerCreating");
        return Err(bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
        )));
    }
    let ns = ns.unwrap_or("default");
    let (mut url, host, port) =
        agent_url(state, node, &["containerLogs", ns, name, &container]).await?;
    {
        let mut q = url.query_pairs_mut();
        for key in PASSED {
            if let Some(v) = get(key) {
                q.append_pair(key, v);
            }
        }
        if let Some(uid) = pod.pointer("/metadata/uid").and_then(Value::as_str) {
            q.append_pair("podUID", uid);
        }
    }
    let answer = state
        .nodes
        .http
        .get(url)
        .bearer_auth(state.nodes.token_for(node)?)
        .send()
        .await
        .map_err(|e| {
            ApiError::new(
                Reason::ServiceUnavailable,
                format!(
                    "cannot reach the agent of node {node:?} at {host}:{port}: {}",
                    mube_apis::errors::chain(&e)
                ),
            )
        })?;
    let code = answer.status();
    if !code.is_success() {
        let text = answer.text().await.unwrap_or_default();
        let reason = match code.as_u16() {
            404 => Reason::NotFound,
            400 => Reason::BadRequest,
            401 | 403 => Reason::Forbidden,
            _ => Reason::InternalError,
        };
        return Err(ApiError::new(
            reason,
            format!("node {node:?} answered {code}: {}", text.trim()),
        ));
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(answer.bytes_stream()))
        .map_err(|e| ApiError::new(Reason::InternalError, e.to_string()))
}
