//! A serving process from `main` to its exit code, the same for tern-node, tern-router and
//! `tern serve`: flags parsed → logging → validation (before any port is bound) → the async
//! runtime → bind the gRPC port → serve until SIGTERM/SIGINT. Exit codes: 0 after a clean
//! stop, 2 for a configuration that cannot work (bad flags, logging that cannot start),
//! 1 for anything that fails later (a port in use, a model repository that fails to load).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;

use tokio::net::TcpListener;

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Which async runtime a server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// [`server_runtime`]: for servers that form batches (tern-node, `tern serve`).
    Batching,
    /// Tokio's default multi-threaded runtime (tern-router: it forms no batches, and without
    /// the LIFO slot it measured 60 µs slower at concurrency 1).
    Default,
}

impl Runtime {
    pub fn build(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            Runtime::Batching => server_runtime(),
            Runtime::Default => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        }
    }
}

/// The async runtime a batching server runs on: tokio's multi-threaded runtime, with the
/// worker's LIFO slot off when the build allows it (`--cfg tokio_unstable`, set in
/// `.cargo/config.toml`).
///
/// Why: a task woken from a worker normally runs next, before the tasks already queued. When a
/// batch's answers wake the callers' tasks, the first caller to answer wakes its connection's
/// task, which would then run at once and flush that one response alone. Without the slot, the
/// connection's task queues behind the other callers and flushes all their responses in one
/// write (see benches/RESULTS.md, "Tiny-model profile"). tern-router keeps tokio's default
/// ([`Runtime::Default`]).
pub fn server_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// The shutdown signal handed to [`Server::serve`].
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A serving binary's configuration, as [`run_main`] drives it.
pub trait Server: Sized {
    /// The process's name in logs (`service.name`) and in errors printed before logging is up.
    const NAME: &'static str;
    /// The runtime it runs on.
    const RUNTIME: Runtime;

    /// Its logging flags (their service name is set to [`Server::NAME`]).
    fn tracing(&mut self) -> &mut tern_telemetry::TracingConfig;
    /// Checks what can be checked before binding; the error is the whole message.
    fn validate(&self) -> Result<(), String>;
    /// Work before the runtime starts (tern-node loads ONNX Runtime); an error exits with 1.
    fn prepare(&self) -> Result<(), String> {
        Ok(())
    }
    /// The client-facing gRPC address [`run_main`] binds.
    fn grpc_addr(&self) -> SocketAddr;
    /// Serves on `listener` until `shutdown`, then drains.
    fn serve(self, listener: TcpListener, shutdown: Shutdown) -> impl Future<Output = anyhow::Result<()>>;
}

/// A binary's `main`: `tern_edge::main!(Config::parse())` runs [`run_main`] with the error
/// lines logged from the binary's own crate, so they keep its log target (`tern_node`, ...).
#[macro_export]
macro_rules! main {
    ($config:expr) => {
        $crate::process::run_main($config, |message| $crate::process::tracing::error!("{message}"))
    };
}

#[doc(hidden)]
pub use ::tracing;

/// Runs `config`'s server to its exit code (see the module's header for the codes); `error`
/// logs a line (see [`main!`](crate::main!)).
pub fn run_main<S: Server>(mut config: S, error: fn(&str)) -> ExitCode {
    config.tracing().service_name = S::NAME.into();
    let _tracing = match tern_telemetry::init_tracing(config.tracing()) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("{}: {e}", S::NAME);
            return ExitCode::from(2);
        }
    };
    if let Err(e) = config.validate() {
        error(&format!("invalid configuration: {e}"));
        return ExitCode::from(2);
    }
    if let Err(e) = config.prepare() {
        error(&e);
        return ExitCode::from(1);
    }
    let runtime = match S::RUNTIME.build() {
        Ok(rt) => rt,
        Err(e) => {
            error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let listener = bind_grpc(config.grpc_addr()).await?;
        config.serve(listener, Box::pin(shutdown_signal())).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error(&format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}

/// Binds a server's gRPC address, naming it when that fails.
pub async fn bind_grpc(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot bind gRPC address {addr}: {e}"))
}
