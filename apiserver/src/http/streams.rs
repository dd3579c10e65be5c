//! `pods/exec`, `pods/attach` and `pods/portforward`: the API server
//! checks the request against the pod (bound to a node, running, the
//! container named and running), then proxies the client's upgraded
//! connection to the node agent's `/exec`, `/attach` or `/portForward`,
//! the kubelet's endpoints, which proxy it on to the runtime's streaming
//! server. The protocol (SPDY/3.1, or WebSocket for kubectl 1.30 and
//! later and the client libraries) is the client's and the runtime's:
//! this server only joins the connections. Authorization of the
//! subresource happened in the request chain, as for any other.

use axum::http::{HeaderMap, Method};
use axum::response::Response;
use mube_apis::status::Reason;
use serde_json::Value;

use super::logs::{agent_url, container_of, node_of};
use super::AppState;
use crate::error::ApiError;
use crate::registry::Resource;

#[allow(clippy::too_many_arguments)]
pub async fn serve(
    state: &AppState,
    r: &Resource,
    ns: Option<&str>,
    name: &str,
    subresource: &str,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response, ApiError> {
    let pod = state.registry.get(r, ns, name).await?.value()?;
    let asked = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "container")
        .map(|(_, v)| v.into_owned())
        .last();
    let node = node_of(&pod, name)?.to_string();
    // As kube-apiserver: a finished pod has nothing to stream from.
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending");
    if matches!(phase, "Succeeded" | "Failed") {
        return Err(ApiError::bad_request(format!(
            "cannot {} a container in a completed pod; current phase is {phase}",
            if subresource == "portforward" {
                "port-forward to"
            } else {
                "exec into"
            },
        )));
    }
    let ns = ns.unwrap_or("default");
    let path: Vec<String> = if subresource == "portforward" {
        vec!["portForward".into(), ns.into(), name.into()]
    } else {
        let container = container_of(&pod, name, asked.as_deref())?;
        let running = pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|s| {
                s.get("name").and_then(Value::as_str) == Some(container.as_str())
                    && s.pointer("/state/running").is_some()
            });
        if !running {
            return Err(ApiError::bad_request(format!(
                "container {container} is not running in pod {name}"
            )));
        }
        vec![subresource.into(), ns.into(), name.into(), container]
    };
    let segments: Vec<&str> = path.iter().map(String::as_str).collect();
    let (mut url, host, port) = agent_url(state, &node, &segments).await?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            q.append_pair(&k, &v);
        }
        if let Some(uid) = pod.pointer("/metadata/uid").and_then(Value::as_str) {
            q.append_pair("podUID", uid);
        }
    }
    let upstream = state
        .nodes
        .http
        .request(method.clone(), url)
        .headers(mube_process::upgrade::upstream_headers(headers))
        .bearer_auth(state.nodes.token_for(&node)?);
    mube_process::upgrade::proxy(upgrade, upstream, format!("{subresource} {ns}/{name}"))
        .await
        .map_err(|e| {
            ApiError::new(
                Reason::ServiceUnavailable,
                format!("cannot reach the agent of node {node:?} at {host}:{port}: {e}"),
            )
        })
}
