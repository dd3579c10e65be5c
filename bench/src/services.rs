//! Services on a real node: mubelet on containerd with mube-proxy
//! (nftables), mube-scheduler and mube-controller-manager. Measures:
//!
//! - connection latency to a Service's cluster IP against the pod's own
//!   address (TCP connect, and a whole HTTP/1.0 request), over N
//!   connections each, taken in turns;
//! - mube-proxy's network programming latency with S Services: from an
//!   EndpointSlice change (its `last-change-trigger-time`) to its rules in
//!   place, as kube-proxy's `kubeproxy_network_programming_duration_seconds`
//!   reports it (the bench reads mubelet's histogram);
//! - the round trip of `kubectl exec POD -- true`, over E runs.
//!
//! Needs root (nftables), containerd up with mube's images
//! (scripts/containerd.sh), and kubectl on PATH.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::pods::{join, scheduler};
use crate::server::{get_json, Security, Server, ADMIN_TOKEN};
use crate::Report;

pub struct Args<'a> {
    pub mubelet: &'a Path,
    pub scheduler: &'a Path,
    pub controller_manager: &'a Path,
    pub runtime_endpoint: &'a str,
    pub connections: usize,
    pub services: usize,
    pub changes: usize,
    pub execs: usize,
}

fn at(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// (connect, whole request) times of one `GET /` to `addr`.
fn request(addr: SocketAddr) -> Result<(Duration, Duration), String> {
    let started = Instant::now();
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let connected = started.elapsed();
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).map_err(|e| e.to_string())?;
    if !reply.starts_with(b"HTTP/1.") {
        return Err(format!(
            "{addr} answered {:?}",
            String::from_utf8_lossy(&reply)
        ));
    }
    Ok((connected, started.elapsed()))
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Result<Value, String> {
    let r = http
        .post(url)
        .bearer_auth(ADMIN_TOKEN)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let code = r.status();
    let text = r.text().await.unwrap_or_default();
    if !code.is_success() {
        return Err(format!("POST {url}: {code} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// The buckets and count of a histogram in Prometheus text.
fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!("{name}_bucket{{le=\""))?;
            let (le, value) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.trim().parse().ok()?))
        })
        .collect()
}

/// The upper bound of the bucket holding quantile `q` of the observations
/// between two scrapes.
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, n)| *n);
            (*le, n - was)
        })
        .collect();
    let total = delta.last().map_or(0.0, |(_, n)| *n);
    delta
        .iter()
        .find(|(_, n)| *n >= total * q)
        .map_or(f64::INFINITY, |(le, _)| *le)
}

