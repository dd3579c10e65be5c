//! The generic registry: every kind's create, update, patch, apply and
//! delete, written once over the store (Kubernetes'
//! `registry/generic/registry/store.go`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use jiff::Timestamp;
use mube_apis::resources::ResourceInfo;
use mube_apis::status::Reason;
use serde_json::{json, Value};

use super::dry_run::DryRunStore;
use super::fields::{canonicalize, validate};
use super::meta::{
    check_type, identify, metadata_mut, resource_version_precondition, set_namespace, stale, time,
};
use super::service_ranges::{NodePortRange, Reservation, ServiceCidr, ServiceRanges};
use super::{managed, patch, DryRun, Filter, Manager, Part, Resource};
use crate::error::ApiError;
use crate::store::{Preconditions, ReadAt, Revision, Store, StoreError, StoredObject, WatchStream};

/// How a read-modify-write records its writer in managedFields.
enum Recording<'a> {
    /// A client's PUT or PATCH of one part (main or status).
    Request(&'a Manager<'a>),
    /// The server's own write (`Registry::modify`): any part may change.
    Server(&'a Manager<'a>),
    /// A binding (`pods/binding`): a server write that sets what no update
    /// may (a pod's node), so the kind's update rules are not applied.
    Binding(&'a Manager<'a>),
}

/// Failure inside a read-modify-write: either from the store (mapped with the
/// resource's names) or already an API error.
enum UpdateFailure {
    Store(StoreError),
    Api(ApiError),
}

impl From<StoreError> for UpdateFailure {
    fn from(e: StoreError) -> Self {
        UpdateFailure::Store(e)
    }
}

impl From<ApiError> for UpdateFailure {
    fn from(e: ApiError) -> Self {
        UpdateFailure::Api(e)
    }
}

/// Every kind this server serves, over one store.
pub struct Registry {
    store: Arc<dyn Store>,
    /// What dry-run writes go through: reads from `store`, writes nothing.
    dry_run: DryRunStore,
    /// The built-in kinds, fixed at start.
    standard: Vec<Arc<Resource>>,
    /// Everything served: the built-in kinds, then the custom ones, which
    /// CustomResourceDefinitions add and remove while the server runs. A
    /// request takes a snapshot (one `Arc` clone) and keeps it.
    served: std::sync::RwLock<Arc<Vec<Arc<Resource>>>>,
    /// Counts changes of `served`, so that what is derived from it (the
    /// OpenAPI documents) knows when to derive again.
    served_changes: AtomicU64,
    /// Writes per built-in kind (parallel to `standard`), so that a cache of a
    /// kind (the RBAC policy) knows when it is stale. Counted after the
    /// store acknowledged; dry runs count too (a needless rebuild is
    /// harmless, a missed one is not).
    writes: Vec<AtomicU64>,
    /// Nodes' pod CIDRs, given at create (`with_pod_cidrs`).
    pod_cidrs: Option<super::pod_cidr::PodCidrs>,
    /// Services' cluster IPs and node ports (`with_service_ranges`).
    service_ranges: Option<Arc<ServiceRanges>>,
    /// Clients' watches, dispatched per kind (`subscribe`).
    fanout: Arc<super::fanout::Fanout>,
}

impl Registry {
    /// The kinds mube serves today.
    pub fn standard(store: Arc<dyn Store>) -> Registry {
        let registry = Registry {
            dry_run: DryRunStore::new(store.clone()),
            writes: super::standard_kinds()
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
            standard: super::standard_kinds().into_iter().map(Arc::new).collect(),
            served: Default::default(),
            served_changes: AtomicU64::new(0),
            pod_cidrs: None,
            service_ranges: None,
            fanout: Arc::new(super::fanout::Fanout::new(
                store.clone(),
                std::time::Duration::from_secs(1),
            )),
            store,
        };
        registry.set_custom(Vec::new());
        registry
    }

    /// Serves exactly `custom` besides the built-in kinds, from the next
    /// request on (the CustomResourceDefinition controller's call).
    pub fn set_custom(&self, custom: Vec<Arc<Resource>>) {
        let all: Vec<Arc<Resource>> = self.standard.iter().cloned().chain(custom).collect();
        match self.served.write() {
            Ok(mut served) => *served = Arc::new(all),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(all),
        }
        self.served_changes.fetch_add(1, Ordering::AcqRel);
    }

    /// How many times the served kinds changed (see `set_custom`).
    pub fn served_changes(&self) -> u64 {
        self.served_changes.load(Ordering::Acquire)
    }

    /// Whether a built-in kind is served as `group`/`plural`, or named by
    /// `kind` in `group` (a CustomResourceDefinition may not take those).
    pub fn is_standard(&self, group: &str, plural: &str, kind: &str) -> bool {
        self.standard
            .iter()
            .any(|r| r.group == group && (r.plural == plural || r.kind == kind))
    }

