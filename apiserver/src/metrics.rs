//! The API server's Prometheus metrics, under Kubernetes' names where
//! Kubernetes has one (so that existing dashboards and alerts work), and
//! `mube_` names for what only mube has (its store, heartbeats, node
//! states). They live in the process's registry (`mube_process::metrics`)
//! and are served at `/metrics`.

use std::sync::LazyLock;

use mube_process::metrics::prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts,
};
use mube_process::metrics::register;

/// Kubernetes' buckets for `apiserver_request_duration_seconds`.
const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// The labels Kubernetes gives a request's metrics (less `dry_run`).
pub const REQUEST_LABELS: &[&str] = &[
    "verb",
    "group",
    "version",
    "resource",
    "subresource",
    "scope",
    "component",
];

pub struct Metrics {
    /// `apiserver_request_total`: requests answered, by what they asked
    /// for and the response code.
    pub requests: IntCounterVec,
    /// `apiserver_request_duration_seconds`: until the handler answered
    /// (watches, which run until the client leaves, are not in it).
    pub request_duration: HistogramVec,
    /// `apiserver_current_inflight_requests{request_kind}`: `readOnly` or
    /// `mutating`, watches not counted (as Kubernetes counts them).
    pub inflight: IntGaugeVec,
    /// `apiserver_longrunning_requests`: open watches.
    pub longrunning: IntGaugeVec,
    /// `apiserver_watch_events_total`: events sent to watchers, each
    /// watcher counted.
    pub watch_events: IntCounterVec,
    /// `apiserver_terminated_watchers_total{resource}`: watchers closed
    /// because their client did not take what was sent (Kubernetes' name).
    pub terminated_watchers: IntCounterVec,
    /// `apiserver_storage_objects{resource}`: set at each scrape.
    pub storage_objects: IntGaugeVec,
    /// `mube_node_heartbeats_total`: heartbeats accepted.
    pub heartbeats: IntCounter,
    /// `mube_nodes{state}`: nodes in each state, as the node lifecycle
    /// controller sees them (on the server that runs it).
    pub nodes: IntGaugeVec,
    /// `mube_store_commit_duration_seconds`: one group commit (the write
    /// and fdatasync of the log, or sled's flush).
    pub commit_duration: Histogram,
    /// `mube_store_commit_writes`: writes per group commit.
    pub commit_writes: Histogram,
    /// `mube_store_snapshot_duration_seconds`: writing one snapshot.
    pub snapshot_duration: Histogram,
    /// `mube_store_data_dir_bytes`: the store's files, set at each scrape.
    pub data_dir_bytes: IntGauge,
    /// `mube_store_compacted_revision`: history before it is gone (410).
    pub compacted_revision: IntGauge,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    // Names and labels are constants of this file; a bad one is caught by
    // the unit test below, so these never fail at run time.
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("valid metric"),
    )
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    Metrics {
    requests: counter_vec(
        "apiserver_request_total",
        "Counter of apiserver requests broken out for each verb, group, version, resource, scope, component, and HTTP response code.",
        &[REQUEST_LABELS, &["code"]].concat(),
    ),
    request_duration: register(
        HistogramVec::new(
            HistogramOpts::new(
                "apiserver_request_duration_seconds",
                "Response latency distribution in seconds for each verb, group, version, resource, subresource, scope and component.",
            )
            .buckets(REQUEST_BUCKETS.to_vec()),
            REQUEST_LABELS,
        )
        .expect("valid metric"),
    ),
    inflight: {
        let g = gauge_vec(
            "apiserver_current_inflight_requests",
            "Requests being served now, by request kind (watches not counted).",
            &["request_kind"],
        );
        // Both kinds from the start, as Kubernetes shows them.
        for kind in ["readOnly", "mutating"] {
            g.with_label_values(&[kind]).set(0);
        }
        g
    },
    longrunning: gauge_vec(
        "apiserver_longrunning_requests",
        "Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component.",
        REQUEST_LABELS,
    ),
    watch_events: counter_vec(
        "apiserver_watch_events_total",
        "Number of events sent in watch clients",
        &["group", "version", "resource"],
    ),
    terminated_watchers: counter_vec(
        "apiserver_terminated_watchers_total",
        "Counter of watchers closed due to unresponsiveness broken by resource type.",
        &["resource"],
    ),
    storage_objects: gauge_vec(
        "apiserver_storage_objects",
        "Number of stored objects at the time of last check split by kind.",
        &["resource"],
    ),
    heartbeats: register(
        IntCounter::new("mube_node_heartbeats_total", "Node heartbeats accepted.")
            .expect("valid metric"),
    ),
    nodes: gauge_vec(
        "mube_nodes",
        "Nodes in each state (Ready, NotReady, Unknown), as the node lifecycle controller sees them.",
        &["state"],
    ),
    commit_duration: histogram(
        "mube_store_commit_duration_seconds",
        "Time to make one group commit durable: the write-ahead log's write and fdatasync, or sled's flush.",
        exponential_buckets(0.0001, 2.0, 16).unwrap_or_default(),
    ),
    commit_writes: histogram(
        "mube_store_commit_writes",
        "Writes made durable by one group commit.",
        exponential_buckets(1.0, 2.0, 14).unwrap_or_default(),
    ),
    snapshot_duration: histogram(
        "mube_store_snapshot_duration_seconds",
        "Time to write and read back one snapshot of the store.",
        exponential_buckets(0.01, 2.0, 12).unwrap_or_default(),
    ),
    data_dir_bytes: register(
        IntGauge::new(
            "mube_store_data_dir_bytes",
            "Bytes of the store's files in the data directory.",
        )
        .expect("valid metric"),
    ),
    compacted_revision: register(
        IntGauge::new(
            "mube_store_compacted_revision",
            "The newest revision whose history is gone: watching or paging from before it is 410 Gone.",
        )
        .expect("valid metric"),
    ),
}
});

/// The API server's metrics (registered on first use).
pub fn metrics() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_is_valid_and_registered() {
        let m = super::metrics();
        m.heartbeats.inc();
        let text = mube_process::metrics::render();
        for name in [
            "mube_node_heartbeats_total",
            "mube_store_data_dir_bytes",
            "mube_store_compacted_revision",
        ] {
            assert!(text.contains(name), "{name} missing from {text}");
        }
    }
}
