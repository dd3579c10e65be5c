//! The kubelet's streaming endpoints, which the API server proxies
//! `kubectl exec`, `attach`, `cp` and `port-forward` to:
//! `/exec/{ns}/{pod}/{container}`, `/attach/{ns}/{pod}/{container}` and
//! `/portForward/{ns}/{pod}`. Each asks the runtime (CRI `Exec`, `Attach`,
//! `PortForward`) for a stream on its streaming server, then proxies the
//! client's upgrade there: the runtime speaks SPDY/3.1 and WebSocket to
//! the client itself, as it does for the kubelet. Who may connect is the
//! API server's decision, as for logs.

use std::collections::HashMap;

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::Response;

use crate::cri::{self, api, StreamRequest};
use crate::logs::{answer, authorized, LogState};

/// The query's values of `key` (a command has several).
fn values(query: &str, key: &str) -> Vec<String> {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

fn flag(query: &str, key: &str) -> bool {
    values(query, key)
        .last()
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True"))
}

/// The labels of the pod's sandboxes (and, with its name, containers):
/// this node's, of this pod (and of its UID, when the API server sent it).
fn pod_selector(
    state: &LogState,
    namespace: &str,
    pod: &str,
    query: &str,
) -> HashMap<String, String> {
    let mut selector = HashMap::from([
        (cri::NODE.to_string(), state.config.node_name.clone()),
        (cri::POD_NAMESPACE.to_string(), namespace.to_string()),
        (cri::POD_NAME.to_string(), pod.to_string()),
    ]);
    if let Some(uid) = values(query, "podUID").pop().filter(|u| !u.is_empty()) {
        selector.insert(cri::POD_UID.to_string(), uid);
    }
    selector
}

fn runtime_error(e: cri::CriError) -> Response {
    answer(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("container runtime: {e}"),
    )
}

/// The running container `container` of the pod, by its labels.
async fn running_container(
    state: &LogState,
    namespace: &str,
    pod: &str,
    container: &str,
    query: &str,
) -> Result<String, Response> {
    let mut selector = pod_selector(state, namespace, pod, query);
    selector.insert(cri::CONTAINER_NAME.to_string(), container.to_string());
    let found = state
        .runtime
        .containers(selector)
        .await
        .map_err(runtime_error)?;
    crate::pods::instances(&found, container)
        .into_iter()
        .find(|c| c.state == api::ContainerState::ContainerRunning as i32)
        .map(|c| c.id.clone())
        .ok_or_else(|| {
            answer(
                StatusCode::NOT_FOUND,
                format!("container {container:?} in pod {namespace}/{pod} is not running"),
            )
        })
}

/// The pod's ready sandbox, for a port-forward.
async fn sandbox(
    state: &LogState,
    namespace: &str,
    pod: &str,
    query: &str,
) -> Result<String, Response> {
    let selector = pod_selector(state, namespace, pod, query);
    let found = state
        .runtime
        .sandboxes(selector)
        .await
        .map_err(runtime_error)?;
    found
        .into_iter()
        .filter(|s| s.state == api::PodSandboxState::SandboxReady as i32)
        .max_by_key(|s| s.created_at)
        .map(|s| s.id)
        .ok_or_else(|| {
            answer(
                StatusCode::NOT_FOUND,
                format!("pod {namespace}/{pod} has no running sandbox"),
            )
        })
}

/// Asks the runtime for the stream and proxies the client's upgrade to it.
/// An exec's processes (`exec`: the container's first process) are killed
/// if its client goes away first (`exec_cleanup`).
async fn stream(
    state: &LogState,
    request: Request,
    what: StreamRequest,
    name: String,
    exec: Option<(u32, Vec<String>)>,
) -> Response {
    let url = match state.runtime.stream_url(what).await {
        Ok(url) => url,
        Err(e) => {
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("container runtime: {e}"),
            )
        }
    };
    let (mut parts, _) = request.into_parts();
    let mut url = match reqwest::Url::parse(&url) {
        Ok(u) => u,
        Err(e) => {
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the runtime's stream URL {url:?}: {e}"),
            )
        }
    };
    // The runtime's server reads what it needs from its URL; a WebSocket
    // port-forward reads its ports from the query (as the kubelet passes
    // it on).
    if url.query().is_none() {
        url.set_query(parts.uri.query());
    }
    let upstream = state
        .streams
        .request(parts.method.clone(), url)
        .headers(mube_process::upgrade::upstream_headers(&parts.headers));
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let tracker = exec.map(|(init, command)| crate::exec_cleanup::Tracker::start(init, command));
    let what = name.clone();
    let ended = move |how: mube_process::upgrade::Ended| {
        if let (Some(tracker), mube_process::upgrade::Ended::Client) = (tracker, how) {
            let killed = tracker.kill();
            if killed > 0 {
                tracing::info!(stream = %what, killed, "the client went away: killed the processes it left");
            }
        }
    };
    match mube_process::upgrade::proxy_then(upgrade, upstream, name, ended).await {
        Ok(response) => response,
        Err(e) => answer(
            StatusCode::BAD_GATEWAY,
            format!("the runtime's streaming server: {e}"),
        ),
    }
}

