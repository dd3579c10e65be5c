//! The Deployment controller, as Kubernetes': one ReplicaSet per pod
//! template (named by the template's hash), rolled from the old ones to the
//! new one by the strategy (RollingUpdate within maxSurge and
//! maxUnavailable, or Recreate), `revisionHistoryLimit` old ones kept for
//! `kubectl rollout undo`, and the Progressing and Available conditions.
//!
//! `plan` decides from the Deployment and its ReplicaSets (all cached);
//! `reconcile` writes. Every write changes a ReplicaSet or the Deployment's
//! status, whose watch events bring the next pass: a rollout is a series
//! of passes, each a step within the strategy's bounds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::informer::{controller_of, controller_ref};
use crate::Error;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const HASH_LABEL: &str = "pod-template-hash";

pub struct Context {
    pub client: Client,
    pub sets: Store<ReplicaSet>,
    pub pods: Store<Pod>,
}

/// What one pass writes.
#[derive(Debug, Default)]
pub struct Plan {
    /// A new ReplicaSet for the current template.
    pub create: Option<ReplicaSet>,
    /// `spec.replicas` of existing ReplicaSets, by name.
    pub scale: Vec<(String, i32)>,
    /// Revision annotations to move (an old template made current again).
    pub revise: Vec<(String, String)>,
    /// Old ReplicaSets beyond the history limit.
    pub delete: Vec<String>,
    pub status: DeploymentStatus,
    pub requeue: Option<Duration>,
}

/// FNV-1a, 32 bits: the template hash (Kubernetes uses the same function
/// over its own printing of the template; mube's is over the JSON).
fn fnv32a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes {
        hash ^= *b as u32;
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// `pod-template-hash`: the template's hash with the collision count,
/// spelled as Kubernetes' `SafeEncodeString` spells it (no vowels, so no
/// words).
pub fn template_hash(template: &PodTemplateSpec, collisions: i32) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut text = serde_json::to_vec(template).unwrap_or_default();
    if collisions > 0 {
        text.extend_from_slice(collisions.to_string().as_bytes());
    }
    fnv32a(&text)
        .to_string()
        .bytes()
        .map(|b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The template without its `pod-template-hash` label, and with empty
/// container resources as none (the same to Kubernetes).
fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    for c in t.spec.iter_mut().flat_map(|s| s.containers.iter_mut()) {
        if c.resources
            .as_ref()
            .is_some_and(|r| r == &Default::default())
        {
            c.resources = None;
        }
    }
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    t
}

pub fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

// Counts are i64 here: sums of i32 replicas (which a client may set near
// i32::MAX) never overflow; what is written back is clamped to i32.
fn replicas(rs: &ReplicaSet) -> i64 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) as i64
}

fn to_i32(n: i64) -> i32 {
    n.clamp(0, i32::MAX as i64) as i32
}

fn status_count(
    rs: &ReplicaSet,
    f: impl Fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> Option<i32>,
) -> i64 {
    rs.status.as_ref().and_then(f).unwrap_or(0) as i64
}

/// An IntOrString of `total`: counts as they are, percentages rounded up
/// (`round_up`, for maxSurge) or down (maxUnavailable), as Kubernetes.
fn scaled(value: Option<&IntOrString>, total: i64, round_up: bool, default: &str) -> i64 {
    let value = value
        .cloned()
        .unwrap_or(IntOrString::String(default.into()));
    match value {
        IntOrString::Int(n) => n.max(0) as i64,
        IntOrString::String(s) => {
            // Validation allows any percentage; more than 1,000,000 % is
            // as good as infinite here.
            let percent: i64 = s
                .trim_end_matches('%')
                .parse::<i64>()
                .unwrap_or(0)
                .clamp(0, 1_000_000);
            let product = percent * total;
            if round_up {
                (product + 99) / 100
            } else {
                product / 100
            }
        }
    }
}

