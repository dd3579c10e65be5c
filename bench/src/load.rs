//! Simulated nodes (KWOK-style): many heartbeats over a few kept-alive
//! connections, closed-loop (as fast as answered) or paced (each node every
//! interval).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::server::{node_name, node_token, Endpoint};

/// Outcome of a load run: request latencies in microseconds.
pub struct LoadStats {
    pub ok: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
    pub elapsed: Duration,
}

impl LoadStats {
    pub fn record(&mut self, ok: bool, took: Duration) {
        if ok {
            self.ok += 1;
            let _ = self.latency.record(took.as_micros().max(1) as u64);
        } else {
            self.errors += 1;
        }
    }

    pub fn new() -> LoadStats {
        LoadStats {
            ok: 0,
            errors: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).expect("histogram")),
            elapsed: Duration::ZERO,
        }
    }

    pub fn merge(&mut self, other: &LoadStats) {
        self.ok += other.ok;
        self.errors += other.errors;
        let _ = self.latency.add(&other.latency);
    }

    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

fn body(node: usize) -> String {
    format!(
        r#"{{"name":"{}","runtime":"containerd","version":"0.1.0","capacity":110}}"#,
        node_name(node)
    )
}

/// One heartbeat, as node `node` (with its token when `tokens`); whether
/// it was accepted.
async fn beat(client: &reqwest::Client, url: &str, node: usize, tokens: bool) -> bool {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body(node));
    if tokens {
        request = request.bearer_auth(node_token(node));
    }
    let sent = request.send().await;
    match sent {
        Ok(r) => r.status().as_u16() == 202 && r.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// `connections` connections, each sending heartbeats back to back for
/// `duration`, cycling through `nodes` distinct nodes.
pub async fn closed_loop(
    server: &Endpoint,
    nodes: usize,
    connections: usize,
    duration: Duration,
) -> LoadStats {
    let url: Arc<str> = Arc::from(format!("{}/api/v1/nodes/heartbeat", server.url));
    let tokens = server.node_tokens;
    run(connections, duration, move |c| {
        let url = url.clone();
        let client = server.connection();
        let mut node = c % nodes.max(1);
        move || {
            let this = node;
            node = (node + connections) % nodes.max(1);
            let (client, url) = (client.clone(), url.clone());
            async move { beat(&client, &url, this, tokens).await }
        }
    })
    .await
}

/// Every node heartbeats once, unmeasured, over `connections`
/// connections: a node's first heartbeat creates its Lease and turns it
/// Ready (writes a steady heartbeat does not make), so that a measurement
/// after it sees only steady heartbeats. Returns how many were refused.
pub async fn warm_up(server: &Endpoint, nodes: usize, connections: usize) -> usize {
    let url: Arc<str> = Arc::from(format!("{}/api/v1/nodes/heartbeat", server.url));
    let tokens = server.node_tokens;
    let connections = connections.clamp(1, nodes.max(1));
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (client, url) = (server.connection(), url.clone());
            tokio::spawn(async move {
                let mut refused = 0;
                for node in (c..nodes).step_by(connections) {
                    if !beat(&client, &url, node, tokens).await {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap_or(0);
    }
    refused
}

/// Runs `connections` loops of the request each factory makes, for `duration`.
pub async fn run<F, R, Fut>(connections: usize, duration: Duration, factory: F) -> LoadStats
where
    F: Fn(usize) -> R,
    R: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let started = Instant::now();
    let progress = crate::progress::Timed::start("closed loop", duration);
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let mut request = factory(c);
            let done = progress.counter();
            tokio::spawn(async move {
                let mut stats = LoadStats::new();
                while started.elapsed() < duration {
                    let t = Instant::now();
                    let ok = request().await;
                    stats.record(ok, t.elapsed());
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                stats
            })
        })
        .collect();
    let mut total = merged(tasks).await;
    total.elapsed = started.elapsed();
    total
}

/// Every node heartbeats once per `interval`, spread evenly over it, for
/// `duration`; `connections` connections share the nodes. A connection that
/// falls behind sends at once (its latency then shows the backlog).
pub async fn paced(
    server: &Endpoint,
    nodes: usize,
    connections: usize,
    interval: Duration,
    duration: Duration,
) -> LoadStats {
    paced_part(server, nodes, connections, interval, duration, (0, 1)).await
}

/// `paced` for part `part.0` of `part.1` of the nodes (those whose number
/// leaves that remainder): several API servers share one cluster's nodes.
pub async fn paced_part(
    server: &Endpoint,
    nodes: usize,
    connections: usize,
    interval: Duration,
    duration: Duration,
    part: (usize, usize),
) -> LoadStats {
    let (index, parts) = (part.0, part.1.max(1));
    let url: Arc<str> = Arc::from(format!("{}/api/v1/nodes/heartbeat", server.url));
    let tokens = server.node_tokens;
    let started = tokio::time::Instant::now();
    let progress = crate::progress::Timed::start("paced", duration);
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let url = url.clone();
            let client = server.connection();
            let done = progress.counter();
            tokio::spawn(async move {
                let mine: Vec<usize> = (c..nodes)
                    .step_by(connections)
                    .filter(|n| n % parts == index)
                    .collect();
                let mut stats = LoadStats::new();
                if mine.is_empty() {
                    return stats;
                }
                let gap = interval / mine.len() as u32;
                // Stagger connections so the whole load is spread evenly.
                let offset =
                    interval.mul_f64(c as f64 / connections as f64) / mine.len().max(1) as u32;
                let mut k: u64 = 0;
                loop {
                    let due = started + offset + gap * (k as u32);
                    if due.duration_since(started) >= duration {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                    let sent = Instant::now();
                    let ok = beat(&client, &url, mine[(k as usize) % mine.len()], tokens).await;
                    stats.record(ok, sent.elapsed());
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    k += 1;
                }
                stats
            })
        })
        .collect();
    let mut total = merged(tasks).await;
    total.elapsed = started.elapsed();
    total
}

/// The stats of every connection's task, added up (a task that panicked
/// counts for nothing).
async fn merged(tasks: Vec<tokio::task::JoinHandle<LoadStats>>) -> LoadStats {
    let mut total = LoadStats::new();
    for t in tasks {
        if let Ok(s) = t.await {
            total.merge(&s);
        }
    }
    total
}
