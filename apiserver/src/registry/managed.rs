//! `metadata.managedFields` and server-side apply, as Kubernetes defines
//! them (structured-merge-diff, written here: no Rust crate implements it).
//!
//! Every write names a field manager. An update (create, PUT, PATCH) gives
//! its manager the fields it changed and takes them from everyone else. An
//! apply (`PATCH` with `application/apply-patch+yaml`) declares the whole
//! set of fields its manager wants: changing a field another manager owns
//! is a conflict unless forced, fields the manager applied before and no
//! longer applies are removed when nobody else owns them, and a field set
//! to the value it already has becomes shared.

use jiff::Timestamp;
use mube_apis::status::{self, Reason, StatusCause};
use serde_json::{json, Map, Value};

use super::fieldset::{self, FieldSet};
use super::{Part, Resource};
use crate::error::ApiError;

/// The managers of what the server's own components write, named as their
/// Kubernetes counterparts' binaries are.
pub const APISERVER: &str = "mube-apiserver";
pub const MUBELET: &str = "mubelet";
pub const CONTROLLER_MANAGER: &str = "mube-controller-manager";
/// Who binds pods (`pods/binding`), as Kubernetes' scheduler.
pub const SCHEDULER: &str = "default-scheduler";

/// Who writes: the `fieldManager` of a request, or a component's own name.
#[derive(Debug, Clone, Copy)]
pub struct Manager<'a> {
    pub name: &'a str,
    /// The part written (the status subresource or the main resource).
    pub part: Part,
}

/// At most this many `Update` entries are kept; older ones are merged into
/// one `ancient-changes` entry, as Kubernetes caps them, so that many
/// writers cannot grow an object without bound.
const MAX_UPDATE_MANAGERS: usize = 10;

impl Manager<'_> {
    fn subresource(&self) -> &'static str {
        match self.part {
            Part::Main => "",
            Part::Status => "status",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Apply,
    Update,
}

/// One `managedFields` entry. Entries are told apart by manager, operation
/// and subresource (one API version is served per kind).
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: Operation,
    subresource: String,
    api_version: String,
    time: Option<Value>,
    fields: FieldSet,
}

impl Entry {
    fn is(&self, manager: &Manager, operation: Operation) -> bool {
        self.manager == manager.name
            && self.operation == operation
            && self.subresource == manager.subresource()
    }

    /// As Kubernetes names a manager in a conflict: `"kubectl"`,
    /// `"kubelet" with subresource "status" using v1`.
    fn display(&self) -> String {
        let mut out = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            out.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == Operation::Update {
            out.push_str(&format!(" using {}", self.api_version));
        }
        out
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("apiVersion".into(), json!(self.api_version));
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.fields.to_json());
        m.insert("manager".into(), json!(self.manager));
        let operation = match self.operation {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        };
        m.insert("operation".into(), json!(operation));
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        if let Some(t) = &self.time {
            m.insert("time".into(), t.clone());
        }
        Value::Object(m)
    }

    fn from_json(v: &Value) -> Result<Option<Entry>, String> {
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let manager = text("manager");
        // `[{}]` is how a client clears managedFields: entries without a
        // manager are dropped.
        if manager.is_empty() && v.get("fieldsV1").is_none() {
            return Ok(None);
        }
        let operation = match text("operation").as_str() {
            "Apply" => Operation::Apply,
            "Update" => Operation::Update,
            other => {
                return Err(format!(
                "metadata.managedFields: operation must be \"Apply\" or \"Update\", got {other:?}"
            ))
            }
        };
        let fields = match v.get("fieldsV1") {
            None | Some(Value::Null) => FieldSet::default(),
            Some(f) => FieldSet::from_json(f).ok_or_else(|| {
                format!("metadata.managedFields: the fieldsV1 of manager {manager:?} are not valid")
            })?,
        };
        Ok(Some(Entry {
            manager,
            operation,
            subresource: text("subresource"),
            api_version: text("apiVersion"),
            time: v.get("time").filter(|t| !t.is_null()).cloned(),
            fields,
        }))
    }
}

