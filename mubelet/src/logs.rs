//! The kubelet's log endpoint, `GET /containerLogs/{ns}/{pod}/{container}`,
//! which the API server proxies `kubectl logs` to. It reads the log file
//! the runtime writes for the container (CRI's log format) and answers
//! with the messages, honouring `follow`, `previous`, `tailLines`,
//! `timestamps`, `limitBytes` and `sinceSeconds`.
//!
//! Who may read is the API server's decision, as with the kubelet's webhook
//! authorization: the caller's bearer token is sent back to the API server
//! in a SelfSubjectAccessReview for `nodes/proxy` on this node, and an
//! answer is remembered for a minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::config::Config;
use crate::cri::{self, Runtime};

#[derive(Clone)]
pub struct LogState {
    pub config: Arc<Config>,
    pub runtime: Runtime,
    /// A client without this node's identity: the review must be of the
    /// caller's token, not of the node.
    pub reviewer: reqwest::Client,
    /// To the runtime's streaming server (loopback, plain HTTP; a stream
    /// has no deadline).
    pub streams: reqwest::Client,
    allowed: Arc<Mutex<HashMap<String, Instant>>>,
}

impl LogState {
    pub fn new(config: Arc<Config>, runtime: Runtime, reviewer: reqwest::Client) -> LogState {
        LogState {
            config,
            runtime,
            reviewer,
            streams: reqwest::Client::new(),
            allowed: Arc::default(),
        }
    }
}

const REMEMBER: Duration = Duration::from_secs(60);

pub fn answer(code: StatusCode, message: impl Into<String>) -> Response {
    (code, message.into()).into_response()
}

/// One log message: its time (as written), and the text.
#[derive(Debug, PartialEq)]
pub struct Message {
    pub time: String,
    pub text: String,
}

/// Parses CRI log lines (`<time> <stream> <P|F> <text>`), joining partial
/// lines (`P`) to the full one that ends them. Returns the messages and
/// how many bytes of `data` were consumed (a trailing line without its
/// newline is left for later).
pub fn parse(data: &[u8], pending: &mut String) -> (Vec<Message>, usize) {
    let mut out = Vec::new();
    let mut used = 0;
    while let Some(end) = data[used..].iter().position(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(&data[used..used + end]).into_owned();
        used += end + 1;
        let mut parts = line.splitn(4, ' ');
        let (Some(time), Some(_stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let text = parts.next().unwrap_or("");
        pending.push_str(text);
        if tag == "P" {
            continue;
        }
        out.push(Message {
            time: time.to_string(),
            text: std::mem::take(pending),
        });
    }
    (out, used)
}

pub async fn authorized(state: &LogState, headers: &HeaderMap) -> Result<(), Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let key = token.clone().unwrap_or_default();
    {
        let mut allowed = state.allowed.lock().unwrap_or_else(|p| p.into_inner());
        allowed.retain(|_, at| at.elapsed() < REMEMBER);
        if allowed.contains_key(&key) {
            return Ok(());
        }
    }
    let url = state
        .config
        .api_servers
        .join("apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
        .map_err(|e| answer(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "verb": "get", "resource": "nodes", "subresource": "proxy",
            "name": state.config.node_name,
        }},
    });
    let mut request = state.reviewer.post(url).json(&review);
    if let Some(t) = &token {
        request = request.header(header::AUTHORIZATION, t);
    }
    let response = request.send().await.map_err(|e| {
        answer(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "cannot ask the API server who may read logs: {}",
                mube_apis::errors::chain(&e)
            ),
        )
    })?;
    match response.status().as_u16() {
        200..=299 => {}
        401 => return Err(answer(StatusCode::UNAUTHORIZED, "Unauthorized")),
        code => {
            return Err(answer(
                StatusCode::FORBIDDEN,
                format!("the API server did not review the request ({code})"),
            ))
        }
    }
    let body: Value = response.json().await.unwrap_or_default();
    if body.pointer("/status/allowed") == Some(&json!(true)) {
        state
            .allowed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Instant::now());
        Ok(())
    } else {
        Err(answer(
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden (user may not get nodes/proxy of node {:?})",
                state.config.node_name
            ),
        ))
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Options {
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    previous: Option<String>,
    #[serde(default)]
    timestamps: Option<String>,
    tail_lines: Option<i64>,
    limit_bytes: Option<i64>,
    since_seconds: Option<i64>,
    /// mube's addition, sent by the API server: only this pod's
    /// containers, not those an earlier pod of the same name left.
    #[serde(rename = "podUID")]
    pod_uid: Option<String>,
}

fn yes(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1" | "True"))
}

