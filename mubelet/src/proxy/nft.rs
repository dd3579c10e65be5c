//! The nftables rules of the model, as kube-proxy's nftables mode lays
//! them out: one table of mube's own; verdict maps from a Service's
//! address, protocol and port (and from a node port) to its chain; a chain
//! per Service port that picks an endpoint at random, and a chain per
//! endpoint that rewrites the destination. Services without a ready
//! endpoint are in maps that reject new connections (ICMP port
//! unreachable: the client's connect fails at once instead of timing out).
//!
//! Service traffic is masqueraded: the endpoint answers through this node
//! whichever way the client came (a pod on the same bridge, another node
//! through a node port, the node itself), at the cost of the client's
//! address (kube-proxy's `--masquerade-all`).
//!
//! `full` replaces the whole table in one transaction; `update` changes
//! only the maps' entries and chains of the Service ports that changed.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;

use super::model::{Model, ServicePort};

const MASQUERADE_MARK: &str = "0x4000";

/// The table's name for this node: several mubelets on one machine (in
/// tests) each keep their own.
pub fn table_name(node: &str) -> String {
    let safe: String = node
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("mube_proxy_{safe}")
}

fn short_hash(parts: &impl Hash) -> String {
    // std's SipHash with its fixed keys: stable for a given build, which
    // is all a name needs (a new build starts with a full rebuild).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    format!("{:016x}", h.finish())
}

fn service_chain(key: &str) -> String {
    format!("svc_{}", short_hash(&key))
}

fn endpoint_chain(key: &str, endpoint: &(Ipv4Addr, u16)) -> String {
    format!("ep_{}", short_hash(&(key, endpoint)))
}

/// The table with its maps and fixed chains, and nothing in them.
fn base(table: &str) -> String {
    format!(
        "table ip {table} {{
  map service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}
  map service-nodeports {{ type inet_proto . inet_service : verdict ; }}
  map no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}
  map no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; }}
  chain reject-chain {{ reject ; }}
  chain mark-for-masquerade {{ meta mark set meta mark or {MASQUERADE_MARK} ; }}
  chain endpoints-check {{
    ip daddr . meta l4proto . th dport vmap @no-endpoint-services
    fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports
  }}
  chain filter-input {{ type filter hook input priority -110 ; policy accept ; ct state new jump endpoints-check ; }}
  chain filter-forward {{ type filter hook forward priority -110 ; policy accept ; ct state new jump endpoints-check ; }}
  chain filter-output {{ type filter hook output priority -110 ; policy accept ; ct state new jump endpoints-check ; }}
  chain services {{
    ip daddr . meta l4proto . th dport vmap @service-ips
    fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
  }}
  chain nat-prerouting {{ type nat hook prerouting priority -100 ; policy accept ; jump services ; }}
  chain nat-output {{ type nat hook output priority -100 ; policy accept ; jump services ; }}
  chain nat-postrouting {{ type nat hook postrouting priority 100 ; policy accept ; meta mark and {MASQUERADE_MARK} == {MASQUERADE_MARK} masquerade ; }}
}}
"
    )
}

/// The whole table, replacing whatever this node's table held (stale
/// rules of a mubelet that stopped included), in one transaction.
pub fn full(table: &str, model: &Model) -> String {
    let mut script = format!("add table ip {table}\ndelete table ip {table}\n");
    script.push_str(&base(table));
    script.push_str(&update(table, &Model::new(), model));
    script
}

fn address(port: &ServicePort) -> String {
    format!(
        "{} . {} . {}",
        port.cluster_ip,
        port.protocol.nft(),
        port.port
    )
}

fn node_port(port: &ServicePort) -> Option<String> {
    port.node_port
        .map(|n| format!("{} . {n}", port.protocol.nft()))
}

