//! Kubernetes `Status` errors: every failure the API server returns is one of these.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};

/// The `reason` values mube uses, spelled as Kubernetes spells them so that
/// clients (kubectl, client-go's `IsNotFound` and friends) recognise them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    AlreadyExists,
    Conflict,
    Gone,
    Expired,
    Invalid,
    MethodNotAllowed,
    NotAcceptable,
    UnsupportedMediaType,
    RequestEntityTooLarge,
    TooManyRequests,
    InternalError,
    ServiceUnavailable,
    Timeout,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadRequest => "BadRequest",
            Reason::Unauthorized => "Unauthorized",
            Reason::Forbidden => "Forbidden",
            Reason::NotFound => "NotFound",
            Reason::AlreadyExists => "AlreadyExists",
            Reason::Conflict => "Conflict",
            Reason::Gone => "Gone",
            Reason::Expired => "Expired",
            Reason::Invalid => "Invalid",
            Reason::MethodNotAllowed => "MethodNotAllowed",
            Reason::NotAcceptable => "NotAcceptable",
            Reason::UnsupportedMediaType => "UnsupportedMediaType",
            Reason::RequestEntityTooLarge => "RequestEntityTooLarge",
            Reason::TooManyRequests => "TooManyRequests",
            Reason::InternalError => "InternalError",
            Reason::ServiceUnavailable => "ServiceUnavailable",
            Reason::Timeout => "Timeout",
        }
    }

    /// The HTTP code Kubernetes pairs with this reason.
    pub fn code(self) -> u16 {
        match self {
            Reason::BadRequest => 400,
            Reason::Unauthorized => 401,
            Reason::Forbidden => 403,
            Reason::NotFound => 404,
            Reason::MethodNotAllowed => 405,
            Reason::NotAcceptable => 406,
            Reason::AlreadyExists | Reason::Conflict => 409,
            Reason::Gone | Reason::Expired => 410,
            Reason::RequestEntityTooLarge => 413,
            Reason::UnsupportedMediaType => 415,
            Reason::Invalid => 422,
            Reason::TooManyRequests => 429,
            Reason::InternalError => 500,
            Reason::ServiceUnavailable => 503,
            Reason::Timeout => 504,
        }
    }
}

/// A `Status` with `status: Failure`.
pub fn failure(reason: Reason, message: impl Into<String>) -> Status {
    Status {
        code: Some(i32::from(reason.code())),
        message: Some(message.into()),
        reason: Some(reason.as_str().to_string()),
        status: Some("Failure".to_string()),
        ..Default::default()
    }
}

/// A `Status` with `status: Failure` and details naming the object concerned.
pub fn failure_for(
    reason: Reason,
    message: impl Into<String>,
    group: &str,
    kind: &str,
    name: &str,
    causes: Vec<StatusCause>,
) -> Status {
    let mut status = failure(reason, message);
    status.details = Some(StatusDetails {
        group: Some(group.to_string()).filter(|g| !g.is_empty()),
        kind: Some(kind.to_string()),
        name: Some(name.to_string()).filter(|n| !n.is_empty()),
        causes: Some(causes).filter(|c| !c.is_empty()),
        ..Default::default()
    });
    status
}
