//! The few Kubernetes protobuf messages mube reads. kubectl sends some
//! requests only as `application/vnd.kubernetes.protobuf`: the reviews of
//! `kubectl auth can-i` and `whoami`, and the objects its `create`
//! generators make (`create namespace|configmap|secret|role|rolebinding|
//! clusterrole|clusterrolebinding|deployment|service`). Their fields are declared here for
//! prost, by tag, from Kubernetes' `generated.proto` (no crate ships them
//! without pulling every Kubernetes type in); each is turned into the JSON
//! object the rest of the server works with. Fields mube does not declare
//! are not read (kubectl's generators do not set them). mube answers in
//! JSON, which clients accept whatever they sent.

use std::collections::BTreeMap;

use base64::Engine;
use prost::Message;
use serde_json::{json, Map, Value};

/// Kubernetes' protobuf envelope: `k8s\0` and then an `Unknown`.
const MAGIC: &[u8] = b"k8s\x00";

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceAttributes {
    #[prost(string, optional, tag = "1")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "2")]
    verb: Option<String>,
    #[prost(string, optional, tag = "3")]
    group: Option<String>,
    #[prost(string, optional, tag = "4")]
    version: Option<String>,
    #[prost(string, optional, tag = "5")]
    resource: Option<String>,
    #[prost(string, optional, tag = "6")]
    subresource: Option<String>,
    #[prost(string, optional, tag = "7")]
    name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct NonResourceAttributes {
    #[prost(string, optional, tag = "1")]
    path: Option<String>,
    #[prost(string, optional, tag = "2")]
    verb: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct SelfSubjectAccessReviewSpec {
    #[prost(message, optional, tag = "1")]
    resource_attributes: Option<ResourceAttributes>,
    #[prost(message, optional, tag = "2")]
    non_resource_attributes: Option<NonResourceAttributes>,
}

#[derive(Clone, PartialEq, Message)]
struct SelfSubjectAccessReview {
    #[prost(message, optional, tag = "2")]
    spec: Option<SelfSubjectAccessReviewSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "6")]
    resource_version: Option<String>,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
    #[prost(string, repeated, tag = "14")]
    finalizers: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ConfigMap {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, string", tag = "2")]
    data: BTreeMap<String, String>,
    #[prost(btree_map = "string, bytes", tag = "3")]
    binary_data: BTreeMap<String, Vec<u8>>,
    #[prost(bool, optional, tag = "4")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct Secret {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, bytes", tag = "2")]
    data: BTreeMap<String, Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    type_: Option<String>,
    #[prost(btree_map = "string, string", tag = "4")]
    string_data: BTreeMap<String, String>,
    #[prost(bool, optional, tag = "5")]
    immutable: Option<bool>,
}

/// Namespace (its spec and status are the server's to set).
#[derive(Clone, PartialEq, Message)]
struct Namespace {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
}

#[derive(Clone, PartialEq, Message)]
struct PolicyRule {
    #[prost(string, repeated, tag = "1")]
    verbs: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    api_groups: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    resources: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    resource_names: Vec<String>,
    #[prost(string, repeated, tag = "5")]
    non_resource_urls: Vec<String>,
}

/// Role and ClusterRole (whose aggregationRule, tag 3, mube does not serve).
#[derive(Clone, PartialEq, Message)]
struct Role {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, repeated, tag = "2")]
    rules: Vec<PolicyRule>,
}

#[derive(Clone, PartialEq, Message)]
struct Subject {
    #[prost(string, optional, tag = "1")]
    kind: Option<String>,
    #[prost(string, optional, tag = "2")]
    api_group: Option<String>,
    #[prost(string, optional, tag = "3")]
    name: Option<String>,
    #[prost(string, optional, tag = "4")]
    namespace: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct RoleRef {
    #[prost(string, optional, tag = "1")]
    api_group: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
    #[prost(string, optional, tag = "3")]
    name: Option<String>,
}

/// RoleBinding and ClusterRoleBinding.
#[derive(Clone, PartialEq, Message)]
struct Binding {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, repeated, tag = "2")]
    subjects: Vec<Subject>,
    #[prost(message, optional, tag = "3")]
    role_ref: Option<RoleRef>,
}

#[derive(Clone, PartialEq, Message)]
struct LabelSelector {
    #[prost(btree_map = "string, string", tag = "1")]
    match_labels: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, Message)]
