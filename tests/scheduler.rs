//! mube-scheduler against a real API server: it binds pending pods to the
//! nodes the algorithm picks, spreads them, and reports pods no node takes
//! with Kubernetes' FailedScheduling summary.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mube_e2e::{bin, free_port, metric, node, scrape, Api, ApiServer, Options};
use serde_json::{json, Value};

struct Scheduler(Child);

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The scheduler, serving its metrics on `metrics_port`.
fn scheduler(server: &ApiServer, metrics_port: u16) -> Scheduler {
    Scheduler(
        Command::new(bin("mube-scheduler"))
            .arg("--kubeconfig")
            .arg(server.data_dir().join("kubeconfig"))
            .arg(format!("--metrics-address=127.0.0.1:{metrics_port}"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start mube-scheduler"),
    )
}

fn pod(name: &str, cpu: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "c", "image": "mube.local/busybox",
                     "resources": {"requests": {"cpu": cpu}}}]}})
}

/// Every node Ready, with 2 CPUs and 4 GiB to give.
async fn ready_nodes(api: &Api, names: &[&str]) {
    for n in names {
        assert_eq!(api.heartbeat(n).await.code, 202);
        let patch = json!({"status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "10"},
                                      "capacity": {"cpu": "2", "memory": "4Gi", "pods": "10"}}});
        let r = api
            .raw(
                reqwest::Method::PATCH,
                &format!("/api/v1/nodes/{n}/status"),
                "application/merge-patch+json",
                serde_json::to_vec(&patch).unwrap(),
            )
            .await;
        assert_eq!(r.code, 200, "{}", r.body);
    }
}

async fn node_of(api: &Api, name: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let pod = api
            .get(&format!("/api/v1/namespaces/default/pods/{name}"))
            .await
            .body;
        if let Some(n) = pod["spec"]["nodeName"].as_str() {
            return Some(n.to_string());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn events_for(api: &Api, pod: &str) -> Vec<Value> {
    let list = api.get("/api/v1/namespaces/default/events").await.body;
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["involvedObject"]["name"] == pod)
        .cloned()
        .collect()
}

#[tokio::test]
async fn pending_pods_are_bound_spread_and_the_rest_reported() {
    let server = ApiServer::start(Options {
        nodes: vec![node("n1"), node("n2"), node("n3")],
        secure: true,
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    ready_nodes(&api, &["n1", "n2", "n3"]).await;
    let metrics_port = free_port();
    let _scheduler = scheduler(&server, metrics_port);

    // Three pods of 1 CPU: least allocated puts one on each node.
    for i in 0..3 {
        let r = api
            .post(
                "/api/v1/namespaces/default/pods",
                &pod(&format!("p{i}"), "1"),
            )
            .await;
        assert_eq!(r.code, 201, "{}", r.body);
    }
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(
            node_of(&api, &format!("p{i}"), Duration::from_secs(10))
                .await
                .expect("bound"),
        );
    }
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"]);
    let scheduled = events_for(&api, "p0").await;
    assert!(
        scheduled.iter().any(|e| e["reason"] == "Scheduled"
            && e["message"]
                .as_str()
                .unwrap()
                .starts_with("Successfully assigned default/p0 to n")),
        "{scheduled:?}"
    );

    // Cordon n3, then ask for more than any node has left.
    let cordon = json!({"spec": {"unschedulable": true}});
    let r = api
        .raw(
            reqwest::Method::PATCH,
            "/api/v1/nodes/n3",
            "application/merge-patch+json",
            serde_json::to_vec(&cordon).unwrap(),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(
        api.post("/api/v1/namespaces/default/pods", &pod("big", "1500m"))
            .await
            .code,
        201
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let failed = loop {
        let events = events_for(&api, "big").await;
        if let Some(e) = events.iter().find(|e| e["reason"] == "FailedScheduling") {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no FailedScheduling: {events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        failed["message"],
        "0/3 nodes are available: 1 node(s) were unschedulable, 2 Insufficient cpu."
    );
    assert_eq!(failed["type"], "Warning");
    assert!(
        node_of(&api, "big", Duration::from_millis(300))
            .await
            .is_none(),
        "stays Pending"
    );
    // Its metrics count three pods scheduled, and the one no node takes.
    let text = scrape(&format!("http://127.0.0.1:{metrics_port}/metrics")).await;
    let attempts = |result| {
        metric(
            &text,
            "scheduler_schedule_attempts_total",
            &[("result", result), ("profile", "default-scheduler")],
        )
    };
    assert_eq!(attempts("scheduled"), 3.0, "{text}");
    assert!(attempts("unschedulable") >= 1.0, "{text}");
    assert_eq!(attempts("error"), 0.0, "{text}");
    assert_eq!(
        metric(&text, "scheduler_pending_pods", &[("queue", "active")]),
        1.0
    );

    // When room appears (a pod goes), the pending pod is tried again.
    let on_n1 = api
        .get("/api/v1/namespaces/default/pods?fieldSelector=spec.nodeName%3Dn1")
        .await;
    let name = on_n1.body["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    // Grace 0: n1 has no agent to finish a graceful deletion.
    assert_eq!(
        api.delete(&format!(
            "/api/v1/namespaces/default/pods/{name}?gracePeriodSeconds=0"
        ))
        .await
        .code,
        200
    );
    assert_eq!(
        node_of(&api, "big", Duration::from_secs(10))
            .await
            .as_deref(),
        Some("n1")
    );
}
