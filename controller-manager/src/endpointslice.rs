//! The endpoint controller, as Kubernetes' EndpointSlice controller: for
//! each Service with a selector, `discovery.k8s.io/v1` EndpointSlices that
//! list the selected pods that have an address, each with the conditions
//! Kubernetes sets: `ready` (the pod is Ready and not terminating),
//! `serving` (the pod is Ready, terminating or not) and `terminating`.
//! mube-proxy sends traffic only to `ready` endpoints.
//!
//! Pods whose named target ports resolve alike share a slice, of at most
//! 100 endpoints (Kubernetes' `--max-endpoints-per-slice` default). A
//! Service that selects nothing keeps one empty slice. Slices are owned by
//! their Service, so the garbage collector deletes them with it.
//!
//! `plan` is the decision, from the Service, the cached pods and slices;
//! `reconcile` carries it out. Slices this process wrote that the cache
//! does not show yet hold the next pass back (Kubernetes' slice tracker),
//! so that a pass in between never creates a slice twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use crate::informer::controller_ref;
use crate::{pods, Error};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Endpoints per slice (Kubernetes' default).
pub const MAX_ENDPOINTS: usize = 100;
/// How long a write not yet in the cache holds the Service's next pass.
const STALE_FOR: Duration = Duration::from_secs(10);

pub struct Context {
    pub client: Client,
    pub pods: Store<Pod>,
    pub slices: Store<EndpointSlice>,
    /// Per Service (`namespace/name`): the slices written, since when.
    pub written: Mutex<HashMap<String, (Vec<Written>, Instant)>>,
}

/// A slice this process wrote: its name, and the resourceVersion the write
/// returned (`None`: deleted).
pub type Written = (String, Option<u64>);

/// What one pass does.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<String>,
}

/// Whether `slice` is this controller's, for the Service `name`.
pub fn is_managed_slice_of(slice: &EndpointSlice, namespace: &str, name: &str) -> bool {
    let labels = slice.metadata.labels.as_ref();
    slice.metadata.namespace.as_deref() == Some(namespace)
        && labels
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(String::as_str)
            == Some(name)
        && labels
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .map(String::as_str)
            == Some(MANAGED_BY)
}

/// The pod's port a Service port sends to: a number as is, a name as the
/// pod's container port of that name and protocol (`None`: the pod has no
/// such port, and is left out for this port).
fn target_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.iter().flatten().find_map(|p| {
                    (p.name.as_deref() == Some(name)
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                        .then_some(p.container_port)
                })
            })
        }
    }
}

/// Kubernetes' `ShouldPodBeInEndpoints`: an address, and not finished.
fn in_endpoints(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    let has_ip = status
        .and_then(|s| s.pod_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty());
    let finished = matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    has_ip && !finished
}

