//! Watch fan-out: what open watches cost the API server and its writers
//! (issue #19's scenarios, measured before and after its changes).
//!
//! - `stuck`: heartbeats at full speed for D, then again with W watches
//!   on leases whose clients never read a byte: throughput with and
//!   without them, the server's memory, and how many of the stuck watches
//!   the server still holds at the end;
//! - `idle`: W watches on pods, each with its own `spec.nodeName`
//!   selector, that no event reaches: the server's memory per watch and
//!   its CPU at rest.
//!
//! The watches are raw HTTP/1.0 requests on plain TCP (no client library
//! in the way: a stuck client is exactly one that never reads its socket),
//! spread over 127.0.0.x source addresses so that tens of thousands fit
//! the ephemeral port range.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::server::{proc_stats, Server};
use crate::{load, load_rows, mib, Report};

/// Connections per source address (the ephemeral range is ~28,000 ports).
const PER_SOURCE: usize = 20_000;

/// Raises this process's open-file limit (inherited by the server it
/// starts: each end of a watch is in its own process) to what `watches`
/// connections need, within the hard limit.
fn allow_files(watches: usize) -> Result<(), String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let want = watches as u64 + 1024;
    let current = getrlimit(Resource::Nofile);
    if current.current.is_some_and(|c| c >= want) {
        return Ok(());
    }
    let hard = current.maximum;
    if hard.is_some_and(|h| h < want) {
        // Raising the hard limit takes CAP_SYS_RESOURCE; try, then say.
        let raised = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: Some(want),
            },
        );
        return raised.map_err(|e| {
            format!("{watches} watches need {want} open files per process; the hard limit is {} and could not be raised ({e})", hard.unwrap_or(0))
        });
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: hard,
        },
    )
    .map_err(|e| format!("raising the open-file limit to {want}: {e}"))
}

fn server_addr(url: &str) -> Result<SocketAddr, String> {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("{url}: {e}"))
}

