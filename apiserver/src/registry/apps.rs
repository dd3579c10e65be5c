//! `apps/v1` Deployment and ReplicaSet: the workload kinds the controller
//! manager keeps true. Both carry a pod template (held to the pod rules and
//! defaulted as a pod is, so that the template read back is what its pods
//! get), a label selector that must select the template and never changes,
//! and the `status` and `scale` subresources.

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use mube_apis::resources::{DEPLOYMENTS, REPLICA_SETS};
use mube_apis::table::Column;
use mube_apis::validation::FieldError;
use serde_json::{json, Value};

use super::{
    age_of, keep_status_apart, name_of, pod, Part, Resource, Strategy, TableConvertor, Typed,
    TypedAs,
};

pub fn deployment() -> Resource {
    Resource {
        info: &DEPLOYMENTS,
        strategy: Box::new(Workload::Deployment),
        table: Box::new(Workload::Deployment),
    }
}

pub fn replica_set() -> Resource {
    Resource {
        info: &REPLICA_SETS,
        strategy: Box::new(Workload::ReplicaSet),
        table: Box::new(Workload::ReplicaSet),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    Deployment,
    ReplicaSet,
}

/// Kubernetes' defaults for apps/v1 (`SetDefaults_Deployment`,
/// `SetDefaults_ReplicaSet`), and the pod template's.
fn set_defaults(kind: Workload, object: &mut Value) {
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.entry("replicas").or_insert(json!(1));
    if let Some(template_spec) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        pod::default_spec(template_spec);
    }
    if kind == Workload::Deployment {
        spec.entry("revisionHistoryLimit").or_insert(json!(10));
        spec.entry("progressDeadlineSeconds").or_insert(json!(600));
        let strategy = spec.entry("strategy").or_insert(json!({})).as_object_mut();
        if let Some(strategy) = strategy {
            let type_ = strategy
                .entry("type")
                .or_insert(json!("RollingUpdate"))
                .clone();
            if type_ == "RollingUpdate" {
                if let Some(rolling) = strategy
                    .entry("rollingUpdate")
                    .or_insert(json!({}))
                    .as_object_mut()
                {
                    rolling.entry("maxUnavailable").or_insert(json!("25%"));
                    rolling.entry("maxSurge").or_insert(json!("25%"));
                }
            }
        }
    }
}

/// An IntOrString that must be a count or a percentage: its value, and
/// whether it is a percentage.
fn int_or_percent(value: &Value) -> Result<(i64, bool), String> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .map(|n| (n, false))
            .ok_or_else(|| format!("Invalid value: {n}: must be an integer")),
        Value::String(s) => s
            .strip_suffix('%')
            .and_then(|n| n.parse::<i64>().ok())
            .map(|n| (n, true))
            .ok_or_else(|| format!("Invalid value: {s:?}: a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')")),
        other => Err(format!("Invalid value: {other}: must be an integer or a percentage")),
    }
}

fn validate_rolling(strategy: &Value, errors: &mut Vec<FieldError>) {
    let type_ = strategy.get("type").and_then(Value::as_str).unwrap_or("");
    let rolling = strategy.get("rollingUpdate");
    match type_ {
        "Recreate" => {
            if rolling.is_some_and(|r| !r.is_null()) {
                errors.push(FieldError::new(
                    "spec.strategy.rollingUpdate",
                    "Forbidden: may not be specified when strategy `type` is 'Recreate'",
                ));
            }
            return;
        }
        "RollingUpdate" => {}
        other => {
            errors.push(FieldError::new(
                "spec.strategy.type",
                format!("Unsupported value: {other:?}: supported values: \"Recreate\", \"RollingUpdate\""),
            ));
            return;
        }
    }
    let mut read = |field: &str| -> Option<(i64, bool)> {
        let value = rolling.and_then(|r| r.get(field))?;
        let at = format!("spec.strategy.rollingUpdate.{field}");
        match int_or_percent(value) {
            Ok((n, _)) if n < 0 => {
                errors.push(FieldError::new(
                    at,
                    format!("Invalid value: {n}: must be greater than or equal to 0"),
                ));
                None
            }
            Ok((n, true)) if n > 100 && field == "maxUnavailable" => {
                errors.push(FieldError::new(
                    at,
                    format!("Invalid value: \"{n}%\": must not be greater than 100%"),
                ));
                None
            }
            Ok(v) => Some(v),
            Err(m) => {
                errors.push(FieldError::new(at, m));
                None
            }
        }
    };
    let unavailable = read("maxUnavailable");
    let surge = read("maxSurge");
    if let (Some((0, _)), Some((0, _))) = (unavailable, surge) {
        errors.push(FieldError::new(
            "spec.strategy.rollingUpdate.maxUnavailable",
            "Invalid value: 0: may not be 0 when `maxSurge` is 0",
        ));
    }
}