    /// How often the watch fan-out records its progress, which is what a
    /// BOOKMARK can tell: at least as often as bookmarks are sent.
    pub fn with_watch_progress(mut self, every: std::time::Duration) -> Registry {
        self.fanout = Arc::new(super::fanout::Fanout::new(self.store.clone(), every));
        self
    }

    /// Services written from now on get their cluster IP out of `cidr`
    /// and their node ports out of `ports`.
    pub fn with_service_ranges(mut self, cidr: ServiceCidr, ports: NodePortRange) -> Registry {
        self.service_ranges = Some(ServiceRanges::new(cidr, ports));
        self
    }

    /// Reads what the stored Services hold, and follows their changes:
    /// once, at start, before Services are written.
    pub async fn start_service_ranges(&self) -> Result<(), ApiError> {
        match &self.service_ranges {
            Some(ranges) => ranges.start(self.store.clone()).await,
            None => Ok(()),
        }
    }

    /// The allocator of a write to `r`, if it is a Service.
    fn service_ranges_for(&self, r: &Resource) -> Option<&ServiceRanges> {
        self.service_ranges
            .as_deref()
            .filter(|_| r.group.is_empty() && r.kind == "Service")
    }

    /// Nodes created from now on get a pod CIDR out of `cidr`; with
    /// `shared_store`, claimed in the store, since other API servers
    /// give ranges out of it too.
    pub fn with_pod_cidrs(
        mut self,
        cidr: super::pod_cidr::ClusterCidr,
        shared_store: bool,
    ) -> Registry {
        let claims = shared_store.then(|| self.store.clone());
        self.pod_cidrs = Some(super::pod_cidr::PodCidrs::new(cidr, claims));
        self
    }

    /// Reads the pod ranges the stored nodes hold (and gives nodes stored
    /// without one theirs): once, at start, before nodes are created.
    pub async fn start_pod_cidrs(&self) -> Result<(), ApiError> {
        match &self.pod_cidrs {
            Some(cidrs) => cidrs.start(self).await,
            None => Ok(()),
        }
    }

    /// After a delete: counted, and a Node's pod CIDR is free again.
    /// Not async: nothing may cancel it between the delete and this.
    fn removed(&self, r: &Resource, deleted: &StoredObject, dry_run: DryRun) {
        self.wrote(r);
        if dry_run != DryRun::No {
            return;
        }
        if let (Some(cidrs), "Node") = (&self.pod_cidrs, r.kind) {
            if let Ok(node) = deleted.value() {
                if let Some(range) = super::pod_cidr::pod_cidr(&node) {
                    cidrs.release(range);
                }
            }
        }
    }

    /// How many writes of `kind` this server has made since it started.
    pub fn writes(&self, kind: &ResourceInfo) -> u64 {
        self.standard
            .iter()
            .position(|r| std::ptr::eq(r.info, kind) || *r.info == *kind)
            .map_or(0, |i| self.writes[i].load(Ordering::Acquire))
    }

