//! `discovery.k8s.io/v1` EndpointSlice: the addresses behind a Service,
//! written by the endpoint controller in mube-controller-manager (and by
//! the API server for the `kubernetes` Service), read by mube-proxy.

use jiff::Timestamp;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mube_apis::resources::ResourceInfo;
use mube_apis::table::Column;
use mube_apis::validation::FieldError;
use serde_json::{json, Value};

use super::{age_of, name_of, Resource, Strategy, TableConvertor, Typed, TypedAs};

pub const INFO: ResourceInfo = ResourceInfo {
    group: "discovery.k8s.io",
    version: "v1",
    kind: "EndpointSlice",
    plural: "endpointslices",
    singular: "endpointslice",
    short_names: &[],
    namespaced: true,
    categories: &[],
};

pub fn resource() -> Resource {
    Resource {
        info: &INFO,
        strategy: Box::new(EndpointSliceStrategy),
        table: Box::new(EndpointSliceStrategy),
    }
}

struct EndpointSliceStrategy;

const ADDRESS_TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
/// Kubernetes' limits: endpoints per slice, addresses per endpoint, ports.
const MAX_ENDPOINTS: usize = 1000;
const MAX_ADDRESSES: usize = 100;
const MAX_PORTS: usize = 20000;

fn list<'a>(object: &'a Value, pointer: &str) -> &'a [Value] {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

impl Strategy for EndpointSliceStrategy {
    fn typed(&self) -> &dyn Typed {
        &TypedAs::<EndpointSlice>::NEW
    }

    fn garbage_collected(&self) -> bool {
        true
    }

    /// As Kubernetes' `ValidateEndpointSlice`, for what mube reads.
    fn validate(&self, object: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let address_type = object.get("addressType").and_then(Value::as_str);
        match address_type {
            None | Some("") => errors.push(FieldError::new("addressType", "Required value")),
            Some(t) if !ADDRESS_TYPES.contains(&t) => errors.push(FieldError::new(
                "addressType",
                format!("Unsupported value: {t:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\""),
            )),
            _ => {}
        }
        let endpoints = list(object, "/endpoints");
        if endpoints.len() > MAX_ENDPOINTS {
            errors.push(FieldError::new(
                "endpoints",
                format!("Too many: {}: must have at most {MAX_ENDPOINTS} items", endpoints.len()),
            ));
        }
        for (i, endpoint) in endpoints.iter().enumerate() {
            let addresses = list(endpoint, "/addresses");
            if addresses.is_empty() || addresses.len() > MAX_ADDRESSES {
                errors.push(FieldError::new(
                    format!("endpoints[{i}].addresses"),
                    format!("Invalid value: {}: must contain at least 1 and at most {MAX_ADDRESSES} addresses", addresses.len()),
                ));
            }
            for (j, address) in addresses.iter().enumerate() {
                let text = address.as_str().unwrap_or_default();
                let ok = match address_type {
                    Some("IPv4") => text.parse::<std::net::Ipv4Addr>().is_ok(),
                    Some("IPv6") => text.parse::<std::net::Ipv6Addr>().is_ok(),
                    _ => mube_apis::validation::dns1123_subdomain(text).is_ok(),
                };
                if !ok {
                    errors.push(FieldError::new(
                        format!("endpoints[{i}].addresses[{j}]"),
                        format!("Invalid value: {text:?}: must be a valid {} address", address_type.unwrap_or("FQDN")),
                    ));
                }
            }
        }
        let ports = list(object, "/ports");
        if ports.len() > MAX_PORTS {
            errors.push(FieldError::new("ports", "Too many"));
        }
        for (i, port) in ports.iter().enumerate() {
            if let Some(n) = port.get("port").and_then(Value::as_i64) {
                if !(1..=65535).contains(&n) {
                    errors.push(FieldError::new(
                        format!("ports[{i}].port"),
                        format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                    ));
                }
            }
            let protocol = port.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
                errors.push(FieldError::new(
                    format!("ports[{i}].protocol"),
                    format!("Unsupported value: {protocol:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
                ));
            }
        }
        errors
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        if new.get("addressType") != old.get("addressType") {
            return vec![FieldError::new(
                "addressType",
                format!("Invalid value: {}: field is immutable", new.get("addressType").unwrap_or(&Value::Null)),
            )];
        }
        Vec::new()
    }
}

impl TableConvertor for EndpointSliceStrategy {
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new("AddressType", "string", "", "The IP protocol for this slice.", 0),
            Column::new("Ports", "string", "", "The ports for this slice.", 0),
            Column::new("Endpoints", "string", "", "First addresses of this slice.", 0),
            Column::age(),
        ]
    }

    /// As kubectl prints them: up to three addresses, then "+ N more...".
    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        let ports: Vec<String> = list(object, "/ports")
            .iter()
            .map(|p| match p.get("port").and_then(Value::as_i64) {
                Some(n) => n.to_string(),
                None => "<unset>".into(),
            })
            .collect();
        let addresses: Vec<&str> = list(object, "/endpoints")
            .iter()
            .flat_map(|e| list(e, "/addresses"))
            .filter_map(Value::as_str)
            .collect();
        let endpoints = match addresses.len() {
            0 => "<unset>".to_string(),
            n if n <= 3 => addresses.join(","),
            n => format!("{} + {} more...", addresses[..3].join(","), n - 3),
        };
        vec![
            json!(name_of(object)),
            json!(object.get("addressType").and_then(Value::as_str).unwrap_or_default()),
            json!(if ports.is_empty() { "<unset>".to_string() } else { ports.join(",") }),
            json!(endpoints),
            json!(age_of(object, now)),
        ]
    }
}
