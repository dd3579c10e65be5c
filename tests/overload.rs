//! Overload protection against the real binary: the in-flight cap and the
//! watch cap answer 429 with Retry-After, requests other than watches time
//! out with 504, and a connection that never finishes its headers is
//! closed. Limits are set low through the config, so nothing waits long.

use std::time::{Duration, Instant};

use mube_e2e::{node, rv, Api, ApiServer, Options};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODES: &str = "/api/v1/nodes";

async fn server(extra: &str) -> (ApiServer, Api) {
    let server = ApiServer::start(Options {
        nodes: vec![node("a")],
        extra_config: extra.into(),
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    (server, api)
}

/// Sends GET `path` until the answer is `code`, for at most 3 s.
async fn until(server: &ApiServer, path: &str, code: u16) -> reqwest::Response {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let answer = http
            .get(format!("{}{path}", server.url()))
            .send()
            .await
            .unwrap();
        if answer.status() == code {
            return answer;
        }
        assert!(Instant::now() < deadline, "{path} never answered {code}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_too_many(answer: reqwest::Response) {
    assert_eq!(answer.headers()["retry-after"], "1");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["reason"], "TooManyRequests", "{body}");
    assert_eq!(
        body["message"],
        "Too many requests, please try again later."
    );
    assert_eq!(body["details"]["retryAfterSeconds"], 1);
}

#[tokio::test]
async fn past_the_in_flight_cap_requests_get_429_with_retry_after() {
    let (server, api) = server("maxRequestsInFlight: 1\nresourceVersionWait: 2s\n").await;
    let future = rv(&api.get(NODES).await.body) + 100;
    // A list from a revision not yet reached holds the one slot while it waits.
    let holder = {
        let api = api.clone();
        tokio::spawn(async move { api.get(&format!("{NODES}?resourceVersion={future}")).await })
    };
    assert_too_many(until(&server, NODES, 429).await).await;
    // Health checks are never refused: a busy server is alive.
    let http = reqwest::Client::new();
    for path in ["/readyz", "/livez", "/healthz"] {
        let answer = http.get(format!("{}{path}", server.url())).send().await;
        assert_eq!(answer.unwrap().status(), 200, "{path}");
    }
    // Nor is a heartbeat: it has a cap of its own (Kubernetes' node-high
    // priority level), so a busy server does not make its nodes NotReady.
    let beat = api.heartbeat("a").await;
    assert_eq!(beat.code, 202, "{}", beat.body);
    assert_eq!(holder.await.unwrap().code, 504);
    // The slot is free again once the holder is answered.
    until(&server, NODES, 200).await;
}

#[tokio::test]
async fn past_the_watch_cap_watches_get_429_and_other_requests_go_on() {
    let (server, api) = server("maxWatches: 1\n").await;
    let watch = format!("{NODES}?watch=true");
    let first = reqwest::Client::new()
        .get(format!("{}{watch}", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_too_many(until(&server, &watch, 429).await).await;
    // Watches do not take the slots of other requests.
    assert_eq!(api.get(NODES).await.code, 200);
    // Closing the first watch frees its slot.
    drop(first);
    until(&server, &watch, 200).await;
}

#[tokio::test]
async fn a_request_past_the_timeout_is_504_and_watches_are_not_timed_out() {
    let (server, api) = server("requestTimeout: 300ms\nresourceVersionWait: 5s\n").await;
    let future = rv(&api.get(NODES).await.body) + 100;
    let started = Instant::now();
    let slow = api.get(&format!("{NODES}?resourceVersion={future}")).await;
    assert_eq!(slow.code, 504, "{}", slow.body);
    assert_eq!(
        slow.body["message"],
        "Timeout: request did not complete within requested timeout - context deadline exceeded"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A watch outlives the timeout and still delivers.
    let mut watch = api.watch(NODES, "").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        api.post(NODES, &serde_json::json!({"metadata": {"name": "b"}}))
            .await
            .code,
        201
    );
    let names: Vec<String> = watch
        .drain(Duration::from_secs(2))
        .await
        .iter()
        .filter_map(|e| e.object["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    assert!(names.contains(&"b".to_string()), "{names:?}");
    drop(server);
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let (server, _api) = server("requestHeaderTimeout: 300ms\n").await;
    let address = server.url().trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
    tcp.write_all(b"GET /api/v1/nodes HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "the server kept a headerless connection open");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Whatever hyper says before closing, it is not a served request.
    assert!(!String::from_utf8_lossy(&buffer).contains("200 OK"));
    // The server itself is fine.
    assert_eq!(
        reqwest::get(format!("{}/readyz", server.url()))
            .await
            .unwrap()
            .status(),
        200
    );
}
