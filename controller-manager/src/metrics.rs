//! The controller manager's Prometheus metrics, under client-go's
//! workqueue names with each controller's name as `name`.
//!
//! The controllers run on kube-runtime, whose queue is inside it: how long
//! a key waited, how deep the queue is and how often keys were added are
//! not visible from outside, so `workqueue_depth`, `workqueue_adds_total`
//! and `workqueue_queue_duration_seconds` are not served. What is: each
//! reconcile's duration (its count is the reconciles done) and each retry.

use std::sync::LazyLock;

use mube_process::metrics::prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use mube_process::metrics::register;

pub struct Metrics {
    /// `workqueue_work_duration_seconds{name}`: one reconcile.
    pub work: HistogramVec,
    /// `workqueue_retries_total{name}`: reconciles that failed and were
    /// queued again.
    pub retries: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    // Constant names, labels and buckets: they are valid.
    work: register(
        HistogramVec::new(
            HistogramOpts::new(
                "workqueue_work_duration_seconds",
                "How long in seconds processing an item from workqueue takes.",
            )
            .buckets(vec![
                1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0,
            ]),
            &["name"],
        )
        .expect("valid metric"),
    ),
    retries: register(
        IntCounterVec::new(
            Opts::new(
                "workqueue_retries_total",
                "Total number of retries handled by workqueue",
            ),
            &["name"],
        )
        .expect("valid metric"),
    ),
});

pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Runs one reconcile of controller `name`, timed.
pub async fn timed<T>(name: &str, reconcile: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let result = reconcile.await;
    metrics()
        .work
        .with_label_values(&[name])
        .observe(started.elapsed().as_secs_f64());
    result
}
