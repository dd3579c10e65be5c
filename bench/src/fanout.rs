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
    let server = Server::start(bin, nodes, "").await?;
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
    let mut held = Vec::with_capacity(watchers);
    for i in 0..watchers {
        held.push(open(addr, i, "/apis/coordination.k8s.io/v1/leases?watch=true").await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let opened = proc_stats(server.pid());
    report.add("apiserver_rss_mib_watches_open", mib(opened.rss_bytes));
    report.add("open_watches_at_start", open_watches(&server.url).await);
    let with = load::closed_loop(&endpoint, nodes, connections, d).await;
    load_rows(report, "with_stuck_watchers", &with);
    report.add(
        "throughput_with_stuck_percent",
        format!("{:.1}", 100.0 * with.rate() / alone.rate().max(1e-9)),
    );
    let after = proc_stats(server.pid());
    report.add("apiserver_rss_mib_after", mib(after.rss_bytes));
    report.add("apiserver_peak_rss_mib", mib(after.peak_rss_bytes));
    report.add("open_watches_at_end", open_watches(&server.url).await);
    drop(held);
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
