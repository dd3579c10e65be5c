//! Informers: one watch per kind, cached by a kube-runtime reflector (which
//! relists on 410 and backs off on errors), whose every change is handed to
//! the controllers that care, as object references to reconcile.
//!
//! kube-runtime's `Controller::owns` would open a watch of the child kind
//! per controller and never report deletions to a shared subscriber; a
//! ReplicaSet must hear that its pod was deleted, so the child kinds are
//! watched here once and mapped to their owners (`reconcile_on`).

use std::fmt::Debug;
use std::future::Future;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// A cache of every `K`, and the future that keeps it (run it).
pub fn informer<K, F>(
    api: Api<K>,
    mut on_change: F,
) -> (Store<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()>
        + Clone
        + Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
    F: FnMut(&K) + Send + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let run = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .for_each(move |event| {
            match event {
                Ok(
                    watcher::Event::Apply(o)
                    | watcher::Event::Delete(o)
                    | watcher::Event::InitApply(o),
                ) => on_change(&o),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, kind = %K::kind(&()), "watch failed; retrying")
                }
            }
            futures::future::ready(())
        });
    (store, run)
}

/// Where a controller hears which of its objects to reconcile.
pub struct Triggers<K: Resource<DynamicType = ()>> {
    tx: mpsc::UnboundedSender<ObjectRef<K>>,
}

impl<K: Resource<DynamicType = ()>> Clone for Triggers<K> {
    fn clone(&self) -> Self {
        Triggers {
            tx: self.tx.clone(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Triggers<K> {
    pub fn new() -> (Triggers<K>, UnboundedReceiverStream<ObjectRef<K>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Triggers { tx }, UnboundedReceiverStream::new(rx))
    }

    pub fn send(&self, name: &str, namespace: Option<&str>) {
        let mut r = ObjectRef::new(name);
        if let Some(ns) = namespace {
            r = r.within(ns);
        }
        let _ = self.tx.send(r);
    }
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// An owner reference to `owner`, as its controller.
pub fn controller_ref<K: Resource<DynamicType = ()>>(
    owner: &K,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A JSON value's text, for log lines.
pub fn short(value: &Value) -> String {
    let text = value.to_string();
    text.chars().take(200).collect()
}