    fn wrote(&self, r: &Resource) {
        if let Some(i) = self
            .standard
            .iter()
            .position(|x| std::ptr::eq(x.info, r.info))
        {
            self.writes[i].fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The store a write goes to: the real one, or for a dry run one that
    /// makes every check and writes nothing.
    fn store_for(&self, dry_run: DryRun) -> &dyn Store {
        match dry_run {
            DryRun::No => self.store.as_ref(),
            DryRun::All => &self.dry_run,
        }
    }

    /// Every kind served now, built-in then custom.
    pub fn resources(&self) -> Arc<Vec<Arc<Resource>>> {
        match self.served.read() {
            Ok(served) => served.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<Resource>> {
        self.resources()
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// The registered kind a typed descriptor names; for code that names
    /// kinds (the heartbeat, controllers): `registry.resource(&NODES)`.
    pub fn resource(&self, kind: &ResourceInfo) -> Result<Arc<Resource>, ApiError> {
        self.lookup(kind.group, kind.version, kind.plural)
            .ok_or_else(|| {
                ApiError::new(
                    Reason::NotFound,
                    format!("resource {} is not served", kind.qualified_plural()),
                )
            })
    }

    pub async fn get(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<StoredObject, ApiError> {
        self.store
            .get(&r.key(namespace, name))
            .await?
            .ok_or_else(|| ApiError::not_found(r, name))
    }

    /// Matching objects and the revision the list was read at.
    pub async fn list(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        filter: &Filter,
        at: ReadAt,
    ) -> Result<(Vec<StoredObject>, Revision), ApiError> {
        let list = self.store.list(&r.prefix(namespace), at).await?;
        let items = if filter.is_empty() {
            list.items
        } else {
            let mut kept = Vec::new();
            for item in list.items {
                if filter.matches(r, &item.value()?) {
                    kept.push(item);
                }
            }
            kept
        };
        Ok((items, list.revision))
    }

    /// Every object of `r` in `namespace`, read as it is taken (a watch's
    /// initial events, filtered by the watch as it goes).
    pub async fn list_cursor(
        &self,
        r: &Resource,
        namespace: Option<&str>,
    ) -> Result<crate::store::ListCursor, ApiError> {
        Ok(self.store.list_cursor(&r.prefix(namespace)).await?)
    }

    /// A client's watch: through the kind's fan-out, which finds it by its
    /// selector's indexed field and bounds what waits for it.
    pub fn subscribe(
        &self,
        r: &Arc<Resource>,
        namespace: Option<&str>,
        filter: Filter,
        after: Revision,
    ) -> Result<super::fanout::Subscription, ApiError> {
        Ok(self.fanout.subscribe(r, namespace, filter, after)?)
    }

    /// A watch straight from the store, for the server's own controllers.
    pub fn watch(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        after: Revision,
    ) -> Result<WatchStream, ApiError> {
        Ok(self.store.watch(&r.prefix(namespace), after)?)
    }

    pub async fn create(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        object: Value,
        manager: &str,
        dry_run: DryRun,
    ) -> Result<StoredObject, ApiError> {
        let manager = Manager {
            name: manager,
            part: Part::Main,
        };
        self.create_in(r, namespace, object, Some(&manager), dry_run)
            .await
    }

    /// `create` without a managedFields entry: for the Node Leases the
    /// heartbeat creates and renews on its fast path, which never records
    /// managers (see `node::renew_lease`).
    pub async fn create_untracked(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<StoredObject, ApiError> {
        self.create_in(r, namespace, object, None, DryRun::No).await
    }

    /// `create`, recording `manager`'s update in managedFields, or with
    /// the managedFields the caller set (an apply that creates).
    async fn create_in(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        mut object: Value,
        manager: Option<&Manager<'_>>,
        dry_run: DryRun,
    ) -> Result<StoredObject, ApiError> {
        check_type(r, &mut object)?;
        let meta = metadata_mut(&mut object)?;
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut generated = None;
        if name.is_empty() {
            if let Some(prefix) = meta.get("generateName").and_then(Value::as_str) {
                let prefix = prefix.to_string();
                name = generate_name(&prefix);
                meta.insert("name".into(), json!(name));
                generated = Some(prefix);
            }
        }
        set_namespace(r, meta, namespace)?;
        if r.namespaced {
            self.admit_into_namespace(namespace.unwrap_or_default())
                .await?;
        }
        let now = Timestamp::now();
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), time(now));
        meta.insert("generation".into(), json!(1));
        for server_owned in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(server_owned);
        }
        r.strategy.prepare_for_create(&mut object, now);
        let reserved = match (&self.pod_cidrs, r.kind, dry_run) {
            (Some(cidrs), "Node", DryRun::No) => cidrs.assign(r, &mut object).await?,
            _ => super::pod_cidr::Reservation::none(),
        };
        let created = async {
            canonicalize(r, &mut object)?;
            if let Some(manager) = manager {
                managed::record_update(r, manager, false, None, &mut object, now)?;
            }
            validate(r, &name, &object)?;
            let services = match self.service_ranges_for(r) {
                Some(ranges) => ranges.assign(r, &mut object, None)?,
                None => Vec::new(),
            };
            // A generated name that is taken is generated again, as
            // Kubernetes does (a ReplicaSet of thousands of pods meets a
            // few such collisions).
            let mut attempts = 0;
            loop {
                match self
                    .store_for(dry_run)
                    .create(&r.key(namespace, &name), object.clone())
                    .await
                {
                    Err(StoreError::AlreadyExists { .. })
                        if generated.is_some() && attempts < 8 =>
                    {
                        attempts += 1;
                        name = generate_name(generated.as_deref().unwrap_or_default());
                        object["metadata"]["name"] = json!(name);
                    }
                    other => {
                        let created = other.map_err(|e| ApiError::from_store(e, r, &name))?;
                        // Given back by a dry run; held by a create.
                        if dry_run == DryRun::No {
                            services.into_iter().for_each(|s| s.keep());
                        }
                        break Ok(created);
                    }
                }
            }
        }
        .await;
        if created.is_ok() {
            reserved.keep();
            self.wrote(r);
        }
        created
    }

    /// PUT of the whole object (`Part::Main`) or of `/status`. A
    /// `metadata.resourceVersion` in the body is a precondition (409 if
    /// stale); without one the update is unconditional. An update that
    /// changes nothing writes nothing.
    #[allow(clippy::too_many_arguments)] // the request's parts, each distinct
    pub async fn update(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        part: Part,
        mut object: Value,
        manager: &str,
        dry_run: DryRun,
    ) -> Result<StoredObject, ApiError> {
        let precondition = identify(r, &mut object, namespace, name)?;
        self.modify_in(
            self.store_for(dry_run),
            r,
            namespace,
            name,
            Some(Recording::Request(&Manager {
                name: manager,
                part,
            })),
            |current, old| {
                stale(precondition, current, r, name)?;
                Ok(Some(r.strategy.prepare_for_update(
                    part,
                    object.clone(),
                    old,
                )))
            },
        )
        .await
    }

    /// Read-modify-write through the same checks as a PUT: `change` gets the
    /// current object and returns the new one (or `None` for no change).
    /// Retries on conflict. Controllers and the heartbeat write through this.
    pub async fn modify(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        manager: &Manager<'_>,
        change: impl FnMut(&StoredObject, Value) -> Result<Option<Value>, ApiError>,
    ) -> Result<StoredObject, ApiError> {
        self.modify_in(
            self.store.as_ref(),
            r,
            namespace,
            name,
            Some(Recording::Server(manager)),
            change,
        )
        .await
    }

    /// A binding's write (`pods/binding`): `change` as in `modify`, through
    /// the dry-run store when asked.
    pub async fn bind(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        manager: &Manager<'_>,
        dry_run: DryRun,
        change: impl FnMut(&StoredObject, Value) -> Result<Option<Value>, ApiError>,
    ) -> Result<StoredObject, ApiError> {
        self.modify_in(
            self.store_for(dry_run),
            r,
            namespace,
            name,
            Some(Recording::Binding(manager)),
            change,
        )
        .await
    }

    /// `modify` through `store`: the real one, or the dry-run one.
    /// `recording` says how the change goes into managedFields; `None`:
    /// `change` has set them (an apply).
    async fn modify_in(
        &self,
        store: &dyn Store,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        recording: Option<Recording<'_>>,
        mut change: impl FnMut(&StoredObject, Value) -> Result<Option<Value>, ApiError>,
    ) -> Result<StoredObject, ApiError> {
        let key = r.key(namespace, name);
        // Only the server's own writes (a namespace being terminated) may
        // set or clear the deletion fields; a client's update keeps them.
        let server_write = matches!(
            recording,
            Some(Recording::Server(_) | Recording::Binding(_))
        );
        let binding = matches!(recording, Some(Recording::Binding(_)));
        let ranges = self.service_ranges_for(r);
        // What the last attempt took (a retry after a conflict gives it
        // back and takes again).
        let mut taken: Vec<Reservation<'_>> = Vec::new();
        let result = crate::store::guaranteed_update(
            store,
            &key,
            |current, old: Value| -> Result<Option<Value>, UpdateFailure> {
                // The change sees the object at the version it was asked
                // through (a custom kind's other version); what is stored
                // is canonicalized back to the storage version.
                let mut seen = old.clone();
                if r.converts() {
                    seen["apiVersion"] = json!(r.api_version());
                }
                let Some(mut new) = change(current, seen)? else {
                    return Ok(None);
                };
                // Identity and bookkeeping are the server's, whatever the body says.
                if let (Some(new_meta), Some(old_meta)) = (
                    new.get_mut("metadata").and_then(Value::as_object_mut),
                    old.get("metadata").and_then(Value::as_object),
                ) {
                    let deletion: &[&str] = if server_write {
                        &[]
                    } else {
                        &["deletionTimestamp", "deletionGracePeriodSeconds"]
                    };
                    for kept in [
                        "uid",
                        "creationTimestamp",
                        "generation",
                        "namespace",
                        "name",
                    ]
                    .iter()
                    .chain(deletion)
                    {
                        match old_meta.get(*kept) {
                            Some(v) => new_meta.insert(kept.to_string(), v.clone()),
                            None => new_meta.remove(*kept),
                        };
                    }
                    new_meta.insert(
                        "resourceVersion".into(),
                        json!(current.revision.to_string()),
                    );
                }
                canonicalize(r, &mut new)?;
                // As Kubernetes: `generation` counts changes of the spec
                // (what a controller reports as `observedGeneration`).
                if r.strategy.generation_changed(&new, &old) {
                    let generation = old
                        .pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    new["metadata"]["generation"] = json!(generation + 1);
                }
                if let Some(recording) = &recording {
                    let (manager, whole_object) = match recording {
                        Recording::Request(m) => (*m, false),
                        Recording::Server(m) | Recording::Binding(m) => (*m, true),
                    };
                    managed::record_update(
                        r,
                        manager,
                        whole_object,
                        Some(&old),
                        &mut new,
                        Timestamp::now(),
                    )?;
                }
                if new == old {
                    return Ok(None);
                }
                validate(r, name, &new)?;
                let mut errors = if binding {
                    Vec::new()
                } else {
                    r.strategy.validate_update(&new, &old)
                };
                // The server's own writes (a delete's policy) may; a
                // client's may only take finalizers away.
                if !server_write && old.pointer("/metadata/deletionTimestamp").is_some() {
                    let before = finalizers_of(&old);
                    if finalizers_of(&new).iter().any(|f| !before.contains(f)) {
                        errors.push(mube_apis::validation::FieldError::new(
                            "metadata.finalizers",
                            "Forbidden: no new finalizers can be added if the object is being deleted",
                        ));
                    }
                }
                if !errors.is_empty() {
                    return Err(ApiError::invalid(r, name, errors).into());
                }
                if let Some(ranges) = ranges {
                    taken.clear();
                    taken = ranges.assign(r, &mut new, Some(&old))?;
                }
                Ok(Some(new))
            },
        )
        .await;
        if result.is_ok() && std::ptr::addr_eq(store, self.store.as_ref()) {
            taken.into_iter().for_each(Reservation::keep);
        }
        let updated = result.map_err(|f| match f {
            UpdateFailure::Store(e) => ApiError::from_store(e, r, name),
            UpdateFailure::Api(e) => e,
        })?;
        self.wrote(r);
        self.finish_if_finalized(store, r, &key, &updated).await?;
        Ok(updated)
    }

    /// Removes an object that is being deleted, is due (grace period 0:
    /// a pod's agent has finished it, or it never had one) and whose last
    /// finalizer `updated` took away. Held to the revision just written: a
    /// newer write decides for itself.
    async fn finish_if_finalized(
        &self,
        store: &dyn Store,
        r: &Resource,
        key: &str,
        updated: &StoredObject,
    ) -> Result<(), ApiError> {
        if r.strategy.terminates() {
            return Ok(());
        }
        let value = updated.value()?;
        let due = value.pointer("/metadata/deletionTimestamp").is_some()
            && value
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                == 0;
        if !due || !finalizers_of(&value).is_empty() {
            return Ok(());
        }
        let dry_run = if std::ptr::addr_eq(store, self.store.as_ref()) {
            DryRun::No
        } else {
            DryRun::All
        };
        let held = Preconditions {
            uid: None,
            resource_version: Some(updated.revision.to_string()),
        };
        match store.delete(key, &held).await {
            Ok(gone) => self.removed(r, &gone, dry_run),
            // Someone else deleted or wrote it meanwhile: theirs to finish.
            Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
            Err(e) => return Err(ApiError::from_store(e, r, crate::registry::name_of(&value))),
        }
        Ok(())
    }

    /// PATCH of the whole object (`Part::Main`) or of `/status`. A
    /// `metadata.resourceVersion` the patch sets is a precondition.
    #[allow(clippy::too_many_arguments)] // the request's parts, each distinct
    pub async fn patch(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        part: Part,
        patch: &patch::Patch,
        manager: &str,
        dry_run: DryRun,
    ) -> Result<StoredObject, ApiError> {
        self.modify_in(
            self.store_for(dry_run),
            r,
            namespace,
            name,
            Some(Recording::Request(&Manager {
                name: manager,
                part,
            })),
            |current, old| {
                let mut patched = old.clone();
                patch
                    .apply(&mut patched)
                    .map_err(|m| ApiError::new(Reason::Invalid, m))?;
                // A resourceVersion the patch sets is a precondition.
                let wanted = match patched.get("metadata").and_then(Value::as_object) {
                    Some(meta) => resource_version_precondition(meta)?,
                    None => None,
                };
                stale(wanted, current, r, name)?;
                check_type(r, &mut patched)?;
                Ok(Some(r.strategy.prepare_for_update(part, patched, old)))
            },
        )
        .await
    }

    /// Server-side apply: `PATCH` with `application/apply-patch+yaml`.
    /// `config` is the manager's whole intent for the object; it creates
    /// the object when there is none (then `.1` is true). A
    /// `metadata.resourceVersion` in it is a precondition.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        part: Part,
        mut config: Value,
        manager: &str,
        force: bool,
        dry_run: DryRun,
        admit_create: &(dyn Fn(&mut Value) -> Result<(), ApiError> + Sync),
    ) -> Result<(StoredObject, bool), ApiError> {
        let obj = config
            .as_object()
            .ok_or_else(|| ApiError::bad_request("the apply configuration must be an object"))?;
        for field in ["apiVersion", "kind"] {
            if obj
                .get(field)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(ApiError::bad_request(format!(
                    "the apply configuration must set {field}"
                )));
            }
        }
        if config
            .pointer("/metadata/managedFields")
            .is_some_and(|m| !m.is_null())
        {
            return Err(ApiError::bad_request("metadata.managedFields must be nil"));
        }
        let precondition = identify(r, &mut config, namespace, name)?;
        let manager = Manager {
            name: manager,
            part,
        };
        let store = self.store_for(dry_run);
        // An apply creates or updates; a create that loses a race to
        // another writer is tried again as an update.
        for _ in 0..3 {
            if store.get(&r.key(namespace, name)).await?.is_none() {
                // Only the main resource creates: a status write needs the
                // object, as in Kubernetes.
                if precondition.is_some() || part == Part::Status {
                    return Err(ApiError::not_found(r, name));
                }
                let mut object =
                    managed::apply(r, &manager, None, &config, force, Timestamp::now())?;
                // Canonicalized at the storage version; created, as any
                // create, through the version it was asked at.
                if r.converts() {
                    object["apiVersion"] = json!(r.api_version());
                }
                // What a create admits and records (who asked), as a POST.
                admit_create(&mut object)?;
                match self.create_in(r, namespace, object, None, dry_run).await {
                    Err(e) if e.is_already_exists() => continue,
                    other => return other.map(|o| (o, true)),
                }
            }
            let updated = self
                .modify_in(store, r, namespace, name, None, |current, old| {
                    stale(precondition, current, r, name)?;
                    let new =
                        managed::apply(r, &manager, Some(&old), &config, force, Timestamp::now())?;
                    Ok(Some(new))
                })
                .await;
            match updated {
                Err(e) if e.is_not_found() => continue,
                other => return other.map(|o| (o, false)),
            }
        }
        Err(ApiError::new(
            Reason::Conflict,
            format!("{name}: the object was created and deleted concurrently; try again"),
        ))
    }

    /// A namespaced object may be created only in a namespace that exists
    /// and is not being deleted, as in Kubernetes.
    async fn admit_into_namespace(&self, namespace: &str) -> Result<(), ApiError> {
        let namespaces = self.resource(&mube_apis::resources::NAMESPACES)?;
        let Some(stored) = self.store.get(&namespaces.key(None, namespace)).await? else {
            return Err(ApiError::not_found(&namespaces, namespace));
        };
        let object = stored.value()?;
        if object.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::new(
                Reason::Forbidden,
                format!("unable to create new content in namespace {namespace} because it is being terminated"),
            ));
        }
        Ok(())
    }

