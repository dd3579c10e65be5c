//! Core `v1` Service: one stable address for a set of pods. Types
//! ClusterIP (with headless, `clusterIP: None`), NodePort, LoadBalancer
//! (served as a NodePort: mube has no load-balancer provider, so its
//! external IP stays pending, as on any cluster without one) and
//! ExternalName. The cluster IP and node ports are given out at the write
//! (`service_ranges.rs`); the endpoint controller in
//! mube-controller-manager keeps the EndpointSlices; mube-proxy routes.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Service;
use mube_apis::resources::ResourceInfo;
use mube_apis::table::Column;
use mube_apis::validation::FieldError;
use serde_json::{json, Value};

use super::{age_of, name_of, Resource, Strategy, TableConvertor, Typed, TypedAs};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Service",
    plural: "services",
    singular: "service",
    short_names: &["svc"],
    namespaced: true,
    categories: &["all"],
};

pub fn resource() -> Resource {
    Resource {
        info: &INFO,
        strategy: Box::new(ServiceStrategy),
        table: Box::new(ServiceStrategy),
    }
}

struct ServiceStrategy;

const TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

fn supported(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("{v:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ports(object: &Value) -> &[Value] {
    object
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object.pointer(pointer).and_then(Value::as_str)
}

/// Kubernetes' `IsDNS1035Label`: a Service's name (lower case letters,
/// digits and '-', starting with a letter).
pub fn dns1035_label(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && !value.ends_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".into())
    }
}

/// Kubernetes' `IsValidPortName` (an IANA service name), for a named
/// `targetPort`.
fn port_name(value: &str) -> Result<(), String> {
    let letters = value.chars().filter(char::is_ascii_lowercase).count();
    if value.is_empty()
        || value.len() > 15
        || letters == 0
        || value.starts_with('-')
        || value.ends_with('-')
        || value.contains("--")
        || !value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err("must be no more than 15 characters, contain only lowercase alphanumeric characters and '-', contain at least one letter, and not begin or end with '-' or contain '--'".into());
    }
    Ok(())
}

fn port_number(value: &Value) -> Option<i64> {
    value.as_i64()
}

fn valid_port(n: i64) -> bool {
    (1..=65535).contains(&n)
}

impl Strategy for ServiceStrategy {
    fn typed(&self) -> &dyn Typed {
        &TypedAs::<Service>::NEW
    }

    fn validate_name(&self, name: &str) -> Result<(), String> {
        dns1035_label(name)
    }

    fn status_subresource(&self) -> bool {
        true
    }

    /// It owns its EndpointSlices.
    fn garbage_collected(&self) -> bool {
        true
    }

    /// Kubernetes' defaults for a v1 Service.
    fn prepare_for_create(&self, object: &mut Value, _now: Timestamp) {
        if !object.get("spec").is_some_and(Value::is_object) {
            object["spec"] = json!({});
        }
        default_spec(object);
        object["status"] = json!({"loadBalancer": {}});
    }

    /// A write that leaves the cluster IP or node ports out keeps the ones
    /// given (Kubernetes' `patchAllocatedValues`): `kubectl apply` of a
    /// manifest without them must not ask for new ones.
    fn prepare_for_update(&self, part: super::Part, new: Value, old: Value) -> Value {
        let mut new = super::keep_status_apart(part, new, old.clone());
        if part == super::Part::Main && new.get("spec").is_some_and(Value::is_object) {
            default_spec(&mut new);
            keep_allocated(&mut new, &old);
        }
        new
    }

