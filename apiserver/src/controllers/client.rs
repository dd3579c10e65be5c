//! The API a controller sees. Controllers depend on this trait, not on the
//! registry, so running one in a separate process later means implementing
//! it over HTTP; the in-process client goes through exactly the registry
//! calls the HTTP handlers make (same validation, same update path).

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use mube_apis::resources::ResourceInfo;
use mube_apis::watch::{EventType, WatchEvent};
use serde_json::Value;

use crate::error::ApiError;
use crate::registry::{managed, DryRun, Filter, Part, Registry};
use crate::store::{EventKind, ReadAt};

/// A list's items, decoded one at a time as they are taken: a controller
/// walks 100,000 nodes without holding 100,000 decoded objects at once
/// (measured: holding them all cost ~600 MiB).
pub type Items = Box<dyn Iterator<Item = Result<Value, ApiError>> + Send>;

#[async_trait]
pub trait ApiClient: Send + Sync {
    /// Every object of a kind, and the resourceVersion to watch from.
    async fn list(
        &self,
        kind: &ResourceInfo,
        namespace: Option<&str>,
    ) -> Result<(Items, String), ApiError>;

    /// Changes after `resource_version`. The stream ends with an error (410
    /// when history is gone) or when the server stops.
    async fn watch(
        &self,
        kind: &ResourceInfo,
        namespace: Option<&str>,
        resource_version: &str,
    ) -> Result<BoxStream<'static, Result<WatchEvent, ApiError>>, ApiError>;

    async fn get(
        &self,
        kind: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError>;

    /// `PUT .../{name}/status`; the object's resourceVersion is a precondition.
    async fn update_status(
        &self,
        kind: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        object: Value,
    ) -> Result<Value, ApiError>;

    async fn delete(
        &self,
        kind: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), ApiError>;

    async fn create(
        &self,
        kind: &ResourceInfo,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<Value, ApiError>;

    /// Every namespaced kind the server serves (its discovery).
    fn namespaced_kinds(&self) -> Vec<&'static ResourceInfo>;
}

/// The in-process client.
pub struct LocalClient {
    registry: Arc<Registry>,
}

impl LocalClient {
    pub fn new(registry: Arc<Registry>) -> LocalClient {
        LocalClient { registry }
    }
}

#[async_trait]
impl ApiClient for LocalClient {
    fn namespaced_kinds(&self) -> Vec<&'static ResourceInfo> {
        self.registry
            .resources()
            .iter()
            .filter(|r| r.namespaced && r.is_stored_version())
            .map(|r| r.info)
            .collect()
    }

    async fn list(
        &self,
        kind: &ResourceInfo,
        namespace: Option<&str>,
    ) -> Result<(Items, String), ApiError> {
        let r = self.registry.resource(kind)?;
        let (items, revision) = self
            .registry
            .list(&r, namespace, &Filter::default(), ReadAt::Newest)
            .await?;
        let items = items.into_iter().map(|i| i.value().map_err(ApiError::from));
        Ok((Box::new(items), revision.to_string()))
    }

    async fn watch(
        &self,
        kind: &ResourceInfo,
        namespace: Option<&str>,
        resource_version: &str,
    ) -> Result<BoxStream<'static, Result<WatchEvent, ApiError>>, ApiError> {
        let r = self.registry.resource(kind)?;
        let after = crate::registry::parse_resource_version(resource_version, "resourceVersion")?;
        let stream = self.registry.watch(&r, namespace, after)?;
        let events = futures::stream::unfold(Some(stream), |stream| async move {
            let mut stream = stream?;
            match stream.next().await? {
                Ok(event) => {
                    let type_ = match event.kind {
                        EventKind::Added => EventType::Added,
                        EventKind::Modified => EventType::Modified,
                        EventKind::Deleted => EventType::Deleted,
                    };
                    let object = serde_json::from_slice(&event.object).map_err(|e| {
                        ApiError::new(
                            mube_apis::status::Reason::InternalError,
                            format!("a stored object in a watch event does not decode: {e}"),
                        )
                    });
                    Some((
                        object.map(|object| WatchEvent { type_, object }),
                        Some(stream),
                    ))
                }
                // Deliver the error, then end.
                Err(e) => Some((Err(ApiError::from(e)), None)),
            }
        });
        Ok(events.boxed())
    }

    async fn get(
        &self,
        kind: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let r = self.registry.resource(kind)?;
        Ok(self.registry.get(&r, namespace, name).await?.value()?)
    }

    async fn update_status(
        &self,
        kind: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        object: Value,
    ) -> Result<Value, ApiError> {
        let r = self.registry.resource(kind)?;
        Ok(self
            .registry
            .update(
                &r,
                namespace,
                name,
                Part::Status,
                object,
                managed::CONTROLLER_MANAGER,
                DryRun::No,
            )
            .await?
            .value()?)
    }

    async fn delete(
        &self,
        kind: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), ApiError> {
        let r = self.registry.resource(kind)?;
        self.registry
            .delete(&r, namespace, name, &Default::default(), DryRun::No)
            .await
            .map(|_| ())
    }

    async fn create(
        &self,
        kind: &ResourceInfo,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<Value, ApiError> {
        let r = self.registry.resource(kind)?;
        Ok(self
            .registry
            .create(
                &r,
                namespace,
                object,
                managed::CONTROLLER_MANAGER,
                DryRun::No,
            )
            .await?
            .value()?)
    }
}
