//! Command-line configuration of tern-router; flags shared with tern-node keep Triton's names.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Parser;

/// tern-router: presents a cluster of tern-nodes as one server speaking Triton's gRPC protocol.
#[derive(Debug, Clone, Parser)]
#[command(name = "tern-router", version, about)]
pub struct Config {
    /// Address the gRPC server binds.
    #[arg(long, default_value = "0.0.0.0")]
    pub grpc_address: IpAddr,

    /// gRPC port (KServe v2 / Triton protocol). 0 picks a free port, logged at start. The
    /// cluster's control plane has a listener of its own (--cluster-port).
    #[arg(long, default_value_t = 8001)]
    pub grpc_port: u16,

    /// A node's gRPC address, host:port (repeatable). Static nodes are polled for status.
    #[arg(long = "node", value_name = "HOST:PORT")]
    pub nodes: Vec<String>,

    /// A DNS name and port resolving to every node (a Kubernetes headless Service), re-resolved
    /// every --dns-refresh-secs (repeatable).
    #[arg(long = "node-dns", value_name = "NAME:PORT")]
    pub node_dns: Vec<String>,

    /// Seconds between DNS resolutions of --node-dns.
    #[arg(long, default_value_t = 5)]
    pub dns_refresh_secs: u64,

    /// Replicas of every model in use (nodes holding it READY).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,

    /// Replicas for one model, NAME=COUNT (repeatable); overrides --replicas.
    #[arg(long = "model-replicas", value_name = "NAME=COUNT", value_parser = parse_model_replicas)]
    pub model_replicas: Vec<(String, usize)>,

    /// Model to place at start and keep placed (repeatable).
    #[arg(long = "load-model", value_name = "NAME")]
    pub load_models: Vec<String>,

    /// Load a model that no node holds when a request for it arrives (the request waits up to
    /// --lazy-load-timeout-secs). Needs nodes in explicit model control mode.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub lazy_load: bool,

    /// How long a request may wait for its model to be loaded somewhere.
    #[arg(long, default_value_t = 120)]
    pub lazy_load_timeout_secs: u64,

    /// A model with no request for this long is idle: it may be evicted under memory pressure,
    /// and its replicas are no longer topped up.
    #[arg(long, default_value_t = 300)]
    pub idle_secs: u64,

    /// Milliseconds between status polls of static and DNS nodes (and the heartbeat interval
    /// asked of registered nodes).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub health_interval_ms: u64,

    /// A node not heard from for this long (no heartbeat, no successful poll) leaves the
    /// routing table.
    #[arg(long, default_value_t = 2500, value_name = "MS")]
    pub heartbeat_timeout_ms: u64,

    /// Further attempts on another replica after a node fails a request with UNAVAILABLE or a
    /// broken connection.
    #[arg(long, default_value_t = 2)]
    pub max_retries: usize,

    /// A sequence (`sequence_id`) with no request for this long releases its node.
    #[arg(long, default_value_t = 300)]
    pub sequence_idle_secs: u64,

    /// HTTP/2 connections to each node (requests are spread over them).
    #[arg(long, default_value_t = 2)]
    pub upstream_connections: usize,

    /// Name reported by ServerMetadata.
    #[arg(long, default_value = "tern")]
    pub server_name: String,

    /// This router's name, reported to nodes. Default: the host name.
    #[arg(long, env = "TERN_ROUTER_ID")]
    pub router_id: Option<String>,

    /// Seconds to wait for in-flight requests after SIGTERM/SIGINT before exiting.
    #[arg(long, default_value_t = 30)]
    pub exit_timeout_secs: u64,

    #[command(flatten)]
    pub node_tls: tern_edge::ClientTlsArgs<Nodes>,

    /// File holding the token the router presents to nodes that require bearer tokens (one
    /// with the groups the router uses: cluster, health, metadata, inference, model-config,
    /// model-repository, statistics); re-read when it changes.
    #[arg(long, value_name = "PATH")]
    pub node_token_file: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub control: crate::control::ControlPlaneArgs,

    #[command(flatten)]
    pub store: crate::store::StoreArgs,

    #[command(flatten)]
    pub auth: tern_edge::AuthArgs,

    #[command(flatten)]
    pub limits: tern_edge::transport_limits::TransportLimits,

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
}

/// The router's client TLS flags toward its nodes (`--node-tls-*`).
#[derive(Debug, Clone, Copy)]
pub struct Nodes;

impl tern_edge::ClientTlsPeer for Nodes {
    const FLAGS: tern_edge::ClientTlsFlags = tern_edge::ClientTlsFlags {
        ca: tern_edge::Flag {
            long: "node-tls-ca",
            help: "Connect to nodes over TLS, verifying their certificates with this PEM CA",
        },
        cert: tern_edge::Flag {
            long: "node-tls-cert",
            help: "Client certificate (PEM) the router presents to nodes that require mutual TLS",
        },
        key: tern_edge::Flag { long: "node-tls-key", help: "Private key (PEM) of --node-tls-cert" },
        domain: Some(tern_edge::Flag {
            long: "node-tls-domain",
            help: "Name to verify in node certificates instead of the host of each node's address",
        }),
    };
}

fn parse_model_replicas(s: &str) -> Result<(String, usize), String> {
    let (name, count) = s.split_once('=').ok_or_else(|| format!("'{s}': expected NAME=COUNT"))?;
    let count: usize = count.parse().map_err(|_| format!("'{s}': COUNT must be a whole number"))?;
    if name.is_empty() || count == 0 {
        return Err(format!("'{s}': expected a model name and a count of at least 1"));
    }
    Ok((name.to_string(), count))
}

