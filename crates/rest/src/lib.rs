//! tern-rest: Triton's HTTP/REST front end (KServe v2 REST plus Triton's HTTP extensions) for
//! any server that implements the gRPC service.
//!
//! Every route builds the gRPC request, checks the caller's token exactly as the gRPC auth
//! layer does for the equivalent gRPC method (and puts the same [`tern_edge::Principal`] in
//! the request), calls the same service method, and converts the answer. So authorization,
//! per-model permissions, limits, metrics, statistics and tracing are the gRPC path's: HTTP
//! adds a translation, never a second implementation.
//!
//! Layout: [`HttpArgs`] (Triton's flags), [`HttpEndpoint`] (the listener), [`routes`] (the
//! dispatch and handlers), [`infer`] and [`tensor`] (the infer bodies), [`generate`] (Triton's
//! generate extension: JSON and Server-Sent Events), [`openai`] (the OpenAI-compatible API
//! under `/v1`), [`body`] (limits,
//! compression), [`protojson`] (protobuf answers as JSON), [`error`] (Triton's status codes).

pub mod body;
pub mod error;
pub mod generate;
pub mod infer;
pub mod openai;
pub mod protojson;
pub mod routes;
pub mod tensor;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tern_edge::EdgeError;
use tokio::net::TcpListener;

/// The HTTP flags of tern-node, tern-router and `tern serve`, named as Triton's.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Serve Triton's HTTP/REST protocol (KServe v2 REST) beside gRPC.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub allow_http: bool,

    /// Address the HTTP server binds.
    #[arg(long, default_value = "0.0.0.0")]
    pub http_address: IpAddr,

    /// HTTP port. 0 picks a free port, logged at start (`http=ADDR`).
    #[arg(long, default_value_t = 8000)]
    pub http_port: u16,

    /// Accepted for Triton compatibility and otherwise unused: HTTP requests run on the same
    /// async runtime workers as gRPC requests (one per core), not on a thread pool of their own.
    #[arg(long, value_name = "N")]
    pub http_thread_count: Option<usize>,
}

impl Default for HttpArgs {
    fn default() -> Self {
        HttpArgs {
            allow_http: true,
            http_address: [0, 0, 0, 0].into(),
            http_port: 8000,
            http_thread_count: None,
        }
    }
}

impl HttpArgs {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.http_address, self.http_port)
    }

    /// Checks the flags.
    pub fn validate(&self) -> Result<(), EdgeError> {
        if self.http_thread_count == Some(0) {
            return Err(EdgeError::Flags("--http-thread-count must be at least 1".into()));
        }
        Ok(())
    }
}

/// What the HTTP listener shares with the gRPC one: TLS, tokens and the message-size limit.
#[derive(Clone, Default)]
pub struct Front {
    pub tls: Option<Arc<tern_edge::tls::rustls::ServerConfig>>,
    pub auth: Option<Arc<tern_edge::Authenticator>>,
    /// `--grpc-max-message-size`: the largest request body (after decompression).
    pub max_body: usize,
}

impl From<&tern_edge::FrontDoor> for Front {
    /// The gRPC server's TLS, tokens and --grpc-max-message-size.
    fn from(door: &tern_edge::FrontDoor) -> Front {
        Front {
            tls: door.tls.clone(),
            auth: door.auth.auth.clone(),
            max_body: door.limits.grpc_max_message_size,
        }
    }
}

/// A running HTTP endpoint (or none, with `--allow-http false`), served by the edge's HTTP
/// server ([`tern_edge::http::HttpEndpoint`]).
pub struct HttpEndpoint {
    /// Where it listens, or `off`.
    pub addr: String,
    endpoint: Option<tern_edge::http::HttpEndpoint>,
}

impl HttpEndpoint {
    /// Binds `args`' address and serves `service` over HTTP until [`HttpEndpoint::stop`].
    pub async fn start<T: routes::Service>(
        args: &HttpArgs,
        service: T,
        front: Front,
    ) -> Result<HttpEndpoint, EdgeError> {
        if !args.allow_http {
            return Ok(HttpEndpoint { addr: "off".into(), endpoint: None });
        }
        let listener = TcpListener::bind(args.addr()).await.map_err(|source| EdgeError::Bind {
            what: "HTTP",
            addr: args.addr(),
            source,
        })?;
        let app = routes::app(Arc::new(service), front.auth.clone(), front.max_body);
        let endpoint = tern_edge::http::HttpEndpoint::start(listener, front.tls, app).map_err(|source| {
            EdgeError::Serve { context: format!("HTTP address {}", args.addr()), source }
        })?;
        Ok(HttpEndpoint { addr: endpoint.local_addr().to_string(), endpoint: Some(endpoint) })
    }

    /// Stops accepting, then waits a few seconds for open connections to finish.
    pub async fn stop(mut self) {
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.stop().await;
        }
    }
}
