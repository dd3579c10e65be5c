//! The namespace controller, as Kubernetes': a namespace being deleted
//! (`deletionTimestamp` set, phase `Terminating`) has everything in it
//! deleted, kind by kind, and then the namespace itself is deleted, which
//! the server now does since nothing is left in it.

use std::sync::Arc;

use futures::StreamExt;
use mube_apis::resources::NAMESPACES;
use mube_apis::watch::EventType;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::client::ApiClient;
use crate::error::ApiError;

pub struct NamespaceController {
    client: Arc<dyn ApiClient>,
}

fn terminating(namespace: &Value) -> Option<String> {
    namespace.pointer("/metadata/deletionTimestamp")?;
    namespace
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        // The system namespaces are never emptied (they cannot be deleted).
        .filter(|name| !crate::registry::namespace::SYSTEM.contains(name))
        .map(str::to_string)
}

impl NamespaceController {
    pub fn new(client: Arc<dyn ApiClient>) -> NamespaceController {
        NamespaceController { client }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        super::relist_until("namespace controller", &shutdown, || {
            self.list_and_watch(&shutdown)
        })
        .await
    }

    async fn list_and_watch(&self, shutdown: &CancellationToken) -> Result<(), ApiError> {
        let (items, rv) = self.client.list(&NAMESPACES, None).await?;
        for item in items {
            if let Some(name) = terminating(&item?) {
                self.empty(&name).await?;
            }
        }
        let mut events = self.client.watch(&NAMESPACES, None, &rv).await?;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                event = events.next() => match event {
                    Some(Ok(e)) if matches!(e.type_, EventType::Added | EventType::Modified) => {
                        if let Some(name) = terminating(&e.object) {
                            self.empty(&name).await?;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Err(ApiError::bad_request("the watch ended")),
                },
            }
        }
    }

    /// Deletes everything in `namespace`, then the namespace.
    async fn empty(&self, namespace: &str) -> Result<(), ApiError> {
        for kind in self.client.namespaced_kinds() {
            let (items, _) = self.client.list(kind, Some(namespace)).await?;
            for item in items {
                let item = item?;
                let Some(name) = item.pointer("/metadata/name").and_then(Value::as_str) else {
                    continue;
                };
                match self.client.delete(kind, Some(namespace), name).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        match self.client.delete(&NAMESPACES, None, namespace).await {
            Ok(()) => {
                tracing::info!(%namespace, "namespace emptied and deleted");
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}