struct ContainerPort {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(int32, optional, tag = "2")]
    host_port: Option<i32>,
    #[prost(int32, optional, tag = "3")]
    container_port: Option<i32>,
    #[prost(string, optional, tag = "4")]
    protocol: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct EnvVar {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Container {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    image: Option<String>,
    #[prost(string, repeated, tag = "3")]
    command: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    args: Vec<String>,
    #[prost(message, repeated, tag = "6")]
    ports: Vec<ContainerPort>,
    #[prost(message, repeated, tag = "7")]
    env: Vec<EnvVar>,
    #[prost(string, optional, tag = "14")]
    image_pull_policy: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct PodSpec {
    #[prost(message, repeated, tag = "2")]
    containers: Vec<Container>,
    #[prost(string, optional, tag = "3")]
    restart_policy: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct PodTemplateSpec {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<PodSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct DeploymentStrategy {
    #[prost(string, optional, tag = "1")]
    type_: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct DeploymentSpec {
    #[prost(int32, optional, tag = "1")]
    replicas: Option<i32>,
    #[prost(message, optional, tag = "2")]
    selector: Option<LabelSelector>,
    #[prost(message, optional, tag = "3")]
    template: Option<PodTemplateSpec>,
    #[prost(message, optional, tag = "4")]
    strategy: Option<DeploymentStrategy>,
}

/// What `kubectl create deployment` sends (its status is the server's).
#[derive(Clone, PartialEq, Message)]
struct Deployment {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<DeploymentSpec>,
}

/// apimachinery's `IntOrString`: type 0 is the int, 1 the string.
#[derive(Clone, PartialEq, Message)]
struct IntOrString {
    #[prost(int64, optional, tag = "1")]
    type_: Option<i64>,
    #[prost(int32, optional, tag = "2")]
    int_val: Option<i32>,
    #[prost(string, optional, tag = "3")]
    str_val: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ServicePort {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    protocol: Option<String>,
    #[prost(int32, optional, tag = "3")]
    port: Option<i32>,
    #[prost(message, optional, tag = "4")]
    target_port: Option<IntOrString>,
    #[prost(int32, optional, tag = "5")]
    node_port: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceSpec {
    #[prost(message, repeated, tag = "1")]
    ports: Vec<ServicePort>,
    #[prost(btree_map = "string, string", tag = "2")]
    selector: BTreeMap<String, String>,
    #[prost(string, optional, tag = "3")]
    cluster_ip: Option<String>,
    #[prost(string, optional, tag = "4")]
    type_: Option<String>,
    #[prost(string, optional, tag = "10")]
    external_name: Option<String>,
}

/// What `kubectl create service clusterip|nodeport|loadbalancer|
/// externalname` sends (its status is the server's).
#[derive(Clone, PartialEq, Message)]
struct Service {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<ServiceSpec>,
}

fn service(m: Service) -> Value {
    let spec = m.spec.unwrap_or_default();
    let text = |v: Option<String>| v.filter(|s| !s.is_empty());
    let ports: Vec<Value> = spec
        .ports
        .into_iter()
        .map(|p| {
            let target = p.target_port.map(|t| match t.type_ {
                Some(1) => json!(t.str_val.unwrap_or_default()),
                _ => json!(t.int_val.unwrap_or(0)),
            });
            json!({"name": text(p.name), "protocol": text(p.protocol), "port": p.port,
                   "targetPort": target.filter(|t| *t != json!(0) && *t != json!("")),
                   "nodePort": p.node_port.filter(|n| *n != 0)})
        })
        .collect();
    json!({
        "metadata": metadata(m.metadata),
        "spec": {
            "ports": (!ports.is_empty()).then_some(ports),
            "selector": object_of(spec.selector, Value::from),
            "clusterIP": text(spec.cluster_ip),
            "type": text(spec.type_),
            "externalName": text(spec.external_name),
        },
    })
}

fn container(c: Container) -> Value {
    let list = |v: Vec<String>| (!v.is_empty()).then(|| json!(v));
    let ports: Vec<Value> = c
        .ports
        .into_iter()
        .map(|p| {
            json!({"name": p.name.filter(|n| !n.is_empty()), "hostPort": p.host_port.filter(|p| *p != 0),
                   "containerPort": p.container_port, "protocol": p.protocol.filter(|p| !p.is_empty())})
        })
        .collect();
    let env: Vec<Value> = c
        .env
        .into_iter()
        .map(|e| json!({"name": e.name, "value": e.value}))
        .collect();
    json!({
        "name": c.name,
        "image": c.image.filter(|i| !i.is_empty()),
        "command": list(c.command),
        "args": list(c.args),
        "ports": (!ports.is_empty()).then_some(ports),
        "env": (!env.is_empty()).then_some(env),
        "imagePullPolicy": c.image_pull_policy.filter(|p| !p.is_empty()),
    })
}

fn deployment(m: Deployment) -> Value {
    let spec = m.spec.unwrap_or_default();
    let template = spec.template.unwrap_or_default();
    let pod = template.spec.unwrap_or_default();
    json!({
        "metadata": metadata(m.metadata),
        "spec": {
            "replicas": spec.replicas,
            "selector": spec.selector.map(|s| json!({"matchLabels": object_of(s.match_labels, Value::from)})),
            "template": {
                "metadata": metadata(template.metadata),
                "spec": {
                    "containers": pod.containers.into_iter().map(container).collect::<Vec<_>>(),
                    "restartPolicy": pod.restart_policy.filter(|p| !p.is_empty()),
                },
            },
            "strategy": spec.strategy.map(|s| json!({"type": s.type_.filter(|t| !t.is_empty())})),
        },
    })
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A JSON object of the entries of `map` (none: no field).
fn object_of<V>(map: BTreeMap<String, V>, value: impl Fn(V) -> Value) -> Option<Value> {
    (!map.is_empty()).then(|| {
        Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, value(v)))
                .collect::<Map<_, _>>(),
        )
    })
}

fn metadata(meta: Option<ObjectMeta>) -> Value {
    let meta = meta.unwrap_or_default();
    let mut out = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            out.insert(k.into(), v);
        }
    };
    // Go leaves empty strings out of JSON (omitempty); so does this.
    let text = |v: Option<String>| v.filter(|s| !s.is_empty()).map(Value::from);
    put("name", text(meta.name));
    put("generateName", text(meta.generate_name));
    put("namespace", text(meta.namespace));
    put("resourceVersion", text(meta.resource_version));
    put("labels", object_of(meta.labels, Value::from));
    put("annotations", object_of(meta.annotations, Value::from));
    put(
        "finalizers",
        (!meta.finalizers.is_empty()).then(|| json!(meta.finalizers)),
    );
    Value::Object(out)
}

/// An object sent as protobuf, as JSON: the kinds kubectl's generators
/// send. Any other kind is 415, as before.
pub fn object_to_json(body: &[u8]) -> Result<Value, ProtobufError> {
    let (api_version, kind, raw) = open(body).map_err(ProtobufError::Invalid)?;
    let bad = |e: prost::DecodeError| ProtobufError::Invalid(format!("invalid {kind}: {e}"));
    let mut object = match kind.as_str() {
        "SelfSubjectAccessReview" | "SelfSubjectReview" => {
            return review_to_json(body).map_err(ProtobufError::Invalid)
        }
        "Namespace" => {
            let m = Namespace::decode(raw.as_slice()).map_err(bad)?;
            json!({"metadata": metadata(m.metadata)})
        }
        "ConfigMap" => {
            let m = ConfigMap::decode(raw.as_slice()).map_err(bad)?;
            json!({
                "metadata": metadata(m.metadata),
                "data": object_of(m.data, Value::from),
                "binaryData": object_of(m.binary_data, |b| Value::from(base64(&b))),
                "immutable": m.immutable,
            })
        }
        "Secret" => {
            let m = Secret::decode(raw.as_slice()).map_err(bad)?;
            json!({
                "metadata": metadata(m.metadata),
                "data": object_of(m.data, |b| Value::from(base64(&b))),
                "stringData": object_of(m.string_data, Value::from),
                "type": m.type_,
                "immutable": m.immutable,
            })
        }
        "Role" | "ClusterRole" => {
            let m = Role::decode(raw.as_slice()).map_err(bad)?;
            let rules: Vec<Value> = m
                .rules
                .into_iter()
                .map(|r| {
                    let list = |v: Vec<String>| (!v.is_empty()).then(|| json!(v));
                    json!({
                        "verbs": r.verbs,
                        "apiGroups": list(r.api_groups),
                        "resources": list(r.resources),
                        "resourceNames": list(r.resource_names),
                        "nonResourceURLs": list(r.non_resource_urls),
                    })
                })
                .collect();
            json!({"metadata": metadata(m.metadata), "rules": rules})
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let m = Binding::decode(raw.as_slice()).map_err(bad)?;
            let role = m.role_ref.unwrap_or_default();
            let subjects: Vec<Value> = m
                .subjects
                .into_iter()
                .map(|s| {
                    json!({"kind": s.kind, "apiGroup": s.api_group.filter(|g| !g.is_empty()),
                           "name": s.name, "namespace": s.namespace.filter(|n| !n.is_empty())})
                })
                .collect();
            json!({
                "metadata": metadata(m.metadata),
                "subjects": subjects,
                "roleRef": {"apiGroup": role.api_group, "kind": role.kind, "name": role.name},
            })
        }
        "Deployment" => deployment(Deployment::decode(raw.as_slice()).map_err(bad)?),
        "Service" => service(Service::decode(raw.as_slice()).map_err(bad)?),
        other => return Err(ProtobufError::Unsupported(other.to_string())),
    };
    strip_nulls(&mut object);
    object["apiVersion"] = Value::from(api_version);
    object["kind"] = Value::from(kind);
    Ok(object)
}

/// Optional fields not sent are absent, not null.
fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Why a protobuf body was not read.
#[derive(Debug)]
pub enum ProtobufError {
    /// Not a Kubernetes protobuf object.
    Invalid(String),
    /// A kind mube does not read in protobuf.
    Unsupported(String),
}

/// The object inside an envelope: (apiVersion, kind, message bytes).
fn open(body: &[u8]) -> Result<(String, String, Vec<u8>), String> {
    let inner = body
        .strip_prefix(MAGIC)
        .ok_or("a protobuf body must start with the k8s envelope")?;
    let unknown = Unknown::decode(inner).map_err(|e| format!("invalid protobuf: {e}"))?;
    let meta = unknown.type_meta.unwrap_or_default();
    Ok((
        meta.api_version.unwrap_or_default(),
        meta.kind.unwrap_or_default(),
        unknown.raw.unwrap_or_default(),
    ))
}

/// A review sent as protobuf, as the JSON object mube works with.
pub fn review_to_json(body: &[u8]) -> Result<serde_json::Value, String> {
    let (api_version, kind, raw) = open(body)?;
    let mut object = serde_json::json!({"apiVersion": api_version, "kind": kind, "spec": {}});
    if kind == "SelfSubjectAccessReview" {
        let review = SelfSubjectAccessReview::decode(raw.as_slice())
            .map_err(|e| format!("invalid SelfSubjectAccessReview: {e}"))?;
        let spec = review.spec.unwrap_or_default();
        if let Some(r) = spec.resource_attributes {
            object["spec"]["resourceAttributes"] = serde_json::json!({
                "namespace": r.namespace, "verb": r.verb, "group": r.group,
                "version": r.version, "resource": r.resource,
                "subresource": r.subresource, "name": r.name,
            });
        }
        if let Some(n) = spec.non_resource_attributes {
            object["spec"]["nonResourceAttributes"] =
                serde_json::json!({"path": n.path, "verb": n.verb});
        }
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_access_review_in_its_envelope() {
        let review = SelfSubjectAccessReview {
            spec: Some(SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some("delete".into()),
                    resource: Some("nodes".into()),
                    ..Default::default()
                }),
                non_resource_attributes: None,
            }),
        };
        let envelope = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("authorization.k8s.io/v1".into()),
                kind: Some("SelfSubjectAccessReview".into()),
            }),
            raw: Some(review.encode_to_vec()),
        };
        let mut body = MAGIC.to_vec();
        body.extend(envelope.encode_to_vec());
        let json = review_to_json(&body).unwrap();
        assert_eq!(json["spec"]["resourceAttributes"]["verb"], "delete");
        assert_eq!(json["kind"], "SelfSubjectAccessReview");
        assert!(review_to_json(b"garbage").is_err());
    }

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let mut body = MAGIC.to_vec();
        body.extend(
            Unknown {
                type_meta: Some(TypeMeta {
                    api_version: Some(api_version.into()),
                    kind: Some(kind.into()),
                }),
                raw: Some(raw),
            }
            .encode_to_vec(),
        );
        body
    }

    #[test]
    fn reads_what_kubectl_create_sends() {
        let binding = Binding {
            metadata: Some(ObjectMeta {
                name: Some("viewers".into()),
                ..Default::default()
            }),
            subjects: vec![Subject {
                kind: Some("User".into()),
                api_group: Some("rbac.authorization.k8s.io".into()),
                name: Some("bob".into()),
                namespace: None,
            }],
            role_ref: Some(RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: Some("ClusterRole".into()),
                name: Some("view".into()),
            }),
        };
        let json = object_to_json(&envelope(
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            binding.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(
            json,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": "viewers"},
                   "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob"}],
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}})
        );
        let cm = ConfigMap {
            metadata: Some(ObjectMeta {
                name: Some("c".into()),
                ..Default::default()
            }),
            data: [("k".to_string(), "v".to_string())].into(),
            binary_data: [("b".to_string(), vec![0u8, 1])].into(),
            immutable: None,
        };
        let json = object_to_json(&envelope("v1", "ConfigMap", cm.encode_to_vec())).unwrap();
        assert_eq!(json["data"]["k"], "v");
        assert_eq!(json["binaryData"]["b"], "AAE=");
        assert!(json.get("immutable").is_none());
        assert!(matches!(
            object_to_json(&envelope("v1", "Pod", vec![])),
            Err(ProtobufError::Unsupported(_))
        ));
    }
}
