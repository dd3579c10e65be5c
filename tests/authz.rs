//! Security with the server's own defaults (HTTPS, no anonymous access,
//! `Node,RBAC`): who gets in, what each identity may do, nodes joining with
//! tokens, and Kubernetes' wording for every refusal.

use std::path::Path;
use std::time::{Duration, Instant};

use mube_e2e::{admin_mubectl, audit_lines, join_token, node, Api, ApiServer, Mubelet, Options};
use serde_json::{json, Value};

fn secure(nodes: &[&'static str], extra: &str) -> Options {
    Options {
        nodes: nodes.iter().map(|n| node(n)).collect(),
        secure: true,
        extra_config: extra.to_string(),
        ..Default::default()
    }
}

fn configmap(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
}

/// A mubelet joining `server` as `name` with `token`, keeping its
/// certificate in `state`.
fn joining(server: &ApiServer, name: &str, token: &str, state: &Path) -> Mubelet {
    let ca = server.data_dir().join("pki/ca.crt");
    Mubelet::start_with(
        &server.url(),
        name,
        "200ms",
        &[
            ("MUBELET_TOKEN", token),
            ("MUBELET_CA_FILE", ca.to_str().unwrap()),
            ("MUBELET_STATE_DIR", state.to_str().unwrap()),
        ],
    )
}

async fn wait_ready(api: &Api, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = api.get(&format!("/api/v1/nodes/{name}")).await;
        if r.code == 200 && mube_e2e::state(&r.body) == "Ready" {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never Ready: {}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn nothing_unauthenticated_gets_in_but_health_and_version() {
    let server = ApiServer::start(secure(&[], "")).await;
    let anonymous = Api::new(&server).with(server.client_as(None, None));
    let write = anonymous
        .post("/api/v1/namespaces/default/configmaps", &configmap("c"))
        .await;
    assert_eq!(write.code, 401, "{}", write.body);
    assert_eq!(write.body["kind"], "Status");
    assert_eq!(write.body["reason"], "Unauthorized");
    for path in ["/api/v1/nodes", "/api", "/apis", "/openapi/v3"] {
        assert_eq!(anonymous.get(path).await.code, 401, "{path}");
    }
    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        assert_eq!(anonymous.get(path).await.code, 200, "{path}");
    }
    // Malformed, unknown, join-token-shaped and huge tokens, and bytes
    // that are not text: 401 each, and the server stays up.
    let long = format!("Bearer {}", "x".repeat(16 * 1024));
    let cases: Vec<reqwest::header::HeaderValue> = vec![
        "Bearer ".parse().unwrap(),
        "Bearer abcdef.0123456789abcdef".parse().unwrap(),
        "Bearer not-a-token".parse().unwrap(),
        "Basic YWRtaW46YWRtaW4=".parse().unwrap(),
        long.parse().unwrap(),
        reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
    ];
    let http = server.client_as(None, None);
    for value in cases {
        let r = http
            .get(format!("{}/api/v1/nodes", server.url()))
            .header(reqwest::header::AUTHORIZATION, value.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{value:?}");
    }
    assert_eq!(anonymous.get("/readyz").await.code, 200);
    // The admin of the written kubeconfig may do anything.
    let admin = Api::new(&server);
    let created = admin
        .post("/api/v1/namespaces/default/configmaps", &configmap("c"))
        .await;
    assert_eq!(created.code, 201, "{}", created.body);
}

#[tokio::test]
async fn a_view_only_token_user_can_list_but_not_delete_and_each_denial_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        "view-token,viewer,1001,\"viewers\"\nnobody-token,nobody,1002\n",
    )
    .unwrap();
    let server = ApiServer::start(secure(
        &[],
        &format!("authentication: {{tokenFile: {}}}\n", tokens.display()),
    ))
    .await;
    let admin = Api::new(&server);
    assert_eq!(
        admin
            .post("/api/v1/namespaces/default/configmaps", &configmap("c"))
            .await
            .code,
        201
    );
    let viewer = admin.with(server.client_as(None, Some("view-token")));
    let nobody = admin.with(server.client_as(None, Some("nobody-token")));
    // No binding yet: the default roles give a user only discovery.
    let list = viewer.get("/api/v1/namespaces/default/configmaps").await;
    assert_eq!(list.code, 403, "{}", list.body);
    assert_eq!(
        list.body["message"],
        "configmaps is forbidden: User \"viewer\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\""
    );
    assert_eq!(
        viewer.get("/api").await.code,
        200,
        "discovery is for everyone"
    );

    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "viewers"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "Group", "name": "viewers", "apiGroup": "rbac.authorization.k8s.io"}],
    });
    let made = admin
        .post(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            &binding,
        )
        .await;
    assert_eq!(made.code, 201, "{}", made.body);
    // At once: the policy is read again after a write to it.
    let list = viewer.get("/api/v1/namespaces/default/configmaps").await;
    assert_eq!(list.code, 200, "{}", list.body);
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        nobody
            .get("/api/v1/namespaces/default/configmaps")
            .await
            .code,
        403
    );
    let delete = viewer
        .delete("/api/v1/namespaces/default/configmaps/c")
        .await;
    assert_eq!(delete.code, 403, "{}", delete.body);
    assert_eq!(
        delete.body["message"],
        "configmaps \"c\" is forbidden: User \"viewer\" cannot delete resource \"configmaps\" in API group \"\" in the namespace \"default\""
    );
    assert_eq!(delete.body["details"]["name"], "c");
    assert_eq!(
        viewer.get("/api/v1/namespaces/default/secrets").await.code,
        403,
        "view does not read Secrets"
    );

    // A binding's role cannot be changed; deleting the binding takes the right away at once.
    let mut changed = binding.clone();
    changed["roleRef"]["name"] = json!("edit");
    let put = admin
        .put(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/viewers",
            &changed,
        )
        .await;
    assert_eq!(put.code, 422, "{}", put.body);
    assert!(put.body["message"]
        .as_str()
        .unwrap()
        .contains("cannot change roleRef"));
    assert_eq!(
        admin
            .delete("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/viewers")
            .await
            .code,
        200
    );
    assert_eq!(
        viewer
            .get("/api/v1/namespaces/default/configmaps")
            .await
            .code,
        403
    );

    // The admin acting as the viewer (kubectl --as): refused as the viewer,
    // and the audit line names both.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("impersonate-user", "viewer".parse().unwrap());
    headers.insert("impersonate-group", "viewers".parse().unwrap());
    let pem = server.client_certificate("system:admin", &["system:masters"]);
    let impersonating = admin.with(
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(
                    &std::fs::read(server.data_dir().join("pki/ca.crt")).unwrap(),
                )
                .unwrap(),
            )
            .identity(reqwest::Identity::from_pem(&pem).unwrap())
            .default_headers(headers)
            .build()
            .unwrap(),
    );
    let as_viewer = impersonating
        .post("/api/v1/namespaces/default/configmaps", &configmap("d"))
        .await;
    assert_eq!(as_viewer.code, 403, "{}", as_viewer.body);

    // The writer flushes every 50 ms: wait for the last line.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (lines, impersonated) = loop {
        let lines = audit_lines(&server, 1).await;
        if let Some(line) = lines
            .iter()
            .find(|l| l["impersonatedUser"]["username"] == "viewer")
            .cloned()
        {
            break (lines, line);
        }
        assert!(
            Instant::now() < deadline,
            "no audit line for the impersonated write: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(impersonated["user"]["username"], "system:admin");
    assert_eq!(impersonated["responseStatus"]["code"], 403);
    let denied = lines
        .iter()
        .find(|l| l["verb"] == "delete" && l["responseStatus"]["code"] == 403)
        .unwrap_or_else(|| panic!("no audit line for the denied delete: {lines:?}"));
    assert_eq!(denied["user"]["username"], "viewer");
    assert_eq!(denied["objectRef"]["resource"], "configmaps");
    assert_eq!(denied["objectRef"]["name"], "c");
    let written = lines
        .iter()
        .find(|l| l["verb"] == "create" && l["objectRef"]["resource"] == "clusterrolebindings")
        .expect("an audit line for the binding's create");
    assert_eq!(written["user"]["username"], "system:admin");
    assert_eq!(written["responseStatus"]["code"], 201);
}

