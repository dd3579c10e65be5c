//! What pods ask for and nodes offer, in the units the filters and scores
//! compare: CPU in millicores, memory in bytes, pods by count.

use k8s_openapi::api::core::v1::{Node, Pod};
use mube_apis::quantity;

/// CPU (millicores) and memory (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    pub cpu: i128,
    pub memory: i128,
}

impl std::ops::Add for Amount {
    type Output = Amount;

    fn add(self, other: Amount) -> Amount {
        // Saturating: the server bounds each quantity, not their sums.
        Amount {
            cpu: self.cpu.saturating_add(other.cpu),
            memory: self.memory.saturating_add(other.memory),
        }
    }
}

/// The sum of a pod's containers' requests.
pub fn requests(pod: &Pod) -> Amount {
    let mut total = Amount::default();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    for c in containers {
        let asks = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let get = |name: &str, read: fn(&str) -> Option<i128>| {
            asks.and_then(|r| r.get(name))
                .and_then(|q| read(&q.0))
                .unwrap_or(0)
        };
        total = total
            + Amount {
                cpu: get("cpu", quantity::milli).max(0),
                memory: get("memory", quantity::units).max(0),
            };
    }
    total
}

/// A node's allocatable CPU and memory, and pods (capacity when
/// allocatable is not reported).
pub fn allocatable(node: &Node) -> (Amount, i128) {
    let status = node.status.as_ref();
    let table = status
        .and_then(|s| s.allocatable.as_ref())
        .or_else(|| status.and_then(|s| s.capacity.as_ref()));
    let get = |name: &str, read: fn(&str) -> Option<i128>| {
        table
            .and_then(|t| t.get(name))
            .and_then(|q| read(&q.0))
            .unwrap_or(0)
    };
    (
        Amount {
            cpu: get("cpu", quantity::milli),
            memory: get("memory", quantity::units),
        },
        get("pods", quantity::units),
    )
}

/// Whether a pod still holds its node's resources: not Succeeded or Failed.
pub fn holds_resources(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}
