//! A pod's status from what the runtime shows, as the kubelet computes it
//! (`getPhase`, `generateAPIPodStatus`): no I/O here, so every rule is a
//! unit test.

use serde_json::{json, Map, Value};

/// One run of a container, as the runtime reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub image_id: String,
    /// The restart count: CRI's `attempt`.
    pub attempt: u32,
    pub state: RunState,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Created,
    Running {
        started_at: i64,
    },
    Exited {
        exit_code: i32,
        /// The runtime's reason (`OOMKilled`), if any.
        reason: String,
        message: String,
        started_at: i64,
        finished_at: i64,
    },
    Unknown,
}

/// What is known of one container of the pod's spec.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub name: String,
    pub image: String,
    pub current: Option<Instance>,
    pub previous: Option<Instance>,
    /// Why it is not running, when mubelet knows better than the runtime
    /// (`CrashLoopBackOff`, `ErrImageNeverPull`, `ContainerCreating`).
    pub waiting: Option<(String, String)>,
}

/// Everything a pod's status is made of.
#[derive(Debug, Clone, Default)]
pub struct PodObservation {
    pub containers: Vec<Observed>,
    pub restart_policy: String,
    pub pod_ip: Option<String>,
    pub host_ip: Option<String>,
    /// RFC 3339: when mubelet first took the pod.
    pub start_time: Option<String>,
}

/// Nanoseconds since the epoch, as Kubernetes writes times (seconds).
pub fn rfc3339(nanos: i64) -> Value {
    match jiff::Timestamp::from_nanosecond(i128::from(nanos)) {
        Ok(t) if nanos > 0 => json!(t
            .round(jiff::Unit::Second)
            .unwrap_or(t)
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()),
        _ => Value::Null,
    }
}

fn container_id(id: &str) -> String {
    format!("containerd://{id}")
}

/// `state` (or `lastState`) of one instance.
fn state_of(instance: &Instance) -> Value {
    match &instance.state {
        RunState::Running { started_at } => json!({"running": {"startedAt": rfc3339(*started_at)}}),
        RunState::Exited {
            exit_code,
            reason,
            message,
            started_at,
            finished_at,
        } => {
            let reason = if !reason.is_empty() {
                reason.clone()
            } else if *exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            };
            let mut t = json!({
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": rfc3339(*started_at),
                "finishedAt": rfc3339(*finished_at),
                "containerID": container_id(&instance.id),
            });
            if !message.is_empty() {
                t["message"] = json!(message);
            }
            json!({"terminated": t})
        }
        RunState::Created => json!({"waiting": {"reason": "ContainerCreating"}}),
        RunState::Unknown => json!({"waiting": {"reason": "ContainerStatusUnknown"}}),
    }
}