async fn scrape(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

pub async fn run(bin: &Path, args: Args<'_>, report: &mut Report) -> Result<(), String> {
    for b in [args.mubelet, args.scheduler, args.controller_manager] {
        if !b.exists() {
            return Err(format!(
                "{} is missing: build it with `cargo build --release --workspace`",
                b.display()
            ));
        }
    }
    // A service range of its own: nothing else on the machine holds it.
    let server =
        Server::start_with(bin, 0, "serviceCIDR: 10.250.0.0/16\n", Security::Secure).await?;
    let endpoint = server.endpoint();
    let http = endpoint.connection();
    let base = endpoint.url.clone();
    let node = join(
        &server,
        args.mubelet,
        args.runtime_endpoint,
        20,
        &[("MUBELET_PROXY_MODE", "nftables")],
    )
    .await?;
    let table = format!("mube_proxy_{}", node.name.replace(['-', '.'], "_"));
    let _scheduler = scheduler(args.scheduler, &server)?;
    let _controllers = scheduler(args.controller_manager, &server)?;
    let result = measure(&http, &base, &server, &node, &args, report).await;
    let _ = http
        .delete(format!(
            "{base}/api/v1/namespaces/default/pods?gracePeriodSeconds=0"
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await;
    // Until mubelet has stopped them, then its rules go too.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let list = get_json(
            &http,
            &format!("{base}/api/v1/namespaces/default/pods"),
            Some(ADMIN_TOKEN),
        )
        .await
        .unwrap_or_default();
        if list["items"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(node);
    let _ = Command::new("nft")
        .args(["delete", "table", "ip", &table])
        .status();
    result
}

async fn measure(
    http: &reqwest::Client,
    base: &str,
    server: &Server,
    node: &crate::pods::Node,
    args: &Args<'_>,
    report: &mut Report,
) -> Result<(), String> {
    report.add("scenario", "services");
    let ns = format!("{base}/api/v1/namespaces/default");
    let echo = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "echo"}},
               "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "httpd", "image": "mube.local/busybox",
                        "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]}]}})
    };
    post(http, &format!("{ns}/pods"), &echo("echo-1")).await?;
    let service = post(
        http,
        &format!("{ns}/services"),
        &json!({"metadata": {"name": "echo"}, "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
    )
    .await?;
    let cluster_ip = service["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // The pod's address, once Running.
    let deadline = Instant::now() + Duration::from_secs(60);
    let pod_ip = loop {
        let pod = get_json(http, &format!("{ns}/pods/echo-1"), Some(ADMIN_TOKEN)).await?;
        if let Some(ip) = pod["status"]["podIP"]
            .as_str()
            .filter(|_| pod["status"]["phase"] == "Running")
        {
            break ip.to_string();
        }
        if Instant::now() > deadline {
            return Err(format!("echo-1 never Running: {pod}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let to_pod: SocketAddr = format!("{pod_ip}:8080")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let to_service: SocketAddr = format!("{cluster_ip}:80")
        .parse()
        .map_err(|e| format!("{e}"))?;
    // Until the Service answers (its slice written, its rules in place).
    let deadline = Instant::now() + Duration::from_secs(60);
    while request(to_service).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{to_service} never answered"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Connection latency, in turns.
    let (mut pod_connect, mut pod_request, mut svc_connect, mut svc_request) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.connections {
        let (c, r) = request(to_pod)?;
        pod_connect.push(c);
        pod_request.push(r);
        let (c, r) = request(to_service)?;
        svc_connect.push(c);
        svc_request.push(r);
    }
    for v in [
        &mut pod_connect,
        &mut pod_request,
        &mut svc_connect,
        &mut svc_request,
    ] {
        v.sort();
    }
    report.add("connections", args.connections);
    for (key, v) in [
        ("pod_ip_connect", &pod_connect),
        ("cluster_ip_connect", &svc_connect),
        ("pod_ip_request", &pod_request),
        ("cluster_ip_request", &svc_request),
    ] {
        report.add(&format!("{key}_p50_ms"), format!("{:.3}", at(v, 0.50)));
        report.add(&format!("{key}_p99_ms"), format!("{:.3}", at(v, 0.99)));
    }

    // Network programming with many Services: selector-less ones with
    // slices of the bench's own, so that each change is one write.
    let slices = format!("{base}/apis/discovery.k8s.io/v1/namespaces/default/endpointslices");
    let slice = |i: usize, last: u8, trigger: &str| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": format!("many-{i}"), "labels": {"kubernetes.io/service-name": format!("many-{i}")},
                            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": trigger}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": [format!("10.251.{}.{last}", i % 250)], "conditions": {"ready": true}}],
               "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]})
    };
    let now = || jiff::Timestamp::now().to_string();
    let created = Instant::now();
    for i in 0..args.services {
        post(
            http,
            &format!("{ns}/services"),
            &json!({"metadata": {"name": format!("many-{i}")}, "spec": {"ports": [{"port": 80, "targetPort": 8080}]}}),
        )
        .await?;
        post(http, &slices, &slice(i, 1, &now())).await?;
    }
    let metrics = format!("http://127.0.0.1:{}/metrics", node.health);
    let name = "kubeproxy_network_programming_duration_seconds";
    // Settled: every slice's trigger seen in place.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = scrape(&metrics).await;
        let count = histogram(&text, name).last().map_or(0.0, |(_, n)| *n);
        if count >= args.services as f64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {count} of {} slices programmed",
                args.services
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.add("services", args.services + 2);
    report.add(
        "services_programmed_s",
        format!("{:.1}", created.elapsed().as_secs_f64()),
    );
    let before = histogram(&scrape(&metrics).await, name);
    for k in 0..args.changes {
        let i = (k * 7919) % args.services;
        let url = format!("{slices}/many-{i}");
        let r = http
            .put(&url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&slice(i, 2 + (k % 200) as u8, &now()))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("PUT {url}: {}", r.status()));
        }
        // One change at a time, as a rollout would make them.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = histogram(&scrape(&metrics).await, name);
    let seen = after.last().map_or(0.0, |(_, n)| *n) - before.last().map_or(0.0, |(_, n)| *n);
    report.add("slice_changes", args.changes);
    report.add("slice_changes_programmed", seen);
    report.add(
        "programming_p50_ms_le",
        format!("{}", bucket_quantile(&before, &after, 0.50) * 1000.0),
    );
    report.add(
        "programming_p99_ms_le",
        format!("{}", bucket_quantile(&before, &after, 0.99) * 1000.0),
    );

    // exec round trips.
    let kubeconfig = server.data_dir().join("kubeconfig");
    let mut execs = Vec::new();
    for _ in 0..args.execs {
        let started = Instant::now();
        let status = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["exec", "echo-1", "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("kubectl: {e}"))?;
        if !status.success() {
            return Err(format!("kubectl exec failed: {status}"));
        }
        execs.push(started.elapsed());
    }
    execs.sort();
    report.add("execs", args.execs);
    report.add("exec_p50_ms", format!("{:.0}", at(&execs, 0.50)));
    report.add("exec_p99_ms", format!("{:.0}", at(&execs, 0.99)));
    Ok(())
}
