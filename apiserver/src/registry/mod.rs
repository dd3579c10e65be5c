//! Resources as data plus small hooks, served by one generic implementation.
//!
//! As in Kubernetes' `pkg/registry/generic`, each kind contributes a
//! `Resource` declaration (names, scope, whether it has a status subresource)
//! and a `Strategy` (defaulting, validation, selectable fields); everything
//! else (create/update/delete semantics, preconditions, selectors, watches)
//! is written once here. Adding a kind is one file and one line in
//! `Registry::standard`.

mod dry_run;
pub mod event;
mod fieldset;
mod filter;
pub mod lease;
pub mod managed;
pub mod node;
pub mod patch;
pub mod pod;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::schemars::{JsonSchema, SchemaGenerator};
use mube_apis::resources::ResourceInfo;
use mube_apis::status::Reason;
use mube_apis::table::Column;
use mube_apis::validation::{self, FieldError};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

pub use dry_run::DryRun;
pub use filter::Filter;
pub use managed::Manager;

use crate::error::ApiError;
use crate::store::{Preconditions, ReadAt, Revision, Store, StoreError, StoredObject, WatchStream};
use dry_run::DryRunStore;

/// A kind's declaration: its names (shared with clients through
/// `mube_apis::resources`), whether it has a status subresource, and its hooks.
pub struct Resource {
    pub info: &'static ResourceInfo,
    /// With a status subresource, the main resource's writes keep the old
    /// status and `/status` writes keep everything but the status.
    pub status_subresource: bool,
    pub strategy: Box<dyn Strategy>,
}

impl std::ops::Deref for Resource {
    type Target = ResourceInfo;

    fn deref(&self) -> &ResourceInfo {
        self.info
    }
}

impl Resource {
    /// `/registry/{plural}/{namespace}/{name}`, or `/registry/{plural}/{name}`
    /// for cluster-scoped kinds.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }

    /// The key prefix of a list: one namespace, or all of them when `None`.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("/registry/{}/{ns}/", self.plural),
            None => format!("/registry/{}/", self.plural),
        }
    }
}

/// The per-kind hooks. Defaults suit a kind with no special rules.
pub trait Strategy: Send + Sync {
    /// The kind's typed Kubernetes struct (`&TypedAs::<Node>::NEW`).
    fn typed(&self) -> &'static dyn Typed;

    /// Fields mube adds to the Kubernetes type (they are not unknown).
    fn extra_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// Kind-specific validation, after the shape and the generic checks.
    fn validate(&self, _object: &Value) -> Vec<FieldError> {
        Vec::new()
    }

    /// Defaulting on create (e.g. a Node starts in state Unknown).
    fn prepare_for_create(&self, _object: &mut Value, _now: Timestamp) {}

    /// Fields a field selector may name.
    fn selectable_fields(&self) -> &'static [&'static str] {
        &["metadata.name", "metadata.namespace"]
    }

    /// The value of a selectable field.
    fn field_value(&self, object: &Value, field: &str) -> Option<String> {
        let pointer = match field {
            "metadata.name" => "/metadata/name",
            "metadata.namespace" => "/metadata/namespace",
            _ => return None,
        };
        string_at(object, pointer)
    }

    /// The columns of this kind's Table (what `kubectl get` prints).
    fn columns(&self) -> Vec<Column> {
        vec![Column::name(), Column::age()]
    }

    /// One Table row's cells, in the order of `columns`.
    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        vec![json!(name_of(object)), json!(age_of(object, now))]
    }
}

