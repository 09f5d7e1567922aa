//! The error kinds every layer shares, and the one place they become gRPC statuses.

/// A failure answered to a client. The variant picks the gRPC status; the message is what the
/// client reads, so it names the model, tensor and field involved (in Triton's wording where
/// Triton clients match on it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
    /// Triton's CANCELLED: the request was cancelled before it ran (a sequence batcher cancels
    /// every pending request of a sequence one of whose requests was cancelled).
    #[error("{0}")]
    Cancelled(String),
}

impl RequestError {
    /// A stable label for metrics and logs (`reason`).
    pub fn error_type(&self) -> &'static str {
        match self {
            RequestError::InvalidArgument(_) => "invalid_argument",
            RequestError::NotFound(_) => "not_found",
            RequestError::Unavailable(_) => "unavailable",
            RequestError::ResourceExhausted(_) => "resource_exhausted",
            RequestError::Unimplemented(_) => "unimplemented",
            RequestError::Internal(_) => "internal",
            RequestError::Cancelled(_) => "cancelled",
        }
    }
}

impl From<RequestError> for tonic::Status {
    fn from(e: RequestError) -> tonic::Status {
        match e {
            RequestError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            RequestError::NotFound(m) => tonic::Status::not_found(m),
            RequestError::Unavailable(m) => tonic::Status::unavailable(m),
            RequestError::ResourceExhausted(m) => tonic::Status::resource_exhausted(m),
            RequestError::Unimplemented(m) => tonic::Status::unimplemented(m),
            RequestError::Internal(m) => tonic::Status::internal(m),
            RequestError::Cancelled(m) => tonic::Status::cancelled(m),
        }
    }
}
