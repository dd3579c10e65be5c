//! Authentication against the real binary: tokens from a kube-apiserver
//! token file, client certificates signed by the cluster CA, anonymous
//! requests refused when the config says so (health checks stay open), and
//! each identity, or refusal, in the audit log.

use mube_e2e::{node, ApiServer, Options};
use serde_json::{json, Value};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

#[tokio::test]
async fn tokens_from_the_token_file_and_no_anonymous_access() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "s3cret,alice,1001,\"ops,viewers\"\n").unwrap();
    let server = ApiServer::start(Options {
        nodes: vec![node("node-a")],
        extra_config: format!(
            "authentication: {{tokenFile: {}, anonymous: false}}\n",
            tokens.display()
        ),
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", server.url());

    let anonymous = http.get(url("/api/v1/nodes")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["reason"], "Unauthorized");
    assert_eq!(body["message"], "Unauthorized");
    for open in ["/healthz", "/livez", "/readyz", "/version"] {
        assert_eq!(
            http.get(url(open)).send().await.unwrap().status(),
            200,
            "{open}"
        );
    }
    let wrong = http
        .get(url("/api/v1/nodes"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // The scheme in any case, as Kubernetes reads it.
    let lower = http
        .get(url("/api/v1/nodes"))
        .header("authorization", "bearer s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200);

    let created = http
        .post(url(LEASES))
        .bearer_auth("s3cret")
        .json(&json!({"metadata": {"name": "by-alice"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let denied = http
        .post(url(LEASES))
        .json(&json!({"metadata": {"name": "by-nobody"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);

    // Earlier refusals are audited too: wait for the write's line (the
    // writer flushes every 50 ms), not just for any two lines.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (lines, write) = loop {
        let lines = mube_e2e::audit_lines(&server, 2).await;
        let write = lines
            .iter()
            .find(|l| l["responseStatus"]["code"] == 201)
            .cloned();
        let refused = lines
            .iter()
            .any(|l| l["responseStatus"]["code"] == 401 && l["verb"] == "create");
        if let (Some(write), true) = (write, refused) {
            break (lines, write);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit line for the write: {lines:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(write["user"]["username"], "alice");
    assert_eq!(
        write["user"]["groups"],
        json!(["ops", "viewers", "system:authenticated"])
    );
    let refusal = lines
        .iter()
        .find(|l| l["responseStatus"]["code"] == 401 && l["verb"] == "create")
        .unwrap();
    assert_eq!(refusal["user"]["username"], "system:anonymous");
}

#[tokio::test]
async fn the_admin_certificate_authenticates_and_another_cas_does_not() {
    let server = ApiServer::start(Options {
        nodes: vec![node("node-a")],
        tls: true,
        extra_config: "authentication: {anonymous: false}\n".into(),
        ..Default::default()
    })
    .await;
    let pki = server.data_dir().join("pki");
    let identity = |dir: &std::path::Path| {
        reqwest::Identity::from_pem(&mube_e2e::admin_identity(dir)).unwrap()
    };
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.join("ca.crt")).unwrap()).unwrap();
    let client = |id: Option<reqwest::Identity>| {
        let mut b = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.clone());
        if let Some(id) = id {
            b = b.identity(id);
        }
        b.build().unwrap()
    };
    let url = format!("{}{LEASES}", server.url());

    let admin = client(Some(identity(&pki)));
    let created = admin
        .post(&url)
        .json(&json!({"metadata": {"name": "by-admin"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(client(None).get(&url).send().await.unwrap().status(), 401);

    // A certificate from another cluster's CA: the handshake fails.
    let other = ApiServer::start(Options {
        tls: true,
        ..Default::default()
    })
    .await;
    let stranger = client(Some(identity(&other.data_dir().join("pki"))));
    assert!(
        stranger.get(&url).send().await.is_err(),
        "a foreign certificate was accepted"
    );

    // Earlier refusals are audited too: wait for the write's line (the
    // writer flushes every 50 ms), not just for any two lines.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let write = loop {
        let lines = mube_e2e::audit_lines(&server, 2).await;
        let write = lines
            .iter()
            .find(|l| l["responseStatus"]["code"] == 201)
            .cloned();
        if let Some(write) = write {
            break write;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit line for the write: {lines:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(write["user"]["username"], "system:admin");
    assert_eq!(
        write["user"]["groups"],
        json!(["system:masters", "system:authenticated"])
    );
}