/// The string at a JSON pointer, if there is one.
pub fn string_at(object: &Value, pointer: &str) -> Option<String> {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// `metadata.name`, or "" for a nameless object.
pub fn name_of(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The Age cell: time since `metadata.creationTimestamp`, as kubectl prints it.
pub fn age_of(object: &Value, now: Timestamp) -> String {
    mube_apis::table::human_age(
        mube_apis::table::time_at(object, "/metadata/creationTimestamp"),
        now,
    )
}

/// A kind's typed k8s-openapi struct, as the registry uses it: what is
/// stored is the object as this type serializes it (`canonicalize`).
pub trait Typed: Send + Sync {
    /// Decoded and encoded again: what a Kubernetes server keeps of
    /// `object`.
    fn canonical(&self, object: &Value) -> Result<Value, String>;
    /// The type's OpenAPI schema, generated from k8s-openapi's own
    /// description of it: registers it (and every type it uses) in
    /// `generator` and returns the component name it is filed under.
    fn schema(&self, generator: &mut SchemaGenerator) -> String;
}

/// `Typed` for a k8s-openapi type `T`.
pub struct TypedAs<T>(std::marker::PhantomData<fn() -> T>);

impl<T> TypedAs<T> {
    pub const NEW: TypedAs<T> = TypedAs(std::marker::PhantomData);
}

impl<T: DeserializeOwned + serde::Serialize + JsonSchema> Typed for TypedAs<T> {
    fn canonical(&self, object: &Value) -> Result<Value, String> {
        let typed = T::deserialize(object).map_err(|e| e.to_string())?;
        serde_json::to_value(typed).map_err(|e| e.to_string())
    }

    fn schema(&self, generator: &mut SchemaGenerator) -> String {
        generator.subschema_for::<T>();
        T::schema_name().into_owned()
    }
}

/// Paths (`spec.foo`) of fields in `sent` that the typed form `kept` lacks:
/// the unknown fields `fieldValidation=Strict` refuses. `extra` lists mube's
/// own additions, which are known. Nulls and `$` directives are not fields.
pub fn unknown_fields(
    sent: &Value,
    kept: &Value,
    path: &str,
    extra: &[&str],
    out: &mut Vec<String>,
) {
    match (sent, kept) {
        (Value::Object(s), Value::Object(k)) => {
            for (key, value) in s {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if value.is_null() || key.starts_with('$') || extra.contains(&child.as_str()) {
                    continue;
                }
                match k.get(key) {
                    Some(kept_value) => unknown_fields(value, kept_value, &child, extra, out),
                    None => out.push(child),
                }
            }
        }
        (Value::Array(s), Value::Array(k)) => {
            for (i, (a, b)) in s.iter().zip(k.iter()).enumerate() {
                unknown_fields(a, b, &format!("{path}[{i}]"), extra, out);
            }
        }
        _ => {}
    }
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

/// Which part of an object an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything but the status (when the kind has a status subresource).
    Main,
    /// Only the status.
    Status,
}

/// Every kind this server serves, over one store.
pub struct Registry {
    store: Arc<dyn Store>,
    /// What dry-run writes go through: reads from `store`, writes nothing.
    dry_run: DryRunStore,
    resources: Vec<Arc<Resource>>,
}

impl Registry {
    /// The kinds mube serves today.
    pub fn standard(store: Arc<dyn Store>) -> Registry {
        Registry {
            dry_run: DryRunStore::new(store.clone()),
            store,
            resources: vec![
                Arc::new(node::resource()),
                Arc::new(lease::resource()),
                Arc::new(pod::resource()),
                Arc::new(event::resource()),
            ],
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

    pub fn resources(&self) -> &[Arc<Resource>] {
        &self.resources
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<Resource>> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// Looks up a registered kind by plural name; for code that names kinds
    /// it knows are registered (the heartbeat, controllers).
    pub fn resource(&self, plural: &str) -> Result<Arc<Resource>, ApiError> {
        self.resources
            .iter()
            .find(|r| r.plural == plural)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(Reason::NotFound, format!("resource {plural} is not served"))
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
        if name.is_empty() {
            if let Some(prefix) = meta.get("generateName").and_then(Value::as_str) {
                let suffix = uuid::Uuid::new_v4().simple().to_string();
                name = format!("{prefix}{}", &suffix[..5]);
                meta.insert("name".into(), json!(name));
            }
        }
        set_namespace(r, meta, namespace)?;
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
        canonicalize(r, &mut object)?;
        if let Some(manager) = manager {
            managed::record_update(r, manager, None, &mut object, now)?;
        }
        validate(r, &name, &object)?;
        self.store_for(dry_run)
            .create(&r.key(namespace, &name), object)
            .await
            .map_err(|e| ApiError::from_store(e, r, &name))
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
        check_type(r, &mut object)?;
        let meta = metadata_mut(&mut object)?;
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            _ => {
                meta.insert("name".into(), json!(name));
            }
        }
        set_namespace(r, meta, namespace)?;
        let precondition = match meta.get("resourceVersion") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.parse::<Revision>().map_err(|_| {
                ApiError::bad_request(format!("metadata.resourceVersion: invalid value {s:?}"))
            })?),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "metadata.resourceVersion: must be a string, got {other}"
                )))
            }
        };
        self.modify_in(
            self.store_for(dry_run),
            r,
            namespace,
            name,
            Some(&Manager {
                name: manager,
                part,
            }),
            |current, old| {
                if let Some(expected) = precondition {
                    if expected != current.revision {
                        return Err(ApiError::from_store(
                            StoreError::Conflict {
                                key: current.key.to_string(),
                                expected,
                                actual: current.revision,
                            },
                            r,
                            name,
                        ));
                    }
                }
                Ok(Some(merge_update(r, part, old, object.clone())))
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
            Some(manager),
            change,
        )
        .await
    }

    /// `modify` through `store`: the real one, or the dry-run one. With a
    /// `manager`, the change is recorded in managedFields as its update;
    /// without, `change` has set them (an apply).
    async fn modify_in(
        &self,
        store: &dyn Store,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        manager: Option<&Manager<'_>>,
        mut change: impl FnMut(&StoredObject, Value) -> Result<Option<Value>, ApiError>,
    ) -> Result<StoredObject, ApiError> {
        let key = r.key(namespace, name);
        let result = crate::store::guaranteed_update(
            store,
            &key,
            |current, old: Value| -> Result<Option<Value>, UpdateFailure> {
                let Some(mut new) = change(current, old.clone())? else {
                    return Ok(None);
                };
                // Identity and bookkeeping are the server's, whatever the body says.
                if let (Some(new_meta), Some(old_meta)) = (
                    new.get_mut("metadata").and_then(Value::as_object_mut),
                    old.get("metadata").and_then(Value::as_object),
                ) {
                    for kept in [
                        "uid",
                        "creationTimestamp",
                        "generation",
                        "namespace",
                        "name",
                    ] {
                        match old_meta.get(kept) {
                            Some(v) => new_meta.insert(kept.into(), v.clone()),
                            None => new_meta.remove(kept),
                        };
                    }
                    new_meta.insert(
                        "resourceVersion".into(),
                        json!(current.revision.to_string()),
                    );
                }
                canonicalize(r, &mut new)?;
                if let Some(manager) = manager {
                    managed::record_update(r, manager, Some(&old), &mut new, Timestamp::now())?;
                }
                if new == old {
                    return Ok(None);
                }
                validate(r, name, &new)?;
                Ok(Some(new))
            },
        )
        .await;
        result.map_err(|f| match f {
            UpdateFailure::Store(e) => ApiError::from_store(e, r, name),
            UpdateFailure::Api(e) => e,
        })
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
            Some(&Manager {
                name: manager,
                part,
            }),
            |current, old| {
                let mut patched = old.clone();
                patch
                    .apply(&mut patched)
                    .map_err(|m| ApiError::new(Reason::Invalid, m))?;
                let wanted = patched
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str);
                if let Some(wanted) = wanted {
                    if wanted != current.revision.to_string() {
                        return Err(ApiError::from_store(
                            StoreError::Conflict {
                                key: current.key.to_string(),
                                expected: wanted.parse().unwrap_or(0),
                                actual: current.revision,
                            },
                            r,
                            name,
                        ));
                    }
                }
                check_type(r, &mut patched)?;
                Ok(Some(merge_update(r, part, old, patched)))
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
        check_type(r, &mut config)?;
        let meta = metadata_mut(&mut config)?;
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            _ => {
                meta.insert("name".into(), json!(name));
            }
        }
        if meta.get("managedFields").is_some_and(|m| !m.is_null()) {
            return Err(ApiError::bad_request("metadata.managedFields must be nil"));
        }
        set_namespace(r, meta, namespace)?;
        let precondition = match meta.get("resourceVersion") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.parse::<Revision>().map_err(|_| {
                ApiError::bad_request(format!("metadata.resourceVersion: invalid value {s:?}"))
            })?),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "metadata.resourceVersion: must be a string, got {other}"
                )))
            }
        };
        let manager = Manager {
            name: manager,
            part,
        };
        let store = self.store_for(dry_run);
        // An apply creates or updates; a create that loses a race to
        // another writer is tried again as an update.
        for _ in 0..3 {
            if store.get(&r.key(namespace, name)).await?.is_none() {
                if precondition.is_some() {
                    return Err(ApiError::not_found(r, name));
                }
                let object = managed::apply(r, &manager, None, &config, force, Timestamp::now())?;
                match self.create_in(r, namespace, object, None, dry_run).await {
                    Err(e) if e.status.reason.as_deref() == Some("AlreadyExists") => continue,
                    other => return other.map(|o| (o, true)),
                }
            }
            let updated = self
                .modify_in(store, r, namespace, name, None, |current, old| {
                    if let Some(expected) = precondition {
                        if expected != current.revision {
                            return Err(ApiError::from_store(
                                StoreError::Conflict {
                                    key: current.key.to_string(),
                                    expected,
                                    actual: current.revision,
                                },
                                r,
                                name,
                            ));
                        }
                    }
                    let new =
                        managed::apply(r, &manager, Some(&old), &config, force, Timestamp::now())?;
                    Ok(Some(new))
                })
                .await;
            match updated {
                Err(e) if e.status.code == Some(404) => continue,
                other => return other.map(|o| (o, false)),
            }
        }
        Err(ApiError::new(
            Reason::Conflict,
            format!("{name}: the object was created and deleted concurrently; try again"),
        ))
    }

    /// DELETE. The preconditions (uid, resourceVersion) are checked by the
    /// store atomically with the removal. Every kind mube serves today is
    /// removed at once (none has graceful deletion or finalizers yet).
    pub async fn delete(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        name: &str,
        preconditions: &Preconditions,
        dry_run: DryRun,
    ) -> Result<StoredObject, ApiError> {
        self.store_for(dry_run)
            .delete(&r.key(namespace, name), preconditions)
            .await
            .map_err(|e| ApiError::from_store(e, r, name))
    }

    /// DELETE on a collection: every object the filter matches, each deleted
    /// as by `delete` (same preconditions, same dry run), by the key it was
    /// listed under. Objects deleted by someone else meanwhile are skipped;
    /// the first other failure stops the call and is returned, as Kubernetes
    /// does. Returns what was deleted and the revision the collection was
    /// listed at.
    pub async fn delete_collection(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        filter: &Filter,
        preconditions: &Preconditions,
        dry_run: DryRun,
    ) -> Result<(Vec<StoredObject>, Revision), ApiError> {
        let (items, revision) = self.list(r, namespace, filter, ReadAt::Newest).await?;
        let store = self.store_for(dry_run);
        let mut deleted = Vec::with_capacity(items.len());
        for item in items {
            match store.delete(&item.key, preconditions).await {
                Ok(gone) => deleted.push(gone),
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => {
                    // The name is the key's last segment.
                    let name = item.key.rsplit('/').next().unwrap_or_default();
                    return Err(ApiError::from_store(e, r, name));
                }
            }
        }
        Ok((deleted, revision))
    }
}

