//! `meta.k8s.io/v1` Table: what `kubectl get` asks for and prints as is.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One column, as `columnDefinitions` lists it. Priority 0 columns are
/// always shown; priority 1 only with `-o wide`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i32,
}

impl Column {
    pub fn new(name: &str, type_: &str, format: &str, description: &str, priority: i32) -> Column {
        Column {
            name: name.into(),
            type_: type_.into(),
            format: format.into(),
            description: description.into(),
            priority,
        }
    }

    pub fn name() -> Column {
        Column::new(
            "Name",
            "string",
            "name",
            "Name must be unique within a namespace.",
            0,
        )
    }

    pub fn age() -> Column {
        Column::new(
            "Age",
            "string",
            "",
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
            0,
        )
    }
}

/// kubectl's short human durations (apimachinery `duration.HumanDuration`):
/// 45s, 3m12s, 5h, 2d3h, 40d, 3y.
pub fn human_age(since: Option<Timestamp>, now: Timestamp) -> String {
    let Some(since) = since else {
        return "<unknown>".into();
    };
    let secs = now.duration_since(since).as_secs().max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => {
            if s % 60 == 0 {
                format!("{m}m")
            } else {
                format!("{m}m{}s", s % 60)
            }
        }
        s if s < 3 * 3600 => format!("{m}m"),
        s if s < 8 * 3600 => {
            if m % 60 == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{}m", m % 60)
            }
        }
        s if s < 48 * 3600 => format!("{h}h"),
        s if s < 8 * 86400 => {
            if h % 24 == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{}h", h % 24)
            }
        }
        s if s < 730 * 86400 => format!("{d}d"),
        _ => format!("{}y{}d", d / 365, d % 365),
    }
}

/// A timestamp field of an object, parsed.
pub fn time_at(object: &Value, pointer: &str) -> Option<Timestamp> {
    object.pointer(pointer)?.as_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_like_kubectl() {
        let now: Timestamp = "2026-01-10T00:00:00Z".parse().unwrap();
        let ago = |s: i64| {
            human_age(
                Some(now.checked_sub(jiff::SignedDuration::from_secs(s)).unwrap()),
                now,
            )
        };
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(150), "2m30s");
        assert_eq!(ago(180), "3m");
        assert_eq!(ago(1800), "30m");
        assert_eq!(ago(4 * 3600 + 120), "4h2m");
        assert_eq!(ago(30 * 3600), "30h");
        assert_eq!(ago(3 * 86400 + 3600), "3d1h");
        assert_eq!(ago(40 * 86400), "40d");
        assert_eq!(human_age(None, now), "<unknown>");
    }
}
