//! Scheduler throughput: N pending pods over M Ready nodes, then
//! mube-scheduler started against them; how long until every pod is bound.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::server::{get_json, node_name, node_token, Security, Server, ADMIN_TOKEN};
use crate::Report;

pub async fn run(
    bin: &Path,
    scheduler: &Path,
    nodes: usize,
    pods: usize,
    report: &mut Report,
) -> Result<(), String> {
    if !scheduler.exists() {
        return Err(format!(
            "{} is missing: build it first with `cargo build --release -p mube-scheduler`",
            scheduler.display()
        ));
    }
    let server = Server::start_with(bin, nodes, "", Security::Secure).await?;
    let endpoint = server.endpoint();
    let http = endpoint.connection();
    // Every node Ready (a heartbeat as itself), with CPU and memory to give.
    for i in 0..nodes {
        let beat = http
            .post(format!("{}/api/v1/nodes/heartbeat", endpoint.url))
            .bearer_auth(node_token(i))
            .json(&json!({"name": node_name(i), "runtime": "containerd", "version": "0.1.0", "capacity": 110}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if beat.status().as_u16() != 202 {
            return Err(format!("heartbeat of {}: {}", node_name(i), beat.status()));
        }
        let room =
            json!({"status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"}}});
        let patched = http
            .patch(format!(
                "{}/api/v1/nodes/{}/status",
                endpoint.url,
                node_name(i)
            ))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/merge-patch+json")
            .body(room.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !patched.status().is_success() {
            return Err(format!(
                "node status of {}: {}",
                node_name(i),
                patched.status()
            ));
        }
    }
    // The pods, 16 at a time.
    let created = Instant::now();
    let url = format!("{}/api/v1/namespaces/default/pods", endpoint.url);
    let posts = futures::stream::iter(0..pods).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p{i}")},
                "spec": {"containers": [{"name": "c", "image": "mube.local/busybox",
                         "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}});
            http.post(&url).bearer_auth(ADMIN_TOKEN).json(&pod).send().await
        }
    });
    use futures::StreamExt;
    let results: Vec<_> = posts.buffer_unordered(16).collect().await;
    if results
        .iter()
        .any(|r| !r.as_ref().is_ok_and(|r| r.status().is_success()))
    {
        return Err("creating the pods failed".into());
    }
    report.add("scenario", "schedule");
    report.add("nodes", nodes);
    report.add("pods", pods);
    report.add(
        "create_pods_s",
        format!("{:.2}", created.elapsed().as_secs_f64()),
    );

    let started = Instant::now();
    let child = Command::new(scheduler)
        .arg("--kubeconfig")
        .arg(server.data_dir().join("kubeconfig"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", scheduler.display()))?;
    // Killed however this function returns.
    let _guard = KillOnDrop(child);
    let mut first = None;
    let outcome = loop {
        let list = get_json(&http, &url, Some(ADMIN_TOKEN)).await?;
        let bound = list["items"].as_array().map_or(0, |items| {
            items
                .iter()
                .filter(|p| p["spec"]["nodeName"].is_string())
                .count()
        });
        if bound > 0 && first.is_none() {
            first = Some(started.elapsed());
        }
        if bound == pods {
            break Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(120) {
            break Err(format!("{bound} of {pods} pods bound after 120 s"));
        }
        // Not faster: a list of every pod costs the server a few ms.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let all = outcome?;
    let first = first.unwrap_or(all);
    report.add("first_bound_s", format!("{:.3}", first.as_secs_f64()));
    report.add("all_bound_s", format!("{:.3}", all.as_secs_f64()));
    report.add(
        "pods_per_s_after_first",
        format!("{:.0}", pods as f64 / (all - first).as_secs_f64().max(1e-3)),
    );
    report.add(
        "pods_per_s_from_start",
        format!("{:.0}", pods as f64 / all.as_secs_f64()),
    );
    Ok(())
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
