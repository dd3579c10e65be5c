//! The node lifecycle controller: turns Lease renewals into `status.state`
//! and the Ready condition, using the original Mube's rules
//! (`mube_apis::node::evaluate`).
//!
//! It is deadline-driven: every node has the instant at which its state will
//! change by itself (last heartbeat + timeout, or registration + timeout), and
//! the controller sleeps until the earliest one, so a transition is written
//! right at its deadline and nothing is written in between. It watches Nodes
//! but not Leases: renewals arrive at the heartbeat rate yet only matter at a
//! deadline, so at a deadline it reads the node's Lease, and a renewal since
//! just moves the deadline.
//!
//! Start-up grace: heartbeats cannot arrive while the API server is down, so
//! for one timeout after the controller starts a node keeps the Ready or
//! Unknown state it had instead of going NotReady (Kubernetes' node lifecycle
//! controller gives the same grace). A node that stays silent through the
//! grace period goes NotReady at its end.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use mube_apis::node::{self as rules, Evaluation, NodeState};
use mube_apis::resources;
use mube_apis::status::Reason;
use mube_apis::watch::{EventType, WatchEvent};
use mube_apis::NODE_LEASE_NAMESPACE;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::client::ApiClient;
use crate::error::ApiError;

/// What the controller knows about one node.
#[derive(Debug, Clone)]
struct Tracked {
    registered: Timestamp,
    /// `status.state` as last seen on the Node.
    state: Option<NodeState>,
    /// The Lease's `renewTime`, as last seen.
    heartbeat: Option<Timestamp>,
    /// When this node is next due for re-evaluation.
    deadline: Option<Timestamp>,
}

pub struct NodeLifecycle {
    client: Arc<dyn ApiClient>,
    timeout: SignedDuration,
    grace_until: Timestamp,
    nodes: HashMap<String, Tracked>,
    due: BTreeSet<(Timestamp, String)>,
    /// The state each node was last reported in (by an Event, or as found
    /// by a list), so that each transition is recorded exactly once, whoever
    /// wrote it (a heartbeat or this controller).
    reported: HashMap<String, NodeState>,
    last_sweep: Timestamp,
}

/// Keeps `mube_nodes{state}` in step with the states in `nodes`.
fn count_state(from: Option<NodeState>, to: Option<NodeState>) {
    if from == to {
        return;
    }
    let gauge = &crate::metrics::metrics().nodes;
    if let Some(s) = from {
        gauge.with_label_values(&[s.as_str()]).dec();
    }
    if let Some(s) = to {
        gauge.with_label_values(&[s.as_str()]).inc();
    }
}

/// `mube_nodes{state}` with no node known: before a relist, and when the
/// controller stops (a server that lost its election reports nothing).
fn zero_state_counts() {
    for s in [NodeState::Ready, NodeState::NotReady, NodeState::Unknown] {
        crate::metrics::metrics()
            .nodes
            .with_label_values(&[s.as_str()])
            .set(0);
    }
}

impl Drop for NodeLifecycle {
    fn drop(&mut self) {
        zero_state_counts();
    }
}

/// Events older than this are deleted (Kubernetes' default `--event-ttl`).
const EVENT_TTL: SignedDuration = SignedDuration::from_secs(3600);
/// The Events recording node transitions live here, as in Kubernetes.
const EVENT_NAMESPACE: &str = "default";
const COMPONENT: &str = "node-lifecycle-controller";

fn timestamp_at(value: &Value, pointer: &str) -> Option<Timestamp> {
    value.pointer(pointer)?.as_str()?.parse().ok()
}

fn name_of(value: &Value) -> Option<String> {
    value
        .pointer("/metadata/name")?
        .as_str()
        .map(str::to_string)
}

/// The controller writes only the transitions time causes: to NotReady.
/// Unknown is set when a node is created and Ready by the heartbeat that
/// makes it so, in the same write as what that heartbeat reports; were the
/// controller to promote too, a watcher could see two writes for one
/// heartbeat (the controller's Ready, then the heartbeat's nodeInfo).
fn needs_write(eval: Evaluation, current: Option<NodeState>) -> bool {
    eval.state == NodeState::NotReady && current != Some(NodeState::NotReady)
}

/// Why the watch loop stopped.
enum Stop {
    Shutdown,
    /// A stream ended or failed: list again and start new watches.
    Relist,
}

