//! The `kubernetes` Service in `default`, and its EndpointSlice: how pods
//! find the API server (`KUBERNETES_SERVICE_HOST`, and the in-cluster
//! config of every client library). Kubernetes' API server keeps them
//! itself (its "master endpoint reconciler"); so does mube's, at start.
//!
//! Each API server adds its own address to the slice. One that is gone
//! stays listed until the slice is edited (Kubernetes' lease reconciler,
//! which drops servers that stopped renewing, is not built).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::registry::managed::APISERVER;
use crate::registry::{endpoint_slice, service, DryRun, Manager, Part, Registry};

const NAME: &str = "kubernetes";
const NAMESPACE: &str = "default";

/// The address pods are told: `advertise`, else the listen address, else
/// (listening on all addresses) this machine's address towards the
/// outside, else loopback.
pub fn advertised(advertise: Option<IpAddr>, bound: SocketAddr) -> IpAddr {
    if let Some(a) = advertise {
        return a;
    }
    if !bound.ip().is_unspecified() {
        return bound.ip();
    }
    // A UDP socket's "connect" sends nothing: it only picks the source
    // address the routing table would use.
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("10.255.255.255:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Creates the Service (with the range's first address) and puts this
/// server's address into its EndpointSlice.
pub async fn ensure(
    registry: &Registry,
    cluster_ip: Ipv4Addr,
    address: IpAddr,
    port: u16,
) -> Result<(), ApiError> {
    let services = registry.resource(&service::INFO)?;
    let wanted = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "labels": {"component": "apiserver", "provider": "kubernetes"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip.to_string(),
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
            "sessionAffinity": "None",
        },
    });
    // Looked for first: a create of one that exists would be refused for
    // its cluster IP (held, by itself) before the name is checked.
    let exists = match registry.get(&services, Some(NAMESPACE), NAME).await {
        Ok(_) => true,
        Err(e) if e.is_not_found() => false,
        Err(e) => return Err(e),
    };
    let created = if exists {
        Ok(())
    } else {
        registry
            .create(&services, Some(NAMESPACE), wanted, APISERVER, DryRun::No)
            .await
            .map(|_| ())
    };
    // Another API server may have created it meanwhile: then it is there.
    let made_now = match created {
        Ok(()) => !exists,
        Err(e) => match registry.get(&services, Some(NAMESPACE), NAME).await {
            Ok(_) => false,
            Err(_) => return Err(e),
        },
    };
    if !made_now {
        {
            // A restart on another port: the target follows.
            let manager = Manager {
                name: APISERVER,
                part: Part::Main,
            };
            registry
                .modify(&services, Some(NAMESPACE), NAME, &manager, |_, mut svc| {
                    let at = "/spec/ports/0/targetPort";
                    if svc.pointer(at) == Some(&json!(port)) {
                        return Ok(None);
                    }
                    if let Some(t) = svc.pointer_mut(at) {
                        *t = json!(port);
                    }
                    Ok(Some(svc))
                })
                .await?;
        }
    }
    let IpAddr::V4(address) = address else {
        tracing::warn!(%address, "the kubernetes Service's endpoints are IPv4 only; set advertiseAddress");
        return Ok(());
    };
    let slices = registry.resource(&endpoint_slice::INFO)?;
    let endpoint = |ip: &str| json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}});
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": NAME},
        },
        "addressType": "IPv4",
        "endpoints": [endpoint(&address.to_string())],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    match registry
        .create(&slices, Some(NAMESPACE), slice, APISERVER, DryRun::No)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_already_exists() => {
            let manager = Manager {
                name: APISERVER,
                part: Part::Main,
            };
            let ip = address.to_string();
            registry
                .modify(&slices, Some(NAMESPACE), NAME, &manager, |_, mut slice| {
                    let listed = |s: &Value| {
                        s.get("endpoints")
                            .and_then(Value::as_array)
                            .is_some_and(|e| {
                                e.iter()
                                    .any(|e| e.pointer("/addresses/0") == Some(&json!(ip)))
                            })
                    };
                    let same_port = slice.pointer("/ports/0/port") == Some(&json!(port));
                    if listed(&slice) && same_port {
                        return Ok(None);
                    }
                    if !listed(&slice) {
                        match slice.get_mut("endpoints").and_then(Value::as_array_mut) {
                            Some(endpoints) => endpoints.push(endpoint(&ip)),
                            None => slice["endpoints"] = json!([endpoint(&ip)]),
                        }
                    }
                    slice["ports"] = json!([{"name": "https", "port": port, "protocol": "TCP"}]);
                    Ok(Some(slice))
                })
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}
