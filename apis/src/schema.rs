//! Structural schemas: the `openAPIV3Schema` of a CustomResourceDefinition,
//! compiled once, then used on every write of a custom object to default,
//! prune and validate it, as Kubernetes' apiextensions server does
//! (`apiextensions-apiserver/pkg/apiserver/schema`).
//!
//! Written here rather than taken from a JSON Schema crate: what Kubernetes
//! does is not JSON Schema validation. It prunes unknown fields (unless
//! `x-kubernetes-preserve-unknown-fields`), applies `default`s, knows
//! `x-kubernetes-int-or-string`, and reports errors with field paths and
//! messages that kubectl users know (`spec.minReady: Invalid value: -1:
//! spec.minReady in body should be greater than or equal to 0`). Only the
//! keywords a structural schema may use are supported; `compile` refuses
//! the others, as Kubernetes refuses non-structural schemas.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::{Map, Value};

use crate::validation::FieldError;

/// The JSON types a structural schema names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
}

impl Type {
    fn parse(s: &str) -> Option<Type> {
        Some(match s {
            "object" => Type::Object,
            "array" => Type::Array,
            "string" => Type::String,
            "integer" => Type::Integer,
            "number" => Type::Number,
            "boolean" => Type::Boolean,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Type::Object => "object",
            Type::Array => "array",
            Type::String => "string",
            Type::Integer => "integer",
            Type::Number => "number",
            Type::Boolean => "boolean",
        }
    }

    fn admits(self, value: &Value) -> bool {
        match (self, value) {
            (Type::Object, Value::Object(_)) => true,
            (Type::Array, Value::Array(_)) => true,
            (Type::String, Value::String(_)) => true,
            (Type::Boolean, Value::Bool(_)) => true,
            (Type::Number, Value::Number(_)) => true,
            (Type::Integer, Value::Number(n)) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        }
    }
}

/// One compiled node of a structural schema.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub type_: Option<Type>,
    pub nullable: bool,
    pub properties: BTreeMap<String, Schema>,
    /// `additionalProperties` with a schema: a map of values of one shape.
    pub additional: Option<Box<Schema>>,
    pub items: Option<Box<Schema>>,
    pub required: Vec<String>,
    pub enum_: Vec<Value>,
    pub pattern: Option<Regex>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub exclusive_minimum: bool,
    pub exclusive_maximum: bool,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub min_items: Option<u64>,
    pub max_items: Option<u64>,
    pub min_properties: Option<u64>,
    pub max_properties: Option<u64>,
    pub multiple_of: Option<f64>,
    pub preserve_unknown: bool,
    pub int_or_string: bool,
    pub embedded_resource: bool,
    pub default: Option<Value>,
}

/// Keywords a structural schema node may carry (Kubernetes' structural
/// schema rules); anything else is refused at compile time.
const KNOWN: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "properties",
    "additionalProperties",
    "items",
    "required",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "multipleOf",
    "default",
    "example",
    "externalDocs",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Where a value is, built as the walk goes down and spelled out only for
