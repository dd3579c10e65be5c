//! The HTTP surface: health endpoints, the heartbeat, and one generic REST
//! handler for every registered kind.

pub mod audit;
pub mod authn;
pub mod authz;
mod discovery;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod openapi;
mod options;
mod path;
mod protobuf;
mod response;
mod rest;
mod reviews;
mod scale;
pub mod serve;
pub mod streams;
mod table;
mod ui;
mod watch;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use mube_apis::heartbeat::Heartbeat;
use mube_apis::status::{self, Reason, StatusCause};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::nodes;
use crate::registry::Registry;
use crate::store::StoreError;

pub use response::MAX_BODY_BYTES;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    /// Cancelled at shutdown: every watch ends cleanly.
    pub shutdown: CancellationToken,
    /// Set once start-up (config registration, controllers) is done.
    pub ready: Arc<AtomicBool>,
    pub bookmark_interval: Duration,
    /// How long a watch's queued events may wait for its client before the
    /// watch is closed (`watchStuckTimeout`).
    pub watch_stuck_timeout: Duration,
    /// A Lease's duration: the NotReady timeout.
    pub lease_duration: Duration,
    /// How long a read of a resourceVersion not yet reached waits for it
    /// before it is answered 504 ResourceVersionTooLarge.
    pub read_wait: Duration,
    /// The `/openapi/v3` documents of the kinds served now.
    pub openapi: Arc<openapi::Cache>,
    /// Caps on requests in flight and open watches, and the request timeout.
    pub limits: Arc<limits::Limits>,
    /// Where writes and denials are recorded; `None` with audit off.
    pub audit: Option<Arc<crate::audit::AuditLog>>,
    /// Who a request is from.
    pub authn: Arc<authn::Authenticator>,
    /// What they may do.
    pub authz: Arc<crate::auth::Authorizer>,
    /// How this server reaches node agents (`pods/log`).
    pub nodes: Arc<logs::NodeClient>,
}

pub fn router(state: AppState) -> Router {
    let audit = state.audit.clone();
    let registry = state.registry.clone();
    let authenticator = state.authn.clone();
    let authorizer = state.authz.clone();
    let router = Router::new()
        .route("/api", get(discovery::core_versions))
        .route("/apis", get(discovery::group_list))
        .route("/openapi/v2", get(openapi::v2))
        .route("/openapi/v3", get(openapi::root))
        .route("/openapi/v3/{*gv}", get(openapi::group_version))
        // Only POST is the heartbeat: a Node may be named "heartbeat", and
        // every other method on this path is that Node's.
        .route(
            "/api/v1/nodes/heartbeat",
            post(heartbeat).fallback(rest::handle),
        )
        .route("/api/{*rest}", any(rest::handle))
        .route("/apis/{*rest}", any(rest::handle))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_if_failed,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.limits.clone(),
            limits::limit,
        ))
        .route("/healthz", get(livez))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/version", get(discovery::version))
        .route("/metrics", get(metrics::scrape))
        .fallback(fallback)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
        .layer(middleware::from_fn_with_state(authorizer, authz::authorize))
        .layer(middleware::from_fn_with_state(
            authenticator,
            authn::authenticate,
        ));
    let router = match audit {
        Some(log) => router.layer(middleware::from_fn_with_state(log, audit::audit)),
        None => router,
    };
    router
        .layer(middleware::from_fn_with_state(
            registry,
            metrics::instrument,
        ))
        // The dashboard's files, outside authentication (they hold no data).
        .merge(ui::router())
}

/// Once the store has stopped (its log could not be written), no request
/// for data or discovery is served: 503, with the reason. What it would
/// answer might not be durable, and a client must not act on it.
async fn refuse_if_failed(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.registry.store().failure() {
        Some(failure) => ApiError::from(StoreError::Failed(failure)).into_response(),
        None => next.run(request).await,
    }
}

/// Fails once the store has stopped, so that a supervisor restarts the
/// process (a restart recovers from the log on disk).
async fn livez(State(state): State<AppState>) -> Response {
    match state.registry.store().failure() {
        Some(failure) => (StatusCode::SERVICE_UNAVAILABLE, failure).into_response(),
        None => "ok".into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.registry.store();
    if state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if let Some(failure) = store.failure() {
        (StatusCode::SERVICE_UNAVAILABLE, failure).into_response()
    } else if let Some(trouble) = store.degraded() {
        (StatusCode::SERVICE_UNAVAILABLE, trouble).into_response()
    } else if state.ready.load(Ordering::Acquire) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

async fn fallback(request: Request) -> ApiError {
    rest::not_found_path(request.uri().path())
}

/// `POST /api/v1/nodes/heartbeat` with the original body; 202 with the Node.
/// A heartbeat always writes (the Lease, and the Node when it changes), so a
/// dry run of one is refused rather than ignored.
async fn heartbeat(
    State(state): State<AppState>,
    user: Option<axum::Extension<crate::auth::UserInfo>>,
    uri: axum::http::Uri,
    body: Body,
) -> Result<Response, ApiError> {
    if options::asks_dry_run(uri.query()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the heartbeat: a heartbeat always renews the node's Lease",
        ));
    }
    let bytes = response::read_body(body).await?;
    let hb = Heartbeat::parse(&bytes).map_err(|e| {
        let mut s = status::failure(
            Reason::BadRequest,
            format!("invalid heartbeat: {}", e.message),
        );
        s.details = Some(status::StatusDetails {
            causes: Some(vec![StatusCause {
                field: Some(e.field.to_string()),
                message: Some(e.message),
                reason: Some("FieldValueInvalid".into()),
            }]),
            ..Default::default()
        });
        ApiError::from(s)
    })?;
    if !state.authz.allows_all() {
        let user = user
            .map(|u| u.0)
            .unwrap_or_else(crate::auth::UserInfo::anonymous);
        nodes::authorize_heartbeat(&user, &hb.name)?;
    }
    let node = nodes::heartbeat(&state.registry, &hb, state.lease_duration).await?;
    crate::metrics::metrics().heartbeats.inc();
    Ok(response::json(StatusCode::ACCEPTED, node.json))
}

/// One line per request at debug level.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::debug!(
        %method,
        uri = %uri,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}
