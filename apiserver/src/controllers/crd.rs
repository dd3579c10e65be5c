//! Serving CustomResourceDefinitions: every API server runs this (it is
//! what makes a server serve a custom kind, so it is not leader-elected).
//!
//! - **Serving.** It watches CRDs and keeps the registry's custom kinds
//!   equal to the served versions of every CRD whose names are accepted:
//!   a new CRD is served as soon as its watch event arrives, and a CRD
//!   that is gone stops being served.
//! - **Names.** CRDs are taken oldest first; one whose plural, singular,
//!   kind, list kind or a short name is already taken in its group (by a
//!   built-in kind or an older CRD) is not served, and says so in its
//!   `NamesAccepted` condition.
//! - **Status.** `NamesAccepted`, `Established`, `acceptedNames` and
//!   `storedVersions`, written only when they change, so servers that
//!   compute the same status do not fight over it.
//! - **Deletion.** A deleted CRD keeps its finalizer until every object of
//!   its kind is deleted (it is served meanwhile, so deletes go through
//!   the registry and their own finalizers); then the finalizer goes and
//!   the store removes the CRD.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mube_apis::resources::CUSTOM_RESOURCE_DEFINITIONS as CRDS;
use mube_apis::watch::EventType;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::client::{ApiClient, LocalClient};
use crate::error::ApiError;
use crate::registry::crd::CLEANUP_FINALIZER;
use crate::registry::custom_kind::{served_versions, strings, Names};
use crate::registry::{name_of, now_time, DryRun, Filter, Manager, Part, Registry, Resource};
use crate::store::ReadAt;

const MANAGER: &str = "mube-apiextensions-controller";

/// Whether a CRD's names may be served, and if not, why.
#[derive(Debug, Clone, PartialEq)]
enum Acceptance {
    Accepted,
    Conflict {
        reason: &'static str,
        message: String,
    },
    /// Names accepted, but its kinds could not be built (a CRD stored
    /// before a validation rule existed): not served, not Established.
    Unservable(String),
}

/// A CRD's served kinds, built once per spec.
struct Built {
    spec: Value,
    kinds: Result<Vec<Arc<Resource>>, String>,
}

pub struct CrdController {
    registry: Arc<Registry>,
    client: LocalClient,
    crds: BTreeMap<String, Value>,
    built: HashMap<String, Built>,
    /// What the registry serves now, by CRD name (to see a change).
    /// (Addresses of the served `Resource`s, only compared.)
    serving: Vec<(String, Vec<usize>)>,
    /// Each CRD's names verdict, as `serve` last decided it (it runs
    /// whenever `crds` changes); the status writes report it.
    accepted: HashMap<String, Acceptance>,
}

impl CrdController {
    pub fn new(registry: Arc<Registry>) -> CrdController {
        CrdController {
            client: LocalClient::new(registry.clone()),
            registry,
            crds: BTreeMap::new(),
            built: HashMap::new(),
            serving: Vec::new(),
            accepted: HashMap::new(),
        }
    }

    /// Lists the CRDs and serves them: at start, before requests are
    /// taken, so that custom kinds are served from a restart's first
    /// request. Returns the resourceVersion to watch from.
    pub async fn start(&mut self) -> Result<String, ApiError> {
        let (items, rv) = self.client.list(&CRDS, None).await?;
        self.crds.clear();
        for item in items {
            let item = item?;
            self.crds.insert(name_of(&item).to_string(), item);
        }
        self.serve();
        Ok(rv)
    }

