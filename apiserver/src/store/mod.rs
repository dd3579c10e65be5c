//! The one storage interface every resource kind is served through.
//!
//! Modelled on Kubernetes' `storage.Interface` and etcd's revisions: one
//! global revision counts every write, each stored object remembers the
//! revision of its last write (which is its `metadata.resourceVersion`), and a
//! watch is "every change after revision N". Nothing above this module knows
//! which backend holds the data (mube's own log now; etcd can be added behind
//! the same trait).

mod codec;
#[cfg(test)]
mod conformance;
#[cfg(feature = "etcd")]
mod etcd_store;
mod frame;
mod log_store;
mod recovery;
mod snapshot;
#[cfg(test)]
mod tests;
mod wal;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;

pub use codec::stamp;
#[cfg(feature = "etcd")]
pub use etcd_store::{EtcdStore, EtcdStoreOptions};
pub use log_store::{LogStore, LogStoreOptions};
pub use wal::Faults;
pub use watch::WatchStream;

/// A point in the store's history. Every write gets the next one.
pub type Revision = u64;

/// An object as stored: its key, the revision of its last write, and its JSON
/// (whose `metadata.resourceVersion` equals `revision`).
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub key: Arc<str>,
    pub revision: Revision,
    pub json: Bytes,
}

impl StoredObject {
    pub fn value(&self) -> Result<Value, StoreError> {
        serde_json::from_slice(&self.json).map_err(|e| {
            StoreError::Corruption(format!("stored object {} does not decode: {e}", self.key))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One change, as history keeps it and watches deliver it. `object` is the new
/// state (for a delete: the last state, stamped with the delete's revision);
/// `previous` is the state before, which lets a filtered watch turn a change
/// that leaves its selector into a DELETED.
#[derive(Debug, Clone)]
pub struct Event {
    pub revision: Revision,
    pub kind: EventKind,
    pub key: Arc<str>,
    pub object: Bytes,
    pub previous: Option<Bytes>,
    /// What a reader derived from this event once for every reader of it
    /// (the event is shared): the watch layer keeps here the labels and
    /// selectable fields its filtered watchers match, so that a hundred
    /// watchers with selectors decode the object once, not a hundred
    /// times. Opaque to the store.
    pub derived: std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Event {
    /// The object as this change left it; `None` for a delete.
    pub fn after(&self) -> Option<StoredObject> {
        (self.kind != EventKind::Deleted).then(|| StoredObject {
            key: self.key.clone(),
            revision: self.revision,
            json: self.object.clone(),
        })
    }
}

/// A list taken one object at a time (`Store::list_cursor`).
pub struct ListCursor {
    /// The revision the list is read at.
    pub revision: Revision,
    next: Box<dyn FnMut() -> Option<StoredObject> + Send>,
}

impl ListCursor {
    pub fn new(
        revision: Revision,
        next: impl FnMut() -> Option<StoredObject> + Send + 'static,
    ) -> ListCursor {
        ListCursor {
            revision,
            next: Box::new(next),
        }
    }

    /// A list already read.
    pub fn of(list: ListResult) -> ListCursor {
        let mut items = list.items.into_iter();
        ListCursor::new(list.revision, move || items.next())
    }
}

impl Iterator for ListCursor {
    type Item = StoredObject;

    fn next(&mut self) -> Option<StoredObject> {
        (self.next)()
    }
}

/// Which state a list is read at. Every state a store serves is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAt {
    /// The newest durable state.
    Newest,
    /// The newest durable state, for the first page of a list of at most
    /// this many objects: kept for a while, when there are more, so that the
    /// later pages are read at the same revision.
    NewestPaged(usize),
    /// Exactly this revision: a later page of a paged list, or
    /// `resourceVersionMatch=Exact`. Past the history the store keeps, this
    /// is `Compacted` (410 Expired for the client).
    Exact(Revision),
}

/// A consistent list: every object under a prefix as of `revision`.
#[derive(Debug, Clone)]
pub struct ListResult {
    pub items: Vec<StoredObject>,
    pub revision: Revision,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{key} not found")]
    NotFound { key: String },
    #[error("{key} already exists")]
    AlreadyExists { key: String },
    #[error("{key} was modified: expected resourceVersion {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    #[error("resourceVersion {requested} is too old; history starts after {compacted}")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// A read asked for a revision the store has not reached (or not made
    /// durable) within the wait it was given.
    #[error("Too large resource version: {requested}, current: {current}")]
    TooLarge {
        requested: Revision,
        current: Revision,
    },
    #[error("watcher fell too far behind and was dropped")]
    TooSlow,
    #[error("the store is shutting down")]
    Closed,
    /// Stored data is not what was written: a damaged log record, a gap
    /// in revisions, an object that does not decode. Never the client's
    /// fault: 500.
    #[error("stored data is corrupt: {0}")]
    Corruption(String),
    /// The disk or the operating system refused (open, create, read,
    /// spawn): 500, or at start-up, a start that fails with the reason.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// The store has stopped (its log could not be written): nothing more is
    /// written or served until the process is restarted.
    #[error("{0}")]
    Failed(String),
    /// The store cannot be reached now (etcd down or unreachable); the
    /// request may be tried again: 503.
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    #[error("invalid object: {0}")]
    InvalidObject(String),
    /// A delete's `Preconditions` did not hold; the message is Kubernetes'
    /// ("Precondition failed: UID in precondition: ...").
    #[error("{message}")]
    PreconditionFailed { key: String, message: String },
}

/// What a delete requires of the object it removes, as Kubernetes'
/// `DeleteOptions.preconditions`. Checked by the store under the same lock
/// (or transaction) as the delete itself, so that an object recreated under
/// the same name, or changed since the client looked, is never removed.
///
/// Both are compared as strings, as Kubernetes does: an empty or malformed
/// value is a precondition no object meets (409), never one that is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl Preconditions {
    /// Only "the object is still at revision `revision`".
    pub fn revision(revision: Revision) -> Preconditions {
        Preconditions {
            uid: None,
            resource_version: Some(revision.to_string()),
        }
    }

    /// Checks `current` against these preconditions, with Kubernetes'
    /// messages. Reads the uid out of the stored JSON only when one is asked for.
    pub fn check(&self, current: &StoredObject) -> Result<(), StoreError> {
        let failed = |message: String| StoreError::PreconditionFailed {
            key: current.key.to_string(),
            message,
        };
        if let Some(want) = &self.uid {
            #[derive(serde::Deserialize)]
            struct Meta {
                #[serde(default)]
                uid: String,
            }
            #[derive(serde::Deserialize)]
            struct Uid {
                metadata: Meta,
            }
            let actual = serde_json::from_slice::<Uid>(&current.json)
                .map(|o| o.metadata.uid)
                .map_err(|e| {
                    StoreError::Corruption(format!(
                        "stored object {} does not decode: {e}",
                        current.key
                    ))
                })?;
            if *want != actual {
                return Err(failed(format!(
                    "Precondition failed: UID in precondition: {want}, UID in object meta: {actual}"
                )));
            }
        }
        if let Some(want) = &self.resource_version {
            if *want != current.revision.to_string() {
                return Err(failed(format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {}",
                    current.revision
                )));
            }
        }
        Ok(())
    }
}

/// The narrow interface under every resource. Writes return only once they
/// are durable; the returned object carries its new resourceVersion.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError>;

    /// `get`, or what this server holds of the key in memory, which may
    /// be a moment behind: only for a read whose write carries its
    /// revision as a precondition (a stale read then costs a conflict and
    /// a `get`, never a lost update), as Kubernetes' `GuaranteedUpdate`
    /// starts from the watch cache's copy. The log store's `get` is
    /// already in memory.
    async fn get_cached(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        self.get(key).await
    }

    /// Every object whose key starts with `prefix`, at one revision.
    async fn list(&self, prefix: &str, at: ReadAt) -> Result<ListResult, StoreError>;

    /// `list` at the newest revision, read as it is taken: what a watch's
    /// initial events come from, so that a client that takes them slowly
    /// costs a cursor, not a copy of the list. This default reads the list
    /// whole (etcd's pages would each be a round trip); the log store
    /// keeps its snapshot instead, which every reader of it shares.
    async fn list_cursor(&self, prefix: &str) -> Result<ListCursor, StoreError> {
        Ok(ListCursor::of(self.list(prefix, ReadAt::Newest).await?))
    }

    /// How many objects are under `prefix` now (`apiserver_storage_objects`).
    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        Ok(self.list(prefix, ReadAt::Newest).await?.items.len() as u64)
    }

