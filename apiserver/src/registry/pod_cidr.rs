//! Pod CIDRs for nodes: every node gets a /24 out of the cluster CIDR
//! (`clusterCIDR`) as its `spec.podCIDR` (and `podCIDRs`), never one
//! another node holds. The node agent writes its CNI config for that
//! range. A node keeps its range for life; a deleted node's is free again.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::Registry;
use crate::error::ApiError;
use crate::store::ReadAt;

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

/// Pod CIDRs given out, as kube-controller-manager's range allocator does,
/// but at the node's create: a Node is born with its `spec.podCIDR`, so
/// there is no second write per node (at 100,000 nodes, 100,000 writes and
/// events) and no window in which a client's update of a new Node
/// conflicts with the allocator's. The ranges in use are read from the
/// store at the first allocation and kept here; one API server owns them
/// (several API servers on one store will need the controller form).
pub struct PodCidrs {
    cidr: ClusterCidr,
    /// `None` until read from the store.
    used: tokio::sync::Mutex<Option<HashSet<String>>>,
    exhausted: std::sync::atomic::AtomicBool,
}

pub fn pod_cidr(node: &Value) -> Option<&str> {
    node.pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
}

impl PodCidrs {
    pub fn new(cidr: ClusterCidr) -> PodCidrs {
        PodCidrs {
            cidr,
            used: Default::default(),
            exhausted: Default::default(),
        }
    }

    /// Gives `node` the next free range, unless it names one itself
    /// (which is then counted as used). Returns the range it reserved, to
    /// `release` if the create fails.
    pub async fn assign(
        &self,
        registry: &Registry,
        node: &mut Value,
    ) -> Result<Option<String>, ApiError> {
        let mut used = self.used.lock().await;
        if used.is_none() {
            let nodes = registry.resource(&mube_apis::resources::NODES)?;
            let (items, _) = registry
                .list(&nodes, None, &super::Filter::default(), ReadAt::Newest)
                .await?;
            let mut seen = HashSet::new();
            for item in items {
                if let Some(c) = pod_cidr(&item.value()?) {
                    seen.insert(c.to_string());
                }
            }
            *used = Some(seen);
        }
        let used = used.get_or_insert_with(HashSet::new);
        if let Some(own) = pod_cidr(node) {
            // A range given by the client is its own to choose, but never
            // one another node holds.
            if !used.insert(own.to_string()) {
                let nodes = registry.resource(&mube_apis::resources::NODES)?;
                let name = crate::registry::name_of(node).to_string();
                return Err(ApiError::invalid(
                    &nodes,
                    &name,
                    vec![mube_apis::validation::FieldError::new(
                        "spec.podCIDR",
                        format!("Invalid value: {own:?}: already in use by another node"),
                    )],
                ));
            }
            return Ok(Some(own.to_string()));
        }
        let Some(range) = self.cidr.next_free(used) else {
            // Said once, not once per node: a big cluster on a small range
            // would otherwise log every node.
            if !self.exhausted.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    "clusterCIDR has no free pod range left: new nodes get no podCIDR (and their pods no network); use a larger clusterCIDR"
                );
            }
            return Ok(None);
        };
        used.insert(range.clone());
        if let Some(spec) = node
            .as_object_mut()
            .map(|o| o.entry("spec").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
        {
            spec.insert("podCIDR".into(), json!(range));
            spec.insert("podCIDRs".into(), json!([range]));
        }
        Ok(Some(range))
    }

    /// A range free again: its node is gone, or was never created.
    pub async fn release(&self, range: &str) {
        if let Some(used) = self.used.lock().await.as_mut() {
            used.remove(range);
            self.exhausted.store(false, Ordering::Relaxed);
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
