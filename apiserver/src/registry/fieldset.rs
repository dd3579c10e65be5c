//! Sets of field paths, as server-side apply records them in
//! `metadata.managedFields[].fieldsV1`.
//!
//! Written here because no Rust crate implements Kubernetes'
//! structured-merge-diff. The wire form is Kubernetes' own (`FieldsV1`):
//! `{"f:spec":{"f:replicas":{}}}` names the field `spec.replicas`;
//! `k:{"type":"Ready"}` names the element of an associative list whose key
//! is `Ready`; `v:"a"` names an element of a set-like list; `".":{}` marks a
//! node that is itself a member as well as the parent of others.
//!
//! How a list is read comes from `patch::list_strategy`, the same table the
//! strategic merge patch uses: lists Kubernetes declares with a merge key
//! are associative, set-like lists are sets, every other list is atomic (it
//! is one field, owned as a whole).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::patch::{join, list_strategy, ListMerge};

/// One step of a path. The order (fields, then keys, then values) is the
/// order Kubernetes serializes them in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Element {
    /// An object's field.
    Field(String),
    /// An associative list's element, by its key (JSON, e.g. `{"type":"Ready"}`).
    Key(String),
    /// A set-like list's element, by its value (JSON, e.g. `"a"`).
    Value(String),
}

impl Element {
    fn encode(&self) -> String {
        match self {
            Element::Field(f) => format!("f:{f}"),
            Element::Key(k) => format!("k:{k}"),
            Element::Value(v) => format!("v:{v}"),
        }
    }

    fn decode(s: &str) -> Option<Element> {
        let (kind, rest) = s.split_once(':')?;
        match kind {
            "f" => Some(Element::Field(rest.to_string())),
            "k" => Some(Element::Key(rest.to_string())),
            "v" => Some(Element::Value(rest.to_string())),
            _ => None,
        }
    }

    /// `.spec.replicas`, `[type="Ready"]`, `[="a"]`: as Kubernetes prints
    /// paths in conflict messages.
    fn display(&self) -> String {
        match self {
            Element::Field(f) => format!(".{f}"),
            Element::Key(k) => {
                let fields: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                    .unwrap_or_else(|_| vec![k.clone()]);
                format!("[{}]", fields.join(","))
            }
            Element::Value(v) => format!("[={v}]"),
        }
    }
}

