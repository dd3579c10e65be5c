//! Proxying an upgraded connection: the streams of `kubectl exec`,
//! `attach`, `cp` and `port-forward`, in SPDY/3.1 or WebSocket, from the
//! client through the API server and the node agent to the container
//! runtime's streaming server (as kube-apiserver and the kubelet proxy
//! them). Neither hop reads the protocol: the request's upgrade headers
//! go upstream as they came, the upstream's `101 Switching Protocols`
//! comes back with its headers, and from then on bytes are copied both
//! ways until either end closes, which closes the other.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// How long a client may take to close after the upstream ended.
const CLIENT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Request headers that belong to this hop, not to the stream.
const HOP: &[HeaderName] = &[
    header::HOST,
    header::AUTHORIZATION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
];

/// The headers of `incoming` that go upstream: the upgrade itself
/// (`Connection`, `Upgrade`), the protocols offered
/// (`X-Stream-Protocol-Version`, `Sec-WebSocket-*`), and the rest but
/// this hop's own.
pub fn upstream_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in incoming {
        if !HOP.contains(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// How a proxied stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed it, or went away.
    Client,
    /// The upstream closed it (the process exited, the runtime ended it).
    Upstream,
    /// It never started.
    NotStarted,
}

/// `proxy_then` with nothing to do at the end.
pub async fn proxy(
    client: Option<OnUpgrade>,
    upstream: reqwest::RequestBuilder,
    what: String,
) -> Result<Response, String> {
    proxy_then(client, upstream, what, |_| {}).await
}

/// Sends `upstream` (which carries `upstream_headers`) and, if it
/// switches protocols, answers the client the same and joins the two
/// connections once `client` upgrades; `ended` is called once the stream
/// is over. Any other answer is relayed as is (an error the client
/// shows). `what` names the stream in log lines.
pub async fn proxy_then(
    client: Option<OnUpgrade>,
    upstream: reqwest::RequestBuilder,
    what: String,
    ended: impl FnOnce(Ended) + Send + 'static,
) -> Result<Response, String> {
    let client =
        client.ok_or("the request cannot be upgraded (an HTTP/1.1 connection is needed)")?;
    let answer = upstream.send().await.map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        text
    })?;
    let status = answer.status();
    let mut response = Response::builder().status(status.as_u16());
    for (name, value) in answer.headers() {
        response = response.header(name, value);
    }
    if status != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        let body = answer.bytes().await.unwrap_or_default();
        return response.body(Body::from(body)).map_err(|e| e.to_string());
    }
    let response = response.body(Body::empty()).map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let (client, upstream) = tokio::join!(client, answer.upgrade());
        let (client, upstream) = match (client, upstream) {
            (Ok(c), Ok(u)) => (TokioIo::new(c), u),
            (Err(e), _) => {
                tracing::debug!(stream = %what, error = %e, "the client did not upgrade");
                ended(Ended::NotStarted);
                return;
            }
            (_, Err(e)) => {
                tracing::debug!(stream = %what, error = %e, "the upstream did not upgrade");
                ended(Ended::NotStarted);
                return;
            }
        };
        // Until either side closes (or fails): then both are dropped, which
        // closes the other at once. (Not `copy_bidirectional`, which would
        // half-close and wait for the other side: a runtime's stream stays
        // open while its process runs, so a client that went away would
        // leave the connection, and the process, behind.) SPDY and
        // WebSocket close their streams inside the connection; neither
        // needs a half-closed one.
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
        let how = {
            let up = tokio::io::copy(&mut client_read, &mut upstream_write);
            let down = tokio::io::copy(&mut upstream_read, &mut client_write);
            tokio::pin!(up, down);
            tokio::select! {
            r = &mut up => {
                tracing::debug!(stream = %what, result = ?r, "the client ended the stream");
                Ended::Client
            }
            r = &mut down => {
                tracing::debug!(stream = %what, result = ?r, "the upstream ended the stream");
                // The upstream's last words (an exec's exit status) are
                // with the client: give it a moment to close the
                // connection itself, as it does once it has read them,
                // rather than cutting it under its other streams.
                let _ = tokio::time::timeout(CLIENT_GRACE, &mut up).await;
                Ended::Upstream
            }
            }
        };
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut client_write).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut upstream_write).await;
        drop((client_read, client_write, upstream_read, upstream_write));
        ended(how);
    });
    Ok(response)
}

/// A plain-text error answer.
pub fn error(code: StatusCode, message: impl Into<String>) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(message.into()))
        .unwrap_or_default()
}
