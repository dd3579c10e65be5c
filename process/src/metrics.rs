//! Prometheus metrics, the same way in every mube binary: one registry per
//! process, with the process collector (`process_resident_memory_bytes`,
//! `process_cpu_seconds_total`, open file descriptors, start time) in it,
//! rendered in the text exposition format that Prometheus scrapes.
//!
//! One registry per process, as Kubernetes components keep theirs
//! (`legacyregistry`): the metrics are facts about the process, and code
//! deep inside it (a store's fsync, a controller's count of nodes) records
//! them without a handle threaded through every constructor.

use std::sync::LazyLock;

use prometheus::{Encoder, Registry, TextEncoder};

pub use prometheus;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let process = prometheus::process_collector::ProcessCollector::for_self();
        // Registering a fresh collector into a fresh registry cannot clash.
        let _ = registry.register(Box::new(process));
    }
    registry
});

/// This process's registry.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// Registers `metric` in this process's registry and hands it back. Each
/// metric is made once (in a `LazyLock`); a second registration of the
/// same name is a programming error, reported in the log, and the metric
/// still works (it is only missing from `/metrics`).
pub fn register<M>(metric: M) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    if let Err(e) = REGISTRY.register(Box::new(metric.clone())) {
        tracing::error!(error = %e, "a metric could not be registered");
    }
    metric
}

/// Every metric of this process, in Prometheus' text format.
pub fn render() -> String {
    let families = REGISTRY.gather();
    let mut out = Vec::with_capacity(16 * 1024);
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::error!(error = %e, "metrics could not be encoded");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Serves `GET /metrics` (and `GET /healthz`) on `listen` for a component
/// with no HTTP server of its own (the scheduler, the controller manager),
/// until the process ends. `off` serves nothing. An address that cannot be
/// bound (another copy on this machine has it) is logged and skipped: the
/// component's work matters more than its metrics.
pub async fn serve(listen: &str) {
    if listen == "off" {
        return;
    }
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(address = listen, error = %e, "metrics are not served: cannot listen");
            return;
        }
    };
    tracing::info!(address = listen, "metrics at /metrics");
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|| async {
                ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], render())
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics server stopped");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics_and_the_process() {
        let c =
            register(prometheus::IntCounter::new("mube_test_total", "A test counter.").unwrap());
        c.inc();
        let text = render();
        assert!(text.contains("mube_test_total 1"), "{text}");
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
