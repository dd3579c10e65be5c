//! Pod CIDRs for nodes: every node gets a /24 out of the cluster CIDR
//! (`clusterCIDR`) as its `spec.podCIDR` (and `podCIDRs`), never one
//! another node holds. The node agent writes its CNI config for that
//! range. A node keeps its range for life; a deleted node's is free again.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use serde_json::{json, Value};

use std::sync::Arc;

use super::Registry;
use crate::error::ApiError;
use crate::store::{Preconditions, ReadAt, Store, StoreError};

/// An IPv4 cluster CIDR, cut into /24s (or into the CIDR itself when it
/// is smaller than a /24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCidr {
    base: u32,
    prefix: u8,
}

impl std::fmt::Display for ClusterCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
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

    /// Whether `text` is one of the node ranges: a /node_prefix inside
    /// the cluster CIDR, on its boundary.
    fn is_node_range(&self, text: &str) -> bool {
        let Some((ip, prefix)) = text.split_once('/') else {
            return false;
        };
        let (Ok(ip), Ok(prefix)) = (ip.parse::<Ipv4Addr>(), prefix.parse::<u8>()) else {
            return false;
        };
        let ip = u32::from(ip);
        let cluster_mask = u32::MAX << (32 - self.prefix);
        let node_mask = u32::MAX << (32 - self.node_prefix());
        prefix == self.node_prefix() && ip & cluster_mask == self.base && ip & !node_mask == 0
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
/// store at start (`Registry::start_pod_cidrs`) and kept here.
///
/// When API servers share the store (etcd), each range is also claimed in
/// it, under `/registry/ranges/podcidrs/<range>`, by a create that fails if
/// another server's node holds it (Kubernetes keeps its Service IP
/// allocations in etcd the same way, under `/registry/ranges/`). A server's
/// own set then only saves it asking for ranges it knows are taken.
pub struct PodCidrs {
    cidr: ClusterCidr,
    used: Mutex<HashSet<String>>,
    exhausted: std::sync::atomic::AtomicBool,
    /// The shared store the claims are made in, when there is one.
    claims: Option<Arc<dyn Store>>,
}

/// Where the claim on `range` is kept.
fn claim_key(range: &str) -> String {
    format!("/registry/ranges/podcidrs/{}", range.replace('/', "-"))
}

/// What a claim says: whose range it is.
fn claim(range: &str, node: &str) -> Value {
    json!({"metadata": {"name": range.replace('/', "-")}, "range": range, "node": node})
}

pub fn pod_cidr(node: &Value) -> Option<&str> {
    node.pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
}

/// A stored Node's `spec.podCIDR`, read without building the whole Node:
/// this runs over every node at start, and at 100,000 nodes decoding each
/// into a `Value` would cost the restart a good part of its 2 s budget.
fn stored_range(json: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct NodeView {
        #[serde(default)]
        spec: Option<SpecView>,
    }
    #[derive(serde::Deserialize)]
    struct SpecView {
        #[serde(default, rename = "podCIDR")]
        pod_cidr: Option<String>,
    }
    serde_json::from_slice::<NodeView>(json)
        .ok()?
        .spec?
        .pod_cidr
        .filter(|c| !c.is_empty())
}

/// A range taken for a node being created: given back when dropped, unless
/// the create succeeded (`keep`), so that a failed or abandoned create
/// (a request cancelled at its timeout) leaks nothing.
pub struct Reservation<'a> {
    cidrs: Option<&'a PodCidrs>,
    range: Option<String>,
    /// Whether this reservation made the range's claim in the shared store
    /// (and so gives it up when dropped). A claim the node already held
    /// (another server's create of the same node won) is not its to give.
    claimed: bool,
}

impl Reservation<'_> {
    pub fn none() -> Reservation<'static> {
        Reservation {
            cidrs: None,
            range: None,
            claimed: false,
        }
    }

    pub fn keep(mut self) {
        self.range = None;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let (Some(cidrs), Some(range)) = (self.cidrs, self.range.take()) {
            cidrs.give_back(&range, self.claimed);
        }
    }
}

/// Outcome of claiming a range in the shared store.
enum Claimed {
    /// Claimed now, for this node.
    Made,
    /// Claimed before for this node (by another server's create of it, or
    /// an earlier try).
    Held,
    /// Another server's node holds it.
    Taken,
}