    /// Runs until `shutdown`: watches, serves, writes status, cleans up.
    pub async fn run(mut self, mut resource_version: String, shutdown: CancellationToken) {
        loop {
            match self.watch(&resource_version, &shutdown).await {
                Ok(()) => return,
                Err(e) => tracing::info!(error = %e, "CRD watch ended: relisting"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            match self.start().await {
                Ok(rv) => resource_version = rv,
                Err(e) => tracing::warn!(error = %e, "could not list CRDs"),
            }
        }
    }

    async fn watch(&mut self, from: &str, shutdown: &CancellationToken) -> Result<(), ApiError> {
        let mut events = self.client.watch(&CRDS, None, from).await?;
        self.reconcile_all().await;
        // Objects that outlive a deletion pass (their own finalizers) are
        // looked at again on this tick.
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = retry.tick() => {
                    if self.crds.values().any(|c| c.pointer("/metadata/deletionTimestamp").is_some()) {
                        self.reconcile_all().await;
                    }
                }
                event = events.next() => match event {
                    None => return Err(ApiError::bad_request("the CRD watch ended")),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(e)) => {
                        let name = name_of(&e.object).to_string();
                        match e.type_ {
                            EventType::Added | EventType::Modified => {
                                self.crds.insert(name, e.object);
                            }
                            EventType::Deleted => {
                                self.crds.remove(&name);
                            }
                            _ => continue,
                        }
                        self.serve();
                        self.reconcile_all().await;
                    }
                },
            }
        }
    }

    /// Which CRDs' names are accepted: oldest first, each against the
    /// built-in kinds and the CRDs accepted before it in its group.
    fn acceptance(&self) -> Vec<(String, Acceptance)> {
        let mut ordered: Vec<&Value> = self.crds.values().collect();
        ordered.sort_by_key(|c| {
            (
                c.pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                name_of(c).to_string(),
            )
        });
        let mut taken: HashMap<String, HashSet<String>> = HashMap::new();
        let mut out = Vec::new();
        for crd in ordered {
            let group = crd["spec"]["group"].as_str().unwrap_or("").to_string();
            let names = Names::of(crd);
            let used = taken.entry(group.clone()).or_default();
            let conflict = |what: &str| -> bool {
                used.contains(what) || self.registry.is_standard(&group, what, what)
            };
            // Kubernetes' order of checks, and its reasons.
            let wanted = [
                ("PluralConflict", &names.plural),
                ("SingularConflict", &names.singular),
            ]
            .into_iter()
            .chain(names.short_names.iter().map(|s| ("ShortNamesConflict", s)))
            .chain([
                ("KindConflict", &names.kind),
                ("ListKindConflict", &names.list_kind),
            ]);
            let verdict = match wanted.into_iter().find(|(_, name)| conflict(name)) {
                Some((reason, name)) => Acceptance::Conflict {
                    reason,
                    message: format!("{name:?} is already in use"),
                },
                None => Acceptance::Accepted,
            };
            if verdict == Acceptance::Accepted {
                used.insert(names.plural.clone());
                used.insert(names.singular.clone());
                used.insert(names.kind.clone());
                used.insert(names.list_kind.clone());
                used.extend(names.short_names.iter().cloned());
            }
            out.push((name_of(crd).to_string(), verdict));
        }
        out
    }

    /// Makes the registry serve exactly the accepted CRDs' versions.
    fn serve(&mut self) {
        let accepted = self.acceptance();
        self.accepted = accepted.iter().cloned().collect();
        let mut kinds: Vec<Arc<Resource>> = Vec::new();
        let mut serving = Vec::new();
        self.built.retain(|name, _| self.crds.contains_key(name));
        for (name, verdict) in accepted {
            if verdict != Acceptance::Accepted {
                continue;
            }
            let Some(crd) = self.crds.get(&name) else {
                continue;
            };
            let fresh = self.built.get(&name).is_none_or(|b| b.spec != crd["spec"]);
            if fresh {
                let built = Built {
                    spec: crd["spec"].clone(),
                    kinds: served_versions(crd).map(|v| v.into_iter().map(Arc::new).collect()),
                };
                if let Err(e) = &built.kinds {
                    tracing::warn!(crd = %name, error = %e, "cannot serve this CRD");
                }
                self.built.insert(name.clone(), built);
            }
            if let Some(Built { kinds: Ok(k), .. }) = self.built.get(&name) {
                serving.push((
                    name.clone(),
                    k.iter().map(|r| Arc::as_ptr(r) as usize).collect(),
                ));
                kinds.extend(k.iter().cloned());
            }
        }
        if serving != self.serving {
            self.registry.set_custom(kinds);
            self.serving = serving;
        }
    }

    async fn reconcile_all(&mut self) {
        let names: Vec<String> = self.crds.keys().cloned().collect();
        for name in names {
            let Some(crd) = self.crds.get(&name).cloned() else {
                continue;
            };
            let mut verdict = self
                .accepted
                .get(&name)
                .cloned()
                .unwrap_or(Acceptance::Accepted);
            if let (Acceptance::Accepted, Some(Built { kinds: Err(e), .. })) =
                (&verdict, self.built.get(&name))
            {
                verdict = Acceptance::Unservable(e.clone());
            }
            if let Err(e) = self.reconcile(&crd, &verdict).await {
                if e.code() != 404 && e.code() != 409 {
                    tracing::warn!(crd = %name, error = %e, "CRD status or cleanup failed");
                }
            }
        }
    }

    async fn reconcile(&self, crd: &Value, verdict: &Acceptance) -> Result<(), ApiError> {
        let name = name_of(crd);
        let deleting = crd.pointer("/metadata/deletionTimestamp").is_some();
        let wanted = wanted_status(crd, verdict, deleting);
        if crd.get("status") != Some(&wanted) {
            self.write(name, Part::Status, |mut current| {
                let status = wanted_status(&current, verdict, deleting);
                if current.get("status") == Some(&status) {
                    return Ok(None);
                }
                current["status"] = status;
                Ok(Some(current))
            })
            .await?;
        }
        let holds = crd
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|f| f == CLEANUP_FINALIZER));
        if deleting && holds && self.delete_objects(crd).await? {
            self.write(name, Part::Main, |mut current| {
                let Some(list) = current
                    .pointer_mut("/metadata/finalizers")
                    .and_then(Value::as_array_mut)
                else {
                    return Ok(None);
                };
                let before = list.len();
                list.retain(|f| f != CLEANUP_FINALIZER);
                Ok((list.len() != before).then_some(current))
            })
            .await?;
        }
        Ok(())
    }

    /// A read-modify-write of one part of CRD `name`, as this controller.
    async fn write(
        &self,
        name: &str,
        part: Part,
        mut change: impl FnMut(Value) -> Result<Option<Value>, ApiError>,
    ) -> Result<(), ApiError> {
        let r = self.registry.resource(&CRDS)?;
        let manager = Manager {
            name: MANAGER,
            part,
        };
        self.registry
            .modify(&r, None, name, &manager, |_, current| change(current))
            .await
            .map(|_| ())
    }

    /// Deletes every object of the CRD's kind; true once none is left.
    /// The kind is built from this CRD itself (served or not: a CRD whose
    /// names were taken from it may still hold objects), so its storage
    /// prefix is the CRD's own, `/registry/{group}/{plural}/`, and never a
    /// built-in kind's, whatever the CRD is named.
    async fn delete_objects(&self, crd: &Value) -> Result<bool, ApiError> {
        let kinds = match served_versions(crd) {
            Ok(kinds) => kinds,
            Err(e) => {
                // Validation keeps such a CRD from being stored; one stored
                // before a rule existed was never served, so holds nothing.
                tracing::warn!(crd = %name_of(crd), error = %e, "cannot build this CRD's kind to delete its objects");
                return Ok(true);
            }
        };
        let Some(r) = kinds
            .iter()
            .find(|r| r.is_stored_version())
            .or_else(|| kinds.first())
        else {
            return Ok(true);
        };
        let filter = Filter::default();
        let (items, _) = self.registry.list(r, None, &filter, ReadAt::Newest).await?;
        if items.is_empty() {
            return Ok(true);
        }
        for item in items {
            let object = item.value()?;
            let ns = object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str);
            match self
                .registry
                .delete(r, ns, name_of(&object), &Default::default(), DryRun::No)
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let (items, _) = self.registry.list(r, None, &filter, ReadAt::Newest).await?;
        Ok(items.is_empty())
    }
}

