//! The node IPAM controller, as kube-controller-manager's range
//! allocator: every node gets a /24 out of the cluster CIDR as its
//! `spec.podCIDR` (and `podCIDRs`), never one another node holds. The
//! node agent writes its CNI config for that range. A node keeps its range
//! for life; a deleted node's range is free again.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use futures::StreamExt;
use mube_apis::resources::NODES;
use mube_apis::watch::EventType;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::client::ApiClient;
use crate::error::ApiError;

/// An IPv4 cluster CIDR, cut into /24s (or into the CIDR itself when it
/// is smaller than a /24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCidr {
    base: u32,
    prefix: u8,
}

impl ClusterCidr {
    pub fn parse(text: &str) -> Result<ClusterCidr, String> {
        let bad = || format!("{text:?} is not an IPv4 CIDR such as 10.244.0.0/16");
        let (ip, prefix) = text.trim().split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=28).contains(&prefix) {
            return Err(format!("{text:?}: the prefix must be between /8 and /28"));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(ClusterCidr {
            base: u32::from(ip) & mask,
            prefix,
        })
    }

    fn node_prefix(&self) -> u8 {
        self.prefix.max(24)
    }

    /// How many node ranges there are.
    fn ranges(&self) -> u32 {
        1 << (self.node_prefix() - self.prefix)
    }

    fn range(&self, i: u32) -> String {
        let ip = Ipv4Addr::from(self.base + (i << (32 - self.node_prefix())));
        format!("{ip}/{}", self.node_prefix())
    }

    /// The first range not in `used`.
    pub fn next_free(&self, used: &HashSet<String>) -> Option<String> {
        (0..self.ranges())
            .map(|i| self.range(i))
            .find(|r| !used.contains(r))
    }
}

pub struct NodeIpam {
    client: Arc<dyn ApiClient>,
    cidr: ClusterCidr,
}

fn pod_cidr(node: &Value) -> Option<&str> {
    node.pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
}

fn name(node: &Value) -> Option<&str> {
    node.pointer("/metadata/name").and_then(Value::as_str)
}

impl NodeIpam {
    pub fn new(client: Arc<dyn ApiClient>, cidr: ClusterCidr) -> NodeIpam {
        NodeIpam { client, cidr }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        super::relist_until("node IPAM controller", &shutdown, || {
            self.list_and_watch(&shutdown)
        })
        .await
    }

    async fn list_and_watch(&self, shutdown: &CancellationToken) -> Result<(), ApiError> {
        let (items, rv) = self.client.list(&NODES, None).await?;
        let mut used = HashSet::new();
        let mut waiting = Vec::new();
        for item in items {
            let node = item?;
            match pod_cidr(&node) {
                Some(c) => {
                    used.insert(c.to_string());
                }
                None => waiting.extend(name(&node).map(str::to_string)),
            }
        }
        for node in waiting {
            self.assign(&node, &mut used).await?;
        }
        let mut events = self.client.watch(&NODES, None, &rv).await?;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                event = events.next() => match event {
                    Some(Ok(e)) => {
                        let node = &e.object;
                        match (e.type_, pod_cidr(node), name(node)) {
                            (EventType::Deleted, Some(c), _) => {
                                used.remove(c);
                            }
                            (EventType::Deleted, None, _) => {}
                            (_, Some(c), _) => {
                                used.insert(c.to_string());
                            }
                            (_, None, Some(n)) => {
                                let n = n.to_string();
                                self.assign(&n, &mut used).await?;
                            }
                            _ => {}
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(ApiError::new(mube_apis::status::Reason::InternalError, "node watch ended")),
                },
            }
        }
    }

    async fn assign(&self, node: &str, used: &mut HashSet<String>) -> Result<(), ApiError> {
        let Some(range) = self.cidr.next_free(used) else {
            tracing::error!(
                node,
                "the cluster CIDR has no free pod range left; the node's pods get no network"
            );
            return Ok(());
        };
        let mut object = match self.client.get(&NODES, None, node).await {
            Ok(o) => o,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Some(c) = pod_cidr(&object) {
            used.insert(c.to_string());
            return Ok(());
        }
        object["spec"]["podCIDR"] = json!(range);
        object["spec"]["podCIDRs"] = json!([range]);
        match self.client.update(&NODES, None, node, object).await {
            Ok(_) => {
                tracing::info!(node, pod_cidr = %range, "assigned a pod CIDR");
                used.insert(range);
                Ok(())
            }
            // Changed meanwhile: the watch brings it back.
            Err(e) if e.is_conflict() || e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_cut_in_order_and_never_twice() {
        let c = ClusterCidr::parse("10.244.0.0/16").unwrap();
        let mut used = HashSet::new();
        assert_eq!(c.next_free(&used).as_deref(), Some("10.244.0.0/24"));
        used.insert("10.244.0.0/24".to_string());
        assert_eq!(c.next_free(&used).as_deref(), Some("10.244.1.0/24"));
        assert_eq!(c.ranges(), 256);
        let small = ClusterCidr::parse("10.1.2.0/26").unwrap();
        assert_eq!(
            small.next_free(&HashSet::new()).as_deref(),
            Some("10.1.2.0/26")
        );
        assert!(ClusterCidr::parse("10.0.0.0").is_err());
        assert!(ClusterCidr::parse("10.0.0.0/4").is_err());
        assert!(ClusterCidr::parse("fd00::/64").is_err());
    }
}
