//! One task per pod, as the kubelet's pod workers: it makes the runtime
//! match the pod (sandbox, image, containers, restarts with back-off),
//! writes `pods/status` when it changed, and on deletion stops the
//! containers within the grace period, removes the sandbox, and deletes
//! the pod for good. Everything it needs to know is read back from the
//! runtime on each pass, so a restarted mubelet picks up where it was.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Service};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::spec::{self, PodIdentity};
use super::status::{self, Instance, Observed, PodObservation, RunState};
use super::Shared;
use crate::cri::{self, api};

/// The longest grace period honoured: a day.
const MAX_GRACE_SECONDS: i64 = 24 * 3600;

/// CRI's states.
const SANDBOX_READY: i32 = 0;
const CREATED: i32 = 0;
const RUNNING: i32 = 1;
const EXITED: i32 = 2;

pub struct Worker {
    shared: Arc<Shared>,
    uid: String,
    restarts: HashMap<String, Backoff>,
    pulls: HashMap<String, Backoff>,
    /// The last status written, to write only changes.
    written: Option<Value>,
}

impl Worker {
    pub fn new(shared: Arc<Shared>, uid: String) -> Worker {
        Worker {
            shared,
            uid,
            restarts: HashMap::new(),
            pulls: HashMap::new(),
            written: None,
        }
    }

    /// Works on the pod until it is gone from the API and from the runtime.
    pub async fn run(
        mut self,
        mut updates: watch::Receiver<Option<Arc<Pod>>>,
        shutdown: CancellationToken,
    ) {
        loop {
            let pod = updates.borrow_and_update().clone();
            let next = match pod {
                None => {
                    // Gone from the API (deleted for good, or force-deleted):
                    // nothing of it may keep running.
                    match self.remove_all(Duration::ZERO).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!(pod = %self.uid, error = %e, "cannot remove a deleted pod's containers; retrying");
                            self.shared.resync
                        }
                    }
                }
                Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                    self.terminate(&pod).await;
                    self.shared.resync
                }
                // A pass can wait long on the runtime (an image pull): a
                // deletion meanwhile ends it, and is acted on at once. What
                // the pass left half done, the next one finds and finishes.
                Some(pod) => tokio::select! {
                    next = self.sync(&pod) => next,
                    // A clone: the changes it sees stay unseen for the loop.
                    _ = until_deleted(updates.clone()) => Duration::ZERO,
                },
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = updates.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    fn selector(&self) -> HashMap<String, String> {
        HashMap::from([
            (cri::POD_UID.to_string(), self.uid.clone()),
            (cri::NODE.to_string(), self.shared.node.clone()),
        ])
    }

    /// Stops every container (SIGTERM, SIGKILL after `grace`), then the
    /// sandboxes, and removes them all.
    async fn remove_all(&self, grace: Duration) -> cri::Result<()> {
        remove_pod(
            &self.shared.runtime,
            self.selector(),
            grace,
            &self.shared.log_root,
        )
        .await
    }

