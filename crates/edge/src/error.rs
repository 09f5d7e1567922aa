//! The errors of setting up the edge: flags, files, certificates and tokens. Their texts are
//! what a server prints before it exits, so each names the flag, file or line at fault.

use std::path::PathBuf;

/// Why a listener, TLS, token or limit setup cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A flag, or a combination of flags, that cannot work.
    #[error("{0}")]
    Flags(String),
    /// `flag`'s value is wrong for the reason in `source`.
    #[error("{flag}: {source}")]
    Flag { flag: &'static str, source: Box<EdgeError> },
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// A certificate or key file rustls cannot use.
    #[error("{}: {detail}", path.display())]
    Certificate { path: PathBuf, detail: String },
    /// TLS cannot be set up with these certificates (a key that does not match, a CA that
    /// verifies nothing).
    #[error("{0}")]
    Tls(String),
    /// A token, group list or model list that does not parse.
    #[error("{0}")]
    Token(String),
    /// A line of a token file that does not parse.
    #[error("{file} line {line}: {detail}")]
    TokenLine { file: String, line: usize, detail: String },
    /// The system gave no randomness for a new token.
    #[error("no randomness from the system")]
    NoRandomness,
    /// A listener's address could not be bound.
    #[error("cannot bind {what} address {addr}: {source}")]
    Bind { what: &'static str, addr: std::net::SocketAddr, source: std::io::Error },
    /// A bound listener could not be served (`context` says which).
    #[error("{context}: {source}")]
    Serve { context: String, source: std::io::Error },
}

/// For callers whose own errors are still text (configuration checks that collect messages).
impl From<EdgeError> for String {
    fn from(e: EdgeError) -> String {
        e.to_string()
    }
}
