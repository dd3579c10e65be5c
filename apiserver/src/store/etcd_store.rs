//! The etcd backend, as Kubernetes' etcd3 store: keys as Kubernetes lays
//! them out (`{prefix}/{resource}/[{namespace}/]{name}`), an object's
//! resourceVersion is its key's `mod_revision` (stamped on read, not
//! stored), every write is a transaction that compares revisions, lists
//! read at one revision (every page too), and watches come from one etcd
//! watch per resource, fanned out to this server's watchers from a window
//! of recent events (Kubernetes' watch cache), so a thousand kubectl
//! watches are not a thousand etcd watches.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, KvClient, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::watch::History;
use super::{
    check_revision, resource_of, stamp, Event, EventKind, ListResult, Preconditions, ReadAt,
    Revision, Store, StoreError, StoredObject, WatchStream,
};

#[derive(Clone)]
pub struct EtcdStoreOptions {
    pub endpoints: Vec<String>,
    /// Where keys live in etcd (Kubernetes: `/registry`).
    pub prefix: String,
    /// Events of one resource kept for watches that start in the past.
    pub history_per_resource: usize,
    /// Events a watcher may fall behind before it is dropped.
    pub watch_buffer: usize,
    /// How often one API server compacts etcd's history (kube-apiserver's
    /// `--etcd-compaction-interval`, 5 minutes); `None`: never.
    pub compaction_interval: Option<Duration>,
    /// TLS to etcd: the CA (PEM) that signed etcd's certificate, and this
    /// server's client certificate and key (PEM).
    pub ca: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdStoreOptions {
    pub fn new(endpoints: Vec<String>) -> EtcdStoreOptions {
        EtcdStoreOptions {
            endpoints,
            prefix: "/registry".into(),
            history_per_resource: 10_000,
            watch_buffer: 4096,
            compaction_interval: Some(Duration::from_secs(300)),
            ca: None,
            identity: None,
        }
    }
}

/// Keys read per request of a list: etcd answers a range in one message,
/// which a list of 100,000 objects must not be.
const LIST_PAGE: i64 = 1000;

pub struct EtcdStore {
    client: Client,
    prefix: String,
    /// The watch caches, shared with the tasks that fill them.
    caches: Caches,
    /// Why etcd did not answer the last health check, if it did not:
    /// `/readyz` fails with it until etcd answers again.
    unreachable: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
}

/// Every resource's watch cache, and what it takes to start one.
#[derive(Clone)]
struct Caches {
    client: Client,
    prefix: String,
    options: EtcdStoreOptions,
    by_resource: Arc<Mutex<HashMap<String, Arc<Cache>>>>,
    /// Resources whose objects are being read into their cache.
    filling: Arc<Mutex<std::collections::HashSet<String>>>,
    /// The newest revision etcd has compacted, as far as this server knows.
    compacted: Arc<AtomicU64>,
    stop: CancellationToken,
}

/// How often etcd is asked whether it answers, and how long it has.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps `unreachable` current until `stop`.
async fn health(
    mut kv: KvClient,
    prefix: String,
    unreachable: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
) {
    loop {
        let check = kv.get(prefix.as_bytes(), Some(GetOptions::new().with_count_only()));
        let trouble = match tokio::time::timeout(HEALTH_TIMEOUT, check).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("etcd does not answer: {e}")),
            Err(_) => Some(format!(
                "etcd does not answer within {}s",
                HEALTH_TIMEOUT.as_secs()
            )),
        };
        {
            let mut now = unreachable.lock().unwrap_or_else(|p| p.into_inner());
            match (&*now, &trouble) {
                (None, Some(t)) => tracing::warn!(trouble = %t, "etcd lost"),
                (Some(_), None) => tracing::info!("etcd answers again"),
                _ => {}
            }
            *now = trouble;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(HEALTH_EVERY) => {}
        }
    }
}

