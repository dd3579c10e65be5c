//! The API server's one error type. Every failure a client can see is a
//! Kubernetes `Status`; handlers return `Result<_, ApiError>` and use `?`.

use mube_apis::status::{self, Reason, Status, StatusCause};
use mube_apis::validation::FieldError;

use crate::registry::Resource;
use crate::store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    /// Boxed: errors travel through every `Result` in the server, and a
    /// `Status` is a few hundred bytes.
    pub status: Box<Status>,
}

impl From<Status> for ApiError {
    fn from(status: Status) -> ApiError {
        ApiError {
            status: Box::new(status),
        }
    }
}

impl ApiError {
    pub fn new(reason: Reason, message: impl Into<String>) -> ApiError {
        ApiError {
            status: Box::new(status::failure(reason, message)),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(Reason::BadRequest, message)
    }

    pub fn not_found(resource: &Resource, name: &str) -> ApiError {
        ApiError {
            status: Box::new(status::failure_for(
                Reason::NotFound,
                format!("{} \"{name}\" not found", resource.qualified_plural()),
                resource.group,
                resource.plural,
                name,
                vec![],
            )),
        }
    }

    /// 422 Invalid, listing every bad field as Kubernetes does.
    pub fn invalid(resource: &Resource, name: &str, errors: Vec<FieldError>) -> ApiError {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join(", ");
        let causes = errors
            .into_iter()
            .map(|e| StatusCause {
                field: Some(e.field),
                message: Some(e.message),
                reason: Some("FieldValueInvalid".into()),
            })
            .collect();
        ApiError {
            status: Box::new(status::failure_for(
                Reason::Invalid,
                // Kubernetes names a grouped kind with its group: `Deployment.apps`.
                match resource.group {
                    "" => format!("{} \"{name}\" is invalid: {detail}", resource.kind),
                    group => format!("{}.{group} \"{name}\" is invalid: {detail}", resource.kind),
                },
                resource.group,
                resource.kind,
                name,
                causes,
            )),
        }
    }

    /// 422 Invalid for bad request options (`CreateOptions`, `DeleteOptions`,
    /// ...), as Kubernetes answers them: `{kind}.meta.k8s.io "" is invalid`.
    /// Each cause is (field, message, reason), e.g. `FieldValueNotSupported`.
    pub fn invalid_options(kind: &str, causes: Vec<(String, String, &str)>) -> ApiError {
        let detail = causes
            .iter()
            .map(|(field, message, _)| format!("{field}: {message}"))
            .collect::<Vec<_>>()
            .join(", ");
        let causes = causes
            .into_iter()
            .map(|(field, message, reason)| StatusCause {
                field: Some(field),
                message: Some(message),
                reason: Some(reason.to_string()),
            })
            .collect();
        ApiError {
            status: Box::new(status::failure_for(
                Reason::Invalid,
                format!("{kind}.meta.k8s.io \"\" is invalid: {detail}"),
                "meta.k8s.io",
                kind,
                "",
                causes,
            )),
        }
    }

    /// Maps a store failure to the Status Kubernetes returns for it.
    pub fn from_store(error: StoreError, resource: &Resource, name: &str) -> ApiError {
        let plural = resource.qualified_plural();
        let with_details = |reason: Reason, message: String| ApiError {
            status: Box::new(status::failure_for(
                reason,
                message,
                resource.group,
                resource.plural,
                name,
                vec![],
            )),
        };
        match error {
            StoreError::NotFound { .. } => ApiError::not_found(resource, name),
            StoreError::AlreadyExists { .. } => with_details(
                Reason::AlreadyExists,
                format!("{plural} \"{name}\" already exists"),
            ),
            StoreError::Conflict { .. } => with_details(
                Reason::Conflict,
                format!("Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
            ),
            // Kubernetes reports a failed precondition as a storage
            // "invalid object" error wrapped in a 409; clients match the text.
            StoreError::PreconditionFailed { key, message } => with_details(
                Reason::Conflict,
                format!("Operation cannot be fulfilled on {plural} \"{name}\": StorageError: invalid object, Code: 4, Key: {key}, ResourceVersion: 0, AdditionalErrorMsg: {message}"),
            ),
            other => ApiError::from(other),
        }
    }

    fn reason_is(&self, reason: Reason) -> bool {
        self.status.reason.as_deref() == Some(reason.as_str())
    }

    /// 404: the object (or path) is not there.
    pub fn is_not_found(&self) -> bool {
        self.reason_is(Reason::NotFound)
    }

    /// 409 Conflict: a stale resourceVersion or a failed precondition; a
    /// read-modify-write tries again.
    pub fn is_conflict(&self) -> bool {
        self.reason_is(Reason::Conflict)
    }

    /// 409 AlreadyExists: a create lost to another.
    pub fn is_already_exists(&self) -> bool {
        self.reason_is(Reason::AlreadyExists)
    }

    /// 410: the history a read asked for is compacted away.
    pub fn is_expired(&self) -> bool {
        self.reason_is(Reason::Expired) || self.reason_is(Reason::Gone)
    }

    pub fn code(&self) -> u16 {
        self.status
            .code
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(500)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Compacted {
                requested,
                compacted,
            } => ApiError::new(
                Reason::Expired,
                format!("too old resource version: {requested} ({compacted})"),
            ),
            // Kubernetes' NewTooLargeResourceVersionError: clients (the
            // reflector) match the cause and relist.
            StoreError::TooLarge { requested, current } => {
                let mut status = status::failure(
                    Reason::Timeout,
                    format!("Timeout: Too large resource version: {requested}, current: {current}"),
                );
                status.details = Some(status::StatusDetails {
                    causes: Some(vec![StatusCause {
                        reason: Some("ResourceVersionTooLarge".into()),
                        message: Some("Too large resource version".into()),
                        field: None,
                    }]),
                    retry_after_seconds: Some(1),
                    ..Default::default()
                });
                ApiError::from(status)
            }
            StoreError::TooSlow => ApiError::new(
                Reason::Expired,
                "watch closed: the client fell too far behind; relist and watch again",
            ),
            StoreError::Closed => ApiError::new(
                Reason::ServiceUnavailable,
                "the API server is shutting down",
            ),
            StoreError::InvalidObject(m) => ApiError::bad_request(m),
            e @ (StoreError::NotFound { .. }
            | StoreError::AlreadyExists { .. }
            | StoreError::Conflict { .. }
            | StoreError::PreconditionFailed { .. }) => {
                ApiError::new(Reason::Conflict, e.to_string())
            }
            e @ (StoreError::Corruption(_) | StoreError::Io(_)) => {
                ApiError::new(Reason::InternalError, e.to_string())
            }
            e @ StoreError::Unavailable(_) => {
                ApiError::new(Reason::ServiceUnavailable, e.to_string())
            }
            StoreError::Failed(m) => ApiError::new(
                Reason::ServiceUnavailable,
                format!("{m}; the API server serves no data until it is restarted"),
            ),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({})",
            self.status.message.as_deref().unwrap_or(""),
            self.code()
        )
    }
}

impl std::error::Error for ApiError {}
