//! The scheduler process: caches of nodes and pods kept by kube-runtime
//! reflectors (watches that relist on 410), and a loop that binds each
//! pending pod through `pods/binding`, records `Scheduled` and
//! `FailedScheduling` Events, and tries unschedulable pods again whenever
//! a node or a pod changes.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Event, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use mube_client::leader::{self, Election};
use mube_scheduler::{schedule, Decision, NodeInfo};
use tokio_util::sync::CancellationToken;

pub(crate) const NAME: &str = "default-scheduler";

/// Runs until SIGINT/SIGTERM; with an election, only while leading.
pub async fn run(kubeconfig: Option<PathBuf>, election: Option<Election>) -> Result<(), String> {
    let client = mube_client::connect(kubeconfig).await?;
    tracing::info!("mube-scheduler started");
    leader::run_until_signal(client, election, Duration::from_secs(6), schedule_until).await
}

/// Schedules until `shutdown`.
async fn schedule_until(client: Client, shutdown: CancellationToken) {
    // Bumped on every change either cache sees: the loop works only then.
    let changes = Arc::new(AtomicU64::new(1));
    let (nodes, nodes_writer) = reflector::store::<Node>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (node_changes, pod_changes) = (changes.clone(), changes.clone());
    let node_stream = reflector(
        nodes_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(move |_| {
        node_changes.fetch_add(1, Ordering::AcqRel);
        async {}
    });
    let pod_stream = reflector(
        pods_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(move |_| {
        pod_changes.fetch_add(1, Ordering::AcqRel);
        async {}
    });
    let caches = tokio::spawn(async move {
        tokio::join!(node_stream, pod_stream);
    });
    let (events, queued) = tokio::sync::mpsc::channel(EVENT_QUEUE);
    let sender = tokio::spawn(send_events(client.clone(), queued));
    let stop = shutdown.clone();
    let scheduler = tokio::spawn(async move {
        let mut state = Loop {
            client,
            reported: HashMap::new(),
            assumed: HashMap::new(),
            events,
        };
        let mut seen = 0;
        // After bindings failed (an API server restarting, 429s), a pass
        // comes then even if no cache changed: nothing else may.
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let now = changes.load(Ordering::Acquire);
            let retry = retry_at.is_some_and(|at| tokio::time::Instant::now() >= at);
            if now == seen && !retry {
                continue;
            }
            seen = now;
            // A bug must not leave the process up and every pod Pending.
            let (node_list, pod_list) = (nodes.state(), pods.state());
            let pass = std::panic::AssertUnwindSafe(state.pass(&node_list, &pod_list, &stop));
            match futures::FutureExt::catch_unwind(pass).await {
                Ok(failed) => {
                    retry_at = (failed > 0).then(|| tokio::time::Instant::now() + BINDING_RETRY);
                }
                Err(_) => {
                    tracing::error!(
                        "the scheduling loop panicked; exiting so that a supervisor restarts it"
                    );
                    std::process::exit(1);
                }
            }
        }
    });
    shutdown.cancelled().await;
    // Bindings stop with the token; whatever is left is aborted, so that
    // nothing binds once another copy may lead.
    let mut scheduler = scheduler;
    if tokio::time::timeout(Duration::from_secs(5), &mut scheduler)
        .await
        .is_err()
    {
        scheduler.abort();
    }
    caches.abort();
    sender.abort();
}

struct Loop {
    client: Client,
    /// The last FailedScheduling message posted per pod uid (not repeated).
    reported: HashMap<String, String>,
    /// Pods bound by this process that the cache does not show bound yet
    /// (uid → node): counted on their node, as Kubernetes' scheduler
    /// "assumes" them.
    assumed: HashMap<String, String>,
    /// Events for the sender (`send_events`).
    events: tokio::sync::mpsc::Sender<Event>,
}

fn pending(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
        .is_empty()
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or(NAME)
            == NAME
        && pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

impl Loop {
    /// One pass over every pending pod; returns how many bindings failed.
    async fn pass(
        &mut self,
        nodes: &[Arc<Node>],
        pods: &[Arc<Pod>],
        stop: &CancellationToken,
    ) -> usize {
        let bound: HashSet<String> = pods
            .iter()
            .filter(|p| !pending(p))
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        // Forget pods that are bound, or gone.
        let present: HashSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        self.assumed
            .retain(|uid, _| !bound.contains(uid) && present.contains(uid.as_str()));
        self.reported
            .retain(|uid, _| present.contains(uid.as_str()));
        let mut infos: Vec<NodeInfo> = nodes.iter().map(|n| NodeInfo::new(n.clone())).collect();
        infos.sort_by(|a, b| a.name().cmp(b.name()));
        let index: HashMap<String, usize> = infos
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name().to_string(), i))
            .collect();
        let mut queue = Vec::new();
        for pod in pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let node = match self.assumed.get(&uid) {
                Some(n) => Some(n.clone()),
                None => pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            };
            match node.filter(|n| !n.is_empty()) {
                Some(n) => {
                    if let Some(&i) = index.get(&n) {
                        infos[i].add(pod);
                    }
                }
                None if pending(pod) => queue.push(pod.clone()),
                None => {}
            }
        }
        queue.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
        crate::metrics::metrics()
            .pending
            .with_label_values(&["active"])
            .set(i64::try_from(queue.len()).unwrap_or(i64::MAX));
        // Each pod is placed in order, counted on its node at once (as if
        // bound), and the bindings go out together, as Kubernetes' binding
        // cycles run beside its scheduling cycle: one round trip per pod,
        // one after the other, would cap a scale-up at the API server's
        // write latency.
        let mut placed = Vec::new();
        for pod in queue {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            match schedule(&pod, &infos) {
                Decision::Bind(node) => {
                    if let Some(&i) = index.get(&node) {
                        infos[i].add(&pod);
                    }
                    self.assumed.insert(uid, node.clone());
                    placed.push((pod, node));
                }
                Decision::Unschedulable(message) => {
                    crate::metrics::attempt("unschedulable", 1);
                    if self.reported.get(&uid) != Some(&message) {
                        tracing::info!(pod = %pod.name_any(), %message, "unschedulable");
                        self.event(&pod, "Warning", "FailedScheduling", &message);
                        self.reported.insert(uid, message);
                    }
                }
            }
        }
        let placed_uids: HashSet<String> = placed
            .iter()
            .filter_map(|(pod, _)| pod.metadata.uid.clone())
            .collect();
        let this = &*self;
        let outcomes: HashMap<String, bool> = futures::stream::iter(placed)
            .map(|(pod, node)| async move {
                let bound = this.bind(&pod, &node).await;
                (pod.metadata.uid.clone().unwrap_or_default(), bound)
            })
            .buffer_unordered(BINDING_PARALLEL)
            .take_until(stop.cancelled())
            .collect()
            .await;
        let scheduled = outcomes.values().filter(|bound| **bound).count();
        crate::metrics::attempt("scheduled", scheduled as u64);
        crate::metrics::attempt("error", outcomes.len().saturating_sub(scheduled) as u64);
        // Not bound (refused, or not sent before a stop): back to the queue.
        let before = self.assumed.len();
        self.assumed
            .retain(|uid, _| !placed_uids.contains(uid) || outcomes.get(uid) == Some(&true));
        let failed = before - self.assumed.len();
        for uid in self.assumed.keys() {
            self.reported.remove(uid);
        }
        failed
    }

    async fn bind(&self, pod: &Pod, node: &str) -> bool {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_string()),
                ..Default::default()
            },
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        match api
            .create_subresource::<Binding, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => {
                let message = format!("Successfully assigned {ns}/{name} to {node}");
                self.event(pod, "Normal", "Scheduled", &message);
                true
            }
            Err(e) => {
                tracing::warn!(pod = %name, %node, error = %e, "binding failed");
                false
            }
        }
    }

    /// An Event about `pod`, as Kubernetes' scheduler records it: queued
    /// for a sender in the background, so that binding never waits for it
    /// (as Kubernetes' event broadcaster). A full queue drops the event
    /// (as the broadcaster does) rather than hold up scheduling or send
    /// thousands at once.
    fn event(&self, pod: &Pod, type_: &str, reason: &str, message: &str) {
        let ns = pod.namespace().unwrap_or_default();
        let now = jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", pod.name_any())),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                namespace: Some(ns.clone()),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(type_.into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            reporting_component: Some(NAME.into()),
            reporting_instance: Some(NAME.into()),
            action: Some(
                if reason == "Scheduled" {
                    "Binding"
                } else {
                    "Scheduling"
                }
                .into(),
            ),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some(NAME.into()),
                host: None,
            }),
            ..Default::default()
        };
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = self.events.try_send(event) {
            tracing::warn!(pod = %pod.name_any(), %reason, "event queue full; event dropped");
        }
    }
}

/// Bindings in flight at once.
const BINDING_PARALLEL: usize = 32;
/// How soon a pass comes after bindings failed.
const BINDING_RETRY: Duration = Duration::from_secs(1);
/// Events waiting to be sent, and sent at once.
const EVENT_QUEUE: usize = 5000;
const EVENT_PARALLEL: usize = 8;

/// Sends the queued Events until the queue closes.
async fn send_events(client: Client, mut events: tokio::sync::mpsc::Receiver<Event>) {
    futures::stream::poll_fn(move |cx| events.poll_recv(cx))
        .for_each_concurrent(EVENT_PARALLEL, |event| {
            let ns = event.metadata.namespace.clone().unwrap_or_default();
            let api: Api<Event> = Api::namespaced(client.clone(), &ns);
            async move {
                if let Err(e) = api.create(&PostParams::default(), &event).await {
                    tracing::warn!(error = %e, "cannot record an event");
                }
            }
        })
        .await;
}
