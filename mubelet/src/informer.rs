//! Objects of one kind kept current by list and watch, as client-go's
//! informers: the pods bound to this node (`fieldSelector=
//! spec.nodeName=<node>`, the kubelet's API source), and mube-proxy's
//! Services and EndpointSlices. Each change is handed on as the whole set,
//! keyed by UID; after an error the list starts again, so nothing missed in
//! between stays missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Every object, by UID; `None` until the first list arrived (before
/// that, no sandbox may be taken for an orphan pod, and no proxy rule
/// removed). Each object is shared, not copied, with the set's next
/// versions and its readers: a set is handed on at every change.
pub type Objects<K> = Option<Arc<HashMap<String, Arc<K>>>>;

#[derive(Deserialize)]
#[serde(bound = "K: DeserializeOwned")]
struct List<K> {
    metadata: ListMeta,
    #[serde(default = "Vec::new")]
    items: Vec<K>,
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

pub fn uid<K: k8s_openapi::Metadata<Ty = ObjectMeta>>(object: &K) -> Option<&str> {
    object.metadata().uid.as_deref().filter(|u| !u.is_empty())
}

/// What to list and watch: a collection path (`api/v1/pods`), an optional
/// field selector, and the kind's name for log lines.
#[derive(Clone)]
pub struct Source {
    pub path: &'static str,
    pub field_selector: Option<String>,
    pub what: &'static str,
}

/// Lists and watches until `shutdown`, publishing into `out`.
pub async fn run<K>(
    servers: crate::servers::ApiServers,
    source: Source,
    client: watch::Receiver<reqwest::Client>,
    out: watch::Sender<Objects<K>>,
    shutdown: CancellationToken,
) where
    K: k8s_openapi::Metadata<Ty = ObjectMeta> + DeserializeOwned,
{
    let mut failures = 0u32;
    loop {
        let server = servers.current().clone();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = list_and_watch(&server, &source, &client, &out) => r,
        };
        if let Err((silent, e)) = result {
            // Unless another task has already moved on (a heartbeat
            // notices first), the next list goes to the next server.
            if silent {
                servers.failed(&server);
            }
            failures += 1;
            if failures == 1 {
                tracing::warn!(error = %e, what = source.what, "watching failed; listing again");
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
async fn list_and_watch<K>(
    server: &reqwest::Url,
    source: &Source,
    client: &watch::Receiver<reqwest::Client>,
    out: &watch::Sender<Objects<K>>,
) -> Result<(), (bool, String)>
where
    K: k8s_openapi::Metadata<Ty = ObjectMeta> + DeserializeOwned,
{
    let what = source.what;
    let http = client.borrow().clone();
    let mut url = server
        .join(source.path)
        .map_err(|e| (false, format!("MUBE_API_SERVER: {e}")))?;
    if let Some(selector) = &source.field_selector {
        url.query_pairs_mut().append_pair("fieldSelector", selector);
    }
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
                "listing {what}: {code} {}",
                response.text().await.unwrap_or_default()
            ),
        ));
    }
    let list: List<K> = response.json().await.map_err(|e| {
        (
            true,
            format!("listing {what}: {}", mube_apis::errors::chain(&e)),
        )
    })?;
    let mut objects: HashMap<String, Arc<K>> = HashMap::new();
    for object in list.items {
        if let Some(uid) = uid(&object) {
            objects.insert(uid.to_string(), Arc::new(object));
        }
    }
    out.send_replace(Some(Arc::new(objects.clone())));

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
        return Err((code.is_server_error(), format!("watching {what}: {code}")));
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
                .map_err(|e| (false, format!("watching {what}: undecodable event: {e}")))?;
            match event.kind.as_str() {
                "ADDED" | "MODIFIED" | "DELETED" => {
                    let object: K = serde_json::from_value(event.object).map_err(|e| {
                        (false, format!("watching {what}: undecodable object: {e}"))
                    })?;
                    let Some(uid) = uid(&object).map(str::to_string) else {
                        continue;
                    };
                    if event.kind == "DELETED" {
                        objects.remove(&uid);
                    } else {
                        objects.insert(uid, Arc::new(object));
                    }
                    changed = true;
                }
                "BOOKMARK" => {}
                // 410 Gone and friends: list again.
                _ => return Err((false, format!("watch ended: {}", event.object))),
            }
        }
        if changed {
            out.send_replace(Some(Arc::new(objects.clone())));
        }
    }
    Ok(())
}
