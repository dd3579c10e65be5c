//! The web dashboard in a real browser: the system's headless Chromium
//! (Debian `chromium`), driven through chromedriver (`chromium-driver`) with
//! fantoccini, against the real API server with its secure defaults. The
//! page signs in with a pasted token, shows every node, turns a silent node
//! red without a reload, shows a node created through the API, and comes
//! back after the API server restarts with no row twice.
//!
//! Without Chromium and chromedriver the tests say so on stderr and pass as
//! skipped; with `CI=true` their absence is a failure (`.ci/run` installs
//! them).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use mube_e2e::{free_port, node, Api, ApiServer, Options};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ADMIN_TOKEN: &str = "dashboard-admin-token";

/// chromedriver and the browser it started, in a process group of their
/// own, so that a failing test leaves no browser behind.
struct Browser {
    driver: Child,
    client: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` (said on stderr) when Chromium or chromedriver is missing and
    /// this is not CI.
    async fn start() -> Option<Browser> {
        if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "{CHROMIUM} or {CHROMEDRIVER} is missing, and CI=true: .ci/run must install chromium and chromium-driver"
            );
            eprintln!("SKIPPED: the dashboard's browser tests need {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium chromium-driver)");
            return None;
        }
        let port = free_port();
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("start chromedriver")
        };
        let profile = tempfile::tempdir().expect("profile dir");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    // This machine reaches no Google host: no background calls.
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    // The API server's certificate is from the cluster's own CA.
                    "--ignore-certificate-errors",
                    "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!("no WebDriver session: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        Some(Browser {
            driver,
            client,
            _profile: profile,
        })
    }

    /// Ends the WebDriver session (the browser quits).
    async fn close(&self) {
        self.client
            .clone()
            .close()
            .await
            .expect("close the browser");
    }

    async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// The table's rows: (name, data-state), in page order.
    async fn rows(&self) -> Vec<(String, String)> {
        let v = self
            .eval("return Array.from(document.querySelectorAll('#rows tr')).map(r => [r.dataset.name, r.dataset.state]);")
            .await;
        serde_json::from_value(v).unwrap_or_default()
    }

    /// Waits (at most `within`) until `check` holds on the rows.
    async fn rows_until(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&[(String, String)]) -> bool,
    ) -> Vec<(String, String)> {
        let deadline = Instant::now() + within;
        loop {
            let rows = self.rows().await;
            if check(&rows) {
                return rows;
            }
            if Instant::now() > deadline {
                let page = self
                    .eval("return [document.getElementById('conn').dataset.state, document.getElementById('problem').textContent, document.getElementById('count').textContent];")
                    .await;
                panic!("{what}: rows are {rows:?}; connection, problem, count: {page}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn sign_in(&self, token: &str) {
        let form = self
            .client
            .wait()
            .for_element(Locator::Css("#login:not([hidden])"))
            .await;
        form.expect("the page asks for a token");
        self.client
            .find(Locator::Css("#token"))
            .await
            .expect("token field")
            .send_keys(token)
            .await
            .expect("type the token");
        self.client
            .find(Locator::Css("#login button"))
            .await
            .expect("sign-in button")
            .click()
            .await
            .expect("sign in");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and every Chromium process.
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

fn names(rows: &[(String, String)]) -> Vec<&str> {
    rows.iter().map(|(n, _)| n.as_str()).collect()
}

fn state<'a>(rows: &'a [(String, String)], name: &str) -> Option<&'a str> {
    rows.iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s.as_str())
}

fn a_node(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.9"}]}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_nodes_live_and_survives_a_restart() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        format!("{ADMIN_TOKEN},dashboard-admin,1,\"system:masters\"\n"),
    )
    .unwrap();
    let mut server = ApiServer::start(Options {
        nodes: vec![node("node-a"), node("node-b"), node("node-c")],
        notready_timeout: "2s",
        secure: true,
        extra_config: format!("authentication: {{tokenFile: {}}}\n", tokens.display()),
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    let page = format!("{}/ui/", server.url());

    // Signed out, the page asks for a token; with it, every node shows.
    browser
        .client
        .goto(&page)
        .await
        .expect("open the dashboard");
    browser.sign_in(ADMIN_TOKEN).await;
    let rows = browser
        .rows_until("every node", Duration::from_secs(10), |r| r.len() == 3)
        .await;
    assert_eq!(names(&rows), ["node-a", "node-b", "node-c"]);

    // A heartbeat turns node-a Ready (green); silence turns it NotReady
    // (red) after the 2 s timeout, with no reload.
    assert_eq!(api.heartbeat("node-a").await.code, 202);
    browser
        .rows_until("node-a Ready", Duration::from_secs(5), |r| {
            state(r, "node-a") == Some("Ready")
        })
        .await;
    let went_silent = Instant::now();
    browser
        .rows_until("node-a NotReady", Duration::from_secs(15), |r| {
            state(r, "node-a") == Some("NotReady")
        })
        .await;
    eprintln!(
        "node-a shown NotReady {:?} after its last heartbeat (timeout 2 s)",
        went_silent.elapsed()
    );
    let colour = browser
        .eval("return getComputedStyle(document.querySelector('#rows tr[data-name=\"node-a\"] .state')).backgroundColor;")
        .await;
    assert_eq!(colour, "rgb(180, 35, 24)", "NotReady is red");

    // A node created through the API appears.
    assert_eq!(api.post("/api/v1/nodes", &a_node("node-d")).await.code, 201);
    browser
        .rows_until("node-d appears", Duration::from_secs(5), |r| {
            names(r).contains(&"node-d")
        })
        .await;

    // The filter box narrows the table.
    browser
        .client
        .find(Locator::Css("#filter"))
        .await
        .expect("filter box")
        .send_keys("node-b")
        .await
        .expect("type a filter");
    let rows = browser
        .rows_until("the filter", Duration::from_secs(5), |r| r.len() == 1)
        .await;
    assert_eq!(names(&rows), ["node-b"]);
    browser.eval("const f = document.getElementById('filter'); f.value = ''; f.dispatchEvent(new Event('input')); return null;").await;

    // The API server restarts: the page reconnects (resuming its watch, or
    // listing again) and shows each node once, and goes on following.
    server.terminate();
    server.restart().await;
    assert_eq!(api.post("/api/v1/nodes", &a_node("node-e")).await.code, 201);
    let rows = browser
        .rows_until("node-e after the restart", Duration::from_secs(15), |r| {
            names(r).contains(&"node-e")
        })
        .await;
    let mut seen = names(&rows);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), rows.len(), "a row shown twice: {rows:?}");
    assert_eq!(seen, ["node-a", "node-b", "node-c", "node-d", "node-e"]);
    // Its watch is back (the rows may be drawn from a list just before).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let live = browser
            .eval("return document.getElementById('conn').dataset.state;")
            .await;
        if live == "live" {
            break;
        }
        assert!(Instant::now() < deadline, "connection is {live}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    browser.close().await;
}

/// A watch whose resourceVersion has left the server's history is
/// answered 410 Gone: the page lists again and shows each object once. The
/// page's network is cut (its `fetch` of watches made to fail) across an API
/// server restart, while more changes than the history keeps are made; then
/// it is given back. The Pods tab follows pods as the Nodes tab follows
/// nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_again_when_its_place_in_history_is_gone() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let mut server = ApiServer::start(Options {
        nodes: vec![node("node-a")],
        extra_config: "historyRetention: 3\n".into(),
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    browser
        .client
        .goto(&format!("{}/ui/", server.url()))
        .await
        .expect("open the dashboard");
    browser
        .rows_until("node-a", Duration::from_secs(10), |r| r.len() == 1)
        .await;
    browser
        .eval(
            "window.realFetch = window.fetch; \
             window.fetch = (url, options) => String(url).includes('watch=true') \
               ? Promise.reject(new TypeError('cut off by the test')) : window.realFetch(url, options); \
             return null;",
        )
        .await;
    server.terminate();
    server.restart().await;
    for i in 0..6 {
        let r = api
            .post("/api/v1/nodes", &a_node(&format!("node-{i}")))
            .await;
        assert_eq!(r.code, 201, "{}", r.body);
    }
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "busybox"}]}
    });
    assert_eq!(
        api.post("/api/v1/namespaces/default/pods", &pod).await.code,
        201
    );
    browser
        .eval("window.fetch = window.realFetch; return null;")
        .await;
    let rows = browser
        .rows_until(
            "every node after the relist",
            Duration::from_secs(15),
            |r| r.len() == 7,
        )
        .await;
    let mut seen = names(&rows);
    seen.dedup();
    assert_eq!(seen.len(), 7, "{rows:?}");
    // It got there by listing again, not by resuming its watch.
    let lists = browser.eval("return collections.nodes.lists;").await;
    assert_eq!(lists, 2, "lists of nodes");
    browser
        .client
        .find(Locator::Css("#tabs button[data-tab=\"pods\"]"))
        .await
        .expect("the Pods tab")
        .click()
        .await
        .expect("open the Pods tab");
    let rows = browser
        .rows_until("the pod", Duration::from_secs(10), |r| r.len() == 1)
        .await;
    assert_eq!(names(&rows), ["default/web-1"]);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_files_are_served_without_credentials_and_data_is_not() {
    let server = ApiServer::start(Options {
        secure: true,
        ..Default::default()
    })
    .await;
    let anonymous = server.client_as(None, None);
    let page = anonymous
        .get(format!("{}/ui/", server.url()))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("<script src=\"app.js\""), "{html}");
    for (path, kind) in [("app.js", "text/javascript"), ("style.css", "text/css")] {
        let r = anonymous
            .get(format!("{}/ui/{path}", server.url()))
            .send()
            .await
            .expect("asset");
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
    }
    // The data behind it still needs a credential.
    let nodes = anonymous
        .get(format!("{}/api/v1/nodes", server.url()))
        .send()
        .await
        .expect("nodes");
    assert_eq!(nodes.status().as_u16(), 401);
}

/// Not a check: makes `docs/dashboard.png` for the README, from a cluster
/// with nodes in each state. Run by hand:
/// `cargo test -p mube-e2e --test dashboard -- --ignored screenshot`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "makes the README's screenshot; run by hand"]
async fn screenshot_for_the_readme() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let names = [
        "edge-1", "edge-2", "edge-3", "gpu-1", "gpu-2", "web-1", "web-2", "web-3",
    ];
    let server = ApiServer::start(Options {
        nodes: names.iter().map(|n| node(n)).collect(),
        notready_timeout: "2s",
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    for n in names {
        assert_eq!(api.heartbeat(n).await.code, 202);
    }
    // gpu-2 goes silent (NotReady); the others keep beating.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        for n in names.iter().filter(|n| **n != "gpu-2") {
            api.heartbeat(n).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        api.post("/api/v1/nodes", &a_node("spare-1")).await.code,
        201
    );
    browser
        .client
        .goto(&format!("{}/ui/", server.url()))
        .await
        .expect("open");
    browser
        .rows_until("every node", Duration::from_secs(10), |r| {
            r.len() == names.len() + 1
        })
        .await;
    browser
        .client
        .find(Locator::Css("#rows tr[data-name=\"gpu-2\"]"))
        .await
        .expect("gpu-2's row")
        .click()
        .await
        .expect("open its details");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let png = browser.client.screenshot().await.expect("screenshot");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, png).unwrap();
    eprintln!("wrote {}", out.display());
    browser.close().await;
}

/// Not a check: issue #15's dashboard numbers (BENCHMARKS.md), by hand,
/// against the release build: `MUBE_BIN_DIR=$PWD/target/release cargo test
/// -p mube-e2e --test dashboard -- --ignored numbers --nocapture`.
///
/// 10,000 nodes heartbeating every 10 s (1,000/s, so the page follows as
/// many Lease events). Prints the first paint of the node table (from
/// navigation to the first listed rows drawn, five loads), and the time
/// from writing a Node to the new value in the DOM (200 writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures; run by hand with the release build"]
async fn numbers() {
    use futures::StreamExt;
    let Some(browser) = Browser::start().await else {
        return;
    };
    const NODES: usize = 10_000;
    let names: Vec<&'static str> = (0..NODES)
        .map(|i| &*Box::leak(format!("node-{i:05}").into_boxed_str()))
        .collect();
    let server = ApiServer::start(Options {
        nodes: names.iter().map(|n| node(n)).collect(),
        ..Default::default()
    })
    .await;
    let api = Api::new(&server);
    // Every node beats once (its Lease, Ready), then 1,000 a second.
    futures::stream::iter(names.iter().map(|n| api.heartbeat(n)))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let beating = {
        let api = api.clone();
        let names = names.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            // Ten every 10 ms.
            for chunk in names.chunks(10).cycle() {
                tick.tick().await;
                for &n in chunk {
                    let api = api.clone();
                    tokio::spawn(async move { api.heartbeat(n).await });
                }
            }
        })
    };
    let page = format!("{}/ui/", server.url());
    let mut paints = Vec::new();
    for _ in 0..5 {
        browser.client.goto(&page).await.expect("open");
        let deadline = Instant::now() + Duration::from_secs(30);
        let painted = loop {
            let v = browser
                .eval("const m = performance.getEntriesByName('mube-first-rows'); return m.length ? m[0].startTime : null;")
                .await;
            if let Some(ms) = v.as_f64() {
                break ms;
            }
            assert!(Instant::now() < deadline, "no rows drawn");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        paints.push(painted);
    }
    eprintln!("first paint with {NODES} nodes (ms, five loads): {paints:?}");

    // The Capacity cell of the first rows shows `cpu N`: record when each
    // N first appears in the DOM.
    browser
        .eval(
            "window.seen = {}; new MutationObserver(() => { const now = Date.now(); \
             for (const td of document.querySelectorAll('#rows td')) { const m = /cpu (\\d+)/.exec(td.textContent); \
             if (m && !(m[1] in window.seen)) window.seen[m[1]] = now; } }) \
             .observe(document.getElementById('rows'), {childList: true, subtree: true, characterData: true}); return null;",
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut sent = Vec::new();
    for i in 0..200u64 {
        let name = names[(i % 20) as usize];
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as f64;
        let body = json!({"status": {"capacity": {"cpu": (1000 + i).to_string()}}});
        let r = api
            .raw(
                reqwest::Method::PATCH,
                &format!("/api/v1/nodes/{name}/status"),
                "application/merge-patch+json",
                body.to_string().into_bytes(),
            )
            .await;
        assert_eq!(r.code, 200, "{}", r.body);
        sent.push((1000 + i, at));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = browser.eval("return window.seen;").await;
    let mut lags: Vec<f64> = sent
        .iter()
        .filter_map(|(n, at)| seen.get(n.to_string())?.as_f64().map(|t| t - at))
        .collect();
    lags.sort_by(f64::total_cmp);
    let at = |q: f64| lags[((lags.len() as f64 * q) as usize).min(lags.len() - 1)];
    eprintln!(
        "Node write to DOM: {} of {} seen; p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        lags.len(),
        sent.len(),
        at(0.5),
        at(0.99),
        lags[lags.len() - 1]
    );
    beating.abort();
    browser.close().await;
}
