//! `mube-bench`: measures mube-apiserver over real HTTP on loopback,
//! simulating nodes rather than running agents. See BENCHMARKS.md.
//!
//! Output: a readable table, then one last line of `key=value` pairs.

mod ceiling;
mod crash;
mod crds;
mod deployments;
mod etcd;
mod fanout;
mod load;
mod pods;
mod progress;
mod schedule;
mod security;
mod server;
mod services;
mod watchers;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use server::{dir_size, proc_stats, Server};

#[derive(Parser, Debug)]
#[command(
    name = "mube-bench",
    about = "Benchmarks for mube-apiserver (and etcd, for comparison)"
)]
struct Cli {
    /// The mube-apiserver binary to measure (default: the release build next to this one).
    #[arg(long, global = true)]
    apiserver: Option<PathBuf>,

    #[command(subcommand)]
    scenario: Scenario,
}

/// A closed-loop heartbeat load: C connections for N nodes, for a time.
#[derive(clap::Args, Debug, Clone)]
struct LoadArgs {
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value = "10s")]
    duration: String,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum FanoutMode {
    Stuck,
    Idle,
    Nodes,
}

#[derive(Subcommand, Debug, Clone)]
enum Scenario {
    /// C connections posting heartbeats for N nodes as fast as they are answered.
    Heartbeat {
        #[command(flatten)]
        load: LoadArgs,
        /// secure: HTTPS, each node with its own token, Node,RBAC (the
        /// server's defaults); plain: HTTP, no authorization.
        #[arg(long, value_enum, default_value = "secure")]
        security: server::Security,
    },
    /// P pending pods over N Ready nodes; how long mube-scheduler takes to bind them all.
    Schedule {
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        #[arg(long, default_value_t = 1000)]
        pods: usize,
        /// The mube-scheduler binary (default: the one next to this one).
        #[arg(long)]
        scheduler: Option<PathBuf>,
    },
    /// Pods on a real containerd (up with mube's images: scripts/containerd.sh):
    /// start latency of P pods created at R/s, and mubelet's memory with N running.
    Pods {
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Pods created per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Pods running when mubelet's memory is read.
        #[arg(long, default_value_t = 30)]
        running: usize,
        #[arg(long, default_value = "unix:///run/containerd/containerd.sock")]
        runtime_endpoint: String,
        /// The mubelet binary (default: the one next to this one).
        #[arg(long)]
        mubelet: Option<PathBuf>,
        /// The mube-scheduler binary (default: the one next to this one).
        #[arg(long)]
        scheduler: Option<PathBuf>,
    },
    /// Services on a real node (root, for nftables; containerd up with
    /// mube's images; kubectl on PATH): connection latency to a cluster IP
    /// against the pod's address, mube-proxy's network programming latency
    /// with S Services, and `kubectl exec POD -- true` round trips.
    Services {
        /// Connections to each of the pod address and the cluster IP.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Services (each with one slice) in place while slices change.
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Slice changes measured, one every 100 ms.
        #[arg(long, default_value_t = 100)]
        changes: usize,
        /// `kubectl exec` runs.
        #[arg(long, default_value_t = 50)]
        execs: usize,
        #[arg(long, default_value = "unix:///run/containerd/containerd.sock")]
        runtime_endpoint: String,
        /// The mubelet binary (default: the one next to this one).
        #[arg(long)]
        mubelet: Option<PathBuf>,
    },
    /// Watch fan-out: heartbeat throughput with W watches whose clients
    /// never read, against none (`stuck`); or W idle watches on pods, one
    /// `spec.nodeName` each: memory per watch and CPU at rest (`idle`).
    Fanout {
        #[arg(value_enum)]
        mode: FanoutMode,
        #[arg(long, default_value_t = 5000)]
        watchers: usize,
        /// Nodes heartbeating (`stuck`).
        #[arg(long, default_value_t = 10000)]
        nodes: usize,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// How long each heartbeat run (`stuck`), the writes (`nodes`) or
        /// the rest (`idle`) last.
        #[arg(long, default_value = "10s")]
        duration: String,
        /// Watches of all pods beside the node watches (`nodes`).
        #[arg(long, default_value_t = 100)]
        unfiltered: usize,
        /// Pod status writes per second (`nodes`).
        #[arg(long, default_value_t = 10000)]
        rate: u64,
    },
    /// CustomResourceDefinitions: discovery with K CRDs installed, a CRD's
    /// create to its first object, and validating a 10 KB custom object.
    Crds {
        /// CRDs installed before discovery is measured.
        #[arg(long, default_value_t = 100)]
        crds: usize,
        /// Fresh CRDs timed from their create to their first object.
        #[arg(long, default_value_t = 20)]
        first_objects: usize,
        /// In-process validations of the 10 KB object timed.
        #[arg(long, default_value_t = 10000)]
        validations: usize,
    },
    /// The controller manager on hollow nodes: a Deployment scaled 0 -> R,
    /// a rolling update, the loss of L nodes, a leader failover, and the
    /// controller manager's memory.
    Deployments {
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// Nodes stopped in the node-loss step.
        #[arg(long, default_value_t = 10)]
        lost: usize,
        #[arg(long, default_value_t = 3000)]
        replicas: usize,
        /// The pods' toleration of a not-ready or unreachable node, in seconds.
        #[arg(long, default_value_t = 5)]
        toleration: u64,
        /// The mubelet binary (default: the one next to this one).
        #[arg(long)]
        mubelet: Option<PathBuf>,
        /// The mube-scheduler binary (default: the one next to this one).
        #[arg(long)]
        scheduler: Option<PathBuf>,
        /// The mube-controller-manager binary (default: the one next to this one).
        #[arg(long)]
        controller_manager: Option<PathBuf>,
    },
    /// Heartbeats over HTTPS with node credentials against plain HTTP
    /// without authorization, in one run; and what RBAC with 1,000
    /// bindings adds to a read's p99.
    Security {
        #[command(flatten)]
        load: LoadArgs,
    },
    /// N nodes each heartbeating every interval, with W watchers on nodes and leases.
    Paced {
        #[arg(long, default_value_t = 100_000)]
        nodes: usize,
        #[arg(long, default_value = "10s")]
        interval: String,
        #[arg(long, default_value = "60s")]
        duration: String,
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Run this many API servers on one etcd (started by the benchmark)
        /// instead of one on its own log; the nodes are spread over them,
        /// and the watchers too.
        #[arg(long, default_value_t = 0)]
        etcd_servers: usize,
    },
    /// Time to scrape the API server's /metrics with N nodes (and their
    /// Leases) stored, after one heartbeat from each.
    Metrics {
        #[arg(long, default_value_t = 100_000)]
        nodes: usize,
        #[arg(long, default_value_t = 20)]
        scrapes: usize,
    },
    /// Time to list N nodes as JSON and as a Table.
    List {
        #[arg(long, default_value_t = 100_000)]
        nodes: usize,
    },
    /// Heartbeats (closed loop, or paced with --interval) while one client lists
    /// all N nodes in a loop: what a big LIST costs the writers.
    ListLoad {
        #[arg(long, default_value_t = 100_000)]
        nodes: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value = "10s")]
        duration: String,
        /// Each node heartbeats once per interval instead of as fast as answered.
        #[arg(long)]
        interval: Option<String>,
        /// The same run without the lister: the baseline to compare with.
        #[arg(long)]
        no_lister: bool,
    },
    /// Time from start to /readyz after kill -9, with N nodes and a full event history.
    Restart {
        #[arg(long, default_value_t = 100_000)]
        nodes: usize,
        /// Heartbeats to send before the kill (the default fills the default history).
        #[arg(long, default_value_t = 100_000)]
        writes: usize,
    },
    /// The heartbeat-shaped durable write load against mube and against etcd, in one run
    /// (and against a bare HTTP endpoint that only parses the body: the machine's ceiling).
    Etcd {
        #[command(flatten)]
        load: LoadArgs,
    },
    /// kill -9 at random moments under writers, watchers and listers, restart,
    /// and check acknowledged writes, resourceVersions and watches (see crash.rs).
    Crash {
        #[arg(long, default_value_t = 100)]
        cycles: usize,
        #[arg(long, default_value_t = 4)]
        writers: usize,
        #[arg(long, default_value_t = 2)]
        watchers: usize,
        #[arg(long, default_value_t = 2)]
        listers: usize,
        /// Leases each writer creates, overwrites and deletes.
        #[arg(long, default_value_t = 8)]
        keys: usize,
        /// The server runs this long at least, then is killed at a random moment
        /// before --max-run.
        #[arg(long, default_value = "50ms")]
        min_run: String,
        #[arg(long, default_value = "400ms")]
        max_run: String,
        /// For a reproducible run (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The bare endpoint the etcd scenario measures as the ceiling (run by it).
    #[command(hide = true)]
    ServeBare {
        #[arg(long)]
        port: u16,
    },
}

