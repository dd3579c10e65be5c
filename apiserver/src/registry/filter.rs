//! `labelSelector` + `fieldSelector`, applied to lists and watches alike.

use std::collections::BTreeMap;

use mube_apis::selector::{FieldSelector, LabelSelector};
use serde_json::Value;

use super::Resource;
use crate::error::ApiError;

#[derive(Debug, Clone, Default)]
pub struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    pub fn parse(
        r: &Resource,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Filter, ApiError> {
        let labels = LabelSelector::parse(labels.unwrap_or(""))
            .map_err(|m| ApiError::bad_request(format!("unable to parse labelSelector: {m}")))?;
        let fields = FieldSelector::parse(fields.unwrap_or(""), r.strategy.selectable_fields())
            .map_err(|m| ApiError::bad_request(format!("unable to parse fieldSelector: {m}")))?;
        Ok(Filter { labels, fields })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// The value the field selector requires `field` to equal, if any.
    pub fn equals(&self, field: &str) -> Option<&str> {
        self.fields.equals(field)
    }

    /// Whether an object, as `project` saw it, matches.
    pub fn matches_projection(&self, p: &Projection) -> bool {
        self.labels.matches(p.labels.as_ref())
            && (self.fields.is_empty()
                || self.fields.matches(|f| {
                    p.fields
                        .iter()
                        .find(|(name, _)| *name == f)
                        .and_then(|(_, v)| v.clone())
                }))
    }

    /// Whether one object matches: what the filter reads, taken from it
    /// (a list filters every object it reads this way).
    pub fn matches(&self, r: &Resource, object: &Value) -> bool {
        self.is_empty()
            || self.matches_projection(&Projection::taking(
                r,
                object,
                !self.labels.is_empty(),
                !self.fields.is_empty(),
            ))
    }
}

/// What a selector can look at in an object: its labels and the kind's
/// selectable fields, taken once.
#[derive(Debug, Default)]
pub struct Projection {
    labels: Option<BTreeMap<String, String>>,
    fields: Vec<(&'static str, Option<String>)>,
}

impl Projection {
    /// Everything any selector can read (a watch event's, shared by all
    /// its watchers whatever their selectors).
    pub fn of(r: &Resource, object: &Value) -> Projection {
        Projection::taking(r, object, true, true)
    }

    /// A selectable field's value, as a selector compares it (absent is
    /// the empty string).
    pub fn field(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(f, _)| *f == name)
            .and_then(|(_, v)| v.as_deref())
            .unwrap_or("")
    }

    /// The labels and the selectable fields, each only when asked for.
    fn taking(r: &Resource, object: &Value, labels: bool, fields: bool) -> Projection {
        let labels = labels
            .then(|| {
                object
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
            })
            .flatten()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            });
        let fields = if fields {
            r.strategy
                .selectable_fields()
                .iter()
                .map(|f| (*f, r.strategy.field_value(object, f)))
                .collect()
        } else {
            Vec::new()
        };
        Projection { labels, fields }
    }
}
