//! mubelet's Prometheus metrics, served at `/metrics` on the agent's
//! status port beside `/status` (and, like `/status`, without
//! authentication: what they tell is this node's heartbeat health, as
//! the kubelet's read-only port served its metrics).

use std::sync::LazyLock;

use mube_process::metrics::prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts,
};
use mube_process::metrics::register;

pub struct Metrics {
    /// `mubelet_heartbeat_duration_seconds{result}`: from sending a
    /// heartbeat to its answer (or to giving up on one).
    pub heartbeat_duration: HistogramVec,
    /// `mubelet_heartbeat_failures_total{reason}`: `rejected` (the API
    /// server said no: 4xx) or `unreachable` (no answer, or 5xx).
    pub heartbeat_failures: IntCounterVec,
    /// `mube_proxy_sync_duration_seconds`: one write of the Service rules
    /// (kube-proxy's `kubeproxy_sync_proxy_rules_duration_seconds`).
    pub proxy_sync: Histogram,
    /// `kubeproxy_network_programming_duration_seconds`: from the change
    /// an EndpointSlice records (`endpoints.kubernetes.io/last-change-
    /// trigger-time`) to the rules that carry it being in place, as
    /// kube-proxy measures it.
    pub network_programming: Histogram,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    Metrics {
    // Names, labels and buckets are constants: a bad one fails the unit
    // test below, never a running agent.
    heartbeat_duration: register(
        HistogramVec::new(
            HistogramOpts::new(
                "mubelet_heartbeat_duration_seconds",
                "Time from sending a heartbeat to the API server's answer, by result (accepted, rejected, unreachable).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["result"],
        )
        .expect("valid metric"),
    ),
    heartbeat_failures: register(
        IntCounterVec::new(
            Opts::new(
                "mubelet_heartbeat_failures_total",
                "Heartbeats that failed, by reason (rejected, unreachable).",
            ),
            &["reason"],
        )
        .expect("valid metric"),
    ),
    proxy_sync: register(
        Histogram::with_opts(
            HistogramOpts::new(
                "mube_proxy_sync_duration_seconds",
                "Time to write one change of the Service rules (nft).",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )
        .expect("valid metric"),
    ),
    network_programming: register(
        Histogram::with_opts(
            HistogramOpts::new(
                "kubeproxy_network_programming_duration_seconds",
                "From an EndpointSlice's last-change-trigger-time to its rules in place.",
            )
            .buckets(vec![
                0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0,
            ]),
        )
        .expect("valid metric"),
    ),
}
});

/// One write of the proxy's rules, and how long it took.
pub fn proxy_synced(took: std::time::Duration) {
    metrics().proxy_sync.observe(took.as_secs_f64());
}

pub fn metrics() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_are_valid() {
        super::metrics()
            .heartbeat_failures
            .with_label_values(&["unreachable"])
            .inc();
        let text = mube_process::metrics::render();
        assert!(
            text.contains("mubelet_heartbeat_failures_total{reason=\"unreachable\"} 1"),
            "{text}"
        );
    }
}
