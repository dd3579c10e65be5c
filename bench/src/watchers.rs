//! Watchers attached during a load: how late events arrive, and whether any
//! is missed or delivered twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hdrhistogram::Histogram;
use jiff::Timestamp;

/// What all watchers of one kind saw.
pub struct WatchTally {
    /// Events received, over all watchers.
    pub events: AtomicU64,
    /// Events whose resourceVersion did not increase (repeats or disorder).
    pub out_of_order: AtomicU64,
    /// Delivery lag in microseconds: event received - lease renewTime (the
    /// server's clock when it took the heartbeat, before the durable write).
    pub lag: Mutex<Histogram<u64>>,
}

impl WatchTally {
    pub fn new() -> Arc<WatchTally> {
        Arc::new(WatchTally {
            events: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            lag: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 3)
                    .unwrap_or_else(|_| Histogram::new(3).expect("histogram")),
            ),
        })
    }

    pub fn lag_ms(&self, quantile: f64) -> f64 {
        self.lag
            .lock()
            .map(|h| h.value_at_quantile(quantile) as f64 / 1000.0)
            .unwrap_or(0.0)
    }
}

/// The string value after `"key":"` in a JSON line (cheap: watchers must
/// keep up with thousands of events a second on the same cores as the server).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("\"{key}\":\"");
    let start = line.find(&needle)? + needle.len();
    let end = line[start..].find('"')?;
    Some(&line[start..start + end])
}

/// Opens a watch on `path` from `resource_version` and tallies until the task
/// is aborted. Returns once the watch is established.
pub async fn spawn(
    server: &str,
    path: &str,
    resource_version: &str,
    tally: Arc<WatchTally>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let url = format!("{server}{path}?watch=true&resourceVersion={resource_version}");
    let response = reqwest::Client::new()
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("watch {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("watch {url}: {}", response.status()));
    }
    Ok(tokio::spawn(async move {
        let mut stream = response.bytes_stream();
        let mut buffer: Vec<u8> = Vec::new();
        let mut last: u64 = 0;
        let mut lags: Vec<u64> = Vec::with_capacity(1024);
        while let Some(Ok(chunk)) = stream.next().await {
            buffer.extend_from_slice(&chunk);
            let received = Timestamp::now();
            while let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=pos).collect();
                let Ok(line) = std::str::from_utf8(&line) else {
                    continue;
                };
                tally.events.fetch_add(1, Ordering::Relaxed);
                let rv: u64 = field(line, "resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if rv <= last {
                    tally.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                last = last.max(rv);
                if let Some(t) = field(line, "renewTime").and_then(|t| t.parse::<Timestamp>().ok())
                {
                    let lag = received.duration_since(t).as_micros().max(1) as u64;
                    lags.push(lag);
                }
            }
            if !lags.is_empty() {
                if let Ok(mut h) = tally.lag.lock() {
                    for l in lags.drain(..) {
                        let _ = h.record(l);
                    }
                }
            }
        }
        if let Ok(mut h) = tally.lag.lock() {
            for l in lags.drain(..) {
                let _ = h.record(l);
            }
        }
    }))
}

/// Waits until `tally` has seen `expected` events or `limit` passes.
pub async fn settle(tally: &WatchTally, expected: u64, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while tally.events.load(Ordering::Relaxed) < expected && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
