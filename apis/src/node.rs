//! mube's additions to the Kubernetes Node: `status.state` and the rules that
//! derive it (and the Ready condition) from heartbeats, as the original Mube
//! defined them.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{NodeCondition, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::heartbeat::Heartbeat;

/// `status.state`: always consistent with the Ready condition
/// (Ready = True, NotReady = False, Unknown = Unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeState {
    Unknown,
    Ready,
    NotReady,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "Unknown",
            NodeState::Ready => "Ready",
            NodeState::NotReady => "NotReady",
        }
    }

    pub fn parse(text: &str) -> Option<NodeState> {
        match text {
            "Unknown" => Some(NodeState::Unknown),
            "Ready" => Some(NodeState::Ready),
            "NotReady" => Some(NodeState::NotReady),
            _ => None,
        }
    }

    /// The Ready condition's `status` for this state.
    pub fn condition_status(self) -> &'static str {
        match self {
            NodeState::Unknown => "Unknown",
            NodeState::Ready => "True",
            NodeState::NotReady => "False",
        }
    }

    /// The state a Ready condition status stands for.
    pub fn from_condition_status(status: &str) -> Option<NodeState> {
        match status {
            "Unknown" => Some(NodeState::Unknown),
            "True" => Some(NodeState::Ready),
            "False" => Some(NodeState::NotReady),
            _ => None,
        }
    }

    /// The `reason` recorded on the Ready condition (and on the Event that
    /// reports the transition).
    pub fn reason(self, ever_heartbeated: bool) -> &'static str {
        match (self, ever_heartbeated) {
            (NodeState::Unknown, _) => "NodeRegistered",
            (NodeState::Ready, _) => "KubeletReady",
            (NodeState::NotReady, true) => "NodeStatusUnknown",
            (NodeState::NotReady, false) => "NodeStatusNeverUpdated",
        }
    }

    pub fn message(self, ever_heartbeated: bool) -> &'static str {
        match (self, ever_heartbeated) {
            (NodeState::Unknown, _) => "Node registered; waiting for the first heartbeat.",
            (NodeState::Ready, _) => "mubelet is posting ready status.",
            (NodeState::NotReady, true) => "mubelet stopped posting node status.",
            (NodeState::NotReady, false) => "mubelet never posted node status.",
        }
    }
}

/// The state a node is in now, and when it will change by itself if nothing
/// else happens (the deadline the lifecycle controller sleeps until).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation {
    pub state: NodeState,
    pub until: Option<Timestamp>,
}

/// The original Mube's rule: `Ready` while the last heartbeat is within
/// `timeout`; `Unknown` while registered without a heartbeat and still inside
/// the window that opened at registration; `NotReady` otherwise.
pub fn evaluate(
    registered: Timestamp,
    last_heartbeat: Option<Timestamp>,
    now: Timestamp,
    timeout: SignedDuration,
) -> Evaluation {
    let (alive, from) = match last_heartbeat {
        Some(hb) => (NodeState::Ready, hb),
        None => (NodeState::Unknown, registered),
    };
    let deadline = from.saturating_add(timeout).unwrap_or(Timestamp::MAX);
    if now < deadline {
        Evaluation {
            state: alive,
            until: Some(deadline),
        }
    } else {
        Evaluation {
            state: NodeState::NotReady,
            until: None,
        }
    }
}

/// After the API server restarts, heartbeats that could not arrive while it
/// was down must not turn healthy nodes NotReady: until `grace_until` a node
/// keeps the state it had (Ready or Unknown) instead of going NotReady.
/// A node that was already NotReady stays so; the grace never promotes.
pub fn with_startup_grace(
    eval: Evaluation,
    current: Option<NodeState>,
    now: Timestamp,
    grace_until: Timestamp,
) -> Evaluation {
    match current {
        Some(kept @ (NodeState::Ready | NodeState::Unknown))
            if eval.state == NodeState::NotReady && now < grace_until =>
        {
            Evaluation {
                state: kept,
                until: Some(grace_until),
            }
        }
        _ => eval,
    }
}

/// `status.state` of a Node object, if it has a valid one.
pub fn state_of(node: &Value) -> Option<NodeState> {
    node.pointer("/status/state")
        .and_then(Value::as_str)
        .and_then(NodeState::parse)
}

/// The Ready condition of a Node object.
pub fn ready_condition(node: &Value) -> Option<&Value> {
    node.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
}

fn status_mut(node: &mut Value) -> &mut serde_json::Map<String, Value> {
    let obj = ensure_object(node);
    ensure_object(obj.entry("status").or_insert_with(|| json!({})))
}

