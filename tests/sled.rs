//! mube-apiserver on sled (`storage.backend: sled`): what it acknowledges
//! survives kill -9, and nodes heartbeat on it as on the log.

use mube_e2e::{node, state, Api, ApiServer, Options};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn sled_keeps_what_it_acknowledged_through_kill_9() {
    let mut server = ApiServer::start(Options {
        nodes: vec![node("node-a")],
        extra_config: "storage: {backend: sled}\n".into(),
        ..Options::default()
    })
    .await;
    let api = Api::new(&server);
    const CMS: &str = "/api/v1/namespaces/default/configmaps";
    for i in 0..20 {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i:02}")}, "data": {"i": i.to_string()}});
        let r = api.post(CMS, &cm).await;
        assert_eq!(r.code, 201, "{}", r.body);
    }
    let hb = api.heartbeat("node-a").await;
    assert_eq!(hb.code, 202, "{}", hb.body);
    let before = api.get(CMS).await;

    server.kill9();
    server.restart().await;
    assert!(
        server.logs().contains("sled store opened"),
        "{}",
        server.logs()
    );
    let api = Api::new(&server);
    let after = api.get(CMS).await;
    assert_eq!(after.body["items"], before.body["items"]);
    assert_eq!(after.body["items"].as_array().map(Vec::len), Some(20));
    let n = api.get("/api/v1/nodes/node-a").await;
    assert_eq!(state(&n.body), "Ready", "{}", n.body);
    // The revision goes on from where it was, never back.
    let next = api
        .post(
            CMS,
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after"}}),
        )
        .await;
    assert_eq!(next.code, 201, "{}", next.body);
    let rv = |v: &serde_json::Value| -> u64 {
        v["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        rv(&next.body) > rv(&before.body),
        "{} {}",
        next.body,
        before.body
    );
}
