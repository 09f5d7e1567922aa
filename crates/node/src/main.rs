//! The `tern-node` binary: parse and validate flags, set up logging, load ONNX Runtime, bind,
//! and serve until SIGTERM/SIGINT.

use clap::Parser;
use tern_node::config::Config;

fn main() -> std::process::ExitCode {
    let mut config = Config::parse();
    config.tracing.service_name = "tern-node".into();
    let _tracing = match tern_telemetry::init_tracing(&config.tracing) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("tern-node: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(e) = config.validate() {
        tracing::error!("invalid configuration: {e}");
        return std::process::ExitCode::from(2);
    }
    match tern_backend_ort::init_runtime(config.onnxruntime_lib.as_deref()) {
        Ok(info) => tracing::info!(onnxruntime = ?info, "ONNX Runtime loaded"),
        Err(e) => {
            tracing::error!("{e}");
            return std::process::ExitCode::from(1);
        }
    }
    let runtime = match tern_node::server_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let addr = config.grpc_addr();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind gRPC address {addr}: {e}"))?;
        tern_node::run(config, listener, tern_node::shutdown_signal()).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
