//! Resources as data plus small hooks, served by one generic implementation.
//!
//! As in Kubernetes' `pkg/registry/generic`, each kind contributes a
//! `Resource` declaration (names, scope, whether it has a status subresource)
//! and a `Strategy` (defaulting, validation, selectable fields); everything
//! else is written once:
//!
//! - `generic.rs`: create, update, patch, apply and delete semantics over the
//!   store (the `Registry`);
//! - `meta.rs`: the metadata rules every kind shares (type, namespace,
//!   resourceVersion preconditions);
//! - `fields.rs`: the typed shape of objects and field validation;
//! - `managed.rs` and `fieldset.rs`: managedFields and server-side apply;
//! - `patch.rs`, `filter.rs`, `dry_run.rs`: patches, selectors, dry runs.
//!
//! Adding a kind is one file (its `ResourceInfo`, `Strategy` and Table, as
//! `configmap.rs` shows) and its module's name in the `kinds!` list below.

pub mod custom_kind;
mod dry_run;
pub mod fanout;
mod fields;
mod fieldset;
mod filter;
mod generic;
pub mod managed;
mod meta;
pub mod patch;
pub mod pod_cidr;
pub mod service_ranges;
#[cfg(test)]
mod tests;

/// Declares every kind's module and `standard_kinds`, from one list: a kind
/// is named once.
/// After `;`, kinds declared by a function of a module that holds several
/// (the four RBAC kinds share their rules).
macro_rules! kinds {
    ($($kind:ident),* ; $($module:ident :: $declare:ident),* $(,)?) => {
        $(pub mod $kind;)*

        /// Every kind mube serves, in discovery order.
        fn standard_kinds() -> Vec<Resource> {
            vec![$($kind::resource(),)* $($module::$declare(),)*]
        }
    };
}

kinds!(namespace, node, lease, pod, event, configmap, secret, csr, service, endpoint_slice, crd;
    rbac::role, rbac::cluster_role, rbac::role_binding, rbac::cluster_role_binding,
    apps::deployment, apps::replica_set);
pub mod apps;
pub mod rbac;

use jiff::Timestamp;
use k8s_openapi::schemars::{JsonSchema, SchemaGenerator};
use mube_apis::resources::ResourceInfo;
use mube_apis::table::Column;
use mube_apis::validation::FieldError;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

pub use dry_run::DryRun;
pub use fields::{check_fields, unknown_fields, FieldValidation};
pub use filter::{Filter, Projection};
pub use generic::{Propagation, Registry, FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
pub use managed::Manager;
pub use meta::parse_resource_version;
pub use namespace::ensure_system_namespaces;

/// The time now, as a Kubernetes `Time` in JSON.
pub fn now_time() -> Value {
    meta::time(Timestamp::now())
}

/// A kind's declaration: its names (shared with clients through
/// `mube_apis::resources`) and its hooks.
pub struct Resource {
    pub info: &'static ResourceInfo,
    pub strategy: Box<dyn Strategy>,
    /// How `kubectl get` prints the kind (server-side Tables).
    pub table: Box<dyn TableConvertor>,
}

impl std::ops::Deref for Resource {
    type Target = ResourceInfo;

    fn deref(&self) -> &ResourceInfo {
        self.info
    }
}

impl Resource {
    /// Whether the kind serves `/status` (its strategy says).
    pub fn status_subresource(&self) -> bool {
        self.strategy.status_subresource()
    }

    /// Whether the kind serves `/scale` (its strategy says).
    pub fn scale_subresource(&self) -> bool {
        self.strategy.scale_subresource()
    }

    /// `/registry/{plural}/{namespace}/{name}`, or `/registry/{plural}/{name}`
    /// for cluster-scoped kinds.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }

    /// The key prefix of a list: one namespace, or all of them when `None`.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let root = match self.strategy.storage_root() {
            Some(root) => root.to_string(),
            None => format!("/registry/{}", self.plural),
        };
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("{root}/{ns}/"),
            None => format!("{root}/"),
        }
    }

    /// A stored object as this version serves it: as stored, or (a custom
    /// kind's object stored at another version) with this version's
    /// `apiVersion`, the `None` conversion strategy.
    pub fn served<'a>(&self, stored: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        if !self.converts() {
            return std::borrow::Cow::Borrowed(stored);
        }
        // Stored JSON starts with its apiVersion (keys are written sorted,
        // or as the client sent them): most reads need no decoding.
        let api_version = stored
            .strip_prefix(b"{\"apiVersion\":\"".as_slice())
            .and_then(|rest| rest.strip_prefix(self.group.as_bytes()))
            .and_then(|rest| rest.strip_prefix(b"/".as_slice()))
            .and_then(|rest| rest.strip_prefix(self.version.as_bytes()));
        if api_version.is_some_and(|rest| rest.starts_with(b"\"")) {
            return std::borrow::Cow::Borrowed(stored);
        }
        match serde_json::from_slice::<Value>(stored) {
            Ok(mut object) => {
                object["apiVersion"] = json!(self.api_version());
                std::borrow::Cow::Owned(
                    serde_json::to_vec(&object).unwrap_or_else(|_| stored.to_vec()),
                )
            }
            Err(_) => std::borrow::Cow::Borrowed(stored),
        }
    }

    /// Whether this is the one served version that stands for the kind's
    /// stored objects (every built-in kind; a custom kind's storage
    /// version, or its preferred served one when the storage version is
    /// not served). Code that walks every stored kind (namespace deletion,
    /// metrics) takes these, so that a kind served at several versions is
    /// walked once, and none is missed.
    pub fn is_stored_version(&self) -> bool {
        self.strategy.stands_for_storage()
    }

    /// Whether objects read or written through this version may change
    /// `apiVersion` on the way: a custom kind's objects are stored at its
    /// storage version, and one written before the CRD changed its storage
    /// version keeps the old one until it is written again.
    pub fn converts(&self) -> bool {
        self.strategy.storage_root().is_some()
    }
}

