//! The `tern-router` binary: parse and validate flags, set up logging, bind, and serve until
//! SIGTERM/SIGINT.

use clap::Parser;
use tern_router::Config;

fn main() -> std::process::ExitCode {
    let mut config = Config::parse();
    config.tracing.service_name = "tern-router".into();
    let _tracing = match tern_telemetry::init_tracing(&config.tracing) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("tern-router: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(e) = config.validate() {
        tracing::error!("invalid configuration: {e}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
        tern_router::run(config, listener, tern_router::shutdown_signal()).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
