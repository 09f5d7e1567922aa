//! `tern`: the single-machine entry point and client commands.
//!
//! - `tern serve`: a router and a node in one process, serving a model repository with
//!   tern-node's (Triton's) flags. Clients talk to the router on --grpc-port; the node listens on
//!   a private loopback port. /metrics on --metrics-port has both (Triton's families and
//!   `tern_router_*`).
//! - `tern cluster`: what a router knows about its nodes (the Membership.ClusterStatus RPC, on
//!   the router's control-plane port).
//! - `tern model keygen|encrypt|decrypt`: encrypted model files at rest ([`model`]).
//! - `tern token new|hash`: bearer tokens and their token-file lines ([`token`]).

mod model;
mod token;

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tern", version, about = "Tern: Triton-compatible model serving, one machine or a cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a model repository on this machine: a router and a node in one process, with
    /// tern-node's flags (--model-repository, --grpc-port, --model-control-mode, ...).
    Serve(Box<tern_node::Config>),
    /// Print a router's view of the cluster: nodes, health, load and models.
    Cluster {
        /// The router's control-plane address (its --cluster-port).
        #[arg(long, default_value = "127.0.0.1:8003")]
        url: String,
        /// File holding a token the router's --cluster-token-file grants the `cluster` group.
        #[arg(long, value_name = "PATH")]
        token_file: Option<std::path::PathBuf>,
        /// Connect over TLS, verifying the router with this PEM CA.
        #[arg(long, value_name = "PEM")]
        tls_ca: Option<std::path::PathBuf>,
        /// Client certificate (PEM) for a router that requires mutual TLS (--cluster-tls-ca).
        #[arg(long, value_name = "PEM", requires = "tls_key")]
        tls_cert: Option<std::path::PathBuf>,
        /// Private key (PEM) of --tls-cert.
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_key: Option<std::path::PathBuf>,
    },
    /// Encrypted model files: make a key, encrypt `model.onnx` to `model.onnx.enc`, decrypt.
    Model {
        #[command(subcommand)]
        command: model::ModelCommand,
    },
    /// Bearer tokens: make a new one with its token-file line, or hash an existing one.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => serve_main(*config),
        Command::Cluster { url, token_file, tls_ca, tls_cert, tls_key } => {
            let tls = ClusterTls { ca: tls_ca, cert: tls_cert, key: tls_key };
            cluster_main(&url, token_file.as_deref(), &tls)
        }
        Command::Model { command } => model::main(command),
        Command::Token { command } => token::main(command),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, std::process::ExitCode> {
    tern_node::server_runtime().map_err(|e| {
        eprintln!("tern: cannot start the async runtime: {e}");
        std::process::ExitCode::from(1)
    })
}