pub async fn exec(
    State(state): State<LogState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    exec_or_attach(
        state,
        namespace,
        pod,
        container,
        query.unwrap_or_default(),
        request,
        true,
    )
    .await
}

pub async fn attach(
    State(state): State<LogState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    exec_or_attach(
        state,
        namespace,
        pod,
        container,
        query.unwrap_or_default(),
        request,
        false,
    )
    .await
}

async fn exec_or_attach(
    state: LogState,
    namespace: String,
    pod: String,
    container: String,
    query: String,
    request: Request,
    exec: bool,
) -> Response {
    if let Err(refused) = authorized(&state, request.headers()).await {
        return refused;
    }
    let id = match running_container(&state, &namespace, &pod, &container, &query).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let (stdin, stdout, stderr, tty) = (
        flag(&query, "stdin"),
        flag(&query, "stdout"),
        flag(&query, "stderr"),
        flag(&query, "tty"),
    );
    let name = format!(
        "{} {namespace}/{pod}/{container}",
        if exec { "exec" } else { "attach" }
    );
    // Its first process, to find an exec's own (none for a hollow node).
    let init = if exec {
        state.runtime.container_pid(&id).await.ok().flatten()
    } else {
        None
    };
    let command = values(&query, "command");
    let what = if exec {
        let cmd = command.clone();
        if cmd.is_empty() {
            return answer(
                StatusCode::BAD_REQUEST,
                "you must specify at least 1 command",
            );
        }
        StreamRequest::Exec(api::ExecRequest {
            container_id: id,
            cmd,
            tty,
            stdin,
            stdout,
            // With a TTY, stderr is the terminal's (Kubernetes' rule).
            stderr: stderr && !tty,
        })
    } else {
        StreamRequest::Attach(api::AttachRequest {
            container_id: id,
            stdin,
            tty,
            stdout,
            stderr: stderr && !tty,
        })
    };
    stream(&state, request, what, name, init.map(|pid| (pid, command))).await
}

pub async fn port_forward(
    State(state): State<LogState>,
    Path((namespace, pod)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    if let Err(refused) = authorized(&state, request.headers()).await {
        return refused;
    }
    let query = query.unwrap_or_default();
    let id = match sandbox(&state, &namespace, &pod, &query).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    // SPDY names the ports per stream; WebSocket in the query.
    let mut ports = Vec::new();
    for p in values(&query, "ports") {
        for one in p.split(',') {
            match one.trim().parse::<u16>() {
                Ok(n) if n > 0 => ports.push(i32::from(n)),
                _ => return answer(StatusCode::BAD_REQUEST, format!("invalid port {one:?}")),
            }
        }
    }
    let name = format!("port-forward {namespace}/{pod}");
    stream(
        &state,
        request,
        StreamRequest::PortForward(api::PortForwardRequest {
            pod_sandbox_id: id,
            port: ports,
        }),
        name,
        None,
    )
    .await
}