/// etcd's errors as the store's: what may pass if tried again (etcd down,
/// slow, without a leader) is `Unavailable` (503); what will not (a value
/// too large, a refusal) is an I/O error (500), so that clients do not
/// retry it forever.
fn unavailable(e: etcd_client::Error) -> StoreError {
    use tonic::Code;
    match &e {
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                StoreError::Unavailable(format!("etcd: {e}"))
            }
            _ => StoreError::Io(format!("etcd: {e}")),
        },
        _ => StoreError::Unavailable(format!("etcd: {e}")),
    }
}

/// The largest message etcd's answers may be (Kubernetes sets the same):
/// a page of large objects, or a watch catching up, is never refused.
const MAX_MESSAGE: usize = i32::MAX as usize;

/// Whether etcd refused a read for a revision it has compacted away, or
/// has not reached.
fn compacted_error(e: &etcd_client::Error) -> bool {
    e.to_string()
        .contains("required revision has been compacted")
}

fn future_error(e: &etcd_client::Error) -> bool {
    e.to_string()
        .contains("required revision is a future revision")
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the key space.
    vec![0]
}

/// The object as etcd keeps it: without its resourceVersion, which is
/// the key's `mod_revision` and stamped on every read (Kubernetes stores
/// objects the same way).
fn stored_form(mut object: Value) -> Result<(Value, Vec<u8>), StoreError> {
    let meta = object
        .as_object_mut()
        .ok_or_else(|| StoreError::InvalidObject("object must be a JSON object".into()))?
        .entry("metadata")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(meta) = meta.as_object_mut() {
        meta.remove("resourceVersion");
    }
    let bytes =
        serde_json::to_vec(&object).map_err(|e| StoreError::InvalidObject(e.to_string()))?;
    Ok((object, bytes))
}

/// `object` as stored at revision `at`: its resourceVersion stamped in.
fn stored(key: &str, at: Revision, object: Value) -> Result<StoredObject, StoreError> {
    Ok(StoredObject {
        key: key.into(),
        revision: at,
        json: stamp(object, at)?,
    })
}

fn revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision().max(0) as u64)
}

impl EtcdStore {
    pub async fn connect(options: EtcdStoreOptions) -> Result<EtcdStore, StoreError> {
        // Keep-alive pings find a connection that died without a word; a
        // member cut off from its leader refuses rather than serve stale
        // data or hold a watch silent (as Kubernetes' client asks).
        let mut connect = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30))
            .with_keep_alive(Duration::from_secs(30), Duration::from_secs(10))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if options.ca.is_some() || options.identity.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &options.ca {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &options.identity {
                tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(tls);
        }
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(unavailable)?;
        let prefix = options.prefix.trim_end_matches('/').to_string();
        let stop = CancellationToken::new();
        let store = EtcdStore {
            caches: Caches {
                client: client.clone(),
                prefix: prefix.clone(),
                options,
                by_resource: Default::default(),
                filling: Default::default(),
                compacted: Arc::new(AtomicU64::new(0)),
                stop: stop.clone(),
            },
            client,
            prefix,
            unreachable: Arc::new(Mutex::new(None)),
            stop,
        };
        // Answers now, or start-up says why.
        store.current_revision().await?;
        tokio::spawn(health(
            store.client.kv_client(),
            store.prefix.clone(),
            store.unreachable.clone(),
            store.stop.clone(),
        ));
        if let Some(interval) = store.caches.options.compaction_interval {
            tokio::spawn(compactor(
                store.client.kv_client(),
                interval,
                store.caches.compacted.clone(),
                store.stop.clone(),
            ));
        }
        Ok(store)
    }

    fn kv(&self) -> KvClient {
        self.caches.kv()
    }

    fn etcd_key(&self, key: &str) -> String {
        self.caches.etcd_key(key)
    }

    fn object(&self, kv: &KeyValue, at: Revision) -> Result<StoredObject, StoreError> {
        self.caches.object(kv, at)
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.caches.current_revision().await
    }

    fn lock_caches(&self) -> MutexGuard<'_, HashMap<String, Arc<Cache>>> {
        self.caches.lock()
    }

    fn cache(&self, resource: &str, from: Revision) -> Arc<Cache> {
        self.caches.cache(resource, from, None)
    }
}