/// A set of paths, as a tree: a node is a member itself, a parent of
/// members, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<Element, FieldSet>,
}

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    fn child_mut(&mut self, element: Element) -> &mut FieldSet {
        self.children.entry(element).or_default()
    }

    /// Makes `path` a member.
    pub fn insert(&mut self, path: &[Element]) {
        let mut node = self;
        for e in path {
            node = node.child_mut(e.clone());
        }
        node.member = true;
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.member |= other.member;
        for (e, child) in &other.children {
            let merged = match out.children.get(e) {
                Some(mine) => mine.union(child),
                None => child.clone(),
            };
            out.children.insert(e.clone(), merged);
        }
        out
    }

    /// The members of `self` that are not members of `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (e, child) in &self.children {
            let rest = match other.children.get(e) {
                Some(theirs) => child.difference(theirs),
                None => child.clone(),
            };
            if !rest.is_empty() {
                out.children.insert(e.clone(), rest);
            }
        }
        out
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (e, child) in &self.children {
            if let Some(theirs) = other.children.get(e) {
                let both = child.intersection(theirs);
                if !both.is_empty() {
                    out.children.insert(e.clone(), both);
                }
            }
        }
        out
    }

    /// Removes a subtree (e.g. `metadata.name`, or all of `status`).
    pub fn remove(&mut self, path: &[Element]) {
        let Some((last, parents)) = path.split_last() else {
            *self = FieldSet::default();
            return;
        };
        let mut node = self;
        for e in parents {
            match node.children.get_mut(e) {
                Some(child) => node = child,
                None => return,
            }
        }
        node.children.remove(last);
    }

    /// `field` (a top-level field) stops being a member itself, and goes if
    /// it has no members under it: for `metadata`, which every object has,
    /// so that nobody owns it as a whole.
    pub fn unmark(&mut self, field: &str) {
        let key = Element::Field(field.to_string());
        if let Some(child) = self.children.get_mut(&key) {
            child.member = false;
            if child.children.is_empty() {
                self.children.remove(&key);
            }
        }
    }

    /// Keeps only the subtree at `field` (e.g. `status`), and the root's own
    /// membership.
    pub fn only(&self, field: &str) -> FieldSet {
        let key = Element::Field(field.to_string());
        let mut out = FieldSet::default();
        if let Some(child) = self.children.get(&key) {
            out.children.insert(key, child.clone());
        }
        out
    }

    /// Every member path, printed as Kubernetes prints them.
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_paths(String::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: String, out: &mut Vec<String>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (e, child) in &self.children {
            child.collect_paths(format!("{prefix}{}", e.display()), out);
        }
    }

    /// The `fieldsV1` JSON.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        if self.member && !self.children.is_empty() {
            map.insert(".".into(), Value::Object(Map::new()));
        }
        for (e, child) in &self.children {
            map.insert(e.encode(), child.to_json());
        }
        Value::Object(map)
    }

    /// Reads `fieldsV1`; `None` if it is not in that form.
    pub fn from_json(value: &Value) -> Option<FieldSet> {
        Self::node_from_json(value, false)
    }

    fn node_from_json(value: &Value, nested: bool) -> Option<FieldSet> {
        let map = value.as_object()?;
        let mut set = FieldSet {
            // A leaf (`{}`) below the root is a member.
            member: nested && map.is_empty(),
            children: BTreeMap::new(),
        };
        for (k, v) in map {
            if k == "." {
                set.member = true;
                continue;
            }
            let element = Element::decode(k)?;
            set.children.insert(element, Self::node_from_json(v, true)?);
        }
        Some(set)
    }
}

/// The element of an associative list's item: its key field and value.
/// `None` when the item lacks its key (the list is then treated as atomic).
fn key_of(item: &Value, key: &str) -> Option<Element> {
    let id = item.get(key)?;
    let mut m = Map::new();
    m.insert(key.to_string(), id.clone());
    Some(Element::Key(Value::Object(m).to_string()))
}

/// How one list is read: atomic, or element by element.
enum ListShape<'a> {
    Atomic,
    ByKey(&'a str),
    Set,
}

/// How apply reads the list at `path`: as the strategic merge patch does,
/// except `status.addresses`, which apply treats as atomic (a dual-stack
/// node has two InternalIP addresses, so `type` is no key for it).
fn list_kind(path: &str) -> Option<ListMerge> {
    match path {
        "status.addresses" => None,
        _ => list_strategy(path),
    }
}

fn shape_of<'a>(path: &str, items: &[Value], other: Option<&[Value]>) -> ListShape<'a> {
    match list_kind(path) {
        Some(ListMerge::ByKey(key)) => {
            let keyed = |list: &[Value]| list.iter().all(|i| i.get(key).is_some());
            if keyed(items) && other.is_none_or(keyed) {
                ListShape::ByKey(key)
            } else {
                ListShape::Atomic
            }
        }
        Some(ListMerge::Set) => ListShape::Set,
        None => ListShape::Atomic,
    }
}

/// Every field of `value` (the set an applied configuration owns). Objects
/// are not members themselves, their leaves are; list elements of
/// associative and set-like lists are members, as in Kubernetes.
pub fn of(value: &Value) -> FieldSet {
    of_at(value, "")
}

/// `of` for a value found at `path` (which tells how its lists are read).
fn of_at(value: &Value, path: &str) -> FieldSet {
    let mut set = FieldSet::default();
    walk_set(value, path, &mut Vec::new(), &mut set);
    set
}

