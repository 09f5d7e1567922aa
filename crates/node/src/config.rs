//! Command-line configuration, named as Triton's flags where the concept is the same, and
//! validated before any port is bound.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;

/// tern-node: serves a Triton-layout model repository of ONNX models over Triton's gRPC protocol.
#[derive(Debug, Clone, Parser)]
#[command(name = "tern-node", version, about)]
pub struct Config {
    /// Model repository directory (Triton layout). Repeat for several repositories.
    #[arg(long = "model-repository", required = true, value_name = "DIR")]
    pub model_repositories: Vec<PathBuf>,

    /// Address the gRPC server binds.
    #[arg(long, default_value = "0.0.0.0")]
    pub grpc_address: IpAddr,

    /// gRPC port (KServe v2 / Triton protocol). 0 picks a free port, logged at start.
    #[arg(long, default_value_t = 8001)]
    pub grpc_port: u16,

    /// How models are loaded: `none` (all at start), `poll` (all at start, then follow the
    /// repositories), `explicit` (`--load-model` at start, then the repository API).
    #[arg(long, value_enum, default_value_t = crate::manager::ControlMode::None)]
    pub model_control_mode: crate::manager::ControlMode,

    /// Seconds between repository polls in `poll` mode.
    #[arg(long, default_value_t = 15)]
    pub repository_poll_secs: u64,

    /// Model to load at start in `explicit` mode (repeatable; `*` loads every model).
    #[arg(long = "load-model", value_name = "NAME")]
    pub load_models: Vec<String>,

    /// Require a complete config.pbtxt for every model (no auto-complete from the model file).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub strict_model_config: bool,

    /// Report the server ready only when every model loaded (Triton's default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub strict_readiness: bool,

    /// Load models whose instance_group asks for GPUs on the CPU when no GPU (or no CUDA /
    /// TensorRT provider) is available, with a warning, instead of marking them unavailable.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub allow_cpu_fallback: bool,

    /// Name reported by ServerMetadata. Some clients written for Triton check for "triton".
    #[arg(long, default_value = "tern")]
    pub server_name: String,

    /// Path of libonnxruntime.so; defaults to the ORT_DYLIB_PATH environment variable.
    #[arg(long = "onnxruntime-lib", env = "ORT_DYLIB_PATH", value_name = "PATH")]
    pub onnxruntime_lib: Option<PathBuf>,

    /// Seconds to wait for in-flight requests after SIGTERM/SIGINT before exiting.
    #[arg(long, default_value_t = 30)]
    pub exit_timeout_secs: u64,

    /// How many models load at the same time at start.
    #[arg(long, default_value_t = 2)]
    pub model_load_thread_count: usize,

    #[command(flatten)]
    pub metrics: tern_telemetry::MetricsConfig,

    #[command(flatten)]
    pub tracing: tern_telemetry::TracingConfig,
}

impl Config {
    /// Checks what can be checked before binding: repositories exist and are directories.
    pub fn validate(&self) -> Result<(), String> {
        for repo in &self.model_repositories {
            if !repo.is_dir() {
                return Err(format!("--model-repository {}: not a directory", repo.display()));
            }
        }
        self.metrics.settings().map_err(|e| e.to_string())?;
        self.tracing.otlp().map_err(|e| e.to_string())?;
        if self.repository_poll_secs == 0 {
            return Err("--repository-poll-secs must be at least 1".into());
        }
        if !self.load_models.is_empty() && self.model_control_mode != crate::manager::ControlMode::Explicit {
            return Err("--load-model needs --model-control-mode=explicit".into());
        }
        if self.model_load_thread_count == 0 {
            return Err("--model-load-thread-count must be at least 1".into());
        }
        Ok(())
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.grpc_address, self.grpc_port)
    }
}
