//! The audit filter: after each write, and each request refused as
//! unauthenticated or forbidden (401, 403), one audit `Event` at level
//! `Metadata`: who (user, groups, source IP, user agent), what (verb,
//! resource, namespace, name, subresource, the request URI) and how it
//! ended (the response code), with the times it was received and answered.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde::Serialize;

use super::path;
use crate::audit::AuditLog;
use crate::auth::attributes::verb;
use crate::auth::UserInfo;

/// `objectRef` of an audit Event.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRef<'a> {
    resource: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_group: Option<&'a str>,
    api_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subresource: Option<&'a str>,
}

#[derive(Serialize)]
struct User<'a> {
    username: &'a str,
    groups: &'a [String],
}

#[derive(Serialize)]
struct ResponseStatus {
    metadata: Empty,
    code: u16,
}

#[derive(Serialize)]
struct Empty {}

/// An audit Event (`audit.k8s.io/v1`), borrowed from the request: encoded
/// in one pass (every write is audited, the heartbeat included, so this
/// is on the hot path).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Event<'a> {
    kind: &'static str,
    api_version: &'static str,
    level: &'static str,
    #[serde(rename = "auditID")]
    audit_id: String,
    stage: &'static str,
    #[serde(rename = "requestURI")]
    request_uri: &'a str,
    verb: &'static str,
    user: User<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    impersonated_user: Option<User<'a>>,
    #[serde(rename = "sourceIPs")]
    source_ips: Vec<String>,
    user_agent: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_ref: Option<ObjectRef<'a>>,
    response_status: ResponseStatus,
    request_received_timestamp: MicroTime,
    stage_timestamp: MicroTime,
}

/// A random (version 4) UUID from a fast generator: an audit ID needs to
/// be unique, not secret, and `getrandom` per request is a system call.
fn audit_id() -> String {
    let bytes = fastrand::u128(..).to_le_bytes();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The event line for `request`, answered with `code`.
fn event(
    request: &Recorded,
    user: &UserInfo,
    impersonated: Option<&UserInfo>,
    code: u16,
    done: Timestamp,
) -> serde_json::Result<Vec<u8>> {
    let path = request.uri.path();
    let target = path::parse(path);
    // The heartbeat is a subresource of the node collection, not a node
    // named "heartbeat".
    let heartbeat = request.method == Method::POST && path == "/api/v1/nodes/heartbeat";
    let object_ref = if heartbeat {
        Some(ObjectRef {
            resource: "nodes",
            namespace: None,
            name: None,
            api_group: None,
            api_version: "v1",
            subresource: Some("heartbeat"),
        })
    } else {
        target.as_ref().map(|t| ObjectRef {
            resource: &t.plural,
            namespace: t.namespace.as_deref(),
            name: t.name.as_deref(),
            // Core resources have no group, and Kubernetes leaves it out.
            api_group: Some(t.group.as_str()).filter(|g| !g.is_empty()),
            api_version: &t.version,
            subresource: t.subresource.as_deref(),
        })
    };
    let named = target.as_ref().is_some_and(|t| t.name.is_some()) && !heartbeat;
    serde_json::to_vec(&Event {
        kind: "Event",
        api_version: "audit.k8s.io/v1",
        level: "Metadata",
        audit_id: audit_id(),
        stage: "ResponseComplete",
        request_uri: &request.uri.to_string(),
        verb: verb(
            &request.method,
            named,
            super::limits::is_watch(&request.method, request.uri.query()),
        ),
        user: User {
            username: &user.username,
            groups: &user.groups,
        },
        impersonated_user: impersonated.map(|u| User {
            username: &u.username,
            groups: &u.groups,
        }),
        source_ips: request
            .source
            .map(|s| vec![s.ip().to_string()])
            .unwrap_or_default(),
        user_agent: request
            .user_agent
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        object_ref,
        response_status: ResponseStatus {
            metadata: Empty {},
            code,
        },
        request_received_timestamp: MicroTime(request.received),
        stage_timestamp: MicroTime(done),
    })
}

/// What the filter keeps of a request while it is served.
struct Recorded {
    method: Method,
    // Kept as they came (cheap clones of shared bytes); made into strings
    // only for a request that is recorded, not for every read.
    uri: axum::http::Uri,
    user_agent: Option<axum::http::HeaderValue>,
    source: Option<SocketAddr>,
    received: Timestamp,
}

pub async fn audit(State(log): State<Arc<AuditLog>>, request: Request, next: Next) -> Response {
    let read = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let recorded = Recorded {
        method: request.method().clone(),
        uri: request.uri().clone(),
        user_agent: request.headers().get(header::USER_AGENT).cloned(),
        source: request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0),
        received: Timestamp::now(),
    };
    let response = next.run(request).await;
    let code = response.status().as_u16();
    if !read || code == 401 || code == 403 {
        // Authentication runs inside this filter and leaves the identity on
        // the response; a request it refused has none.
        let user = response
            .extensions()
            .get::<UserInfo>()
            .cloned()
            .unwrap_or_else(UserInfo::anonymous);
        let impersonated = response
            .extensions()
            .get::<super::authz::Impersonated>()
            .map(|i| &i.0);
        if let Ok(line) = event(&recorded, &user, impersonated, code, Timestamp::now()) {
            log.record(line);
        }
    }
    response
}