/// The per-kind hooks. Defaults suit a kind with no special rules.
/// A deletion the node agent finishes: see `Strategy::graceful_deletion`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graceful {
    pub seconds: i64,
    pub node: String,
}

pub trait Strategy: Send + Sync {
    /// The kind's typed Kubernetes struct (`&TypedAs::<Node>::NEW`).
    fn typed(&self) -> &dyn Typed;

    /// Fields mube adds to the Kubernetes type (they are not unknown).
    fn extra_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// The rule for `metadata.name`: by default a DNS subdomain, as most
    /// Kubernetes kinds.
    fn validate_name(&self, name: &str) -> Result<(), String> {
        mube_apis::validation::dns1123_subdomain(name)
    }

    /// Kind-specific validation, after the shape and the generic checks.
    fn validate(&self, _object: &Value) -> Vec<FieldError> {
        Vec::new()
    }

    /// Defaulting on create (e.g. a Node starts in state Unknown).
    fn prepare_for_create(&self, _object: &mut Value, _now: Timestamp) {}

    /// On a client's create: record who asked, for kinds that keep it
    /// (a CertificateSigningRequest's `spec.username`).
    fn set_requester(&self, _object: &mut Value, _user: &crate::auth::UserInfo) {}

    /// Whether a delete only marks the object `Terminating` (with
    /// `deletionTimestamp`), and removes it once nothing lives in it (a
    /// Namespace, emptied by the namespace controller).
    fn terminates(&self) -> bool {
        false
    }

    /// Kubernetes' graceful deletion (`CheckGracefulDelete`): for a delete
    /// that asked for `requested` seconds (or nothing), the grace period the
    /// object gets and the node whose agent finishes the deletion. `None`
    /// removes the object at once, as for every kind but pods.
    fn graceful_deletion(&self, _object: &Value, _requested: Option<i64>) -> Option<Graceful> {
        None
    }

    /// Whether the kind has a status subresource (`/status`).
    fn status_subresource(&self) -> bool {
        false
    }

    /// Whether the garbage collector in mube-controller-manager watches the
    /// kind (it owns or is owned: workloads, pods, ConfigMaps, Secrets), so
    /// that the Foreground and Orphan policies add their finalizers.
    fn garbage_collected(&self) -> bool {
        false
    }

    /// Whether the kind has the `scale` subresource (`autoscaling/v1`
    /// Scale over `spec.replicas`, `status.replicas` and `spec.selector`).
    fn scale_subresource(&self) -> bool {
        false
    }