impl NodeLifecycle {
    pub fn new(client: Arc<dyn ApiClient>, timeout: Duration) -> NodeLifecycle {
        let timeout = SignedDuration::try_from(timeout).unwrap_or(SignedDuration::from_secs(30));
        NodeLifecycle {
            client,
            timeout,
            grace_until: Timestamp::now()
                .saturating_add(timeout)
                .unwrap_or(Timestamp::MAX),
            nodes: HashMap::new(),
            due: BTreeSet::new(),
            reported: HashMap::new(),
            last_sweep: Timestamp::now(),
        }
    }

    /// Runs until `shutdown`. Errors are logged and answered with a relist.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            match self.list_and_watch(&shutdown).await {
                Ok(Stop::Shutdown) => return,
                Ok(Stop::Relist) => {}
                Err(e) => tracing::warn!(error = %e, "node lifecycle controller: relisting"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn list_and_watch(&mut self, shutdown: &CancellationToken) -> Result<Stop, ApiError> {
        let (nodes, nodes_rv) = self.client.list(&resources::NODES, None).await?;
        // Leases are listed once, not watched: renewals come at the heartbeat
        // rate (10,000/s at 100,000 nodes) but only matter at a deadline, so
        // the controller reads a node's Lease when its deadline comes.
        let (leases, _) = self
            .client
            .list(&resources::LEASES, Some(NODE_LEASE_NAMESPACE))
            .await?;
        let mut node_events = self
            .client
            .watch(&resources::NODES, None, &nodes_rv)
            .await?;

        self.nodes.clear();
        zero_state_counts();
        self.due.clear();
        // Transitions that happened while the watch was down (known from an
        // earlier list) are reported now; nodes seen for the first time are not.
        let known = std::mem::take(&mut self.reported);
        for node in nodes {
            let node = node?;
            if let (Some(name), Some(state)) = (self.observe_node(&node), rules::state_of(&node)) {
                match known.get(&name) {
                    Some(previous) => {
                        self.reported.insert(name, *previous);
                        self.report(&node).await;
                    }
                    None => {
                        self.reported.insert(name, state);
                    }
                }
            }
        }
        for lease in leases {
            self.observe_lease(&lease?);
        }
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            self.reconcile(&name).await;
        }
        // Nodes deleted while the watch was down left their pods: those go
        // now, as on a Deleted event.
        let listed: std::collections::HashSet<String> = self.nodes.keys().cloned().collect();
        self.delete_pods_where(|node| !listed.contains(node)).await;

        loop {
            let next_due = self.due.first().map(|(t, _)| *t);
            let sleep = async {
                match next_due {
                    Some(t) => {
                        let wait = Duration::try_from(t.duration_since(Timestamp::now()))
                            .unwrap_or(Duration::ZERO);
                        tokio::time::sleep(wait).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Stop::Shutdown),
                event = node_events.next() => match event {
                    Some(Ok(e)) => self.on_node_event(e).await,
                    Some(Err(e)) => { tracing::info!(error = %e, "node watch ended"); return Ok(Stop::Relist) }
                    None => return Ok(Stop::Relist),
                },
                _ = sleep => {
                    let now = Timestamp::now();
                    let expired: Vec<String> = self
                        .due
                        .iter()
                        .take_while(|(t, _)| *t <= now)
                        .map(|(_, n)| n.clone())
                        .collect();
                    for name in expired {
                        self.reconcile(&name).await;
                    }
                }
            }
        }
    }

    fn observe_node(&mut self, node: &Value) -> Option<String> {
        let name = name_of(node)?;
        let registered =
            timestamp_at(node, "/metadata/creationTimestamp").unwrap_or_else(Timestamp::now);
        let state = rules::state_of(node);
        let previous = self.nodes.get(&name).and_then(|t| t.state);
        count_state(previous, state);
        let entry = self.nodes.entry(name.clone()).or_insert(Tracked {
            registered,
            state,
            heartbeat: None,
            deadline: None,
        });
        entry.registered = registered;
        entry.state = state;
        Some(name)
    }

    fn observe_lease(&mut self, lease: &Value) -> Option<String> {
        let name = name_of(lease)?;
        let renewed = timestamp_at(lease, "/spec/renewTime");
        let tracked = self.nodes.get_mut(&name)?;
        tracked.heartbeat = renewed.max(tracked.heartbeat);
        Some(name)
    }

    async fn on_node_event(&mut self, event: WatchEvent) {
        match event.type_ {
            EventType::Added | EventType::Modified => {
                if let Some(name) = self.observe_node(&event.object) {
                    self.report(&event.object).await;
                    self.reconcile(&name).await;
                }
            }
            EventType::Deleted => {
                if let Some(name) = name_of(&event.object) {
                    self.forget(&name);
                    self.reported.remove(&name);
                    // The Lease belongs to the node (as its ownerReference says).
                    match self
                        .client
                        .delete(&resources::LEASES, Some(NODE_LEASE_NAMESPACE), &name)
                        .await
                    {
                        Err(e) if e.code() != 404 => {
                            tracing::warn!(node = %name, error = %e, "could not delete the lease of a deleted node")
                        }
                        _ => {}
                    }
                    self.delete_pods_where(|node| node == name).await;
                }
            }
            EventType::Bookmark | EventType::Error => {}
        }
    }

    /// Pods bound to a node that is gone have no agent to run or stop them:
    /// they are deleted (at once, as the registry deletes a pod whose node
    /// is gone), as Kubernetes' pod garbage collector does with orphans.
    async fn delete_pods_where(&self, gone: impl Fn(&str) -> bool) {
        let items = match self.client.list(&resources::PODS, None).await {
            Ok((items, _)) => items,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the pods of deleted nodes");
                return;
            }
        };
        for pod in items.flatten() {
            let Some(node) = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty() && gone(n))
            else {
                continue;
            };
            // Gone for sure: a node made after the list is not.
            if self.client.get(&resources::NODES, None, node).await.is_ok() {
                continue;
            }
            let (Some(ns), Some(name)) = (
                pod.pointer("/metadata/namespace").and_then(Value::as_str),
                name_of(&pod),
            ) else {
                continue;
            };
            match self.client.delete(&resources::PODS, Some(ns), &name).await {
                Err(e) if e.code() != 404 => {
                    tracing::warn!(node, pod = %format!("{ns}/{name}"), error = %e, "could not delete a pod of a deleted node")
                }
                _ => {}
            }
        }
    }

    /// Records an Event if `node` is in a state not yet reported.
    async fn report(&mut self, node: &Value) {
        let (Some(name), Some(state)) = (name_of(node), rules::state_of(node)) else {
            return;
        };
        if self.reported.get(&name) == Some(&state) {
            return;
        }
        self.reported.insert(name.clone(), state);
        let reason = match state {
            NodeState::Ready => "NodeReady",
            NodeState::NotReady => "NodeNotReady",
            NodeState::Unknown => "NodeUnknown",
        };
        let now = Time(Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(EVENT_NAMESPACE.into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(name.clone()),
                uid: node
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(format!("Node {name} status is now: {reason}")),
            type_: Some("Normal".into()),
            source: Some(EventSource {
                component: Some(COMPONENT.into()),
                host: None,
            }),
            reporting_component: Some(COMPONENT.into()),
            reporting_instance: Some("mube-apiserver".into()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        let created = match serde_json::to_value(&event) {
            Ok(event) => {
                self.client
                    .create(&resources::EVENTS, Some(EVENT_NAMESPACE), event)
                    .await
            }
            Err(e) => Err(ApiError::new(Reason::InternalError, e.to_string())),
        };
        if let Err(e) = created {
            tracing::warn!(node = %name, error = %e, "could not record the node's event");
        }
        self.sweep_events().await;
    }

    /// Deletes node Events older than `EVENT_TTL`; at most once a minute.
    async fn sweep_events(&mut self) {
        let now = Timestamp::now();
        if now.duration_since(self.last_sweep) < SignedDuration::from_secs(60) {
            return;
        }
        self.last_sweep = now;
        let Ok((events, _)) = self
            .client
            .list(&resources::EVENTS, Some(EVENT_NAMESPACE))
            .await
        else {
            return;
        };
        for event in events.flatten() {
            let old = timestamp_at(&event, "/lastTimestamp")
                .is_some_and(|t| now.duration_since(t) > EVENT_TTL);
            let ours =
                event.pointer("/source/component").and_then(Value::as_str) == Some(COMPONENT);
            if let (true, true, Some(name)) = (old, ours, name_of(&event)) {
                let _ = self
                    .client
                    .delete(&resources::EVENTS, Some(EVENT_NAMESPACE), &name)
                    .await;
            }
        }
    }

    fn forget(&mut self, name: &str) {
        if let Some(t) = self.nodes.remove(name) {
            count_state(t.state, None);
            if let Some(d) = t.deadline {
                self.due.remove(&(d, name.to_string()));
            }
        }
    }

    fn schedule(&mut self, name: &str, deadline: Option<Timestamp>) {
        let Some(t) = self.nodes.get_mut(name) else {
            return;
        };
        if let Some(old) = t.deadline.take() {
            self.due.remove(&(old, name.to_string()));
        }
        t.deadline = deadline;
        if let Some(d) = deadline {
            self.due.insert((d, name.to_string()));
        }
    }

    fn evaluate(&self, t: &Tracked, now: Timestamp) -> Evaluation {
        let eval = rules::evaluate(t.registered, t.heartbeat, now, self.timeout);
        rules::with_startup_grace(eval, t.state, now, self.grace_until)
    }

    /// Re-evaluates one node and writes its state if it changed.
    async fn reconcile(&mut self, name: &str) {
        let Some(tracked) = self.nodes.get(name).cloned() else {
            return;
        };
        let now = Timestamp::now();
        let eval = self.evaluate(&tracked, now);
        if needs_write(eval, tracked.state) {
            match self.write_state(name).await {
                Ok(Some(written)) => {
                    if let Some(t) = self.nodes.get_mut(name) {
                        count_state(t.state, Some(written.state));
                        t.state = Some(written.state);
                    }
                    self.schedule(name, written.until);
                    return;
                }
                Ok(None) => {
                    self.forget(name);
                    return;
                }
                Err(e) => {
                    tracing::warn!(node = %name, error = %e, "could not write node state; retrying in 1s");
                    self.schedule(
                        name,
                        Some(
                            now.saturating_add(SignedDuration::from_secs(1))
                                .unwrap_or(now),
                        ),
                    );
                    return;
                }
            }
        }
        self.schedule(name, eval.until);
    }

    /// Reads the node and its lease fresh (the two watches are separate
    /// streams and may lag each other), decides, and writes through the
    /// status subresource with the node's resourceVersion as precondition.
    /// Returns `None` if the node is gone.
    async fn write_state(&mut self, name: &str) -> Result<Option<Evaluation>, ApiError> {
        for _ in 0..5 {
            let node = match self.client.get(&resources::NODES, None, name).await {
                Err(e) if e.is_not_found() => return Ok(None),
                other => other?,
            };
            let heartbeat = match self
                .client
                .get(&resources::LEASES, Some(NODE_LEASE_NAMESPACE), name)
                .await
            {
                Err(e) if e.is_not_found() => None,
                other => timestamp_at(&other?, "/spec/renewTime"),
            };
            self.observe_node(&node);
            if let Some(t) = self.nodes.get_mut(name) {
                t.heartbeat = heartbeat.max(t.heartbeat);
            }
            let Some(tracked) = self.nodes.get(name).cloned() else {
                return Ok(None);
            };
            let now = Timestamp::now();
            let eval = self.evaluate(&tracked, now);
            if !needs_write(eval, tracked.state) {
                return Ok(Some(eval));
            }
            let mut updated = node.clone();
            rules::set_state(&mut updated, eval.state, now, tracked.heartbeat);
            match self
                .client
                .update_status(&resources::NODES, None, name, updated)
                .await
            {
                Ok(written) => {
                    self.report(&written).await;
                    tracing::info!(
                        node = %name,
                        from = tracked.state.map(NodeState::as_str).unwrap_or("none"),
                        to = eval.state.as_str(),
                        "node state transition"
                    );
                    return Ok(Some(eval));
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        // Contention, not a bad request: Kubernetes' GuaranteedUpdate also
        // gives up with the conflict.
        Err(ApiError::new(
            Reason::Conflict,
            format!("node {name}: too many conflicts writing its state"),
        ))
    }
}

#[cfg(test)]
mod tests {
    //! The controller's decisions against a fake `ApiClient`: an in-memory
    //! map of objects that records every call and can be told to answer
    //! Conflict. (The controller against the real server is in
    //! tests/cluster.rs.)

    use std::sync::Mutex;

    use async_trait::async_trait;
    use futures::stream::BoxStream;
    use mube_apis::resources::ResourceInfo;
    use serde_json::json;

    use super::*;
    use crate::controllers::client::Items;

    #[derive(Default)]
    struct FakeApi {
        objects: Mutex<HashMap<(String, String), Value>>,
        calls: Mutex<Vec<String>>,
        /// Status updates still to be refused with 409.
        conflicts: Mutex<usize>,
    }

    impl FakeApi {
        fn key(kind: &ResourceInfo, name: &str) -> (String, String) {
            (kind.plural.to_string(), name.to_string())
        }

        fn put(&self, kind: &ResourceInfo, name: &str, object: Value) {
            self.objects
                .lock()
                .unwrap()
                .insert(Self::key(kind, name), object);
        }

        fn object(&self, kind: &ResourceInfo, name: &str) -> Option<Value> {
            self.objects
                .lock()
                .unwrap()
                .get(&Self::key(kind, name))
                .cloned()
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }

        fn record(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
    }

    fn not_found(name: &str) -> ApiError {
        ApiError::new(Reason::NotFound, format!("{name} not found"))
    }

    #[async_trait]
    impl ApiClient for FakeApi {
        fn namespaced_kinds(&self) -> Vec<&'static ResourceInfo> {
            Vec::new()
        }

        async fn list(
            &self,
            kind: &ResourceInfo,
            _namespace: Option<&str>,
        ) -> Result<(Items, String), ApiError> {
            let items: Vec<Result<Value, ApiError>> = self
                .objects
                .lock()
                .unwrap()
                .iter()
                .filter(|((plural, _), _)| plural == kind.plural)
                .map(|(_, v)| Ok(v.clone()))
                .collect();
            Ok((Box::new(items.into_iter()), "1".into()))
        }

        async fn watch(
            &self,
            _kind: &ResourceInfo,
            _namespace: Option<&str>,
            _resource_version: &str,
        ) -> Result<BoxStream<'static, Result<WatchEvent, ApiError>>, ApiError> {
            Ok(futures::stream::pending().boxed())
        }

        async fn get(
            &self,
            kind: &ResourceInfo,
            _namespace: Option<&str>,
            name: &str,
        ) -> Result<Value, ApiError> {
            self.object(kind, name).ok_or_else(|| not_found(name))
        }

        async fn update_status(
            &self,
            kind: &ResourceInfo,
            _namespace: Option<&str>,
            name: &str,
            object: Value,
        ) -> Result<Value, ApiError> {
            self.record(format!("update_status {} {name}", kind.plural));
            {
                let mut conflicts = self.conflicts.lock().unwrap();
                if *conflicts > 0 {
                    *conflicts -= 1;
                    return Err(ApiError::new(Reason::Conflict, "stale"));
                }
            }
            if self.object(kind, name).is_none() {
                return Err(not_found(name));
            }
            self.put(kind, name, object.clone());
            Ok(object)
        }

        async fn delete(
            &self,
            kind: &ResourceInfo,
            _namespace: Option<&str>,
            name: &str,
        ) -> Result<(), ApiError> {
            self.record(format!("delete {} {name}", kind.plural));
            self.objects
                .lock()
                .unwrap()
                .remove(&Self::key(kind, name))
                .map(drop)
                .ok_or_else(|| not_found(name))
        }

        async fn create(
            &self,
            kind: &ResourceInfo,
            _namespace: Option<&str>,
            object: Value,
        ) -> Result<Value, ApiError> {
            let reason = object["reason"].as_str().unwrap_or("").to_string();
            self.record(format!("create {} {reason}", kind.plural));
            Ok(object)
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn ago(seconds: i64) -> Timestamp {
        Timestamp::now()
            .checked_sub(SignedDuration::from_secs(seconds))
            .unwrap()
    }

    /// A Ready node registered and last renewed `silent` seconds ago.
    fn ready_node(api: &FakeApi, name: &str, silent: i64) {
        let mut node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": "u-1", "creationTimestamp": "2026-01-01T00:00:00Z"}});
        rules::set_state(&mut node, NodeState::Ready, ago(silent), Some(ago(silent)));
        api.put(&resources::NODES, name, node);
        let renewed = serde_json::to_value(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(ago(silent)),
        )
        .unwrap();
        api.put(
            &resources::LEASES,
            name,
            json!({"metadata": {"name": name}, "spec": {"renewTime": renewed}}),
        );
    }

    /// A controller past its start-up grace, knowing every stored node.
    async fn controller(api: &Arc<FakeApi>) -> NodeLifecycle {
        let mut c = NodeLifecycle::new(api.clone(), TIMEOUT);
        c.grace_until = ago(1);
        let (nodes, _) = api.list(&resources::NODES, None).await.unwrap();
        for node in nodes.flatten() {
            c.observe_node(&node);
            c.reported
                .insert(name_of(&node).unwrap(), rules::state_of(&node).unwrap());
        }
        let (leases, _) = api.list(&resources::LEASES, None).await.unwrap();
        for lease in leases.flatten() {
            c.observe_lease(&lease);
        }
        c
    }

    #[tokio::test]
    async fn a_silent_node_goes_not_ready_with_one_event() {
        let api = Arc::new(FakeApi::default());
        ready_node(&api, "quiet", 45);
        let mut c = controller(&api).await;
        c.reconcile("quiet").await;
        assert_eq!(
            api.calls(),
            ["update_status nodes quiet", "create events NodeNotReady"]
        );
        let node = api.object(&resources::NODES, "quiet").unwrap();
        assert_eq!(rules::state_of(&node), Some(NodeState::NotReady));
        assert_eq!(c.nodes["quiet"].state, Some(NodeState::NotReady));
        // Nothing more happens to it until it heartbeats again.
        c.reconcile("quiet").await;
        assert_eq!(api.calls().len(), 2);
    }

    #[tokio::test]
    async fn a_live_node_is_left_alone_until_its_deadline() {
        let api = Arc::new(FakeApi::default());
        ready_node(&api, "alive", 5);
        let mut c = controller(&api).await;
        c.reconcile("alive").await;
        assert!(api.calls().is_empty(), "{:?}", api.calls());
        let deadline = c.nodes["alive"].deadline.expect("a deadline");
        let expected = ago(5)
            .checked_add(SignedDuration::try_from(TIMEOUT).unwrap())
            .unwrap();
        assert!((deadline.as_second() - expected.as_second()).abs() <= 1);
        assert_eq!(c.due.first().map(|(_, n)| n.as_str()), Some("alive"));
    }

    #[tokio::test]
    async fn a_renewal_seen_at_the_deadline_moves_it_instead_of_writing() {
        let api = Arc::new(FakeApi::default());
        ready_node(&api, "late", 45);
        let mut c = controller(&api).await;
        // The Lease was renewed after the controller last looked.
        ready_node(&api, "late", 1);
        c.write_state("late").await.unwrap();
        assert!(api.calls().is_empty(), "{:?}", api.calls());
    }

    #[tokio::test]
    async fn conflicts_are_retried_then_given_up_as_a_conflict() {
        let api = Arc::new(FakeApi::default());
        ready_node(&api, "busy", 45);
        *api.conflicts.lock().unwrap() = 2;
        let mut c = controller(&api).await;
        c.reconcile("busy").await;
        let updates = api
            .calls()
            .iter()
            .filter(|c| c.starts_with("update_status"))
            .count();
        assert_eq!(updates, 3, "two conflicts, then the write");
        assert_eq!(
            rules::state_of(&api.object(&resources::NODES, "busy").unwrap()),
            Some(NodeState::NotReady)
        );

        ready_node(&api, "contended", 45);
        *api.conflicts.lock().unwrap() = 100;
        let mut c = controller(&api).await;
        let err = c.write_state("contended").await.unwrap_err();
        assert!(err.is_conflict(), "{err:?}");
        assert_eq!(err.code(), 409);
        // reconcile turns it into a retry a second later.
        c.reconcile("contended").await;
        let retry = c.nodes["contended"].deadline.unwrap();
        assert!(
            retry > Timestamp::now()
                && retry
                    <= Timestamp::now()
                        .checked_add(SignedDuration::from_secs(2))
                        .unwrap()
        );
    }

    #[tokio::test]
    async fn a_deleted_node_is_forgotten_and_its_lease_deleted() {
        let api = Arc::new(FakeApi::default());
        ready_node(&api, "gone", 5);
        let mut c = controller(&api).await;
        c.reconcile("gone").await;
        let node = api.object(&resources::NODES, "gone").unwrap();
        c.on_node_event(WatchEvent {
            type_: EventType::Deleted,
            object: node,
        })
        .await;
        assert_eq!(api.calls(), ["delete leases gone"]);
        assert!(!c.nodes.contains_key("gone"));
        assert!(c.due.is_empty());

        // A node that vanished between the deadline and the write is forgotten.
        ready_node(&api, "vanished", 45);
        let mut c = controller(&api).await;
        api.objects.lock().unwrap().clear();
        c.reconcile("vanished").await;
        assert!(!c.nodes.contains_key("vanished"));
    }
}