/// Rows for the table and pairs for the last line.
#[derive(Default)]
pub struct Report {
    rows: Vec<(String, String)>,
}

impl Report {
    /// Adds a result, and says it on stderr at once: a long scenario that
    /// fails later still shows what it measured before.
    pub fn add(&mut self, key: &str, value: impl std::fmt::Display) {
        let value = value.to_string();
        eprintln!("mube-bench: {key}: {value}");
        self.rows.push((key.to_string(), value));
    }

    fn print(&self) {
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &self.rows {
            println!("{k:<width$}  {v}");
        }
        let line: Vec<String> = self
            .rows
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace(' ', "_")))
            .collect();
        println!("{}", line.join(" "));
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    mube_apis::duration::parse(text)
}

fn default_apiserver() -> PathBuf {
    sibling("mube-apiserver")
}

/// A binary of the workspace next to this one (the same build).
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from("target/release").join(name))
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1048576.0)
}

pub fn load_rows(report: &mut Report, prefix: &str, stats: &load::LoadStats) {
    report.add(
        &format!("{prefix}_rate_per_s"),
        format!("{:.0}", stats.rate()),
    );
    report.add(&format!("{prefix}_ok"), stats.ok);
    report.add(&format!("{prefix}_errors"), stats.errors);
    report.add(
        &format!("{prefix}_p50_ms"),
        format!("{:.2}", stats.ms(0.50)),
    );
    report.add(
        &format!("{prefix}_p99_ms"),
        format!("{:.2}", stats.ms(0.99)),
    );
    report.add(
        &format!("{prefix}_p999_ms"),
        format!("{:.2}", stats.ms(0.999)),
    );
}

