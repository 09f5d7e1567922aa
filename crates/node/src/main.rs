//! The `tern-node` binary: parse and validate flags, set up logging, load ONNX Runtime, bind,
//! and serve until SIGTERM/SIGINT.

use clap::Parser;
use tern_node::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn init_logging(config: &Config) {
    let level = match config.log_verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // ONNX Runtime forwards hundreds of lines at info: keep the `ort` target at warn.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},ort=warn,h2=warn,tower=warn,hyper=warn")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    init_logging(&config);
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