    /// Graceful deletion: stop within the grace period, then the final
    /// delete (grace 0, only this UID).
    async fn terminate(&mut self, pod: &Pod) {
        // Capped: the API takes any number, the runtime's deadlines do not.
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .unwrap_or(30)
            .clamp(0, MAX_GRACE_SECONDS);
        if let Err(e) = self.remove_all(Duration::from_secs(grace as u64)).await {
            tracing::warn!(pod = %self.uid, error = %e, "cannot stop a terminating pod yet; retrying");
            return;
        }
        let (ns, name) = namespaced_name(pod);
        let url = match self
            .shared
            .api_servers
            .join(&format!("api/v1/namespaces/{ns}/pods/{name}"))
        {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "bad pod URL");
                return;
            }
        };
        let body = json!({
            "kind": "DeleteOptions", "apiVersion": "v1",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        });
        let client = self.shared.client.borrow().clone();
        let Ok(_permit) = self.shared.api_writes.acquire().await else {
            return;
        };
        match client.delete(url).json(&body).send().await {
            Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND => {
                tracing::info!(pod = %format!("{ns}/{name}"), "pod stopped and deleted");
            }
            // 409: another pod of that name now; ours is gone already.
            Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {}
            Ok(r) => {
                let code = r.status();
                let body = r.text().await.unwrap_or_default();
                tracing::warn!(pod = %format!("{ns}/{name}"), %code, %body, "final delete refused; retrying");
            }
            Err(e) => {
                tracing::warn!(error = %mube_apis::errors::chain(&e), "final delete failed; retrying")
            }
        }
    }

    /// One pass over a live pod; returns when to look again.
    async fn sync(&mut self, pod: &Pod) -> Duration {
        let shared = self.shared.clone();
        let now = Instant::now();
        let mut next = shared.resync;
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let finished = matches!(phase, Some("Succeeded" | "Failed"));
        let spec_containers: Vec<Container> = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let uid = self.uid.clone();
        let id = PodIdentity::of(pod, &uid, &shared.node);

        let mut waiting: HashMap<String, (String, String)> = HashMap::new();
        let observed = async {
            let runtime = &shared.runtime;
            let mut sandboxes = runtime.sandboxes(self.selector()).await?;
            sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
            let mut containers = runtime.containers(self.selector()).await?;
            if finished {
                // A finished pod's sandbox is stopped; its containers stay
                // for their logs until the pod is deleted.
                for s in sandboxes.iter().filter(|s| s.state == SANDBOX_READY) {
                    runtime.stop_sandbox(&s.id).await?;
                }
                return Ok::<_, cri::CriError>((sandboxes.first().map(|s| s.id.clone()), containers, None));
            }
            let ready = sandboxes.iter().find(|s| s.state == SANDBOX_READY).map(|s| s.id.clone());
            let sandbox_config;
            let sandbox_id = match ready {
                Some(sid) => {
                    let attempt = sandboxes
                        .iter()
                        .find(|s| s.id == sid)
                        .and_then(|s| s.metadata.as_ref())
                        .map_or(0, |m| m.attempt);
                    sandbox_config = spec::sandbox(pod, &id, attempt, &shared.log_root);
                    sid
                }
                None if done_without_sandbox(&policy, &spec_containers, &containers, runtime).await? => {
                    // Its sandbox is gone (a host or runtime restart), and
                    // by its restart policy nothing is to run again: the
                    // pod is finished with what its containers left.
                    return Ok((None, containers, None));
                }
                None => {
                    // None yet, or it died: a new one, after the old ones.
                    let attempt = sandboxes
                        .iter()
                        .filter_map(|s| s.metadata.as_ref().map(|m| m.attempt + 1))
                        .max()
                        .unwrap_or(0);
                    for c in containers.iter().filter(|c| c.state == RUNNING) {
                        runtime.stop_container(&c.id, Duration::ZERO).await?;
                    }
                    for s in &sandboxes {
                        runtime.stop_sandbox(&s.id).await?;
                    }
                    sandbox_config = spec::sandbox(pod, &id, attempt, &shared.log_root);
                    if let Err(e) = std::fs::create_dir_all(&sandbox_config.log_directory) {
                        tracing::warn!(dir = %sandbox_config.log_directory, error = %e, "cannot create the pod's log directory");
                    }
                    match runtime.run_sandbox(sandbox_config.clone()).await {
                        Ok(sid) => sid,
                        Err(e) => {
                            for c in &spec_containers {
                                waiting.insert(c.name.clone(), ("ContainerCreating".into(), format!("failed to create the pod sandbox: {e}")));
                            }
                            return Ok((None, containers, Some(e)));
                        }
                    }
                }
            };
            for c in &spec_containers {
                let mine = instances(&containers, &c.name);
                let latest_attempt = mine.first().and_then(|x| x.metadata.as_ref()).map(|m| m.attempt);
                let current = mine.iter().find(|x| x.pod_sandbox_id == sandbox_id).copied();
                let start_attempt = match current {
                    None => Some(latest_attempt.map_or(0, |a| a + 1)),
                    Some(x) if x.state == CREATED => {
                        // Created but never started (mubelet stopped in between).
                        if let Err(e) = runtime.start_container(&x.id).await {
                            waiting.insert(c.name.clone(), ("RunContainerError".into(), e.message));
                        }
                        None
                    }
                    Some(x) if x.state == EXITED => {
                        let st = runtime.container_status(&x.id).await?;
                        let exit_code = st.as_ref().map_or(0, |s| s.exit_code);
                        let restart = match policy.as_str() {
                            "Never" => false,
                            "OnFailure" => exit_code != 0,
                            _ => true,
                        };
                        if !restart {
                            None
                        } else {
                            let ran = st.as_ref().map_or(Duration::ZERO, |s| {
                                Duration::from_nanos((s.finished_at - s.started_at).max(0) as u64)
                            });
                            let backoff = self.restarts.entry(c.name.clone()).or_default();
                            let at = backoff.next_start(shared.backoff, ran, now);
                            if at > now {
                                next = next.min(at - now);
                                waiting.insert(
                                    c.name.clone(),
                                    (
                                        "CrashLoopBackOff".into(),
                                        format!(
                                            "back-off {} restarting failed container={} pod={}_{}({})",
                                            humanize(backoff.current()),
                                            c.name,
                                            id.name,
                                            id.namespace,
                                            id.uid
                                        ),
                                    ),
                                );
                                None
                            } else {
                                backoff.restarted(shared.backoff, now);
                                Some(x.metadata.as_ref().map_or(0, |m| m.attempt) + 1)
                            }
                        }
                    }
                    Some(_) => None,
                };
                if let Some(attempt) = start_attempt {
                    match self.start(pod, &id, c, attempt, &sandbox_id, &sandbox_config, now).await {
                        Ok(()) => {}
                        Err((reason, message)) => {
                            if reason == "ImagePullBackOff" || reason == "ErrImagePull" {
                                next = next.min(shared.backoff.base);
                            }
                            waiting.insert(c.name.clone(), (reason, message));
                        }
                    }
                }
            }
            // What was started is read back in the same pass, so the status
            // says Running without waiting a resync.
            containers = runtime.containers(self.selector()).await?;
            // Older exited instances are removed; the last two stay, for
            // `kubectl logs` and `--previous`.
            for c in &spec_containers {
                let mine = instances(&containers, &c.name);
                for old in mine.iter().skip(2).filter(|x| x.state == EXITED) {
                    // The runtime leaves the log file; the kubelet removes
                    // it with the container, and so does this.
                    // Clean-up: a failure here is tried again next pass
                    // and must not stop the pod's status from being written.
                    let log = runtime
                        .container_status(&old.id)
                        .await
                        .ok()
                        .flatten()
                        .map(|s| s.log_path);
                    if runtime.remove_container(&old.id).await.is_err() {
                        continue;
                    }
                    if let Some(path) = log.filter(|p| !p.is_empty()) {
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
            // Sandboxes that were replaced go too.
            for s in sandboxes.iter().filter(|s| s.id != sandbox_id && s.state != SANDBOX_READY) {
                let _ = runtime.remove_sandbox(&s.id).await;
            }
            Ok((Some(sandbox_id), containers, None))
        }
        .await;

        let (sandbox_id, containers) = match observed {
            Ok((sid, containers, _)) => (sid, containers),
            Err(e) => {
                // The runtime did not answer: say so, keep what is known.
                tracing::debug!(pod = %self.uid, error = %e, "runtime call failed");
                let reason = if e.unreachable() {
                    "ContainerRuntimeUnhealthy"
                } else {
                    "ContainerCreating"
                };
                for c in &spec_containers {
                    waiting
                        .entry(c.name.clone())
                        .or_insert((reason.into(), format!("container runtime: {e}")));
                }
                let known = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.container_id.is_some()));
                if known || self.written.is_some() {
                    // What ran is not known to have changed: the status
                    // stays as it is until the runtime answers.
                    return shared.resync;
                }
                (None, Vec::new())
            }
        };
        let observation = self
            .observe(
                pod,
                &spec_containers,
                &policy,
                sandbox_id.as_deref(),
                &containers,
                waiting,
            )
            .await;
        self.write_status(pod, &observation).await;
        next
    }

    /// Pulls when needed, then creates and starts one container. The error
    /// is the waiting reason and message the status shows.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &mut self,
        pod: &Pod,
        id: &PodIdentity<'_>,
        c: &Container,
        attempt: u32,
        sandbox_id: &str,
        sandbox_config: &api::PodSandboxConfig,
        now: Instant,
    ) -> Result<(), (String, String)> {
        let runtime = &self.shared.runtime;
        let image = c.image.clone().unwrap_or_default();
        let pull_policy = c.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
        let present = runtime
            .image_present(&image)
            .await
            .map_err(|e| ("ErrImageInspect".to_string(), e.message))?;
        let must_pull = pull_policy == "Always" || present.is_none();
        if must_pull {
            if pull_policy == "Never" {
                return Err((
                    "ErrImageNeverPull".into(),
                    format!("Container image \"{image}\" is not present with pull policy of Never"),
                ));
            }
            let backoff = self.pulls.entry(c.name.clone()).or_default();
            if backoff.next_start(self.shared.backoff, Duration::ZERO, now) > now {
                return Err((
                    "ImagePullBackOff".into(),
                    format!("Back-off pulling image \"{image}\""),
                ));
            }
            backoff.restarted(self.shared.backoff, now);
            runtime.pull(&image).await.map_err(|e| {
                (
                    "ErrImagePull".to_string(),
                    format!("failed to pull image \"{image}\": {e}"),
                )
            })?;
            self.pulls.remove(&c.name);
        }
        let services = self
            .service_env(pod)
            .await
            .map_err(|e| ("CreateContainerConfigError".to_string(), e))?;
        let config = spec::container(pod, id, c, attempt, &services);
        let cid = runtime
            .create_container(sandbox_id, config, sandbox_config.clone())
            .await
            .map_err(|e| ("CreateContainerError".to_string(), e.message))?;
        runtime
            .start_container(&cid)
            .await
            .map_err(|e| ("RunContainerError".to_string(), e.message))?;
        tracing::info!(pod = %format!("{}/{}", id.namespace, id.name), container = %c.name, attempt, "container started");
        Ok(())
    }

    /// The service environment of a container starting now: the Services
    /// of the pod's namespace (unless `enableServiceLinks: false`) and
    /// the `kubernetes` Service, read from the API at this start.
    async fn service_env(&self, pod: &Pod) -> Result<BTreeMap<String, String>, String> {
        let (ns, _) = namespaced_name(pod);
        let links = pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false);
        let client = self.shared.client.borrow().clone();
        let get = |path: String| {
            let client = client.clone();
            let url = self.shared.api_servers.join(&path);
            async move {
                let url = url?;
                let r =
                    client.get(url).send().await.map_err(|e| {
                        format!("reading Services: {}", mube_apis::errors::chain(&e))
                    })?;
                if r.status() == reqwest::StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                if !r.status().is_success() {
                    return Err(format!("reading Services: {}", r.status()));
                }
                r.json::<Value>()
                    .await
                    .map(Some)
                    .map_err(|e| format!("reading Services: {e}"))
            }
        };
        let mut services: Vec<Service> = Vec::new();
        if links {
            if let Some(list) = get(format!("api/v1/namespaces/{ns}/services")).await? {
                services = serde_json::from_value(list.get("items").cloned().unwrap_or_default())
                    .map_err(|e| format!("reading Services: {e}"))?;
            }
        }
        // The pod's own namespace's `kubernetes`, if it has one, wins (as
        // in the kubelet).
        let has_own = services
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some("kubernetes"));
        if !has_own {
            if let Some(kubernetes) =
                get("api/v1/namespaces/default/services/kubernetes".into()).await?
            {
                services.extend(serde_json::from_value::<Service>(kubernetes).ok());
            }
        }
        Ok(super::service_env::variables(&services))
    }

    async fn observe(
        &self,
        pod: &Pod,
        spec_containers: &[Container],
        policy: &str,
        sandbox_id: Option<&str>,
        containers: &[api::Container],
        mut waiting: HashMap<String, (String, String)>,
    ) -> PodObservation {
        let runtime = &self.shared.runtime;
        let mut out = Vec::new();
        for c in spec_containers {
            let mut runs = Vec::new();
            for x in instances(containers, &c.name).iter().take(2) {
                if let Ok(Some(s)) = runtime.container_status(&x.id).await {
                    runs.push(instance(&s));
                }
            }
            let mut iter = runs.into_iter();
            out.push(Observed {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                current: iter.next(),
                previous: iter.next(),
                waiting: waiting.remove(&c.name),
            });
        }
        let pod_ip = match sandbox_id {
            Some(sid) if !self.host_network(pod) => runtime
                .sandbox_status(sid)
                .await
                .ok()
                .flatten()
                .and_then(|s| s.network)
                .map(|n| n.ip)
                .filter(|ip| !ip.is_empty()),
            Some(_) => self.shared.host_ip.clone(),
            None => None,
        };
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .or_else(|| Some(now_text()));
        PodObservation {
            containers: out,
            restart_policy: policy.to_string(),
            pod_ip,
            host_ip: self.shared.host_ip.clone(),
            start_time,
        }
    }

    fn host_network(&self, pod: &Pod) -> bool {
        pod.spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
    }

    async fn write_status(&mut self, pod: &Pod, observation: &PodObservation) {
        let old = pod
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok());
        let status = status::pod_status(observation, old.as_ref(), &now_text());
        // A finished pod stays finished, as in Kubernetes.
        let terminal = |s: Option<&Value>| {
            matches!(
                s.and_then(|s| s.get("phase")).and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            )
        };
        if terminal(old.as_ref()) && !terminal(Some(&status)) {
            return;
        }
        let same_as_stored = old.as_ref().is_some_and(|o| {
            status
                .as_object()
                .is_some_and(|n| n.iter().all(|(k, v)| o.get(k) == Some(v)))
        });
        if same_as_stored || self.written.as_ref() == Some(&status) {
            return;
        }
        let (ns, name) = namespaced_name(pod);
        let Ok(url) = self.shared.api_servers.join(&format!(
            "api/v1/namespaces/{ns}/pods/{name}/status?fieldManager=mubelet"
        )) else {
            return;
        };
        let client = self.shared.client.borrow().clone();
        // A JSON patch that tests the UID first: the status of this pod,
        // never of a newer one made under its name meanwhile (the kubelet
        // sends the UID as a precondition for the same reason).
        let patch = json!([
            {"op": "test", "path": "/metadata/uid", "value": self.uid},
            {"op": "add", "path": "/status", "value": status},
        ]);
        let Ok(_permit) = self.shared.api_writes.acquire().await else {
            return;
        };
        match client
            .patch(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json-patch+json")
            .body(patch.to_string())
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => self.written = Some(status),
            Ok(r) => {
                let code = r.status();
                let body = r.text().await.unwrap_or_default();
                tracing::warn!(pod = %format!("{ns}/{name}"), %code, %body, "status update refused");
            }
            Err(e) => tracing::warn!(error = %mube_apis::errors::chain(&e), "status update failed"),
        }
    }
}