/// The new object of an update: with a status subresource, a main update
/// keeps the old status and a status update keeps everything else.
fn merge_update(r: &Resource, part: Part, old: Value, mut new: Value) -> Value {
    if !r.status_subresource {
        return new;
    }
    match part {
        Part::Main => {
            if let Some(obj) = new.as_object_mut() {
                match old.get("status") {
                    Some(s) => obj.insert("status".into(), s.clone()),
                    None => obj.remove("status"),
                };
            }
            new
        }
        Part::Status => {
            let mut merged = old;
            if let Some(obj) = merged.as_object_mut() {
                match new.as_object_mut().and_then(|n| n.remove("status")) {
                    Some(s) => obj.insert("status".into(), s),
                    None => obj.remove("status"),
                };
            }
            merged
        }
    }
}

fn time(ts: Timestamp) -> Value {
    serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts))
        .unwrap_or(Value::Null)
}

/// `apiVersion` and `kind` must name this resource; missing ones are filled in.
fn check_type(r: &Resource, object: &mut Value) -> Result<(), ApiError> {
    let obj = object
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    let api_version = r.api_version();
    for (field, want) in [("apiVersion", api_version.as_str()), ("kind", r.kind)] {
        match obj.get(field) {
            None | Some(Value::Null) => {
                obj.insert(field.into(), json!(want));
            }
            Some(Value::String(s)) if s == want => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "{field} {other} does not match the request: expected {want:?}"
                )))
            }
        }
    }
    Ok(())
}

