//! Service cluster IPs and node ports: given out at a Service's write,
//! never one another Service holds, free again once no Service holds it.
//!
//! What is held is learnt from the store itself: the Services listed at
//! start, then a watch of every change to them. A delete (or a change of
//! type that drops node ports) frees its values when its event arrives, on
//! every API server that shares the store, with no hook in the delete path.
//! A write in flight holds its values as `Pending` until its event shows
//! them held by the Service, so two writes at once never get the same one.
//!
//! Kubernetes keeps these allocations as bitmaps (or IPAddress objects) in
//! etcd, written in the same request. Here, with several API servers on
//! one etcd, two servers giving a value out in the same few milliseconds
//! could both give it; the second holder is then logged, as Kubernetes'
//! repair loop reports one.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use mube_apis::validation::FieldError;
use serde_json::{json, Value};

use super::Resource;
use crate::error::ApiError;
use crate::store::{ReadAt, Store};
use mube_apis::status::Reason;

/// Where Services are stored.
const PREFIX: &str = "/registry/services/";

/// An IPv4 range Services' cluster IPs come from (`serviceCIDR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidr {
    base: u32,
    prefix: u8,
}

impl std::fmt::Display for ServiceCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl ServiceCidr {
    pub fn parse(text: &str) -> Result<ServiceCidr, String> {
        let bad = || format!("{text:?} is not an IPv4 CIDR such as 10.96.0.0/16");
        let (ip, prefix) = text.trim().split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        // Kubernetes allows at most a /12 (a 20-bit range) for IPv4.
        if !(12..=29).contains(&prefix) {
            return Err(format!("{text:?}: the prefix must be between /12 and /29"));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(ServiceCidr {
            base: u32::from(ip) & mask,
            prefix,
        })
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    /// Whether `ip` may be given out: in the range, and neither its
    /// network nor its broadcast address.
    fn usable(&self, ip: u32) -> bool {
        ip > self.base && ip < self.base + self.size() - 1
    }

    /// The range's first usable address: the `kubernetes` Service's.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }
}

/// The ports NodePort Services are given (`serviceNodePortRange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePortRange {
    pub first: u16,
    pub last: u16,
}

impl std::fmt::Display for NodePortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl NodePortRange {
    pub fn parse(text: &str) -> Result<NodePortRange, String> {
        let bad = || format!("{text:?} is not a port range such as 30000-32767");
        let (first, last) = text.trim().split_once('-').ok_or_else(bad)?;
        let (first, last): (u16, u16) = (
            first.trim().parse().map_err(|_| bad())?,
            last.trim().parse().map_err(|_| bad())?,
        );
        if first == 0 || first > last {
            return Err(bad());
        }
        Ok(NodePortRange { first, last })
    }

    fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    /// Held by the Service stored under this key.
    Service(Arc<str>),
    /// Taken by a write in flight (this token), or one that succeeded and
    /// whose event has not arrived yet (`kept`).
    Pending { token: u64, kept: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    Ip(u32),
    Port(u16),
}

#[derive(Default)]
struct State {
    held: HashMap<Slot, Holder>,
    /// What each stored Service holds, as its last event showed.
    by_service: HashMap<Arc<str>, Vec<Slot>>,
    next_token: u64,
}

impl State {
    fn free(&self, v: Slot) -> bool {
        !self.held.contains_key(&v)
    }

