//! The pods bound to this node, kept current by list and watch
//! (`fieldSelector=spec.nodeName=<node>`), as the kubelet's API source.
//! Each change is handed on as the whole set, keyed by UID; after an error
//! the list starts again, so nothing missed in between stays missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Every pod bound here, by UID; `None` until the first list arrived
/// (before that, no sandbox may be taken for an orphan). Each pod is
/// shared, not copied, with the set's next versions and its worker: a
/// set is handed on at every change.
pub type Pods = Option<Arc<HashMap<String, Arc<Pod>>>>;

#[derive(Deserialize)]
struct PodList {
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct ListMeta {
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

pub fn uid(pod: &Pod) -> Option<&str> {
    pod.metadata.uid.as_deref().filter(|u| !u.is_empty())
}

/// Lists and watches until `shutdown`, publishing into `out`.
pub async fn run(
    servers: crate::servers::ApiServers,
    node: String,
    client: watch::Receiver<reqwest::Client>,
    out: watch::Sender<Pods>,
    shutdown: CancellationToken,
) {
    let selector = format!("spec.nodeName={node}");
    let mut failures = 0u32;
    loop {
        let server = servers.current().clone();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = list_and_watch(&server, &selector, &client, &out) => r,
        };
        if let Err((silent, e)) = result {
            // Unless another task has already moved on (a heartbeat
            // notices first), the next list goes to the next server.
            if silent {
                servers.failed(&server);
            }
            failures += 1;
            if failures == 1 {
                tracing::warn!(error = %e, "watching this node's pods failed; listing again");
            }
        } else {
            failures = 0;
        }
        // Quick after a watch that simply ended, slower while it fails.
        let wait = Duration::from_millis(200 * u64::from(failures.min(10)));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// On failure, the error, and whether the server did not answer at all
/// (then the next try goes to the next server).
async fn list_and_watch(
    server: &reqwest::Url,
    selector: &str,
    client: &watch::Receiver<reqwest::Client>,
    out: &watch::Sender<Pods>,
) -> Result<(), (bool, String)> {
    let http = client.borrow().clone();
    let mut url = server
        .join("api/v1/pods")
        .map_err(|e| (false, format!("MUBE_API_SERVER: {e}")))?;
    url.query_pairs_mut().append_pair("fieldSelector", selector);
    let response = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| (true, mube_apis::errors::chain(&e)))?;
    if !response.status().is_success() {
        let code = response.status();
        return Err((
            code.is_server_error(),
            format!(
                "listing pods: {code} {}",
                response.text().await.unwrap_or_default()
            ),
        ));
    }
    let list: PodList = response.json().await.map_err(|e| {
        (
            true,
            format!("listing pods: {}", mube_apis::errors::chain(&e)),
        )
    })?;
    let mut pods: HashMap<String, Arc<Pod>> = HashMap::new();
    for pod in list.items {
        if let Some(uid) = uid(&pod) {
            pods.insert(uid.to_string(), Arc::new(pod));
        }
    }
    out.send_replace(Some(Arc::new(pods.clone())));

    url.query_pairs_mut()
        .append_pair("watch", "1")
        .append_pair("resourceVersion", &list.metadata.resource_version)
        .append_pair("allowWatchBookmarks", "true")
        // The server ends a watch after this long; the loop lists again.
        .append_pair("timeoutSeconds", "300");
    // A watch has no overall deadline; the client's per-request timeout
    // would cut it, so this request sets its own.
    let response = http
        .get(url)
        .timeout(Duration::from_secs(330))
        .send()
        .await
        .map_err(|e| (true, mube_apis::errors::chain(&e)))?;
    if !response.status().is_success() {
        let code = response.status();
        return Err((code.is_server_error(), format!("watching pods: {code}")));
    }
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| (true, mube_apis::errors::chain(&e)))?;
        buffer.extend_from_slice(&chunk);
        let mut changed = false;
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: WatchEvent = serde_json::from_slice(&line)
                .map_err(|e| (false, format!("watching pods: undecodable event: {e}")))?;
            match event.kind.as_str() {
                "ADDED" | "MODIFIED" | "DELETED" => {
                    let pod: Pod = serde_json::from_value(event.object)
                        .map_err(|e| (false, format!("watching pods: undecodable pod: {e}")))?;
                    let Some(uid) = uid(&pod).map(str::to_string) else {
                        continue;
                    };
                    if event.kind == "DELETED" {
                        pods.remove(&uid);
                    } else {
                        pods.insert(uid, Arc::new(pod));
                    }
                    changed = true;
                }
                "BOOKMARK" => {}
                // 410 Gone and friends: list again.
                _ => return Err((false, format!("watch ended: {}", event.object))),
            }
        }
        if changed {
            out.send_replace(Some(Arc::new(pods.clone())));
        }
    }
    Ok(())
}