/// Adds what `port` (at `key`) needs, as a new entry.
fn add(table: &str, key: &str, port: &ServicePort, out: &mut String) {
    if port.endpoints.is_empty() {
        out.push_str(&format!(
            "add element ip {table} no-endpoint-services {{ {} : goto reject-chain }}\n",
            address(port)
        ));
        if let Some(n) = node_port(port) {
            out.push_str(&format!(
                "add element ip {table} no-endpoint-nodeports {{ {n} : goto reject-chain }}\n"
            ));
        }
        return;
    }
    let chain = service_chain(key);
    out.push_str(&format!("add chain ip {table} {chain}\n"));
    fill(table, key, port, &BTreeSet::new(), out);
    out.push_str(&format!(
        "add element ip {table} service-ips {{ {} : goto {chain} }}\n",
        address(port)
    ));
    if let Some(n) = node_port(port) {
        out.push_str(&format!(
            "add element ip {table} service-nodeports {{ {n} : goto {chain} }}\n"
        ));
    }
}

/// Writes the rules of `port`'s (empty) chain, and the endpoint chains
/// not in `existing`.
fn fill(
    table: &str,
    key: &str,
    port: &ServicePort,
    existing: &BTreeSet<(Ipv4Addr, u16)>,
    out: &mut String,
) {
    let chain = service_chain(key);
    for endpoint in &port.endpoints {
        if existing.contains(endpoint) {
            continue;
        }
        let ep = endpoint_chain(key, endpoint);
        out.push_str(&format!("add chain ip {table} {ep}\n"));
        out.push_str(&format!(
            "add rule ip {table} {ep} meta l4proto {} dnat to {}:{}\n",
            port.protocol.nft(),
            endpoint.0,
            endpoint.1
        ));
    }
    let choices: Vec<String> = port
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{i} : goto {}", endpoint_chain(key, e)))
        .collect();
    out.push_str(&format!(
        "add rule ip {table} {chain} jump mark-for-masquerade\n"
    ));
    out.push_str(&format!(
        "add rule ip {table} {chain} numgen random mod {} vmap {{ {} }}\n",
        port.endpoints.len(),
        choices.join(", ")
    ));
}

/// Takes `port` (at `key`) out: its map entries and chains.
fn remove(table: &str, key: &str, port: &ServicePort, out: &mut String) {
    if port.endpoints.is_empty() {
        out.push_str(&format!(
            "delete element ip {table} no-endpoint-services {{ {} }}\n",
            address(port)
        ));
        if let Some(n) = node_port(port) {
            out.push_str(&format!(
                "delete element ip {table} no-endpoint-nodeports {{ {n} }}\n"
            ));
        }
        return;
    }
    let chain = service_chain(key);
    out.push_str(&format!(
        "delete element ip {table} service-ips {{ {} }}\n",
        address(port)
    ));
    if let Some(n) = node_port(port) {
        out.push_str(&format!(
            "delete element ip {table} service-nodeports {{ {n} }}\n"
        ));
    }
    out.push_str(&format!("flush chain ip {table} {chain}\n"));
    out.push_str(&format!("delete chain ip {table} {chain}\n"));
    for endpoint in &port.endpoints {
        out.push_str(&format!(
            "delete chain ip {table} {}\n",
            endpoint_chain(key, endpoint)
        ));
    }
}