    /// Kubernetes' `PrepareForUpdate`: the object an update stores, from
    /// what the write produced (`new`) and the stored one (`old`), for a
    /// write to `part`. By default, with a status subresource, a main write
    /// keeps the stored status and a status write keeps everything else.
    fn prepare_for_update(&self, part: Part, new: Value, old: Value) -> Value {
        if self.status_subresource() {
            keep_status_apart(part, new, old)
        } else {
            new
        }
    }

    /// Kubernetes' `ValidateUpdate`: rules about the change itself, such as
    /// fields that may not change once set.
    fn validate_update(&self, _new: &Value, _old: &Value) -> Vec<FieldError> {
        Vec::new()
    }

    /// Where the kind's objects live in the store, when not under
    /// `/registry/{plural}`: a custom kind's `/registry/{group}/{plural}`
    /// (as in Kubernetes), so that it cannot meet a built-in plural.
    fn storage_root(&self) -> Option<&str> {
        None
    }

    /// For a kind served at several versions (a custom kind), the
    /// `apiVersion` its objects are stored as, when this version is not
    /// it. Reads answer with this version's `apiVersion` (the `None`
    /// conversion strategy: nothing but `apiVersion` changes).
    fn storage_version(&self) -> Option<&str> {
        None
    }

    /// See `Resource::is_stored_version`.
    fn stands_for_storage(&self) -> bool {
        self.storage_version().is_none()
    }

    /// Whether an update moves `metadata.generation`. As Kubernetes: a
    /// change of the spec (what a controller reports as
    /// `observedGeneration`).
    fn generation_changed(&self, new: &Value, old: &Value) -> bool {
        new.get("spec") != old.get("spec")
    }

    /// Where the `scale` subresource reads and writes, for a kind whose
    /// replicas are not at `spec.replicas`/`status.replicas` with a
    /// `spec.selector` LabelSelector (a custom kind's CRD says).
    fn scale_paths(&self) -> Option<&ScalePaths> {
        None
    }

    /// Fields a field selector may name.
    fn selectable_fields(&self) -> &'static [&'static str] {
        &["metadata.name", "metadata.namespace"]
    }

    /// The selectable field whose `field=value` watches are found through
    /// an index (see `fanout`), rather than offered every event.
    fn indexed_field(&self) -> Option<&'static str> {
        None
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
}

/// A custom kind's `scale` subresource: JSON pointers into its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    /// Where the selector is, as a string (`status.selector`), if the kind
    /// has one.
    pub label_selector: Option<String>,
}

/// A kind's server-side Table (Kubernetes' `TableConvertor`): what
/// `kubectl get` prints. The default is NAME and AGE.
pub trait TableConvertor: Send + Sync {
    /// The columns of this kind's Table (what `kubectl get` prints).
    fn columns(&self) -> Vec<Column> {
        vec![Column::name(), Column::age()]
    }

    /// One Table row's cells, in the order of `columns`.
    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        vec![json!(name_of(object)), json!(age_of(object, now))]
    }
}

/// NAME and CREATED AT (a timestamp, not an age), as kubectl prints
/// Roles, ClusterRoles and CustomResourceDefinitions.
pub struct CreatedAtTable {
    /// The column's description ("Time the role was created.").
    pub description: &'static str,
}

impl TableConvertor for CreatedAtTable {
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new("Created At", "date", "", self.description, 0),
        ]
    }

    fn cells(&self, object: &Value, _now: Timestamp) -> Vec<Value> {
        vec![
            json!(name_of(object)),
            object
                .pointer("/metadata/creationTimestamp")
                .cloned()
                .unwrap_or(Value::Null),
        ]
    }
}

/// The Table of a kind that declares no columns of its own.
pub struct DefaultTable;

impl TableConvertor for DefaultTable {}

/// The status subresource's rule: a main write keeps `old`'s status, a
/// status write keeps everything of `old` but the status.
pub fn keep_status_apart(part: Part, mut new: Value, old: Value) -> Value {
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

/// Which part of an object an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything but the status (when the kind has a status subresource).
    Main,
    /// Only the status.
    Status,
}