/// maxSurge and maxUnavailable as counts; never both 0.
pub fn surge_and_unavailable(d: &Deployment) -> (i64, i64) {
    let spec = d.spec.clone().unwrap_or_default();
    let total = spec.replicas.unwrap_or(1).max(0) as i64;
    let rolling = spec
        .strategy
        .and_then(|s| s.rolling_update)
        .unwrap_or_default();
    let surge = scaled(rolling.max_surge.as_ref(), total, true, "25%");
    let mut unavailable = scaled(rolling.max_unavailable.as_ref(), total, false, "25%");
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(total))
}

fn recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// The ReplicaSet a Deployment makes for its current template.
fn new_replica_set(d: &Deployment, hash: &str, revision: i64, replicas: i64) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.into());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.into());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", d.name_any())),
            namespace: d.metadata.namespace.clone(),
            labels: meta.labels.clone(),
            annotations: Some(BTreeMap::from([(
                REVISION.to_string(),
                revision.to_string(),
            )])),
            owner_references: Some(vec![controller_ref(d)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(to_i32(replicas)),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    previous: Option<&DeploymentCondition>,
    now: Timestamp,
) -> DeploymentCondition {
    let same = previous.is_some_and(|p| {
        p.status == status
            && p.reason.as_deref() == Some(reason)
            && p.message.as_deref() == Some(&message)
    });
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: if same {
            previous.and_then(|p| p.last_update_time.clone())
        } else {
            Some(Time(now))
        },
        last_transition_time: match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Some(Time(now)),
        },
    }
}

