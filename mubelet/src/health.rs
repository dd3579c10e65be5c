//! The agent's own HTTP endpoint: `GET /healthz`, `GET /status`,
//! `GET /metrics` (Prometheus), and what the API server proxies to: the
//! container logs of `kubectl logs`, the streams of `kubectl exec`,
//! `attach`, `cp` and `port-forward`.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::config::Config;
use crate::heartbeat::SharedStatus;
use crate::logs::LogState;

#[derive(Clone)]
struct HealthState {
    config: Arc<Config>,
    heartbeat: SharedStatus,
}

pub fn router(config: Arc<Config>, heartbeat: SharedStatus, logs: LogState) -> Router {
    let logs = Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(crate::logs::container_logs),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(crate::streams::exec).post(crate::streams::exec),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(crate::streams::attach).post(crate::streams::attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(crate::streams::port_forward).post(crate::streams::port_forward),
        )
        .with_state(logs);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(HealthState { config, heartbeat })
        .merge(logs)
}

async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            mube_process::metrics::CONTENT_TYPE,
        )],
        mube_process::metrics::render(),
    )
}

async fn status(State(state): State<HealthState>) -> Json<Value> {
    let hb = state
        .heartbeat
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let c = &state.config;
    Json(json!({
        "nodeName": c.node_name,
        "runtime": c.runtime,
        "version": c.version,
        "capacity": c.capacity,
        "apiServer": c.api_servers.to_string(),
        "heartbeatInterval": format!("{:?}", c.heartbeat_interval),
        "lastHeartbeat": hb.last_heartbeat,
        "consecutiveFailures": hb.consecutive_failures,
    }))
}
