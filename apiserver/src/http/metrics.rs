//! The metrics filter and `/metrics`: every resource request counted by
//! verb, resource and response code, timed, and held in the in-flight or
//! long-running gauges while it is served, with Kubernetes' names and
//! labels (`apiserver_request_total`, `apiserver_request_duration_seconds`,
//! `apiserver_current_inflight_requests`, `apiserver_longrunning_requests`).
//!
//! The filter is the outermost one, so that requests refused by
//! authentication (401), authorization (403) or the limits (429) count too.
//! Labels come only from what the server serves: a path naming a resource
//! or subresource it does not have is counted with empty labels, so that no
//! client can grow the number of series by inventing names.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mube_process::metrics::prometheus::{Histogram, IntCounter, IntGauge};

use super::{limits, path, AppState};
use crate::metrics::metrics;
use crate::registry::Registry;

/// Subresources the server serves: only these become label values.
const SUBRESOURCES: &[&str] = &[
    "status",
    "scale",
    "log",
    "binding",
    "eviction",
    "approval",
    "heartbeat",
    "proxy",
    "exec",
    "attach",
    "portforward",
];

/// The labels of one request (`REQUEST_LABELS`), resolved against what the
/// server serves.
struct Labels {
    verb: &'static str,
    group: String,
    version: String,
    resource: String,
    subresource: &'static str,
    scope: &'static str,
}

impl Labels {
    fn of(registry: &Registry, request: &Request) -> Option<Labels> {
        let method = request.method();
        let path = request.uri().path();
        let target = path::parse(path)?;
        let watch = limits::is_watch(method, request.uri().query());
        let apply = *method == Method::PATCH
            && request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .is_some_and(|v| v.trim() == "application/apply-patch+yaml");
        // Kubernetes' verbs for metrics: HTTP methods, with a GET of a
        // collection as LIST, a watch as WATCH and server-side apply as APPLY.
        let verb = match *method {
            Method::GET | Method::HEAD if watch => "WATCH",
            Method::GET | Method::HEAD if target.name.is_some() => "GET",
            Method::GET | Method::HEAD => "LIST",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::PATCH if apply => "APPLY",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            _ => "",
        };
        let scope = if target.name.is_some() {
            "resource"
        } else if target.namespace.is_some() {
            "namespace"
        } else {
            "cluster"
        };
        if registry
            .lookup(&target.group, &target.version, &target.plural)
            .is_none()
        {
            return Some(Labels {
                verb,
                group: String::new(),
                version: String::new(),
                resource: String::new(),
                subresource: "",
                scope,
            });
        }
        let subresource = target
            .subresource
            .as_deref()
            .and_then(|s| SUBRESOURCES.iter().find(|known| **known == s))
            .copied()
            .unwrap_or("");
        Some(Labels {
            verb,
            group: target.group,
            version: target.version,
            resource: target.plural,
            subresource,
            scope,
        })
    }

    fn values(&self) -> [&str; 7] {
        [
            self.verb,
            &self.group,
            &self.version,
            &self.resource,
            self.subresource,
            self.scope,
            "apiserver",
        ]
    }
}

/// The heartbeat's series, resolved once: it is most of the requests a
/// big cluster gets, and looking its labels up each time was measurable.
struct HeartbeatSeries {
    inflight: IntGauge,
    duration: Histogram,
    accepted: IntCounter,
}

const HEARTBEAT_LABELS: [&str; 7] = [
    "POST",
    "",
    "v1",
    "nodes",
    "heartbeat",
    "cluster",
    "apiserver",
];

static HEARTBEAT: LazyLock<HeartbeatSeries> = LazyLock::new(|| {
    let m = metrics();
    let mut accepted = [""; 8];
    accepted[..7].copy_from_slice(&HEARTBEAT_LABELS);
    accepted[7] = "202";
    HeartbeatSeries {
        inflight: m.inflight.with_label_values(&["mutating"]),
        duration: m.request_duration.with_label_values(&HEARTBEAT_LABELS),
        accepted: m.requests.with_label_values(&accepted),
    }
});

pub async fn instrument(
    State(registry): State<Arc<Registry>>,
    request: Request,
    next: Next,
) -> Response {
    if super::authz::is_heartbeat(request.method(), request.uri().path()) {
        let series = &*HEARTBEAT;
        let serving = Open::counting(&series.inflight);
        let started = Instant::now();
        let response = next.run(request).await;
        drop(serving);
        series.duration.observe(started.elapsed().as_secs_f64());
        match response.status().as_u16() {
            202 => series.accepted.inc(),
            code => count(&HEARTBEAT_LABELS, code),
        }
        return response;
    }
    let Some(labels) = Labels::of(&registry, &request) else {
        return next.run(request).await;
    };
    let m = metrics();
    let values = labels.values();
    if labels.verb == "WATCH" {
        let open = Open::counting(&m.longrunning.with_label_values(&values));
        let response = next.run(request).await;
        count(&values, response.status().as_u16());
        // Open until its body ends (or the client goes away).
        return limits::holding(response, open);
    }
    let kind = if matches!(*request.method(), Method::GET | Method::HEAD) {
        "readOnly"
    } else {
        "mutating"
    };
    let serving = Open::counting(&m.inflight.with_label_values(&[kind]));
    let started = Instant::now();
    let response = next.run(request).await;
    drop(serving);
    m.request_duration
        .with_label_values(&values)
        .observe(started.elapsed().as_secs_f64());
    count(&values, response.status().as_u16());
    response
}

fn count(values: &[&str; 7], code: u16) {
    let code = code.to_string();
    let mut all = [""; 8];
    all[..7].copy_from_slice(values);
    all[7] = &code;
    metrics().requests.with_label_values(&all).inc();
}

/// A request's place in a gauge (in flight, or a watch's in
/// `apiserver_longrunning_requests`), given up when it is dropped: also
/// when the client goes away and the request is dropped mid-way, so that
/// the gauge cannot drift.
struct Open(IntGauge);

impl Open {
    fn counting(gauge: &IntGauge) -> Open {
        gauge.inc();
        Open(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `GET /metrics`: the gauges read from the store are set first (how many
/// objects of each kind, the store's bytes on disk, its compacted
/// revision), as Kubernetes sets `apiserver_storage_objects` from its
/// store.
pub async fn scrape(State(state): State<AppState>) -> Response {
    let m = metrics();
    let store = state.registry.store();
    for r in state
        .registry
        .resources()
        .iter()
        .filter(|r| r.is_stored_version())
    {
        if let Ok(n) = store.count(&r.prefix(None)).await {
            let name = if r.group.is_empty() {
                r.plural.to_string()
            } else {
                format!("{}.{}", r.plural, r.group)
            };
            m.storage_objects
                .with_label_values(&[&name])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    if let Some(bytes) = store.disk_bytes() {
        m.data_dir_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
    m.compacted_revision
        .set(i64::try_from(store.compacted()).unwrap_or(i64::MAX));
    (
        [(header::CONTENT_TYPE, mube_process::metrics::CONTENT_TYPE)],
        mube_process::metrics::render(),
    )
        .into_response()
}
