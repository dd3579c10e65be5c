//! Core `v1` Event: what happened to an object, for `kubectl describe` and
//! `kubectl get events`. The node lifecycle controller records one on every
//! node state transition.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;
use mube_apis::table::{human_age, time_at, Column};
use serde_json::{json, Value};

use super::{name_of, string_at, Resource, Strategy, TableConvertor, Typed, TypedAs};

pub fn resource() -> Resource {
    Resource {
        info: &mube_apis::resources::EVENTS,
        strategy: Box::new(EventStrategy),
        table: Box::new(EventStrategy),
    }
}

struct EventStrategy;

const FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

impl Strategy for EventStrategy {
    fn typed(&self) -> &dyn Typed {
        &TypedAs::<Event>::NEW
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        FIELDS
    }

    fn field_value(&self, object: &Value, field: &str) -> Option<String> {
        if !FIELDS.contains(&field) {
            return None;
        }
        let pointer = match field {
            "source" => "/source/component".to_string(),
            other => format!("/{}", other.replace('.', "/")),
        };
        string_at(object, &pointer)
    }
}

impl TableConvertor for EventStrategy {
    /// The columns a Kubernetes server prints for events.
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Last Seen",
                "string",
                "",
                "Time when this Event was last seen",
                0,
            ),
            Column::new(
                "Type",
                "string",
                "",
                "Type of this event (Normal, Warning)",
                0,
            ),
            Column::new("Reason", "string", "", "Why the action was taken", 0),
            Column::new("Object", "string", "", "The object this Event is about", 0),
            Column::new(
                "Subobject",
                "string",
                "",
                "The subobject this Event is about",
                1,
            ),
            Column::new(
                "Source",
                "string",
                "",
                "The component reporting this event",
                1,
            ),
            Column::new(
                "Message",
                "string",
                "",
                "A human-readable description of the status of this operation",
                0,
            ),
            Column::new(
                "First Seen",
                "string",
                "",
                "Time when this Event was first seen",
                1,
            ),
            Column::new(
                "Count",
                "string",
                "",
                "The number of times this event has occurred",
                1,
            ),
            Column::new(
                "Name",
                "string",
                "name",
                "Name must be unique within a namespace.",
                1,
            ),
        ]
    }

    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        let text = |p: &str| {
            object
                .pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let last = time_at(object, "/lastTimestamp").or_else(|| time_at(object, "/eventTime"));
        let first = time_at(object, "/firstTimestamp").or(last);
        let kind = text("/involvedObject/kind").to_lowercase();
        vec![
            json!(human_age(last, now)),
            json!(text("/type")),
            json!(text("/reason")),
            json!(format!("{kind}/{}", text("/involvedObject/name"))),
            json!(text("/involvedObject/fieldPath")),
            json!(text("/source/component")),
            json!(text("/message").trim()),
            json!(human_age(first, now)),
            json!(object.get("count").and_then(Value::as_i64).unwrap_or(1)),
            json!(name_of(object)),
        ]
    }
}
