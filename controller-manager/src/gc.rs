//! The garbage collector, as Kubernetes': objects whose owners
//! (`metadata.ownerReferences`) are all gone are deleted; an owner being
//! deleted in the foreground (the `foregroundDeletion` finalizer) has its
//! dependents deleted first and then its finalizer removed; an owner being
//! deleted with the Orphan policy (the `orphan` finalizer) has its
//! dependents' references to it removed, then its finalizer.
//!
//! It watches the kinds that own or are owned in mube (Deployments,
//! ReplicaSets, Pods, ConfigMaps and Secrets), not every kind as
//! Kubernetes' does: watching Leases and Events would cost a watch event per
//! heartbeat for nothing. A missing owner is confirmed by a read from the
//! API server before anything is deleted, so a cache that lags never
//! deletes a live object's dependents.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// The kinds the collector watches.
pub fn kinds() -> Vec<ApiResource> {
    vec![
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<ReplicaSet>(&()),
        ApiResource::erase::<Pod>(&()),
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<Secret>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<EndpointSlice>(&()),
    ]
}

/// One object, as the collector sees it.
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: usize,
    pub meta: ObjectMeta,
}

/// What a pass decides, from every watched object (pure: unit-tested).
#[derive(Debug, Default, PartialEq)]
pub struct Actions {
    /// Objects whose owners may all be gone (confirm, then delete):
    /// (kind index, namespace, name, uid).
    pub orphaned: Vec<(usize, Option<String>, String, String)>,
    /// Dependents to delete in the foreground: (kind, namespace, name, uid).
    pub delete_dependents: Vec<(usize, Option<String>, String, String)>,
    /// Dependents to cut loose from an owner: (kind, namespace, name, owner uid).
    pub orphan_dependents: Vec<(usize, Option<String>, String, String)>,
    /// Owners whose finalizer can go: (kind, namespace, name, finalizer).
    pub finalize: Vec<(usize, Option<String>, String, &'static str)>,
}

fn has_finalizer(meta: &ObjectMeta, f: &str) -> bool {
    meta.finalizers.iter().flatten().any(|x| x == f)
}

pub fn decide(objects: &[Node]) -> Actions {
    let mut actions = Actions::default();
    let by_uid: HashMap<&str, &Node> = objects
        .iter()
        .filter_map(|o| o.meta.uid.as_deref().map(|u| (u, o)))
        .collect();
    let mut dependents: HashMap<&str, Vec<&Node>> = HashMap::new();
    for o in objects {
        for r in o.meta.owner_references.iter().flatten() {
            dependents.entry(r.uid.as_str()).or_default().push(o);
        }
    }
    let id = |o: &Node| {
        (
            o.kind,
            o.meta.namespace.clone(),
            o.meta.name.clone().unwrap_or_default(),
            o.meta.uid.clone().unwrap_or_default(),
        )
    };
    for o in objects {
        let refs: &[OwnerReference] = o.meta.owner_references.as_deref().unwrap_or_default();
        if !refs.is_empty()
            && o.meta.deletion_timestamp.is_none()
            && refs.iter().all(|r| !by_uid.contains_key(r.uid.as_str()))
        {
            actions.orphaned.push(id(o));
        }
        if o.meta.deletion_timestamp.is_none() {
            continue;
        }
        let uid = o.meta.uid.as_deref().unwrap_or_default();
        let deps = dependents.get(uid).map(Vec::as_slice).unwrap_or_default();
        let (kind, ns, name, _) = id(o);
        if has_finalizer(&o.meta, ORPHAN) {
            for d in deps {
                actions.orphan_dependents.push((
                    d.kind,
                    d.meta.namespace.clone(),
                    d.meta.name.clone().unwrap_or_default(),
                    uid.to_string(),
                ));
            }
            if deps.is_empty() {
                actions.finalize.push((kind, ns, name, ORPHAN));
            }
        } else if has_finalizer(&o.meta, FOREGROUND) {
            for d in deps.iter().filter(|d| d.meta.deletion_timestamp.is_none()) {
                actions.delete_dependents.push(id(d));
            }
            if deps.is_empty() {
                actions.finalize.push((kind, ns, name, FOREGROUND));
            }
        }
    }
    actions
}

pub struct Collector {
    pub client: Client,
    pub kinds: Vec<ApiResource>,
    pub stores: Vec<Store<DynamicObject>>,
    pub changed: Arc<Notify>,
}

/// The collector's informers: one per kind, each ringing `changed`.
pub fn informers(
    client: &Client,
    changed: Arc<Notify>,
) -> (
    Vec<ApiResource>,
    Vec<Store<DynamicObject>>,
    Vec<futures::future::BoxFuture<'static, ()>>,
) {
    let kinds = kinds();
    let mut stores = Vec::new();
    let mut runs = Vec::new();
    for ar in &kinds {
        let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
        stores.push(writer.as_reader());
        let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
        let changed = changed.clone();
        let kind = ar.kind.clone();
        runs.push(
            reflector::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff()
                .for_each(move |e| {
                    match e {
                        Ok(_) => changed.notify_one(),
                        Err(e) => tracing::warn!(error = %e, %kind, "garbage collector: watch failed; retrying"),
                    }
                    futures::future::ready(())
                })
                .boxed(),
        );
    }
    (kinds, stores, runs)
}

impl Collector {
    fn api(&self, kind: usize, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &self.kinds[kind]),
            None => Api::all_with(self.client.clone(), &self.kinds[kind]),
        }
    }

    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            // Events come in bursts (a Deployment's thousand pods): one
            // pass per half second at most, not one per event.
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.pass().await;
        }
    }

    /// Whether the owner `r` of an object in `namespace` is really gone:
    /// read from the server, not the cache.
    async fn owner_gone(
        &self,
        namespace: Option<&str>,
        r: &OwnerReference,
    ) -> Result<bool, kube::Error> {
        // A reference that names nothing cannot be checked: left alone.
        if r.name.is_empty() || r.uid.is_empty() {
            return Ok(false);
        }
        let Some(kind) = self
            .kinds
            .iter()
            .position(|k| k.kind == r.kind && k.api_version == r.api_version)
        else {
            // A kind not watched here: left alone.
            return Ok(false);
        };
        let ns = namespace.filter(|_| self.kinds[kind].kind != "Namespace");
        Ok(match self.api(kind, ns).get_opt(&r.name).await? {
            None => true,
            Some(o) => o.metadata.uid.as_deref() != Some(r.uid.as_str()),
        })
    }

    /// One pass. A failure about one object is logged and the pass goes
    /// on: one bad owner reference must not stop the collector for all.
    async fn pass(&self) {
        let objects: Vec<Node> = self
            .stores
            .iter()
            .enumerate()
            .flat_map(|(kind, s)| {
                // Only what the collector reads (not labels, annotations
                // or managedFields, the bulk of a pod's metadata).
                s.state().into_iter().map(move |o| {
                    let m = &o.metadata;
                    Node {
                        kind,
                        meta: ObjectMeta {
                            name: m.name.clone(),
                            namespace: m.namespace.clone(),
                            uid: m.uid.clone(),
                            owner_references: m.owner_references.clone(),
                            deletion_timestamp: m.deletion_timestamp.clone(),
                            finalizers: m.finalizers.clone(),
                            ..Default::default()
                        },
                    }
                })
            })
            .collect();
        let actions = decide(&objects);
        let metas: HashMap<&str, &Node> = objects
            .iter()
            .filter_map(|o| o.meta.uid.as_deref().map(|u| (u, o)))
            .collect();
        let warn = |what: &str, name: &str, e: kube::Error| {
            tracing::warn!(error = %e, name, "garbage collector: cannot {what}; trying again later");
        };
        for (kind, ns, name, uid) in &actions.orphaned {
            let Some(node) = metas.get(uid.as_str()) else {
                continue;
            };
            let mut all_gone = true;
            for r in node.meta.owner_references.iter().flatten() {
                match self.owner_gone(ns.as_deref(), r).await {
                    Ok(true) => {}
                    Ok(false) => {
                        all_gone = false;
                        break;
                    }
                    Err(e) => {
                        warn("read an owner", name, e);
                        all_gone = false;
                        break;
                    }
                }
            }
            if all_gone {
                if let Err(e) = self.delete(*kind, ns.as_deref(), name, uid, None).await {
                    warn("delete", name, e);
                }
            }
        }
        for (kind, ns, name, uid) in &actions.delete_dependents {
            let policy = Some(PropagationPolicy::Foreground);
            if let Err(e) = self.delete(*kind, ns.as_deref(), name, uid, policy).await {
                warn("delete", name, e);
            }
        }
        for (kind, ns, name, owner) in &actions.orphan_dependents {
            let patch =
                json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": owner}]}});
            match self
                .api(*kind, ns.as_deref())
                .patch(name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => warn("orphan", name, e),
            }
        }
        for (kind, ns, name, finalizer) in &actions.finalize {
            let api = self.api(*kind, ns.as_deref());
            let current = match api.get_opt(name).await {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    warn("read", name, e);
                    continue;
                }
            };
            let left: Vec<String> = current
                .metadata
                .finalizers
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f != finalizer)
                .collect();
            let patch = json!({"metadata": {"finalizers": left, "resourceVersion": current.metadata.resource_version}});
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => warn("remove the finalizer of", name, e),
            }
        }
    }

    async fn delete(
        &self,
        kind: usize,
        ns: Option<&str>,
        name: &str,
        uid: &str,
        policy: Option<PropagationPolicy>,
    ) -> Result<(), kube::Error> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.into()),
                resource_version: None,
            }),
            propagation_policy: policy,
            ..Default::default()
        };
        match self.api(kind, ns).delete(name, &params).await {
            Ok(_) => {
                tracing::debug!(kind = %self.kinds[kind].kind, name, "garbage collected");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn node(kind: usize, name: &str, owner: Option<&str>) -> Node {
        Node {
            kind,
            meta: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                owner_references: owner.map(|o| {
                    vec![OwnerReference {
                        uid: format!("uid-{o}"),
                        name: o.into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn dependents_of_missing_owners_are_candidates() {
        let objects = [
            node(1, "rs", Some("gone")),
            node(2, "pod", Some("rs")),
            node(2, "free", None),
        ];
        let a = decide(&objects);
        assert_eq!(
            a.orphaned.iter().map(|o| o.2.as_str()).collect::<Vec<_>>(),
            ["rs"]
        );
    }

    #[test]
    fn foreground_deletes_dependents_then_finalizes() {
        let mut owner = node(0, "d", None);
        owner.meta.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        owner.meta.finalizers = Some(vec![FOREGROUND.into()]);
        let a = decide(&[owner.clone(), node(1, "rs", Some("d"))]);
        assert_eq!(
            a.delete_dependents
                .iter()
                .map(|o| o.2.as_str())
                .collect::<Vec<_>>(),
            ["rs"]
        );
        assert!(a.finalize.is_empty());
        let a = decide(&[owner]);
        assert_eq!(
            a.finalize,
            [(0, Some("default".into()), "d".into(), FOREGROUND)]
        );
    }

    #[test]
    fn orphan_cuts_dependents_loose_then_finalizes() {
        let mut owner = node(0, "d", None);
        owner.meta.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        owner.meta.finalizers = Some(vec![ORPHAN.into()]);
        let a = decide(&[owner.clone(), node(1, "rs", Some("d"))]);
        assert_eq!(
            a.orphan_dependents,
            [(1, Some("default".into()), "rs".into(), "uid-d".into())]
        );
        assert!(a.delete_dependents.is_empty() && a.finalize.is_empty());
        assert_eq!(decide(&[owner]).finalize.len(), 1);
    }
}
