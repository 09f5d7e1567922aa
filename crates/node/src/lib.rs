//! tern-node: loads a Triton-layout model repository and serves it over Triton's gRPC
//! protocol (KServe v2), with the standard gRPC health and reflection services beside it.
//!
//! Layout: [`config`] (flags, validated before binding), [`manager`] (the model table and
//! loading), [`service`] (the gRPC service), and [`run`] which composes them. The node owns no
//! protocol types (tern-proto), no codec (tern-core), no config parsing (tern-repository) and
//! no ONNX Runtime code (tern-backend-ort).

pub mod config;
pub mod manager;
pub mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tern_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;

pub use config::Config;
use manager::{LoadOptions, ModelManager};
use service::{NodeService, NodeState};

/// Triton accepts messages up to 2 GiB; a batch of images easily passes tonic's 4 MiB default.
const MAX_MESSAGE_SIZE: usize = i32::MAX as usize;

/// Loads the models, then serves on `listener` until `shutdown` resolves; in-flight requests
/// then get up to `config.exit_timeout_secs` to finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let models = ModelManager::load_all(
        &config.model_repositories,
        LoadOptions { strict_model_config: config.strict_model_config },
        config.model_load_thread_count,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let state = Arc::new(NodeState {
        server_name: config.server_name.clone(),
        models,
        strict_readiness: config.strict_readiness,
    });

    let inference = GrpcInferenceServiceServer::new(NodeService::new(state.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<GrpcInferenceServiceServer<NodeService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tern_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let addr = listener.local_addr()?;
    let ready_models =
        state.models.index().iter().filter(|(_, s)| matches!(s, manager::ModelState::Ready(_))).count();
    tracing::info!(models = ready_models, "tern-node ready grpc={addr}");

    // Stop accepting on the shutdown signal; then give in-flight work the grace period.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let exit_timeout = Duration::from_secs(config.exit_timeout_secs);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let _ = stop_tx.send(());
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(inference)
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        _ = async { let _ = stop_rx.await; tokio::time::sleep(exit_timeout).await } => {
            tracing::warn!(timeout_secs = config.exit_timeout_secs, "exit timeout reached with requests still in flight");
        }
    }
    state.models.clear();
    tracing::info!("tern-node stopped");
    Ok(())
}

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
