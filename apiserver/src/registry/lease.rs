//! `coordination.k8s.io/v1` Lease: one per node in `kube-node-lease`, renewed by heartbeats.

use k8s_openapi::api::coordination::v1::Lease;
use mube_apis::validation::FieldError;
use serde_json::Value;

use super::{decode_as, Resource, Strategy};

pub fn resource() -> Resource {
    Resource {
        info: &mube_apis::resources::LEASES,
        status_subresource: false,
        strategy: Box::new(LeaseStrategy),
    }
}

struct LeaseStrategy;

impl Strategy for LeaseStrategy {
    fn validate(&self, object: &Value) -> Result<Vec<FieldError>, String> {
        decode_as::<Lease>(object)?;
        let mut errors = Vec::new();
        if let Some(d) = object
            .pointer("/spec/leaseDurationSeconds")
            .and_then(Value::as_i64)
        {
            if d <= 0 {
                errors.push(FieldError::new(
                    "spec.leaseDurationSeconds",
                    format!("Invalid value: {d}: must be greater than 0"),
                ));
            }
        }
        Ok(errors)
    }
}
