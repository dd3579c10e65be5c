//! `coordination.k8s.io/v1` Lease: one per node in `kube-node-lease`, renewed by heartbeats.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use mube_apis::table::Column;
use mube_apis::validation::FieldError;
use serde_json::{json, Value};

use super::{age_of, name_of, Resource, Strategy, TableConvertor, Typed, TypedAs};

pub fn resource() -> Resource {
    Resource {
        info: &mube_apis::resources::LEASES,
        strategy: Box::new(LeaseStrategy),
        table: Box::new(LeaseStrategy),
    }
}

struct LeaseStrategy;

impl Strategy for LeaseStrategy {
    fn typed(&self) -> &dyn Typed {
        &TypedAs::<Lease>::NEW
    }

    fn validate(&self, object: &Value) -> Vec<FieldError> {
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
        errors
    }
}

impl TableConvertor for LeaseStrategy {
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new(
                "Holder",
                "string",
                "",
                "The holder of the lease (the node, for node leases).",
                0,
            ),
            Column::age(),
        ]
    }

    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        let holder = object
            .pointer("/spec/holderIdentity")
            .and_then(Value::as_str)
            .unwrap_or("");
        vec![
            json!(name_of(object)),
            json!(holder),
            json!(age_of(object, now)),
        ]
    }
}
