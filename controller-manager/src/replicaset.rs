//! The ReplicaSet controller, as Kubernetes': keeps `spec.replicas` active
//! pods that match the selector and are owned by the ReplicaSet (an owner
//! reference with `controller: true`), adopts matching orphans, releases
//! owned pods that stop matching, and reports `status`.
//!
//! `plan` is the decision, from the ReplicaSet, the cached pods and the
//! writes this process made that the cache does not show yet; `reconcile`
//! carries it out. Those writes are Kubernetes' "expectations": a pod just
//! created is counted before its watch event arrives, so a second pass in
//! between never creates it twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use mube_apis::selector::{label_selector_string, LabelSelector};
use serde_json::json;

use crate::informer::{controller_of, controller_ref};
use crate::pods;
use crate::Error;

/// At most this many pods are created or deleted per pass (Kubernetes'
/// `burstReplicas`); the next pass does the rest.
pub const BURST: usize = 500;
/// Creates in flight at once.
const PARALLEL: usize = 32;
/// How long a write not yet seen by the cache is counted (Kubernetes
/// expires its expectations after 5 minutes; the watch here is local).
const PENDING_FOR: Duration = Duration::from_secs(60);

/// Writes this process made that the cache may not show yet.
#[derive(Debug, Default)]
pub struct Pending {
    /// Names of pods created.
    pub creates: HashMap<String, Instant>,
    /// UIDs of pods deleted.
    pub deletes: HashMap<String, Instant>,
}

pub struct Context {
    pub client: Client,
    pub pods: Store<Pod>,
    /// Per ReplicaSet UID.
    pub pending: Mutex<HashMap<String, Pending>>,
}

/// What one pass does.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: usize,
    pub delete: Vec<Arc<Pod>>,
    pub adopt: Vec<Arc<Pod>>,
    pub release: Vec<Arc<Pod>>,
    pub status: ReplicaSetStatus,
    /// When ready pods become available (`minReadySeconds`).
    pub requeue: Option<Duration>,
}

/// The selector of a workload, parsed; `None` if it selects nothing
/// (missing or empty, which the API server refuses).
pub fn selector_of(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Option<LabelSelector> {
    let text = label_selector_string(selector).ok()?;
    if text.is_empty() {
        return None;
    }
    LabelSelector::parse(&text).ok()
}

/// Which pods go first when scaling down (Kubernetes' `ActivePods` order):
/// unscheduled before scheduled, pending before running, not ready before
/// ready, ready for less time before longer, more restarts before fewer,
/// newer before older.
fn deletion_rank(pod: &Pod) -> impl Ord {
    let status = pod.status.as_ref();
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let ready = pods::ready_since(pod);
    let restarts: i32 = status
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0);
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (
        scheduled,
        phase,
        ready.is_some(),
        std::cmp::Reverse(ready),
        std::cmp::Reverse(restarts),
        std::cmp::Reverse(created),
    )
}