fn metadata_mut(object: &mut Value) -> Result<&mut serde_json::Map<String, Value>, ApiError> {
    let obj = object
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

fn set_namespace(
    r: &Resource,
    meta: &mut serde_json::Map<String, Value>,
    namespace: Option<&str>,
) -> Result<(), ApiError> {
    if !r.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let Some(ns) = namespace else {
        return Err(ApiError::bad_request(format!(
            "{} are namespaced: use a /namespaces/{{namespace}}/ path",
            r.plural
        )));
    };
    match meta.get("namespace").and_then(Value::as_str) {
        Some(given) if !given.is_empty() && given != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            meta.insert("namespace".into(), json!(ns));
            Ok(())
        }
    }
}

fn shape_error(r: &Resource, message: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{} in version \"{}\" cannot be handled as a {}: {message}",
        r.kind, r.version, r.kind
    ))
}

/// `fieldValidation`: what to do with fields the kind does not define.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(value: Option<&str>) -> Result<FieldValidation, ApiError> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: invalid value {other:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
            ))),
        }
    }
}

/// Checks a request body (an object, or a merge/strategic patch) for fields
/// the kind does not define. Strict refuses them (400, as Kubernetes does);
/// Warn returns them as warnings; either way nothing is dropped from storage.
pub fn check_fields(
    r: &Resource,
    body: &Value,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    if mode == FieldValidation::Ignore || !body.is_object() {
        return Ok(Vec::new());
    }
    // A patch deletes with null and steers with `$` directives: neither is a field.
    let mut typed = without_nulls_and_directives(body.clone());
    if let Some(obj) = typed.as_object_mut() {
        obj.insert("apiVersion".into(), json!(r.api_version()));
        obj.insert("kind".into(), json!(r.kind));
    }
    let kept = r
        .strategy
        .typed()
        .canonical(&typed)
        .map_err(|m| shape_error(r, &m))?;
    let mut unknown = Vec::new();
    unknown_fields(&typed, &kept, "", r.strategy.extra_fields(), &mut unknown);
    let messages: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if mode == FieldValidation::Strict && !messages.is_empty() {
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            messages.join(", ")
        )));
    }
    Ok(messages)
}