/// The label selector, as the string `?labelSelector=` takes.
pub fn selector_string(object: &Value) -> Option<String> {
    let selector: LabelSelector =
        serde_json::from_value(object.pointer("/spec/selector")?.clone()).ok()?;
    mube_apis::selector::label_selector_string(&selector).ok()
}

fn non_negative(spec: &Value, field: &str, errors: &mut Vec<FieldError>) {
    if let Some(n) = spec.get(field).and_then(Value::as_i64).filter(|n| *n < 0) {
        errors.push(FieldError::new(
            format!("spec.{field}"),
            format!("Invalid value: {n}: must be greater than or equal to 0"),
        ));
    }
}

impl Strategy for Workload {
    fn typed(&self) -> &dyn Typed {
        match self {
            Workload::Deployment => &TypedAs::<Deployment>::NEW,
            Workload::ReplicaSet => &TypedAs::<ReplicaSet>::NEW,
        }
    }

    /// Defaults, and no status: the controller reports it.
    fn prepare_for_create(&self, object: &mut Value, _now: Timestamp) {
        set_defaults(*self, object);
        if let Some(obj) = object.as_object_mut() {
            obj.remove("status");
        }
    }

    fn prepare_for_update(&self, part: Part, new: Value, old: Value) -> Value {
        let mut new = keep_status_apart(part, new, old);
        if part == Part::Main {
            set_defaults(*self, &mut new);
        }
        new
    }

    fn validate(&self, object: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let Some(spec) = object.get("spec") else {
            return vec![FieldError::new("spec.selector", "Required value")];
        };
        non_negative(spec, "replicas", &mut errors);
        non_negative(spec, "minReadySeconds", &mut errors);
        match spec.get("selector") {
            None | Some(Value::Null) => {
                errors.push(FieldError::new("spec.selector", "Required value"))
            }
            Some(raw) => {
                match serde_json::from_value::<LabelSelector>(raw.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|s| mube_apis::selector::label_selector_string(&s))
                {
                    Err(m) => errors.push(FieldError::new("spec.selector", m)),
                    Ok(text) if text.is_empty() => errors.push(FieldError::new(
                        "spec.selector",
                        "Invalid value: \"null\": empty selector is invalid for deployment",
                    )),
                    Ok(text) => {
                        let labels = object
                            .pointer("/spec/template/metadata/labels")
                            .and_then(|l| serde_json::from_value(l.clone()).ok());
                        let selects = mube_apis::selector::LabelSelector::parse(&text)
                            .is_ok_and(|s| s.matches(labels.as_ref()));
                        if !selects {
                            errors.push(FieldError::new(
                            "spec.template.metadata.labels",
                            format!("Invalid value: {}: `selector` does not match template `labels`", object.pointer("/spec/template/metadata/labels").unwrap_or(&Value::Null)),
                        ));
                        }
                    }
                }
            }
        }
        match object.pointer("/spec/template/spec") {
            None => errors.push(FieldError::new(
                "spec.template.spec.containers",
                "Required value",
            )),
            Some(template) => {
                errors.extend(pod::validate_spec(template, "spec.template.spec"));
                if let Some(p) = template
                    .get("restartPolicy")
                    .and_then(Value::as_str)
                    .filter(|p| *p != "Always")
                {
                    errors.push(FieldError::new(
                        "spec.template.spec.restartPolicy",
                        format!("Unsupported value: {p:?}: supported values: \"Always\""),
                    ));
                }
            }
        }
        if *self == Workload::Deployment {
            non_negative(spec, "revisionHistoryLimit", &mut errors);
            if let Some(strategy) = spec.get("strategy") {
                validate_rolling(strategy, &mut errors);
            }
            let ready = spec
                .get("minReadySeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if let Some(deadline) = spec.get("progressDeadlineSeconds").and_then(Value::as_i64) {
                if deadline <= ready {
                    errors.push(FieldError::new(
                        "spec.progressDeadlineSeconds",
                        format!("Invalid value: {deadline}: must be greater than minReadySeconds"),
                    ));
                }
            }
        }
        errors
    }

    /// apps/v1: the selector never changes once set.
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        let (n, o) = (new.pointer("/spec/selector"), old.pointer("/spec/selector"));
        if n != o {
            return vec![FieldError::new(
                "spec.selector",
                format!(
                    "Invalid value: {}: field is immutable",
                    n.unwrap_or(&Value::Null)
                ),
            )];
        }
        Vec::new()
    }

    fn status_subresource(&self) -> bool {
        true
    }

    fn scale_subresource(&self) -> bool {
        true
    }

    fn garbage_collected(&self) -> bool {
        true
    }
}

