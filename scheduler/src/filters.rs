//! The filters: a node takes a pod only if it is Ready and not cordoned,
//! has room (pods, CPU, memory), matches the pod's nodeSelector, and has no
//! taint the pod does not tolerate. Each refusal is named as Kubernetes
//! names it in `FailedScheduling`.

use k8s_openapi::api::core::v1::{Pod, Taint, Toleration};

use super::resources::requests;
use super::NodeInfo;

/// Why a node does not take a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unschedulable,
    NotReady,
    TooManyPods,
    InsufficientCpu,
    InsufficientMemory,
    NodeSelector,
    UntoleratedTaint,
}

impl Refusal {
    /// Kubernetes' words for it.
    pub fn text(self) -> &'static str {
        match self {
            Refusal::Unschedulable => "node(s) were unschedulable",
            Refusal::NotReady => "node(s) were not ready",
            Refusal::TooManyPods => "Too many pods",
            Refusal::InsufficientCpu => "Insufficient cpu",
            Refusal::InsufficientMemory => "Insufficient memory",
            Refusal::NodeSelector => "node(s) didn't match Pod's node affinity/selector",
            Refusal::UntoleratedTaint => "node(s) had untolerated taint(s)",
        }
    }
}

/// Every filter, in Kubernetes' order; the first refusal is the reason.
pub fn check(pod: &Pod, info: &NodeInfo) -> Result<(), Refusal> {
    ready_and_schedulable(info)?;
    selector(pod, info)?;
    taints(pod, info)?;
    fits(pod, info)
}

pub fn ready_and_schedulable(info: &NodeInfo) -> Result<(), Refusal> {
    let node = &info.node;
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        return Err(Refusal::Unschedulable);
    }
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if ready {
        Ok(())
    } else {
        Err(Refusal::NotReady)
    }
}

pub fn fits(pod: &Pod, info: &NodeInfo) -> Result<(), Refusal> {
    let room = info.allocatable;
    if info.pods + 1 > info.max_pods {
        return Err(Refusal::TooManyPods);
    }
    let asks = requests(pod);
    let total = info.requested + asks;
    if asks.cpu > 0 && total.cpu > room.cpu {
        return Err(Refusal::InsufficientCpu);
    }
    if asks.memory > 0 && total.memory > room.memory {
        return Err(Refusal::InsufficientMemory);
    }
    Ok(())
}

pub fn selector(pod: &Pod, info: &NodeInfo) -> Result<(), Refusal> {
    let wanted = pod.spec.as_ref().and_then(|s| s.node_selector.as_ref());
    let labels = info.node.metadata.labels.as_ref();
    let matches = wanted
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
    if matches {
        Ok(())
    } else {
        Err(Refusal::NodeSelector)
    }
}

/// Kubernetes' `ToleratesTaint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        // An empty key with Exists tolerates everything.
        "Exists" => true,
        "Equal" => {
            key == taint.key
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

pub fn taints(pod: &Pod, info: &NodeInfo) -> Result<(), Refusal> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let node_taints = info
        .node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    for taint in node_taints {
        // PreferNoSchedule is a preference, not a filter.
        if !matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute") {
            continue;
        }
        if !tolerations.iter().any(|t| tolerates(t, taint)) {
            return Err(Refusal::UntoleratedTaint);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod};
    use std::sync::Arc;

    #[test]
    fn a_cordoned_or_unready_node_takes_nothing() {
        let p = pod("p", "", "");
        let mut n = node("n", "1", "1Gi", "10");
        assert_eq!(check(&p, &n), Ok(()));
        Arc::make_mut(&mut n.node)
            .spec
            .as_mut()
            .unwrap()
            .unschedulable = Some(true);
        assert_eq!(check(&p, &n), Err(Refusal::Unschedulable));
        let mut n = node("n", "1", "1Gi", "10");
        Arc::make_mut(&mut n.node)
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "Unknown".into();
        assert_eq!(check(&p, &n), Err(Refusal::NotReady));
    }

    #[test]
    fn room_for_pods_cpu_and_memory_counts_only_live_pods() {
        let mut n = node("n", "1", "1Gi", "2");
        n.add(&pod("a", "600m", "512Mi"));
        assert_eq!(fits(&pod("p", "400m", "512Mi"), &n), Ok(()));
        assert_eq!(
            fits(&pod("p", "401m", ""), &n),
            Err(Refusal::InsufficientCpu)
        );
        assert_eq!(
            fits(&pod("p", "", "513Mi"), &n),
            Err(Refusal::InsufficientMemory)
        );
        // A finished pod takes no place.
        let mut done = pod("done", "1", "1Gi");
        done.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        n.add(&done);
        assert_eq!(fits(&pod("p", "", ""), &n), Ok(()));
        n.add(&pod("b", "", ""));
        assert_eq!(fits(&pod("p", "", ""), &n), Err(Refusal::TooManyPods));
    }

    #[test]
    fn node_selector_must_match_every_label() {
        let mut n = node("n", "1", "1Gi", "10");
        Arc::make_mut(&mut n.node).metadata.labels =
            Some([("disk".to_string(), "ssd".to_string())].into());
        let mut p = pod("p", "", "");
        p.spec.as_mut().unwrap().node_selector =
            Some([("disk".to_string(), "ssd".to_string())].into());
        assert_eq!(selector(&p, &n), Ok(()));
        p.spec.as_mut().unwrap().node_selector =
            Some([("disk".to_string(), "hdd".to_string())].into());
        assert_eq!(selector(&p, &n), Err(Refusal::NodeSelector));
    }

    #[test]
    fn taints_need_tolerations_as_kubernetes_matches_them() {
        let mut n = node("n", "1", "1Gi", "10");
        Arc::make_mut(&mut n.node).spec.as_mut().unwrap().taints = Some(vec![
            Taint {
                key: "dedicated".into(),
                value: Some("gpu".into()),
                effect: "NoSchedule".into(),
                time_added: None,
            },
            Taint {
                key: "soft".into(),
                value: None,
                effect: "PreferNoSchedule".into(),
                time_added: None,
            },
        ]);
        let mut p = pod("p", "", "");
        assert_eq!(taints(&p, &n), Err(Refusal::UntoleratedTaint));
        let toleration =
            |key: &str, op: &str, value: Option<&str>, effect: Option<&str>| Toleration {
                key: Some(key.into()).filter(|k: &String| !k.is_empty()),
                operator: Some(op.into()),
                value: value.map(str::to_string),
                effect: effect.map(str::to_string),
                toleration_seconds: None,
            };
        for (t, ok) in [
            (
                toleration("dedicated", "Equal", Some("gpu"), Some("NoSchedule")),
                true,
            ),
            (toleration("dedicated", "Equal", Some("cpu"), None), false),
            (toleration("dedicated", "Exists", None, None), true),
            (
                toleration("dedicated", "Exists", None, Some("NoExecute")),
                false,
            ),
            (toleration("", "Exists", None, None), true),
        ] {
            p.spec.as_mut().unwrap().tolerations = Some(vec![t.clone()]);
            assert_eq!(taints(&p, &n).is_ok(), ok, "{t:?}");
        }
    }
}
