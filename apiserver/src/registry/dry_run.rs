//! `dryRun=All`: the store a dry-run request writes through.
//!
//! As Kubernetes' `DryRunnableStorage`, a dry run goes through every step of
//! a real write (decoding, defaulting, validation, preconditions, conflict
//! checks) and only the store's writes are replaced: each one reads the
//! current state, makes the same checks the real store would, and returns
//! what it would have stored. Nothing reaches the real store's writes, so no
//! revision is used, no log record is written, and no watcher sees an event.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use std::time::Duration;

use crate::store::{
    check_revision, stamp, ListResult, Preconditions, ReadAt, Revision, Store, StoreError,
    StoredObject, WatchStream,
};

/// Whether a write is carried out, or only tried (`dryRun=All`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DryRun {
    #[default]
    No,
    All,
}

/// Reads from `inner`; writes only check and answer.
pub struct DryRunStore {
    inner: Arc<dyn Store>,
}

impl DryRunStore {
    pub fn new(inner: Arc<dyn Store>) -> DryRunStore {
        DryRunStore { inner }
    }

    /// A store that cannot write fails a dry run too (a 2xx would promise a
    /// write that would fail).
    fn writable(&self) -> Result<(), StoreError> {
        match self.inner.failure() {
            Some(failure) => Err(StoreError::Failed(failure)),
            None => Ok(()),
        }
    }

    async fn current(&self, key: &str) -> Result<StoredObject, StoreError> {
        self.writable()?;
        self.inner
            .get(key)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                key: key.to_string(),
            })
    }
}

#[async_trait]
impl Store for DryRunStore {
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str, at: ReadAt) -> Result<ListResult, StoreError> {
        self.inner.list(prefix, at).await
    }
    async fn wait_for(&self, revision: Revision, within: Duration) -> Result<(), StoreError> {
        self.inner.wait_for(revision, within).await
    }

    /// The object as it would be created: no resourceVersion, since none was
    /// used (as Kubernetes answers a dry-run create).
    async fn create(&self, key: &str, mut object: Value) -> Result<StoredObject, StoreError> {
        self.writable()?;
        if self.inner.get(key).await?.is_some() {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        let json =
            serde_json::to_vec(&object).map_err(|e| StoreError::InvalidObject(e.to_string()))?;
        Ok(StoredObject {
            key: Arc::from(key),
            revision: 0,
            json: json.into(),
        })
    }

    /// The object as it would be stored, at the current object's
    /// resourceVersion: a dry run takes no new revision.
    async fn update(
        &self,
        key: &str,
        expected: Option<Revision>,
        object: Value,
    ) -> Result<StoredObject, StoreError> {
        let current = self.current(key).await?;
        check_revision(key, Some(&current), expected)?;
        Ok(StoredObject {
            json: stamp(object, current.revision)?,
            ..current
        })
    }

    /// The object that would be deleted, once the preconditions hold.
    async fn delete(
        &self,
        key: &str,
        preconditions: &Preconditions,
    ) -> Result<StoredObject, StoreError> {
        let current = self.current(key).await?;
        preconditions.check(&current)?;
        Ok(current)
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, after)
    }

    fn compacted(&self) -> Revision {
        self.inner.compacted()
    }

    fn failure(&self) -> Option<String> {
        self.inner.failure()
    }
    fn degraded(&self) -> Option<String> {
        self.inner.degraded()
    }

    /// The real store is closed by its owner, never through a dry run.
    async fn close(&self) {}
}
