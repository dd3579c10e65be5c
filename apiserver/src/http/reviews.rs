//! Create-only resources that store nothing and answer about the caller:
//! SelfSubjectAccessReview (`kubectl auth can-i`) and SelfSubjectReview
//! (`kubectl auth whoami`). They are in discovery beside the stored kinds.

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use k8s_openapi::api::authorization::v1::{SelfSubjectAccessReview, SubjectAccessReviewStatus};
use serde_json::{json, Value};

use super::path::Target;
use super::response::{json as reply, read_object};
use super::AppState;
use crate::auth::{Attributes, Decision, ResourceAttributes, UserInfo};
use crate::error::ApiError;

/// A create-only resource.
pub struct Review {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
}

const fn review(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
) -> Review {
    Review {
        group,
        version,
        plural,
        kind,
    }
}

/// kubectl 1.27 asks `v1alpha1`/`v1beta1` for whoami, later ones `v1`.
pub const REVIEWS: &[Review] = &[
    review(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
    ),
    review(
        "authentication.k8s.io",
        "v1",
        "selfsubjectreviews",
        "SelfSubjectReview",
    ),
    review(
        "authentication.k8s.io",
        "v1beta1",
        "selfsubjectreviews",
        "SelfSubjectReview",
    ),
    review(
        "authentication.k8s.io",
        "v1alpha1",
        "selfsubjectreviews",
        "SelfSubjectReview",
    ),
];

pub fn find(target: &Target) -> Option<&'static Review> {
    REVIEWS.iter().find(|r| {
        r.group == target.group && r.version == target.version && r.plural == target.plural
    })
}

/// Answers a POST to a review; other methods are 405.
pub async fn serve(
    state: &AppState,
    review: &Review,
    target: &Target,
    method: &Method,
    user: &UserInfo,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if *method != Method::POST || target.name.is_some() || target.namespace.is_some() {
        return Err(ApiError::new(
            mube_apis::status::Reason::MethodNotAllowed,
            format!(
                "the server does not allow this method on the requested resource: {method} on {}",
                review.plural
            ),
        ));
    }
    let object = read_object(headers, body).await?;
    let answer = match review.plural {
        "selfsubjectaccessreviews" => access_review(state, user, object).await?,
        _ => json!({
            "apiVersion": format!("{}/{}", review.group, review.version),
            "kind": review.kind,
            "metadata": {"creationTimestamp": null},
            "status": {"userInfo": {"username": user.username, "groups": user.groups}},
        }),
    };
    Ok(reply(StatusCode::CREATED, answer.to_string()))
}

async fn access_review(
    state: &AppState,
    user: &UserInfo,
    object: Value,
) -> Result<Value, ApiError> {
    let mut review: SelfSubjectAccessReview = serde_json::from_value(object)
        .map_err(|e| ApiError::bad_request(format!("invalid SelfSubjectAccessReview: {e}")))?;
    let spec = &review.spec;
    let attributes = match (&spec.resource_attributes, &spec.non_resource_attributes) {
        (Some(r), None) => Attributes {
            user,
            verb: r.verb.as_deref().unwrap_or(""),
            resource: Some(ResourceAttributes {
                api_group: r.group.as_deref().unwrap_or(""),
                resource: r.resource.as_deref().unwrap_or(""),
                subresource: r.subresource.as_deref().unwrap_or(""),
                namespace: r.namespace.as_deref().unwrap_or(""),
                name: r.name.as_deref().unwrap_or(""),
            }),
            path: "",
        },
        (None, Some(n)) => Attributes {
            user,
            verb: n.verb.as_deref().unwrap_or(""),
            resource: None,
            path: n.path.as_deref().unwrap_or(""),
        },
        _ => {
            return Err(ApiError::new(
                mube_apis::status::Reason::Invalid,
                "SelfSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ))
        }
    };
    let decision = state.authz.authorize(&attributes).await?;
    review.status = Some(SubjectAccessReviewStatus {
        allowed: decision == Decision::Allow,
        denied: Some(matches!(decision, Decision::Deny(_))).filter(|d| *d),
        reason: match decision {
            Decision::Deny(reason) => Some(reason),
            _ => None,
        },
        evaluation_error: None,
    });
    serde_json::to_value(&review).map_err(|e| ApiError::bad_request(e.to_string()))
}
