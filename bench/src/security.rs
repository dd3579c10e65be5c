//! What security costs: heartbeats over HTTPS with each node's own
//! credential and `Node,RBAC`, against plain HTTP with authorization off,
//! in one run; and what RBAC adds to a request with 1,000 bindings, end to
//! end (the same request with `AlwaysAllow` and with RBAC) and in the
//! authorizer alone.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mube_apiserver::auth::rbac::{Objects, Policy};
use mube_apiserver::auth::{Attributes, ResourceAttributes, UserInfo};
use serde_json::json;

use crate::load::{self, LoadStats};
use crate::server::{Security, Server, ADMIN_TOKEN};
use crate::{load_rows, Report};

const BINDINGS: usize = 1000;
/// The user whose reads are measured (bound by binding 500).
const READER: &str = "user-500";
const READER_TOKEN: &str = "bench-reader-token";

pub async fn run(
    bin: &std::path::Path,
    nodes: usize,
    connections: usize,
    d: Duration,
    report: &mut Report,
) -> Result<(), String> {
    report.add("scenario", "security");
    report.add("nodes", nodes);
    report.add("connections", connections);
    let plain = {
        let server = Server::start_with(bin, nodes, "", Security::Plain).await?;
        load::closed_loop(&server.endpoint(), nodes, connections, d).await
    };
    let secure = {
        let server = Server::start_with(bin, nodes, "", Security::Secure).await?;
        load::closed_loop(&server.endpoint(), nodes, connections, d).await
    };
    load_rows(report, "plain_http_no_authz_heartbeat", &plain);
    load_rows(report, "tls_node_credentials_heartbeat", &secure);
    report.add(
        "tls_over_plain",
        format!("{:.2}", secure.rate() / plain.rate().max(1e-9)),
    );

    // One client reading one object back to back: RBAC with 1,000
    // bindings against AlwaysAllow, both over TLS with a token.
    let allow = reads(bin, "authorization: {mode: AlwaysAllow}\n", d).await?;
    let rbac = reads(bin, "", d).await?;
    load_rows(report, "read_always_allow", &allow);
    load_rows(report, "read_rbac_1000_bindings", &rbac);
    report.add(
        "rbac_adds_p99_ms",
        format!("{:.3}", rbac.ms(0.99) - allow.ms(0.99)),
    );
    let (p50, p99) = authorizer_alone();
    report.add("rbac_authorize_alone_p50_us", format!("{p50:.2}"));
    report.add("rbac_authorize_alone_p99_us", format!("{p99:.2}"));
    Ok(())
}

/// A secure server with 1,000 RoleBindings (the reader's among them), and
/// one connection reading a ConfigMap as the reader for `d`.
async fn reads(bin: &std::path::Path, extra: &str, d: Duration) -> Result<LoadStats, String> {
    let server = Server::start_with(bin, 0, extra, Security::Secure).await?;
    let endpoint = server.endpoint();
    let admin = endpoint.connection();
    let post = |path: &str, body: serde_json::Value| {
        admin
            .post(format!("{}{path}", endpoint.url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let made = post(
        "/api/v1/namespaces/default/configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}),
    )
    .await
    .map_err(|e| e.to_string())?;
    if !made.status().is_success() {
        return Err(format!("creating the ConfigMap: {}", made.status()));
    }
    for i in 0..BINDINGS {
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("b{i}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": format!("user-{i}"), "apiGroup": "rbac.authorization.k8s.io"}],
        });
        let r = post(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            binding,
        )
        .await
        .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("creating binding {i}: {}", r.status()));
        }
    }
    let url = format!("{}/api/v1/namespaces/default/configmaps/c", endpoint.url);
    let reader = endpoint.connection();
    // The policy is built on the first request after the writes.
    let first = reader
        .get(&url)
        .bearer_auth(READER_TOKEN)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !first.status().is_success() {
        return Err(format!("the reader is refused: {}", first.status()));
    }
    Ok(load::run(1, d, move |_| {
        let (reader, url) = (reader.clone(), url.clone());
        move || {
            let (reader, url) = (reader.clone(), url.clone());
            async move {
                match reader.get(&url).bearer_auth(READER_TOKEN).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
        }
    })
    .await)
}

/// The authorizer's own cost with 1,000 bindings: (p50, p99) in µs of
/// deciding one request, over 200,000 decisions.
fn authorizer_alone() -> (f64, f64) {
    let rule = PolicyRule {
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        api_groups: Some(vec!["".into()]),
        resources: Some(vec!["configmaps".into(), "pods".into()]),
        ..Default::default()
    };
    let policy = Policy::new(Objects {
        cluster_roles: vec![ClusterRole {
            metadata: ObjectMeta {
                name: Some("view".into()),
                ..Default::default()
            },
            rules: Some(vec![rule]),
            ..Default::default()
        }],
        role_bindings: (0..BINDINGS)
            .map(|i| RoleBinding {
                metadata: ObjectMeta {
                    name: Some(format!("b{i}")),
                    namespace: Some("default".into()),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: "view".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "User".into(),
                    name: format!("user-{i}"),
                    ..Default::default()
                }]),
            })
            .collect(),
        ..Default::default()
    });
    let user = UserInfo::authenticated(READER, vec![]);
    let request = Attributes {
        user: &user,
        verb: "get",
        resource: Some(ResourceAttributes {
            resource: "configmaps",
            namespace: "default",
            name: "c",
            ..Default::default()
        }),
        path: "",
    };
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..200_000 {
        let t = Instant::now();
        let allowed = std::hint::black_box(policy.allows(std::hint::black_box(&request)));
        let _ = histogram.record(t.elapsed().as_nanos() as u64);
        assert!(allowed);
    }
    (
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
    )
}
