//! [`ClientError`]: what went wrong with a request the router sent a node (or refused itself),
//! classified once, where the failure is seen, so the request path asks the error whether a
//! retry is safe instead of reading a `tonic::Status` apart. It becomes a `tonic::Status` only at
//! the service edge ([`From<ClientError> for Status`]), with the message the client would have
//! heard from the node (or the router) unchanged.
//!
//! The rules:
//! - the node answered UNAVAILABLE itself (it did not run the request: queue full, model not
//!   ready, shutting down), or the request never reached it (the connection could not be made):
//!   safe to retry any request;
//! - the connection broke after the request was sent (a node killed mid-request): the node may
//!   have run it. Safe to retry only a request that may run twice (stateless inference, reads),
//!   never a sequence request;
//! - anything else the node said is its answer, passed on as is.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node's own answer (a status with no transport error behind it), or a status that
    /// says nothing about the path to the node (the request's own deadline): passed on as is.
    #[error("{}", .0.message())]
    Node(Status),
    /// The connection to the node could not be made, or was not ready: nothing was sent.
    #[error("{}", .0.message())]
    NotSent(Status),
    /// The connection broke after the request was sent: the node may have run it.
    #[error("{}", .0.message())]
    Broken(Status),
    /// The router's own refusal (no healthy node, a full sequence table, a token that may not
    /// load models, ...).
    #[error("{message}")]
    Router { code: Code, message: String },
}

impl ClientError {
    /// The router's own answer with `code`.
    pub fn router(code: Code, message: impl Into<String>) -> ClientError {
        ClientError::Router { code, message: message.into() }
    }

    pub fn unavailable(message: impl Into<String>) -> ClientError {
        ClientError::router(Code::Unavailable, message)
    }

    pub fn code(&self) -> Code {
        match self {
            ClientError::Node(s) | ClientError::NotSent(s) | ClientError::Broken(s) => s.code(),
            ClientError::Router { code, .. } => *code,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ClientError::Node(s) | ClientError::NotSent(s) | ClientError::Broken(s) => s.message(),
            ClientError::Router { message, .. } => message,
        }
    }

    /// True when the node did not run the request: it answered UNAVAILABLE itself (tern-node's
    /// UNAVAILABLE answers all come before execution), or nothing was sent. Safe to retry any
    /// request, a sequence's included.
    pub fn not_run(&self) -> bool {
        match self {
            ClientError::Node(s) => s.code() == Code::Unavailable,
            ClientError::NotSent(_) => true,
            ClientError::Broken(_) | ClientError::Router { .. } => false,
        }
    }

    /// True when the failure says nothing about the request, only about the node or the path to
    /// it: safe to retry elsewhere for a request that may run twice.
    pub fn retryable(&self) -> bool {
        self.not_run() || matches!(self, ClientError::Broken(_))
    }

    /// True when the node could not be reached or the connection broke (not an answer from the
    /// node): the node is suspect until it reports again.
    pub fn transport(&self) -> bool {
        matches!(self, ClientError::NotSent(_) | ClientError::Broken(_))
    }
}

/// Classifies a status from a call to a node. Statuses a node sent carry no source; ones tonic
/// made from a transport error do.
impl From<Status> for ClientError {
    fn from(status: Status) -> ClientError {
        if std::error::Error::source(&status).is_none() {
            return ClientError::Node(status);
        }
        match status.code() {
            // The request's own deadline passed: another node would not beat it.
            Code::DeadlineExceeded => ClientError::Node(status),
            _ if in_source_chain(&status, |e| e.is::<tonic::ConnectError>()) => ClientError::NotSent(status),
            // tonic turns hyper's "canceled" (the connection to the node closed, or was not
            // ready, before the answer: a node killed mid-request) into CANCELLED. Other
            // CANCELLED statuses are the node's own word.
            Code::Cancelled => {
                let canceled = |e: &(dyn std::error::Error + 'static)| {
                    e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled)
                };
                if in_source_chain(&status, canceled) {
                    ClientError::Broken(status)
                } else {
                    ClientError::Node(status)
                }
            }
            _ => ClientError::Broken(status),
        }
    }
}

/// The status a client of the router sees: the node's (or the router's) code and message as
/// they are.
impl From<ClientError> for Status {
    fn from(e: ClientError) -> Status {
        match e {
            ClientError::Node(s) | ClientError::NotSent(s) | ClientError::Broken(s) => s,
            ClientError::Router { code, message } => Status::new(code, message),
        }
    }
}

fn in_source_chain(status: &Status, found: impl Fn(&(dyn std::error::Error + 'static)) -> bool) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if found(e) {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::NodeClient;
    use tern_proto::inference as pb;

    #[test]
    fn a_nodes_own_answers_are_passed_on() {
        let busy = ClientError::from(Status::unavailable("model 'm': queue full"));
        assert!(matches!(busy, ClientError::Node(_)));
        assert!(busy.not_run() && busy.retryable() && !busy.transport());
        let missing = ClientError::from(Status::not_found("model 'm' not found"));
        assert!(!missing.retryable() && !missing.not_run());
        let status = Status::from(missing);
        assert_eq!((status.code(), status.message()), (Code::NotFound, "model 'm' not found"));
        let refused = ClientError::unavailable("model 'm': no node of the cluster is healthy");
        assert!(!refused.retryable() && !refused.transport());
        assert_eq!(Status::from(refused).message(), "model 'm': no node of the cluster is healthy");
    }

    /// A real connection that cannot be made (a port nobody listens on): nothing was sent, so
    /// any request may go to another replica, and the node is suspect.
    #[tokio::test]
    async fn a_refused_connection_is_not_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let client = NodeClient::connect(&addr, 1, None, tern_edge::Credential::none()).expect("client");
        let e = client.model_config(pb::ModelConfigRequest::default()).await.expect_err("refused");
        assert!(matches!(e, ClientError::NotSent(_)), "{e:?}");
        assert!(e.not_run() && e.retryable() && e.transport());
    }

    /// A real connection the far end closes after the request was sent (a fake node that reads
    /// the request, then hangs up, as a killed node would): the node may have run it.
    #[tokio::test]
    async fn a_connection_broken_after_sending_may_have_run() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let hang_up = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            // The HTTP/2 preface, settings and the request's frames, then close.
            let mut read = 0;
            while read < 100 {
                match tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => read += n,
                    _ => break,
                }
            }
            drop(socket);
        });
        let client = NodeClient::connect(&addr, 1, None, tern_edge::Credential::none()).expect("client");
        let e = client.model_config(pb::ModelConfigRequest::default()).await.expect_err("broken");
        assert!(matches!(e, ClientError::Broken(_)), "{e:?}");
        assert!(!e.not_run() && e.retryable() && e.transport());
        hang_up.await.expect("fake node");
    }
}