/// Opens watch `i` on `path` and sends its request; the answer is left
/// unread.
async fn open(server: SocketAddr, i: usize, path: &str) -> Result<TcpStream, String> {
    let source = Ipv4Addr::new(127, 0, 0, 2 + (i / PER_SOURCE) as u8);
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let mut stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("watch {i}: {e}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {server}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// `apiserver_longrunning_requests` now: the watches the server holds.
async fn open_watches(url: &str) -> f64 {
    let Ok(r) = reqwest::get(format!("{url}/metrics")).await else {
        return -1.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("apiserver_longrunning_requests"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn stuck(
    bin: &Path,
    nodes: usize,
    connections: usize,
    d: Duration,
    watchers: usize,
    report: &mut Report,
) -> Result<(), String> {
    allow_files(watchers + connections)?;
    // A time budget longer than the settling and the run: the stuck
    // watches are there while writers are measured, and are let go as
    // their byte budget runs out (each then has this long to take its 410
    // before its connection is closed).
    let server = Server::start(bin, nodes, "watchStuckTimeout: 20s\n").await?;
    let endpoint = server.endpoint();
    let addr = server_addr(&server.url)?;
    report.add("scenario", "fanout-stuck");
    report.add("nodes", nodes);
    report.add("watchers", watchers);
    load::warm_up(&endpoint, nodes, connections).await;
    let idle = proc_stats(server.pid());
    report.add("apiserver_rss_mib_before", mib(idle.rss_bytes));
    let alone = load::closed_loop(&endpoint, nodes, connections, d).await;
    load_rows(report, "without_watchers", &alone);
    let unwatched = proc_stats(server.pid());
    let mut held = Vec::with_capacity(watchers);
    for i in 0..watchers {
        held.push(open(addr, i, "/apis/coordination.k8s.io/v1/leases?watch=true").await?);
    }
    // Measured once they are stuck: every watch open, and the server done
    // sending what their sockets take (its CPU at rest), or a minute.
    let settling = std::time::Instant::now();
    loop {
        let cpu = proc_stats(server.pid()).cpu_seconds;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = proc_stats(server.pid()).cpu_seconds - cpu;
        let open = open_watches(&server.url).await;
        if (open >= watchers as f64 && busy < 0.05) || settling.elapsed() > Duration::from_secs(60)
        {
            break;
        }
    }
    report.add("seconds_until_stuck", settling.elapsed().as_secs());
    let opened = proc_stats(server.pid());
    report.add("apiserver_rss_mib_watches_open", mib(opened.rss_bytes));
    report.add("open_watches_at_start", open_watches(&server.url).await);
    report.add(
        "rss_kib_per_stuck_watch",
        format!(
            "{:.1}",
            opened.rss_bytes.saturating_sub(unwatched.rss_bytes) as f64
                / 1024.0
                / watchers.max(1) as f64
        ),
    );
    let with = load::closed_loop(&endpoint, nodes, connections, d).await;
    load_rows(report, "with_stuck_watchers", &with);
    let after = proc_stats(server.pid());
    report.add("apiserver_rss_mib_after", mib(after.rss_bytes));
    report.add("apiserver_peak_rss_mib", mib(after.peak_rss_bytes));
    report.add("open_watches_at_end", open_watches(&server.url).await);
    // Those let go, in their grace: what they hold now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    report.add(
        "apiserver_rss_mib_3s_after",
        mib(proc_stats(server.pid()).rss_bytes),
    );
    // The run without them again, once they are gone: the machine drifts
    // by more than the effect measured, so "without" is the mean of a run
    // before and one after.
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while open_watches(&server.url).await > 0.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let again = load::closed_loop(&endpoint, nodes, connections, d).await;
    load_rows(report, "without_watchers_after", &again);
    report.add(
        "apiserver_rss_mib_at_the_end",
        mib(proc_stats(server.pid()).rss_bytes),
    );
    let without = (alone.rate() + again.rate()) / 2.0;
    report.add(
        "throughput_with_stuck_percent",
        format!("{:.1}", 100.0 * with.rate() / without.max(1e-9)),
    );
    Ok(())
}

pub async fn idle(
    bin: &Path,
    watchers: usize,
    rest: Duration,
    report: &mut Report,
) -> Result<(), String> {
    allow_files(watchers)?;
    let server = Server::start(bin, 0, "").await?;
    let addr = server_addr(&server.url)?;
    report.add("scenario", "fanout-idle");
    report.add("watchers", watchers);
    let before = proc_stats(server.pid());
    report.add("apiserver_rss_mib_before", mib(before.rss_bytes));
    let mut held = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let path = format!("/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dnode-{i:06}");
        held.push(open(addr, i, &path).await?);
    }
    // Each watch's response headers arrive once it is set up.
    let mut head = [0u8; 64];
    for s in held.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut head)).await;
    }
    let open = proc_stats(server.pid());
    report.add("open_watches", open_watches(&server.url).await);
    tokio::time::sleep(rest).await;
    let rested = proc_stats(server.pid());
    report.add("apiserver_rss_mib", mib(rested.rss_bytes));
    report.add(
        "rss_kib_per_watch",
        format!(
            "{:.1}",
            (rested.rss_bytes.saturating_sub(before.rss_bytes)) as f64
                / 1024.0
                / watchers.max(1) as f64
        ),
    );
    report.add(
        "apiserver_cpu_cores_at_rest",
        format!(
            "{:.3}",
            (rested.cpu_seconds - open.cpu_seconds) / rest.as_secs_f64()
        ),
    );
    drop(held);
    Ok(())
}

/// What the `nodes` scenario's watches saw.
struct Seen {
    /// Events per node watch (index = node).
    per_node: Vec<std::sync::atomic::AtomicU64>,
    /// Events per unfiltered watch.
    per_unfiltered: Vec<std::sync::atomic::AtomicU64>,
    /// Delivery lag of node watches' events, microseconds.
    lag: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    /// Node watch events that came again, or before one they follow (by
    /// resourceVersion).
    out_of_order: std::sync::atomic::AtomicU64,
}

fn micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The number in `"<key>":"<number>"` in an event's line.
fn number_at(line: &[u8], key: &[u8]) -> Option<u64> {
    let at = line.windows(key.len()).position(|w| w == key)? + key.len();
    let end = line[at..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&line[at..at + end]).ok()?.parse().ok()
}

/// The send time a status write put in `"message":"<micros>"`.
fn sent_at(line: &[u8]) -> Option<u64> {
    number_at(line, b"\"message\":\"")
}

/// The end of the response head in `buf`, if it has come.
fn body_start(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|end| end + 4)
}

