//! Core `v1` Pod. Stored and served like any kind so that clients that ask
//! about pods (`kubectl describe node` lists the pods on a node) get correct
//! answers; running them is the node agent's next capability.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use mube_apis::table::Column;
use serde_json::{json, Value};

use super::{age_of, name_of, string_at, Resource, Strategy, TableConvertor, Typed, TypedAs};

pub fn resource() -> Resource {
    Resource {
        info: &mube_apis::resources::PODS,
        strategy: Box::new(PodStrategy),
        table: &PodStrategy,
    }
}

struct PodStrategy;

impl Strategy for PodStrategy {
    fn typed(&self) -> &'static dyn Typed {
        &TypedAs::<Pod>::NEW
    }

    fn status_subresource(&self) -> bool {
        true
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "status.phase",
        ]
    }

    fn field_value(&self, object: &Value, field: &str) -> Option<String> {
        let pointer = match field {
            "metadata.name" => "/metadata/name",
            "metadata.namespace" => "/metadata/namespace",
            "spec.nodeName" => "/spec/nodeName",
            "status.phase" => "/status/phase",
            _ => return None,
        };
        string_at(object, pointer)
    }
}

impl TableConvertor for PodStrategy {
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new(
                "Ready",
                "string",
                "",
                "The aggregate readiness state of this pod for accepting traffic.",
                0,
            ),
            Column::new(
                "Status",
                "string",
                "",
                "The aggregate status of the containers in this pod.",
                0,
            ),
            Column::new(
                "Restarts",
                "string",
                "",
                "The number of times the containers in this pod have been restarted.",
                0,
            ),
            Column::age(),
            Column::new("IP", "string", "", "IP address allocated to the pod.", 1),
            Column::new(
                "Node",
                "string",
                "",
                "Name of the node the pod is assigned to.",
                1,
            ),
        ]
    }

    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        let statuses = object
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array);
        let total = object
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let ready = statuses.map_or(0, |s| {
            s.iter()
                .filter(|c| c.get("ready") == Some(&json!(true)))
                .count()
        });
        let restarts: i64 = statuses.map_or(0, |s| {
            s.iter()
                .filter_map(|c| c.get("restartCount")?.as_i64())
                .sum()
        });
        let text = |p: &str, none: &str| {
            object
                .pointer(p)
                .and_then(Value::as_str)
                .unwrap_or(none)
                .to_string()
        };
        vec![
            json!(name_of(object)),
            json!(format!("{ready}/{total}")),
            json!(text("/status/phase", "Pending")),
            json!(restarts),
            json!(age_of(object, now)),
            json!(text("/status/podIP", "<none>")),
            json!(text("/spec/nodeName", "<none>")),
        ]
    }
}