async fn heartbeat(
    bin: &Path,
    nodes: usize,
    connections: usize,
    d: Duration,
    security: server::Security,
    report: &mut Report,
) -> Result<(), String> {
    let server = Server::start_with(bin, nodes, "", security).await?;
    let before = proc_stats(server.pid());
    let stats = load::closed_loop(&server.endpoint(), nodes, connections, d).await;
    let after = proc_stats(server.pid());
    report.add("scenario", "heartbeat");
    report.add("security", format!("{security:?}").to_lowercase());
    report.add("nodes", nodes);
    report.add("connections", connections);
    load_rows(report, "mube_heartbeat", &stats);
    report.add(
        "apiserver_cpu_cores",
        format!(
            "{:.2}",
            (after.cpu_seconds - before.cpu_seconds) / stats.elapsed.as_secs_f64()
        ),
    );
    report.add("apiserver_peak_rss_mib", mib(after.peak_rss_bytes));

    Ok(())
}

#[allow(clippy::too_many_arguments)] // the scenario's flags, each distinct
async fn paced(
    bin: &Path,
    nodes: usize,
    interval: Duration,
    d: Duration,
    watchers: usize,
    connections: usize,
    etcd_servers: usize,
    report: &mut Report,
) -> Result<(), String> {
    // Retention covers the whole run, so every watcher can be served from history.
    let (etcd, servers) = if etcd_servers == 0 {
        (
            None,
            vec![Server::start(bin, nodes, "watchBuffer: 65536\n").await?],
        )
    } else {
        let etcd = etcd::Etcd::start().await?;
        let yaml = format!(
            "watchBuffer: 65536\nstorage:\n  backend: etcd\n  etcd:\n    endpoints: [\"{}\"]\n",
            etcd.url
        );
        let mut servers = Vec::new();
        for _ in 0..etcd_servers {
            servers.push(Server::start(bin, nodes, &yaml).await?);
        }
        (Some(etcd), servers)
    };
    let server = &servers[0];
    let client = reqwest::Client::new();
    let rv_of = |path: &'static str| {
        let client = client.clone();
        let url = format!("{}{path}?limit=1", server.url);
        async move {
            let v = server::get_json(&client, &url, None).await?;
            v.pointer("/metadata/resourceVersion")
                .and_then(|r| r.as_str())
                .map(str::to_string)
                .ok_or_else(|| "no resourceVersion".to_string())
        }
    };
    let lease_tally = watchers::WatchTally::new();
    let node_tally = watchers::WatchTally::new();
    let start_rv = rv_of("/api/v1/nodes").await?;
    let mut handles = Vec::new();
    for w in 0..watchers {
        let (path, tally) = if w % 2 == 0 {
            ("/apis/coordination.k8s.io/v1/leases", lease_tally.clone())
        } else {
            ("/api/v1/nodes", node_tally.clone())
        };
        // Spread over the servers: a list on one, watched on another.
        let on = &servers[w % servers.len()];
        handles.push(watchers::spawn(&on.url, path, &start_rv, tally).await?);
    }
    let lease_watchers = watchers.div_ceil(2) as u64;

    let pid = server.pid();
    // On etcd, the data lives in etcd's directory.
    let data_dir = etcd
        .as_ref()
        .map_or_else(|| server.data_dir(), |e| e.data_dir());
    // Until the run is over (past `d` when it falls behind), every 5 s.
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let still = running.clone();
    let sampler = tokio::spawn(async move {
        let mut sizes = Vec::new();
        let started = Instant::now();
        loop {
            sizes.push((started.elapsed().as_secs(), dir_size(&data_dir)));
            tokio::time::sleep(Duration::from_secs(5)).await;
            if !still.load(Ordering::Relaxed) {
                sizes.push((started.elapsed().as_secs(), dir_size(&data_dir)));
                return sizes;
            }
        }
    });
    let before = proc_stats(pid);
    let cpu_of =
        |pids: &[u32]| -> Vec<f64> { pids.iter().map(|p| proc_stats(*p).cpu_seconds).collect() };
    let mut pids: Vec<u32> = servers.iter().map(|s| s.pid()).collect();
    pids.extend(etcd.as_ref().map(|e| e.pid()));
    let cpu_before = cpu_of(&pids);
    // Each server takes its share of the nodes (every node beats through one).
    let parts = servers.len();
    let runs = servers.iter().enumerate().map(|(i, s)| {
        let endpoint = s.endpoint();
        async move {
            load::paced_part(
                &endpoint,
                nodes,
                (connections / parts).max(1),
                interval,
                d,
                (i, parts),
            )
            .await
        }
    });
    let mut stats = load::LoadStats::new();
    let mut wall = Duration::ZERO;
    for part in futures::future::join_all(runs).await {
        stats.merge(&part);
        // Behind schedule, a part runs past `d`: the rate is over its time.
        wall = wall.max(part.elapsed);
    }
    stats.elapsed = wall;
    running.store(false, Ordering::Relaxed);
    let cpu_after = cpu_of(&pids);
    let after = proc_stats(pid);
    let expected = stats.ok * lease_watchers;
    watchers::settle(&lease_tally, expected, Duration::from_secs(30)).await;
    let received = lease_tally.events.load(Ordering::Relaxed);
    for h in handles {
        h.abort();
    }
    let sizes = sampler.await.unwrap_or_default();

    report.add("scenario", "paced");
    report.add("nodes", nodes);
    report.add("interval_s", interval.as_secs_f64());
    report.add(
        "target_rate_per_s",
        format!("{:.0}", nodes as f64 / interval.as_secs_f64()),
    );
    report.add("watchers", watchers);
    load_rows(report, "heartbeat", &stats);
    report.add(
        "watch_lag_p50_ms",
        format!("{:.1}", lease_tally.lag_ms(0.50)),
    );
    report.add(
        "watch_lag_p99_ms",
        format!("{:.1}", lease_tally.lag_ms(0.99)),
    );
    report.add("lease_events_expected", expected);
    report.add("lease_events_received", received);
    report.add("events_missed", expected.saturating_sub(received));
    report.add(
        "events_duplicated_or_reordered",
        lease_tally.out_of_order.load(Ordering::Relaxed)
            + node_tally.out_of_order.load(Ordering::Relaxed),
    );
    report.add(
        "apiserver_cpu_cores",
        format!(
            "{:.2}",
            (after.cpu_seconds - before.cpu_seconds) / stats.elapsed.as_secs_f64()
        ),
    );
    report.add("apiserver_peak_rss_mib", mib(after.peak_rss_bytes));
    if etcd.is_some() {
        report.add("api_servers", servers.len());
        let cores: Vec<String> = cpu_before
            .iter()
            .zip(&cpu_after)
            .map(|(b, a)| format!("{:.2}", (a - b) / stats.elapsed.as_secs_f64()))
            .collect();
        // The API servers in order, etcd last.
        report.add("cpu_cores_per_process", cores.join(","));
        report.add(
            "apiserver_peak_rss_mib_each",
            servers
                .iter()
                .map(|s| mib(proc_stats(s.pid()).peak_rss_bytes))
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    report.add(
        "data_dir_mib_over_time",
        sizes
            .iter()
            .map(|(t, s)| format!("{t}s:{}", mib(*s)))
            .collect::<Vec<_>>()
            .join(","),
    );
    Ok(())
}

async fn time_get(url: &str, accept: &str) -> Result<(Duration, usize), String> {
    let client = reqwest::Client::new();
    let mut best = Duration::MAX;
    let mut size = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let body = client
            .get(url)
            .header("accept", accept)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .bytes()
            .await
            .map_err(|e| e.to_string())?;
        best = best.min(started.elapsed());
        size = body.len();
    }
    Ok((best, size))
}