fn endpoint_of(pod: &Pod, publish_not_ready: bool) -> Endpoint {
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let serving = publish_not_ready || pods::is_ready(pod);
    Endpoint {
        addresses: vec![pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default()],
        conditions: Some(EndpointConditions {
            ready: Some(serving && !terminating),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A port list, as a key to group endpoints by (and compare slices with).
type PortsKey = Vec<(Option<String>, Option<i32>, Option<String>)>;

fn ports_key(ports: &[EndpointPort]) -> PortsKey {
    ports
        .iter()
        .map(|p| (p.name.clone(), p.port, p.protocol.clone()))
        .collect()
}

/// Endpoints compared by what they say, not by order.
fn sorted(endpoints: &[Endpoint]) -> Vec<Endpoint> {
    let mut e = endpoints.to_vec();
    e.sort_by(|a, b| a.addresses.cmp(&b.addresses));
    e
}

pub fn plan(
    service: &Service,
    cached_pods: &[Arc<Pod>],
    cached_slices: &[Arc<EndpointSlice>],
) -> Plan {
    let mut plan = Plan::default();
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let Some(spec) = service.spec.as_ref() else {
        return plan;
    };
    // Without a selector the slices are someone else's (the `kubernetes`
    // Service's are the API server's).
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return plan;
    };
    if service.metadata.deletion_timestamp.is_some() {
        return plan;
    }
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let service_ports = spec.ports.clone().unwrap_or_default();
    // Endpoints grouped by the ports they resolve to.
    let mut groups: BTreeMap<PortsKey, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for pod in cached_pods.iter().filter(|p| {
        p.metadata.namespace.as_deref() == Some(namespace.as_str())
            && in_endpoints(p)
            && p.metadata
                .labels
                .as_ref()
                .is_some_and(|labels| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }) {
        let ports: Vec<EndpointPort> = service_ports
            .iter()
            .filter_map(|sp| {
                Some(EndpointPort {
                    name: Some(sp.name.clone().unwrap_or_default()),
                    port: Some(target_port(sp, pod)?),
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: sp.app_protocol.clone(),
                })
            })
            .collect();
        let entry = groups
            .entry(ports_key(&ports))
            .or_insert_with(|| (ports, Vec::new()));
        entry.1.push(endpoint_of(pod, publish_not_ready));
    }
    let mut desired: Vec<(Vec<EndpointPort>, Vec<Endpoint>)> = Vec::new();
    for (_, (ports, mut endpoints)) in groups {
        endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        for chunk in endpoints.chunks(MAX_ENDPOINTS) {
            desired.push((ports.clone(), chunk.to_vec()));
        }
    }
    if desired.is_empty() {
        // Kubernetes' placeholder: one empty slice.
        desired.push((Vec::new(), Vec::new()));
    }
    let mut existing: Vec<&Arc<EndpointSlice>> = cached_slices
        .iter()
        .filter(|s| is_managed_slice_of(s, &namespace, &name))
        .collect();
    existing.sort_by_key(|s| s.name_any());
    let mut unmatched = Vec::new();
    for (ports, endpoints) in desired {
        let key = ports_key(&ports);
        // A slice of the same ports is reused; one that already says this
        // is left alone.
        let same_ports = existing
            .iter()
            .position(|s| ports_key(s.ports.as_deref().unwrap_or_default()) == key);
        match same_ports {
            Some(i) => {
                let old = existing.remove(i);
                if sorted(&old.endpoints) != endpoints {
                    let mut slice = (**old).clone();
                    slice.endpoints = endpoints;
                    slice.ports = Some(ports);
                    plan.update.push(slice);
                }
            }
            None => unmatched.push((ports, endpoints)),
        }
    }
    for (ports, endpoints) in unmatched {
        // A slice of other ports is reused before a new one is made.
        match existing.pop() {
            Some(old) => {
                let mut slice = (**old).clone();
                slice.endpoints = endpoints;
                slice.ports = Some(ports);
                plan.update.push(slice);
            }
            None => plan.create.push(new_slice(service, ports, endpoints)),
        }
    }
    plan.delete = existing.iter().map(|s| s.name_any()).collect();
    plan
}

fn new_slice(
    service: &Service,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), service.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", service.name_any())),
            namespace: service.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![controller_ref(service)]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(ports),
    }
}

fn revision_of(slice: &EndpointSlice) -> Option<u64> {
    slice.metadata.resource_version.as_deref()?.parse().ok()
}

/// Whether the cache shows every write this process made for the Service.
fn cache_has(
    slices: &Store<EndpointSlice>,
    namespace: &str,
    written: &[(String, Option<u64>)],
) -> bool {
    written.iter().all(|(name, revision)| {
        let cached = slices.get(&ObjectRef::new(name).within(namespace));
        match revision {
            None => cached.is_none(),
            Some(r) => cached
                .and_then(|s| revision_of(&s))
                .is_some_and(|c| c >= *r),
        }
    })
}

fn ignore_gone(result: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other,
    }
}

pub async fn reconcile(service: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = service.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", service.name_any());
    {
        let mut written = ctx.written.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((slices, since)) = written.get(&key) {
            if !cache_has(&ctx.slices, &namespace, slices) && since.elapsed() < STALE_FOR {
                return Ok(Action::requeue(Duration::from_millis(50)));
            }
            written.remove(&key);
        }
    }
    let plan = plan(&service, &ctx.pods.state(), &ctx.slices.state());
    if plan.create.is_empty() && plan.update.is_empty() && plan.delete.is_empty() {
        return Ok(Action::await_change());
    }
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut done: Vec<Written> = Vec::new();
    let params = PostParams {
        field_manager: Some("endpointslice-controller".into()),
        ..Default::default()
    };
    let result = async {
        for slice in &plan.update {
            // Held to the version read: a conflict is a retry.
            let stored = api.replace(&slice.name_any(), &params, slice).await?;
            done.push((stored.name_any(), revision_of(&stored)));
        }
        for slice in &plan.create {
            let stored = api.create(&params, slice).await?;
            done.push((stored.name_any(), revision_of(&stored)));
        }
        for name in &plan.delete {
            ignore_gone(api.delete(name, &DeleteParams::default()).await.map(|_| ()))?;
            done.push((name.clone(), None));
        }
        Ok::<_, kube::Error>(())
    }
    .await;
    if !done.is_empty() {
        let mut written = ctx.written.lock().unwrap_or_else(|p| p.into_inner());
        written.insert(key, (done, Instant::now()));
    }
    result?;
    Ok(Action::await_change())
}

/// The Services whose slices may change with `pod`: those that select it
/// now, and those whose slices list it (it may have stopped matching).
pub fn services_of_pod(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    pod: &Pod,
) -> Vec<ObjectRef<Service>> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let labels = pod.metadata.labels.as_ref();
    let mut refs: Vec<ObjectRef<Service>> = services
        .state()
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|spec| spec.selector.as_ref())
                .filter(|sel| !sel.is_empty())
                .is_some_and(|sel| {
                    labels.is_some_and(|l| sel.iter().all(|(k, v)| l.get(k) == Some(v)))
                })
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect();
    let name = pod.metadata.name.as_deref();
    for slice in slices.state().iter() {
        if slice.metadata.namespace.as_deref() != Some(namespace) {
            continue;
        }
        let lists_it = slice
            .endpoints
            .iter()
            .any(|e| e.target_ref.as_ref().and_then(|t| t.name.as_deref()) == name);
        if let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .filter(|_| lists_it)
        {
            refs.push(ObjectRef::new(service).within(namespace));
        }
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{from_value, json};

    fn service() -> Service {
        from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-1"},
            "spec": {"selector": {"app": "web"}, "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                {"name": "admin", "port": 81, "targetPort": 9000, "protocol": "TCP"}
            ]}
        }))
        .unwrap()
    }

    fn pod(name: &str, ip: Option<&str>, ready: bool, http_port: i32) -> Arc<Pod> {
        let mut p: Pod = from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": http_port}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap();
        if ip.is_none() {
            p.status.as_mut().unwrap().pod_ip = None;
        }
        Arc::new(p)
    }

    fn stored(slice: &EndpointSlice, name: &str) -> Arc<EndpointSlice> {
        let mut s = slice.clone();
        s.metadata.name = Some(name.into());
        Arc::new(s)
    }

    #[test]
    fn endpoints_carry_conditions_and_group_by_resolved_ports() {
        let mut terminating = (*pod("c", Some("10.0.0.3"), true, 8080)).clone();
        terminating.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        let pods = vec![
            pod("a", Some("10.0.0.1"), true, 8080),
            pod("b", Some("10.0.0.2"), false, 8080),
            Arc::new(terminating),
            pod("no-ip", None, true, 8080),
            pod("other-port", Some("10.0.0.9"), true, 8443),
        ];
        let p = plan(&service(), &pods, &[]);
        assert!(p.update.is_empty() && p.delete.is_empty());
        assert_eq!(p.create.len(), 2, "two port sets");
        let first = &p.create[0];
        let ports: Vec<_> = first
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port.unwrap())
            .collect();
        assert_eq!(ports, [8080, 9000]);
        let conditions: Vec<_> = first
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.as_ref().unwrap();
                (
                    e.addresses[0].as_str(),
                    c.ready.unwrap(),
                    c.serving.unwrap(),
                    c.terminating.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            conditions,
            [
                ("10.0.0.1", true, true, false),
                ("10.0.0.2", false, false, false),
                ("10.0.0.3", false, true, true)
            ]
        );
        assert_eq!(p.create[1].endpoints[0].addresses, ["10.0.0.9"]);
        let owner = &first.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Service", "svc-1")
        );
        assert_eq!(
            first.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL],
            "web"
        );
    }

    #[test]
    fn unchanged_slices_are_left_alone_changed_ones_updated_extra_ones_deleted() {
        let pods = vec![pod("a", Some("10.0.0.1"), true, 8080)];
        let first = plan(&service(), &pods, &[]);
        let slice = stored(&first.create[0], "web-abc");
        let again = plan(&service(), &pods, std::slice::from_ref(&slice));
        assert!(again.create.is_empty() && again.update.is_empty() && again.delete.is_empty());
        // The pod goes: the slice is kept, empty (the placeholder).
        let gone = plan(&service(), &[], std::slice::from_ref(&slice));
        assert_eq!(gone.update.len(), 1);
        assert!(gone.update[0].endpoints.is_empty());
        // A second slice of the Service is one too many.
        let extra = stored(&first.create[0], "web-zzz");
        let two = plan(&service(), &pods, &[slice, extra]);
        assert_eq!(two.delete, ["web-zzz"]);
        // Nobody's slices but its own; no selector: none at all.
        let mut manual = service();
        manual.spec.as_mut().unwrap().selector = None;
        let p = plan(&manual, &pods, &[]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn a_big_service_is_cut_into_slices_of_a_hundred() {
        let pods: Vec<_> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    Some(&format!("10.0.{}.{}", i / 200, i % 200 + 1)),
                    true,
                    8080,
                )
            })
            .collect();
        let p = plan(&service(), &pods, &[]);
        let sizes: Vec<_> = p.create.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
    }
}
