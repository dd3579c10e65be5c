//! The heartbeat body, exactly as the original Mube defined it.

use serde::{Deserialize, Serialize};

/// `POST /api/v1/nodes/heartbeat` body: `{"name","runtime","version","capacity"}`.
///
/// Extra fields (an `ip` or `port` an old agent still sends) are accepted and
/// ignored: the node registry, not the agent, owns addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub name: String,
    pub runtime: String,
    pub version: String,
    pub capacity: i64,
    /// mube's addition: what the agent knows of its machine. Every field is
    /// optional, so the original four-field body means exactly what it did.
    #[serde(flatten, default)]
    pub system: SystemInfo,
}

/// Optional heartbeat fields, named as in a Node's `status.nodeInfo` (where
/// the server copies them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operating_system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_image: Option<String>,
    #[serde(rename = "bootID", skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(rename = "machineID", skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
}

impl SystemInfo {
    /// `(nodeInfo key, value)` for every field present.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("architecture", &self.architecture),
            ("operatingSystem", &self.operating_system),
            ("kernelVersion", &self.kernel_version),
            ("osImage", &self.os_image),
            ("bootID", &self.boot_id),
            ("machineID", &self.machine_id),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.as_deref()?)))
    }
}

/// A heartbeat body that cannot be accepted; `field` names the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatError {
    pub field: &'static str,
    pub message: String,
}

impl Heartbeat {
    /// Parses and checks a body, naming the first bad field. Written by hand
    /// (rather than serde's own messages) so that a missing or mistyped field
    /// is reported by its name, which is what the agent's operator needs.
    pub fn parse(body: &[u8]) -> Result<Heartbeat, HeartbeatError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| HeartbeatError {
                field: "body",
                message: format!("heartbeat body is not valid JSON: {e}"),
            })?;
        let obj = value.as_object().ok_or(HeartbeatError {
            field: "body",
            message: "heartbeat body must be a JSON object".into(),
        })?;
        let text = |field: &'static str| -> Result<String, HeartbeatError> {
            match obj.get(field) {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                Some(serde_json::Value::String(_)) => Err(HeartbeatError {
                    field,
                    message: format!("{field}: must not be empty"),
                }),
                Some(_) => Err(HeartbeatError {
                    field,
                    message: format!("{field}: must be a string"),
                }),
                None => Err(HeartbeatError {
                    field,
                    message: format!("{field}: required field is missing"),
                }),
            }
        };
        let name = text("name")?;
        let runtime = text("runtime")?;
        let version = text("version")?;
        let capacity = match obj.get("capacity") {
            Some(v) => v.as_i64().ok_or(HeartbeatError {
                field: "capacity",
                message: "capacity: must be an integer".into(),
            })?,
            None => {
                return Err(HeartbeatError {
                    field: "capacity",
                    message: "capacity: required field is missing".into(),
                })
            }
        };
        if capacity < 1 {
            return Err(HeartbeatError {
                field: "capacity",
                message: format!("capacity: must be at least 1, got {capacity}"),
            });
        }
        // The optional fields: strings when present, anything else refused.
        let optional = |field: &'static str| -> Result<Option<String>, HeartbeatError> {
            match obj.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(HeartbeatError {
                    field,
                    message: format!("{field}: must be a string"),
                }),
            }
        };
        let system = SystemInfo {
            architecture: optional("architecture")?,
            operating_system: optional("operatingSystem")?,
            kernel_version: optional("kernelVersion")?,
            os_image: optional("osImage")?,
            boot_id: optional("bootID")?,
            machine_id: optional("machineID")?,
        };
        Ok(Heartbeat {
            name,
            runtime,
            version,
            capacity,
            system,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_original_body_and_ignores_addresses() {
        let hb = Heartbeat::parse(
            br#"{"name":"n1","runtime":"containerd","version":"0.1.0","capacity":10,"ip":"1.2.3.4","port":1}"#,
        )
        .unwrap();
        assert_eq!(hb.name, "n1");
        assert_eq!(hb.capacity, 10);
    }

    #[test]
    fn system_fields_are_optional_extras() {
        let plain =
            Heartbeat::parse(br#"{"name":"n1","runtime":"r","version":"v","capacity":1}"#).unwrap();
        assert_eq!(plain.system, SystemInfo::default());
        let full = Heartbeat::parse(
            br#"{"name":"n1","runtime":"r","version":"v","capacity":1,"architecture":"amd64","kernelVersion":"6.1","machineID":"m"}"#,
        )
        .unwrap();
        assert_eq!(full.system.architecture.as_deref(), Some("amd64"));
        assert_eq!(
            full.system.fields().collect::<Vec<_>>(),
            [
                ("architecture", "amd64"),
                ("kernelVersion", "6.1"),
                ("machineID", "m")
            ]
        );
        // What an agent sends round-trips through serde as through parse.
        let sent = serde_json::to_vec(&full).unwrap();
        assert_eq!(Heartbeat::parse(&sent).unwrap(), full);
        let e = Heartbeat::parse(
            br#"{"name":"n1","runtime":"r","version":"v","capacity":1,"osImage":3}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "osImage");
    }

    #[test]
    fn names_the_bad_field() {
        let e = Heartbeat::parse(br#"{"name":"n1","version":"v","capacity":1}"#).unwrap_err();
        assert_eq!(e.field, "runtime");
        let e = Heartbeat::parse(br#"{"name":"n1","runtime":"r","version":"v","capacity":0}"#)
            .unwrap_err();
        assert_eq!(e.field, "capacity");
        let e = Heartbeat::parse(br#"{"name":"n1","runtime":"r","version":"v","capacity":"3"}"#)
            .unwrap_err();
        assert_eq!(e.field, "capacity");
        let e = Heartbeat::parse(b"{nope").unwrap_err();
        assert_eq!(e.field, "body");
    }
}