/// The changes from `old` to `new`: nothing for a Service port that did
/// not change; for one whose endpoints changed (and had some before and
/// after), its chain rewritten and the endpoint chains that came or went;
/// anything else removed and added again.
pub fn update(table: &str, old: &Model, new: &Model) -> String {
    let mut out = String::new();
    for (key, before) in old {
        if !new.contains_key(key) {
            remove(table, key, before, &mut out);
        }
    }
    for (key, after) in new {
        match old.get(key) {
            None => add(table, key, after, &mut out),
            Some(before) if before == after => {}
            Some(before) => {
                let same_address = (
                    before.cluster_ip,
                    before.protocol,
                    before.port,
                    before.node_port,
                ) == (
                    after.cluster_ip,
                    after.protocol,
                    after.port,
                    after.node_port,
                );
                if same_address && !before.endpoints.is_empty() && !after.endpoints.is_empty() {
                    let chain = service_chain(key);
                    let had: BTreeSet<_> = before.endpoints.iter().copied().collect();
                    let has: BTreeSet<_> = after.endpoints.iter().copied().collect();
                    out.push_str(&format!("flush chain ip {table} {chain}\n"));
                    fill(table, key, after, &had, &mut out);
                    for gone in had.difference(&has) {
                        out.push_str(&format!(
                            "delete chain ip {table} {}\n",
                            endpoint_chain(key, gone)
                        ));
                    }
                } else {
                    remove(table, key, before, &mut out);
                    add(table, key, after, &mut out);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::model::Protocol;
    use super::*;

    fn port(endpoints: &[(u8, u16)], node_port: Option<u16>) -> ServicePort {
        ServicePort {
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            protocol: Protocol::Tcp,
            port: 80,
            node_port,
            endpoints: endpoints
                .iter()
                .map(|(last, p)| (Ipv4Addr::new(10, 244, 0, *last), *p))
                .collect(),
        }
    }

    fn model(entries: &[(&str, ServicePort)]) -> Model {
        entries
            .iter()
            .map(|(k, p)| (k.to_string(), p.clone()))
            .collect()
    }

    #[test]
    fn only_what_changed_is_written() {
        let t = "mube_proxy_n1";
        let one = model(&[("a/web//tcp", port(&[(2, 8080), (3, 8080)], Some(30080)))]);
        let script = full(t, &one);
        assert!(script.starts_with(
            "add table ip mube_proxy_n1\ndelete table ip mube_proxy_n1\ntable ip mube_proxy_n1 {"
        ));
        assert!(script.contains(
            "add element ip mube_proxy_n1 service-ips { 10.96.0.10 . tcp . 80 : goto svc_"
        ));
        assert!(script
            .contains("add element ip mube_proxy_n1 service-nodeports { tcp . 30080 : goto svc_"));
        assert!(script.contains("meta l4proto tcp dnat to 10.244.0.3:8080"));
        assert!(script.contains("numgen random mod 2 vmap { 0 : goto ep_"));
        // Nothing changed: nothing to do.
        assert_eq!(update(t, &one, &one), "");
        // One endpoint goes, another comes: one chain rewritten, one
        // endpoint chain added and one deleted, no map touched.
        let two = model(&[("a/web//tcp", port(&[(3, 8080), (4, 8080)], Some(30080)))]);
        let script = update(t, &one, &two);
        assert!(!script.contains("element"), "{script}");
        assert_eq!(script.matches("add chain").count(), 1, "{script}");
        assert_eq!(script.matches("delete chain").count(), 1, "{script}");
        assert!(script.contains("dnat to 10.244.0.4:8080"), "{script}");
        // No endpoints left: rejected instead.
        let none = model(&[("a/web//tcp", port(&[], Some(30080)))]);
        let script = update(t, &two, &none);
        assert!(
            script
                .contains("delete element ip mube_proxy_n1 service-ips { 10.96.0.10 . tcp . 80 }"),
            "{script}"
        );
        assert!(script.contains("add element ip mube_proxy_n1 no-endpoint-services { 10.96.0.10 . tcp . 80 : goto reject-chain }"), "{script}");
        assert!(script.contains("add element ip mube_proxy_n1 no-endpoint-nodeports { tcp . 30080 : goto reject-chain }"), "{script}");
        // Gone: its entries go.
        let script = update(t, &none, &Model::new());
        assert!(
            script.contains("delete element ip mube_proxy_n1 no-endpoint-services"),
            "{script}"
        );
        assert_eq!(table_name("pods-1.example"), "mube_proxy_pods_1_example");
    }
}