/// One condition, keeping `lastTransitionTime` while its status holds.
fn condition(current: &Value, type_: &str, status: bool, reason: &str, message: &str) -> Value {
    let status = if status { "True" } else { "False" };
    let old = current
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == type_));
    let since = match old {
        Some(o) if o["status"] == status => o["lastTransitionTime"].clone(),
        _ => now_time(),
    };
    json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": since})
}

fn wanted_status(crd: &Value, verdict: &Acceptance, deleting: bool) -> Value {
    let mut conditions = Vec::new();
    let names_accepted = || {
        condition(
            crd,
            "NamesAccepted",
            true,
            "NoConflicts",
            "no conflicts found",
        )
    };
    let accepted_names = match verdict {
        Acceptance::Accepted => {
            conditions.push(names_accepted());
            conditions.push(condition(
                crd,
                "Established",
                true,
                "InitialNamesAccepted",
                "the initial names have been accepted",
            ));
            Names::of(crd).to_json()
        }
        Acceptance::Unservable(why) => {
            conditions.push(names_accepted());
            conditions.push(condition(crd, "Established", false, "NotServed", why));
            Names::of(crd).to_json()
        }
        Acceptance::Conflict { reason, message } => {
            conditions.push(condition(crd, "NamesAccepted", false, reason, message));
            conditions.push(condition(
                crd,
                "Established",
                false,
                "NotAccepted",
                "not all names are accepted",
            ));
            crd.pointer("/status/acceptedNames")
                .cloned()
                .unwrap_or_else(|| json!({"plural": "", "kind": ""}))
        }
    };
    if deleting {
        conditions.push(condition(
            crd,
            "Terminating",
            true,
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
        ));
    }
    let mut stored = strings(crd.pointer("/status/storedVersions"));
    if let Some(storage) = crd["spec"]["versions"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["storage"].as_bool() == Some(true)))
        .and_then(|v| v["name"].as_str())
    {
        if !stored.iter().any(|s| s == storage) {
            stored.push(storage.to_string());
        }
    }
    json!({"conditions": conditions, "acceptedNames": accepted_names, "storedVersions": stored})
}