impl Caches {
    fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// `/registry/pods/ns/name` → `{prefix}/pods/ns/name`.
    fn etcd_key(&self, key: &str) -> String {
        format!(
            "{}{}",
            self.prefix,
            key.strip_prefix("/registry").unwrap_or(key)
        )
    }

    fn our_key(&self, etcd_key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(etcd_key).ok()?;
        key.strip_prefix(&self.prefix)
            .map(|rest| format!("/registry{rest}"))
    }

    fn object(&self, kv: &KeyValue, at: Revision) -> Result<StoredObject, StoreError> {
        let key = self
            .our_key(kv.key())
            .ok_or_else(|| StoreError::Corruption("a key outside the prefix".into()))?;
        let value: Value = serde_json::from_slice(kv.value()).map_err(|e| {
            StoreError::Corruption(format!("stored object {key} does not decode: {e}"))
        })?;
        stored(&key, at, value)
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let r = self
            .kv()
            .get(
                self.prefix.as_bytes(),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(unavailable)?;
        Ok(revision(r.header()))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Cache>>> {
        self.by_resource.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The watch cache of `resource`, started from after `from` if there
    /// is none yet, holding `objects` (the resource's objects at `from`)
    /// when given.
    fn cache(
        &self,
        resource: &str,
        from: Revision,
        objects: Option<HashMap<Arc<str>, StoredObject>>,
    ) -> Arc<Cache> {
        let mut caches = self.lock();
        if let Some(c) = caches.get(resource) {
            return c.clone();
        }
        let buffer = self.options.watch_buffer.max(1);
        let cache = Arc::new(Cache {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                floor: from,
                published: from,
                tx: broadcast::channel(buffer).0,
                shared: Arc::new(AtomicU64::new(from)),
                objects,
                objects_at: from,
            }),
            max: self.options.history_per_resource.max(1),
            buffer,
        });
        tokio::spawn(pump(
            self.client.clone(),
            format!("{}/{resource}/", self.prefix),
            self.prefix.clone(),
            cache.clone(),
            self.compacted.clone(),
            self.stop.clone(),
        ));
        caches.insert(resource.to_string(), cache.clone());
        cache
    }

    /// Every object under `prefix` at one revision (`at`, or the newest),
    /// read a page at a time.
    async fn list(&self, prefix: &str, at: ReadAt) -> Result<ListResult, StoreError> {
        let start = self.etcd_key(prefix).into_bytes();
        let end = prefix_end(&start);
        let mut at_revision = match at {
            ReadAt::Newest | ReadAt::NewestPaged(_) => 0,
            ReadAt::Exact(r) => r,
        };
        let mut from = start;
        let mut items = Vec::new();
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_revision(at_revision as i64)
                .with_limit(LIST_PAGE);
            let r = match self.kv().get(from.clone(), Some(options)).await {
                Ok(r) => r,
                Err(e) if compacted_error(&e) => {
                    return Err(StoreError::Compacted {
                        requested: at_revision,
                        compacted: self.compacted.load(Ordering::Acquire),
                    })
                }
                Err(e) if future_error(&e) => {
                    return Err(StoreError::TooLarge {
                        requested: at_revision,
                        current: self.current_revision().await?,
                    })
                }
                Err(e) => return Err(unavailable(e)),
            };
            // Every later page at the first one's revision.
            if at_revision == 0 {
                at_revision = revision(r.header());
            }
            for kv in r.kvs() {
                items.push(self.object(kv, kv.mod_revision().max(0) as u64)?);
            }
            match r.kvs().last() {
                Some(last) if r.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(ListResult {
            items,
            revision: at_revision,
        })
    }

    /// Reads `resource`'s objects into its cache, in the background, one
    /// reading per resource at a time; `cached` answers from them once
    /// they are there.
    fn fill(&self, resource: &str) {
        if !self
            .filling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(resource.to_string())
        {
            return;
        }
        let (caches, resource) = (self.clone(), resource.to_string());
        tokio::spawn(async move {
            // At the newest revision: the cache's events after it are
            // applied on top, those up to it skipped (they are in it).
            let listed = caches
                .list(&format!("/registry/{resource}/"), ReadAt::Newest)
                .await;
            match listed {
                Ok(list) => {
                    let objects: HashMap<Arc<str>, StoredObject> =
                        list.items.into_iter().map(|o| (o.key.clone(), o)).collect();
                    let existing = caches.lock().get(&resource).cloned();
                    match existing {
                        // Started from the list: its watch goes on after it.
                        None => {
                            caches.cache(&resource, list.revision, Some(objects));
                        }
                        Some(cache) => {
                            let mut ring = cache.lock();
                            // The events after the list that the ring has
                            // go on top; those it has yet to take in come
                            // as they arrive. Not if the ring has dropped
                            // some of them: a later call tries again.
                            if list.revision >= ring.floor {
                                ring.objects_at = list.revision;
                                let mut objects = objects;
                                for e in ring.events.iter().filter(|e| e.revision > list.revision) {
                                    apply(&mut objects, e);
                                }
                                ring.objects = Some(objects);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(resource = %resource, error = %e, "cannot read objects into the watch cache; reading from etcd meanwhile")
                }
            }
            caches
                .filling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&resource);
        });
    }

    /// `key` as this server's cache holds it: `Some(None)` when the cache
    /// holds its resource's objects and not this key, `None` when it does
    /// not hold them (yet).
    fn cached(&self, key: &str) -> Option<Option<StoredObject>> {
        let cache = self.lock().get(resource_of(key)).cloned()?;
        let ring = cache.lock();
        ring.objects.as_ref().map(|o| o.get(key).cloned())
    }

    /// What this server just wrote, into its cache at once: its next
    /// read-modify-write starts from it, even before the watch brings it.
    fn wrote(&self, key: &str, now: Option<&StoredObject>, at: Revision) {
        let Some(cache) = self.lock().get(resource_of(key)).cloned() else {
            return;
        };
        let mut ring = cache.lock();
        // The watch has brought this write already, and perhaps later
        // ones (a delete): nothing to add, and nothing older to put back.
        if at <= ring.published {
            return;
        }
        let Some(objects) = ring.objects.as_mut() else {
            return;
        };
        if objects.get(key).is_some_and(|o| o.revision >= at) {
            return;
        }
        match now {
            Some(o) => {
                objects.insert(o.key.clone(), o.clone());
            }
            None => {
                objects.remove(key);
            }
        }
    }
}

/// One event onto a cache's objects, unless the object there is already
/// as new (written through by this server, or read by a later list).
fn apply(objects: &mut HashMap<Arc<str>, StoredObject>, e: &Event) {
    if objects
        .get(&e.key)
        .is_some_and(|o| o.revision >= e.revision)
    {
        return;
    }
    match e.after() {
        Some(o) => {
            objects.insert(e.key.clone(), o);
        }
        None => {
            objects.remove(&e.key);
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        let r = self
            .kv()
            .get(self.etcd_key(key), None)
            .await
            .map_err(unavailable)?;
        r.kvs()
            .first()
            .map(|kv| self.object(kv, kv.mod_revision().max(0) as u64))
            .transpose()
    }

    async fn list(&self, prefix: &str, at: ReadAt) -> Result<ListResult, StoreError> {
        self.caches.list(prefix, at).await
    }

    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        let start = self.etcd_key(prefix).into_bytes();
        let end = prefix_end(&start);
        let options = GetOptions::new().with_range(end).with_count_only();
        let r = self
            .kv()
            .get(start, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(r.count().max(0) as u64)
    }

    /// From this server's watch cache of the resource once it holds the
    /// objects (reading them in starts at the first call); from etcd when
    /// the key is not there. May be a moment behind etcd: for callers that
    /// write with the read's revision as a precondition.
    async fn get_cached(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        match self.caches.cached(key) {
            Some(Some(hit)) => return Ok(Some(hit)),
            Some(None) => {}
            None => self.caches.fill(resource_of(key)),
        }
        self.get(key).await
    }

    async fn wait_for(&self, revision: Revision, within: Duration) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let current = self.current_revision().await?;
            if current >= revision {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::TooLarge {
                    requested: revision,
                    current,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn create(&self, key: &str, object: Value) -> Result<StoredObject, StoreError> {
        let (object, bytes) = stored_form(object)?;
        let k = self.etcd_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k, bytes, None)]);
        let r = self.kv().txn(txn).await.map_err(unavailable)?;
        if !r.succeeded() {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        let at = revision(r.header());
        let created = stored(key, at, object)?;
        self.caches.wrote(key, Some(&created), at);
        Ok(created)
    }

    async fn update(
        &self,
        key: &str,
        expected: Option<Revision>,
        object: Value,
    ) -> Result<StoredObject, StoreError> {
        let (object, bytes) = stored_form(object)?;
        let k = self.etcd_key(key);
        // It must exist (a missing key's mod_revision compares as 0), and
        // with `expected`, be at exactly that revision.
        let mut compare = vec![Compare::create_revision(k.clone(), CompareOp::Greater, 0)];
        if let Some(r) = expected {
            compare.push(Compare::mod_revision(k.clone(), CompareOp::Equal, r as i64));
        }
        let txn = Txn::new()
            .when(compare)
            .and_then([TxnOp::put(k.clone(), bytes, None)])
            .or_else([TxnOp::get(k, None)]);
        let r = self.kv().txn(txn).await.map_err(unavailable)?;
        if r.succeeded() {
            let at = revision(r.header());
            let updated = stored(key, at, object)?;
            self.caches.wrote(key, Some(&updated), at);
            return Ok(updated);
        }
        // What it was decided against, as the log store answers.
        let current = r.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        let current = current
            .map(|kv| self.object(&kv, kv.mod_revision().max(0) as u64))
            .transpose()?;
        check_revision(key, current.as_ref(), expected)?;
        // Not reached: the compare failed, so one of the two above did.
        Err(StoreError::Unavailable(format!(
            "etcd refused the update of {key} without saying why"
        )))
    }

    async fn delete(
        &self,
        key: &str,
        preconditions: &Preconditions,
    ) -> Result<StoredObject, StoreError> {
        let k = self.etcd_key(key);
        // Read, check, then delete only if nothing changed in between
        // (Kubernetes' etcd3 store does the same loop).
        loop {
            let current = self.get(key).await?.ok_or_else(|| StoreError::NotFound {
                key: key.to_string(),
            })?;
            preconditions.check(&current)?;
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    k.clone(),
                    CompareOp::Equal,
                    current.revision as i64,
                )])
                .and_then([TxnOp::delete(k.clone(), None)]);
            let r = self.kv().txn(txn).await.map_err(unavailable)?;
            if r.succeeded() {
                let at = revision(r.header());
                self.caches.wrote(key, None, at);
                return stored(key, at, current.value()?);
            }
        }
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let compacted = self.compacted();
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let cache = self.cache(resource_of(prefix), after);
        let ring = cache.lock();
        if after < ring.floor {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: ring.floor,
            });
        }
        let live = ring.tx.subscribe();
        let history_end = ring.published;
        let shared = ring.shared.clone();
        drop(ring);
        Ok(WatchStream::new(
            prefix,
            after,
            history_end,
            cache,
            live,
            shared,
        ))
    }