/// The containers' names and images, comma-joined, as the wide columns.
fn containers_and_images(object: &Value) -> (String, String) {
    let containers = object
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let join = |field: &str| {
        containers
            .iter()
            .filter_map(|c| c.get(field).and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(",")
    };
    (join("name"), join("image"))
}

fn count(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

impl TableConvertor for Workload {
    fn columns(&self) -> Vec<Column> {
        let integer =
            |name: &str, description: &str| Column::new(name, "integer", "", description, 0);
        let mut columns = vec![Column::name()];
        match self {
            Workload::Deployment => columns.extend([
                Column::new("Ready", "string", "", "Number of the pod with ready state", 0),
                integer("Up-to-date", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
                integer("Available", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
            ]),
            Workload::ReplicaSet => columns.extend([
                integer("Desired", "Replicas is the number of desired replicas."),
                integer("Current", "Replicas is the most recently observed number of replicas."),
                integer("Ready", "The number of ready replicas for this replica set."),
            ]),
        }
        columns.push(Column::age());
        columns.extend([
            Column::new(
                "Containers",
                "string",
                "",
                "Names of each container in the template.",
                1,
            ),
            Column::new(
                "Images",
                "string",
                "",
                "Images referenced by each container in the template.",
                1,
            ),
            Column::new("Selector", "string", "", "Label selector for pods.", 1),
        ]);
        columns
    }

    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        let mut cells = vec![json!(name_of(object))];
        match self {
            Workload::Deployment => cells.extend([
                json!(format!(
                    "{}/{}",
                    count(object, "/status/readyReplicas"),
                    count(object, "/spec/replicas")
                )),
                json!(count(object, "/status/updatedReplicas")),
                json!(count(object, "/status/availableReplicas")),
            ]),
            Workload::ReplicaSet => cells.extend([
                json!(count(object, "/spec/replicas")),
                json!(count(object, "/status/replicas")),
                json!(count(object, "/status/readyReplicas")),
            ]),
        }
        let (containers, images) = containers_and_images(object);
        cells.extend([
            json!(age_of(object, now)),
            json!(containers),
            json!(images),
            json!(selector_string(object).unwrap_or_default()),
        ]);
        cells
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(extra: Value) -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "mube.local/busybox"}]}
                }
            }
        });
        json_patch::merge(&mut d, &extra);
        d
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_are_kubernetes_own() {
        let mut d = deployment(json!({}));
        Workload::Deployment.prepare_for_create(&mut d, Timestamp::now());
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        let template = &d["spec"]["template"]["spec"];
        assert_eq!(template["restartPolicy"], "Always");
        assert_eq!(template["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert!(Workload::Deployment.validate(&d).is_empty());
        let mut recreate = deployment(json!({"spec": {"strategy": {"type": "Recreate"}}}));
        Workload::Deployment.prepare_for_create(&mut recreate, Timestamp::now());
        assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn bad_workloads_name_their_fields() {
        let cases = [
            (
                json!({"spec": {"selector": {"matchLabels": {"app": "other"}}}}),
                "spec.template.metadata.labels",
            ),
            (json!({"spec": {"selector": null}}), "spec.selector"),
            (
                json!({"spec": {"selector": {"matchLabels": null}}}),
                "spec.selector",
            ),
            (json!({"spec": {"replicas": -1}}), "spec.replicas"),
            (
                json!({"spec": {"template": {"spec": {"restartPolicy": "Never"}}}}),
                "spec.template.spec.restartPolicy",
            ),
            (
                json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": ""}]}}}}),
                "spec.template.spec.containers[0].image",
            ),
            (
                json!({"spec": {"strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}}}),
                "spec.strategy.rollingUpdate",
            ),
            (
                json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}}}),
                "spec.strategy.rollingUpdate.maxUnavailable",
            ),
            (
                json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "x"}}}}),
                "spec.strategy.rollingUpdate.maxSurge",
            ),
            (
                json!({"spec": {"progressDeadlineSeconds": 5, "minReadySeconds": 5}}),
                "spec.progressDeadlineSeconds",
            ),
        ];
        for (patch, field) in cases {
            let d = deployment(patch.clone());
            assert!(
                fields(Workload::Deployment.validate(&d)).contains(&field.to_string()),
                "{patch} -> {field}: {:?}",
                fields(Workload::Deployment.validate(&d))
            );
        }
        let old = deployment(json!({}));
        let new =
            deployment(json!({"spec": {"selector": {"matchLabels": {"app": "web", "x": "y"}}}}));
        assert_eq!(
            fields(Workload::ReplicaSet.validate_update(&new, &old)),
            ["spec.selector"]
        );
    }

    #[test]
    fn tables_read_status() {
        let mut d = deployment(
            json!({"spec": {"replicas": 3}, "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}),
        );
        d["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        let cells = Workload::Deployment.cells(&d, Timestamp::now());
        assert_eq!(cells[..4], [json!("web"), json!("2/3"), json!(3), json!(2)]);
        assert_eq!(
            cells[5..],
            [json!("c"), json!("mube.local/busybox"), json!("app=web")]
        );
        assert_eq!(Workload::Deployment.columns().len(), cells.len());
        assert_eq!(
            Workload::ReplicaSet.columns().len(),
            Workload::ReplicaSet.cells(&d, Timestamp::now()).len()
        );
    }
}
