//! `/metrics` against the real binaries: Kubernetes' metric names with
//! values that move when they should (a heartbeat, a 403, a watch), only
//! the `system:monitoring` group and admins may scrape the API server, and
//! mubelet counts its heartbeats' outcomes.

use std::time::{Duration, Instant};

use mube_e2e::{metric as sample, node, Api, ApiServer, Mubelet, Options};
use serde_json::json;

async fn scrape(api: &Api) -> String {
    let reply = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .expect("scrape");
    assert_eq!(reply.status().as_u16(), 200);
    assert_eq!(
        reply.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    reply.text().await.expect("metrics text")
}

/// Scrapes until `check` holds, for at most 5 s; the last text either way.
async fn scrape_until(api: &Api, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(api).await;
        if check(&text) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn api_server_metrics_move_with_requests_and_only_monitoring_may_scrape() {
    let server = ApiServer::start(Options {
        nodes: vec![node("node-a"), node("node-b")],
        secure: true,
        ..Default::default()
    })
    .await;
    let admin = Api::new(&server);
    let before = scrape(&admin).await;
    assert_eq!(
        sample(
            &before,
            "apiserver_storage_objects",
            &[("resource", "nodes")]
        ),
        2.0,
        "{before}"
    );
    assert!(sample(&before, "mube_store_data_dir_bytes", &[]) > 0.0);
    assert!(sample(&before, "process_resident_memory_bytes", &[]) > 1e6);

    // A heartbeat: its counter, and the request's.
    let beats = sample(&before, "mube_node_heartbeats_total", &[]);
    let heartbeat_requests = [
        ("verb", "POST"),
        ("resource", "nodes"),
        ("subresource", "heartbeat"),
        ("code", "202"),
    ];
    let posted = sample(&before, "apiserver_request_total", &heartbeat_requests);
    assert_eq!(admin.heartbeat("node-a").await.code, 202);
    let after = scrape(&admin).await;
    for family in [
        "apiserver_request_total",
        "apiserver_request_duration_seconds_bucket",
        "apiserver_current_inflight_requests",
        "apiserver_storage_objects",
        "mube_store_commit_duration_seconds_bucket",
        "mube_store_commit_writes_bucket",
        "mube_store_data_dir_bytes",
        "mube_store_compacted_revision",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(
            after.lines().any(|l| l.starts_with(family)),
            "{family} is missing:\n{after}"
        );
    }
    assert_eq!(
        sample(&after, "mube_node_heartbeats_total", &[]),
        beats + 1.0
    );
    assert_eq!(
        sample(&after, "apiserver_request_total", &heartbeat_requests),
        posted + 1.0
    );
    // The node is Ready now, as the lifecycle controller counts it.
    let text = scrape_until(&admin, |t| {
        sample(t, "mube_nodes", &[("state", "Ready")]) == 1.0
    })
    .await;
    assert_eq!(
        sample(&text, "mube_nodes", &[("state", "Ready")]),
        1.0,
        "{text}"
    );
    assert!(sample(&text, "mube_store_commit_writes_count", &[]) > 0.0);

    // A 403, and who may scrape.
    let pem = server.client_certificate("nobody", &[]);
    let nobody = admin.with(server.client_as(Some(&pem), None));
    let listed_403 = [("verb", "LIST"), ("resource", "nodes"), ("code", "403")];
    let forbidden = sample(&after, "apiserver_request_total", &listed_403);
    assert_eq!(nobody.get("/api/v1/nodes").await.code, 403);
    let refused = nobody.get("/metrics").await;
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.body["message"],
        "forbidden: User \"nobody\" cannot get path \"/metrics\""
    );
    let pem = server.client_certificate("prometheus", &["system:monitoring"]);
    let monitoring = admin.with(server.client_as(Some(&pem), None));
    assert_eq!(monitoring.get("/api/v1/nodes").await.code, 403);
    let text = scrape(&monitoring).await;
    assert_eq!(
        sample(&text, "apiserver_request_total", &listed_403),
        forbidden + 2.0,
        "the refused lists of nobody and of the monitoring user"
    );

    // A watch is long-running while it is open, and counts its events.
    let watching = [("verb", "WATCH"), ("resource", "configmaps")];
    let events = [("resource", "configmaps")];
    let sent = sample(&text, "apiserver_watch_events_total", &events);
    let watch = admin
        .watch("/api/v1/namespaces/default/configmaps", "")
        .await;
    let text = scrape(&admin).await;
    assert_eq!(
        sample(&text, "apiserver_longrunning_requests", &watching),
        1.0
    );
    let created = admin
        .post(
            "/api/v1/namespaces/default/configmaps",
            &json!({"metadata": {"name": "counted"}, "data": {"k": "v"}}),
        )
        .await;
    assert_eq!(created.code, 201);
    let text = scrape_until(&admin, |t| {
        sample(t, "apiserver_watch_events_total", &events) == sent + 1.0
    })
    .await;
    assert_eq!(
        sample(&text, "apiserver_watch_events_total", &events),
        sent + 1.0
    );
    assert_eq!(
        sample(
            &text,
            "apiserver_storage_objects",
            &[("resource", "configmaps")]
        ),
        1.0
    );
    drop(watch);
    let text = scrape_until(&admin, |t| {
        sample(t, "apiserver_longrunning_requests", &watching) == 0.0
    })
    .await;
    assert_eq!(
        sample(&text, "apiserver_longrunning_requests", &watching),
        0.0
    );

    // A path naming no resource the server has adds no series of its own.
    assert_eq!(admin.get("/api/v1/invented").await.code, 404);
    let text = scrape(&admin).await;
    assert!(!text.contains("invented"), "{text}");
    assert!(
        sample(
            &text,
            "apiserver_request_total",
            &[("resource", ""), ("code", "404")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn mubelet_counts_accepted_and_failed_heartbeats() {
    let mut server = ApiServer::start(Options {
        nodes: vec![node("node-m")],
        ..Default::default()
    })
    .await;
    let agent = Mubelet::start(&server.url(), "node-m", "100ms");
    let url = format!("http://127.0.0.1:{}/metrics", agent.health_port);
    let http = reqwest::Client::new();
    // Empty until the agent listens.
    let scrape_agent = || async {
        match http.get(&url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = scrape_agent().await;
        if sample(
            &text,
            "mubelet_heartbeat_duration_seconds_count",
            &[("result", "accepted")],
        ) >= 2.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sample(
            &text,
            "mubelet_heartbeat_duration_seconds_count",
            &[("result", "accepted")]
        ) >= 2.0,
        "{text}"
    );
    assert_eq!(sample(&text, "mubelet_heartbeat_failures_total", &[]), 0.0);
    assert!(sample(&text, "process_resident_memory_bytes", &[]) > 0.0);

    server.kill9();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        text = scrape_agent().await;
        if sample(
            &text,
            "mubelet_heartbeat_failures_total",
            &[("reason", "unreachable")],
        ) >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sample(
            &text,
            "mubelet_heartbeat_failures_total",
            &[("reason", "unreachable")]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "mubelet_heartbeat_duration_seconds_count",
            &[("result", "unreachable")]
        ) >= 1.0,
        "{text}"
    );
}