    fn compacted(&self) -> Revision {
        self.caches.compacted.load(Ordering::Acquire)
    }

    fn failure(&self) -> Option<String> {
        None
    }

    fn degraded(&self) -> Option<String> {
        self.unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the background tasks and ends every watch (`None`: the store
    /// shuts down).
    async fn close(&self) {
        self.stop.cancel();
        for cache in self.lock_caches().drain().map(|(_, c)| c) {
            let mut ring = cache.lock();
            ring.tx = broadcast::channel(1).0;
        }
    }
}

/// One resource's recent events, and the live feed its watchers take.
struct Cache {
    ring: Mutex<Ring>,
    /// Events kept, and the live feed's buffer per watcher.
    max: usize,
    buffer: usize,
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    /// Every revision up to here is not (or no longer) in `events`.
    floor: Revision,
    /// The newest revision this cache has taken in.
    published: Revision,
    tx: broadcast::Sender<Arc<Event>>,
    /// `published`, stored after each batch is sent, for this feed's
    /// watchers: what one with nothing in flight has seen everything up
    /// to (its bookmarks). A reset gives the new feed a new one, so that
    /// the ended watchers never bookmark past what they missed.
    shared: Arc<AtomicU64>,
    /// The resource's objects, once read in (`Caches::fill`) and kept up
    /// to date from the same events: what `get_cached` answers from.
    objects: Option<HashMap<Arc<str>, StoredObject>>,
    /// The revision `objects` was listed at: events up to it are in it.
    objects_at: Revision,
}

impl Cache {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops everything up to `at` and ends the current watchers: they
    /// missed something (etcd compacted it, or it could not be read), so
    /// they watch again, get 410 from before `at`, and relist.
    fn reset(&self, ring: &mut Ring, at: Revision) {
        ring.events.clear();
        ring.floor = at;
        ring.published = at;
        ring.tx = broadcast::channel(self.buffer).0;
        ring.shared = Arc::new(AtomicU64::new(at));
        // Missed events: read the objects in again when next asked.
        ring.objects = None;
    }
}

impl History for Cache {
    fn read(
        &self,
        after: Revision,
        upto: Revision,
        max: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let ring = self.lock();
        if after < ring.floor {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: ring.floor,
            });
        }
        let start = ring.events.partition_point(|e| e.revision <= after);
        Ok(ring
            .events
            .range(start..)
            .take_while(|e| e.revision <= upto)
            .take(max)
            .cloned()
            .collect())
    }