    /// What a stored Service's event shows it holding now.
    fn observe(&mut self, key: &Arc<str>, service: Option<&Value>) {
        let now = service.map(held_by).unwrap_or_default();
        for old in self.by_service.remove(key).unwrap_or_default() {
            if !now.contains(&old) && self.held.get(&old) == Some(&Holder::Service(key.clone())) {
                self.held.remove(&old);
            }
        }
        for v in &now {
            match self.held.get(v) {
                Some(Holder::Service(other)) if other != key => {
                    tracing::error!(service = %key, holder = %other, value = ?v, "two Services hold one cluster IP or node port (given out by two API servers at once); recreate one of them");
                }
                _ => {
                    self.held.insert(*v, Holder::Service(key.clone()));
                }
            }
        }
        if !now.is_empty() {
            self.by_service.insert(key.clone(), now);
        }
    }
}

/// The cluster IPs and node ports a stored Service holds.
fn held_by(service: &Value) -> Vec<Slot> {
    let mut values: Vec<Slot> = cluster_ips(service)
        .iter()
        .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
        .map(|ip| Slot::Ip(u32::from(ip)))
        .collect();
    values.extend(node_ports(service).into_iter().map(Slot::Port));
    values
}

fn cluster_ips(service: &Value) -> Vec<String> {
    let listed: Vec<String> = service
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    service
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .filter(|ip| !ip.is_empty())
        .map(|ip| vec![ip.to_string()])
        .unwrap_or_default()
}

fn ports_of(service: &Value) -> impl Iterator<Item = &Value> {
    service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn node_ports(service: &Value) -> Vec<u16> {
    ports_of(service)
        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
        .filter_map(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .collect()
}

/// Whether a Service of this type gets node ports.
pub fn needs_node_ports(service: &Value) -> bool {
    matches!(
        service.pointer("/spec/type").and_then(Value::as_str),
        Some("NodePort" | "LoadBalancer")
    )
}

fn type_of(service: &Value) -> &str {
    service
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

pub struct ServiceRanges {
    cidr: ServiceCidr,
    ports: NodePortRange,
    state: Mutex<State>,
}

/// A value taken for a write: given back when dropped, unless the write
/// succeeded (`keep`); then the Service's event takes it over.
pub struct Reservation<'a> {
    ranges: &'a ServiceRanges,
    value: Slot,
    token: u64,
}

impl Reservation<'_> {
    pub fn keep(self) {
        let mut state = self.ranges.state();
        if let Some(Holder::Pending { token, kept }) = state.held.get_mut(&self.value) {
            if *token == self.token {
                *kept = true;
            }
        }
        // Dropped now: finds it kept (or already the Service's).
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut state = self.ranges.state();
        if state.held.get(&self.value)
            == Some(&Holder::Pending {
                token: self.token,
                kept: false,
            })
        {
            state.held.remove(&self.value);
        }
    }
}

impl ServiceRanges {
    pub fn new(cidr: ServiceCidr, ports: NodePortRange) -> Arc<ServiceRanges> {
        Arc::new(ServiceRanges {
            cidr,
            ports,
            state: Mutex::default(),
        })
    }

    pub fn cidr(&self) -> ServiceCidr {
        self.cidr
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads what the stored Services hold, then follows their changes in
    /// the background for as long as this allocator lives.
    pub async fn start(self: &Arc<Self>, store: Arc<dyn Store>) -> Result<(), ApiError> {
        let revision = self.relist(store.as_ref()).await?;
        tokio::spawn(follow(Arc::downgrade(self), store, revision));
        Ok(())
    }

    async fn relist(&self, store: &dyn Store) -> Result<u64, ApiError> {
        let list = store.list(PREFIX, ReadAt::Newest).await?;
        let mut state = self.state();
        // Writes in flight keep theirs; everything else is as listed.
        state
            .held
            .retain(|_, h| matches!(h, Holder::Pending { kept: false, .. }));
        state.by_service.clear();
        for item in &list.items {
            if let Ok(service) = item.value() {
                state.observe(&item.key, Some(&service));
            }
        }
        Ok(list.revision)
    }

    fn take(&self, state: &mut State, v: Slot) -> Reservation<'_> {
        state.next_token += 1;
        let token = state.next_token;
        state.held.insert(v, Holder::Pending { token, kept: false });
        Reservation {
            ranges: self,
            value: v,
            token,
        }
    }

    /// Gives `service` (being created, or changed from `old`) the cluster
    /// IP and node ports it needs and has not got: the ones it asks for, if
    /// free and in range, else the next free ones. Sets `clusterIP`,
    /// `clusterIPs`, the IP family fields and each port's `nodePort`.
    pub fn assign(
        &self,
        r: &Resource,
        service: &mut Value,
        old: Option<&Value>,
    ) -> Result<Vec<Reservation<'_>>, ApiError> {
        let name = super::name_of(service).to_string();
        let invalid = |field: &str, message: String| {
            ApiError::invalid(r, &name, vec![FieldError::new(field, message)])
        };
        let mut taken = Vec::new();
        let mut state = self.state();
        let old_ips = old.map(cluster_ips).unwrap_or_default();
        let old_ports = old.map(node_ports).unwrap_or_default();
        if type_of(service) == "ExternalName" {
            if let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) {
                // Validation refuses one asked for; none is given.
                if spec.get("clusterIP").and_then(Value::as_str) == Some("") {
                    spec.remove("clusterIP");
                }
            }
        } else {
            let asked = cluster_ips(service).into_iter().next();
            let ip = match asked.as_deref() {
                Some("None") => "None".to_string(),
                // Kept as it was (an update that changes it is refused by
                // validation).
                Some(ip) if old_ips.iter().any(|o| o == ip) => ip.to_string(),
                Some(ip) => {
                    let not_allocated = |why: &str| {
                        invalid(
                            "spec.clusterIPs",
                            format!("Invalid value: []string{{{ip:?}}}: failed to allocate IP {ip}: {why}"),
                        )
                    };
                    let Ok(parsed) = ip.parse::<Ipv4Addr>() else {
                        return Err(invalid(
                            "spec.clusterIPs[0]",
                            format!("Invalid value: {ip:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"),
                        ));
                    };
                    let v = u32::from(parsed);
                    if !self.cidr.usable(v) {
                        return Err(not_allocated(&format!(
                            "provided IP is not in the valid range. The range of valid IPs is {}",
                            self.cidr
                        )));
                    }
                    if !state.free(Slot::Ip(v)) {
                        return Err(not_allocated("provided IP is already allocated"));
                    }
                    taken.push(self.take(&mut state, Slot::Ip(v)));
                    ip.to_string()
                }
                None => {
                    // From a random place on, so that API servers sharing a
                    // store seldom pick the same one at once.
                    let size = self.cidr.size();
                    let start = fastrand::u32(0..size);
                    let found = (0..size)
                        .map(|i| self.cidr.base + (start + i) % size)
                        .find(|v| self.cidr.usable(*v) && state.free(Slot::Ip(*v)));
                    let Some(v) = found else {
                        return Err(ApiError::new(
                            Reason::InternalError,
                            format!(
                                "failed to allocate a serviceIP: range is full ({})",
                                self.cidr
                            ),
                        ));
                    };
                    taken.push(self.take(&mut state, Slot::Ip(v)));
                    Ipv4Addr::from(v).to_string()
                }
            };
            if let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert("clusterIPs".into(), json!([ip]));
                spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
                spec.entry("ipFamilyPolicy")
                    .or_insert_with(|| json!("SingleStack"));
            }
        }
        if needs_node_ports(service) {
            let mut given: Vec<u16> = Vec::new();
            let count = ports_of(service).count();
            for i in 0..count {
                let asked = service
                    .pointer(&format!("/spec/ports/{i}/nodePort"))
                    .and_then(Value::as_u64)
                    .filter(|p| *p != 0);
                let port = match asked {
                    Some(p) => {
                        let field = format!("spec.ports[{i}].nodePort");
                        let Some(port) = u16::try_from(p).ok().filter(|p| self.ports.contains(*p))
                        else {
                            return Err(invalid(
                                &field,
                                format!("Invalid value: {p}: provided port is not in the valid range. The range of valid ports is {}", self.ports),
                            ));
                        };
                        // One service may name a port twice (TCP and UDP).
                        if !old_ports.contains(&port) && !given.contains(&port) {
                            if !state.free(Slot::Port(port)) {
                                return Err(invalid(
                                    &field,
                                    format!(
                                        "Invalid value: {port}: provided port is already allocated"
                                    ),
                                ));
                            }
                            taken.push(self.take(&mut state, Slot::Port(port)));
                        }
                        port
                    }
                    None => {
                        let span = u32::from(self.ports.last - self.ports.first) + 1;
                        let start = fastrand::u32(0..span);
                        let found = (0..span)
                            .map(|k| self.ports.first + ((start + k) % span) as u16)
                            .find(|p| state.free(Slot::Port(*p)));
                        let Some(port) = found else {
                            return Err(ApiError::new(
                                Reason::InternalError,
                                format!(
                                    "failed to allocate a nodePort: range is full ({})",
                                    self.ports
                                ),
                            ));
                        };
                        taken.push(self.take(&mut state, Slot::Port(port)));
                        port
                    }
                };
                given.push(port);
                if let Some(entry) = service
                    .pointer_mut(&format!("/spec/ports/{i}"))
                    .and_then(Value::as_object_mut)
                {
                    entry.insert("nodePort".into(), json!(port));
                }
            }
        }
        Ok(taken)
    }
}

