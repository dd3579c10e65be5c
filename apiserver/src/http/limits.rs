//! Overload protection, as kube-apiserver's `--max-requests-inflight` and
//! `--request-timeout` give it: a cap on requests being served and one on
//! open watches, answered past the cap with Kubernetes' 429 and
//! `Retry-After` (clients back off and retry), and a time limit on every
//! request but a watch, answered with Kubernetes' 504.
//!
//! Health checks are not limited: a supervisor must see a busy server as
//! alive. Heartbeats have a cap of their own, as Kubernetes' API Priority
//! and Fairness gives node heartbeats a priority level of their own
//! (`node-high`): a flood of other requests (thousands of pod status
//! writes) must not turn them away, or healthy nodes would go NotReady and
//! have their pods evicted.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use mube_apis::status::{self, Reason, StatusDetails};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// The caps and the time limit, from the config.
pub struct Limits {
    in_flight: Arc<Semaphore>,
    heartbeats: Arc<Semaphore>,
    watches: Arc<Semaphore>,
    request_timeout: Duration,
}

impl Limits {
    pub fn new(max_in_flight: usize, max_watches: usize, request_timeout: Duration) -> Limits {
        Limits {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            heartbeats: Arc::new(Semaphore::new(max_in_flight)),
            watches: Arc::new(Semaphore::new(max_watches)),
            request_timeout,
        }
    }
}

/// A GET with `?watch=true` (or `1`, `True`): a long-running request,
/// counted apart and never timed out. As the handler reads its query, the
/// last `watch` wins: a request that is served as anything but a watch is
/// never counted as one (or it would escape the in-flight cap).
pub fn is_watch(method: &axum::http::Method, query: Option<&str>) -> bool {
    *method == axum::http::Method::GET
        && form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .filter(|(k, _)| k == "watch")
            .last()
            .is_some_and(|(_, v)| matches!(&*v, "true" | "1" | "True"))
}

/// 429 as kube-apiserver answers it.
fn too_many() -> Response {
    let mut status = status::failure(
        Reason::TooManyRequests,
        "Too many requests, please try again later.",
    );
    status.details = Some(StatusDetails {
        retry_after_seconds: Some(1),
        ..Default::default()
    });
    let mut response = ApiError::from(status).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

pub async fn limit(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    if is_watch(request.method(), request.uri().query()) {
        let Ok(permit) = limits.watches.clone().try_acquire_owned() else {
            return too_many();
        };
        return holding(next.run(request).await, permit);
    }
    let heartbeat = request.method() == axum::http::Method::POST
        && request.uri().path() == "/api/v1/nodes/heartbeat";
    let cap = if heartbeat {
        &limits.heartbeats
    } else {
        &limits.in_flight
    };
    let Ok(permit) = cap.clone().try_acquire_owned() else {
        return too_many();
    };
    let answered = tokio::time::timeout(limits.request_timeout, next.run(request)).await;
    // As in kube-apiserver, a request counts until its handler returns (a
    // list's body streams after): holding the slot through the body would
    // cost every request a body wrapper, on the heartbeat's hot path.
    drop(permit);
    match answered {
        Ok(response) => response,
        Err(_) => ApiError::new(
            Reason::Timeout,
            "Timeout: request did not complete within requested timeout - context deadline exceeded",
        )
        .into_response(),
    }
}

/// The response, with `guard` held (and dropped) until its body has been
/// sent or the client went away: a watch's slot under the cap, its place
/// in `apiserver_longrunning_requests`.
pub fn holding<G: Send + Unpin + 'static>(response: Response, guard: G) -> Response {
    response.map(|body| {
        Body::new(Holding {
            body,
            _guard: guard,
        })
    })
}

struct Holding<G> {
    body: Body,
    _guard: G,
}

impl<G: Send + Unpin + 'static> HttpBody for Holding<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_told_by_their_query() {
        use axum::http::Method;
        assert!(is_watch(&Method::GET, Some("watch=true&resourceVersion=5")));
        assert!(is_watch(&Method::GET, Some("labelSelector=a&watch=1")));
        assert!(!is_watch(&Method::GET, Some("watch=false")));
        assert!(!is_watch(&Method::GET, Some("watch=true&watch=false")));
        assert!(!is_watch(&Method::POST, Some("watch=true")));
        assert!(!is_watch(&Method::GET, Some("limit=5")));
        assert!(!is_watch(&Method::GET, None));
    }
}