pub fn plan(rs: &ReplicaSet, cached: &[Arc<Pod>], pending: &Pending, now: Timestamp) -> Plan {
    let mut plan = Plan::default();
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    let namespace = rs.metadata.namespace.as_deref();
    let spec = rs.spec.clone().unwrap_or_default();
    let selector = selector_of(&spec.selector);
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let min_ready = spec.min_ready_seconds.unwrap_or(0) as i64;
    let mut mine: Vec<Arc<Pod>> = Vec::new();
    for pod in cached
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == namespace)
    {
        let matches = selector
            .as_ref()
            .is_some_and(|s| s.matches(pod.metadata.labels.as_ref()));
        match controller_of(&pod.metadata) {
            Some(owner) if owner.uid == uid => {
                if matches {
                    mine.push(pod.clone());
                } else if pod.metadata.deletion_timestamp.is_none() {
                    plan.release.push(pod.clone());
                }
            }
            Some(_) => {}
            None => {
                if matches && !deleting && pods::is_active(pod) {
                    plan.adopt.push(pod.clone());
                    mine.push(pod.clone());
                }
            }
        }
    }
    let active: Vec<&Arc<Pod>> = mine
        .iter()
        .filter(|p| pods::is_active(p))
        .filter(|p| {
            !p.metadata
                .uid
                .as_ref()
                .is_some_and(|u| pending.deletes.contains_key(u))
        })
        .collect();
    let seen: std::collections::HashSet<&str> = mine
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    let unseen_creates = pending
        .creates
        .keys()
        .filter(|n| !seen.contains(n.as_str()))
        .count();
    let wanted = spec.replicas.unwrap_or(1).max(0) as usize;
    let have = active.len() + unseen_creates;
    if !deleting {
        if have < wanted {
            plan.create = (wanted - have).min(BURST);
        } else if have > wanted {
            let mut ranked = active.clone();
            ranked.sort_by_key(|p| deletion_rank(p));
            plan.delete = ranked
                .into_iter()
                .take((have - wanted).min(BURST))
                .cloned()
                .collect();
        }
    }
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let counted: Vec<&Arc<Pod>> = mine.iter().filter(|p| pods::is_active(p)).collect();
    let mut next_available: Option<i64> = None;
    let available = counted
        .iter()
        .filter(|p| {
            let ok = pods::is_available(p, min_ready, now);
            if !ok {
                if let Some(since) = pods::ready_since(p) {
                    let left = min_ready - now.duration_since(since).as_secs();
                    next_available = Some(next_available.map_or(left, |n| n.min(left)));
                }
            }
            ok
        })
        .count();
    plan.requeue = next_available.map(|s| Duration::from_secs(s.max(1) as u64));
    plan.status = ReplicaSetStatus {
        replicas: counted.len() as i32,
        fully_labeled_replicas: Some(
            counted
                .iter()
                .filter(|p| {
                    let labels = p.metadata.labels.clone().unwrap_or_default();
                    template_labels
                        .iter()
                        .all(|(k, v)| labels.get(k) == Some(v))
                })
                .count() as i32,
        ),
        ready_replicas: Some(counted.iter().filter(|p| pods::is_ready(p)).count() as i32),
        available_replicas: Some(available as i32),
        observed_generation: rs.metadata.generation,
        ..Default::default()
    };
    plan
}