#[tokio::test]
async fn a_node_may_act_only_as_itself() {
    let server = ApiServer::start(secure(&["n1", "n2"], "")).await;
    let admin = Api::new(&server);
    let n1 = admin.with(server.node_client("n1"));
    assert_eq!(admin.heartbeat("n1").await.code, 202);
    assert_eq!(admin.heartbeat("n2").await.code, 202);

    // Its own heartbeat, Node status and Lease: yes.
    let hb = |name: &str| json!({"name": name, "runtime": "containerd", "version": "0.1.0", "capacity": 10});
    assert_eq!(
        n1.post("/api/v1/nodes/heartbeat", &hb("n1")).await.code,
        202
    );
    let own = n1
        .get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1")
        .await;
    assert_eq!(own.code, 200, "{}", own.body);
    assert_eq!(
        n1.put(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1",
            &own.body
        )
        .await
        .code,
        200
    );
    assert_eq!(
        n1.get("/api/v1/nodes").await.code,
        200,
        "a node reads nodes"
    );

    // Another node's: no, in Kubernetes' words.
    let other = n1.post("/api/v1/nodes/heartbeat", &hb("n2")).await;
    assert_eq!(other.code, 403, "{}", other.body);
    assert_eq!(other.body["reason"], "Forbidden");
    let status = admin.get("/api/v1/nodes/n2").await.body;
    let put = n1.put("/api/v1/nodes/n2/status", &status).await;
    assert_eq!(put.code, 403, "{}", put.body);
    assert!(
        put.body["message"].as_str().unwrap().starts_with(
            "nodes \"n2\" is forbidden: User \"system:node:n1\" cannot update resource \"nodes/status\" in API group \"\" at the cluster scope"
        ),
        "{}",
        put.body
    );
    let lease = admin
        .get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n2")
        .await
        .body;
    let put = n1
        .put(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n2",
            &lease,
        )
        .await;
    assert_eq!(put.code, 403, "{}", put.body);
    assert!(put.body["message"].as_str().unwrap().starts_with(
        "leases.coordination.k8s.io \"n2\" is forbidden: User \"system:node:n1\" cannot update resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"kube-node-lease\""
    ));
    let create = n1
        .post(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "n3"}}),
        )
        .await;
    assert_eq!(create.code, 403, "NodeRestriction: {}", create.body);
    let cm = n1
        .post("/api/v1/namespaces/default/configmaps", &configmap("c"))
        .await;
    assert_eq!(cm.code, 403, "{}", cm.body);
    // Nor may anyone else beat for a node, the admin included.
    let admin_beat = admin.post("/api/v1/nodes/heartbeat", &hb("n1")).await;
    assert_eq!(admin_beat.code, 403, "{}", admin_beat.body);
}

