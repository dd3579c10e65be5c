//! Label and field selectors, as `?labelSelector=` and `?fieldSelector=` carry them.
//!
//! Written by hand: no maintained crate parses Kubernetes selector syntax
//! without pulling in a whole client. The grammar follows apimachinery's
//! `labels.Parse` and `fields.ParseSelector`.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    Exists,
    NotExists,
    Equals(String),
    NotEquals(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
}

/// A parsed label selector; an empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<(String, LabelOp)>,
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn check_key(key: &str) -> Result<String, String> {
    crate::validation::qualified_name(key)?;
    Ok(key.to_string())
}

fn check_value(value: &str) -> Result<String, String> {
    crate::validation::label_value(value)?;
    Ok(value.to_string())
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(LabelSelector { requirements });
        }
        for part in split_top_level(text)? {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!(
                    "unable to parse requirement in {text:?}: empty requirement"
                ));
            }
            requirements.push(Self::parse_requirement(part)?);
        }
        Ok(LabelSelector { requirements })
    }

    fn parse_requirement(part: &str) -> Result<(String, LabelOp), String> {
        if let Some(key) = part.strip_prefix('!') {
            return Ok((check_key(key.trim())?, LabelOp::NotExists));
        }
        if let Some(open) = part.find('(') {
            let close = part
                .rfind(')')
                .filter(|c| *c == part.len() - 1)
                .ok_or_else(|| {
                    format!("unable to parse requirement {part:?}: expected ')' at the end")
                })?;
            let head: Vec<&str> = part[..open].split_whitespace().collect();
            let [key, op] = head[..] else {
                return Err(format!("unable to parse requirement {part:?}: expected 'key in (...)' or 'key notin (...)'"));
            };
            let values = part[open + 1..close]
                .split(',')
                .map(|v| check_value(v.trim()))
                .collect::<Result<BTreeSet<_>, _>>()?;
            let op = match op {
                "in" => LabelOp::In(values),
                "notin" => LabelOp::NotIn(values),
                other => {
                    return Err(format!(
                        "unable to parse requirement {part:?}: unknown operator {other:?}"
                    ))
                }
            };
            return Ok((check_key(key)?, op));
        }
        for (token, make) in [
            ("!=", LabelOp::NotEquals as fn(String) -> LabelOp),
            ("==", LabelOp::Equals),
            ("=", LabelOp::Equals),
        ] {
            if let Some((key, value)) = part.split_once(token) {
                return Ok((check_key(key.trim())?, make(check_value(value.trim())?)));
            }
        }
        if part.contains(char::is_whitespace) {
            return Err(format!("unable to parse requirement {part:?}"));
        }
        Ok((check_key(part)?, LabelOp::Exists))
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.requirements.iter().all(|(key, op)| {
            let value = labels.and_then(|l| l.get(key));
            match op {
                LabelOp::Exists => value.is_some(),
                LabelOp::NotExists => value.is_none(),
                LabelOp::Equals(v) => value == Some(v),
                LabelOp::NotEquals(v) => value != Some(v),
                LabelOp::In(vs) => value.is_some_and(|x| vs.contains(x)),
                LabelOp::NotIn(vs) => !value.is_some_and(|x| vs.contains(x)),
            }
        })
    }
}

/// A `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`) in
/// the string syntax of `?labelSelector=` (apimachinery's
/// `LabelSelectorAsSelector`), as a Scale's `status.selector` carries it.
pub fn label_selector_string(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Result<String, String> {
    let mut parts = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        parts.push(format!("{key}={value}"));
    }
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let values = e.values.clone().unwrap_or_default();
        let needs_values = matches!(e.operator.as_str(), "In" | "NotIn");
        if needs_values == values.is_empty() {
            return Err(format!(
                "matchExpressions[{i}].values: {}",
                if needs_values {
                    "Required value: must be specified when `operator` is 'In' or 'NotIn'"
                } else {
                    "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                }
            ));
        }
        let mut sorted = values;
        sorted.sort();
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({})", e.key, sorted.join(",")),
            "NotIn" => format!("{} notin ({})", e.key, sorted.join(",")),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => {
                return Err(format!(
                    "matchExpressions[{i}].operator: Unsupported value: {other:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""
                ))
            }
        });
    }
    let text = parts.join(",");
    LabelSelector::parse(&text)?;
    Ok(text)
}

