//! Name and label validation, with the rules and messages of Kubernetes'
//! apimachinery validation package, so a client sees the error it expects.

use std::collections::BTreeMap;

/// One invalid field: its path (`metadata.labels`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label: the rule for Namespace names (at most 63 characters,
/// no dots).
pub fn dns1123_label(value: &str) -> Result<(), String> {
    const MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
    if value.len() > 63 {
        return Err(format!(
            "Invalid value: {value:?}: must be no more than 63 characters"
        ));
    }
    let ok = !value.is_empty()
        && value.chars().all(|c| is_lower_alnum(c) || c == '-')
        && value.starts_with(is_lower_alnum)
        && value.ends_with(is_lower_alnum);
    if ok {
        Ok(())
    } else {
        Err(format!("Invalid value: {value:?}: {MSG}"))
    }
}

/// RFC 1123 subdomain: the rule for Node and Lease names.
pub fn dns1123_subdomain(value: &str) -> Result<(), String> {
    const MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
    if value.is_empty() {
        return Err("name must not be empty".into());
    }
    if value.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    for label in value.split('.') {
        let ok = !label.is_empty()
            && label.chars().all(|c| is_lower_alnum(c) || c == '-')
            && label.starts_with(is_lower_alnum)
            && label.ends_with(is_lower_alnum);
        if !ok {
            return Err(format!("Invalid value: {value:?}: {MSG}"));
        }
    }
    Ok(())
}

fn qualified_name_part(value: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| alnum(c) || c == '-' || c == '_' || c == '.')
        && value.starts_with(alnum)
        && value.ends_with(alnum)
}

/// A label (or annotation) key: `[prefix/]name`.
pub fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        dns1123_subdomain(prefix).map_err(|_| {
            format!("Invalid value: {key:?}: prefix part must be a lowercase RFC 1123 subdomain")
        })?;
    }
    if !qualified_name_part(name) {
        return Err(format!("Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', must start and end with an alphanumeric character, and be at most 63 characters"));
    }
    Ok(())
}

/// A label value: empty, or up to 63 characters of the qualified-name alphabet.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || qualified_name_part(value) {
        Ok(())
    } else {
        Err(format!("Invalid value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)"))
    }
}

/// Validates `metadata.labels` and the keys of `metadata.annotations`.
pub fn labels_and_annotations(
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (k, v) in labels.into_iter().flatten() {
        if let Err(m) = qualified_name(k) {
            errors.push(FieldError::new("metadata.labels", m));
        }
        if let Err(m) = label_value(v) {
            errors.push(FieldError::new(format!("metadata.labels[{k}]"), m));
        }
    }
    for k in annotations.into_iter().flatten().map(|(k, _)| k) {
        if let Err(m) = qualified_name(&k.to_lowercase()) {
            errors.push(FieldError::new("metadata.annotations", m));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns1123_subdomain("mube-node-1").is_ok());
        assert!(dns1123_subdomain("a.b-c.d").is_ok());
        assert!(dns1123_subdomain("Node1").is_err());
        assert!(dns1123_subdomain("-a").is_err());
        assert!(dns1123_subdomain("a..b").is_err());
        assert!(dns1123_subdomain("").is_err());
        assert!(dns1123_subdomain(&"a".repeat(254)).is_err());
    }

    #[test]
    fn labels() {
        assert!(qualified_name("app").is_ok());
        assert!(qualified_name("mube.io/role").is_ok());
        assert!(qualified_name("Bad Key").is_err());
        assert!(qualified_name("UPPER.io/x").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_3").is_ok());
        assert!(label_value("no spaces").is_err());
        assert!(label_value(&"x".repeat(64)).is_err());
    }
}