/// Follows every change to Services from `revision` on; after a broken or
/// expired watch, lists again. Ends when the allocator is gone.
async fn follow(ranges: Weak<ServiceRanges>, store: Arc<dyn Store>, mut revision: u64) {
    // A broken watch is not resumed: Services are few, and a fresh list
    // cannot miss a change.
    loop {
        match store.watch(PREFIX, revision) {
            Ok(mut events) => {
                while let Some(event) = events.next().await {
                    let Ok(event) = event else { break };
                    let Some(ranges) = ranges.upgrade() else {
                        return;
                    };
                    let service = event.after().and_then(|o| o.value().ok());
                    ranges.state().observe(&event.key, service.as_ref());
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot watch Services for their cluster IPs"),
        }
        loop {
            if ranges.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Some(r) = ranges.upgrade() else { return };
            match r.relist(store.as_ref()).await {
                Ok(at) => {
                    revision = at;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list Services for their cluster IPs; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ty: &str, ip: Option<&str>, node_ports: &[u16]) -> Value {
        let ports: Vec<Value> = if node_ports.is_empty() {
            vec![json!({"port": 80, "protocol": "TCP"})]
        } else {
            node_ports
                .iter()
                .enumerate()
                .map(|(i, p)| json!({"name": format!("p{i}"), "port": 80 + i, "protocol": "TCP", "nodePort": p}))
                .collect()
        };
        let mut s = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"type": ty, "ports": ports}});
        if let Some(ip) = ip {
            s["spec"]["clusterIP"] = json!(ip);
        }
        s
    }

    fn ranges() -> Arc<ServiceRanges> {
        ServiceRanges::new(
            ServiceCidr::parse("10.96.0.0/29").unwrap(),
            NodePortRange::parse("30000-30002").unwrap(),
        )
    }

    fn resource() -> Resource {
        super::super::service::resource()
    }

    #[test]
    fn values_are_given_once_and_free_again_when_the_event_says_so() {
        let (ranges, r) = (ranges(), resource());
        // A /29 has six usable addresses.
        let mut kept = Vec::new();
        for i in 0..6 {
            let mut s = service("ClusterIP", None, &[]);
            let taken = ranges.assign(&r, &mut s, None).unwrap();
            assert_eq!(taken.len(), 1);
            let ip: Ipv4Addr = s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
            assert!(ranges.cidr.usable(u32::from(ip)), "{ip}");
            assert_eq!(s["spec"]["clusterIPs"], json!([ip.to_string()]));
            taken.into_iter().for_each(Reservation::keep);
            let key: Arc<str> = format!("/registry/services/default/s{i}").into();
            ranges.state().observe(&key, Some(&s));
            kept.push((key, s));
        }
        let e = ranges
            .assign(&r, &mut service("ClusterIP", None, &[]), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("range is full"), "{e}");
        // A failed write gives back what it took.
        let (key, s) = kept.pop().unwrap();
        let ip = s["spec"]["clusterIP"].as_str().unwrap().to_string();
        ranges.state().observe(&key, None);
        {
            let mut again = service("ClusterIP", Some(&ip), &[]);
            let taken = ranges.assign(&r, &mut again, None).unwrap();
            drop(taken);
        }
        let mut again = service("ClusterIP", Some(&ip), &[]);
        ranges.assign(&r, &mut again, None).unwrap();
        // Asked for, but held or outside.
        let held = kept[0].1["spec"]["clusterIP"].as_str().unwrap().to_string();
        let e = ranges
            .assign(&r, &mut service("ClusterIP", Some(&held), &[]), None)
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("provided IP is already allocated"),
            "{e}"
        );
        let e = ranges
            .assign(&r, &mut service("ClusterIP", Some("10.0.0.1"), &[]), None)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("The range of valid IPs is 10.96.0.0/29"),
            "{e}"
        );
        // Headless takes nothing.
        let mut headless = service("ClusterIP", Some("None"), &[]);
        assert!(ranges.assign(&r, &mut headless, None).unwrap().is_empty());
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
    }

    #[test]
    fn node_ports_are_given_kept_on_update_and_checked() {
        let (ranges, r) = (ranges(), resource());
        let mut s = service("NodePort", Some("None"), &[0, 0]);
        let taken = ranges.assign(&r, &mut s, None).unwrap();
        assert_eq!(taken.len(), 2);
        let ports = node_ports(&s);
        assert_eq!(ports.len(), 2);
        assert_ne!(ports[0], ports[1]);
        taken.into_iter().for_each(Reservation::keep);
        let key: Arc<str> = "/registry/services/default/web".into();
        ranges.state().observe(&key, Some(&s));
        // An update that keeps them takes nothing.
        let mut same = s.clone();
        assert!(ranges.assign(&r, &mut same, Some(&s)).unwrap().is_empty());
        let e = ranges
            .assign(
                &r,
                &mut service("NodePort", Some("None"), &[ports[0]]),
                None,
            )
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("provided port is already allocated"),
            "{e}"
        );
        let e = ranges
            .assign(&r, &mut service("NodePort", Some("None"), &[80]), None)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("range of valid ports is 30000-30002"),
            "{e}"
        );
        // Changed to ClusterIP: the event frees them.
        let mut plain = s.clone();
        plain["spec"]["type"] = json!("ClusterIP");
        for p in plain["spec"]["ports"].as_array_mut().unwrap() {
            p.as_object_mut().unwrap().remove("nodePort");
        }
        ranges.state().observe(&key, Some(&plain));
        let mut three = service("NodePort", Some("None"), &[0, 0, 0]);
        assert_eq!(ranges.assign(&r, &mut three, None).unwrap().len(), 3);
    }

    #[test]
    fn ranges_parse_as_configured() {
        assert!(ServiceCidr::parse("10.96.0.0/8").is_err());
        assert_eq!(
            ServiceCidr::parse("10.96.3.4/16").unwrap().first(),
            Ipv4Addr::new(10, 96, 0, 1)
        );
        assert!(NodePortRange::parse("32767-30000").is_err());
        assert!(NodePortRange::parse("30000").is_err());
        assert_eq!(
            NodePortRange::parse("30000-32767").unwrap().to_string(),
            "30000-32767"
        );
    }
}