fn set_range(node: &mut Value, range: &str) {
    if let Some(spec) = node
        .as_object_mut()
        .map(|o| o.entry("spec").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    {
        spec.insert("podCIDR".into(), json!(range));
        spec.insert("podCIDRs".into(), json!([range]));
    }
}

impl PodCidrs {
    /// `claims`: the store, when other API servers share it.
    pub fn new(cidr: ClusterCidr, claims: Option<Arc<dyn Store>>) -> PodCidrs {
        PodCidrs {
            cidr,
            used: Default::default(),
            exhausted: Default::default(),
            claims,
        }
    }

    /// Claims `range` for `node` in the shared store (nothing to do
    /// without one). A claim this node already holds (a create tried
    /// again) counts as made.
    async fn claim(&self, range: &str, node: &str) -> Result<Claimed, ApiError> {
        let Some(store) = &self.claims else {
            return Ok(Claimed::Made);
        };
        let key = claim_key(range);
        match store.create(&key, claim(range, node)).await {
            Ok(_) => Ok(Claimed::Made),
            Err(StoreError::AlreadyExists { .. }) => {
                let holder = store
                    .get(&key)
                    .await?
                    .and_then(|c| c.value().ok())
                    .and_then(|c| c.get("node").and_then(Value::as_str).map(str::to_string));
                Ok(if holder.as_deref() == Some(node) {
                    Claimed::Held
                } else {
                    Claimed::Taken
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the claim on `range` up, in the background: called where
    /// nothing may wait (a delete that has happened, a dropped create).
    fn unclaim(&self, range: &str) {
        let (Some(store), Ok(runtime)) = (&self.claims, tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let (store, key) = (store.clone(), claim_key(range));
        runtime.spawn(async move {
            match store.delete(&key, &Preconditions::default()).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "cannot give a pod range's claim up; it stays taken")
                }
            }
        });
    }

    fn used(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the ranges the stored nodes hold, and gives one to each node
    /// stored without (made before ranges were given at create). Written
    /// straight to the store: this is the server's own start-up repair,
    /// which node updates from clients may not do.
    pub async fn start(&self, registry: &Registry) -> Result<(), ApiError> {
        let nodes = registry.resource(&mube_apis::resources::NODES)?;
        let (items, _) = registry
            .list(&nodes, None, &super::Filter::default(), ReadAt::Newest)
            .await?;
        let mut without = Vec::new();
        let mut held = Vec::new();
        {
            let mut used = self.used();
            for item in &items {
                match stored_range(&item.json) {
                    Some(c) => {
                        used.insert(c.clone());
                        held.push((c, item.key.clone()));
                    }
                    None => without.push(item.key.clone()),
                }
            }
        }
        // On a shared store, every range a node holds is claimed (nodes
        // stored before the claims existed get theirs now), so that a
        // server that reads the claims counts it.
        if self.claims.is_some() {
            for (range, key) in held {
                let name = key.rsplit('/').next().unwrap_or_default();
                if let Claimed::Taken = self.claim(&range, name).await? {
                    tracing::warn!(node = %name, range = %range, "a node holds a pod range claimed for another node");
                }
            }
        }
        for key in without {
            let name = key.rsplit('/').next().unwrap_or_default();
            // Until a range is claimed for it: one another server holds is
            // counted as used, and the next is tried.
            let (reservation, range) = loop {
                let mut reservation = self.take_next();
                let Some(range) = reservation.range.clone() else {
                    return Ok(());
                };
                match self.claim(&range, name).await? {
                    Claimed::Taken => reservation.keep(),
                    claimed => {
                        reservation.claimed = matches!(claimed, Claimed::Made);
                        break (reservation, range);
                    }
                }
            };
            let mut ours = false;
            let updated = crate::store::guaranteed_update(
                registry.store().as_ref(),
                &key,
                |_, mut node| -> Result<_, crate::store::StoreError> {
                    // Another server's repair may have given it one first.
                    ours = false;
                    if pod_cidr(&node).is_some() {
                        return Ok(None);
                    }
                    set_range(&mut node, &range);
                    ours = true;
                    Ok(Some(node))
                },
            )
            .await;
            // Otherwise dropped: the range, and a claim made here, are free.
            if updated.is_ok() && ours {
                reservation.keep();
            }
        }
        Ok(())
    }

    fn take_next(&self) -> Reservation<'_> {
        let mut used = self.used();
        let Some(range) = self.cidr.next_free(&used) else {
            // Said once, not once per node: a big cluster on a small range
            // would otherwise log every node.
            if !self.exhausted.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    "clusterCIDR has no free pod range left: new nodes get no podCIDR (and their pods no network); use a larger clusterCIDR"
                );
            }
            return Reservation::none();
        };
        used.insert(range.clone());
        Reservation {
            cidrs: Some(self),
            range: Some(range),
            claimed: false,
        }
    }

    /// Gives `node` the next free range, unless it names one itself: that
    /// must be one of clusterCIDR's node ranges that no other node holds.
    pub async fn assign(
        &self,
        resource: &super::Resource,
        node: &mut Value,
    ) -> Result<Reservation<'_>, ApiError> {
        let name = crate::registry::name_of(node).to_string();
        if let Some(own) = pod_cidr(node).map(str::to_string) {
            let refuse = |why: String| {
                ApiError::invalid(
                    resource,
                    crate::registry::name_of(node),
                    vec![mube_apis::validation::FieldError::new(
                        "spec.podCIDR",
                        format!("Invalid value: {own:?}: {why}"),
                    )],
                )
            };
            if !self.cidr.is_node_range(&own) {
                return Err(refuse(format!(
                    "must be one of clusterCIDR's /{} ranges ({})",
                    self.cidr.node_prefix(),
                    self.cidr
                )));
            }
            if !self.used().insert(own.clone()) {
                return Err(refuse("already in use by another node".into()));
            }
            let mut reservation = Reservation {
                cidrs: Some(self),
                range: Some(own.clone()),
                claimed: false,
            };
            match self.claim(&own, &name).await? {
                Claimed::Taken => {
                    // Held through another API server: it stays counted here.
                    reservation.keep();
                    return Err(refuse("already in use by another node".into()));
                }
                claimed => reservation.claimed = matches!(claimed, Claimed::Made),
            }
            set_range(node, &own);
            return Ok(reservation);
        }
        let mut refreshed = false;
        loop {
            let mut reservation = self.take_next();
            let Some(range) = reservation.range.clone() else {
                // Ranges this server counted as taken may have been freed
                // through another server: read the claims once, then try
                // again.
                if !refreshed && self.refresh_from_claims().await? {
                    refreshed = true;
                    continue;
                }
                return Ok(reservation);
            };
            match self.claim(&range, &name).await {
                Ok(claimed @ (Claimed::Made | Claimed::Held)) => {
                    reservation.claimed = matches!(claimed, Claimed::Made);
                    set_range(node, &range);
                    return Ok(reservation);
                }
                // Taken through another API server: counted here from now
                // on, and the next one is tried.
                Ok(Claimed::Taken) => reservation.keep(),
                Err(e) => return Err(e),
            }
        }
    }

    /// With a shared store, replaces the ranges counted as used with the
    /// claims in it (each server's own count only learns of a range freed
    /// through another when it asks there). `false` without a shared store.
    async fn refresh_from_claims(&self) -> Result<bool, ApiError> {
        let Some(store) = &self.claims else {
            return Ok(false);
        };
        let claims = store
            .list("/registry/ranges/podcidrs/", ReadAt::Newest)
            .await?;
        let held: HashSet<String> = claims
            .items
            .iter()
            .filter_map(|c| c.value().ok())
            .filter_map(|c| c.get("range").and_then(Value::as_str).map(str::to_string))
            .collect();
        *self.used() = held;
        Ok(true)
    }

    /// A range free again: its node is gone.
    pub fn release(&self, range: &str) {
        self.give_back(range, true);
    }

    /// A range this server no longer counts as used; its claim in the
    /// shared store is given up too when `unclaim` (it was made for a node
    /// that is gone, or never created).
    fn give_back(&self, range: &str, unclaim: bool) {
        self.used().remove(range);
        self.exhausted.store(false, Ordering::Relaxed);
        if unclaim {
            self.unclaim(range);
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
        assert!(c.is_node_range("10.244.7.0/24"));
        assert!(!c.is_node_range("10.244.7.1/24"), "not on a boundary");
        assert!(!c.is_node_range("10.244.0.0/16"), "the whole cluster");
        assert!(!c.is_node_range("10.9.0.0/24"), "outside");
        assert!(!c.is_node_range("nonsense"));
        assert_eq!(c.to_string(), "10.244.0.0/16");
        assert_eq!(
            stored_range(
                br#"{"metadata":{"name":"n"},"spec":{"podCIDR":"10.244.3.0/24","taints":[]}}"#
            )
            .as_deref(),
            Some("10.244.3.0/24")
        );
        assert_eq!(
            stored_range(br#"{"metadata":{"name":"n"},"spec":{"podCIDR":""}}"#),
            None
        );
        assert_eq!(stored_range(br#"{"metadata":{"name":"n"}}"#), None);
    }
}