fn walk_set(value: &Value, path: &str, at: &mut Vec<Element>, out: &mut FieldSet) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                at.push(Element::Field(k.clone()));
                walk_set(v, &join(path, k), at, out);
                at.pop();
            }
        }
        Value::Array(items) => match shape_of(path, items, None) {
            ListShape::Atomic => out.insert(at),
            ListShape::ByKey(key) => {
                for item in items {
                    if let Some(e) = key_of(item, key) {
                        at.push(e);
                        out.insert(at);
                        walk_set(item, path, at, out);
                        at.pop();
                    }
                }
            }
            ListShape::Set => {
                for item in items {
                    at.push(Element::Value(item.to_string()));
                    out.insert(at);
                    at.pop();
                }
            }
        },
        _ => out.insert(at),
    }
}

/// Checks an applied configuration's associative lists, as Kubernetes
/// does before applying: every element has the list's key, and no key is
/// there twice (merging would otherwise drop an element, or read the whole
/// list as atomic and take others' elements without a conflict).
pub fn check_config(config: &Value) -> Result<(), String> {
    check_at(config, "")
}

fn check_at(value: &Value, path: &str) -> Result<(), String> {
    match value {
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| check_at(v, &join(path, k))),
        Value::Array(items) => {
            if let Some(ListMerge::ByKey(key)) = list_kind(path) {
                let mut seen = std::collections::HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    let Some(id) = item.get(key) else {
                        return Err(format!(
                            ".{path}: element {i}: associative list with keys has an element that omits key field {key:?}"
                        ));
                    };
                    if !seen.insert(id.to_string()) {
                        return Err(format!(".{path}: duplicate entries for key [{key}={id}]"));
                    }
                }
            }
            items.iter().try_for_each(|item| check_at(item, path))
        }
        _ => Ok(()),
    }
}

/// What changed from `old` to `new`.
#[derive(Debug, Default)]
pub struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

impl Comparison {
    /// Added or modified: what a writer takes from others.
    pub fn changed(&self) -> FieldSet {
        self.added.union(&self.modified)
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }
}

pub fn compare(old: &Value, new: &Value) -> Comparison {
    let mut c = Comparison::default();
    walk_compare(old, new, "", &mut Vec::new(), &mut c);
    c
}

/// A whole subtree, node included (it is added or removed as a whole).
fn subtree(value: &Value, path: &str, at: &mut Vec<Element>, out: &mut FieldSet) {
    if !at.is_empty() {
        out.insert(at);
    }
    walk_set(value, path, at, out);
}

fn walk_compare(old: &Value, new: &Value, path: &str, at: &mut Vec<Element>, c: &mut Comparison) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            for (k, nv) in n {
                if path == "metadata" && k == "managedFields" {
                    continue; // bookkeeping, not a field anyone owns
                }
                at.push(Element::Field(k.clone()));
                match o.get(k) {
                    Some(ov) => walk_compare(ov, nv, &join(path, k), at, c),
                    None => subtree(nv, &join(path, k), at, &mut c.added),
                }
                at.pop();
            }
            for (k, ov) in o {
                if !(n.contains_key(k) || path == "metadata" && k == "managedFields") {
                    at.push(Element::Field(k.clone()));
                    subtree(ov, &join(path, k), at, &mut c.removed);
                    at.pop();
                }
            }
        }
        (Value::Array(o), Value::Array(n)) => match shape_of(path, n, Some(o)) {
            ListShape::Atomic => {
                if o != n {
                    c.modified.insert(at);
                }
            }
            ListShape::ByKey(key) => {
                let find = |list: &[Value], e: &Element| -> Option<usize> {
                    list.iter().position(|i| key_of(i, key).as_ref() == Some(e))
                };
                for item in n {
                    let Some(e) = key_of(item, key) else { continue };
                    let before = find(o, &e);
                    at.push(e);
                    match before {
                        Some(i) => walk_compare(&o[i], item, path, at, c),
                        None => subtree(item, path, at, &mut c.added),
                    }
                    at.pop();
                }
                for item in o {
                    let Some(e) = key_of(item, key) else { continue };
                    if find(n, &e).is_none() {
                        at.push(e);
                        subtree(item, path, at, &mut c.removed);
                        at.pop();
                    }
                }
            }
            ListShape::Set => {
                for item in n.iter().filter(|i| !o.contains(i)) {
                    at.push(Element::Value(item.to_string()));
                    c.added.insert(at);
                    at.pop();
                }
                for item in o.iter().filter(|i| !n.contains(i)) {
                    at.push(Element::Value(item.to_string()));
                    c.removed.insert(at);
                    at.pop();
                }
            }
        },
        (o, n) => {
            if o != n {
                c.modified.insert(at);
            }
        }
    }
}