fn without_nulls_and_directives(value: Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, v)| !v.is_null() && !k.starts_with('$'))
                .map(|(k, v)| (k, without_nulls_and_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls_and_directives).collect()),
        other => other,
    }
}

/// The object as the kind's Kubernetes type serializes it: every field the
/// type requires present, fields it does not define dropped (a client was
/// warned of them, or refused under `fieldValidation=Strict`), as a
/// Kubernetes server stores what it decoded. mube's own additions to a
/// type (`extra_fields`) are kept. Every write goes through this, so
/// every object served has Kubernetes' shape.
fn canonicalize(r: &Resource, object: &mut Value) -> Result<(), ApiError> {
    let mut kept = r
        .strategy
        .typed()
        .canonical(object)
        .map_err(|m| shape_error(r, &m))?;
    for extra in r.strategy.extra_fields() {
        let mut from = Some(&*object);
        for key in extra.split('.') {
            from = from.and_then(|v| v.get(key));
        }
        if let Some(value) = from {
            let keys: Vec<&str> = extra.split('.').collect();
            put(&mut kept, &keys, value.clone());
        }
    }
    *object = kept;
    Ok(())
}

/// Sets the field at `keys`, making the objects on the way.
fn put(target: &mut Value, keys: &[&str], value: Value) {
    let Some(map) = target.as_object_mut() else {
        return;
    };
    match keys {
        [last] => {
            map.insert((*last).to_string(), value);
        }
        [first, rest @ ..] => put(map.entry(*first).or_insert_with(|| json!({})), rest, value),
        [] => {}
    }
}

/// Generic checks (name, labels, annotations) plus the kind's own, on an
/// object already `canonicalize`d.
fn validate(r: &Resource, name: &str, object: &Value) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if name.is_empty() {
        errors.push(FieldError::new(
            "metadata.name",
            "Required value: name or generateName is required",
        ));
    } else if let Err(m) = validation::dns1123_subdomain(name) {
        errors.push(FieldError::new("metadata.name", m));
    }
    let meta = object.get("metadata");
    let labels = meta.and_then(|m| m.get("labels"));
    let annotations = meta.and_then(|m| m.get("annotations"));
    let as_map = |v: Option<&Value>,
                  field: &str|
     -> Result<Option<std::collections::BTreeMap<String, String>>, ApiError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| ApiError::bad_request(format!("{field}: {e}"))),
        }
    };
    let labels = as_map(labels, "metadata.labels")?;
    let annotations = as_map(annotations, "metadata.annotations")?;
    errors.extend(validation::labels_and_annotations(
        labels.as_ref(),
        annotations.as_ref(),
    ));
    errors.extend(r.strategy.validate(object));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(r, name, errors))
    }
}