/// A parsed field selector: `field=value`, `field==value`, `field!=value`, ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses and checks every field against `supported`, as the API server
    /// answers an unsupported field with 400 rather than ignoring it.
    pub fn parse(text: &str, supported: &[&str]) -> Result<FieldSelector, String> {
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(FieldSelector { requirements });
        }
        for part in text.split(',') {
            let part = part.trim();
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: {text:?}; can't understand {part:?}"
                ));
            };
            let field = field.trim();
            if !supported.contains(&field) {
                return Err(format!("field label not supported: {field}"));
            }
            requirements.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value this selector requires `field` to equal, if it does
    /// (`field=value` or `field==value`): what a watch is indexed by.
    pub fn equals(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|(name, equal, _)| name == field && *equal)
            .map(|(_, _, value)| value.as_str())
    }

    /// `field` gives the value of a supported field for the object at hand.
    pub fn matches(&self, field: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|(name, equal, want)| {
            let have = field(name).unwrap_or_default();
            (have == *want) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selector_objects_become_strings() {
        let selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
            serde_json::from_value(serde_json::json!({
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["b", "a"]},
                    {"key": "old", "operator": "DoesNotExist"}
                ]
            }))
            .unwrap();
        let text = label_selector_string(&selector).unwrap();
        assert_eq!(text, "app=web,tier in (a,b),!old");
        let parsed = LabelSelector::parse(&text).unwrap();
        let labels = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "a".to_string()),
        ]);
        assert!(parsed.matches(Some(&labels)));
        let bad: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
            serde_json::from_value(
                serde_json::json!({"matchExpressions": [{"key": "x", "operator": "In"}]}),
            )
            .unwrap();
        assert!(label_selector_string(&bad).is_err());
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_operators() {
        let l = labels(&[("env", "prod"), ("tier", "web")]);
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&l));
        assert!(m(""));
        assert!(m("env=prod"));
        assert!(m("env==prod"));
        assert!(!m("env!=prod"));
        assert!(m("env in (prod, staging)"));
        assert!(!m("env notin (prod,staging)"));
        assert!(m("tier"));
        assert!(!m("!tier"));
        assert!(m("!gpu"));
        assert!(m("env=prod,tier in (web),!gpu"));
        assert!(!m("env=prod,gpu"));
        assert!(m("gpu notin (yes)"));
        assert!(LabelSelector::parse("env in prod").is_err());
        assert!(LabelSelector::parse("env=(x").is_err());
        assert!(LabelSelector::parse("bad key=x").is_err());
        assert!(LabelSelector::parse("a,,b").is_err());
    }

    #[test]
    fn field_operators() {
        let f = |name: &str| (name == "metadata.name").then(|| "n1".to_string());
        let sel = FieldSelector::parse("metadata.name=n1", &["metadata.name"]).unwrap();
        assert!(sel.matches(f));
        let sel = FieldSelector::parse("metadata.name!=n1", &["metadata.name"]).unwrap();
        assert!(!sel.matches(f));
        assert!(FieldSelector::parse("spec.foo=1", &["metadata.name"]).is_err());
        assert!(FieldSelector::parse("nonsense", &["metadata.name"]).is_err());
        let sel =
            FieldSelector::parse("metadata.name!=a,metadata.name=b", &["metadata.name"]).unwrap();
        assert_eq!(sel.equals("metadata.name"), Some("b"));
        assert_eq!(sel.equals("spec.nodeName"), None);
    }
}