/// One pass over Deployment `d`, whose ReplicaSets are `sets` (owned by
/// it), with `old_pods` pods of old ReplicaSets still present (Recreate
/// waits for them).
pub fn plan(d: &Deployment, sets: &[Arc<ReplicaSet>], old_pods: usize, now: Timestamp) -> Plan {
    let mut plan = Plan::default();
    let spec = d.spec.clone().unwrap_or_default();
    let wanted = spec.replicas.unwrap_or(1).max(0) as i64;
    let previous = d.status.clone().unwrap_or_default();
    let collisions = previous.collision_count.unwrap_or(0);
    let current = without_hash(&spec.template);
    let (new, old): (Vec<&Arc<ReplicaSet>>, Vec<&Arc<ReplicaSet>>) = sets.iter().partition(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| without_hash(t) == current)
    });
    // Two ReplicaSets with the same template: the oldest is the new one.
    let mut new: Vec<&Arc<ReplicaSet>> = new;
    new.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let mut old: Vec<&Arc<ReplicaSet>> =
        old.into_iter().chain(new.iter().skip(1).copied()).collect();
    old.sort_by_key(|rs| {
        (
            revision_of(rs),
            rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
        )
    });
    let new = new.first().copied();
    let max_old_revision = old.iter().map(|rs| revision_of(rs)).max().unwrap_or(0);
    let paused = spec.paused == Some(true);
    let (surge, unavailable) = surge_and_unavailable(d);
    let old_spec: i64 = old.iter().map(|rs| replicas(rs)).sum();
    let mut created_name = None;

    // The new ReplicaSet's size this pass, and old ones' (by name).
    let mut sizes: BTreeMap<String, i64> = sets
        .iter()
        .map(|rs| (rs.name_any(), replicas(rs)))
        .collect();
    let new_name = match new {
        Some(rs) => {
            if revision_of(rs) <= max_old_revision {
                plan.revise
                    .push((rs.name_any(), (max_old_revision + 1).to_string()));
            }
            Some(rs.name_any())
        }
        None if paused => None,
        None => {
            let hash = template_hash(&current, collisions);
            let size = if recreate(d) {
                if old_spec > 0 || old_pods > 0 {
                    0
                } else {
                    wanted
                }
            } else {
                (wanted + surge - old_spec).clamp(0, wanted)
            };
            let rs = new_replica_set(d, &hash, max_old_revision + 1, size);
            let name = rs.name_any();
            created_name = Some(name.clone());
            sizes.insert(name.clone(), size);
            plan.create = Some(rs);
            Some(name)
        }
    };

    if !paused {
        if recreate(d) {
            for rs in &old {
                sizes.insert(rs.name_any(), 0);
            }
            if let Some(name) = &new_name {
                if old_spec == 0 && old_pods == 0 {
                    sizes.insert(name.clone(), wanted);
                }
            }
        } else if let Some(name) = &new_name {
            let new_size = sizes[name];
            // Scale the new ReplicaSet toward `wanted`, within the surge.
            let total: i64 = sizes.values().sum();
            let grown = if new_size > wanted {
                wanted
            } else {
                let room = (wanted + surge - total).max(0);
                new_size + room.min(wanted - new_size)
            };
            sizes.insert(name.clone(), grown);
            // Then, in a pass that did not scale up (as Kubernetes), old
            // ones down while enough pods stay available. A status is
            // trusted up to the size last asked for: right after a
            // scale-down, it still counts pods that are going.
            if grown <= new_size {
                let available_of = |rs: &ReplicaSet| {
                    status_count(rs, |s| s.available_replicas)
                        .min(replicas(rs))
                        .max(0)
                };
                let min_available = wanted - unavailable;
                let new_available = new.map_or(0, |rs| available_of(rs));
                let new_unavailable = (grown - new_available).max(0);
                let all: i64 = sizes.values().sum();
                let mut budget = (all - min_available - new_unavailable).max(0);
                // First the old pods that are not available anyway.
                for rs in &old {
                    let size = sizes[&rs.name_any()];
                    let unhealthy = (size - available_of(rs)).clamp(0, size);
                    let cut = unhealthy.min(budget);
                    if cut > 0 {
                        sizes.insert(rs.name_any(), size - cut);
                        budget -= cut;
                    }
                }
                // Then available ones, oldest first, down to minAvailable.
                let available: i64 = sets.iter().map(|rs| available_of(rs)).sum();
                let mut spare = (available - min_available).max(0).min(budget);
                for rs in &old {
                    let size = sizes[&rs.name_any()];
                    let cut = size.min(spare);
                    if cut > 0 {
                        sizes.insert(rs.name_any(), size - cut);
                        spare -= cut;
                    }
                }
            }
        }
    }
    for rs in sets {
        let size = sizes[&rs.name_any()];
        if size != replicas(rs) {
            plan.scale.push((rs.name_any(), to_i32(size)));
        }
    }

    // History: old ReplicaSets with nothing left, beyond the limit.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let empty: Vec<&&Arc<ReplicaSet>> = old
        .iter()
        .filter(|rs| sizes[&rs.name_any()] == 0 && status_count(rs, |s| Some(s.replicas)) == 0)
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    if empty.len() > limit {
        plan.delete = empty[..empty.len() - limit]
            .iter()
            .map(|rs| rs.name_any())
            .collect();
    }

    // Status.
    let sum = |f: &dyn Fn(&ReplicaSet) -> i64| sets.iter().map(|rs| f(rs)).sum::<i64>();
    let total = sum(&|rs| status_count(rs, |s| Some(s.replicas)));
    let updated = new.map_or(0, |rs| status_count(rs, |s| Some(s.replicas)));
    let ready = sum(&|rs| status_count(rs, |s| s.ready_replicas));
    let available = sum(&|rs| status_count(rs, |s| s.available_replicas));
    let conditions = previous.conditions.clone().unwrap_or_default();
    let find = |t: &str| conditions.iter().find(|c| c.type_ == t);
    let available_condition = if available >= wanted - unavailable {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            find("Available"),
            now,
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            find("Available"),
            now,
        )
    };
    let name = new_name.clone().unwrap_or_default();
    let before = find("Progressing");
    let complete = new.is_some()
        && updated == wanted
        && available == wanted
        && total == wanted
        && sizes.get(&name) == Some(&wanted)
        && old.iter().all(|rs| sizes[&rs.name_any()] == 0);
    let moved = created_name.is_some()
        || !plan.scale.is_empty()
        || previous.replicas.map(i64::from) != Some(total)
        || previous.updated_replicas.map(i64::from) != Some(updated)
        || previous.available_replicas.map(i64::from) != Some(available)
        || previous.ready_replicas.map(i64::from) != Some(ready);
    let deadline = spec.progress_deadline_seconds.unwrap_or(600) as i64;
    let progressing = if paused {
        condition(
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
            before,
            now,
        )
    } else if complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{name}\" has successfully progressed."),
            before,
            now,
        )
    } else if let Some(created) = &created_name {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set \"{created}\""),
            before,
            now,
        )
    } else if moved {
        let mut c = condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{name}\" is progressing."),
            before,
            now,
        );
        c.last_update_time = Some(Time(now));
        c
    } else {
        let since = before
            .and_then(|c| c.last_update_time.as_ref())
            .map(|t| t.0)
            .unwrap_or(now);
        let exceeded =
            before.is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
        if exceeded || now.duration_since(since) >= SignedDuration::from_secs(deadline) {
            condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{name}\" has timed out progressing."),
                before,
                now,
            )
        } else {
            plan.requeue = Some(Duration::from_secs(
                (deadline - now.duration_since(since).as_secs()).max(1) as u64,
            ));
            before.cloned().unwrap_or_else(|| {
                condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{name}\" is progressing."),
                    None,
                    now,
                )
            })
        }
    };
    if !complete && !paused && plan.requeue.is_none() && progressing.status == "True" {
        plan.requeue = Some(Duration::from_secs(deadline.max(1) as u64));
    }
    plan.status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(to_i32(total)),
        updated_replicas: Some(to_i32(updated)),
        ready_replicas: Some(to_i32(ready)),
        available_replicas: Some(to_i32(available)),
        unavailable_replicas: Some(to_i32(wanted - available)),
        conditions: Some(vec![available_condition, progressing]),
        collision_count: previous.collision_count,
        terminating_replicas: None,
    };
    plan
}

