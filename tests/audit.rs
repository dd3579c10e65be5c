//! The audit log against the real binary: a line in Kubernetes' audit
//! Event format for each write and each denied request, none for reads;
//! off when the config says so.

use std::time::Duration;

use mube_e2e::{node, Api, ApiServer, Options};
use serde_json::json;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

#[tokio::test]
async fn writes_and_denials_are_audited_and_reads_are_not() {
    let server = ApiServer::start(Options {
        nodes: vec![node("node-a")],
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    let created = api
        .post(
            LEASES,
            &json!({"metadata": {"name": "audited"}, "spec": {"holderIdentity": "x"}}),
        )
        .await;
    assert_eq!(created.code, 201);
    assert_eq!(api.get(LEASES).await.code, 200);
    assert_eq!(api.get(&format!("{LEASES}/audited")).await.code, 200);
    // A heartbeat for a node that is not registered is refused: a denial.
    let denied = api
        .post(
            "/api/v1/nodes/heartbeat",
            &json!({"name": "stranger", "runtime": "containerd", "version": "1", "capacity": 1}),
        )
        .await;
    assert_eq!(denied.code, 403);

    let lines = mube_e2e::audit_lines(&server, 2).await;
    assert_eq!(lines.len(), 2, "reads are not audited: {lines:#?}");
    let write = &lines[0];
    assert_eq!(write["kind"], "Event");
    assert_eq!(write["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(write["level"], "Metadata");
    assert_eq!(write["stage"], "ResponseComplete");
    assert_eq!(write["verb"], "create");
    assert_eq!(write["user"]["username"], "system:anonymous");
    assert_eq!(write["user"]["groups"], json!(["system:unauthenticated"]));
    assert_eq!(write["sourceIPs"], json!(["127.0.0.1"]));
    assert_eq!(
        write["objectRef"],
        json!({"resource": "leases", "namespace": "default", "apiGroup": "coordination.k8s.io", "apiVersion": "v1"})
    );
    assert_eq!(write["responseStatus"]["code"], 201);
    assert!(write["auditID"].as_str().is_some_and(|id| id.len() == 36));
    assert!(write["requestReceivedTimestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let denial = &lines[1];
    assert_eq!(denial["verb"], "create");
    assert_eq!(denial["objectRef"]["subresource"], "heartbeat");
    assert_eq!(denial["responseStatus"]["code"], 403);
}

#[tokio::test]
async fn the_audit_log_can_be_turned_off() {
    let server = ApiServer::start(Options {
        extra_config: "audit: {enabled: false}\n".into(),
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    assert_eq!(
        api.post(LEASES, &json!({"metadata": {"name": "quiet"}}))
            .await
            .code,
        201
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!server.data_dir().join("audit.log").exists());
}