fn set_entries(object: &mut Value, entries: Vec<Entry>) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let entries: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(entries));
    }
}

fn take_managed_fields(object: &mut Value) -> Option<Value> {
    object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove("managedFields"))
}

/// The fields nobody owns (identity and bookkeeping the server keeps), and
/// the part of the object a write through `part` cannot change.
fn owned_part(r: &Resource, part: Part, set: FieldSet) -> FieldSet {
    let set = without_identity(set);
    if !r.status_subresource() {
        return set;
    }
    match part {
        Part::Main => {
            let mut set = set;
            set.remove(&fieldset::field_path("status"));
            set
        }
        Part::Status => set.only("status"),
    }
}

/// A set without the fields nobody owns (identity and bookkeeping).
fn without_identity(mut set: FieldSet) -> FieldSet {
    for path in ["apiVersion", "kind"] {
        set.remove(&fieldset::field_path(path));
    }
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "managedFields",
    ] {
        set.remove(&fieldset::field_path(&format!("metadata.{field}")));
    }
    set.unmark("metadata");
    set
}

fn entries_in(list: Option<&Value>) -> Result<Vec<Entry>, ApiError> {
    let mut out = Vec::new();
    for v in list.and_then(Value::as_array).into_iter().flatten() {
        if let Some(e) = Entry::from_json(v).map_err(ApiError::bad_request)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// Records an update by `manager`: `old` is the stored object (`None` on
/// create), `new` what will be stored. A client that sends managedFields
/// different from the stored ones replaces them (`[{}]` clears them), as in
/// Kubernetes; the write itself is then recorded on top.
/// `whole_object`: the write may change any part (the server's own writes
/// through `Registry::modify`, which are not split into main and status).
pub fn record_update(
    r: &Resource,
    manager: &Manager,
    whole_object: bool,
    old: Option<&Value>,
    new: &mut Value,
    now: Timestamp,
) -> Result<(), ApiError> {
    // An empty list is "not sent", as in Kubernetes; `[{}]` clears.
    let sent = take_managed_fields(new).filter(|s| s.as_array().is_none_or(|a| !a.is_empty()));
    let stored = old.and_then(|o| o.pointer("/metadata/managedFields"));
    let source = match &sent {
        Some(s) if Some(s) != stored => Some(s),
        _ => stored,
    };
    let mut entries = entries_in(source)?;
    if old.is_some() && entries.is_empty() {
        // An object nobody is tracked on (written before managers were, or
        // cleared) stays so until an apply, which then finds every field
        // owned by "before-first-apply": recording only this write's fields
        // would let an apply silently take over all the others.
        return Ok(());
    }
    let empty = json!({});
    let changes = fieldset::compare(old.unwrap_or(&empty), new);
    let (changed, removed) = if whole_object {
        (
            without_identity(changes.changed()),
            without_identity(changes.removed),
        )
    } else {
        (
            owned_part(r, manager.part, changes.changed()),
            owned_part(r, manager.part, changes.removed),
        )
    };
    for e in entries.iter_mut() {
        e.fields = e.fields.difference(&changed).difference(&removed);
    }
    if !changed.is_empty() {
        match entries
            .iter_mut()
            .find(|e| e.is(manager, Operation::Update))
        {
            Some(mine) => {
                mine.fields = mine.fields.union(&changed);
                mine.time = Some(super::meta::time(now));
            }
            None => entries.push(Entry {
                manager: manager.name.to_string(),
                operation: Operation::Update,
                subresource: manager.subresource().to_string(),
                api_version: r.api_version(),
                time: Some(super::meta::time(now)),
                fields: changed,
            }),
        }
    }
    cap_updaters(&mut entries);
    set_entries(new, entries);
    Ok(())
}

/// Merges the oldest `Update` entries beyond `MAX_UPDATE_MANAGERS` into one
/// `ancient-changes` entry.
fn cap_updaters(entries: &mut Vec<Entry>) {
    let updaters = entries
        .iter()
        .filter(|e| e.operation == Operation::Update && !e.fields.is_empty())
        .count();
    if updaters <= MAX_UPDATE_MANAGERS {
        return;
    }
    let time_of = |e: &Entry| {
        e.time
            .as_ref()
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let mut oldest: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].operation == Operation::Update && entries[i].manager != ANCIENT)
        .collect();
    oldest.sort_by_key(|&i| time_of(&entries[i]));
    // Keep room for the merged entry itself.
    let excess = updaters - MAX_UPDATE_MANAGERS + 1;
    let merged: Vec<usize> = oldest.into_iter().take(excess).collect();
    let mut fields = FieldSet::default();
    let mut api_version = String::new();
    for &i in &merged {
        fields = fields.union(&entries[i].fields);
        api_version = entries[i].api_version.clone();
    }
    let mut keep = 0..;
    entries.retain(|_| !merged.contains(&keep.next().unwrap_or(usize::MAX)));
    match entries.iter_mut().find(|e| e.manager == ANCIENT) {
        Some(ancient) => ancient.fields = ancient.fields.union(&fields),
        None => entries.push(Entry {
            manager: ANCIENT.into(),
            operation: Operation::Update,
            subresource: String::new(),
            api_version,
            time: None,
            fields,
        }),
    }
}

const ANCIENT: &str = "ancient-changes";

/// Server-side apply of `config` by `manager`. `live` is the stored
/// object, or `None` when the apply creates it. Returns the object to
/// store, managedFields included; a conflict (a field whose value would
/// change and that another manager owns) is a 409 unless `force`, which
/// takes the fields over.
pub fn apply(
    r: &Resource,
    manager: &Manager,
    live: Option<&Value>,
    config: &Value,
    force: bool,
    now: Timestamp,
) -> Result<Value, ApiError> {
    fieldset::check_config(config)
        .map_err(|m| ApiError::bad_request(format!("failed to create typed patch object: {m}")))?;
    let applied = owned_part(r, manager.part, fieldset::of(config));
    let entry = |fields: FieldSet| Entry {
        manager: manager.name.to_string(),
        operation: Operation::Apply,
        subresource: manager.subresource().to_string(),
        api_version: r.api_version(),
        time: Some(super::meta::time(now)),
        // Fields the kind does not define are not stored, so nobody owns them.
        fields: applied.intersection(&fields),
    };
    let Some(live) = live else {
        let mut object = config.clone();
        super::fields::canonicalize(r, &mut object)?;
        let mine = entry(fieldset::of(&object));
        set_entries(&mut object, vec![mine]);
        return Ok(object);
    };
    let mut entries = entries_in(live.pointer("/metadata/managedFields"))?;
    if entries.is_empty() {
        // Written before anyone tracked managers: as in Kubernetes, what is
        // there belongs to "before-first-apply", so that the first apply
        // cannot silently take over fields someone else set.
        entries.push(Entry {
            manager: "before-first-apply".into(),
            operation: Operation::Update,
            subresource: String::new(),
            api_version: r.api_version(),
            time: None,
            // Every field, whatever part this apply writes.
            fields: without_identity(fieldset::of(live)),
        });
    }
    let mut merged = live.clone();
    take_managed_fields(&mut merged);
    fieldset::merge(&mut merged, config);
    let mut merged = r
        .strategy
        .prepare_for_update(manager.part, merged, live.clone());
    take_managed_fields(&mut merged);
    super::fields::canonicalize(r, &mut merged)?;
    let mine = entry(fieldset::of(&merged));

    // What this manager applied last time and no longer does goes, unless
    // someone (this apply included) still owns it.
    let last = match entries.iter().position(|e| e.is(manager, Operation::Apply)) {
        Some(i) => {
            let previous = std::mem::replace(&mut entries[i], mine);
            Some(previous)
        }
        None => {
            entries.push(mine);
            None
        }
    };
    if let Some(last) = &last {
        let owned = entries
            .iter()
            .fold(FieldSet::default(), |all, e| all.union(&e.fields));
        let gone = last.fields.difference(&owned);
        if !gone.is_empty() {
            fieldset::remove(&mut merged, &gone, &owned);
        }
    }

    let changes = fieldset::compare(live, &merged);
    let unchanged = changes.is_empty();
    let changed = owned_part(r, manager.part, changes.changed());
    let removed = owned_part(r, manager.part, changes.removed);
    let mut conflicts: Vec<(String, String)> = Vec::new();
    for e in entries.iter().filter(|e| !e.is(manager, Operation::Apply)) {
        for path in e.fields.intersection(&changed).paths() {
            conflicts.push((e.display(), path));
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(conflicts));
    }
    for e in entries.iter_mut() {
        if e.is(manager, Operation::Apply) {
            // An apply that changes nothing keeps the time of the last one.
            if unchanged {
                if let Some(last) = &last {
                    e.time = last.time.clone();
                }
            }
        } else {
            e.fields = e.fields.difference(&changed).difference(&removed);
        }
    }
    set_entries(&mut merged, entries);
    Ok(merged)
}

/// 409 listing each conflicting field with its manager, worded as
/// Kubernetes words it (kubectl prints the message as is).
fn conflict_error(mut conflicts: Vec<(String, String)>) -> ApiError {
    conflicts.sort();
    let message = if let [(manager, path)] = conflicts.as_slice() {
        format!("Apply failed with 1 conflict: conflict with {manager}: {path}")
    } else {
        let mut lines = Vec::new();
        let mut current: Option<&str> = None;
        for (manager, path) in &conflicts {
            if current != Some(manager.as_str()) {
                lines.push(format!("conflicts with {manager}:"));
                current = Some(manager);
            }
            lines.push(format!("- {path}"));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    let causes = conflicts
        .into_iter()
        .map(|(manager, path)| StatusCause {
            field: Some(path),
            message: Some(format!("conflict with {manager}")),
            reason: Some("FieldManagerConflict".into()),
        })
        .collect();
    let mut status = status::failure(Reason::Conflict, message);
    status.details = Some(status::StatusDetails {
        causes: Some(causes),
        ..Default::default()
    });
    status.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn main(name: &str) -> Manager<'_> {
        Manager {
            name,
            part: Part::Main,
        }
    }

    fn owners(object: &Value, pointer: &str) -> Vec<String> {
        object["metadata"]["managedFields"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e["fieldsV1"].pointer(pointer).is_some())
                    .map(|e| e["manager"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn lease(spec: Value) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "l", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn an_update_takes_the_fields_it_changes_from_their_appliers() {
        let r = super::super::lease::resource();
        let applied = apply(
            &r,
            &main("a"),
            None,
            &lease(json!({"holderIdentity": "x", "leaseDurationSeconds": 5})),
            false,
            at(0),
        )
        .unwrap();
        let mut updated = applied.clone();
        updated["spec"]["holderIdentity"] = json!("y");
        record_update(&r, &main("b"), false, Some(&applied), &mut updated, at(1)).unwrap();
        assert_eq!(owners(&updated, "/f:spec/f:holderIdentity"), ["b"]);
        assert_eq!(owners(&updated, "/f:spec/f:leaseDurationSeconds"), ["a"]);
        // The applier wants it back: a conflict naming the updater and its version.
        let err = apply(
            &r,
            &main("a"),
            Some(&updated),
            &lease(json!({"holderIdentity": "x", "leaseDurationSeconds": 5})),
            false,
            at(2),
        )
        .unwrap_err();
        assert_eq!(err.status.code, Some(409));
        assert_eq!(
            err.status.message.as_deref(),
            Some(
                r#"Apply failed with 1 conflict: conflict with "b" using coordination.k8s.io/v1: .spec.holderIdentity"#
            )
        );
        let cause = &err
            .status
            .details
            .as_ref()
            .unwrap()
            .causes
            .as_ref()
            .unwrap()[0];
        assert_eq!(cause.reason.as_deref(), Some("FieldManagerConflict"));
        assert_eq!(cause.field.as_deref(), Some(".spec.holderIdentity"));
    }

    #[test]
    fn conflicts_with_several_managers_are_listed_by_manager() {
        let r = super::super::lease::resource();
        let one = apply(
            &r,
            &main("a"),
            None,
            &lease(json!({"holderIdentity": "x"})),
            false,
            at(0),
        )
        .unwrap();
        let two = apply(
            &r,
            &main("b"),
            Some(&one),
            &lease(json!({"leaseDurationSeconds": 5, "leaseTransitions": 1})),
            false,
            at(1),
        )
        .unwrap();
        let want =
            lease(json!({"holderIdentity": "z", "leaseDurationSeconds": 6, "leaseTransitions": 2}));
        let err = apply(&r, &main("c"), Some(&two), &want, false, at(2)).unwrap_err();
        assert_eq!(
            err.status.message.as_deref(),
            Some("Apply failed with 3 conflicts: conflicts with \"a\":\n- .spec.holderIdentity\nconflicts with \"b\":\n- .spec.leaseDurationSeconds\n- .spec.leaseTransitions")
        );
        let forced = apply(&r, &main("c"), Some(&two), &want, true, at(3)).unwrap();
        assert_eq!(forced["spec"], want["spec"]);
        assert_eq!(
            owners(&forced, "/f:spec"),
            ["c"],
            "a and b lost every field, so their entries go"
        );
    }

    #[test]
    fn an_object_written_before_managers_were_tracked_is_before_first_apply() {
        let r = super::super::lease::resource();
        let old = lease(json!({"holderIdentity": "x"}));
        let err = apply(
            &r,
            &main("a"),
            Some(&old),
            &lease(json!({"holderIdentity": "y"})),
            false,
            at(0),
        )
        .unwrap_err();
        assert!(err
            .status
            .message
            .as_deref()
            .unwrap()
            .contains("\"before-first-apply\""));
        let same = apply(
            &r,
            &main("a"),
            Some(&old),
            &lease(json!({"holderIdentity": "x"})),
            false,
            at(0),
        )
        .unwrap();
        assert_eq!(
            owners(&same, "/f:spec/f:holderIdentity"),
            ["before-first-apply", "a"]
        );
    }

    #[test]
    fn status_and_main_applies_own_only_their_part() {
        let r = super::super::node::resource();
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"},
                          "spec": {"unschedulable": true}, "status": {"capacity": {"pods": "1"}}});
        let main_apply = apply(&r, &main("m"), None, &node, false, at(0)).unwrap();
        assert_eq!(owners(&main_apply, "/f:status"), Vec::<String>::new());
        assert_eq!(owners(&main_apply, "/f:spec/f:unschedulable"), ["m"]);
        let status = Manager {
            name: "agent",
            part: Part::Status,
        };
        let config = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"},
                            "spec": {"unschedulable": false}, "status": {"capacity": {"pods": "2"}}});
        let applied = apply(&r, &status, Some(&main_apply), &config, false, at(1)).unwrap();
        assert_eq!(
            applied["spec"]["unschedulable"], true,
            "a status write keeps the spec"
        );
        assert_eq!(applied["status"]["capacity"]["pods"], "2");
        let entry = applied["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "agent")
            .unwrap()
            .clone();
        assert_eq!(entry["subresource"], "status");
        assert_eq!(
            entry["fieldsV1"],
            json!({"f:status": {"f:capacity": {"f:pods": {}}}})
        );
    }

    #[test]
    fn sent_managed_fields_replace_the_stored_ones_and_an_empty_entry_clears_them() {
        let r = super::super::lease::resource();
        let applied = apply(
            &r,
            &main("a"),
            None,
            &lease(json!({"holderIdentity": "x"})),
            false,
            at(0),
        )
        .unwrap();
        let mut cleared = applied.clone();
        cleared["metadata"]["managedFields"] = json!([{}]);
        record_update(&r, &main("b"), false, Some(&applied), &mut cleared, at(1)).unwrap();
        assert!(
            cleared["metadata"].get("managedFields").is_none(),
            "{cleared}"
        );
        let mut bad = applied.clone();
        bad["metadata"]["managedFields"] = json!([{"manager": "x", "operation": "Sideways"}]);
        let err =
            record_update(&r, &main("b"), false, Some(&applied), &mut bad, at(1)).unwrap_err();
        assert_eq!(err.status.code, Some(400));
    }

    #[test]
    fn an_applied_list_element_without_its_key_or_twice_is_refused() {
        let r = super::super::pod::resource();
        let pod = |containers: Value| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
                   "spec": {"containers": containers}})
        };
        let live = apply(
            &r,
            &main("a"),
            None,
            &pod(json!([{"name": "web", "image": "x"}])),
            false,
            at(0),
        )
        .unwrap();
        let nameless = apply(
            &r,
            &main("b"),
            Some(&live),
            &pod(json!([{"image": "y"}])),
            false,
            at(1),
        )
        .unwrap_err();
        assert_eq!(nameless.code(), 400);
        assert!(nameless.status.message.as_deref().unwrap().contains(
            ".spec.containers: element 0: associative list with keys has an element that omits key field \"name\""
        ));
        let twice = apply(
            &r,
            &main("b"),
            Some(&live),
            &pod(json!([{"name": "web", "image": "y"}, {"name": "web", "image": "z"}])),
            false,
            at(1),
        )
        .unwrap_err();
        assert!(twice
            .status
            .message
            .as_deref()
            .unwrap()
            .contains(".spec.containers: duplicate entries for key [name=\"web\"]"));
    }

    #[test]
    fn an_empty_managed_fields_list_is_not_sent_and_untracked_objects_stay_untracked() {
        let r = super::super::lease::resource();
        let applied = apply(
            &r,
            &main("a"),
            None,
            &lease(json!({"holderIdentity": "x"})),
            false,
            at(0),
        )
        .unwrap();
        let mut kept = applied.clone();
        kept["metadata"]["managedFields"] = json!([]);
        kept["spec"]["leaseDurationSeconds"] = json!(5);
        record_update(&r, &main("b"), false, Some(&applied), &mut kept, at(1)).unwrap();
        assert_eq!(owners(&kept, "/f:spec/f:holderIdentity"), ["a"]);
        assert_eq!(owners(&kept, "/f:spec/f:leaseDurationSeconds"), ["b"]);

        let old = lease(json!({"holderIdentity": "x"}));
        let mut new = lease(json!({"holderIdentity": "x", "leaseDurationSeconds": 5}));
        record_update(&r, &main("b"), false, Some(&old), &mut new, at(1)).unwrap();
        assert!(new["metadata"].get("managedFields").is_none(), "{new}");
        // So the first apply finds everything owned by before-first-apply.
        let err = apply(
            &r,
            &main("a"),
            Some(&new),
            &lease(json!({"leaseDurationSeconds": 6})),
            false,
            at(2),
        )
        .unwrap_err();
        assert!(err
            .status
            .message
            .as_deref()
            .unwrap()
            .contains("before-first-apply"));
    }

    #[test]
    fn at_most_ten_updaters_are_kept_the_oldest_merged_into_ancient_changes() {
        let r = super::super::lease::resource();
        let mut object = apply(
            &r,
            &main("owner"),
            None,
            &lease(json!({"holderIdentity": "x"})),
            false,
            at(0),
        )
        .unwrap();
        for i in 0..15 {
            let old = object.clone();
            object["metadata"]["labels"] = {
                let mut labels = old["metadata"]["labels"].clone();
                if !labels.is_object() {
                    labels = json!({});
                }
                labels[format!("k{i}")] = json!("v");
                labels
            };
            let name = format!("writer-{i}");
            record_update(&r, &main(&name), false, Some(&old), &mut object, at(i + 1)).unwrap();
        }
        let managers: Vec<&str> = object["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        let updaters = managers
            .iter()
            .filter(|m| m.starts_with("writer-") || **m == "ancient-changes")
            .count();
        assert_eq!(updaters, MAX_UPDATE_MANAGERS, "{managers:?}");
        assert!(managers.contains(&"ancient-changes") && managers.contains(&"writer-14"));
        assert!(!managers.contains(&"writer-0"));
        assert_eq!(
            owners(&object, "/f:metadata/f:labels/f:k0"),
            ["ancient-changes"]
        );
    }
}
