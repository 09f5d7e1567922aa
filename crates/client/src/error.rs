//! One error type for every call: what the server answered (its gRPC code and message), what
//! went wrong before a request left (a tensor that does not add up, a certificate file that
//! cannot be read), and transport failures.

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status: printed as Triton's clients print it,
    /// `NOT_FOUND: Request for unknown model: 'x' is not found`.
    #[error("{}: {message}", code_name(*code))]
    Server { code: tonic::Code, message: String },
    /// One response of a stream carried an error (`error_message`); the stream goes on.
    #[error("{message}")]
    InBand { request_id: String, message: String },
    /// The server could not be reached (refused, unresolvable, TLS handshake failed, timed out).
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    /// A request or option that is wrong before anything is sent (the server never saw it).
    #[error("{0}")]
    Invalid(String),
    /// A response that does not follow the protocol (a tensor shorter than its shape, a
    /// datatype this client does not know).
    #[error("unexpected response: {0}")]
    Response(String),
}

impl ClientError {
    /// The gRPC code the server answered with, if it answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The server's message, if it answered (a status or an in-band stream error).
    pub fn server_message(&self) -> Option<&str> {
        match self {
            ClientError::Server { message, .. } | ClientError::InBand { message, .. } => Some(message),
            _ => None,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Server { code: status.code(), message: status.message().to_owned() }
    }
}

/// The canonical name of a gRPC status code (`NOT_FOUND`), as grpc and tritonclient print it
/// (tonic's `Display` gives a description instead).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An error and its sources on one line (tonic's transport errors say "transport error" and
/// keep the cause in their source chain).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