/// `config` merged into `live`: objects field by field, associative lists
/// element by element (new elements appended), set-like lists as a union,
/// everything else replaced.
pub fn merge(live: &mut Value, config: &Value) {
    merge_at(live, config, "");
}

fn merge_at(live: &mut Value, config: &Value, path: &str) {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) => {
            for (k, cv) in c {
                let child = join(path, k);
                match l.get_mut(k) {
                    Some(lv) => merge_at(lv, cv, &child),
                    None => {
                        l.insert(k.clone(), cv.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(c)) => match shape_of(path, c, Some(l)) {
            ListShape::ByKey(key) => {
                for item in c {
                    let e = key_of(item, key);
                    match l.iter_mut().find(|i| key_of(i, key) == e) {
                        Some(existing) => merge_at(existing, item, path),
                        None => l.push(item.clone()),
                    }
                }
            }
            ListShape::Set => {
                for item in c {
                    if !l.contains(item) {
                        l.push(item.clone());
                    }
                }
            }
            ListShape::Atomic => *l = c.clone(),
        },
        (l, c) => *l = c.clone(),
    }
}

/// Removes every member of `set` from `value`, but nothing `owned` (by
/// other managers) lies under: an element of a list that someone else has a
/// field in keeps that field, and its key. An object or list left empty by
/// the removal goes too, so that no `labels: {}` is left behind.
pub fn remove(value: &mut Value, set: &FieldSet, owned: &FieldSet) {
    remove_at(value, set, owned, "");
}

fn remove_at(value: &mut Value, set: &FieldSet, owned: &FieldSet, path: &str) {
    let empty = FieldSet::default();
    let owned_under = |e: &Element| owned.children.get(e).unwrap_or(&empty);
    match value {
        Value::Object(map) => {
            for (e, child) in &set.children {
                let Element::Field(k) = e else { continue };
                let Some(v) = map.get_mut(k) else { continue };
                let kept = owned_under(e);
                if child.member && kept.is_empty() {
                    map.remove(k);
                    continue;
                }
                let child = if child.member {
                    // Everything in it but what others own.
                    &of_at(v, &join(path, k)).difference(kept).union(child)
                } else {
                    child
                };
                let was_empty = is_empty_container(v);
                remove_at(v, child, kept, &join(path, k));
                if !was_empty && is_empty_container(v) {
                    map.remove(k);
                }
            }
        }
        Value::Array(items) => {
            let key = match list_kind(path) {
                Some(ListMerge::ByKey(key)) => Some(key),
                _ => None,
            };
            for (e, child) in &set.children {
                match e {
                    Element::Key(_) => {
                        let Some(key) = key else { continue };
                        let Some(i) = items
                            .iter()
                            .position(|i| key_of(i, key).as_ref() == Some(e))
                        else {
                            continue;
                        };
                        let kept = owned_under(e);
                        if child.member && kept.is_empty() {
                            items.remove(i);
                            continue;
                        }
                        let mut child = if child.member {
                            of_at(&items[i], path).difference(kept).union(child)
                        } else {
                            child.clone()
                        };
                        // The element stays: so does its key.
                        child.children.remove(&Element::Field(key.to_string()));
                        child.member = false;
                        remove_at(&mut items[i], &child, kept, path);
                    }
                    Element::Value(v) => {
                        if child.member {
                            items.retain(|i| &i.to_string() != v);
                        }
                    }
                    Element::Field(_) => {}
                }
            }
        }
        _ => {}
    }
}

fn is_empty_container(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// `metadata.name`-style paths as elements.
pub fn field_path(dotted: &str) -> Vec<Element> {
    dotted
        .split('.')
        .map(|f| Element::Field(f.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_v1_round_trips_in_kubernetes_form() {
        let object = json!({
            "metadata": {"labels": {"app": "web"}, "finalizers": ["a"]},
            "spec": {"taints": [{"key": "k"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        });
        let set = of(&object);
        assert_eq!(
            set.to_json(),
            json!({
                "f:metadata": {"f:finalizers": {"v:\"a\"": {}}, "f:labels": {"f:app": {}}},
                "f:spec": {"f:taints": {}},
                "f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {
                    ".": {}, "f:status": {}, "f:type": {}
                }}},
            })
        );
        assert_eq!(FieldSet::from_json(&set.to_json()), Some(set.clone()));
        assert_eq!(
            set.paths(),
            [
                ".metadata.finalizers[=\"a\"]",
                ".metadata.labels.app",
                ".spec.taints",
                ".status.conditions[type=\"Ready\"]",
                ".status.conditions[type=\"Ready\"].status",
                ".status.conditions[type=\"Ready\"].type",
            ]
        );
        assert_eq!(FieldSet::from_json(&json!({"x:y": {}})), None);
    }

    #[test]
    fn set_algebra() {
        let a = of(&json!({"a": 1, "b": {"c": 1, "d": 2}}));
        let b = of(&json!({"b": {"c": 5}, "e": 1}));
        assert_eq!(a.intersection(&b), of(&json!({"b": {"c": 0}})));
        assert_eq!(a.difference(&b), of(&json!({"a": 1, "b": {"d": 2}})));
        assert_eq!(
            a.union(&b),
            of(&json!({"a": 1, "b": {"c": 1, "d": 2}, "e": 1}))
        );
        assert!(a.difference(&a).is_empty());
    }

    #[test]
    fn compare_finds_added_modified_and_removed_fields() {
        let old = json!({"spec": {"a": 1, "b": 2}, "status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "Gone", "status": "x"}]}});
        let new = json!({"spec": {"a": 1, "b": 3, "c": {"d": 1}}, "status": {"conditions": [
            {"type": "Ready", "status": "False"}]}});
        let c = compare(&old, &new);
        assert_eq!(
            c.modified.paths(),
            [".spec.b", ".status.conditions[type=\"Ready\"].status"]
        );
        assert_eq!(c.added.paths(), [".spec.c", ".spec.c.d"]);
        assert_eq!(
            c.removed.paths(),
            [
                ".status.conditions[type=\"Gone\"]",
                ".status.conditions[type=\"Gone\"].status",
                ".status.conditions[type=\"Gone\"].type",
            ]
        );
        assert!(compare(&new, &new).is_empty());
    }

    #[test]
    fn merge_and_remove_follow_the_list_kinds() {
        let mut live = json!({"metadata": {"finalizers": ["a"]}, "spec": {"taints": [{"key": "x"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "r"}]}});
        merge(
            &mut live,
            &json!({"metadata": {"finalizers": ["b"]}, "spec": {"taints": [{"key": "y"}]},
                "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Disk"}]}}),
        );
        assert_eq!(
            live,
            json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"taints": [{"key": "y"}]},
                "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "r"}, {"type": "Disk"}]}})
        );
        let mut gone = of(&json!({"metadata": {"finalizers": ["a"]}, "spec": {"taints": []}}));
        gone.insert(&[
            Element::Field("status".into()),
            Element::Field("conditions".into()),
            Element::Key(r#"{"type":"Disk"}"#.into()),
        ]);
        let mut owned = FieldSet::default();
        owned.insert(&[
            Element::Field("status".into()),
            Element::Field("conditions".into()),
            Element::Key(r#"{"type":"Ready"}"#.into()),
            Element::Field("reason".into()),
        ]);
        gone = gone.union(&of(&json!({"status": {"conditions": [{"type": "Ready"}]}})));
        remove(&mut live, &gone, &owned);
        assert_eq!(
            live,
            json!({"metadata": {"finalizers": ["b"]},
                "status": {"conditions": [{"type": "Ready", "reason": "r"}]}}),
            "the Ready element stays, with its key and the field another manager owns"
        );
    }
}