#[tokio::test]
async fn a_join_token_joins_a_node_until_it_is_revoked_or_expires() {
    let server = ApiServer::start(secure(&[], "")).await;
    let admin = Api::new(&server);
    let state = tempfile::tempdir().unwrap();
    let token = join_token(&server, "1h");
    let (_, listed, _) = admin_mubectl(&server, &["token", "list"]);
    let id = token.split('.').next().unwrap();
    assert!(listed.contains(id), "{listed}");
    assert!(
        !listed.contains(token.split('.').nth(1).unwrap()),
        "the secret half is not shown"
    );

    // Joins: a certificate for system:node:j1, and the node registers itself.
    let mut agent = joining(&server, "j1", &token, &state.path().join("j1"));
    wait_ready(&admin, "j1").await;
    assert!(state.path().join("j1/client.pem").exists());
    let csrs = admin
        .get("/apis/certificates.k8s.io/v1/certificatesigningrequests")
        .await;
    let csr = &csrs.body["items"][0];
    assert_eq!(csr["spec"]["username"], format!("system:bootstrap:{id}"));
    assert_eq!(csr["status"]["conditions"][0]["type"], "Approved");

    // Revoked: it cannot join; the node that joined keeps its certificate.
    let (code, _, err) = admin_mubectl(&server, &["token", "delete", id]);
    assert_eq!(code, 0, "{err}");
    let mut late = joining(&server, "j2", &token, &state.path().join("j2"));
    let exit = late
        .wait(Duration::from_secs(10))
        .expect("a mubelet that cannot join stops");
    assert!(!exit.success());
    assert_eq!(admin.get("/api/v1/nodes/j2").await.code, 404);
    let bearer = admin.with(server.client_as(None, Some(&token)));
    assert_eq!(
        bearer
            .get("/apis/certificates.k8s.io/v1/certificatesigningrequests")
            .await
            .code,
        401
    );
    agent.kill9();
    agent.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The restarted agent beats with its kept certificate.
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{}/status", agent.health_port)).await
        {
            let status: Value = r.json().await.unwrap_or_default();
            if status["lastHeartbeat"]["result"] == "accepted" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the restarted agent never beat");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Expired: refused as well.
    let short = join_token(&server, "1s");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = admin.with(server.client_as(None, Some(&short)));
    assert_eq!(
        expired
            .get("/apis/certificates.k8s.io/v1/certificatesigningrequests")
            .await
            .code,
        401
    );
    // And a token's holder is only a bootstrapper: it reads no nodes.
    let fresh = join_token(&server, "1h");
    let holder = admin.with(server.client_as(None, Some(&fresh)));
    assert_eq!(holder.get("/api/v1/nodes").await.code, 403);
}

#[tokio::test]
async fn a_node_renews_its_certificate_before_it_expires() {
    let server = ApiServer::start(secure(&[], "authentication: {nodeCertificateTTL: 4s}\n")).await;
    let admin = Api::new(&server);
    let state = tempfile::tempdir().unwrap();
    let token = join_token(&server, "1h");
    let _agent = joining(&server, "r1", &token, state.path());
    wait_ready(&admin, "r1").await;
    let first = std::fs::read(state.path().join("client.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read(state.path().join("client.pem")).unwrap() == first {
        assert!(
            Instant::now() < deadline,
            "not renewed within 10s of a 4s certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the first certificate's end, the node still beats with the new one.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let lease = admin
        .get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/r1")
        .await;
    let renewed: jiff::Timestamp = lease.body["spec"]["renewTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        jiff::Timestamp::now().duration_since(renewed) < jiff::SignedDuration::from_secs(2),
        "heartbeats continue after the first certificate expired: {}",
        lease.body
    );
    let csrs = admin
        .get("/apis/certificates.k8s.io/v1/certificatesigningrequests")
        .await;
    let renewals: Vec<&Value> = csrs.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["spec"]["username"] == "system:node:r1")
        .collect();
    assert!(
        !renewals.is_empty(),
        "a renewal requested as the node itself"
    );
    assert!(renewals[0]["status"]["certificate"].is_string());
    // At 70-90 % of each 4s certificate: about one per 3s, not a storm.
    assert!(
        renewals.len() <= 4,
        "{} renewals in about 8s",
        renewals.len()
    );
}

/// A PEM certificate request for `cn` in `o`.
fn certificate_request(cn: &str, o: &str) -> String {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, o);
    let key = rcgen::KeyPair::generate().unwrap();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn no_one_grants_what_they_do_not_hold_or_forges_who_asked() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "lead-token,lead,1001\n").unwrap();
    let server = ApiServer::start(secure(
        &[],
        &format!("authentication: {{tokenFile: {}}}\n", tokens.display()),
    ))
    .await;
    let admin = Api::new(&server);
    let lead = admin.with(server.client_as(None, Some("lead-token")));
    let rbac = "/apis/rbac.authorization.k8s.io/v1";
    for ns in ["team", "other"] {
        let made = admin
            .post(
                "/api/v1/namespaces",
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .await;
        assert_eq!(made.code, 201, "{}", made.body);
    }
    // The lead administers namespace team, and may write CSRs (to try forging one).
    let made = admin
        .post(
            &format!("{rbac}/namespaces/team/rolebindings"),
            &json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "lead-admin"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
                "subjects": [{"kind": "User", "name": "lead", "apiGroup": "rbac.authorization.k8s.io"}],
            }),
        )
        .await;
    assert_eq!(made.code, 201, "{}", made.body);
    for (kind, body) in [
        (
            "clusterroles",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "csr-writer"},
            "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["create", "patch", "get"]}]}),
        ),
        (
            "clusterrolebindings",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "lead-csr"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "csr-writer"},
            "subjects": [{"kind": "User", "name": "lead", "apiGroup": "rbac.authorization.k8s.io"}]}),
        ),
    ] {
        assert_eq!(admin.post(&format!("{rbac}/{kind}"), &body).await.code, 201);
    }

    let binding = |role: &str| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("x-{role}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "User", "name": "friend", "apiGroup": "rbac.authorization.k8s.io"}],
        })
    };
    // Binding what the lead holds in team: yes; cluster-admin: no.
    let view = lead
        .post(
            &format!("{rbac}/namespaces/team/rolebindings"),
            &binding("view"),
        )
        .await;
    assert_eq!(view.code, 201, "{}", view.body);
    let all = lead
        .post(
            &format!("{rbac}/namespaces/team/rolebindings"),
            &binding("cluster-admin"),
        )
        .await;
    assert_eq!(all.code, 403, "{}", all.body);
    assert!(all.body["message"]
        .as_str()
        .unwrap()
        .contains("is attempting to grant RBAC permissions not currently held"));
    let role = |verbs: &[&str], resources: &[&str]| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"},
               "rules": [{"apiGroups": [""], "resources": resources, "verbs": verbs}]})
    };
    let wide = lead
        .post(
            &format!("{rbac}/namespaces/team/roles"),
            &role(&["*"], &["*"]),
        )
        .await;
    assert_eq!(wide.code, 403, "{}", wide.body);
    let held = lead
        .post(
            &format!("{rbac}/namespaces/team/roles"),
            &role(&["get"], &["configmaps"]),
        )
        .await;
    assert_eq!(held.code, 201, "{}", held.body);
    // Widening it by a patch is checked too.
    let widen = lead
        .raw(
            reqwest::Method::PATCH,
            &format!("{rbac}/namespaces/team/roles/r"),
            "application/merge-patch+json",
            serde_json::to_vec(&json!({"rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["delete"]}]})).unwrap(),
        )
        .await;
    assert_eq!(widen.code, 403, "{}", widen.body);
    // Nor in another namespace.
    let elsewhere = lead
        .post(
            &format!("{rbac}/namespaces/other/rolebindings"),
            &binding("view"),
        )
        .await;
    assert_eq!(elsewhere.code, 403, "{}", elsewhere.body);

    // A CSR records who asked, however it is written: the lead cannot
    // pass as a bootstrapper, so the signer leaves it pending.
    let csr = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "forged"},
        "spec": {
            "request": base64_pem(&certificate_request("system:node:victim", "system:nodes")),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"],
            "username": "system:bootstrap:abcdef",
            "groups": ["system:bootstrappers", "system:authenticated"],
        },
    });
    let applied = lead
        .raw(
            reqwest::Method::PATCH,
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/forged?fieldManager=lead",
            "application/apply-patch+yaml",
            serde_json::to_vec(&csr).unwrap(),
        )
        .await;
    assert_eq!(applied.code, 201, "{}", applied.body);
    assert_eq!(applied.body["spec"]["username"], "lead");
    let mut posted = csr.clone();
    posted["metadata"]["name"] = json!("forged2");
    let posted = lead
        .post(
            "/apis/certificates.k8s.io/v1/certificatesigningrequests",
            &posted,
        )
        .await;
    assert_eq!(posted.code, 201, "{}", posted.body);
    assert_eq!(posted.body["spec"]["username"], "lead");
    // The signer decides at once; give it a moment, then neither is signed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for name in ["forged", "forged2"] {
        let got = admin
            .get(&format!(
                "/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}"
            ))
            .await;
        assert!(got.body["status"]["certificate"].is_null(), "{}", got.body);
    }
}

fn base64_pem(pem: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(pem)
}
