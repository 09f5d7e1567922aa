//! tern-rest: Triton's HTTP/REST front end (KServe v2 REST plus Triton's HTTP extensions) for
//! any server that implements the gRPC service.
//!
//! Every route builds the gRPC request, checks the caller's token exactly as the gRPC auth
//! layer does for the equivalent gRPC method (and puts the same [`tern_gate::Principal`] in
//! the request), calls the same service method, and converts the answer. So authorization,
//! per-model permissions, limits, metrics, statistics and tracing are the gRPC path's: HTTP
//! adds a translation, never a second implementation.
//!
//! Layout: [`HttpArgs`] (Triton's flags), [`HttpEndpoint`] (the listener), [`routes`] (the
//! dispatch and handlers), [`infer`] and [`tensor`] (the infer bodies), [`body`] (limits,
//! compression), [`protojson`] (protobuf answers as JSON), [`error`] (Triton's status codes).

pub mod body;
pub mod error;
pub mod infer;
pub mod protojson;
pub mod routes;
pub mod tensor;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tern_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

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
    pub fn validate(&self) -> Result<(), String> {
        if self.http_thread_count == Some(0) {
            return Err("--http-thread-count must be at least 1".into());
        }
        Ok(())
    }
}

/// What the HTTP listener shares with the gRPC one: TLS, tokens and the message-size limit.
#[derive(Clone, Default)]
pub struct Front {
    pub tls: Option<Arc<tern_tls::rustls::ServerConfig>>,
    pub auth: Option<Arc<tern_gate::Authenticator>>,
    /// `--grpc-max-message-size`: the largest request body (after decompression).
    pub max_body: usize,
}

/// A running HTTP endpoint (or none, with `--allow-http false`).
pub struct HttpEndpoint {
    /// Where it listens, or `off`.
    pub addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// How long [`HttpEndpoint::stop`] waits for open connections.
const STOP_WAIT: Duration = Duration::from_secs(5);

impl HttpEndpoint {
    /// Binds `args`' address and serves `service` over HTTP until [`HttpEndpoint::stop`].
    pub async fn start<T: GrpcInferenceService>(
        args: &HttpArgs,
        service: T,
        front: Front,
    ) -> Result<HttpEndpoint, String> {
        if !args.allow_http {
            return Ok(HttpEndpoint { addr: "off".into(), stop: None, task: None });
        }
        let listener = TcpListener::bind(args.addr())
            .await
            .map_err(|e| format!("cannot bind HTTP address {}: {e}", args.addr()))?;
        let local = listener.local_addr().map_err(|e| format!("HTTP address: {e}"))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let app = routes::app(Arc::new(service), front.auth.clone(), front.max_body);
        let task = match front.tls {
            Some(tls) => {
                let listener =
                    tern_tls::TlsListener::new(listener, tls).map_err(|e| format!("HTTP TLS: {e}"))?;
                tokio::spawn(serve(listener, app, shutdown))
            }
            None => tokio::spawn(serve(NoDelay(listener), app, shutdown)),
        };
        Ok(HttpEndpoint { addr: local.to_string(), stop: Some(stop), task: Some(task) })
    }

    /// Stops accepting, then waits a few seconds for open connections to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP_WAIT, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

async fn serve<L>(
    listener: L,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// A TCP listener whose connections have Nagle's algorithm off (small responses would
/// otherwise wait ~40 ms for the client's delayed ACK).
struct NoDelay(TcpListener);

impl axum::serve::Listener for NoDelay {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (stream, addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum's own listener does.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}
