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
    #[arg(long, value_enum, default_value_t = tern_lifecycle::ControlMode::None)]
    pub model_control_mode: tern_lifecycle::ControlMode,

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

    /// Directory for TensorRT engine and timing caches and EP context models: each model gets
    /// `DIR/<model name>`, where relative accelerator paths resolve. Without it, accelerator
    /// paths may only point into the model's own directory (see docs/security.md).
    #[arg(long, value_name = "DIR")]
    pub accelerator_cache_dir: Option<PathBuf>,

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

    /// Router control plane to register with and send heartbeats to, host:port of its
    /// --cluster-port (repeatable). The router accepts only nodes presenting --router-token-file
    /// (a token with the `cluster` group) or a --router-tls-cert of its cluster CA. Routers can
    /// also find nodes by themselves (`tern-router --node` / `--node-dns`).
    #[arg(long = "router-address", value_name = "HOST:PORT")]
    pub router_addresses: Vec<String>,

    /// host:port routers should use to reach this node. Default: the gRPC address, or for a
    /// wildcard bind (0.0.0.0) the local address this host uses to reach the router.
    #[arg(long, env = "TERN_ADVERTISE_ADDRESS", value_name = "HOST:PORT")]
    pub advertise_address: Option<String>,

    /// This node's name in the cluster (the pod name on Kubernetes). Default: its address.
    #[arg(long, env = "TERN_NODE_ID")]
    pub node_id: Option<String>,

    /// Memory for models, MiB, that routers may fill by placement (0: no budget). Routers
    /// evict the least recently used idle model when a node goes over it.
    #[arg(long, default_value_t = 0, value_name = "MIB")]
    pub model_memory_budget_mb: u64,

    /// Milliseconds between heartbeats to each --router-address.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub heartbeat_interval_ms: u64,

    #[command(flatten)]
    pub router_tls: tern_edge::ClientTlsArgs<Routers>,

    /// File holding the token this node presents to --router-address routers (one their
    /// --cluster-token-file grants the `cluster` group); re-read when it changes.
    #[arg(long, value_name = "PATH")]
    pub router_token_file: Option<PathBuf>,

    #[command(flatten)]
    pub auth: tern_edge::AuthArgs,

    #[command(flatten)]
    pub model_key: tern_lifecycle::ModelKeyConfig,

    #[command(flatten)]
    pub limits: crate::request_limits::LimitsConfig,

    #[command(flatten)]
    pub tls: tern_edge::tls::TlsArgs,

    #[command(flatten)]
    pub http: tern_rest::HttpArgs,

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
        self.http.validate()?;
        if let Some(dir) = self.accelerator_cache_dir.as_ref().filter(|d| !d.is_dir()) {
            return Err(format!("--accelerator-cache-dir {}: not a directory", dir.display()));
        }
        if self.repository_poll_secs == 0 {
            return Err("--repository-poll-secs must be at least 1".into());
        }
        if !self.load_models.is_empty() && self.model_control_mode != tern_lifecycle::ControlMode::Explicit {
            return Err("--load-model needs --model-control-mode=explicit".into());
        }
        if self.heartbeat_interval_ms == 0 {
            return Err("--heartbeat-interval-ms must be at least 1".into());
        }
        for router in &self.router_addresses {
            if router.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(format!("--router-address {router}: expected host:port"));
            }
        }
        if self.model_load_thread_count == 0 {
            return Err("--model-load-thread-count must be at least 1".into());
        }
        self.limits.validate()?;
        self.router_tls()?;
        self.auth.validate()?;
        self.model_key.load()?;
        Ok(())
    }

    /// TLS toward routers, from --router-tls-*.
    pub fn router_tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
        self.router_tls.config()
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.grpc_address, self.grpc_port)
    }
}

/// The node's client TLS flags toward --router-address routers (`--router-tls-*`).
#[derive(Debug, Clone, Copy)]
pub struct Routers;

impl tern_edge::ClientTlsPeer for Routers {
    const FLAGS: tern_edge::ClientTlsFlags = tern_edge::ClientTlsFlags {
        ca: tern_edge::Flag {
            long: "router-tls-ca",
            help: "Register with --router-address routers over TLS, verifying them with this PEM CA",
        },
        cert: tern_edge::Flag {
            long: "router-tls-cert",
            help: "Client certificate (PEM) presented to routers that require mutual TLS",
        },
        key: tern_edge::Flag { long: "router-tls-key", help: "Private key (PEM) of --router-tls-cert" },
        domain: Some(tern_edge::Flag {
            long: "router-tls-domain",
            help: "Name to verify in router certificates instead of the host of --router-address",
        }),
    };
}