    /// Whether nothing of any namespaced kind is left in `namespace`.
    pub async fn namespace_is_empty(&self, namespace: &str) -> Result<bool, ApiError> {
        for r in self
            .resources()
            .iter()
            .filter(|r| r.namespaced && r.is_stored_version())
        {
            let list = self
                .store
                .list(&r.prefix(Some(namespace)), ReadAt::Newest)
                .await?;
            if !list.items.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// DELETE of a kind that `terminates` (a Namespace): the first marks
    /// it Terminating; once it holds nothing, a delete removes it.
    async fn terminate(
        &self,
        r: &Resource,
        name: &str,
        preconditions: &Preconditions,
        dry_run: DryRun,
    ) -> Result<StoredObject, ApiError> {
        if super::namespace::SYSTEM.contains(&name) {
            return Err(ApiError::from(mube_apis::status::failure_for(
                Reason::Forbidden,
                format!(
                    "{} \"{name}\" is forbidden: this namespace may not be deleted",
                    r.plural
                ),
                r.group,
                r.plural,
                name,
                vec![],
            )));
        }
        let current = self.get(r, None, name).await?;
        preconditions
            .check(&current)
            .map_err(|e| ApiError::from_store(e, r, name))?;
        let value = current.value()?;
        if value.pointer("/metadata/deletionTimestamp").is_none() {
            return self
                .set_deletion(r, None, name, &value, Timestamp::now(), 0, dry_run, |o| {
                    o["status"] = json!({"phase": "Terminating"});
                })
                .await;
        }
        if !self.namespace_is_empty(name).await? {
            // As Kubernetes answers a delete of a namespace still being
            // emptied; the namespace controller tries again.
            return Err(ApiError::new(
                Reason::Conflict,
                format!("Operation cannot be fulfilled on namespaces \"{name}\": The system is ensuring all content is removed from this namespace.  Upon completion, this namespace will automatically be purged by the system."),
            ));
        }
        let removed = self
            .store_for(dry_run)
            .delete(&r.key(None, name), preconditions)
            .await
            .map_err(|e| ApiError::from_store(e, r, name))?;
        self.removed(r, &removed, dry_run);
        Ok(removed)
    }

    /// DELETE with the kind's default grace period: see `delete_with_grace`.
    pub async fn delete(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        preconditions: &Preconditions,
        dry_run: DryRun,
    ) -> Result<StoredObject, ApiError> {
        self.delete_with_grace(
            r,
            namespace,
            name,
            preconditions,
            None,
            Propagation::Background,
            dry_run,
        )
        .await
    }

    /// DELETE. The preconditions (uid, resourceVersion) are checked by the
    /// store atomically with the removal. Objects are removed at once, but
    /// for kinds that `terminate` (Namespaces), and pods running on a node:
    /// those get `deletionTimestamp` and `deletionGracePeriodSeconds`, and
    /// their node agent stops them and then deletes them with grace 0.
    #[allow(clippy::too_many_arguments)] // DeleteOptions' parts, each distinct
    pub async fn delete_with_grace(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        preconditions: &Preconditions,
        grace: Option<i64>,
        propagation: Propagation,
        dry_run: DryRun,
    ) -> Result<StoredObject, ApiError> {
        if r.strategy.terminates() {
            return self.terminate(r, name, preconditions, dry_run).await;
        }
        if let Some(held) = self
            .hold_for_finalizers(
                r,
                namespace,
                name,
                preconditions,
                grace,
                propagation,
                dry_run,
            )
            .await?
        {
            return Ok(held);
        }
        if let Some(marked) = self
            .mark_for_deletion(r, namespace, name, preconditions, grace, dry_run)
            .await?
        {
            return Ok(marked);
        }
        let deleted = self
            .store_for(dry_run)
            .delete(&r.key(namespace, name), preconditions)
            .await
            .map_err(|e| ApiError::from_store(e, r, name))?;
        self.removed(r, &deleted, dry_run);
        Ok(deleted)
    }

    /// Whether the Node `name` exists (a pod's agent can finish its delete).
    async fn node_exists(&self, name: &str) -> Result<bool, ApiError> {
        let nodes = self.resource(&mube_apis::resources::NODES)?;
        match self.get(&nodes, None, name).await {
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
            Ok(_) => Ok(true),
        }
    }

    /// Kubernetes' finalizers: an object that has any (or gets one from
    /// the propagation policy: `orphan`, `foregroundDeletion`) is not
    /// removed by a delete but marked (`deletionTimestamp`), and removed by
    /// the write that takes its last finalizer away (`finish_if_finalized`).
    /// `None`: nothing holds it, delete as usual.
    #[allow(clippy::too_many_arguments)] // DeleteOptions' parts, each distinct
    async fn hold_for_finalizers(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        preconditions: &Preconditions,
        grace: Option<i64>,
        propagation: Propagation,
        dry_run: DryRun,
    ) -> Result<Option<StoredObject>, ApiError> {
        let current = self.get(r, namespace, name).await?;
        let value = current.value()?;
        let mut finalizers = finalizers_of(&value);
        // The policies are carried out by the garbage collector, which
        // watches the kinds that own or are owned (`garbage_collected`);
        // for any other kind they mean what Background means.
        if let Some(added) = propagation
            .finalizer()
            .filter(|_| r.strategy.garbage_collected())
        {
            // One policy at a time, as Kubernetes: the newest asked wins.
            finalizers.retain(|f| f != ORPHAN_FINALIZER && f != FOREGROUND_FINALIZER);
            finalizers.push(added.to_string());
        }
        if finalizers.is_empty() {
            return Ok(None);
        }
        preconditions
            .check(&current)
            .map_err(|e| ApiError::from_store(e, r, name))?;
        // A pod on a node still gets its grace period (its agent finishes
        // it); everything else, and a pod whose node is gone, is due now,
        // and waits only for its finalizers.
        let seconds = match r.strategy.graceful_deletion(&value, grace) {
            Some(g) if self.node_exists(&g.node).await? => g.seconds,
            _ => 0,
        };
        let marked = value.pointer("/metadata/deletionTimestamp").is_some();
        let already = value
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        if marked && already.is_some_and(|a| a <= seconds) && finalizers == finalizers_of(&value) {
            return Ok(Some(current));
        }
        let deadline = Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(seconds))
            .unwrap_or_else(|_| Timestamp::now());
        self.set_deletion(
            r,
            namespace,
            name,
            &value,
            deadline,
            seconds,
            dry_run,
            |o| {
                o["metadata"]["finalizers"] = json!(finalizers);
            },
        )
        .await
        .map(Some)
    }

    /// The graceful part of a delete: `Some` when the object was marked
    /// (or already was, with no longer a grace period than asked) and stays
    /// for its node agent to finish; `None` to remove it now. A pod whose
    /// node is gone has no agent to finish it, so it goes at once.
    async fn mark_for_deletion(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        preconditions: &Preconditions,
        grace: Option<i64>,
        dry_run: DryRun,
    ) -> Result<Option<StoredObject>, ApiError> {
        let current = self.get(r, namespace, name).await?;
        let value = current.value()?;
        let Some(graceful) = r.strategy.graceful_deletion(&value, grace) else {
            return Ok(None);
        };
        if !self.node_exists(&graceful.node).await? {
            return Ok(None);
        }
        preconditions
            .check(&current)
            .map_err(|e| ApiError::from_store(e, r, name))?;
        let already = value
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        if value.pointer("/metadata/deletionTimestamp").is_some()
            && already.is_some_and(|a| a <= graceful.seconds)
        {
            return Ok(Some(current));
        }
        // As Kubernetes: the timestamp is when the object should be gone.
        let deadline = Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(graceful.seconds))
            .unwrap_or_else(|_| Timestamp::now());
        self.set_deletion(
            r,
            namespace,
            name,
            &value,
            deadline,
            graceful.seconds,
            dry_run,
            |_| {},
        )
        .await
        .map(Some)
    }