/// Reads watch `stream` until it ends or `stop`: counts its events, and
/// for a node's watch (`node`) records each event's lag.
async fn follow(
    mut stream: TcpStream,
    node: Option<usize>,
    unfiltered: usize,
    seen: std::sync::Arc<Seen>,
    stop: tokio_util::sync::CancellationToken,
) {
    use std::sync::atomic::Ordering;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; if node.is_some() { 4096 } else { 256 * 1024 }];
    let mut body = false;
    let mut last_revision = 0;
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            n = stream.read(&mut chunk) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
        };
        buf.extend_from_slice(&chunk[..n]);
        if !body {
            let Some(start) = body_start(&buf) else {
                continue;
            };
            buf.drain(..start);
            body = true;
        }
        let Some(node) = node else {
            // Unfiltered: only counted (their volume would swamp a parser
            // sharing the machine with the server).
            let lines = buf.iter().filter(|b| **b == b'\n').count() as u64;
            seen.per_unfiltered[unfiltered].fetch_add(lines, Ordering::Relaxed);
            buf.clear();
            continue;
        };
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if let Some(sent) = sent_at(&line) {
                let lag = micros_now().saturating_sub(sent).max(1);
                if let Ok(mut h) = seen.lag.lock() {
                    let _ = h.record(lag);
                }
                seen.per_node[node].fetch_add(1, Ordering::Relaxed);
                let revision = number_at(&line, b"\"resourceVersion\":\"").unwrap_or(0);
                if revision <= last_revision {
                    seen.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                last_revision = revision;
            }
        }
    }
}