    fn validate(&self, object: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let ty = str_at(object, "/spec/type").unwrap_or("ClusterIP");
        if !TYPES.contains(&ty) {
            errors.push(FieldError::new(
                "spec.type",
                format!("Unsupported value: {ty:?}: supported values: {}", supported(TYPES)),
            ));
        }
        let cluster_ip = str_at(object, "/spec/clusterIP").unwrap_or("");
        let headless = cluster_ip == "None";
        if ty == "ExternalName" {
            match str_at(object, "/spec/externalName") {
                None | Some("") => errors.push(FieldError::new("spec.externalName", "Required value")),
                Some(name) => {
                    if let Err(m) = mube_apis::validation::dns1123_subdomain(name.trim_end_matches('.')) {
                        errors.push(FieldError::new(
                            "spec.externalName",
                            format!("Invalid value: {name:?}: {m}"),
                        ));
                    }
                }
            }
            if !cluster_ip.is_empty() {
                errors.push(FieldError::new(
                    "spec.clusterIP",
                    "Forbidden: may not be set for ExternalName services",
                ));
            }
        } else if ports(object).is_empty() && !headless {
            errors.push(FieldError::new("spec.ports", "Required value"));
        }
        if headless && matches!(ty, "NodePort" | "LoadBalancer") {
            errors.push(FieldError::new(
                "spec.clusterIPs[0]",
                format!("Invalid value: \"None\": may not be set to 'None' for {ty} services"),
            ));
        }
        let many = ports(object).len() > 1;
        let mut names = std::collections::HashSet::new();
        let mut seen = std::collections::HashSet::new();
        for (i, port) in ports(object).iter().enumerate() {
            let at = |f: &str| format!("spec.ports[{i}].{f}");
            let name = port.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() {
                if many {
                    errors.push(FieldError::new(at("name"), "Required value"));
                }
            } else if let Err(m) = mube_apis::validation::dns1123_label(name) {
                errors.push(FieldError::new(at("name"), format!("Invalid value: {name:?}: {m}")));
            } else if !names.insert(name.to_string()) {
                errors.push(FieldError::new(at("name"), format!("Duplicate value: {name:?}")));
            }
            let number = port.get("port").and_then(port_number);
            match number {
                Some(n) if valid_port(n) => {}
                Some(n) => errors.push(FieldError::new(
                    at("port"),
                    format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                )),
                None => errors.push(FieldError::new(at("port"), "Required value")),
            }
            let protocol = port.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            if !PROTOCOLS.contains(&protocol) {
                errors.push(FieldError::new(
                    at("protocol"),
                    format!("Unsupported value: {protocol:?}: supported values: {}", supported(PROTOCOLS)),
                ));
            }
            if let (Some(n), true) = (number, valid_port(number.unwrap_or(0))) {
                if !seen.insert((n, protocol.to_string())) {
                    errors.push(FieldError::new(
                        at("port"),
                        format!("Duplicate value: {{Port:{n}, Protocol:{protocol:?}}}"),
                    ));
                }
            }
            match port.get("targetPort") {
                None => {}
                Some(Value::String(s)) => {
                    if let Err(m) = port_name(s) {
                        errors.push(FieldError::new(at("targetPort"), format!("Invalid value: {s:?}: {m}")));
                    }
                }
                Some(v) => match port_number(v) {
                    Some(n) if valid_port(n) => {}
                    _ => errors.push(FieldError::new(
                        at("targetPort"),
                        format!("Invalid value: {v}: must be between 1 and 65535, inclusive"),
                    )),
                },
            }
            let node_port = port.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
            if node_port != 0 && !matches!(ty, "NodePort" | "LoadBalancer") {
                errors.push(FieldError::new(
                    at("nodePort"),
                    format!("Forbidden: may not be used when `type` is '{ty}'"),
                ));
            }
        }
        if let Some(selector) = object.pointer("/spec/selector").and_then(Value::as_object) {
            for (key, value) in selector {
                if let Err(m) = mube_apis::validation::qualified_name(key) {
                    errors.push(FieldError::new(
                        "spec.selector",
                        format!("Invalid value: {key:?}: {m}"),
                    ));
                }
                let value = value.as_str().unwrap_or_default();
                if let Err(m) = mube_apis::validation::label_value(value) {
                    errors.push(FieldError::new(
                        "spec.selector",
                        format!("Invalid value: {value:?}: {m}"),
                    ));
                }
            }
        }
        if let Some(affinity) = str_at(object, "/spec/sessionAffinity") {
            if !matches!(affinity, "None" | "ClientIP") {
                errors.push(FieldError::new(
                    "spec.sessionAffinity",
                    format!("Unsupported value: {affinity:?}: supported values: \"ClientIP\", \"None\""),
                ));
            }
        }
        errors
    }

