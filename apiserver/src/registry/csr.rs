//! `certificates.k8s.io/v1` CertificateSigningRequest: how a node agent
//! gets its client certificate (Kubernetes' TLS bootstrapping). The server
//! records who asked (`spec.username`, `groups`, `uid`); the spec never
//! changes after; the approver and signer (`controllers::csr_signer`)
//! write the status.

use base64::Engine;
use jiff::Timestamp;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use mube_apis::resources;
use mube_apis::table::Column;
use mube_apis::validation::FieldError;
use serde_json::{json, Value};

use super::{age_of, keep_status_apart, name_of, string_at, Part, Resource, Strategy, TableConvertor, Typed, TypedAs};
use crate::auth::UserInfo;

pub fn resource() -> Resource {
    Resource {
        info: &resources::CERTIFICATE_SIGNING_REQUESTS,
        strategy: Box::new(CsrStrategy),
        table: Box::new(CsrStrategy),
    }
}

struct CsrStrategy;

/// The PEM text of `spec.request` (base64 in JSON).
pub fn request_pem(object: &Value) -> Option<String> {
    let encoded = object.pointer("/spec/request")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// `Approved`, `Denied` or `Failed`, when set; then `Issued` once signed.
fn condition(object: &Value) -> String {
    let mut shown: Vec<String> = object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("type").and_then(Value::as_str).map(str::to_string))
        .collect();
    if shown.is_empty() {
        shown.push("Pending".into());
    }
    if object.pointer("/status/certificate").is_some() {
        shown.push("Issued".into());
    }
    shown.join(",")
}

impl Strategy for CsrStrategy {
    fn typed(&self) -> &dyn Typed {
        &TypedAs::<CertificateSigningRequest>::NEW
    }

    fn prepare_for_create(&self, object: &mut Value, _now: Timestamp) {
        if let Some(obj) = object.as_object_mut() {
            obj.remove("status");
        }
    }

    fn set_requester(&self, object: &mut Value, user: &UserInfo) {
        if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("username".into(), json!(user.username));
            spec.insert("groups".into(), json!(user.groups));
            spec.remove("uid");
            spec.remove("extra");
        }
    }

    fn status_subresource(&self) -> bool {
        true
    }

    /// The request is what was signed for: it never changes.
    fn prepare_for_update(&self, part: Part, new: Value, old: Value) -> Value {
        let mut merged = keep_status_apart(part, new, old.clone());
        if let (Some(obj), Some(spec)) = (merged.as_object_mut(), old.get("spec")) {
            obj.insert("spec".into(), spec.clone());
        }
        merged
    }

    fn validate(&self, object: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match request_pem(object) {
            None => errors.push(FieldError::new("spec.request", "Required value")),
            Some(pem) => {
                if let Err(e) = crate::pki::request_subject(&pem) {
                    errors.push(FieldError::new(
                        "spec.request",
                        format!("Invalid value: \"<request>\": {e}"),
                    ));
                }
            }
        }
        if string_at(object, "/spec/signerName").unwrap_or_default().is_empty() {
            errors.push(FieldError::new("spec.signerName", "Required value"));
        }
        if object
            .pointer("/spec/usages")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            errors.push(FieldError::new("spec.usages", "Required value"));
        }
        errors
    }
}

impl TableConvertor for CsrStrategy {
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::age(),
            Column::new("SignerName", "string", "", "The signer asked for.", 0),
            Column::new("Requestor", "string", "", "Who asked.", 0),
            Column::new("Condition", "string", "", "Approval and issuance.", 0),
        ]
    }

    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        vec![
            json!(name_of(object)),
            json!(age_of(object, now)),
            json!(string_at(object, "/spec/signerName").unwrap_or_default()),
            json!(string_at(object, "/spec/username").unwrap_or_default()),
            json!(condition(object)),
        ]
    }
}