    /// The server's write that marks an object deleted (`deletionTimestamp`
    /// at `at`, `deletionGracePeriodSeconds`), plus what `also` changes, on
    /// the object `current` was read as: a newer one made under its name
    /// meanwhile is a conflict, not marked.
    #[allow(clippy::too_many_arguments)] // the object, the mark, the write's mode
    async fn set_deletion(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        current: &Value,
        at: Timestamp,
        seconds: i64,
        dry_run: DryRun,
        also: impl Fn(&mut Value),
    ) -> Result<StoredObject, ApiError> {
        let manager = Manager {
            name: managed::APISERVER,
            part: Part::Main,
        };
        let uid = current.pointer("/metadata/uid").cloned();
        self.modify_in(
            self.store_for(dry_run),
            r,
            namespace,
            name,
            Some(Recording::Server(&manager)),
            |_, mut object| {
                if object.pointer("/metadata/uid") != uid.as_ref() {
                    return Err(ApiError::new(
                        Reason::Conflict,
                        format!("{} {name:?} was replaced while being deleted", r.kind),
                    ));
                }
                object["metadata"]["deletionTimestamp"] = time(at);
                object["metadata"]["deletionGracePeriodSeconds"] = json!(seconds);
                also(&mut object);
                Ok(Some(object))
            },
        )
        .await
    }