    /// A cluster IP does not change once given, but by a change of type to
    /// or from ExternalName (Kubernetes' rule).
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        let ip = |o: &Value| str_at(o, "/spec/clusterIP").unwrap_or("").to_string();
        let external = |o: &Value| str_at(o, "/spec/type") == Some("ExternalName");
        let (before, after) = (ip(old), ip(new));
        if !before.is_empty() && before != after && !external(new) && !external(old) {
            return vec![FieldError::new(
                "spec.clusterIPs[0]",
                format!("Invalid value: []string{{{after:?}}}: may not change once set"),
            )];
        }
        Vec::new()
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["metadata.name", "metadata.namespace", "spec.clusterIP", "spec.type"]
    }

    fn field_value(&self, object: &Value, field: &str) -> Option<String> {
        match field {
            "spec.clusterIP" => Some(str_at(object, "/spec/clusterIP").unwrap_or("").into()),
            "spec.type" => Some(str_at(object, "/spec/type").unwrap_or("").into()),
            "metadata.name" => Some(name_of(object).into()),
            "metadata.namespace" => super::string_at(object, "/metadata/namespace"),
            _ => None,
        }
    }
}

/// Kubernetes' `SetDefaults_Service`.
fn default_spec(object: &mut Value) {
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let ty = spec
        .entry("type")
        .or_insert_with(|| json!("ClusterIP"))
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    spec.entry("sessionAffinity")
        .or_insert_with(|| json!("None"));
    if ty != "ExternalName" {
        spec.entry("internalTrafficPolicy")
            .or_insert_with(|| json!("Cluster"));
    }
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        spec.entry("externalTrafficPolicy")
            .or_insert_with(|| json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        spec.entry("allocateLoadBalancerNodePorts")
            .or_insert_with(|| json!(true));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.entry("protocol").or_insert_with(|| json!("TCP"));
            if !port.contains_key("targetPort") {
                if let Some(n) = port.get("port").cloned() {
                    port.insert("targetPort".into(), n);
                }
            }
        }
    }
}

/// Copies the stored cluster IP and node ports into a write that left
/// them out; drops node ports of a Service that no longer takes them.
fn keep_allocated(new: &mut Value, old: &Value) {
    let new_type = str_at(new, "/spec/type").unwrap_or("ClusterIP").to_string();
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if new_type != "ExternalName"
        && spec.get("clusterIP").and_then(Value::as_str).unwrap_or("").is_empty()
    {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
        for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if let Some(v) = old.pointer(&format!("/spec/{field}")) {
                spec.entry(field).or_insert_with(|| v.clone());
            }
        }
        if let Some(ip) = spec.get("clusterIP").cloned() {
            spec.insert("clusterIPs".into(), json!([ip]));
        }
    }
    let takes_ports = matches!(new_type.as_str(), "NodePort" | "LoadBalancer");
    // Fields of a type the Service no longer has go, unless this write
    // changed them (Kubernetes' `dropTypeDependentFields`).
    let unchanged = |spec: &serde_json::Map<String, Value>, field: &str| {
        spec.get(field) == old.pointer(&format!("/spec/{field}"))
    };
    // An ExternalName Service has no cluster IP: the one it had goes.
    if new_type == "ExternalName" && unchanged(spec, "clusterIP") {
        for field in [
            "clusterIP",
            "clusterIPs",
            "ipFamilies",
            "ipFamilyPolicy",
            "internalTrafficPolicy",
        ] {
            spec.remove(field);
        }
    }
    if !takes_ports && unchanged(spec, "externalTrafficPolicy") {
        spec.remove("externalTrafficPolicy");
    }
    if new_type != "LoadBalancer" && unchanged(spec, "allocateLoadBalancerNodePorts") {
        spec.remove("allocateLoadBalancerNodePorts");
    }
    let old_ports = ports(old).to_vec();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            if !takes_ports {
                // Kubernetes drops a node port the type no longer uses, if
                // the write did not change it.
                let same = old_ports.iter().any(|o| {
                    o.get("nodePort").is_some() && o.get("nodePort") == port.get("nodePort")
                });
                if same {
                    port.remove("nodePort");
                }
                continue;
            }
            if port.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0 {
                continue;
            }
            let matching = old_ports.iter().find(|o| {
                o.get("port") == port.get("port")
                    && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                        == port.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
            });
            if let Some(n) = matching.and_then(|o| o.get("nodePort")) {
                port.insert("nodePort".into(), n.clone());
            }
        }
    }
}