/// a message: a path string per field visited cost more than the checks.
#[derive(Clone, Copy)]
enum At<'a> {
    Root(&'a str),
    Field(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl At<'_> {
    fn is_root(&self) -> bool {
        matches!(self, At::Root(""))
    }
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Root(s) => f.write_str(s),
            At::Field(parent, key) if parent.is_root() => f.write_str(key),
            At::Field(parent, key) => write!(f, "{parent}.{key}"),
            At::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// How a value prints in a message: strings quoted, as Go's `%q`/`%v` do.
fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn number_text(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        f.to_string()
    }
}

impl Schema {
    /// Compiles `openAPIV3Schema`. Errors name the offending place under
    /// `at` (`spec.versions[0].schema.openAPIV3Schema`).
    pub fn compile(value: &Value, at: &str) -> Result<Schema, Vec<FieldError>> {
        let mut errors = Vec::new();
        let schema = Self::compile_node(value, at, &mut errors, true);
        if errors.is_empty() {
            Ok(schema)
        } else {
            Err(errors)
        }
    }

    fn compile_node(value: &Value, at: &str, errors: &mut Vec<FieldError>, root: bool) -> Schema {
        let Some(node) = value.as_object() else {
            errors.push(FieldError::new(at, "Invalid value: must be an object"));
            return Schema::default();
        };
        let mut s = Schema::default();
        for key in node.keys() {
            if !KNOWN.contains(&key.as_str()) {
                errors.push(FieldError::new(
                    child(at, key),
                    "Forbidden: not supported in structural schemas",
                ));
            }
        }
        let flag = |k: &str| node.get(k).and_then(Value::as_bool).unwrap_or(false);
        s.nullable = flag("nullable");
        s.preserve_unknown = flag("x-kubernetes-preserve-unknown-fields");
        s.int_or_string = flag("x-kubernetes-int-or-string");
        s.embedded_resource = flag("x-kubernetes-embedded-resource");
        match node.get("type") {
            None => {
                if !s.preserve_unknown && !s.int_or_string {
                    errors.push(FieldError::new(
                        child(at, "type"),
                        "Required value: must not be empty for specified object fields",
                    ));
                }
            }
            Some(Value::String(t)) => match Type::parse(t) {
                Some(t) => s.type_ = Some(t),
                None => errors.push(FieldError::new(
                    child(at, "type"),
                    format!("Unsupported value: {t:?}: supported values: \"array\", \"boolean\", \"integer\", \"number\", \"object\", \"string\""),
                )),
            },
            Some(other) => errors.push(FieldError::new(
                child(at, "type"),
                format!("Invalid value: {other}: must be a string"),
            )),
        }
        if root && s.type_ != Some(Type::Object) {
            errors.push(FieldError::new(
                child(at, "type"),
                "Invalid value: must be object at the root",
            ));
        }
        if s.int_or_string && s.type_.is_some() {
            errors.push(FieldError::new(
                child(at, "type"),
                "Invalid value: must be empty with x-kubernetes-int-or-string",
            ));
        }
        if let Some(props) = node.get("properties") {
            match props.as_object() {
                Some(props) => {
                    if s.type_.is_some() && s.type_ != Some(Type::Object) {
                        errors.push(FieldError::new(
                            child(at, "properties"),
                            "Forbidden: only allowed for type object",
                        ));
                    }
                    for (name, p) in props {
                        let at = format!("{}[{name}]", child(at, "properties"));
                        s.properties
                            .insert(name.clone(), Self::compile_node(p, &at, errors, false));
                    }
                }
                None => errors.push(FieldError::new(
                    child(at, "properties"),
                    "Invalid value: must be an object",
                )),
            }
        }
        match node.get("additionalProperties") {
            None | Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => {}
            Some(a) => {
                if !s.properties.is_empty() {
                    errors.push(FieldError::new(
                        child(at, "additionalProperties"),
                        "Forbidden: additionalProperties and properties are mutual exclusive",
                    ));
                }
                s.additional = Some(Box::new(Self::compile_node(
                    a,
                    &child(at, "additionalProperties"),
                    errors,
                    false,
                )));
            }
        }
        if let Some(items) = node.get("items") {
            s.items = Some(Box::new(Self::compile_node(
                items,
                &child(at, "items"),
                errors,
                false,
            )));
        } else if s.type_ == Some(Type::Array) {
            errors.push(FieldError::new(
                child(at, "items"),
                "Required value: must be specified",
            ));
        }
        if let Some(required) = node.get("required") {
            match required.as_array() {
                Some(names) => {
                    s.required = names
                        .iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect()
                }
                None => errors.push(FieldError::new(
                    child(at, "required"),
                    "Invalid value: must be a list of strings",
                )),
            }
        }
        if let Some(values) = node.get("enum").and_then(Value::as_array) {
            s.enum_ = values.clone();
        }
        if let Some(p) = node.get("pattern").and_then(Value::as_str) {
            match Regex::new(p) {
                Ok(re) => s.pattern = Some(re),
                Err(e) => errors.push(FieldError::new(
                    child(at, "pattern"),
                    format!("Invalid value: {p:?}: must be a valid regular expression: {e}"),
                )),
            }
        }
        let num = |k: &str| node.get(k).and_then(Value::as_f64);
        let count = |k: &str| node.get(k).and_then(Value::as_u64);
        s.minimum = num("minimum");
        s.maximum = num("maximum");
        s.exclusive_minimum = flag("exclusiveMinimum");
        s.exclusive_maximum = flag("exclusiveMaximum");
        s.min_length = count("minLength");
        s.max_length = count("maxLength");
        s.min_items = count("minItems");
        s.max_items = count("maxItems");
        s.min_properties = count("minProperties");
        s.multiple_of = num("multipleOf");
        if s.multiple_of.is_some_and(|m| m <= 0.0) {
            errors.push(FieldError::new(
                child(at, "multipleOf"),
                "Invalid value: must be greater than zero",
            ));
        }
        if flag("uniqueItems") {
            errors.push(FieldError::new(
                child(at, "uniqueItems"),
                "Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            ));
        }
        s.max_properties = count("maxProperties");
        if let Some(d) = node.get("default") {
            if root {
                errors.push(FieldError::new(
                    child(at, "default"),
                    "Forbidden: must not be set at the root",
                ));
            }
            s.default = Some(d.clone());
        }
        s
    }

    /// The schema of a field of this object, if it names one.
    pub fn property(&self, name: &str) -> Option<&Schema> {
        self.properties.get(name).or(self.additional.as_deref())
    }

    /// Applies `default`s to absent fields (and to nulls where null is not
    /// allowed), all the way down.
    /// At the root, `apiVersion`, `kind` and `metadata` are the server's:
    /// no schema default reaches them.
    pub fn apply_defaults(&self, value: &mut Value) {
        self.default_at(value, true)
    }

    fn default_at(&self, value: &mut Value, root: bool) {
        match value {
            Value::Object(map) => {
                for (name, prop) in &self.properties {
                    if (root || self.embedded_resource)
                        && matches!(name.as_str(), "apiVersion" | "kind" | "metadata")
                    {
                        continue;
                    }
                    let missing = match map.get(name) {
                        None => true,
                        Some(Value::Null) => !prop.nullable,
                        Some(_) => false,
                    };
                    if missing {
                        if let Some(d) = &prop.default {
                            map.insert(name.clone(), d.clone());
                        }
                    }
                    if let Some(v) = map.get_mut(name) {
                        prop.default_at(v, false);
                    }
                }
                if let Some(additional) = &self.additional {
                    for v in map.values_mut() {
                        additional.default_at(v, false);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(schema) = &self.items {
                    for v in items {
                        schema.default_at(v, false);
                    }
                }
            }
            _ => {}
        }
    }

    /// Drops the fields the schema does not define (and nulls it does not
    /// allow), recording each dropped field's path in `pruned`. At the
    /// root (`path` empty), and in an `x-kubernetes-embedded-resource`,
    /// `apiVersion`, `kind` and `metadata` stay: they are an object's own
    /// (the server canonicalizes the root's).
    pub fn prune(&self, value: &mut Value, path: &str, pruned: &mut Vec<String>) {
        self.prune_at(value, At::Root(path), pruned)
    }

    fn prune_at(&self, value: &mut Value, path: At<'_>, pruned: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                let keep_unknown = self.preserve_unknown || self.additional.is_some();
                let mut dropped = Vec::new();
                for (name, v) in map.iter_mut() {
                    if (path.is_root() || self.embedded_resource)
                        && matches!(name.as_str(), "apiVersion" | "kind" | "metadata")
                    {
                        continue;
                    }
                    match self.property(name) {
                        Some(prop) => {
                            if v.is_null() && !prop.nullable {
                                dropped.push((name.clone(), false));
                            } else {
                                prop.prune_at(v, At::Field(&path, name), pruned);
                            }
                        }
                        None if keep_unknown => {}
                        None => dropped.push((name.clone(), true)),
                    }
                }
                for (name, unknown) in dropped {
                    map.remove(&name);
                    if unknown {
                        pruned.push(At::Field(&path, &name).to_string());
                    }
                }
            }
            Value::Array(items) => {
                if let Some(schema) = &self.items {
                    for (i, v) in items.iter_mut().enumerate() {
                        schema.prune_at(v, At::Index(&path, i), pruned);
                    }
                }
            }
            _ => {}
        }
    }

    /// Every violation of the schema in `value`, as Kubernetes words them.
    /// At the root, `apiVersion`, `kind` and `metadata` are not checked
    /// here (the server checks them for every kind).
    pub fn validate(&self, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
        self.validate_at(value, At::Root(path), errors)
    }

    fn validate_at(&self, value: &Value, path: At<'_>, errors: &mut Vec<FieldError>) {
        if value.is_null() {
            if !self.nullable && (self.type_.is_some() || self.int_or_string) {
                let t = self.type_.map_or("string", Type::name);
                errors.push(FieldError::new(
                    path.to_string(),
                    format!(
                        "Invalid value: \"null\": {path} in body must be of type {t}: \"null\""
                    ),
                ));
            }
            return;
        }
        if self.int_or_string {
            if !(Type::Integer.admits(value) || value.is_string()) {
                errors.push(FieldError::new(
                    path.to_string(),
                    format!(
                        "Invalid value: {}: {path} in body must be of type integer,string: {}",
                        shown(value),
                        type_of(value)
                    ),
                ));
                return;
            }
        } else if let Some(t) = self.type_ {
            if !t.admits(value) {
                errors.push(FieldError::new(
                    path.to_string(),
                    format!(
                        "Invalid value: \"{}\": {path} in body must be of type {}: \"{}\"",
                        type_of(value),
                        t.name(),
                        type_of(value)
                    ),
                ));
                return;
            }
        }
        if !self.enum_.is_empty() && !self.enum_.contains(value) {
            let supported: Vec<String> = self.enum_.iter().map(shown).collect();
            errors.push(FieldError::new(
                path.to_string(),
                format!(
                    "Unsupported value: {}: supported values: {}",
                    shown(value),
                    supported.join(", ")
                ),
            ));
        }
        match value {
            Value::Number(n) => {
                self.validate_number(n.as_f64().unwrap_or(0.0), value, path, errors)
            }
            Value::String(s) => self.validate_string(s, path, errors),
            Value::Array(items) => {
                let n = items.len() as u64;
                if let Some(max) = self.max_items.filter(|m| n > *m) {
                    errors.push(FieldError::new(
                        path.to_string(),
                        format!("Too many: {n}: must have at most {max} items"),
                    ));
                }
                if let Some(min) = self.min_items.filter(|m| n < *m) {
                    errors.push(FieldError::new(
                        path.to_string(),
                        format!(
                            "Invalid value: {n}: {path} in body should have at least {min} items"
                        ),
                    ));
                }
                if let Some(schema) = &self.items {
                    for (i, v) in items.iter().enumerate() {
                        schema.validate_at(v, At::Index(&path, i), errors);
                    }
                }
            }
            Value::Object(map) => self.validate_object(map, path, errors),
            _ => {}
        }
    }

    fn validate_number(&self, f: f64, value: &Value, path: At<'_>, errors: &mut Vec<FieldError>) {
        if let Some(m) = self.multiple_of.filter(|m| *m > 0.0) {
            let q = f / m;
            if (q - q.round()).abs() > 1e-9 {
                errors.push(FieldError::new(
                    path.to_string(),
                    format!(
                        "Invalid value: {value}: {path} in body should be a multiple of {}",
                        number_text(m)
                    ),
                ));
            }
        }
        if let Some(min) = self.minimum {
            let (bad, words) = if self.exclusive_minimum {
                (f <= min, "greater than")
            } else {
                (f < min, "greater than or equal to")
            };
            if bad {
                errors.push(FieldError::new(
                    path.to_string(),
                    format!(
                        "Invalid value: {value}: {path} in body should be {words} {}",
                        number_text(min)
                    ),
                ));
            }
        }
        if let Some(max) = self.maximum {
            let (bad, words) = if self.exclusive_maximum {
                (f >= max, "less than")
            } else {
                (f > max, "less than or equal to")
            };
            if bad {
                errors.push(FieldError::new(
                    path.to_string(),
                    format!(
                        "Invalid value: {value}: {path} in body should be {words} {}",
                        number_text(max)
                    ),
                ));
            }
        }
    }

    fn validate_string(&self, s: &str, path: At<'_>, errors: &mut Vec<FieldError>) {
        if self.int_or_string {
            return;
        }
        let len = s.chars().count() as u64;
        if let Some(max) = self.max_length.filter(|m| len > *m) {
            errors.push(FieldError::new(
                path.to_string(),
                format!("Too long: may not be more than {max} bytes"),
            ));
        }
        if let Some(min) = self.min_length.filter(|m| len < *m) {
            errors.push(FieldError::new(
                path.to_string(),
                format!("Invalid value: {s:?}: {path} in body should be at least {min} chars long"),
            ));
        }
        if let Some(re) = &self.pattern {
            if !re.is_match(s) {
                errors.push(FieldError::new(
                    path.to_string(),
                    format!(
                        "Invalid value: {s:?}: {path} in body should match '{}'",
                        re.as_str()
                    ),
                ));
            }
        }
    }

    fn validate_object(
        &self,
        map: &Map<String, Value>,
        path: At<'_>,
        errors: &mut Vec<FieldError>,
    ) {
        for name in &self.required {
            if !map.contains_key(name) {
                errors.push(FieldError::new(
                    At::Field(&path, name).to_string(),
                    "Required value",
                ));
            }
        }
        let n = map.len() as u64;
        if let Some(max) = self.max_properties.filter(|m| n > *m) {
            errors.push(FieldError::new(
                path.to_string(),
                format!("Too many: {n}: must have at most {max} items"),
            ));
        }
        if let Some(min) = self.min_properties.filter(|m| n < *m) {
            errors.push(FieldError::new(
                path.to_string(),
                format!("Invalid value: {n}: {path} in body should have at least {min} properties"),
            ));
        }
        for (name, v) in map {
            if (path.is_root() || self.embedded_resource)
                && matches!(name.as_str(), "apiVersion" | "kind" | "metadata")
            {
                continue;
            }
            if let Some(prop) = self.property(name) {
                prop.validate_at(v, At::Field(&path, name), errors);
            }
        }
    }
}

/// The JSON type name of a value, as Kubernetes' messages give it.
fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node_group() -> Schema {
        Schema::compile(
            &json!({
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["selector"],
                        "properties": {
                            "selector": {"type": "object", "additionalProperties": {"type": "string"}},
                            "minReady": {"type": "integer", "minimum": 0, "default": 1},
                            "mode": {"type": "string", "enum": ["Spread", "Pack"]},
                            "owner": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 8},
                            "port": {"x-kubernetes-int-or-string": true},
                            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                            "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}}
                        }
                    },
                    "status": {"type": "object", "properties": {"ready": {"type": "integer"}}}
                }
            }),
            "openAPIV3Schema",
        )
        .expect("compiles")
    }

    fn errors(s: &Schema, v: &Value) -> Vec<String> {
        let mut out = Vec::new();
        s.validate(v, "", &mut out);
        out.into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn defaults_prunes_and_keeps_what_is_preserved() {
        let s = node_group();
        let mut v = json!({
            "apiVersion": "x/v1", "kind": "NodeGroup", "metadata": {"name": "a", "odd": 1},
            "spec": {"selector": {"a": "b"}, "bogus": 1, "extra": {"any": {"thing": true}}},
            "top": 2
        });
        let mut pruned = Vec::new();
        s.prune(&mut v, "", &mut pruned);
        s.apply_defaults(&mut v);
        assert_eq!(pruned, ["spec.bogus", "top"]);
        assert_eq!(v["spec"]["minReady"], 1);
        assert_eq!(v["spec"]["extra"]["any"]["thing"], true);
        assert_eq!(
            v["metadata"]["odd"], 1,
            "metadata is the server's to canonicalize"
        );
        assert!(errors(&s, &v).is_empty());
    }

    #[test]
    fn errors_carry_field_paths_and_kubernetes_wording() {
        let s = node_group();
        let v = json!({"spec": {
            "minReady": -1, "mode": "Other", "owner": "ABCDEFGHIJ", "port": true,
            "tags": ["a", "b", 3], "selector": {"a": 1}
        }});
        let got = errors(&s, &v);
        for want in [
            "spec.minReady: Invalid value: -1: spec.minReady in body should be greater than or equal to 0",
            "spec.mode: Unsupported value: \"Other\": supported values: \"Spread\", \"Pack\"",
            "spec.owner: Too long: may not be more than 8 bytes",
            "spec.owner: Invalid value: \"ABCDEFGHIJ\": spec.owner in body should match '^[a-z]+$'",
            "spec.port: Invalid value: true: spec.port in body must be of type integer,string: boolean",
            "spec.tags: Too many: 3: must have at most 2 items",
            "spec.tags[2]: Invalid value: \"integer\": spec.tags[2] in body must be of type string: \"integer\"",
            "spec.selector.a: Invalid value: \"integer\": spec.selector.a in body must be of type string: \"integer\"",
        ] {
            assert!(got.iter().any(|g| g == want), "missing {want:?} in {got:#?}");
        }
        assert_eq!(
            errors(&s, &json!({"spec": {}})),
            ["spec.selector: Required value"]
        );
        assert!(errors(&s, &json!({"spec": {"selector": {}, "port": "http"}})).is_empty());
        assert!(errors(&s, &json!({"spec": {"selector": {}, "port": 8080}})).is_empty());
    }

    #[test]
    fn an_embedded_resource_keeps_its_own_type_and_metadata() {
        let s = Schema::compile(
            &json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
                "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                    "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}}}),
            "openAPIV3Schema",
        )
        .expect("compiles");
        let mut v = json!({"spec": {"template": {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"labels": {"a": "b"}}, "spec": {"x": 1}, "extra": true}}});
        let mut pruned = Vec::new();
        s.prune(&mut v, "", &mut pruned);
        assert_eq!(pruned, ["spec.template.extra"]);
        assert_eq!(v["spec"]["template"]["kind"], "Pod");
        assert_eq!(v["spec"]["template"]["metadata"]["labels"]["a"], "b");
    }

    #[test]
    fn non_structural_schemas_are_refused_with_the_place() {
        let bad = json!({"type": "object", "properties": {"spec": {"properties": {}}, "x": {"type": "array"}, "y": {"type": "string", "$ref": "#/a"}}});
        let e = Schema::compile(&bad, "spec.validation.openAPIV3Schema").unwrap_err();
        let got: Vec<String> = e
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        assert!(got.contains(&"spec.validation.openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields".to_string()), "{got:?}");
        assert!(got.contains(&"spec.validation.openAPIV3Schema.properties[x].items: Required value: must be specified".to_string()), "{got:?}");
        assert!(got.contains(&"spec.validation.openAPIV3Schema.properties[y].$ref: Forbidden: not supported in structural schemas".to_string()), "{got:?}");
    }
}