    fn compacted(&self) -> Revision {
        self.lock().floor
    }

    fn consecutive(&self) -> bool {
        false
    }
}

/// Feeds a cache from one etcd watch of its resource, from the revision
/// after the newest it has; after an error, again from there, backing off.
/// When etcd has compacted past that, or sends what cannot be read, the
/// cache is reset: its watchers end and relist (as Kubernetes' etcd3
/// watcher answers such an event with an error).
async fn pump(
    client: Client,
    etcd_prefix: String,
    prefix: String,
    cache: Arc<Cache>,
    compacted: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let our_key = |k: &[u8]| -> Option<String> {
        std::str::from_utf8(k)
            .ok()?
            .strip_prefix(&prefix)
            .map(|rest| format!("/registry{rest}"))
    };
    let mut failures = 0u32;
    loop {
        if failures > 0 {
            let wait = Duration::from_millis(100 * u64::from(failures.min(20)));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Counted as failed until this connection delivers something.
        failures += 1;
        let from = cache.lock().published + 1;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from as i64)
            .with_prev_key()
            .with_progress_notify();
        let mut watch_client = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        let started = tokio::select! {
            _ = stop.cancelled() => return,
            r = watch_client.watch(etcd_prefix.clone(), Some(options)) => r,
        };
        let mut stream = match started {
            Ok(stream) => stream,
            Err(e) => {
                if failures == 1 {
                    tracing::warn!(error = %e, prefix = %etcd_prefix, "cannot watch etcd; retrying");
                }
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                m = stream.message() => m,
            };
            let response = match message {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, prefix = %etcd_prefix, "etcd watch broke; resuming");
                    break;
                }
            };
            if response.compact_revision() > 0 {
                // History this cache had not taken in is gone: its watchers
                // would miss it. Go on from the compacted revision.
                let gone = response.compact_revision().max(0) as u64;
                compacted.fetch_max(gone, Ordering::AcqRel);
                let mut ring = cache.lock();
                cache.reset(&mut ring, gone);
                tracing::warn!(prefix = %etcd_prefix, compacted = gone, "etcd compacted past this watch; its watchers relist");
                break;
            }
            if response.canceled() {
                break;
            }
            // The answer to the watch request: its header holds etcd's
            // newest revision, not progress of this watch (the events from
            // `from` on are still to come).
            if response.created() {
                continue;
            }
            failures = 0;
            let mut ring = cache.lock();
            for e in response.events() {
                let Some(kv) = e.kv() else { continue };
                let Some(key) = our_key(kv.key()) else {
                    continue;
                };
                let at = kv.mod_revision().max(0) as u64;
                if at <= ring.published {
                    continue;
                }
                let decode = |bytes: &[u8], revision: Revision| {
                    serde_json::from_slice::<Value>(bytes)
                        .ok()
                        .and_then(|v| stamp(v, revision).ok())
                };
                let previous = e
                    .prev_kv()
                    .and_then(|p| decode(p.value(), p.mod_revision().max(0) as u64));
                let decoded = match e.event_type() {
                    EventType::Put => {
                        let kind = if kv.create_revision() == kv.mod_revision() {
                            EventKind::Added
                        } else {
                            EventKind::Modified
                        };
                        let complete = kind == EventKind::Added || previous.is_some();
                        decode(kv.value(), at)
                            .filter(|_| complete)
                            .map(|object| (kind, object))
                    }
                    // The last state, stamped with the delete's revision.
                    EventType::Delete => e
                        .prev_kv()
                        .and_then(|p| decode(p.value(), at))
                        .map(|object| (EventKind::Deleted, object)),
                };
                let Some((kind, object)) = decoded else {
                    tracing::error!(key = %key, revision = at, "an etcd event that does not decode; this resource's watchers relist");
                    cache.reset(&mut ring, at);
                    continue;
                };
                let event = Arc::new(Event {
                    revision: at,
                    kind,
                    key: key.into(),
                    object,
                    previous,
                    derived: Default::default(),
                });
                let listed_at = ring.objects_at;
                if let Some(objects) = ring.objects.as_mut().filter(|_| at > listed_at) {
                    apply(objects, &event);
                }
                ring.events.push_back(event.clone());
                ring.published = at;
                while ring.events.len() > cache.max {
                    if let Some(old) = ring.events.pop_front() {
                        ring.floor = old.revision;
                    }
                }
                let _ = ring.tx.send(event);
            }
            // A progress notification: nothing of this resource up to here.
            if response.events().is_empty() {
                let at = revision(response.header());
                if at > ring.published {
                    ring.published = at;
                }
            }
            ring.shared.store(ring.published, Ordering::Release);
        }
    }
}

