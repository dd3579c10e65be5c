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

    pub fn matches(&self, r: &Resource, object: &Value) -> bool {
        if !self.labels.is_empty() {
            let labels: Option<BTreeMap<String, String>> = object
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                });
            if !self.labels.matches(labels.as_ref()) {
                return false;
            }
        }
        self.fields.is_empty() || self.fields.matches(|f| r.strategy.field_value(object, f))
    }
}
