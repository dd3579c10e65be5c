//! The authorization filter: each authenticated request is put to the
//! authorizer chain as Kubernetes' request attributes, and refused with a
//! 403 Status in Kubernetes' wording when nothing allows it. The heartbeat
//! is authorized by its handler, which knows the node named in the body.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{limits, path};
use crate::auth::attributes::{path_verb, verb};
use crate::auth::{Attributes, Authorizer, ResourceAttributes, UserInfo};
use crate::error::ApiError;

/// Whether this is the original Mube's heartbeat (authorized in its handler).
pub fn is_heartbeat(method: &Method, path: &str) -> bool {
    method == Method::POST && path == "/api/v1/nodes/heartbeat"
}

/// Who a request ran as, when it impersonated someone (for the audit log).
#[derive(Debug, Clone)]
pub struct Impersonated(pub UserInfo);

/// Kubernetes' impersonation (`kubectl --as USER --as-group GROUP`): the
/// caller must be allowed to `impersonate` that user and each group; the
/// request then runs as them.
async fn impersonate(
    authorizer: &Authorizer,
    request: &mut Request,
) -> Result<Option<UserInfo>, Response> {
    let headers = request.headers();
    let Some(target) = headers.get("impersonate-user") else {
        if headers.contains_key("impersonate-group") {
            return Err(ApiError::bad_request(
                "requested impersonation of groups without impersonating a user",
            )
            .into_response());
        }
        return Ok(None);
    };
    let target = target
        .to_str()
        .map_err(|_| ApiError::bad_request("Impersonate-User is not text").into_response())?
        .to_string();
    let groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|g| g.to_str().ok().map(str::to_string))
        .collect();
    let anonymous = UserInfo::anonymous();
    let caller = request
        .extensions()
        .get::<UserInfo>()
        .unwrap_or(&anonymous)
        .clone();
    let mut asks = vec![("users", target.as_str())];
    asks.extend(groups.iter().map(|g| ("groups", g.as_str())));
    for (resource, name) in asks {
        let attributes = Attributes {
            user: &caller,
            verb: "impersonate",
            resource: Some(ResourceAttributes {
                resource,
                name,
                ..Default::default()
            }),
            path: "",
        };
        authorizer
            .check(&attributes)
            .await
            .map_err(IntoResponse::into_response)?;
    }
    let user = UserInfo::authenticated(target, groups);
    request.extensions_mut().insert(user.clone());
    Ok(Some(user))
}

pub async fn authorize(
    State(authorizer): State<Arc<Authorizer>>,
    mut request: Request,
    next: Next,
) -> Response {
    let impersonated = match impersonate(&authorizer, &mut request).await {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    let mut response = authorized(&authorizer, request, next).await;
    if let Some(user) = impersonated {
        response.extensions_mut().insert(Impersonated(user));
    }
    response
}

async fn authorized(authorizer: &Authorizer, request: Request, next: Next) -> Response {
    if authorizer.allows_all() || is_heartbeat(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let anonymous = UserInfo::anonymous();
    let user = request.extensions().get::<UserInfo>().unwrap_or(&anonymous);
    let method = request.method();
    let uri = request.uri();
    let target = path::parse(uri.path());
    let attributes = match &target {
        Some(t) => Attributes {
            user,
            verb: match t.subresource.as_deref() {
                // A stream into a pod is a create, whichever method opens
                // it: a WebSocket upgrade is a GET, and `get pods/exec`
                // alone must not open a shell (Kubernetes 1.31+ asks for
                // create too).
                Some("exec" | "attach" | "portforward") if t.plural == "pods" => "create",
                _ => verb(
                    method,
                    t.name.is_some(),
                    limits::is_watch(method, uri.query()),
                ),
            },
            resource: Some(ResourceAttributes {
                api_group: &t.group,
                resource: &t.plural,
                subresource: t.subresource.as_deref().unwrap_or(""),
                namespace: t.namespace.as_deref().unwrap_or(""),
                name: t.name.as_deref().unwrap_or(""),
            }),
            path: uri.path(),
        },
        None => Attributes {
            user,
            verb: path_verb(method),
            resource: None,
            path: uri.path(),
        },
    };
    if let Err(e) = authorizer.check(&attributes).await {
        return e.into_response();
    }
    next.run(request).await
}
