//! Response building: JSON bodies, and `ApiError` rendered as a `Status`.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use mube_apis::status::Reason;
use serde_json::Value;

use crate::error::ApiError;

/// Request bodies above this are refused with 413, as Kubernetes does at 3 MiB.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

pub fn json(code: StatusCode, body: impl Into<Bytes>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body.into()),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match serde_json::to_vec(&self.status) {
            Ok(body) => json(code, body),
            Err(_) => code.into_response(),
        }
    }
}

/// Reads a request body of at most `MAX_BODY_BYTES`.
pub async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::new(
                    Reason::RequestEntityTooLarge,
                    format!("the request body is larger than the limit of {MAX_BODY_BYTES} bytes"),
                )
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            }
        })
}

/// Reads and decodes an object body: JSON, or YAML when the Content-Type says so.
pub async fn read_object(headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let unsupported = |what: &str| {
        ApiError::new(
            Reason::UnsupportedMediaType,
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {what:?})"),
        )
    };
    let yaml = match media.as_str() {
        "application/json" | "" => false,
        "application/yaml" | "application/x-yaml" | "text/yaml" => true,
        "application/vnd.kubernetes.protobuf" => {
            let bytes = read_body(body).await?;
            return super::protobuf::object_to_json(&bytes).map_err(|e| match e {
                super::protobuf::ProtobufError::Invalid(m) => ApiError::bad_request(m),
                super::protobuf::ProtobufError::Unsupported(kind) => {
                    unsupported(&format!("application/vnd.kubernetes.protobuf for {kind}"))
                }
            });
        }
        other => return Err(unsupported(other)),
    };
    let bytes = read_body(body).await?;
    if yaml {
        serde_yaml::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}")))
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
    }
}