/// A pod of `rs`'s template, owned by it.
pub fn pod_for(rs: &ReplicaSet) -> Pod {
    let template: PodTemplateSpec = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            owner_references: Some(vec![controller_ref(rs)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Whether the status a pass computed differs from what is stored.
fn status_changed(old: Option<&ReplicaSetStatus>, new: &ReplicaSetStatus) -> bool {
    let zero = |v: Option<i32>| v.unwrap_or(0);
    match old {
        None => true,
        Some(old) => {
            old.replicas != new.replicas
                || zero(old.ready_replicas) != zero(new.ready_replicas)
                || zero(old.available_replicas) != zero(new.available_replicas)
                || zero(old.fully_labeled_replicas) != zero(new.fully_labeled_replicas)
                || old.observed_generation != new.observed_generation
        }
    }
}

fn ignore_gone(result: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        other => other,
    }
}

pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = rs.namespace().unwrap_or_default();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let now = Timestamp::now();
    let cached = ctx.pods.state();
    let plan = {
        let mut all = ctx.pending.lock().unwrap_or_else(|p| p.into_inner());
        let pending = all.entry(uid.clone()).or_default();
        // What the cache now shows is no longer pending. Only this
        // ReplicaSet's pods can be (its creates and deletes), so only they
        // are looked at.
        if !pending.creates.is_empty() || !pending.deletes.is_empty() {
            let own: Vec<&Arc<Pod>> = cached
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(&ns))
                .filter(|p| controller_of(&p.metadata).is_some_and(|o| o.uid == uid))
                .collect();
            let names: std::collections::HashSet<&str> = own
                .iter()
                .filter_map(|p| p.metadata.name.as_deref())
                .collect();
            pending
                .creates
                .retain(|name, at| !names.contains(name.as_str()) && at.elapsed() < PENDING_FOR);
            let live: std::collections::HashSet<&str> = own
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.metadata.uid.as_deref())
                .collect();
            pending
                .deletes
                .retain(|u, at| live.contains(u.as_str()) && at.elapsed() < PENDING_FOR);
        }
        let plan = plan(&rs, &cached, pending, now);
        // Nothing left to wait for: no entry kept (a deleted ReplicaSet
        // leaves none behind).
        if pending.creates.is_empty() && pending.deletes.is_empty() {
            all.remove(&uid);
        }
        plan
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let params = PatchParams::default();
    for pod in &plan.adopt {
        let patch = json!({"metadata": {"ownerReferences": [controller_ref(rs.as_ref())]}});
        ignore_gone(
            pods.patch(&pod.name_any(), &params, &Patch::Strategic(patch))
                .await
                .map(|_| ()),
        )?;
    }
    for pod in &plan.release {
        let patch = json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": uid}]}});
        ignore_gone(
            pods.patch(&pod.name_any(), &params, &Patch::Strategic(patch))
                .await
                .map(|_| ()),
        )?;
    }
    if plan.create > 0 {
        let template = pod_for(&rs);
        // Every pod that was created is remembered, whatever happened to
        // the others: a failure of one must not let the next pass create
        // the rest again.
        let mut results = futures::stream::iter(0..plan.create)
            .map(|_| {
                let pods = pods.clone();
                let template = template.clone();
                async move { pods.create(&PostParams::default(), &template).await }
            })
            .buffer_unordered(PARALLEL);
        let mut failed = None;
        let mut created = 0;
        while let Some(result) = results.next().await {
            match result {
                Ok(pod) => {
                    created += 1;
                    let mut all = ctx.pending.lock().unwrap_or_else(|p| p.into_inner());
                    all.entry(uid.clone())
                        .or_default()
                        .creates
                        .insert(pod.name_any(), Instant::now());
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        tracing::debug!(replicaset = %rs.name_any(), created, "created pods");
        if let Some(e) = failed {
            return Err(e.into());
        }
    }
    if !plan.delete.is_empty() {
        {
            let mut all = ctx.pending.lock().unwrap_or_else(|p| p.into_inner());
            let pending = all.entry(uid.clone()).or_default();
            for pod in &plan.delete {
                if let Some(u) = &pod.metadata.uid {
                    pending.deletes.insert(u.clone(), Instant::now());
                }
            }
        }
        futures::stream::iter(plan.delete.clone())
            .map(|pod: Arc<Pod>| {
                let pods = pods.clone();
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: pod.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                async move {
                    let name = pod.name_any();
                    ignore_gone(pods.delete(&name, &params).await.map(|_| ()))
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<_>>()
            .await?;
    }
    if status_changed(rs.status.as_ref(), &plan.status) {
        let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": plan.status});
        ignore_gone(
            api.patch_status(&rs.name_any(), &params, &Patch::Merge(patch))
                .await
                .map(|_| ()),
        )?;
    }
    Ok(match plan.requeue {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// ReplicaSets whose selector matches `labels` in `namespace`: who may adopt
/// an orphan pod.
pub fn selecting(
    sets: &Store<ReplicaSet>,
    namespace: Option<&str>,
    labels: Option<&BTreeMap<String, String>>,
) -> Vec<ObjectRef<ReplicaSet>> {
    sets.state()
        .iter()
        .filter(|rs| rs.metadata.namespace.as_deref() == namespace)
        .filter(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| selector_of(&s.selector))
                .is_some_and(|s| s.matches(labels))
        })
        .map(|rs| ObjectRef::from_obj(rs.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use serde_json::from_value;

    fn rs(replicas: i32) -> ReplicaSet {
        from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "rs-1", "generation": 2},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
            }
        }))
        .unwrap()
    }

    fn pod(name: &str, owner: Option<&str>, labels: &[(&str, &str)], ready: bool) -> Arc<Pod> {
        let mut p = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                owner_references: owner.map(|uid| {
                    vec![OwnerReference {
                        uid: uid.into(),
                        controller: Some(true),
                        kind: "ReplicaSet".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        };
        if ready {
            p.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(Time(Timestamp::UNIX_EPOCH)),
                ..Default::default()
            }]);
        }
        Arc::new(p)
    }

    const WEB: &[(&str, &str)] = &[("app", "web")];

    #[test]
    fn creates_what_is_missing_counting_creates_not_yet_seen() {
        let pods = vec![pod("a", Some("rs-1"), WEB, true)];
        let p = plan(&rs(3), &pods, &Pending::default(), Timestamp::now());
        assert_eq!(p.create, 2);
        assert_eq!(p.status.replicas, 1);
        assert_eq!(p.status.ready_replicas, Some(1));
        assert_eq!(p.status.observed_generation, Some(2));
        let mut pending = Pending::default();
        pending.creates.insert("b".into(), Instant::now());
        pending.creates.insert("c".into(), Instant::now());
        let p = plan(&rs(3), &pods, &pending, Timestamp::now());
        assert_eq!(p.create, 0, "two creates are on their way");
        assert!(p.delete.is_empty());
    }

    #[test]
    fn deletes_the_least_useful_pods_first() {
        let mut pending_pod = (*pod("pending", Some("rs-1"), WEB, false)).clone();
        pending_pod.status.as_mut().unwrap().phase = Some("Pending".into());
        let pods = vec![
            pod("ready", Some("rs-1"), WEB, true),
            Arc::new(pending_pod),
            pod("unready", Some("rs-1"), WEB, false),
        ];
        let p = plan(&rs(1), &pods, &Pending::default(), Timestamp::now());
        let names: Vec<_> = p.delete.iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["pending", "unready"]);
        // A delete already sent is not sent again, nor counted.
        let mut pending = Pending::default();
        pending.deletes.insert("uid-pending".into(), Instant::now());
        let p = plan(&rs(1), &pods, &pending, Timestamp::now());
        assert_eq!(
            p.delete.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
            ["unready"]
        );
    }

    #[test]
    fn adopts_orphans_releases_strays_and_leaves_others_alone() {
        let pods = vec![
            pod("orphan", None, WEB, false),
            pod("stray", Some("rs-1"), &[("app", "other")], false),
            pod("theirs", Some("rs-2"), WEB, false),
        ];
        let p = plan(&rs(1), &pods, &Pending::default(), Timestamp::now());
        assert_eq!(
            p.adopt.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
            ["orphan"]
        );
        assert_eq!(
            p.release.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
            ["stray"]
        );
        assert_eq!((p.create, p.delete.len(), p.status.replicas), (0, 0, 1));
        // A ReplicaSet being deleted adopts nothing and creates nothing.
        let mut going = rs(3);
        going.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let p = plan(&going, &pods, &Pending::default(), Timestamp::now());
        assert!(p.adopt.is_empty() && p.create == 0);
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let mut set = rs(1);
        set.spec.as_mut().unwrap().min_ready_seconds = Some(30);
        let mut p = (*pod("a", Some("rs-1"), WEB, true)).clone();
        let ready_at = Timestamp::now() - jiff::SignedDuration::from_secs(10);
        p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(Time(ready_at));
        let plan = plan(&set, &[Arc::new(p)], &Pending::default(), Timestamp::now());
        assert_eq!(plan.status.available_replicas, Some(0));
        assert_eq!(plan.status.ready_replicas, Some(1));
        let after = plan.requeue.unwrap().as_secs();
        assert!((19..=21).contains(&after), "{after}");
    }

    #[test]
    fn pods_carry_the_template_and_the_owner() {
        let p = pod_for(&rs(1));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-"));
        let owner = &p.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("rs-1", Some(true)));
        assert_eq!(p.metadata.labels.unwrap()["app"], "web");
    }
}