    /// Waits, at most `within`, until reads are served at `revision` or
    /// later; then `TooLarge` with the newest revision there is.
    async fn wait_for(&self, revision: Revision, within: Duration) -> Result<(), StoreError>;

    /// Fails with `AlreadyExists` if the key is taken.
    async fn create(&self, key: &str, object: Value) -> Result<StoredObject, StoreError>;

    /// Replaces an existing object. With `expected`, fails with `Conflict`
    /// unless the object's current revision is exactly that. A refusal is
    /// answered only once the state it was decided against is durable (and
    /// so readable).
    async fn update(
        &self,
        key: &str,
        expected: Option<Revision>,
        object: Value,
    ) -> Result<StoredObject, StoreError>;

    /// Removes an object if it meets `preconditions` (else
    /// `PreconditionFailed`), checked atomically with the removal.
    async fn delete(
        &self,
        key: &str,
        preconditions: &Preconditions,
    ) -> Result<StoredObject, StoreError>;

    /// Every change under `prefix` after revision `after`, then live changes.
    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    /// The newest revision whose history has been dropped: watching (or
    /// continuing a list) from before it is 410 Gone.
    fn compacted(&self) -> Revision;

    /// Why the store has stopped (its log could not be written), if it has:
    /// it then serves nothing more, and the process must be restarted.
    fn failure(&self) -> Option<String>;

