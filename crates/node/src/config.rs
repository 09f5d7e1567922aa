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

    /// Directory for ONNX Runtime's optimized graphs: the first load of a model saves its graph
    /// after optimization, later loads (restarts, reloads, more instances) open it without
    /// optimizing again. Keyed by the model files' SHA-256, the ONNX Runtime version, the
    /// optimization level and the CPU, so a changed model never reuses a stale graph. CPU
    /// sessions of repository models only: never encrypted or uploaded models (see
    /// docs/operations.md). Created if missing. Off by default.
    #[arg(long, value_name = "DIR")]
    pub model_cache_dir: Option<PathBuf>,

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

    /// Response cache, Triton's form `<cache name>,<setting>=<value>` (repeatable; settings of
    /// one cache merge): `--cache-config local,size=N` keeps up to N bytes of responses for
    /// models whose config has `response_cache { enable: true }`. Only `local` exists.
    #[arg(long = "cache-config", value_name = "NAME,KEY=VALUE")]
    pub cache_config: Vec<String>,

    /// Deprecated in Triton for `--cache-config local,size=N`, which it means.
    #[arg(long, value_name = "BYTES", hide = true)]
    pub response_cache_byte_size: Option<i64>,

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
    pub client_shm: tern_edge::triton::ClientShmArgs,

    #[command(flatten)]
    pub metrics: tern_telemetry::MetricsConfig,

    #[command(flatten)]
    pub tracing: tern_telemetry::TracingConfig,

    #[command(flatten)]
    pub triton: crate::triton_flags::TritonFlags,
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
        self.client_shm.validate()?;
        if let Some(dir) = self.accelerator_cache_dir.as_ref().filter(|d| !d.is_dir()) {
            return Err(format!("--accelerator-cache-dir {}: not a directory", dir.display()));
        }
        if let Some(dir) = &self.model_cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("--model-cache-dir {}: cannot create it: {e}", dir.display()))?;
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
        self.response_cache()?;
        self.triton.check()?;
        self.router_tls()?;
        self.auth.validate()?;
        self.model_key.load()?;
        Ok(())
    }

    /// TLS toward routers, from --router-tls-*.
    pub fn router_tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
        self.router_tls.config()
    }

    /// No auto-complete: --strict-model-config=true, or Triton's --disable-auto-complete-config.
    pub fn strict_model_config(&self) -> bool {
        self.strict_model_config || self.triton.disable_auto_complete_config
    }

    /// The response cache's size in bytes (`None`: no cache), and warnings to log, from
    /// `--cache-config` or Triton's deprecated `--response-cache-byte-size`, read as Triton's
    /// server reads them (server src/command_line_parser.cc, `ParseCacheConfigOption`; core
    /// src/server.cc: one cache only; local_cache src/local_cache.cc, `LocalCache::Create`).
    pub fn response_cache(&self) -> Result<(Option<u64>, Vec<String>), String> {
        let mut warnings = Vec::new();
        if let Some(size) = self.response_cache_byte_size {
            if !self.cache_config.is_empty() {
                return Err("Incompatible flags --response-cache-byte-size and --cache-config both \
                            provided. Please provide one or the other."
                    .into());
            }
            let size = u64::try_from(size)
                .map_err(|_| format!("--response-cache-byte-size {size}: must be a number of bytes >= 0"))?;
            warnings.push(format!(
                "'--response-cache-byte-size' has been deprecated! The equivalent --cache-config CLI \
                 args would be: '--cache-config=local,size={size}'"
            ));
            return Ok((Some(size), warnings));
        }
        let mut cache_name: Option<&str> = None;
        let mut settings: Vec<(&str, &str)> = Vec::new();
        for arg in &self.cache_config {
            let format =
                || format!("--cache-config option format is '<cache name>,<setting>=<value>'. Got {arg}");
            let (name, setting) = match arg.split_once(',') {
                Some((name, setting)) if !name.is_empty() => (name, setting),
                _ => {
                    return Err(format!(
                        "No cache specified. --cache-config option format is \
                         <cache name>,<setting>=<value>. Got {arg}"
                    ));
                }
            };
            let (key, value) = setting.split_once('=').ok_or_else(format)?;
            if key.is_empty() || value.is_empty() {
                return Err(format());
            }
            match cache_name {
                Some(seen) if seen != name => {
                    return Err("found multiple cache configurations, but only a single cache is \
                                currently supported"
                        .into());
                }
                _ => cache_name = Some(name),
            }
            settings.push((key, value));
        }
        let Some(name) = cache_name else { return Ok((None, warnings)) };
        if name != "local" {
            return Err(format!(
                "--cache-config {name}: Tern has only the 'local' cache (in the node's memory); \
                 Triton's other caches (such as 'redis') are not supported"
            ));
        }
        // Triton joins the settings into one JSON object, a later value replacing an earlier
        // one (server src/command_line_parser.cc, `PairsToJsonStr` with `SetStringObject`).
        let size = settings
            .iter()
            .rev()
            .find(|(k, _)| *k == "size")
            .map(|(_, v)| *v)
            .ok_or("Failed to initialize LocalCache: config didn't contain a valid 'size' field.")?;
        let size = size.parse::<u64>().map_err(|_| {
            format!("Failed to initialize LocalCache: 'size' {size:?} must be a number of bytes")
        })?;
        let mut ignored: Vec<&str> = settings.iter().map(|(k, _)| *k).filter(|k| *k != "size").collect();
        ignored.dedup();
        for key in ignored {
            warnings
                .push(format!("--cache-config local,{key}=...: not a setting of the local cache, ignored"));
        }
        Ok((Some(size), warnings))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(args: &[&str]) -> Result<(Option<u64>, Vec<String>), String> {
        let mut argv = vec!["tern-node", "--model-repository", "/tmp"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).map_err(|e| e.to_string())?.response_cache()
    }

    #[test]
    fn cache_config_reads_as_triton_reads_it() {
        assert_eq!(cache(&[]), Ok((None, vec![])));
        assert_eq!(cache(&["--cache-config", "local,size=1048576"]), Ok((Some(1 << 20), vec![])));
        assert_eq!(cache(&["--cache-config=local,size=10"]), Ok((Some(10), vec![])));
        // Repeated settings of one cache merge, a later value replacing an earlier one.
        let merged = cache(&[
            "--cache-config",
            "local,size=5",
            "--cache-config=local,other=x",
            "--cache-config=local,size=6",
        ]);
        assert_eq!(merged.map(|(s, w)| (s, w.len())), Ok((Some(6), 1)));
        assert_eq!(cache(&["--response-cache-byte-size", "7"]).map(|(s, _)| s), Ok(Some(7)));
        for (args, error) in [
            (&["--cache-config", "size=5"][..], "No cache specified. --cache-config option format is"),
            (
                &["--cache-config", "local,size"],
                "--cache-config option format is '<cache name>,<setting>=<value>'. Got local,size",
            ),
            (&["--cache-config", "local,size="], "option format is"),
            (&["--cache-config", "redis,host=x"], "Tern has only the 'local' cache"),
            (&["--cache-config", "local,size=1", "--cache-config", "redis,port=1"], "only a single cache"),
            (&["--cache-config", "local,max=1"], "didn't contain a valid 'size' field"),
            (&["--cache-config", "local,size=-1"], "must be a number of bytes"),
            (&["--cache-config", "local,size=1", "--response-cache-byte-size", "1"], "Incompatible flags"),
        ] {
            let got = cache(args).expect_err("refused");
            assert!(got.contains(error), "{args:?}: {got}");
        }
    }
}
