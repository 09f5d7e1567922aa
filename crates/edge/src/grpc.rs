//! The gRPC server every Tern server runs: transport limits, then the token check, in front
//! of the caller's services ([`FrontDoor::server`]), gRPC reflection ([`reflection`]), and
//! [`serve`]: plaintext or TLS, until shutdown, then a graceful drain bounded by the exit
//! timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tower_layer::{Identity, Stack};

use crate::auth::AuthLayer;
use crate::tls::rustls;
use crate::transport_limits::{LimitsLayer, TransportLimits};

/// What a gRPC server checks before any work: TLS, tokens, transport limits.
#[derive(Debug, Clone, Default)]
pub struct FrontDoor {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub auth: AuthLayer,
    pub limits: TransportLimits,
}

/// The layers of [`FrontDoor::server`], outermost first: limits, then authentication.
pub type FrontLayers = Stack<AuthLayer, Stack<LimitsLayer, Identity>>;
/// A server builder behind a [`FrontDoor`].
pub type GrpcServer = tonic::transport::Server<FrontLayers>;
/// Its routes, once the caller has added services.
pub type GrpcRoutes = tonic::transport::server::Router<FrontLayers>;

impl FrontDoor {
    /// A server builder with the limits' HTTP/2 settings and, in front of every service,
    /// the limits and then authentication: both before any work for the request.
    pub fn server(&self) -> GrpcServer {
        self.limits
            .apply(tonic::transport::Server::builder())
            .layer(self.limits.layer())
            .layer(self.auth.clone())
    }
}

/// gRPC reflection over Tern's protos (Triton's, the cluster's) and gRPC health.
pub fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::Error,
> {
    reflection_builder().build_v1()
}

/// The same under `grpc.reflection.v1alpha`, which Triton also serves (grpcurl before 1.9 and
/// several GUI clients ask only that one).
pub fn reflection_v1alpha() -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    reflection_builder().build_v1alpha()
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tern_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Serves `routes` on `listener` (over TLS with `tls`) until `shutdown` resolves. Then the
/// drain: `before_close(deadline)` runs while the server still serves (a server turns
/// not-ready there and waits for its requests, so routers and Kubernetes stop sending before
/// the listener closes); then no new connection is accepted and open ones finish, until
/// `deadline` (`exit_timeout` after the signal) bounds both together.
pub async fn serve<D>(
    routes: GrpcRoutes,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    exit_timeout: Duration,
    before_close: impl FnOnce(Instant) -> D + Send + 'static,
) -> Result<(), tonic::transport::Error>
where
    D: Future<Output = ()> + Send,
{
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Instant>();
    let signal = async move {
        shutdown.await;
        let deadline = Instant::now() + exit_timeout;
        before_close(deadline).await;
        let _ = stop_tx.send(deadline);
    };
    // Nagle's algorithm would hold small responses back ~40 ms; `Server::tcp_nodelay` does not
    // apply to an incoming stream we hand over, so set it on the accepted sockets (the TLS
    // accept loop does the same).
    let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls {
        Some(tls) => {
            Box::pin(routes.serve_with_incoming_shutdown(crate::tls::incoming(listener, tls), signal))
        }
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            Box::pin(routes.serve_with_incoming_shutdown(incoming, signal))
        }
    };
    tokio::select! {
        result = server => result?,
        _ = async {
            match stop_rx.await {
                Ok(deadline) => tokio::time::sleep_until(deadline).await,
                Err(_) => std::future::pending().await,
            }
        } => {
            tracing::warn!(timeout_secs = exit_timeout.as_secs(), "exit timeout reached with requests still in flight");
        }
    }
    Ok(())
}
