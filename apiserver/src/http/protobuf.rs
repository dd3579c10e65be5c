//! The few Kubernetes protobuf messages mube reads. kubectl sends some
//! requests only as `application/vnd.kubernetes.protobuf` (the reviews of
//! `kubectl auth can-i` and `whoami`); their fields are declared here for
//! prost, by tag, from Kubernetes' `generated.proto`. mube answers in
//! JSON, which clients accept whatever they sent.

use prost::Message;

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
}