/// kubectl's PORT(S) cell: `80/TCP`, or `80:30080/TCP` with a node port.
fn ports_cell(object: &Value) -> String {
    let cells: Vec<String> = ports(object)
        .iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64).filter(|n| *n != 0) {
                Some(node) => format!("{port}:{node}/{protocol}"),
                None => format!("{port}/{protocol}"),
            }
        })
        .collect();
    if cells.is_empty() {
        "<none>".into()
    } else {
        cells.join(",")
    }
}

impl TableConvertor for ServiceStrategy {
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new("Type", "string", "", "The type of the service.", 0),
            Column::new("Cluster-IP", "string", "", "The cluster IP of the service.", 0),
            Column::new("External-IP", "string", "", "The external IP of the service.", 0),
            Column::new("Port(s)", "string", "", "The ports of the service.", 0),
            Column::age(),
            Column::new("Selector", "string", "", "The label selector of the service.", 1),
        ]
    }

    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        let ty = str_at(object, "/spec/type").unwrap_or("ClusterIP");
        let external = match ty {
            "ExternalName" => str_at(object, "/spec/externalName").unwrap_or("").to_string(),
            "LoadBalancer" => "<pending>".into(),
            _ => "<none>".into(),
        };
        let cluster_ip = match str_at(object, "/spec/clusterIP") {
            Some(ip) if !ip.is_empty() => ip,
            _ => "<none>",
        };
        let selector: Vec<String> = object
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        vec![
            json!(name_of(object)),
            json!(ty),
            json!(cluster_ip),
            json!(external),
            json!(ports_cell(object)),
            json!(age_of(object, now)),
            json!(if selector.is_empty() { "<none>".to_string() } else { selector.join(",") }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validation_and_kept_allocations() {
        let s = ServiceStrategy;
        let mut svc = json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
        s.prepare_for_create(&mut svc, Timestamp::now());
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
        assert!(s.validate(&svc).is_empty(), "{:?}", s.validate(&svc));
        let paths = |o: &Value| -> Vec<String> { s.validate(o).into_iter().map(|e| e.field).collect() };
        let bad = json!({"spec": {"type": "Weird", "ports": [{"port": 0, "protocol": "ICMP"}, {"port": 80, "targetPort": "Not_A_Name"}]}});
        assert_eq!(
            paths(&bad),
            ["spec.type", "spec.ports[0].name", "spec.ports[0].port", "spec.ports[0].protocol", "spec.ports[1].name", "spec.ports[1].targetPort"]
        );
        assert_eq!(paths(&json!({"spec": {"type": "ClusterIP"}})), ["spec.ports"]);
        assert!(paths(&json!({"spec": {"clusterIP": "None"}})).is_empty());
        assert_eq!(
            paths(&json!({"spec": {"ports": [{"port": 80, "nodePort": 30001}]}})),
            ["spec.ports[0].nodePort"]
        );
        assert!(dns1035_label("web-1").is_ok() && dns1035_label("1web").is_err());

        // An apply without the allocated values keeps them.
        let mut stored = svc.clone();
        stored["spec"]["type"] = json!("NodePort");
        stored["spec"]["clusterIP"] = json!("10.96.0.10");
        stored["spec"]["clusterIPs"] = json!(["10.96.0.10"]);
        stored["spec"]["ports"][0]["nodePort"] = json!(30080);
        let mut again = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        again = s.prepare_for_update(super::super::Part::Main, again, stored.clone());
        assert_eq!(again["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(again["spec"]["ports"][0]["nodePort"], 30080);
        // Back to ClusterIP: the node port goes.
        let mut plain = stored.clone();
        plain["spec"]["type"] = json!("ClusterIP");
        plain = s.prepare_for_update(super::super::Part::Main, plain, stored.clone());
        assert!(plain["spec"]["ports"][0].get("nodePort").is_none());
        let mut moved = stored.clone();
        moved["spec"]["clusterIP"] = json!("10.96.0.11");
        assert_eq!(s.validate_update(&moved, &stored).len(), 1);
        // To ExternalName: the cluster IP goes with the type.
        let mut external = stored.clone();
        external["spec"]["type"] = json!("ExternalName");
        external["spec"]["externalName"] = json!("example.com");
        external = s.prepare_for_update(super::super::Part::Main, external, stored.clone());
        assert!(external["spec"].get("clusterIP").is_none(), "{external}");
        assert!(s.validate(&external).is_empty(), "{:?}", s.validate(&external));
        assert_eq!(ports_cell(&stored), "80:30080/TCP");
    }
}