fn ensure_object(v: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// Sets `status.state` and the Ready condition together, so they can never
/// disagree. `lastTransitionTime` moves only when the condition's status does.
pub fn set_state(
    node: &mut Value,
    state: NodeState,
    now: Timestamp,
    last_heartbeat: Option<Timestamp>,
) {
    let previous = ready_condition(node).cloned();
    let changed = previous
        .as_ref()
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        != Some(state.condition_status());
    let transition = match (&previous, changed) {
        (Some(c), false) => c
            .get("lastTransitionTime")
            .and_then(Value::as_str)
            .and_then(|t| t.parse().ok())
            .unwrap_or(now),
        _ => now,
    };
    // Kubernetes' type, so that the condition serializes as Kubernetes' does.
    let condition = NodeCondition {
        type_: "Ready".into(),
        status: state.condition_status().into(),
        reason: Some(state.reason(last_heartbeat.is_some()).into()),
        message: Some(state.message(last_heartbeat.is_some()).into()),
        last_heartbeat_time: Some(Time(last_heartbeat.unwrap_or(now))),
        last_transition_time: Some(Time(transition)),
    };
    let condition = serde_json::to_value(condition).unwrap_or(Value::Null);
    let status = status_mut(node);
    status.insert("state".into(), json!(state.as_str()));
    let conditions = status.entry("conditions").or_insert_with(|| json!([]));
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    if let Value::Array(list) = conditions {
        match list
            .iter_mut()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        {
            Some(slot) => *slot = condition,
            None => list.push(condition),
        }
    }
}

/// The fields of `status.nodeInfo` Kubernetes' schema requires.
pub const NODE_INFO_REQUIRED: [&str; 10] = [
    "machineID",
    "systemUUID",
    "bootID",
    "kernelVersion",
    "osImage",
    "containerRuntimeVersion",
    "kubeletVersion",
    "kubeProxyVersion",
    "operatingSystem",
    "architecture",
];

/// Copies what a heartbeat reports into the Node (`nodeInfo` versions and the
/// pod capacity). Returns whether anything a client would see changed.
pub fn apply_heartbeat(node: &mut Value, hb: &Heartbeat) -> bool {
    let before = node.get("status").cloned();
    let status = status_mut(node);
    // Built as Kubernetes' NodeSystemInfo, which requires every one of its
    // fields and always serializes them, empty when unknown: clients that
    // check responses against the schema (the Python client) refuse a Node
    // without them. What is stored is kept, what the heartbeat reports wins.
    let mut info = serde_json::to_value(NodeSystemInfo::default()).unwrap_or_else(|_| json!({}));
    if let (Some(typed), Some(Value::Object(stored))) =
        (info.as_object_mut(), status.get("nodeInfo"))
    {
        for (key, value) in stored {
            typed.insert(key.clone(), value.clone());
        }
    }
    let typed = ensure_object(&mut info);
    typed.insert("containerRuntimeVersion".into(), json!(hb.runtime));
    typed.insert("kubeletVersion".into(), json!(hb.version));
    for (key, value) in hb.system.fields() {
        typed.insert(key.into(), json!(value));
    }
    status.insert("nodeInfo".into(), info);
    for key in ["capacity", "allocatable"] {
        let map = ensure_object(status.entry(key).or_insert_with(|| json!({})));
        map.insert("pods".into(), json!(hb.capacity.to_string()));
    }
    node.get("status") != before.as_ref()
}

/// Whether a heartbeat would change this Node (what `apply_heartbeat` copies
/// in, or the state not being Ready yet), read straight from the stored JSON
/// into borrowed fields instead of a `Value`. Every heartbeat asks this, and
/// the answer is almost always no; building the whole Node as a `Value` to
/// find that out was 14 % of the API server's CPU under heartbeat load.
/// `None` when the JSON is not readable this way: take the full path.
pub fn heartbeat_would_change(node_json: &[u8], hb: &Heartbeat) -> Option<bool> {
    use std::borrow::Cow;
    #[derive(Deserialize)]
    struct NodeView<'a> {
        #[serde(borrow, default)]
        status: Option<StatusView<'a>>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct StatusView<'a> {
        #[serde(borrow, default)]
        state: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        node_info: Option<NodeInfoView<'a>>,
        #[serde(borrow, default)]
        capacity: Option<PodsView<'a>>,
        #[serde(borrow, default)]
        allocatable: Option<PodsView<'a>>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct NodeInfoView<'a> {
        #[serde(borrow, default)]
        container_runtime_version: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        kubelet_version: Option<Cow<'a, str>>,
        // The other required fields only need to be there.
        #[serde(borrow, default, rename = "machineID")]
        machine_id: Option<Cow<'a, str>>,
        #[serde(default, rename = "systemUUID")]
        system_uuid: Option<serde::de::IgnoredAny>,
        #[serde(borrow, default, rename = "bootID")]
        boot_id: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        kernel_version: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        os_image: Option<Cow<'a, str>>,
        #[serde(default)]
        kube_proxy_version: Option<serde::de::IgnoredAny>,
        #[serde(borrow, default)]
        operating_system: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        architecture: Option<Cow<'a, str>>,
    }
    impl<'a> NodeInfoView<'a> {
        fn get(&self, key: &str) -> &Option<Cow<'a, str>> {
            match key {
                "machineID" => &self.machine_id,
                "bootID" => &self.boot_id,
                "kernelVersion" => &self.kernel_version,
                "osImage" => &self.os_image,
                "operatingSystem" => &self.operating_system,
                _ => &self.architecture,
            }
        }

        fn complete(&self) -> bool {
            self.system_uuid.is_some()
                && self.kube_proxy_version.is_some()
                && [
                    &self.machine_id,
                    &self.boot_id,
                    &self.kernel_version,
                    &self.os_image,
                    &self.operating_system,
                    &self.architecture,
                ]
                .iter()
                .all(|f| f.is_some())
        }
    }
    #[derive(Deserialize)]
    struct PodsView<'a> {
        #[serde(borrow, default)]
        pods: Option<Cow<'a, str>>,
    }
    let node: NodeView = serde_json::from_slice(node_json).ok()?;
    let Some(status) = node.status else {
        return Some(true);
    };
    let pods = hb.capacity.to_string();
    let same = |have: &Option<Cow<str>>, want: &str| have.as_deref() == Some(want);
    let unchanged = same(&status.state, NodeState::Ready.as_str())
        && status.node_info.as_ref().is_some_and(|i| {
            same(&i.container_runtime_version, &hb.runtime)
                && same(&i.kubelet_version, &hb.version)
                && i.complete()
                && hb.system.fields().all(|(key, want)| same(i.get(key), want))
        })
        && status
            .capacity
            .as_ref()
            .is_some_and(|c| same(&c.pods, &pods))
        && status
            .allocatable
            .as_ref()
            .is_some_and(|a| same(&a.pods, &pods));
    Some(!unchanged)
}