/// The ReplicaSets `d` controls, from the cache.
fn owned(d: &Deployment, sets: &Store<ReplicaSet>) -> Vec<Arc<ReplicaSet>> {
    let uid = d.metadata.uid.as_deref().unwrap_or_default();
    sets.state()
        .into_iter()
        .filter(|rs| rs.metadata.namespace == d.metadata.namespace)
        .filter(|rs| controller_of(&rs.metadata).is_some_and(|o| o.uid == uid))
        .collect()
}

pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let mut sets = owned(&d, &ctx.sets);
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let params = PatchParams::default();
    // Orphaned ReplicaSets that the selector matches are adopted, as
    // Kubernetes does (after `delete --cascade=orphan` and a new
    // Deployment of the same name, its old ReplicaSet is its own again).
    if let Some(selector) = d
        .spec
        .as_ref()
        .and_then(|s| crate::replicaset::selector_of(&s.selector))
    {
        for rs in ctx.sets.state() {
            if rs.metadata.namespace.as_deref() != Some(&ns)
                || controller_of(&rs.metadata).is_some()
                || rs.metadata.deletion_timestamp.is_some()
                || !selector.matches(rs.metadata.labels.as_ref())
            {
                continue;
            }
            let patch = json!({"metadata": {"ownerReferences": [controller_ref(d.as_ref())]}});
            match api
                .patch(&rs.name_any(), &params, &Patch::Strategic(patch))
                .await
            {
                Ok(adopted) => sets.push(Arc::new(adopted)),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let current = without_hash(&d.spec.clone().unwrap_or_default().template);
    let old_uids: Vec<String> = sets
        .iter()
        .filter(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .map(without_hash)
                != Some(current.clone())
        })
        .filter_map(|rs| rs.metadata.uid.clone())
        .collect();
    let old_pods = ctx
        .pods
        .state()
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(&ns))
        .filter(|p| controller_of(&p.metadata).is_some_and(|o| old_uids.contains(&o.uid)))
        // Finished pods run nothing (Kubernetes' `oldPodsRunning`).
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .count();
    let plan = plan(&d, &sets, old_pods, Timestamp::now());
    let mut status = plan.status.clone();
    if let Some(rs) = &plan.create {
        match api.create(&PostParams::default(), rs).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // The name is taken by a ReplicaSet of another template:
                // the next hash is another name (Kubernetes' collisionCount).
                // The same template under that name (not yet in the cache,
                // or an orphan adopted next pass) is no collision.
                let taken = api.get_opt(&rs.name_any()).await?;
                if taken.as_ref().is_some_and(|t| {
                    t.spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .map(without_hash)
                        != Some(current.clone())
                }) {
                    status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    for (name, revision) in &plan.revise {
        let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
        api.patch(name, &params, &Patch::Merge(patch)).await?;
    }
    for (name, size) in &plan.scale {
        let patch = json!({"spec": {"replicas": size}});
        match api.patch(name, &params, &Patch::Merge(patch)).await {
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            other => {
                other?;
            }
        }
    }
    for name in &plan.delete {
        match api.delete(name, &DeleteParams::default()).await {
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            other => {
                other?;
            }
        }
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let revision = plan
        .create
        .as_ref()
        .map(revision_of)
        .or_else(|| plan.revise.first().and_then(|(_, r)| r.parse().ok()))
        .or_else(|| {
            let current = without_hash(&d.spec.clone().unwrap_or_default().template);
            sets.iter()
                .find(|rs| {
                    rs.spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .map(without_hash)
                        == Some(current.clone())
                })
                .map(|rs| revision_of(rs))
        });
    if let Some(revision) = revision {
        if d.annotations().get(REVISION) != Some(&revision.to_string()) {
            let patch = json!({"metadata": {"annotations": {REVISION: revision.to_string()}}});
            deployments
                .patch(&d.name_any(), &params, &Patch::Merge(patch))
                .await?;
        }
    }
    if d.status.as_ref() != Some(&status) {
        let patch = json!({"status": status});
        deployments
            .patch_status(&d.name_any(), &params, &Patch::Merge(patch))
            .await?;
    }
    Ok(match plan.requeue {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetStatus;
    use serde_json::from_value;

    fn deployment(replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
        from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d-1", "generation": 1},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": strategy,
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}
            }
        }))
        .unwrap()
    }

    fn rolling() -> serde_json::Value {
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    }

    /// The ReplicaSet a Deployment made, grown to `size` with `available` pods.
    fn set_of(d: &Deployment, revision: i64, size: i32, available: i32) -> Arc<ReplicaSet> {
        let hash = template_hash(&d.spec.clone().unwrap().template, 0);
        let mut rs = new_replica_set(d, &hash, revision, size as i64);
        rs.metadata.uid = Some(format!("rs-{revision}"));
        rs.metadata.creation_timestamp = Some(Time(
            Timestamp::UNIX_EPOCH + SignedDuration::from_secs(revision),
        ));
        rs.status = Some(ReplicaSetStatus {
            replicas: size,
            ready_replicas: Some(available),
            available_replicas: Some(available),
            ..Default::default()
        });
        Arc::new(rs)
    }

    #[test]
    fn a_first_pass_creates_the_replica_set_at_full_size() {
        let d = deployment(4, "v1", rolling());
        let p = plan(&d, &[], 0, Timestamp::now());
        let rs = p.create.unwrap();
        assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(4));
        assert_eq!(revision_of(&rs), 1);
        let hash = rs.labels()[HASH_LABEL].clone();
        assert_eq!(rs.name_any(), format!("web-{hash}"));
        assert_eq!(
            rs.spec.unwrap().selector.match_labels.unwrap()[HASH_LABEL],
            hash
        );
        let progressing = &p.status.conditions.unwrap()[1];
        assert_eq!(progressing.reason.as_deref(), Some("NewReplicaSetCreated"));
    }

    /// A rolling update, run pass by pass against a model of the pods:
    /// a scale-down removes pods at once, new pods become available one
    /// pass later, and the status the controller reads lags the pods by
    /// `lag` passes (as a watch event does). Never more pods asked for
    /// than replicas + maxSurge, never fewer available than replicas -
    /// maxUnavailable, and it ends with only the new ReplicaSet.
    fn roll(wanted: i32, surge: serde_json::Value, unavailable: serde_json::Value, lag: usize) {
        let strategy = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}});
        let v1 = deployment(wanted, "v1", strategy.clone());
        let v2 = deployment(wanted, "v2", strategy);
        let (max_surge, max_unavailable) = surge_and_unavailable(&v2);
        let mut sets: Vec<ReplicaSet> = vec![(*set_of(&v1, 1, wanted, wanted)).clone()];
        // Pods really available per ReplicaSet, and the statuses seen.
        let mut real: Vec<i64> = vec![wanted as i64];
        let mut history: Vec<Vec<i64>> = vec![real.clone()];
        for pass in 0..200 {
            let seen = &history[history.len().saturating_sub(1 + lag)];
            for (rs, a) in sets
                .iter_mut()
                .zip(seen.iter().chain(std::iter::repeat(&0)))
            {
                rs.status = Some(ReplicaSetStatus {
                    replicas: *a as i32,
                    ready_replicas: Some(*a as i32),
                    available_replicas: Some(*a as i32),
                    ..Default::default()
                });
            }
            let arcs: Vec<Arc<ReplicaSet>> = sets.iter().cloned().map(Arc::new).collect();
            let p = plan(&v2, &arcs, 0, Timestamp::now());
            if let Some(mut rs) = p.create {
                rs.metadata.uid = Some("rs-2".into());
                rs.metadata.creation_timestamp = Some(Time(Timestamp::now()));
                sets.push(rs);
                real.push(0);
            }
            for (name, size) in p.scale {
                let i = sets.iter().position(|r| r.name_any() == name).unwrap();
                sets[i].spec.as_mut().unwrap().replicas = Some(size);
                real[i] = real[i].min(size as i64);
            }
            let total: i64 = sets.iter().map(replicas).sum();
            assert!(
                total <= wanted as i64 + max_surge,
                "pass {pass}: surge exceeded: {total}"
            );
            let available: i64 = real.iter().sum();
            assert!(
                available >= wanted as i64 - max_unavailable,
                "pass {pass}: availability fell to {available}"
            );
            // New pods become available by the next pass.
            for (i, rs) in sets.iter().enumerate() {
                real[i] = replicas(rs);
            }
            history.push(real.clone());
        }
        let sizes: Vec<(i64, i64)> = sets.iter().map(|r| (revision_of(r), replicas(r))).collect();
        assert_eq!(sizes, [(1, 0), (2, wanted as i64)]);
        let arcs: Vec<Arc<ReplicaSet>> = sets.iter().cloned().map(Arc::new).collect();
        let done = plan(&v2, &arcs, 0, Timestamp::now());
        assert_eq!(
            done.status.conditions.unwrap()[1].reason.as_deref(),
            Some("NewReplicaSetAvailable")
        );
    }

    #[test]
    fn a_rolling_update_stays_within_its_bounds() {
        for lag in [0, 1, 3] {
            roll(4, json!("25%"), json!("25%"), lag);
            roll(2, json!(1), json!(0), lag);
            roll(10, json!(0), json!(3), lag);
            roll(3000, json!("25%"), json!("25%"), lag);
        }
    }

    #[test]
    fn recreate_waits_for_old_pods_to_go() {
        let recreate = json!({"type": "Recreate"});
        let v1 = deployment(3, "v1", recreate.clone());
        let v2 = deployment(3, "v2", recreate);
        let old = set_of(&v1, 1, 3, 3);
        let p = plan(&v2, std::slice::from_ref(&old), 3, Timestamp::now());
        assert_eq!(
            p.create.as_ref().unwrap().spec.as_ref().unwrap().replicas,
            Some(0)
        );
        assert_eq!(p.scale, [(old.name_any(), 0)]);
        // Old pods still running: the new one stays at 0.
        let new = set_of(&v2, 2, 0, 0);
        let emptied = set_of(&v1, 1, 0, 0);
        let p = plan(&v2, &[emptied.clone(), new.clone()], 2, Timestamp::now());
        assert!(p.scale.is_empty(), "{:?}", p.scale);
        let p = plan(&v2, &[emptied, new.clone()], 0, Timestamp::now());
        assert_eq!(p.scale, [(new.name_any(), 3)]);
    }

    #[test]
    fn history_is_kept_to_its_limit_and_undo_bumps_the_revision() {
        let mut d = deployment(1, "v4", rolling());
        d.spec.as_mut().unwrap().revision_history_limit = Some(1);
        let sets = vec![
            set_of(&deployment(1, "v1", rolling()), 1, 0, 0),
            set_of(&deployment(1, "v2", rolling()), 2, 0, 0),
            set_of(&deployment(1, "v3", rolling()), 3, 0, 0),
            set_of(&d, 4, 1, 1),
        ];
        let p = plan(&d, &sets, 0, Timestamp::now());
        assert_eq!(p.delete, [sets[0].name_any(), sets[1].name_any()]);
        // Back to v2's template (`kubectl rollout undo`): revision 5.
        let back = deployment(1, "v2", rolling());
        let p = plan(&back, &sets, 0, Timestamp::now());
        assert!(p.create.is_none());
        assert_eq!(p.revise, [(sets[1].name_any(), "5".to_string())]);
    }

    #[test]
    fn no_progress_past_the_deadline_is_reported() {
        let mut d = deployment(2, "v1", rolling());
        d.spec.as_mut().unwrap().progress_deadline_seconds = Some(10);
        let sets = vec![set_of(&d, 1, 2, 0)];
        let then = Timestamp::now() - SignedDuration::from_secs(60);
        d.status = Some(DeploymentStatus {
            replicas: Some(2),
            updated_replicas: Some(2),
            ready_replicas: Some(0),
            available_replicas: Some(0),
            conditions: Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "True".into(),
                reason: Some("ReplicaSetUpdated".into()),
                message: Some("x".into()),
                last_update_time: Some(Time(then)),
                last_transition_time: Some(Time(then)),
            }]),
            ..Default::default()
        });
        let p = plan(&d, &sets, 0, Timestamp::now());
        let progressing = &p.status.conditions.unwrap()[1];
        assert_eq!(progressing.status, "False");
        assert_eq!(
            progressing.reason.as_deref(),
            Some("ProgressDeadlineExceeded")
        );
    }

    #[test]
    fn percentages_round_as_kubernetes_and_never_overflow() {
        assert_eq!(
            surge_and_unavailable(&deployment(10, "v", rolling())),
            (3, 2)
        );
        let zero =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}});
        assert_eq!(surge_and_unavailable(&deployment(10, "v", zero)), (0, 1));
        let huge = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "9223372036854775807%", "maxUnavailable": i32::MAX}});
        let d = deployment(i32::MAX, "v", huge);
        let (surge, unavailable) = surge_and_unavailable(&d);
        assert!(surge > 0 && unavailable == i32::MAX as i64);
        let p = plan(&d, &[], 0, Timestamp::now());
        assert_eq!(p.create.unwrap().spec.unwrap().replicas, Some(i32::MAX));
    }
}