pub async fn container_logs(
    State(state): State<LogState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(options): Query<Options>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = authorized(&state, &headers).await {
        return refused;
    }
    let selector = HashMap::from([
        (cri::NODE.to_string(), state.config.node_name.clone()),
        (cri::POD_NAMESPACE.to_string(), namespace.clone()),
        (cri::POD_NAME.to_string(), pod.clone()),
        (cri::CONTAINER_NAME.to_string(), container.clone()),
    ]);
    let mut selector = selector;
    if let Some(uid) = options.pod_uid.as_ref().filter(|u| !u.is_empty()) {
        selector.insert(cri::POD_UID.to_string(), uid.clone());
    }
    let found = match state.runtime.containers(selector).await {
        Ok(c) => c,
        Err(e) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("container runtime: {e}"),
            )
        }
    };
    let found = crate::pods::instances(&found, &container);
    let previous = yes(&options.previous);
    let Some(target) = found.get(usize::from(previous)) else {
        return answer(
            if previous {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::NOT_FOUND
            },
            if previous {
                format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
            } else {
                format!(
                    "container \"{container}\" in pod \"{namespace}/{pod}\" not found on this node"
                )
            },
        );
    };
    let id = target.id.clone();
    let path = match state.runtime.container_status(&id).await {
        Ok(Some(s)) if !s.log_path.is_empty() => s.log_path,
        Ok(_) => return answer(StatusCode::NOT_FOUND, "the container has no log"),
        Err(e) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("container runtime: {e}"),
            )
        }
    };
    let follow = yes(&options.follow) && !previous;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    tokio::spawn(stream(
        state.runtime.clone(),
        id,
        path.into(),
        options,
        follow,
        tx,
    ));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Sends the selected messages, then (with `follow`) new ones as they are
/// written, until the container has stopped and everything is sent, or the
/// reader went away.
async fn stream(
    runtime: Runtime,
    id: String,
    path: std::path::PathBuf,
    options: Options,
    follow: bool,
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
) {
    let timestamps = yes(&options.timestamps);
    let since = options.since_seconds.and_then(|s| {
        jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(s))
            .ok()
    });
    let mut budget = options.limit_bytes.map(|b| b.max(0) as usize);
    let render = |m: &Message| {
        if timestamps {
            format!("{} {}\n", m.time, m.text)
        } else {
            format!("{}\n", m.text)
        }
    };
    let keep =
        |m: &Message| since.is_none_or(|s| m.time.parse::<jiff::Timestamp>().is_ok_and(|t| t >= s));
    // The file stays open, and a follow reads only what was added.
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    let mut data = Vec::new();
    if let Some(f) = file.as_mut() {
        use tokio::io::AsyncReadExt;
        if let Err(e) = f.read_to_end(&mut data).await {
            let _ = tx.send(Err(e)).await;
            return;
        }
    }
    let mut pending = String::new();
    let (messages, offset) = parse(&data, &mut pending);
    let mut messages: Vec<Message> = messages.into_iter().filter(|m| keep(m)).collect();
    if let Some(n) = options.tail_lines {
        let n = n.max(0) as usize;
        if messages.len() > n {
            messages.drain(..messages.len() - n);
        }
    }
    // Cuts output at `limitBytes`, counting what was sent.
    fn within(budget: &mut Option<usize>, text: String) -> Vec<u8> {
        let mut bytes = text.into_bytes();
        if let Some(left) = budget.as_mut() {
            bytes.truncate(*left);
            *left -= bytes.len();
        }
        bytes
    }
    let first: Vec<u8> = messages
        .iter()
        .flat_map(|m| within(&mut budget, render(m)))
        .collect();
    if !first.is_empty() && tx.send(Ok(first)).await.is_err() {
        return;
    }
    if !follow {
        return;
    }
    let mut tail = data[offset..].to_vec();
    loop {
        if budget == Some(0) {
            return;
        }
        // Whether the container still runs, asked before reading, so that
        // what it wrote last is read after it stopped.
        let running = matches!(runtime.container_status(&id).await, Ok(Some(s)) if s.state == 1);
        if file.is_none() {
            file = tokio::fs::File::open(&path).await.ok();
        }
        if let Some(f) = file.as_mut() {
            use tokio::io::AsyncReadExt;
            if let Err(e) = f.read_to_end(&mut tail).await {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
        let (messages, used) = parse(&tail, &mut pending);
        tail.drain(..used);
        let out: Vec<u8> = messages
            .iter()
            .filter(|m| keep(m))
            .flat_map(|m| within(&mut budget, render(m)))
            .collect();
        if !out.is_empty() && tx.send(Ok(out)).await.is_err() {
            return;
        }
        if !running || tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines_and_partials() {
        let data = b"2026-01-01T00:00:00.1Z stdout F hello\n2026-01-01T00:00:01Z stderr P par\n2026-01-01T00:00:02Z stderr F tial\n2026-01-01T00:00:03Z stdout F no newline yet";
        let mut pending = String::new();
        let (m, used) = parse(data, &mut pending);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].text, "hello");
        assert_eq!(m[1].text, "partial");
        assert_eq!(m[1].time, "2026-01-01T00:00:02Z");
        assert!(used < data.len(), "the unfinished line is left for later");
    }
}