/// Every `interval`, compacts etcd to the newest revision seen at the
/// previous round, at most once per interval across API servers: as
/// kube-apiserver, through a compare-and-swap on the version of the key
/// `compact_rev_key` (at etcd's root, outside every prefix: compaction is
/// etcd's whole history, so every server on it takes part in one count).
async fn compactor(
    mut kv: KvClient,
    interval: Duration,
    compacted: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let key = "compact_rev_key".to_string();
    // The key's version when this server last looked, and the revision it
    // saw then: the next round compacts to that.
    let mut version: i64 = 0;
    let mut target: i64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, version)])
            .and_then([TxnOp::put(key.clone(), target.to_string(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let r = match kv.txn(txn).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "etcd compaction: cannot reach etcd");
                continue;
            }
        };
        let now = r.header().map_or(0, |h| h.revision());
        if r.succeeded() {
            // This server won the round: compact to what it saw last time.
            version += 1;
            if target > 0 {
                match kv.compact(target, None).await {
                    Ok(_) => {
                        compacted.fetch_max(target as u64, Ordering::AcqRel);
                    }
                    Err(e) if compacted_error(&e) => {
                        compacted.fetch_max(target as u64, Ordering::AcqRel);
                    }
                    Err(e) => tracing::warn!(error = %e, "etcd compaction failed"),
                }
            }
        } else {
            // Another server compacted this round; follow its count.
            version = r
                .op_responses()
                .into_iter()
                .find_map(|op| match op {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.version()),
                    _ => None,
                })
                .unwrap_or(0);
        }
        target = now;
    }
}