async fn metrics(
    bin: &Path,
    nodes: usize,
    scrapes: usize,
    report: &mut Report,
) -> Result<(), String> {
    let server = Server::start(bin, nodes, "").await?;
    // Every node's first heartbeat creates its Lease: twice the objects
    // for `apiserver_storage_objects` to count.
    let refused = load::warm_up(&server.endpoint(), nodes, 64).await;
    if refused > 0 {
        return Err(format!("{refused} heartbeats failed during the warm-up"));
    }
    let client = reqwest::Client::new();
    let url = format!("{}/metrics", server.url);
    let mut took = Vec::with_capacity(scrapes);
    let mut size = 0;
    for _ in 0..scrapes.max(1) {
        let started = Instant::now();
        let text = client
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        took.push(started.elapsed());
        size = text.len();
        if !text.contains("apiserver_storage_objects{resource=\"leases.coordination.k8s.io\"}") {
            return Err("the scrape has no apiserver_storage_objects for leases".into());
        }
    }
    took.sort();
    let ms = |d: &Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    report.add("scenario", "metrics");
    report.add("nodes", nodes);
    report.add("scrapes", took.len());
    report.add("scrape_p50_ms", ms(&took[took.len() / 2]));
    report.add("scrape_max_ms", ms(&took[took.len() - 1]));
    report.add("scrape_bytes", size);
    Ok(())
}