/// Sets the registry's address and port on a Node. Returns whether they changed.
pub fn set_address(node: &mut Value, ip: &str, port: u16) -> bool {
    let before = node.get("status").cloned();
    let status = status_mut(node);
    let mut addresses: Vec<Value> = status
        .get("addresses")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|x| x.get("type").and_then(Value::as_str) != Some("InternalIP"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    addresses.insert(0, json!({"type": "InternalIP", "address": ip}));
    status.insert("addresses".into(), Value::Array(addresses));
    status.insert(
        "daemonEndpoints".into(),
        json!({"kubeletEndpoint": {"Port": port}}),
    );
    node.get("status") != before.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }
    const T: SignedDuration = SignedDuration::from_secs(30);

    #[test]
    fn original_state_rules() {
        let e = evaluate(at(0), None, at(10), T);
        assert_eq!(e.state, NodeState::Unknown);
        assert_eq!(e.until, Some(at(30)));
        assert_eq!(evaluate(at(0), None, at(30), T).state, NodeState::NotReady);
        let e = evaluate(at(0), Some(at(40)), at(50), T);
        assert_eq!(e.state, NodeState::Ready);
        assert_eq!(e.until, Some(at(70)));
        assert_eq!(
            evaluate(at(0), Some(at(40)), at(70), T).state,
            NodeState::NotReady
        );
    }

    #[test]
    fn grace_keeps_but_never_promotes() {
        let stale = evaluate(at(0), Some(at(0)), at(100), T);
        let kept = with_startup_grace(stale, Some(NodeState::Ready), at(100), at(130));
        assert_eq!(kept.state, NodeState::Ready);
        assert_eq!(kept.until, Some(at(130)));
        let not = with_startup_grace(stale, Some(NodeState::NotReady), at(100), at(130));
        assert_eq!(not.state, NodeState::NotReady);
        let over = with_startup_grace(stale, Some(NodeState::Ready), at(130), at(130));
        assert_eq!(over.state, NodeState::NotReady);
    }

    #[test]
    fn state_and_condition_move_together() {
        let mut node = json!({"metadata": {"name": "n"}});
        set_state(&mut node, NodeState::Unknown, at(0), None);
        assert_eq!(state_of(&node), Some(NodeState::Unknown));
        assert_eq!(ready_condition(&node).unwrap()["status"], "Unknown");
        set_state(&mut node, NodeState::Ready, at(5), Some(at(5)));
        let t1 = ready_condition(&node).unwrap()["lastTransitionTime"].clone();
        set_state(&mut node, NodeState::Ready, at(9), Some(at(9)));
        assert_eq!(ready_condition(&node).unwrap()["lastTransitionTime"], t1);
        assert_eq!(ready_condition(&node).unwrap()["status"], "True");
        set_state(&mut node, NodeState::NotReady, at(40), Some(at(9)));
        assert_eq!(ready_condition(&node).unwrap()["status"], "False");
        assert_eq!(node["status"]["conditions"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn heartbeat_changes_only_when_values_do() {
        let mut node = json!({"metadata": {"name": "n"}});
        let hb = Heartbeat {
            name: "n".into(),
            runtime: "containerd".into(),
            version: "0.1.0".into(),
            capacity: 10,
            system: Default::default(),
        };
        assert!(apply_heartbeat(&mut node, &hb));
        assert!(!apply_heartbeat(&mut node, &hb));
        assert_eq!(node["status"]["capacity"]["pods"], "10");
        assert!(set_address(&mut node, "10.0.0.1", 10250));
        assert!(!set_address(&mut node, "10.0.0.1", 10250));
        assert!(set_address(&mut node, "10.0.0.2", 10250));
    }

    /// The original four-field heartbeat of node n1.
    fn heartbeat_n1() -> Heartbeat {
        Heartbeat {
            name: "n1".into(),
            runtime: "containerd".into(),
            version: "0.1.0".into(),
            capacity: 110,
            system: Default::default(),
        }
    }

    #[test]
    fn a_node_missing_required_node_info_fields_is_completed_by_a_heartbeat() {
        let hb = heartbeat_n1();
        // As an earlier mube stored it: only the two fields it knew.
        let mut node = json!({"status": {"state": "Ready",
            "nodeInfo": {"containerRuntimeVersion": "containerd", "kubeletVersion": "0.1.0"},
            "capacity": {"pods": "110"}, "allocatable": {"pods": "110"}}});
        let bytes = serde_json::to_vec(&node).unwrap();
        assert_eq!(heartbeat_would_change(&bytes, &hb), Some(true));
        assert!(apply_heartbeat(&mut node, &hb));
        for key in NODE_INFO_REQUIRED {
            assert!(node["status"]["nodeInfo"][key].is_string(), "{key}");
        }
        let bytes = serde_json::to_vec(&node).unwrap();
        assert_eq!(heartbeat_would_change(&bytes, &hb), Some(false));
    }

    #[test]
    fn heartbeat_would_change_agrees_with_applying_it() {
        let hb = heartbeat_n1();
        // What applying a heartbeat and marking the node Ready actually does,
        // against the quick check, for a few starting points.
        let full = |node: &Value, hb: &Heartbeat| {
            let mut n = node.clone();
            let mut changed = apply_heartbeat(&mut n, hb);
            if state_of(&n) != Some(NodeState::Ready) {
                set_state(&mut n, NodeState::Ready, at(10), Some(at(10)));
                changed = true;
            }
            (changed, n)
        };
        let quick = |node: &Value, hb: &Heartbeat| {
            heartbeat_would_change(&serde_json::to_vec(node).unwrap(), hb).unwrap()
        };
        let fresh = json!({"metadata": {"name": "n1"}, "status": {"state": "Unknown"}});
        assert!(quick(&fresh, &hb) && full(&fresh, &hb).0);
        let (_, ready) = full(&fresh, &hb);
        assert!(!quick(&ready, &hb) && !full(&ready, &hb).0);
        let upgraded = Heartbeat {
            version: "0.2.0".into(),
            ..hb.clone()
        };
        assert!(quick(&ready, &upgraded) && full(&ready, &upgraded).0);
        let bigger = Heartbeat {
            capacity: 111,
            system: Default::default(),
            ..hb.clone()
        };
        assert!(quick(&ready, &bigger) && full(&ready, &bigger).0);
        let mut not_ready = ready.clone();
        set_state(&mut not_ready, NodeState::NotReady, at(20), None);
        assert!(quick(&not_ready, &hb) && full(&not_ready, &hb).0);
        let no_status = json!({"metadata": {"name": "n1"}});
        assert!(quick(&no_status, &hb) && full(&no_status, &hb).0);
        // Strings with escapes in the stored JSON are read too.
        let quoted = Heartbeat {
            version: "0.1.0 \"beta\"".into(),
            ..hb.clone()
        };
        let (_, quoted_node) = full(&fresh, &quoted);
        assert!(!quick(&quoted_node, &quoted));
        assert!(quick(&quoted_node, &hb));
        assert_eq!(heartbeat_would_change(b"[1]", &hb), None);
    }
}
