//! From a Pod to the runtime's configs: the sandbox (namespaces, network,
//! log directory, labels) and each container (image, command, env,
//! resources as cgroup settings), as the kubelet's `kuberuntime` builds
//! them.

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::cri::{self, api};

/// CRI's NamespaceMode: one per pod, or the host's.
const NAMESPACE_POD: i32 = 0;
const NAMESPACE_CONTAINER: i32 = 1;
const NAMESPACE_NODE: i32 = 2;

pub struct PodIdentity<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub node: &'a str,
}

impl<'a> PodIdentity<'a> {
    pub fn of(pod: &'a Pod, uid: &'a str, node: &'a str) -> PodIdentity<'a> {
        PodIdentity {
            name: pod.metadata.name.as_deref().unwrap_or(""),
            namespace: pod.metadata.namespace.as_deref().unwrap_or("default"),
            uid,
            node,
        }
    }

    /// The labels that find this pod's sandboxes and containers again.
    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (cri::POD_UID.to_string(), self.uid.to_string()),
            (cri::POD_NAME.to_string(), self.name.to_string()),
            (cri::POD_NAMESPACE.to_string(), self.namespace.to_string()),
            (cri::NODE.to_string(), self.node.to_string()),
        ])
    }

    /// Kubernetes' layout: `<root>/<namespace>_<name>_<uid>`.
    pub fn log_directory(&self, root: &Path) -> String {
        root.join(format!("{}_{}_{}", self.namespace, self.name, self.uid))
            .to_string_lossy()
            .into_owned()
    }
}

fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

fn namespaces(pod: &Pod) -> api::NamespaceOption {
    api::NamespaceOption {
        network: if host_network(pod) {
            NAMESPACE_NODE
        } else {
            NAMESPACE_POD
        },
        pid: NAMESPACE_CONTAINER,
        ipc: NAMESPACE_POD,
        ..Default::default()
    }
}

pub fn sandbox(
    pod: &Pod,
    id: &PodIdentity,
    attempt: u32,
    log_root: &Path,
) -> api::PodSandboxConfig {
    let mut port_mappings = Vec::new();
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        for p in c.ports.iter().flatten() {
            let Some(host_port) = p.host_port.filter(|h| *h > 0) else {
                continue;
            };
            port_mappings.push(api::PortMapping {
                protocol: match p.protocol.as_deref() {
                    Some("UDP") => 1,
                    Some("SCTP") => 2,
                    _ => 0,
                },
                container_port: p.container_port,
                host_port,
                host_ip: p.host_ip.clone().unwrap_or_default(),
            });
        }
    }
    let hostname = if host_network(pod) {
        // The host's own UTS namespace: its hostname is not the sandbox's
        // to set (runc refuses to).
        String::new()
    } else {
        // Kubernetes' limit for a hostname is 63 characters.
        id.name.chars().take(63).collect()
    };
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: id.name.into(),
            uid: id.uid.into(),
            namespace: id.namespace.into(),
            attempt,
        }),
        hostname,
        log_directory: id.log_directory(log_root),
        port_mappings,
        labels: id.labels(),
        linux: Some(api::LinuxPodSandboxConfig {
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(pod)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The kubelet's CPU shares for a request (minimum 2), and the CFS quota
/// for a limit over a 100 ms period.
fn cpu(container: &Container) -> (i64, i64, i64) {
    let get = |part: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >| {
        part.and_then(|m| m.get("cpu"))
            .and_then(|q| mube_apis::quantity::milli(&q.0))
            .and_then(|m| i64::try_from(m).ok())
    };
    let resources = container.resources.as_ref();
    let request = get(resources.and_then(|r| r.requests.as_ref()));
    let limit = get(resources.and_then(|r| r.limits.as_ref()));
    // As Kubernetes: a limit without a request is also the request.
    let shares = request
        .or(limit)
        .map_or(2, |m| (m.saturating_mul(1024) / 1000).max(2));
    match limit {
        Some(m) if m > 0 => (shares, 100_000, (m.saturating_mul(100)).max(1000)),
        _ => (shares, 0, 0),
    }
}

fn memory_limit(container: &Container) -> i64 {
    container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|m| m.get("memory"))
        .and_then(|q| mube_apis::quantity::units(&q.0))
        .and_then(|b| i64::try_from(b).ok())
        .unwrap_or(0)
}

/// `services`: the service environment (`service_env`), under what the
/// container sets itself.
pub fn container(
    pod: &Pod,
    id: &PodIdentity,
    c: &Container,
    attempt: u32,
    services: &std::collections::BTreeMap<String, String>,
) -> api::ContainerConfig {
    let mut labels = id.labels();
    labels.insert(cri::CONTAINER_NAME.into(), c.name.clone());
    let (cpu_shares, cpu_period, cpu_quota) = cpu(c);
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(api::ImageSpec {
            image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: c.command.clone().unwrap_or_default(),
        args: c.args.clone().unwrap_or_default(),
        envs: {
            let own = c.env.as_deref().unwrap_or_default();
            services
                .iter()
                .filter(|(k, _)| !own.iter().any(|e| &e.name == *k))
                .map(|(k, v)| api::KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .chain(own.iter().map(|e| api::KeyValue {
                    key: e.name.clone(),
                    value: e.value.clone().unwrap_or_default(),
                }))
                .collect()
        },
        labels,
        // What `kubectl attach` (and `run -i`) connects to.
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        // Relative to the sandbox's log directory, as the kubelet lays it out.
        log_path: format!("{}/{attempt}.log", c.name),
        linux: Some(api::LinuxContainerConfig {
            resources: Some(api::LinuxContainerResources {
                cpu_shares,
                cpu_period,
                cpu_quota,
                memory_limit_in_bytes: memory_limit(c),
                ..Default::default()
            }),
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(pod)),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resources_become_cgroup_settings() {
        let c: Container = serde_json::from_value(json!({
            "name": "a", "image": "i",
            "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "64Mi"}}
        }))
        .unwrap();
        assert_eq!(cpu(&c), (256, 100_000, 50_000));
        assert_eq!(memory_limit(&c), 64 << 20);
        let bare: Container = serde_json::from_value(json!({"name": "a", "image": "i"})).unwrap();
        assert_eq!(cpu(&bare), (2, 0, 0));
        assert_eq!(memory_limit(&bare), 0);
    }

    #[test]
    fn host_network_pods_use_the_node_namespace() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"hostNetwork": true, "containers": [{"name": "a", "image": "i"}]}
        }))
        .unwrap();
        let id = PodIdentity::of(&pod, "u1", "n1");
        let config = sandbox(&pod, &id, 0, Path::new("/var/log/pods"));
        let ns = config
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!(ns.network, NAMESPACE_NODE);
        assert_eq!(config.log_directory, "/var/log/pods/ns_p_u1");
        assert_eq!(config.labels[cri::NODE], "n1");
    }
}