async fn list(bin: &Path, nodes: usize, report: &mut Report) -> Result<(), String> {
    let server = Server::start(bin, nodes, "").await?;
    let url = format!("{}/api/v1/nodes", server.url);
    let (json, json_bytes) = time_get(&url, "application/json").await?;
    let (table, _) = time_get(&url, "application/json;as=Table;v=v1;g=meta.k8s.io").await?;
    report.add("scenario", "list");
    report.add("nodes", nodes);
    report.add(
        "list_json_ms",
        format!("{:.1}", json.as_secs_f64() * 1000.0),
    );
    report.add("list_json_mib", mib(json_bytes as u64));
    report.add(
        "list_table_ms",
        format!("{:.1}", table.as_secs_f64() * 1000.0),
    );
    report.add(
        "apiserver_peak_rss_mib",
        mib(proc_stats(server.pid()).peak_rss_bytes),
    );
    Ok(())
}

async fn list_load(
    bin: &Path,
    nodes: usize,
    connections: usize,
    d: Duration,
    interval: Option<Duration>,
    lister: bool,
    report: &mut Report,
) -> Result<(), String> {
    let server = Server::start(bin, nodes, "").await?;
    // Every node's first heartbeat creates its Lease and marks it Ready: a
    // heavier write than the renewals measured here. One round first.
    let warmup = load::paced(
        &server.endpoint(),
        nodes,
        connections,
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .await;
    if warmup.errors > 0 {
        return Err(format!(
            "{} heartbeats failed during the warm-up",
            warmup.errors
        ));
    }
    let url = format!("{}/api/v1/nodes", server.url);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lister = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut took = Vec::new();
            while lister && !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                // Read and drop: the list's client is another machine in real
                // life, so this one keeps no 60 MB buffer on the shared cores.
                let ok = match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        use futures::StreamExt;
                        let mut body = r.bytes_stream();
                        let mut fine = true;
                        while let Some(chunk) = body.next().await {
                            fine &= chunk.is_ok();
                        }
                        fine
                    }
                    _ => false,
                };
                if !ok {
                    return Err("a list failed".to_string());
                }
                took.push(started.elapsed());
            }
            Ok(took)
        })
    };
    let stats = match interval {
        Some(i) => load::paced(&server.endpoint(), nodes, connections, i, d).await,
        None => load::closed_loop(&server.endpoint(), nodes, connections, d).await,
    };
    stop.store(true, Ordering::Relaxed);
    let mut lists = lister.await.map_err(|e| e.to_string())??;
    lists.sort();
    report.add("scenario", "list-load");
    report.add("nodes", nodes);
    report.add("connections", connections);
    report.add(
        "heartbeat_interval",
        interval.map_or("closed_loop".to_string(), |i| format!("{i:?}")),
    );
    load_rows(report, "heartbeat", &stats);
    report.add("lists", lists.len());
    let ms = |d: Option<&Duration>| format!("{:.0}", d.map_or(0.0, |d| d.as_secs_f64() * 1000.0));
    report.add("list_p50_ms", ms(lists.get(lists.len() / 2)));
    report.add("list_max_ms", ms(lists.last()));
    report.add(
        "apiserver_peak_rss_mib",
        mib(proc_stats(server.pid()).peak_rss_bytes),
    );
    Ok(())
}

