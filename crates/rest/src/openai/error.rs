//! OpenAI's error shape, and how Tern's errors map to its types and codes.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use crate::error::RestError;

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl OpenAiError {
    /// 400 `invalid_request_error` naming `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> OpenAiError {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_owned()),
            code: None,
        }
    }

    /// 400 `invalid_request_error` without a parameter.
    pub fn bad_request(message: impl Into<String>) -> OpenAiError {
        OpenAiError { param: None, ..OpenAiError::invalid("", message) }
    }

    /// 404 `model_not_found` (OpenAI's words: "The model `x` does not exist").
    pub fn model_not_found(model: &str, detail: &str) -> OpenAiError {
        OpenAiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model '{model}' does not exist or is not ready ({detail})"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn internal(message: impl Into<String>) -> OpenAiError {
        OpenAiError::from(RestError::internal(message))
    }

    /// The body OpenAI sends, also the `data:` of an error event on a stream.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<RestError> for OpenAiError {
    /// The status stays; the type and code are OpenAI's for that status.
    fn from(e: RestError) -> OpenAiError {
        let (kind, code) = match e.status {
            StatusCode::UNAUTHORIZED => ("authentication_error", Some("invalid_api_key")),
            StatusCode::FORBIDDEN => ("permission_error", None),
            StatusCode::NOT_FOUND => ("invalid_request_error", Some("model_not_found")),
            StatusCode::TOO_MANY_REQUESTS => ("rate_limit_error", Some("rate_limit_exceeded")),
            StatusCode::GATEWAY_TIMEOUT => ("timeout_error", Some("timeout")),
            s if s.is_server_error() => ("server_error", None),
            _ => ("invalid_request_error", None),
        };
        let param = (e.status == StatusCode::NOT_FOUND).then(|| "model".to_owned());
        OpenAiError { status: e.status, message: e.message, kind, param, code }
    }
}

impl From<tonic::Status> for OpenAiError {
    fn from(status: tonic::Status) -> OpenAiError {
        OpenAiError::from(RestError::from(status))
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let bytes = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = (self.status, bytes).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tern\""));
        }
        response
    }
}