fn container_status(c: &Observed) -> Value {
    let running = matches!(
        c.current.as_ref().map(|i| &i.state),
        Some(RunState::Running { .. })
    );
    let mut state = match (&c.waiting, &c.current) {
        // mubelet's reason wins over an exited instance it will restart.
        (Some((reason, message)), _) => {
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            json!({"waiting": w})
        }
        (None, Some(i)) => state_of(i),
        (None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
    };
    // An exited instance that is about to be replaced is the last state;
    // otherwise the one before it is.
    let last = match (&c.waiting, &c.current) {
        (Some(_), Some(i)) if matches!(i.state, RunState::Exited { .. }) => Some(i),
        _ => c.previous.as_ref(),
    };
    if state.is_null() {
        state = json!({"waiting": {}});
    }
    let mut s = json!({
        "name": c.name,
        "image": c.image,
        "imageID": c.current.as_ref().map(|i| i.image_id.clone()).unwrap_or_default(),
        "ready": running,
        "started": running,
        "restartCount": c.current.as_ref().map_or(0, |i| i.attempt),
        "state": state,
        "lastState": last.map(state_of).unwrap_or_else(|| json!({})),
    });
    if let Some(i) = &c.current {
        s["containerID"] = json!(container_id(&i.id));
    }
    s
}

/// The kubelet's `getPhase`, for a pod without init containers.
pub fn phase(o: &PodObservation) -> &'static str {
    let (mut running, mut stopped, mut succeeded, mut waiting, mut unknown) = (0, 0, 0, 0, 0);
    for c in &o.containers {
        let exited_now = match c.current.as_ref().map(|i| &i.state) {
            Some(RunState::Running { .. }) if c.waiting.is_none() => {
                running += 1;
                continue;
            }
            Some(RunState::Exited { exit_code, .. }) => Some(*exit_code),
            Some(RunState::Unknown) => {
                unknown += 1;
                continue;
            }
            _ => None,
        };
        match (exited_now, &c.waiting) {
            // Exited, and staying exited: a stopped container.
            (Some(code), None) => {
                stopped += 1;
                if code == 0 {
                    succeeded += 1;
                }
            }
            // Exited and waiting to restart: stopped, as the kubelet
            // counts a waiting container with a last termination.
            (Some(_), Some(_)) => stopped += 1,
            (None, _) => waiting += 1,
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 && unknown == 0 {
        return "Running";
    }
    if running == 0 && stopped > 0 && unknown == 0 {
        return match o.restart_policy.as_str() {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        };
    }
    "Pending"
}

/// `status`, whole, keeping the transition times of conditions that did
/// not change from `old` (the pod's current status).
pub fn pod_status(o: &PodObservation, old: Option<&Value>, now: &str) -> Value {
    let phase = phase(o);
    let statuses: Vec<Value> = o.containers.iter().map(container_status).collect();
    let unready: Vec<&str> = statuses
        .iter()
        .filter(|s| s["ready"] != json!(true))
        .filter_map(|s| s["name"].as_str())
        .collect();
    let ready = unready.is_empty() && !statuses.is_empty();
    let (reason, message) = if ready {
        (None, None)
    } else if phase == "Succeeded" || phase == "Failed" {
        (Some("PodCompleted"), None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let old_condition = |kind: &str| -> Option<&Value> {
        old?.get("conditions")?
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
    };
    let condition = |kind: &str, status: bool, reason: Option<&str>, message: Option<&str>| {
        let status = if status { "True" } else { "False" };
        let since = old_condition(kind)
            .filter(|c| c["status"] == status)
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now));
        let mut c = Map::new();
        c.insert("type".into(), json!(kind));
        c.insert("status".into(), json!(status));
        c.insert("lastTransitionTime".into(), since);
        if let Some(r) = reason {
            c.insert("reason".into(), json!(r));
        }
        if let Some(m) = message {
            c.insert("message".into(), json!(m));
        }
        Value::Object(c)
    };
    let mut status = json!({
        "phase": phase,
        "conditions": [
            condition("Initialized", true, None, None),
            condition("Ready", ready, reason, message.as_deref()),
            condition("ContainersReady", ready, reason, message.as_deref()),
            condition("PodScheduled", true, None, None),
        ],
        "containerStatuses": statuses,
        "qosClass": old.and_then(|s| s.get("qosClass")).cloned().unwrap_or_else(|| json!("BestEffort")),
    });
    if let Some(ip) = &o.host_ip {
        status["hostIP"] = json!(ip);
        status["hostIPs"] = json!([{"ip": ip}]);
    }
    if let Some(ip) = &o.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    if let Some(t) = &o.start_time {
        status["startTime"] = json!(t);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32, attempt: u32) -> Instance {
        Instance {
            id: format!("c{attempt}"),
            image_id: "sha256:1".into(),
            attempt,
            state: RunState::Exited {
                exit_code: code,
                reason: String::new(),
                message: String::new(),
                started_at: 1_700_000_000_000_000_000,
                finished_at: 1_700_000_001_000_000_000,
            },
        }
    }

    fn running(attempt: u32) -> Instance {
        Instance {
            id: format!("c{attempt}"),
            image_id: "sha256:1".into(),
            attempt,
            state: RunState::Running {
                started_at: 1_700_000_000_000_000_000,
            },
        }
    }

    fn pod(policy: &str, containers: Vec<Observed>) -> PodObservation {
        PodObservation {
            containers,
            restart_policy: policy.into(),
            ..Default::default()
        }
    }

    fn one(current: Option<Instance>, waiting: Option<(&str, &str)>) -> Observed {
        Observed {
            name: "app".into(),
            image: "mube.local/busybox".into(),
            current,
            previous: None,
            waiting: waiting.map(|(r, m)| (r.into(), m.into())),
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        assert_eq!(
            phase(&pod(
                "Always",
                vec![one(None, Some(("ContainerCreating", "")))]
            )),
            "Pending"
        );
        assert_eq!(
            phase(&pod("Always", vec![one(Some(running(0)), None)])),
            "Running"
        );
        assert_eq!(
            phase(&pod("Never", vec![one(Some(exited(0, 0)), None)])),
            "Succeeded"
        );
        assert_eq!(
            phase(&pod("Never", vec![one(Some(exited(1, 0)), None)])),
            "Failed"
        );
        assert_eq!(
            phase(&pod("OnFailure", vec![one(Some(exited(0, 0)), None)])),
            "Succeeded"
        );
        // Crash looping under Always: Running, shown as CrashLoopBackOff.
        let looping = one(
            Some(exited(1, 3)),
            Some(("CrashLoopBackOff", "back-off 40s")),
        );
        assert_eq!(phase(&pod("Always", vec![looping.clone()])), "Running");
        let s = pod_status(&pod("Always", vec![looping]), None, "2026-01-01T00:00:00Z");
        let c = &s["containerStatuses"][0];
        assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(c["restartCount"], 3);
    }

    #[test]
    fn conditions_keep_their_transition_times() {
        let o = pod("Always", vec![one(Some(running(0)), None)]);
        let first = pod_status(&o, None, "2026-01-01T00:00:00Z");
        assert_eq!(first["phase"], "Running");
        let ready = first["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        let again = pod_status(&o, Some(&first), "2026-01-01T00:05:00Z");
        assert_eq!(first, again, "an unchanged pod writes the same status");
        let failed = pod_status(
            &pod("Never", vec![one(Some(exited(2, 0)), None)]),
            Some(&first),
            "2026-01-01T00:06:00Z",
        );
        assert_eq!(failed["phase"], "Failed");
        let ready = failed["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "PodCompleted");
        assert_eq!(ready["lastTransitionTime"], "2026-01-01T00:06:00Z");
        assert_eq!(
            failed["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            2
        );
    }
}