async fn restart(
    bin: &Path,
    nodes: usize,
    writes: usize,
    report: &mut Report,
) -> Result<(), String> {
    let mut server = Server::start(bin, nodes, "").await?;
    // A full history: a heartbeat from every node, and more, past the retention.
    let mut sent = 0usize;
    while sent < writes.max(nodes) {
        let s = load::closed_loop(&server.endpoint(), nodes, 64, Duration::from_millis(500)).await;
        sent += s.ok as usize;
        if s.ok == 0 {
            return Err("no heartbeat was accepted while filling the history".into());
        }
    }
    let size = dir_size(&server.data_dir());
    server.kill9();
    server.spawn()?;
    let ready = server.wait_ready(Duration::from_secs(600)).await?;
    report.add("scenario", "restart");
    report.add("nodes", nodes);
    report.add("writes_before_kill", sent);
    report.add("data_dir_mib", mib(size));
    report.add(
        "restart_to_ready_ms",
        format!("{:.0}", ready.as_secs_f64() * 1000.0),
    );
    report.add(
        "apiserver_rss_after_restart_mib",
        mib(proc_stats(server.pid()).rss_bytes),
    );
    Ok(())
}

async fn versus_etcd(
    bin: &Path,
    nodes: usize,
    connections: usize,
    d: Duration,
    report: &mut Report,
) -> Result<(), String> {
    report.add("scenario", "etcd");
    report.add("nodes", nodes);
    report.add("connections", connections);
    // Steady heartbeats only, on every backend: each node's first one
    // (its Lease created, the node turned Ready) comes before.
    let mube = {
        let server = Server::start(bin, nodes, "").await?;
        load::warm_up(&server.endpoint(), nodes, connections).await;
        let stats = load::closed_loop(&server.endpoint(), nodes, connections, d).await;
        report.add("mube_data_dir_mib", mib(dir_size(&server.data_dir())));
        stats
    };
    load_rows(report, "mube_heartbeat", &mube);
    // The same on sled, the embedded database as the medium.
    let on_sled = {
        let server = Server::start(bin, nodes, "storage: {backend: sled}\n").await?;
        load::warm_up(&server.endpoint(), nodes, connections).await;
        let stats = load::closed_loop(&server.endpoint(), nodes, connections, d).await;
        report.add(
            "mube_on_sled_data_dir_mib",
            mib(dir_size(&server.data_dir())),
        );
        stats
    };
    load_rows(report, "mube_on_sled_heartbeat", &on_sled);
    let etcd = etcd::Etcd::start().await?;
    let etcd_cpu = || proc_stats(etcd.pid()).cpu_seconds;
    let before = etcd_cpu();
    let gateway = etcd::gateway_puts(&etcd.url, nodes, connections, d).await;
    report.add(
        "etcd_gateway_put_etcd_cpu_cores",
        format!(
            "{:.2}",
            (etcd_cpu() - before) / gateway.elapsed.as_secs_f64()
        ),
    );
    load_rows(report, "etcd_gateway_put", &gateway);
    #[cfg(feature = "etcd-grpc")]
    let grpc_rate = {
        let before = etcd_cpu();
        let grpc = etcd::grpc_puts(&etcd.url, nodes, connections, d).await?;
        load_rows(report, "etcd_grpc_put", &grpc);
        report.add(
            "etcd_grpc_put_etcd_cpu_cores",
            format!("{:.2}", (etcd_cpu() - before) / grpc.elapsed.as_secs_f64()),
        );
        grpc.rate()
    };
    #[cfg(feature = "etcd-grpc")]
    let cas_rate = {
        let (cas, cores) =
            etcd::grpc_watched_cas(&etcd.url, etcd.pid(), nodes, connections, d).await?;
        load_rows(report, "etcd_grpc_watched_cas", &cas);
        report.add(
            "etcd_grpc_watched_cas_etcd_cpu_cores",
            format!("{cores:.2}"),
        );
        cas.rate()
    };
    #[cfg(not(feature = "etcd-grpc"))]
    let cas_rate = 0.0;
    #[cfg(not(feature = "etcd-grpc"))]
    let grpc_rate = {
        report.add(
            "etcd_grpc_put",
            "not_built_(cargo_build_--features_etcd-grpc)",
        );
        0.0
    };
    let best = gateway.rate().max(grpc_rate);
    report.add(
        "ratio_mube_over_best_etcd",
        format!("{:.2}", mube.rate() / best.max(1e-9)),
    );
    // mube itself on that etcd (`storage.backend: etcd`): each heartbeat
    // is then etcd transactions, against the raw puts above.
    let on_etcd = format!(
        "storage:\n  backend: etcd\n  etcd:\n    endpoints: [\"{}\"]\n",
        etcd.url
    );
    match Server::start(bin, nodes, &on_etcd).await {
        Ok(server) => {
            load::warm_up(&server.endpoint(), nodes, connections).await;
            let (etcd_before, mube_before) = (etcd_cpu(), proc_stats(server.pid()).cpu_seconds);
            let on = load::closed_loop(&server.endpoint(), nodes, connections, d).await;
            load_rows(report, "mube_on_etcd_heartbeat", &on);
            // Where the cores went: etcd's share, and the API server's.
            let seconds = on.elapsed.as_secs_f64();
            report.add(
                "mube_on_etcd_heartbeat_etcd_cpu_cores",
                format!("{:.2}", (etcd_cpu() - etcd_before) / seconds),
            );
            report.add(
                "mube_on_etcd_heartbeat_apiserver_cpu_cores",
                format!(
                    "{:.2}",
                    (proc_stats(server.pid()).cpu_seconds - mube_before) / seconds
                ),
            );
            report.add(
                "ratio_mube_on_etcd_over_best_etcd",
                format!("{:.2}", on.rate() / best.max(1e-9)),
            );
            // Against etcd doing the same work without mube in between.
            if cas_rate > 0.0 {
                report.add(
                    "ratio_mube_on_etcd_over_etcd_watched_cas",
                    format!("{:.2}", on.rate() / cas_rate),
                );
            }
        }
        // A server built without the etcd backend (no protoc) says so.
        Err(e) => report.add(
            "mube_on_etcd_heartbeat",
            format!("not_run:_{}", e.replace(' ', "_")),
        ),
    }
    drop(etcd);
    let bare = {
        let bare = ceiling::Bare::start().await?;
        load::closed_loop(
            &server::Endpoint {
                url: bare.url.clone(),
                ca_pem: None,
                node_tokens: false,
            },
            nodes,
            connections,
            d,
        )
        .await
    };
    load_rows(report, "bare_http", &bare);
    report.add(
        "ratio_bare_http_over_best_etcd",
        format!("{:.2}", bare.rate() / best.max(1e-9)),
    );
    Ok(())
}

