//! Core `v1` Pod, with the fields mube runs: a field it does not support
//! is refused (422), never silently ignored. A pod is bound to a node once
//! (`pods/binding`, or its `spec.nodeName`), and its spec does not change
//! after, but for container images, as Kubernetes allows.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use mube_apis::table::Column;
use mube_apis::validation::FieldError;
use serde_json::{json, Value};

use super::{
    age_of, name_of, string_at, Graceful, Resource, Strategy, TableConvertor, Typed, TypedAs,
};

pub fn resource() -> Resource {
    Resource {
        info: &mube_apis::resources::PODS,
        strategy: Box::new(PodStrategy),
        table: Box::new(PodStrategy),
    }
}

struct PodStrategy;

/// The pod spec fields mube supports. `dnsPolicy` is kept as Kubernetes
/// treats it without cluster DNS: `ClusterFirst` resolves as `Default`.
const SPEC_FIELDS: &[&str] = &[
    "containers",
    "restartPolicy",
    "nodeSelector",
    "tolerations",
    "terminationGracePeriodSeconds",
    "hostNetwork",
    "nodeName",
    "schedulerName",
    "dnsPolicy",
    "enableServiceLinks",
];

/// The container fields mube supports.
const CONTAINER_FIELDS: &[&str] = &[
    "name",
    "image",
    "command",
    "args",
    "env",
    "ports",
    "resources",
    "imagePullPolicy",
    "stdin",
    "stdinOnce",
    "tty",
];

/// An env entry's fields mube supports: a value, not a reference.
const ENV_FIELDS: &[&str] = &["name", "value"];
/// A port's fields mube supports.
const PORT_FIELDS: &[&str] = &["name", "containerPort", "hostPort", "hostIP", "protocol"];
/// What mube reads of `resources`.
const RESOURCES_FIELDS: &[&str] = &["requests", "limits"];

fn unsupported(field: String) -> FieldError {
    FieldError::new(field, "Forbidden: not supported by mube")
}

/// `Always` for an image without a tag or tagged `latest`, else
/// `IfNotPresent`, as Kubernetes defaults it. One addition: images named
/// under `mube.local/` are built and imported locally (scripts/images.py,
/// `ctr images import`); no registry serves that name, so pulling one
/// always fails and they default to `IfNotPresent`, tag or not.
/// The registry name of images that exist only where they were imported.
pub const LOCAL_REGISTRY: &str = "mube.local/";

fn default_pull_policy(image: &str) -> &'static str {
    if image.starts_with(LOCAL_REGISTRY) {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    let tagged = last.contains(':') && !last.ends_with(":latest");
    if tagged || image.contains('@') {
        "IfNotPresent"
    } else {
        "Always"
    }
}

/// Kubernetes' pod spec defaults, for what mube supports: on a Pod, and on
/// the pod template of a workload (so that the template read back is what
/// its pods get, and its hash does not change when it is written again).
pub(super) fn default_spec(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    for (field, default) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
    ] {
        spec.entry(field).or_insert(default);
    }
    if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            let image = c.get("image").and_then(Value::as_str).unwrap_or("").to_string();
            c.entry("imagePullPolicy")
                .or_insert(json!(default_pull_policy(&image)));
            // Kubernetes always has it (a Go struct, not a pointer), and
            // kubectl sends it back so: a template read and written again
            // must be the same template.
            c.entry("resources").or_insert(json!({}));
        }
    }
}

