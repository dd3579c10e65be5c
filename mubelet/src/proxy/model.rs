//! What the node's rules must say, from the Services and EndpointSlices:
//! for each Service port with a cluster IP, its address, protocol, port,
//! node port, and the ready endpoints traffic is spread across. Pure, so
//! that the rules are tested without a kernel.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties a slice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(text: Option<&str>) -> Option<Protocol> {
        match text.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// As nft names it.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One Service port's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub cluster_ip: Ipv4Addr,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Ready endpoints, sorted, without duplicates.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// Every Service port, by `namespace/name/port-name/protocol`.
pub type Model = BTreeMap<String, ServicePort>;

/// The rules `services` and `slices` call for.
pub fn model(
    services: &HashMap<String, Arc<Service>>,
    slices: &HashMap<String, Arc<EndpointSlice>>,
) -> Model {
    // Slices by `namespace/service`.
    let mut by_service: HashMap<String, Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices.values() {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        if slice.address_type != "IPv4" {
            continue;
        }
        let ns = slice.metadata.namespace.as_deref().unwrap_or_default();
        by_service
            .entry(format!("{ns}/{service}"))
            .or_default()
            .push(slice);
    }
    let mut model = Model::new();
    let mut entries: Vec<(String, ServicePort)> = Vec::new();
    for service in services.values() {
        let Some(spec) = &service.spec else { continue };
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            // Headless and ExternalName Services take no rules.
            continue;
        };
        let ns = service.metadata.namespace.as_deref().unwrap_or_default();
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let own_slices = by_service
            .get(&format!("{ns}/{name}"))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for port in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else {
                continue;
            };
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let port_name = port.name.clone().unwrap_or_default();
            let mut endpoints: Vec<(Ipv4Addr, u16)> = Vec::new();
            for slice in own_slices {
                // The slice's port of this name and protocol.
                let Some(target) = slice.ports.iter().flatten().find(|p| {
                    p.name.clone().unwrap_or_default() == port_name
                        && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
                }) else {
                    continue;
                };
                let Some(target) = target.port.and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                for endpoint in &slice.endpoints {
                    // Kubernetes: an unset `ready` means ready.
                    let ready = endpoint
                        .conditions
                        .as_ref()
                        .and_then(|c| c.ready)
                        .unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    for address in &endpoint.addresses {
                        if let Ok(ip) = address.parse::<Ipv4Addr>() {
                            endpoints.push((ip, target));
                        }
                    }
                }
            }
            endpoints.sort();
            endpoints.dedup();
            let node_port = port
                .node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0);
            entries.push((
                format!("{ns}/{name}/{port_name}/{}", protocol.nft()),
                ServicePort {
                    cluster_ip,
                    protocol,
                    port: number,
                    node_port,
                    endpoints,
                },
            ));
        }
    }
    // One rule per address and per node port: two Services given the same
    // one (by two API servers at once) would make every write of the
    // table fail. The first by name keeps it; the other is left out.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut addresses = HashSet::new();
    let mut node_ports = HashSet::new();
    for (key, port) in entries {
        let address = (port.cluster_ip, port.protocol, port.port);
        let node_port = port.node_port.map(|n| (port.protocol, n));
        if !addresses.insert(address) || node_port.is_some_and(|n| !node_ports.insert(n)) {
            tracing::warn!(service = %key, "another Service holds this address or node port; left out");
            continue;
        }
        model.insert(key, port);
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{from_value, json};

    pub fn objects<K: serde::de::DeserializeOwned>(
        items: serde_json::Value,
    ) -> HashMap<String, Arc<K>> {
        items
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, o)| (i.to_string(), Arc::new(from_value(o.clone()).unwrap())))
            .collect()
    }

    #[test]
    fn ready_endpoints_of_each_port_by_name() {
        let services = objects::<Service>(json!([
            {"metadata": {"name": "web", "namespace": "a"}, "spec": {"clusterIP": "10.96.0.10", "type": "NodePort", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP"}]}},
            {"metadata": {"name": "headless", "namespace": "a"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}},
            {"metadata": {"name": "empty", "namespace": "a"}, "spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 81}]}}
        ]));
        let slices = objects::<EndpointSlice>(json!([
            {"metadata": {"name": "web-1", "namespace": "a", "labels": {"kubernetes.io/service-name": "web"}},
             "addressType": "IPv4",
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
             "endpoints": [
                {"addresses": ["10.244.0.3"], "conditions": {"ready": true}},
                {"addresses": ["10.244.0.2"]},
                {"addresses": ["10.244.0.4"], "conditions": {"ready": false, "serving": true, "terminating": true}}]},
            {"metadata": {"name": "web-other-ns", "namespace": "b", "labels": {"kubernetes.io/service-name": "web"}},
             "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": [{"addresses": ["10.9.9.9"]}]}
        ]));
        let m = model(&services, &slices);
        assert_eq!(
            m.keys().collect::<Vec<_>>(),
            ["a/empty//tcp", "a/web/dns/udp", "a/web/http/tcp"]
        );
        let http = &m["a/web/http/tcp"];
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(
            http.endpoints,
            [
                (Ipv4Addr::new(10, 244, 0, 2), 8080),
                (Ipv4Addr::new(10, 244, 0, 3), 8080)
            ]
        );
        assert_eq!(m["a/web/dns/udp"].endpoints[0].1, 5353);
        assert!(m["a/empty//tcp"].endpoints.is_empty());
        // A second Service on the same address is left out, not written.
        let twins = objects::<Service>(json!([
            {"metadata": {"name": "a", "namespace": "x"}, "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}},
            {"metadata": {"name": "b", "namespace": "x"}, "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}}
        ]));
        let m = model(&twins, &HashMap::new());
        assert_eq!(m.keys().collect::<Vec<_>>(), ["x/a//tcp"]);
    }
}