fn has_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .and_then(|(host, p)| (!host.is_empty()).then(|| p.parse::<u16>().ok()))
        .flatten()
        .is_some()
}

impl Config {
    /// Checks what can be checked before binding.
    pub fn validate(&self) -> Result<(), String> {
        self.http.validate()?;
        self.client_shm.validate()?;
        self.metrics.settings().map_err(|e| e.to_string())?;
        self.tracing.otlp().map_err(|e| e.to_string())?;
        for node in &self.nodes {
            if !has_port(node) {
                return Err(format!("--node {node}: expected host:port"));
            }
        }
        for name in &self.node_dns {
            if !has_port(name) {
                return Err(format!("--node-dns {name}: expected name:port"));
            }
        }
        if self.replicas == 0 {
            return Err("--replicas must be at least 1".into());
        }
        if self.health_interval_ms == 0 || self.heartbeat_timeout_ms <= self.health_interval_ms {
            return Err("--heartbeat-timeout-ms must be longer than --health-interval-ms (> 0)".into());
        }
        if self.dns_refresh_secs == 0 || self.lazy_load_timeout_secs == 0 {
            return Err("--dns-refresh-secs and --lazy-load-timeout-secs must be at least 1".into());
        }
        self.node_tls()?;
        self.tls.server()?;
        self.tls.metrics_server()?;
        self.limits.validate()?;
        self.auth.validate()?;
        self.control.validate()?;
        self.store.validate()?;
        if self.upstream_connections == 0 {
            return Err("--upstream-connections must be at least 1".into());
        }
        Ok(())
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.grpc_address, self.grpc_port)
    }

    /// The token presented to nodes, from --node-token-file.
    pub fn node_credential(&self) -> Result<tern_edge::Credential, String> {
        match &self.node_token_file {
            Some(path) => {
                tern_edge::Credential::from_file(path).map_err(|e| format!("--node-token-file: {e}"))
            }
            None => Ok(tern_edge::Credential::none()),
        }
    }

    /// TLS toward nodes, from --node-tls-*.
    pub fn node_tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
        self.node_tls.config()
    }

    /// The cluster settings derived from the flags.
    pub fn cluster(&self) -> ClusterSettings {
        ClusterSettings {
            replicas: self.replicas,
            model_replicas: self.model_replicas.iter().cloned().collect(),
            pinned: self.load_models.clone(),
            lazy_load: self.lazy_load,
            lazy_load_timeout: Duration::from_secs(self.lazy_load_timeout_secs),
            idle: Duration::from_secs(self.idle_secs),
            health_interval: Duration::from_millis(self.health_interval_ms),
            heartbeat_timeout: Duration::from_millis(self.heartbeat_timeout_ms),
            dns_refresh: Duration::from_secs(self.dns_refresh_secs),
            max_retries: self.max_retries,
            sequence_idle: Duration::from_secs(self.sequence_idle_secs),
            upstream_connections: self.upstream_connections,
            router_id: self.router_id.clone().unwrap_or_else(default_router_id),
            index_holders: true,
            node_tls: None,
            node_credential: tern_edge::Credential::none(),
            shm: self.client_shm.registry(),
        }
    }
}

fn default_router_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "tern-router".to_string())
}

/// How the cluster is run, whatever binary runs it (tern-router, tern serve).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub replicas: usize,
    pub model_replicas: HashMap<String, usize>,
    pub pinned: Vec<String>,
    pub lazy_load: bool,
    pub lazy_load_timeout: Duration,
    pub idle: Duration,
    pub health_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub dns_refresh: Duration,
    pub max_retries: usize,
    pub sequence_idle: Duration,
    pub upstream_connections: usize,
    pub router_id: String,
    /// RepositoryIndex lists the nodes holding each READY model in its `reason` (a single-node
    /// `tern serve` leaves reasons as Triton's).
    pub index_holders: bool,
    /// TLS toward nodes (`https`), or plaintext.
    pub node_tls: Option<tonic::transport::ClientTlsConfig>,
    /// The token presented to nodes (`--node-token-file`).
    pub node_credential: tern_edge::Credential,
    /// Client shared-memory regions (`--allow-client-shm`), served by the router itself.
    pub shm: std::sync::Arc<tern_edge::triton::SystemShm>,
}

impl ClusterSettings {
    pub fn replicas_of(&self, model: &str) -> usize {
        self.model_replicas.get(model).copied().unwrap_or(self.replicas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_validate() {
        let c = Config::try_parse_from([
            "tern-router",
            "--node",
            "127.0.0.1:9001",
            "--node-dns",
            "tern-node.default.svc:8001",
            "--model-replicas",
            "light_resnet50=3",
        ])
        .expect("parse");
        c.validate().expect("valid");
        let s = c.cluster();
        assert_eq!(s.replicas_of("light_resnet50"), 3);
        assert_eq!(s.replicas_of("tiny_add"), 1);
        assert!(Config::try_parse_from(["tern-router", "--model-replicas", "x=0"]).is_err());
        let bad = Config::try_parse_from(["tern-router", "--node", "no-port"]).expect("parse");
        assert!(bad.validate().expect_err("no port").contains("--node no-port"));
    }
}