/// `nodes`: one watch per node on pods, each with its own `spec.nodeName`
/// selector (what every node agent holds), plus `unfiltered` watches of all
/// pods, while pod status writes run at `rate` per second spread over the
/// nodes' pods: delivery lag, missed events, the server's memory and CPU.
pub async fn nodes(
    bin: &Path,
    watchers: usize,
    unfiltered: usize,
    rate: u64,
    connections: usize,
    d: Duration,
    report: &mut Report,
) -> Result<(), String> {
    use futures::StreamExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    allow_files(watchers + unfiltered + connections + 64)?;
    let server = Server::start(bin, 0, "").await?;
    let addr = server_addr(&server.url)?;
    report.add("scenario", "fanout-nodes");
    report.add("node_watchers", watchers);
    report.add("unfiltered_watchers", unfiltered);
    report.add("target_writes_per_second", rate);
    let client = reqwest::Client::new();
    let pods = format!("{}/api/v1/namespaces/default/pods", server.url);
    // One pod per node.
    let created = futures::stream::iter(0..watchers)
        .map(|i| {
            let (client, pods) = (client.clone(), pods.clone());
            async move {
                let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("p-{i:06}")},
                    "spec": {"nodeName": format!("node-{i:06}"),
                        "containers": [{"name": "c", "image": "busybox"}]}});
                client
                    .post(&pods)
                    .json(&pod)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 201)
            }
        })
        .buffer_unordered(32)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    if created != watchers {
        return Err(format!("created {created} of {watchers} pods"));
    }
    let list: serde_json::Value = client
        .get(format!("{pods}?limit=1"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .ok_or("no resourceVersion")?
        .to_string();
    let before = proc_stats(server.pid());
    report.add("apiserver_rss_mib_with_pods", mib(before.rss_bytes));

    let seen = Arc::new(Seen {
        per_node: (0..watchers).map(|_| AtomicU64::new(0)).collect(),
        per_unfiltered: (0..unfiltered).map(|_| AtomicU64::new(0)).collect(),
        lag: std::sync::Mutex::new(
            hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
                .map_err(|e| e.to_string())?,
        ),
        out_of_order: AtomicU64::new(0),
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let mut readers = Vec::with_capacity(watchers + unfiltered);
    for i in 0..watchers + unfiltered {
        let (path, node) = if i < watchers {
            (
                format!("/api/v1/pods?watch=true&resourceVersion={rv}&fieldSelector=spec.nodeName%3Dnode-{i:06}"),
                Some(i),
            )
        } else {
            (
                format!("/api/v1/pods?watch=true&resourceVersion={rv}"),
                None,
            )
        };
        let stream = open(addr, i, &path).await?;
        readers.push(tokio::spawn(follow(
            stream,
            node,
            i.saturating_sub(watchers),
            seen.clone(),
            stop.clone(),
        )));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while open_watches(&server.url).await < (watchers + unfiltered) as f64 {
        if std::time::Instant::now() > deadline {
            return Err("the watches did not all open".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let opened = proc_stats(server.pid());
    report.add("apiserver_rss_mib_watches_open", mib(opened.rss_bytes));

    // Writers: `connections` paced loops, each patching the next pod's
    // status with its send time.
    let written: Arc<Vec<AtomicU64>> = Arc::new((0..watchers).map(|_| AtomicU64::new(0)).collect());
    let next = Arc::new(AtomicU64::new(0));
    let started = std::time::Instant::now();
    let cpu_start = proc_stats(server.pid());
    let mut writers = Vec::new();
    for _ in 0..connections {
        let (written, next, pods) = (written.clone(), next.clone(), pods.clone());
        let client = reqwest::Client::new();
        let period = Duration::from_secs_f64(connections as f64 / rate.max(1) as f64);
        writers.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let end = tokio::time::Instant::now() + d;
            let mut failed = 0u64;
            while tokio::time::Instant::now() < end {
                ticks.tick().await;
                let i = (next.fetch_add(1, Ordering::Relaxed) % watchers as u64) as usize;
                let body = format!(r#"{{"status":{{"message":"{}"}}}}"#, micros_now());
                let ok = client
                    .patch(format!("{pods}/p-{i:06}/status"))
                    .header("content-type", "application/merge-patch+json")
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 200);
                if ok {
                    written[i].fetch_add(1, Ordering::Relaxed);
                } else {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for w in writers {
        failed += w.await.unwrap_or(0);
    }
    let elapsed = started.elapsed();
    let cpu_end = proc_stats(server.pid());
    let writes: u64 = written.iter().map(|w| w.load(Ordering::Relaxed)).sum();
    // Let delivery finish: until the counts stop moving (or 10 s).
    let total = || {
        seen.per_node
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
            + seen
                .per_unfiltered
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<u64>()
    };
    let settle = std::time::Instant::now();
    let mut last = total();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = total();
        if now == last || settle.elapsed() > Duration::from_secs(10) {
            break;
        }
        last = now;
    }
    let missed_node: u64 = (0..watchers)
        .map(|i| {
            written[i]
                .load(Ordering::Relaxed)
                .saturating_sub(seen.per_node[i].load(Ordering::Relaxed))
        })
        .sum();
    let missed_unfiltered: u64 = seen
        .per_unfiltered
        .iter()
        .map(|c| writes.saturating_sub(c.load(Ordering::Relaxed)))
        .sum();
    // More than were written would be events delivered twice.
    let extra_unfiltered: u64 = seen
        .per_unfiltered
        .iter()
        .map(|c| c.load(Ordering::Relaxed).saturating_sub(writes))
        .sum();
    let after = proc_stats(server.pid());
    stop.cancel();
    for r in readers {
        let _ = r.await;
    }
    report.add(
        "writes_per_second",
        format!("{:.0}", writes as f64 / elapsed.as_secs_f64()),
    );
    report.add("write_errors", failed);
    if let Ok(h) = seen.lag.lock() {
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            report.add(
                &format!("node_watch_lag_{name}_ms"),
                format!("{:.1}", h.value_at_quantile(q) as f64 / 1000.0),
            );
        }
        report.add(
            "node_watch_lag_max_ms",
            format!("{:.1}", h.max() as f64 / 1000.0),
        );
    }
    report.add("node_watch_events_missed", missed_node);
    report.add(
        "node_watch_events_out_of_order",
        seen.out_of_order.load(Ordering::Relaxed),
    );
    report.add("unfiltered_watch_events_missed", missed_unfiltered);
    report.add("unfiltered_watch_events_extra", extra_unfiltered);
    report.add(
        "apiserver_cpu_cores_while_writing",
        format!(
            "{:.2}",
            (cpu_end.cpu_seconds - cpu_start.cpu_seconds) / elapsed.as_secs_f64()
        ),
    );
    report.add("apiserver_rss_mib_after", mib(after.rss_bytes));
    report.add("apiserver_peak_rss_mib", mib(after.peak_rss_bytes));
    Ok(())
}
