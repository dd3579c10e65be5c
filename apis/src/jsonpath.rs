//! The JSONPath subset CustomResourceDefinitions use in
//! `additionalPrinterColumns` and in their scale subresource's paths:
//! `.spec.replicas`, `.status.conditions[0].type`, `.spec.tags[*]`,
//! `.status.conditions[?(@.type=="Ready")].status`, `.metadata.labels['a.b/c']`.
//!
//! Written by hand: Kubernetes' JSONPath (client-go's `util/jsonpath`) is
//! its own dialect, and the columns need only this path part of it, not
//! templates; the general-purpose JSONPath crates differ in filters and
//! quoting.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    /// `[?(@.a.b=="v")]`: the items whose field equals the value.
    Filter(Vec<String>, Value),
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    steps: Vec<Step>,
}

impl JsonPath {
    /// Parses `.a.b[0]` (also in braces, `{.a.b}`, as kubectl writes it).
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let text = text.trim();
        let text = text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(text);
        if !text.starts_with('.') && !text.starts_with('[') {
            return Err(format!(
                "{text:?}: must be a simple JSON path starting with '.'"
            ));
        }
        let bytes: Vec<char> = text.chars().collect();
        let mut steps = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                '.' => {
                    let start = i + 1;
                    let mut end = start;
                    while end < bytes.len() && bytes[end] != '.' && bytes[end] != '[' {
                        end += 1;
                    }
                    let name: String = bytes[start..end].iter().collect();
                    if name.is_empty() {
                        return Err(format!("{text:?}: empty field name at {start}"));
                    }
                    steps.push(Step::Field(name));
                    i = end;
                }
                '[' => {
                    let close = find_close(&bytes, i)
                        .ok_or_else(|| format!("{text:?}: unclosed '[' at {i}"))?;
                    let inner: String = bytes[i + 1..close].iter().collect();
                    steps.push(bracket(inner.trim()).map_err(|e| format!("{text:?}: {e}"))?);
                    i = close + 1;
                }
                c => return Err(format!("{text:?}: unexpected {c:?} at {i}")),
            }
        }
        Ok(JsonPath { steps })
    }

    /// The values the path reaches in `root`.
    pub fn find<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut current = vec![root];
        for step in &self.steps {
            let mut next = Vec::new();
            for v in current {
                match step {
                    Step::Field(name) => next.extend(v.get(name)),
                    Step::Index(n) => next.extend(v.get(*n)),
                    Step::All => match v {
                        Value::Array(items) => next.extend(items.iter()),
                        Value::Object(map) => next.extend(map.values()),
                        _ => {}
                    },
                    Step::Filter(fields, want) => {
                        if let Value::Array(items) = v {
                            next.extend(items.iter().filter(|item| {
                                let mut at = Some(*item);
                                for f in fields {
                                    at = at.and_then(|a| a.get(f));
                                }
                                at == Some(want)
                            }));
                        }
                    }
                }
            }
            current = next;
        }
        current
    }

    /// The JSON pointer of a path of plain fields (`.spec.replicas` is
    /// `/spec/replicas`), for the paths a write goes through.
    pub fn pointer(&self) -> Option<String> {
        let mut out = String::new();
        for step in &self.steps {
            match step {
                Step::Field(f) => {
                    out.push('/');
                    out.push_str(&f.replace('~', "~0").replace('/', "~1"));
                }
                _ => return None,
            }
        }
        Some(out)
    }
}

fn find_close(chars: &[char], open: usize) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut depth = 0;
    for (i, c) in chars.iter().enumerate().skip(open) {
        match (quote, c) {
            (Some(q), c) if *c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(*c),
            (None, '[' | '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<&str> {
    s.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
}

fn bracket(inner: &str) -> Result<Step, String> {
    if inner == "*" {
        return Ok(Step::All);
    }
    if let Ok(n) = inner.parse::<usize>() {
        return Ok(Step::Index(n));
    }
    if let Some(key) = unquote(inner) {
        return Ok(Step::Field(key.to_string()));
    }
    if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        let (lhs, rhs) = filter
            .split_once("==")
            .ok_or_else(|| format!("filter {filter:?}: only == is supported"))?;
        let fields: Vec<String> = lhs
            .trim()
            .strip_prefix("@.")
            .ok_or_else(|| format!("filter {filter:?}: must compare a field of @"))?
            .split('.')
            .map(str::to_string)
            .collect();
        let rhs = rhs.trim();
        let want = match unquote(rhs) {
            Some(s) => Value::String(s.to_string()),
            None => {
                serde_json::from_str(rhs).map_err(|_| format!("filter {filter:?}: bad value"))?
            }
        };
        return Ok(Step::Filter(fields, want));
    }
    Err(format!("[{inner}]: not supported"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_fields_indexes_wildcards_and_filters() {
        let v = json!({"spec": {"replicas": 3, "tags": ["a", "b"]},
            "metadata": {"labels": {"a.b/c": "x"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Other", "status": "False"}]}});
        let find = |p: &str| {
            JsonPath::parse(p)
                .unwrap()
                .find(&v)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(find(".spec.replicas"), [json!(3)]);
        assert_eq!(find("{.spec.tags[1]}"), [json!("b")]);
        assert_eq!(find(".spec.tags[*]"), [json!("a"), json!("b")]);
        assert_eq!(find(".metadata.labels['a.b/c']"), [json!("x")]);
        assert_eq!(
            find(".status.conditions[?(@.type==\"Ready\")].status"),
            [json!("True")]
        );
        assert!(find(".spec.missing").is_empty());
        assert_eq!(
            JsonPath::parse(".spec.replicas")
                .unwrap()
                .pointer()
                .as_deref(),
            Some("/spec/replicas")
        );
        assert!(JsonPath::parse("spec").is_err());
        assert!(JsonPath::parse(".a[").is_err());
    }
}
