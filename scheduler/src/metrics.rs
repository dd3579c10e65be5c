//! The scheduler's Prometheus metrics, under kube-scheduler's names.

use std::sync::LazyLock;

use mube_process::metrics::prometheus::{IntCounterVec, IntGaugeVec, Opts};
use mube_process::metrics::register;

pub struct Metrics {
    /// `scheduler_schedule_attempts_total{result,profile}`: `scheduled`,
    /// `unschedulable` (no node fits; tried again on the next change) or
    /// `error` (the binding was refused or not answered).
    pub attempts: IntCounterVec,
    /// `scheduler_pending_pods{queue}`: pods waiting for a node at the
    /// last pass (`active`).
    pub pending: IntGaugeVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    Metrics {
    // Constant names and labels: they are valid.
    attempts: register(
        IntCounterVec::new(
            Opts::new(
                "scheduler_schedule_attempts_total",
                "Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be scheduled, while 'error' means an internal scheduler problem.",
            ),
            &["result", "profile"],
        )
        .expect("valid metric"),
    ),
    pending: register(
        IntGaugeVec::new(
            Opts::new(
                "scheduler_pending_pods",
                "Number of pending pods, by the queue type.",
            ),
            &["queue"],
        )
        .expect("valid metric"),
    ),
}
});

pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// One attempt's outcome, for the default profile.
pub fn attempt(result: &str, n: u64) {
    if n > 0 {
        metrics()
            .attempts
            .with_label_values(&[result, crate::run::NAME])
            .inc_by(n);
    }
}
