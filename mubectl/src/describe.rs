//! `mubectl describe node NAME`.

use std::fmt::Write;

use jiff::Timestamp;
use mube_apis::resources;
use mube_apis::NODE_LEASE_NAMESPACE;
use serde_json::Value;

use crate::client::{Client, CtlError};
use crate::table::{age, time_at, Columns};

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("<none>")
}

fn map_lines(v: Option<&Value>) -> String {
    match v.and_then(Value::as_object) {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join("\n                    "),
        _ => "<none>".into(),
    }
}

fn when(t: Option<Timestamp>, now: Timestamp) -> String {
    match t {
        Some(t) => format!("{t} ({} ago)", age(Some(t), now)),
        None => "<none>".into(),
    }
}

pub async fn run(client: &Client, resource: &str, name: &str) -> Result<(), CtlError> {
    let info = crate::get::resource(client, resource).await?;
    if info.kind != "Node" {
        return Err(CtlError::Other(format!(
            "describe supports nodes; got {resource:?}"
        )));
    }
    let node = client.get(&resources::NODES.path(None, Some(name))).await?;
    let lease = match client
        .get(&resources::LEASES.path(Some(NODE_LEASE_NAMESPACE), Some(name)))
        .await
    {
        Ok(l) => Some(l),
        Err(e) if e.code() == Some(404) => None,
        Err(e) => return Err(e),
    };
    print!("{}", render(&node, lease.as_ref(), Timestamp::now()));
    Ok(())
}

/// The text of `describe node`, kept pure for testing.
pub fn render(node: &Value, lease: Option<&Value>, now: Timestamp) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Name:               {}", text(node, "/metadata/name"));
    let _ = writeln!(
        out,
        "Labels:             {}",
        map_lines(node.pointer("/metadata/labels"))
    );
    let _ = writeln!(
        out,
        "Annotations:        {}",
        map_lines(node.pointer("/metadata/annotations"))
    );
    let _ = writeln!(
        out,
        "CreationTimestamp:  {}",
        when(time_at(node, "/metadata/creationTimestamp"), now)
    );
    let unschedulable = node
        .pointer("/spec/unschedulable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let _ = writeln!(out, "Unschedulable:      {unschedulable}");
    let _ = writeln!(out, "State:              {}", text(node, "/status/state"));
    let _ = writeln!(out, "Addresses:");
    for a in node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let _ = writeln!(out, "  {}:  {}", text(a, "/type"), text(a, "/address"));
    }
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .map(|p| p.to_string())
        .unwrap_or_else(|| "<none>".into());
    let _ = writeln!(out, "Port:               {port}");
    let _ = writeln!(out, "Conditions:");
    let mut rows = vec![[
        "Type",
        "Status",
        "LastHeartbeatTime",
        "LastTransitionTime",
        "Reason",
        "Message",
    ]
    .map(String::from)
    .to_vec()];
    for c in node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ago = |p: &str| {
            time_at(c, p)
                .map(|t| format!("{} ago", age(Some(t), now)))
                .unwrap_or_else(|| "<none>".into())
        };
        rows.push(vec![
            text(c, "/type").to_string(),
            text(c, "/status").to_string(),
            ago("/lastHeartbeatTime"),
            ago("/lastTransitionTime"),
            text(c, "/reason").to_string(),
            text(c, "/message").to_string(),
        ]);
    }
    let mut columns = Columns::default();
    columns.fit(&rows);
    for r in &rows {
        let _ = writeln!(out, "  {}", columns.line(r));
    }
    let _ = writeln!(out, "System Info:");
    let _ = writeln!(
        out,
        "  Container Runtime Version:  {}",
        text(node, "/status/nodeInfo/containerRuntimeVersion")
    );
    let _ = writeln!(
        out,
        "  Mubelet Version:            {}",
        text(node, "/status/nodeInfo/kubeletVersion")
    );
    let _ = writeln!(out, "Capacity:");
    let _ = writeln!(out, "  pods:  {}", text(node, "/status/capacity/pods"));
    let _ = writeln!(out, "Allocatable:");
    let _ = writeln!(out, "  pods:  {}", text(node, "/status/allocatable/pods"));
    let _ = writeln!(out, "Lease:");
    match lease {
        Some(l) => {
            let _ = writeln!(
                out,
                "  HolderIdentity:  {}",
                text(l, "/spec/holderIdentity")
            );
            let _ = writeln!(
                out,
                "  RenewTime:       {}",
                when(time_at(l, "/spec/renewTime"), now)
            );
        }
        None => {
            let _ = writeln!(out, "  <none> (no heartbeat yet)");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_what_an_operator_needs() {
        let now: Timestamp = "2026-01-10T00:00:10Z".parse().unwrap();
        let node = serde_json::json!({
            "metadata": {"name": "n1", "creationTimestamp": "2026-01-10T00:00:00Z"},
            "status": {"state": "Ready", "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok",
                    "lastHeartbeatTime": "2026-01-10T00:00:05Z", "lastTransitionTime": "2026-01-10T00:00:05Z"}],
                "nodeInfo": {"containerRuntimeVersion": "containerd", "kubeletVersion": "0.1.0"},
                "capacity": {"pods": "10"}, "allocatable": {"pods": "10"}}
        });
        let lease = serde_json::json!({"spec": {"holderIdentity": "n1", "renewTime": "2026-01-10T00:00:08.000000Z"}});
        let out = render(&node, Some(&lease), now);
        for want in [
            "InternalIP:  10.0.0.1",
            "Port:               10250",
            "State:              Ready",
            "Ready   True",
            "5s ago",
            "KubeletReady",
            "containerd",
            "pods:  10",
            "HolderIdentity:  n1",
            "(2s ago)",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }
}