    /// Why the store works but needs attention (say, snapshots are skipped
    /// for lack of disk space), if it does; `/readyz` reports it.
    fn degraded(&self) -> Option<String> {
        None
    }

    /// Bytes of this store's files on the local disk, for a store that
    /// keeps files (`mube_store_data_dir_bytes`).
    fn disk_bytes(&self) -> Option<u64> {
        None
    }

    /// Makes everything durable and stops background work.
    async fn close(&self);
}

/// Read-modify-write that retries on conflict, like Kubernetes'
/// `GuaranteedUpdate`: `modify` gets the current object and returns the new
/// one, or `None` to leave it unchanged (no write, no event).
pub async fn guaranteed_update<E>(
    store: &dyn Store,
    key: &str,
    modify: impl FnMut(&StoredObject, Value) -> Result<Option<Value>, E>,
) -> Result<StoredObject, E>
where
    E: From<StoreError>,
{
    guaranteed_update_from(store, key, false, modify).await
}

/// `guaranteed_update` whose first read is `get_cached`: on a hot path
/// (a Lease renewal) one round trip to the store instead of two. A
/// `None` from `modify` is then answered from a read that may be a moment
/// behind; callers that care read again.
pub async fn guaranteed_update_cached<E>(
    store: &dyn Store,
    key: &str,
    modify: impl FnMut(&StoredObject, Value) -> Result<Option<Value>, E>,
) -> Result<StoredObject, E>
where
    E: From<StoreError>,
{
    guaranteed_update_from(store, key, true, modify).await
}

async fn guaranteed_update_from<E>(
    store: &dyn Store,
    key: &str,
    mut cached: bool,
    mut modify: impl FnMut(&StoredObject, Value) -> Result<Option<Value>, E>,
) -> Result<StoredObject, E>
where
    E: From<StoreError>,
{
    loop {
        let read = if cached {
            store.get_cached(key).await?
        } else {
            store.get(key).await?
        };
        // After a conflict, from the store itself.
        cached = false;
        let current = read.ok_or_else(|| StoreError::NotFound {
            key: key.to_string(),
        })?;
        let value = current.value()?;
        let Some(next) = modify(&current, value)? else {
            return Ok(current);
        };
        match store.update(key, Some(current.revision), next).await {
            // A store answers a conflict only once the write it conflicted
            // with is durable, so the next read sees it.
            Err(StoreError::Conflict { .. }) => continue,
            other => return Ok(other?),
        }
    }
}

/// `update`'s precondition: the object exists and, with `expected`, is at
/// exactly that revision. Shared by every backend (and the dry-run store) so
/// that all answer alike.
pub fn check_revision(
    key: &str,
    current: Option<&StoredObject>,
    expected: Option<Revision>,
) -> Result<(), StoreError> {
    let current = current.ok_or_else(|| StoreError::NotFound {
        key: key.to_string(),
    })?;
    match expected {
        Some(expected) if expected != current.revision => Err(StoreError::Conflict {
            key: key.to_string(),
            expected,
            actual: current.revision,
        }),
        _ => Ok(()),
    }
}

/// The resource segment of a key `/registry/{resource}/...`: watch fan-out is
/// per resource, so a lease renewal never wakes a node watcher.
pub fn resource_of(key: &str) -> &str {
    key.trim_start_matches('/')
        .split('/')
        .nth(1)
        .unwrap_or_default()
}
