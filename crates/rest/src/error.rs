//! Errors as Triton's HTTP front end words them: `{"error": "<message>"}` with the HTTP status
//! Triton derives from the error's code.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// A refused or failed HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestError {
    pub status: StatusCode,
    pub message: String,
}

impl RestError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> RestError {
        RestError { status, message: message.into() }
    }

    /// A client error (Triton's INVALID_ARG: 400).
    pub fn bad_request(message: impl Into<String>) -> RestError {
        RestError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> RestError {
        RestError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn internal(message: impl Into<String>) -> RestError {
        RestError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn method_not_allowed() -> RestError {
        // Triton's words for a known path with the wrong method (http_server.cc).
        RestError::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
    }
}

/// The HTTP status of a gRPC status, as Triton maps its error codes (server
/// src/http_server.cc, `HttpCodeFromError`): INTERNAL 500, NOT_FOUND 404, UNAVAILABLE 503,
/// UNSUPPORTED (gRPC UNIMPLEMENTED) 501, and UNKNOWN, INVALID_ARG, ALREADY_EXISTS, CANCELLED
/// 400. Codes Triton has no counterpart for get their HTTP meaning: UNAUTHENTICATED 401,
/// PERMISSION_DENIED 403 (as Tern's auth layer answers HTTP), RESOURCE_EXHAUSTED 429 (Tern's
/// limits), DEADLINE_EXCEEDED 504; anything else 400, Triton's default.
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code as C;
    match code {
        C::Ok => StatusCode::OK,
        C::Internal | C::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        C::NotFound => StatusCode::NOT_FOUND,
        C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        C::Unauthenticated => StatusCode::UNAUTHORIZED,
        C::PermissionDenied => StatusCode::FORBIDDEN,
        C::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        C::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl From<tonic::Status> for RestError {
    fn from(status: tonic::Status) -> RestError {
        RestError::new(http_status(status.code()), status.message())
    }
}

impl From<tern_edge::Denial> for RestError {
    fn from(denial: tern_edge::Denial) -> RestError {
        RestError::from(denial.status())
    }
}

/// `{"error": message}` as bytes.
pub fn error_json(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default()
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let mut response = (self.status, error_json(&self.message)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tern\""));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_tritons_http_code_from_error() {
        assert_eq!(http_status(tonic::Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(tonic::Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(tonic::Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(http_status(tonic::Code::Unimplemented), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(http_status(tonic::Code::Internal), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(http_status(tonic::Code::AlreadyExists), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(tonic::Code::PermissionDenied), StatusCode::FORBIDDEN);
    }

    #[test]
    fn error_body_is_a_json_object_with_the_message() {
        let body: serde_json::Value =
            serde_json::from_slice(&error_json("input 'X': \"bad\"")).expect("json");
        assert_eq!(body["error"], "input 'X': \"bad\"");
    }
}