    /// DELETE on a collection: every object the filter matches, each deleted
    /// as by `delete` (same preconditions, same dry run), by the key it was
    /// listed under. Objects deleted by someone else meanwhile are skipped;
    /// the first other failure stops the call and is returned, as Kubernetes
    /// does. Returns what was deleted and the revision the collection was
    /// listed at.
    #[allow(clippy::too_many_arguments)] // DeleteOptions' parts, each distinct
    pub async fn delete_collection(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        filter: &Filter,
        preconditions: &Preconditions,
        grace: Option<i64>,
        propagation: Propagation,
        dry_run: DryRun,
    ) -> Result<(Vec<StoredObject>, Revision), ApiError> {
        let (items, revision) = self.list(r, namespace, filter, ReadAt::Newest).await?;
        if r.strategy.terminates() {
            let mut marked = Vec::with_capacity(items.len());
            for item in items {
                let name = item.key.rsplit('/').next().unwrap_or_default();
                match self.terminate(r, name, preconditions, dry_run).await {
                    Ok(object) => marked.push(object),
                    Err(e) if e.is_not_found() => {}
                    // The system namespaces stay; the others go on.
                    Err(e) if e.code() == 403 => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok((marked, revision));
        }
        let mut deleted = Vec::with_capacity(items.len());
        for item in items {
            // The name is the key's last segment.
            let name = item.key.rsplit('/').next().unwrap_or_default();
            match self
                .delete_with_grace(
                    r,
                    namespace,
                    name,
                    preconditions,
                    grace,
                    propagation,
                    dry_run,
                )
                .await
            {
                Ok(gone) => deleted.push(gone),
                // Deleted by someone else meanwhile.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok((deleted, revision))
    }
}

/// The finalizer that has the garbage collector orphan an object's
/// dependents before it goes (`propagationPolicy: Orphan`).
pub const ORPHAN_FINALIZER: &str = "orphan";
/// The finalizer that has the garbage collector delete an object's
/// dependents before it goes (`propagationPolicy: Foreground`).
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// What becomes of a deleted object's dependents (`propagationPolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Propagation {
    /// The object goes now; the garbage collector deletes its dependents.
    #[default]
    Background,
    /// The object stays (Terminating) until its dependents are deleted.
    Foreground,
    /// Its dependents lose their owner reference, then it goes.
    Orphan,
}

impl Propagation {
    fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some(FOREGROUND_FINALIZER),
            Propagation::Orphan => Some(ORPHAN_FINALIZER),
        }
    }
}

/// `metadata.finalizers`.
fn finalizers_of(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// `generateName` + 5 characters, from the alphabet Kubernetes uses (no
/// vowels, so no words; 27^5, about 14 million names).
fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let suffix: String = bytes[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    format!("{prefix}{suffix}")
}