/// The runs of the container named `name`, newest first (by restart
/// count, then creation).
pub fn instances<'a>(containers: &'a [api::Container], name: &str) -> Vec<&'a api::Container> {
    let mut mine: Vec<&api::Container> = containers
        .iter()
        .filter(|x| x.labels.get(cri::CONTAINER_NAME).map(String::as_str) == Some(name))
        .collect();
    mine.sort_by_key(|x| {
        std::cmp::Reverse((x.metadata.as_ref().map_or(0, |m| m.attempt), x.created_at))
    });
    mine
}

/// Returns once the pod is being deleted or gone (never, if the sender
/// went away: the worker's own loop ends then).
async fn until_deleted(mut updates: watch::Receiver<Option<Arc<Pod>>>) {
    loop {
        if updates.changed().await.is_err() {
            return std::future::pending().await;
        }
        let deleted = updates
            .borrow()
            .as_ref()
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
        if deleted {
            return;
        }
    }
}

/// Whether a pod whose sandbox is gone is finished by its restart
/// policy: under Never once every container has run, under OnFailure once
/// every container's last run exited 0.
async fn done_without_sandbox(
    policy: &str,
    spec_containers: &[Container],
    containers: &[api::Container],
    runtime: &cri::Runtime,
) -> cri::Result<bool> {
    if policy == "Always" || containers.is_empty() {
        return Ok(false);
    }
    for c in spec_containers {
        let Some(latest) = instances(containers, &c.name).into_iter().next() else {
            return Ok(false);
        };
        // A run still going (in a sandbox that died) is not finished.
        if latest.state != EXITED {
            return Ok(false);
        }
        if policy == "OnFailure" {
            let status = runtime.container_status(&latest.id).await?;
            if status.is_none_or(|s| s.exit_code != 0) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Stops and removes every container and sandbox the labels select.
pub async fn remove_pod(
    runtime: &cri::Runtime,
    selector: HashMap<String, String>,
    grace: Duration,
    log_root: &std::path::Path,
) -> cri::Result<()> {
    let containers = runtime.containers(selector.clone()).await?;
    let stops = containers
        .iter()
        .filter(|c| c.state == RUNNING || c.state == CREATED)
        .map(|c| runtime.stop_container(&c.id, grace));
    for result in futures::future::join_all(stops).await {
        result?;
    }
    for c in &containers {
        runtime.remove_container(&c.id).await?;
    }
    for s in runtime.sandboxes(selector).await? {
        runtime.stop_sandbox(&s.id).await?;
        runtime.remove_sandbox(&s.id).await?;
        // The pod's logs go with it, as the kubelet removes them.
        let label = |k: &str| s.labels.get(k).map(String::as_str).unwrap_or("");
        let (ns, name, uid) = (
            label(cri::POD_NAMESPACE),
            label(cri::POD_NAME),
            label(cri::POD_UID),
        );
        if !uid.is_empty() && !name.is_empty() && !ns.is_empty() {
            let dir = PodIdentity {
                name,
                namespace: ns,
                uid,
                node: "",
            }
            .log_directory(log_root);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(())
}

fn instance(s: &api::ContainerStatus) -> Instance {
    Instance {
        id: s.id.clone(),
        image_id: s.image_ref.clone(),
        attempt: s.metadata.as_ref().map_or(0, |m| m.attempt),
        state: match s.state {
            CREATED => RunState::Created,
            RUNNING => RunState::Running {
                started_at: s.started_at,
            },
            EXITED => RunState::Exited {
                exit_code: s.exit_code,
                reason: s.reason.clone(),
                message: s.message.clone(),
                started_at: s.started_at,
                finished_at: s.finished_at,
            },
            _ => RunState::Unknown,
        },
    }
}

fn namespaced_name(pod: &Pod) -> (String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn now_text() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// `10s`, `1m20s`, `5m0s`: Go's duration text, which the kubelet prints.
fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