async fn run(cli: Cli) -> Result<Report, String> {
    let bin = cli.apiserver.unwrap_or_else(default_apiserver);
    let mut report = Report::default();
    match cli.scenario {
        Scenario::Heartbeat { load, security } => {
            let d = duration(&load.duration)?;
            heartbeat(&bin, load.nodes, load.connections, d, security, &mut report).await?
        }
        Scenario::Security { load } => {
            let d = duration(&load.duration)?;
            security::run(&bin, load.nodes, load.connections, d, &mut report).await?
        }
        Scenario::Paced {
            nodes,
            interval,
            duration: d,
            watchers,
            connections,
            etcd_servers,
        } => {
            paced(
                &bin,
                nodes,
                duration(&interval)?,
                duration(&d)?,
                watchers,
                connections,
                etcd_servers,
                &mut report,
            )
            .await?
        }
        Scenario::List { nodes } => list(&bin, nodes, &mut report).await?,
        Scenario::Metrics { nodes, scrapes } => metrics(&bin, nodes, scrapes, &mut report).await?,
        Scenario::ListLoad {
            nodes,
            connections,
            duration: d,
            interval,
            no_lister,
        } => {
            let interval = interval.as_deref().map(duration).transpose()?;
            let d = duration(&d)?;
            list_load(
                &bin,
                nodes,
                connections,
                d,
                interval,
                !no_lister,
                &mut report,
            )
            .await?
        }
        Scenario::Fanout {
            mode,
            watchers,
            nodes,
            connections,
            duration: d,
            unfiltered,
            rate,
        } => {
            let d = duration(&d)?;
            match mode {
                FanoutMode::Nodes => {
                    fanout::nodes(
                        &bin,
                        watchers,
                        unfiltered,
                        rate,
                        connections,
                        d,
                        &mut report,
                    )
                    .await?
                }
                FanoutMode::Stuck => {
                    fanout::stuck(&bin, nodes, connections, d, watchers, &mut report).await?
                }
                FanoutMode::Idle => fanout::idle(&bin, watchers, d, &mut report).await?,
            }
        }
        Scenario::Crds {
            crds,
            first_objects,
            validations,
        } => {
            let args = crds::Args {
                crds,
                first_objects,
                validations,
            };
            crds::run(&bin, args, &mut report).await?
        }
        Scenario::Schedule {
            nodes,
            pods,
            scheduler,
        } => {
            let scheduler = scheduler.unwrap_or_else(|| sibling("mube-scheduler"));
            schedule::run(&bin, &scheduler, nodes, pods, &mut report).await?
        }
        Scenario::Pods {
            pods,
            rate,
            running,
            runtime_endpoint,
            mubelet,
            scheduler,
        } => {
            let mubelet = mubelet.unwrap_or_else(|| sibling("mubelet"));
            let scheduler = scheduler.unwrap_or_else(|| sibling("mube-scheduler"));
            let args = pods::Args {
                mubelet: &mubelet,
                scheduler: &scheduler,
                runtime_endpoint: &runtime_endpoint,
                pods,
                rate,
                running,
            };
            pods::run(&bin, args, &mut report).await?
        }
        Scenario::Services {
            connections,
            services,
            changes,
            execs,
            runtime_endpoint,
            mubelet,
        } => {
            let mubelet = mubelet.unwrap_or_else(|| sibling("mubelet"));
            let (scheduler, controller_manager) = (
                sibling("mube-scheduler"),
                sibling("mube-controller-manager"),
            );
            let args = services::Args {
                mubelet: &mubelet,
                scheduler: &scheduler,
                controller_manager: &controller_manager,
                runtime_endpoint: &runtime_endpoint,
                connections,
                services,
                changes,
                execs,
            };
            services::run(&bin, args, &mut report).await?
        }
        Scenario::Deployments {
            nodes,
            lost,
            replicas,
            toleration,
            mubelet,
            scheduler,
            controller_manager,
        } => {
            if lost == 0 || lost >= nodes {
                return Err("--lost must be between 1 and --nodes - 1".into());
            }
            let mubelet = mubelet.unwrap_or_else(|| sibling("mubelet"));
            let scheduler = scheduler.unwrap_or_else(|| sibling("mube-scheduler"));
            let controller_manager =
                controller_manager.unwrap_or_else(|| sibling("mube-controller-manager"));
            let args = deployments::Args {
                mubelet: &mubelet,
                scheduler: &scheduler,
                controller_manager: &controller_manager,
                nodes,
                lost,
                replicas,
                toleration,
            };
            deployments::run(&bin, args, &mut report).await?
        }
        Scenario::Restart { nodes, writes } => restart(&bin, nodes, writes, &mut report).await?,
        Scenario::Etcd { load } => {
            let d = duration(&load.duration)?;
            versus_etcd(&bin, load.nodes, load.connections, d, &mut report).await?
        }
        Scenario::Crash {
            cycles,
            writers,
            watchers,
            listers,
            keys,
            min_run,
            max_run,
            seed,
        } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
            let options = crash::Options {
                cycles,
                writers,
                watchers,
                listers,
                keys_per_writer: keys,
                min_run: duration(&min_run)?,
                max_run: duration(&max_run)?,
                seed,
            };
            crash::run(&bin, options, &mut report).await?
        }
        Scenario::ServeBare { port } => ceiling::serve(port).await?,
    }
    Ok(report)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mube-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(report) => {
            report.print();
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mube-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