fn serve_main(mut config: tern_node::Config) -> std::process::ExitCode {
    config.tracing.service_name = "tern".into();
    let _tracing = match tern_telemetry::init_tracing(&config.tracing) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("tern: {e}");
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
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(serve(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// The router faces clients; the node behind it on a private loopback port. On SIGTERM the
/// router stops first (finishing its in-flight requests on the node), then the node.
async fn serve(mut config: tern_node::Config) -> anyhow::Result<()> {
    // With tokens on, the router presents an in-memory token to the node behind it, which
    // accepts it besides the token file's.
    let mut node_credential = tern_gate::Credential::none();
    if config.auth.auth_token_file.is_some() {
        let internal = tern_gate::InternalToken::generate().map_err(anyhow::Error::msg)?;
        node_credential = internal.credential().map_err(anyhow::Error::msg)?;
        config.auth.internal = Some(internal);
    }
    let front = tern_router::FrontDoor {
        // TLS is for clients, on the router's port; the node behind it is on private loopback.
        tls: config.tls.server().map_err(anyhow::Error::msg)?,
        auth: tern_gate::AuthLayer { auth: config.auth.authenticator().map_err(anyhow::Error::msg)? },
        limits: config.limits.transport.clone(),
    };
    let public_addr = config.grpc_addr();
    let public = tokio::net::TcpListener::bind(public_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind gRPC address {public_addr}: {e}"))?;
    let private = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the node's loopback port: {e}"))?;
    let node_addr = private.local_addr()?.to_string();
    let metrics = Arc::new(tern_telemetry::Metrics::new(&config.metrics)?);
    let exit_timeout = Duration::from_secs(config.exit_timeout_secs);

    // One machine, one node: models stay where the node's control mode puts them (no lazy
    // loading, as with Triton), and a loopback status poll is cheap enough to do often.
    let settings = tern_router::ClusterSettings {
        replicas: 1,
        model_replicas: Default::default(),
        pinned: Vec::new(),
        lazy_load: false,
        lazy_load_timeout: Duration::from_secs(120),
        idle: Duration::from_secs(300),
        health_interval: Duration::from_millis(250),
        heartbeat_timeout: Duration::from_millis(1500),
        dns_refresh: Duration::from_secs(60),
        max_retries: 1,
        sequence_idle: Duration::from_secs(300),
        upstream_connections: 2,
        router_id: "tern-serve".into(),
        index_holders: false,
        node_tls: None,
        node_credential,
    };
    let router = tern_router::Router::start(
        settings,
        config.server_name.clone(),
        tern_router::Discovery { nodes: vec![node_addr.clone()], node_dns: Vec::new() },
        metrics.registry(),
    )?;

    let (node_stop_tx, node_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut node_config = config.clone();
    node_config.router_addresses.clear();
    // The router's HTTP port is the public one; the embedded node serves gRPC to it only.
    node_config.http.allow_http = false;
    // gRPC TLS is the router's (the clients' port); the node's metrics endpoint keeps
    // --metrics-use-ssl.
    node_config.tls = tern_tls::TlsArgs {
        metrics_use_ssl: config.tls.metrics_use_ssl,
        grpc_server_cert: config.tls.grpc_server_cert.clone(),
        grpc_server_key: config.tls.grpc_server_key.clone(),
        ..Default::default()
    };
    let node_metrics = metrics.clone();
    let mut node = tokio::spawn(async move {
        tern_node::run_with(
            node_config,
            private,
            async {
                let _ = node_stop_rx.await;
            },
            node_metrics,
            tern_node::Announce::Embedded,
        )
        .await
    });

    // Serving once the router routes to the node (the node loads its models first).
    let ready = async {
        while !router.serving() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        _ = ready => {}
        result = &mut node => {
            return match result {
                Ok(Ok(())) => Err(anyhow::anyhow!("the node stopped before serving")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("the node task failed: {e}")),
            };
        }
    }
    let metrics_addr =
        if config.metrics.allow_metrics { config.metrics.metrics_addr().to_string() } else { "off".into() };
    // HTTP/REST (Triton's port 8000): the router's service behind the same TLS, tokens and limits.
    let http = tern_rest::HttpEndpoint::start(
        &config.http,
        router.inference_service(),
        tern_rest::Front {
            tls: front.tls.clone(),
            auth: front.auth.auth.clone(),
            max_body: front.limits.grpc_max_message_size,
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    tracing::info!(node = %node_addr, "tern ready grpc={} http={} metrics={metrics_addr}", public.local_addr()?, http.addr);
    router.serve(public, front, tern_node::shutdown_signal(), exit_timeout).await?;
    http.stop().await;
    let _ = node_stop_tx.send(());
    match node.await {
        Ok(result) => result?,
        Err(e) => anyhow::bail!("the node task failed: {e}"),
    }
    tracing::info!("tern stopped");
    Ok(())
}

/// `tern cluster`'s TLS flags.
#[derive(Debug)]
struct ClusterTls {
    ca: Option<std::path::PathBuf>,
    cert: Option<std::path::PathBuf>,
    key: Option<std::path::PathBuf>,
}

fn cluster_main(url: &str, token_file: Option<&std::path::Path>, tls: &ClusterTls) -> std::process::ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(print_cluster(url, token_file, tls)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern cluster: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn print_cluster(
    url: &str,
    token_file: Option<&std::path::Path>,
    tls: &ClusterTls,
) -> anyhow::Result<()> {
    use tern_proto::cluster::{ClusterStatusRequest, membership_client::MembershipClient};
    let credential = match token_file {
        Some(path) => tern_gate::Credential::from_file(path).map_err(anyhow::Error::msg)?,
        None => tern_gate::Credential::none(),
    };
    let client_tls = match &tls.ca {
        Some(ca) => Some(
            tern_tls::client_config(ca, tls.cert.as_deref().zip(tls.key.as_deref()), None)
                .map_err(anyhow::Error::msg)?,
        ),
        None if tls.cert.is_some() => anyhow::bail!("--tls-cert needs --tls-ca"),
        None => None,
    };
    let scheme = if client_tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{url}"))?;
    if let Some(client_tls) = client_tls {
        endpoint = endpoint.tls_config(client_tls)?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow::anyhow!("cannot reach the router's control plane at {url} (its --cluster-port): {e}")
    })?;
    let mut client = MembershipClient::with_interceptor(channel, credential);
    let status = client.cluster_status(ClusterStatusRequest {}).await?.into_inner();
    println!("router {}: {} nodes", status.router_id, status.nodes.len());
    println!(
        "{:<24} {:<22} {:<10} {:>7} {:>11} {:>9} {:>12}  models",
        "node", "address", "source", "healthy", "outstanding", "seen ms", "memory MiB"
    );
    for n in status.nodes {
        let Some(s) = n.status else { continue };
        let mut models: Vec<String> = s
            .models
            .iter()
            .filter(|m| !m.state.is_empty())
            .map(|m| format!("{}:{} {}", m.name, m.version, m.state))
            .collect();
        models.sort();
        let budget = if s.memory_budget_bytes == 0 {
            "-".to_string()
        } else {
            (s.memory_budget_bytes >> 20).to_string()
        };
        println!(
            "{:<24} {:<22} {:<10} {:>7} {:>11} {:>9} {:>12}  {}",
            s.node_id,
            s.grpc_address,
            n.source,
            n.healthy,
            n.outstanding,
            n.last_seen_ms,
            format!("{}/{}", s.memory_used_bytes >> 20, budget),
            models.join(", ")
        );
    }
    Ok(())
}
