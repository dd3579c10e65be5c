//! The Kubernetes service environment: for each Service in the pod's
//! namespace at its container's start (and the `kubernetes` Service from
//! `default`), `{NAME}_SERVICE_HOST`, `{NAME}_SERVICE_PORT`, a
//! `{NAME}_SERVICE_PORT_{PORT}` per named port, and the Docker-link
//! variables (`{NAME}_PORT`, `{NAME}_PORT_{port}_{PROTO}_ADDR`, ...), as the
//! kubelet's `envvars.FromServices` writes them. Services without a cluster
//! IP (headless, ExternalName) give none.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;

/// `my-svc` as `MY_SVC`.
fn env_name(name: &str) -> String {
    name.to_uppercase().replace('-', "_")
}

/// The variables for `services` (already the ones the pod sees), sorted
/// by name.
pub fn variables(services: &[Service]) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for service in services {
        let Some(spec) = &service.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let name = env_name(service.metadata.name.as_deref().unwrap_or_default());
        vars.insert(format!("{name}_SERVICE_HOST"), ip.to_string());
        vars.insert(format!("{name}_SERVICE_PORT"), first.port.to_string());
        for port in ports {
            if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                vars.insert(
                    format!("{name}_SERVICE_PORT_{}", env_name(port_name)),
                    port.port.to_string(),
                );
            }
        }
        let link = |port: &k8s_openapi::api::core::v1::ServicePort| {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            (
                protocol.to_uppercase(),
                format!("{}://{ip}:{}", protocol.to_lowercase(), port.port),
            )
        };
        vars.insert(format!("{name}_PORT"), link(first).1);
        for port in ports {
            let (protocol, url) = link(port);
            let prefix = format!("{name}_PORT_{}_{protocol}", port.port);
            vars.insert(format!("{prefix}_PROTO"), protocol.to_lowercase());
            vars.insert(format!("{prefix}_PORT"), port.port.to_string());
            vars.insert(format!("{prefix}_ADDR"), ip.to_string());
            vars.insert(prefix, url);
        }
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{from_value, json};

    #[test]
    fn as_the_kubelet_writes_them() {
        let services: Vec<Service> = from_value(json!([
            {"metadata": {"name": "web-front"}, "spec": {"clusterIP": "10.96.0.7", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}},
            {"metadata": {"name": "headless"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}},
            {"metadata": {"name": "external"}, "spec": {"type": "ExternalName", "externalName": "example.com"}}
        ]))
        .unwrap();
        let vars = variables(&services);
        let expected: BTreeMap<String, String> = [
            ("WEB_FRONT_SERVICE_HOST", "10.96.0.7"),
            ("WEB_FRONT_SERVICE_PORT", "80"),
            ("WEB_FRONT_SERVICE_PORT_HTTP", "80"),
            ("WEB_FRONT_SERVICE_PORT_DNS", "53"),
            ("WEB_FRONT_PORT", "tcp://10.96.0.7:80"),
            ("WEB_FRONT_PORT_80_TCP", "tcp://10.96.0.7:80"),
            ("WEB_FRONT_PORT_80_TCP_PROTO", "tcp"),
            ("WEB_FRONT_PORT_80_TCP_PORT", "80"),
            ("WEB_FRONT_PORT_80_TCP_ADDR", "10.96.0.7"),
            ("WEB_FRONT_PORT_53_UDP", "udp://10.96.0.7:53"),
            ("WEB_FRONT_PORT_53_UDP_PROTO", "udp"),
            ("WEB_FRONT_PORT_53_UDP_PORT", "53"),
            ("WEB_FRONT_PORT_53_UDP_ADDR", "10.96.0.7"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(vars, expected);
    }
}
