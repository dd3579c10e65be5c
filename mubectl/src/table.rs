//! kubectl-style tables: mube's own Node columns (every other kind prints
//! the server's Table, see `get.rs`), ages, and alignment.

use std::collections::HashMap;

use jiff::Timestamp;
use serde_json::Value;

/// Output format chosen with `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Wide,
    Json,
    Yaml,
    Name,
}

impl Format {
    pub fn parse(text: Option<&str>) -> Result<Format, String> {
        match text {
            None => Ok(Format::Table),
            Some("wide") => Ok(Format::Wide),
            Some("json") => Ok(Format::Json),
            Some("yaml") => Ok(Format::Yaml),
            Some("name") => Ok(Format::Name),
            Some(other) => Err(format!(
                "unable to match a printer suitable for the output format {other:?}, allowed formats are: json, name, wide, yaml"
            )),
        }
    }
}

pub use mube_apis::table::{human_age as age, time_at};

fn text(object: &Value, pointer: &str) -> String {
    match object.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "<none>".into(),
        Some(other) => other.to_string(),
    }
}

/// The columns of a kind's table.
pub fn headers(kind: &str, wide: bool, namespaced_all: bool) -> Vec<&'static str> {
    let mut h = if namespaced_all {
        vec!["NAMESPACE"]
    } else {
        vec![]
    };
    match kind {
        "Node" => {
            h.extend(["NAME", "STATUS", "AGE", "VERSION"]);
            if wide {
                h.extend([
                    "INTERNAL-IP",
                    "PORT",
                    "RUNTIME",
                    "CAPACITY",
                    "LAST-HEARTBEAT",
                ]);
            }
        }
        _ => h.extend(["NAME", "AGE"]),
    }
    h
}

/// Where the latest heartbeat of each node is known: the Leases (renewed by
/// every heartbeat). Without them the Ready condition's `lastHeartbeatTime`,
/// which moves only when the Node itself is written, stands in.
pub type Heartbeats = HashMap<String, Timestamp>;

pub fn row(
    object: &Value,
    wide: bool,
    namespaced_all: bool,
    heartbeats: &Heartbeats,
    now: Timestamp,
) -> Vec<String> {
    let mut cells = Vec::new();
    if namespaced_all {
        cells.push(text(object, "/metadata/namespace"));
    }
    let name = text(object, "/metadata/name");
    let created = age(time_at(object, "/metadata/creationTimestamp"), now);
    match object.get("kind").and_then(Value::as_str).unwrap_or("") {
        "Node" => {
            let mut status = object
                .pointer("/status/state")
                .and_then(Value::as_str)
                .unwrap_or("Unknown")
                .to_string();
            if object
                .pointer("/spec/unschedulable")
                .and_then(Value::as_bool)
                == Some(true)
            {
                status.push_str(",SchedulingDisabled");
            }
            cells.extend([
                name.clone(),
                status,
                created,
                text(object, "/status/nodeInfo/kubeletVersion"),
            ]);
            if wide {
                let ip = object
                    .pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| {
                        a.iter()
                            .find(|x| x.get("type").and_then(Value::as_str) == Some("InternalIP"))
                    })
                    .and_then(|x| x.get("address"))
                    .and_then(Value::as_str)
                    .unwrap_or("<none>")
                    .to_string();
                let heartbeat = heartbeats.get(&name).copied().or_else(|| {
                    mube_apis::node::ready_condition(object)
                        .and_then(|c| c.get("lastHeartbeatTime"))
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse().ok())
                        // Registration time stands in until a heartbeat arrives.
                        .filter(|_| object.pointer("/status/nodeInfo").is_some())
                });
                cells.extend([
                    ip,
                    text(object, "/status/daemonEndpoints/kubeletEndpoint/Port"),
                    text(object, "/status/nodeInfo/containerRuntimeVersion"),
                    text(object, "/status/capacity/pods"),
                    heartbeat
                        .map(|t| format!("{} ago", age(Some(t), now)))
                        .unwrap_or_else(|| "<never>".into()),
                ]);
            }
        }
        _ => cells.extend([name, created]),
    }
    cells
}

/// Aligns cells into columns, three spaces apart, as kubectl does. Widths only
/// grow, so rows printed later under a watch line up with the first table.
#[derive(Debug, Default)]
pub struct Columns {
    widths: Vec<usize>,
}

impl Columns {
    pub fn fit(&mut self, rows: &[Vec<String>]) {
        for row in rows {
            for (i, cell) in row.iter().enumerate() {
                if self.widths.len() <= i {
                    self.widths.push(0);
                }
                self.widths[i] = self.widths[i].max(cell.chars().count());
            }
        }
    }

    pub fn line(&self, row: &[String]) -> String {
        let mut out = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                out.push_str(cell);
            } else {
                let width = self.widths.get(i).copied().unwrap_or(0);
                out.push_str(&format!("{cell:<width$}   "));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_rows() {
        let now: Timestamp = "2026-01-10T00:00:00Z".parse().unwrap();
        let node = serde_json::json!({
            "kind": "Node",
            "metadata": {"name": "n1", "creationTimestamp": "2026-01-09T23:59:00Z"},
            "spec": {"unschedulable": true},
            "status": {"state": "Ready", "nodeInfo": {"kubeletVersion": "0.1.0", "containerRuntimeVersion": "containerd"},
                       "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}, "capacity": {"pods": "10"}}
        });
        let beats: Heartbeats =
            [("n1".to_string(), "2026-01-09T23:59:58Z".parse().unwrap())].into();
        assert_eq!(
            row(&node, false, false, &beats, now),
            ["n1", "Ready,SchedulingDisabled", "60s", "0.1.0"]
        );
        let wide = row(&node, true, false, &beats, now);
        assert_eq!(
            &wide[4..],
            ["10.0.0.1", "10250", "containerd", "10", "2s ago"]
        );
        let mut cols = Columns::default();
        let h: Vec<String> = headers("Node", false, false)
            .into_iter()
            .map(String::from)
            .collect();
        let r = row(&node, false, false, &beats, now);
        cols.fit(&[h.clone(), r.clone()]);
        assert_eq!(
            cols.line(&h),
            "NAME   STATUS                     AGE   VERSION"
        );
    }
}