/// Kubernetes' DefaultTolerationSeconds admission: a pod that does not
/// say how long it stays on a node that is not ready or unreachable
/// tolerates either for 300 s, after which taint-based eviction deletes it
/// (and its ReplicaSet replaces it elsewhere).
fn default_tolerations(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    let tolerations = spec.entry("tolerations").or_insert(json!([]));
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let covered = list.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            (effect.is_empty() || effect == "NoExecute")
                && (k == key
                    || (k.is_empty() && t.get("operator").and_then(Value::as_str) == Some("Exists")))
        });
        if !covered {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

/// The pod rules for a pod template's `spec` at `path` (such as
/// `spec.template.spec`), with the errors' fields under that path.
pub(super) fn validate_spec(spec: &Value, path: &str) -> Vec<FieldError> {
    PodStrategy
        .validate(&json!({ "spec": spec }))
        .into_iter()
        .map(|mut e| {
            e.field = match e.field.strip_prefix("spec") {
                Some(rest) => format!("{path}{rest}"),
                None => e.field,
            };
            e
        })
        .collect()
}

impl Strategy for PodStrategy {
    fn typed(&self) -> &dyn Typed {
        &TypedAs::<Pod>::NEW
    }

    /// Kubernetes' defaults for what mube supports, and phase Pending.
    fn prepare_for_create(&self, object: &mut Value, _now: Timestamp) {
        if let Some(spec) = object.get_mut("spec") {
            default_spec(spec);
            default_tolerations(spec);
        }
        if let Some(obj) = object.as_object_mut() {
            obj.insert("status".into(), json!({"phase": "Pending"}));
        }
    }

    /// The supported fields only, with the values mube can act on.
    fn validate(&self, object: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let Some(spec) = object.get("spec").and_then(Value::as_object) else {
            return vec![FieldError::new("spec.containers", "Required value")];
        };
        for field in spec.keys().filter(|k| !SPEC_FIELDS.contains(&k.as_str())) {
            errors.push(unsupported(format!("spec.{field}")));
        }
        let containers = spec.get("containers").and_then(Value::as_array);
        if containers.is_none_or(Vec::is_empty) {
            errors.push(FieldError::new("spec.containers", "Required value"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, c) in containers.into_iter().flatten().enumerate() {
            let at = |f: &str| format!("spec.containers[{i}].{f}");
            let Some(c) = c.as_object() else { continue };
            for field in c.keys().filter(|k| !CONTAINER_FIELDS.contains(&k.as_str())) {
                errors.push(unsupported(at(field)));
            }
            match c.get("name").and_then(Value::as_str).unwrap_or("") {
                "" => errors.push(FieldError::new(at("name"), "Required value")),
                name => {
                    if let Err(m) = mube_apis::validation::dns1123_label(name) {
                        errors.push(FieldError::new(at("name"), m));
                    }
                    if !names.insert(name.to_string()) {
                        errors.push(FieldError::new(at("name"), format!("Duplicate value: {name:?}")));
                    }
                }
            }
            // Inside the supported fields, only what mube acts on: an env
            // value (not valueFrom), ports as the runtime maps them, and
            // CPU and memory.
            let nested: [(&str, &[&str]); 3] = [
                ("env", ENV_FIELDS),
                ("ports", PORT_FIELDS),
                ("resources", RESOURCES_FIELDS),
            ];
            for (list, allowed) in nested {
                let items: Vec<(String, &Value)> = match c.get(list) {
                    Some(Value::Array(a)) => a
                        .iter()
                        .enumerate()
                        .map(|(j, v)| (format!("{list}[{j}]"), v))
                        .collect(),
                    Some(v @ Value::Object(_)) => vec![(list.to_string(), v)],
                    _ => Vec::new(),
                };
                for (path, item) in items {
                    for field in item
                        .as_object()
                        .into_iter()
                        .flat_map(|o| o.keys())
                        .filter(|k| !allowed.contains(&k.as_str()))
                    {
                        errors.push(unsupported(at(&format!("{path}.{field}"))));
                    }
                }
            }
            for part in ["requests", "limits"] {
                let table = c.get("resources").and_then(|r| r.get(part)).and_then(Value::as_object);
                for resource in table.into_iter().flatten().map(|(k, _)| k) {
                    if resource != "cpu" && resource != "memory" {
                        errors.push(FieldError::new(
                            at(&format!("resources.{part}[{resource}]")),
                            "Forbidden: not supported by mube (cpu and memory are)",
                        ));
                    }
                }
                for (resource, value) in table.into_iter().flatten() {
                    let field = at(&format!("resources.{part}[{resource}]"));
                    match value.as_str().and_then(mube_apis::quantity::milli) {
                        // Kubernetes' bound: 2^63-1 in milli-units.
                        Some(q) if (0..=i64::MAX as i128).contains(&q) => {}
                        Some(q) if q < 0 => errors.push(FieldError::new(
                            field,
                            format!("Invalid value: {value}: must be greater than or equal to 0"),
                        )),
                        _ => errors.push(FieldError::new(
                            field,
                            format!("Invalid value: {value}: must be a quantity, such as 500m, 2 or 128Mi, no larger than 2^63-1 milli-units"),
                        )),
                    }
                }
            }
            if c.get("image").and_then(Value::as_str).unwrap_or("").trim().is_empty() {
                errors.push(FieldError::new(at("image"), "Required value"));
            }
            if let Some(p) = c.get("imagePullPolicy").and_then(Value::as_str) {
                if !matches!(p, "Always" | "IfNotPresent" | "Never") {
                    errors.push(FieldError::new(
                        at("imagePullPolicy"),
                        format!("Unsupported value: {p:?}: supported values: \"Always\", \"IfNotPresent\", \"Never\""),
                    ));
                }
            }
        }
        let text = |f: &str| spec.get(f).and_then(Value::as_str);
        if let Some(p) = text("restartPolicy") {
            if !matches!(p, "Always" | "OnFailure" | "Never") {
                errors.push(FieldError::new(
                    "spec.restartPolicy",
                    format!("Unsupported value: {p:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
                ));
            }
        }
        if let Some(p) = text("dnsPolicy") {
            if !matches!(p, "ClusterFirst" | "Default") {
                errors.push(FieldError::new(
                    "spec.dnsPolicy",
                    format!("Unsupported value: {p:?}: supported values: \"ClusterFirst\", \"Default\" (mube has no cluster DNS)"),
                ));
            }
        }
        if spec
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|s| s < 0)
        {
            errors.push(FieldError::new(
                "spec.terminationGracePeriodSeconds",
                "Invalid value: must be greater than or equal to 0",
            ));
        }
        errors
    }

    /// Kubernetes' rule: a pod's spec does not change, but for container
    /// images; `spec.nodeName` is set only by a binding, and never moved.
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        let mut new_spec = new.get("spec").cloned().unwrap_or(Value::Null);
        let mut old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
        let old_node = old_spec.get("nodeName").and_then(Value::as_str).unwrap_or("").to_string();
        let new_node = new_spec.get("nodeName").and_then(Value::as_str).unwrap_or("").to_string();
        if !old_node.is_empty() && old_node != new_node {
            return vec![FieldError::new(
                "spec.nodeName",
                format!("Forbidden: pod is already assigned to node {old_node:?}"),
            )];
        }
        // Binding is `pods/binding`'s (a right of its own, and the registry
        // does not apply these rules to it), never an update's.
        if old_node.is_empty() && !new_node.is_empty() {
            return vec![FieldError::new(
                "spec.nodeName",
                "Forbidden: a pod is assigned to a node through pods/binding",
            )];
        }
        for spec in [&mut new_spec, &mut old_spec] {
            if let Some(s) = spec.as_object_mut() {
                s.remove("nodeName");
                if let Some(cs) = s.get_mut("containers").and_then(Value::as_array_mut) {
                    for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                        c.remove("image");
                    }
                }
            }
        }
        if new_spec != old_spec {
            return vec![FieldError::new(
                "spec",
                "Forbidden: pod updates may not change fields other than `spec.containers[*].image` (and `spec.nodeName` once, by a binding)",
            )];
        }
        Vec::new()
    }

    fn status_subresource(&self) -> bool {
        true
    }

    fn garbage_collected(&self) -> bool {
        true
    }

    /// As Kubernetes' pod strategy: a pod bound to a node gets the grace
    /// period asked for, else its own `terminationGracePeriodSeconds`
    /// (default 30); a negative one is 1. A pod on no node, a finished
    /// pod, and a delete with grace 0 (`--force --grace-period=0`, and the
    /// agent's own final delete) remove it at once.
    fn graceful_deletion(&self, object: &Value, requested: Option<i64>) -> Option<Graceful> {
        let node = string_at(object, "/spec/nodeName").filter(|n| !n.is_empty())?;
        if matches!(
            object.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        ) {
            return None;
        }
        let seconds = requested
            .or_else(|| {
                object
                    .pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30);
        let seconds = if seconds < 0 { 1 } else { seconds };
        (seconds > 0).then_some(Graceful { seconds, node })
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "status.phase",
        ]
    }

    /// Every node agent watches its own pods: `spec.nodeName=<node>`.
    fn indexed_field(&self) -> Option<&'static str> {
        Some("spec.nodeName")
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

    /// As kubectl's (and kube-apiserver's) pod printer: STATUS is the
    /// reason a container waits or ended (`CrashLoopBackOff`, `Completed`,
    /// `Error`), else the phase; `Terminating` once deleted. RESTARTS
    /// says when the last restart was.
    fn cells(&self, object: &Value, now: Timestamp) -> Vec<Value> {
        let text = |p: &str| object.pointer(p).and_then(Value::as_str).filter(|s| !s.is_empty());
        let total = object
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let mut reason = text("/status/reason")
            .or(text("/status/phase"))
            .unwrap_or("Pending")
            .to_string();
        let (mut ready, mut restarts, mut running) = (0, 0i64, false);
        let mut last_restart: Option<Timestamp> = None;
        let statuses = object
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array);
        for c in statuses.into_iter().flatten().rev() {
            restarts += c.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
            if let Some(t) = c
                .pointer("/lastState/terminated/finishedAt")
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<Timestamp>().ok())
            {
                last_restart = Some(last_restart.map_or(t, |l| l.max(t)));
            }
            let at = |p: &str| c.pointer(p).and_then(Value::as_str).filter(|s| !s.is_empty());
            if let Some(r) = at("/state/waiting/reason") {
                reason = r.to_string();
            } else if let Some(r) = at("/state/terminated/reason") {
                reason = r.to_string();
            } else if let Some(t) = c.pointer("/state/terminated") {
                reason = match t.get("signal").and_then(Value::as_i64).filter(|s| *s != 0) {
                    Some(signal) => format!("Signal:{signal}"),
                    None => format!(
                        "ExitCode:{}",
                        t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                    ),
                };
            } else if c.get("ready") == Some(&json!(true)) && c.pointer("/state/running").is_some() {
                running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && running {
            let ready_condition = object
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
            reason = if ready_condition { "Running" } else { "NotReady" }.into();
        }
        let terminal = matches!(text("/status/phase"), Some("Succeeded" | "Failed"));
        if object.pointer("/metadata/deletionTimestamp").is_some() && !terminal {
            reason = if text("/status/reason") == Some("NodeLost") {
                "Unknown".into()
            } else {
                "Terminating".into()
            };
        }
        let restarts = match last_restart {
            Some(t) if restarts > 0 => format!(
                "{restarts} ({} ago)",
                mube_apis::table::human_age(Some(t), now)
            ),
            _ => restarts.to_string(),
        };
        vec![
            json!(name_of(object)),
            json!(format!("{ready}/{total}")),
            json!(reason),
            json!(restarts),
            json!(age_of(object, now)),
            json!(text("/status/podIP").unwrap_or("<none>")),
            json!(text("/spec/nodeName").unwrap_or("<none>")),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_nested_fields_are_refused_by_path() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{
            "name": "c", "image": "i",
            "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}],
            "ports": [{"containerPort": 80, "hostPort": 8080}],
            "resources": {"limits": {"ephemeral-storage": "1Gi", "cpu": "1"}, "claims": []},
        }]}});
        let fields: Vec<String> = PodStrategy.validate(&pod).into_iter().map(|e| e.field).collect();
        assert!(fields.contains(&"spec.containers[0].env[1].valueFrom".to_string()), "{fields:?}");
        assert!(fields.contains(&"spec.containers[0].resources.claims".to_string()), "{fields:?}");
        assert!(fields.contains(&"spec.containers[0].resources.limits[ephemeral-storage]".to_string()), "{fields:?}");
        assert_eq!(fields.len(), 3, "{fields:?}");
    }

    #[test]
    fn pull_policy_defaults_as_kubernetes_but_for_local_images() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/app"), "Always");
        assert_eq!(default_pull_policy("mube.local/busybox"), "IfNotPresent");
    }

    #[test]
    fn graceful_deletion_as_kubernetes_pod_strategy() {
        let pod = |node: &str, phase: &str| {
            json!({"spec": {"nodeName": node, "terminationGracePeriodSeconds": 5},
                   "status": {"phase": phase}})
        };
        let s = PodStrategy;
        assert_eq!(
            s.graceful_deletion(&pod("n1", "Running"), None),
            Some(Graceful { seconds: 5, node: "n1".into() })
        );
        assert_eq!(s.graceful_deletion(&pod("n1", "Running"), Some(-3)).map(|g| g.seconds), Some(1));
        assert_eq!(s.graceful_deletion(&pod("n1", "Running"), Some(0)), None);
        assert_eq!(s.graceful_deletion(&pod("", "Pending"), None), None);
        assert_eq!(s.graceful_deletion(&pod("n1", "Succeeded"), None), None);
    }
}
