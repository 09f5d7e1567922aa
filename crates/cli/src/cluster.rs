//! `tern cluster`: what a router knows about its nodes (the Membership.ClusterStatus RPC, on
//! the router's control-plane port).

// `tern cluster`'s flags (a plain comment: a doc comment would replace the subcommand's about).
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The router's control-plane address (its --cluster-port).
    #[arg(long, default_value = "127.0.0.1:8003")]
    url: String,
    /// File holding a token the router's --cluster-token-file grants the `cluster` group.
    #[arg(long, value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    tls: tern_edge::ClientTlsArgs<ControlPlane>,
}

/// The client TLS flags toward a router's control plane (`--tls-*`).
#[derive(Debug)]
pub struct ControlPlane;

impl tern_edge::ClientTlsPeer for ControlPlane {
    const FLAGS: tern_edge::ClientTlsFlags = tern_edge::ClientTlsFlags {
        ca: tern_edge::Flag {
            long: "tls-ca",
            help: "Connect over TLS, verifying the router with this PEM CA",
        },
        cert: tern_edge::Flag {
            long: "tls-cert",
            help: "Client certificate (PEM) for a router that requires mutual TLS (--cluster-tls-ca)",
        },
        key: tern_edge::Flag { long: "tls-key", help: "Private key (PEM) of --tls-cert" },
        domain: None,
    };
}

pub fn main(args: ClusterArgs) -> std::process::ExitCode {
    let rt = match tern_edge::server_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(print_cluster(&args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern cluster: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn print_cluster(args: &ClusterArgs) -> anyhow::Result<()> {
    use tern_proto::cluster::{ClusterStatusRequest, membership_client::MembershipClient};
    let url = &args.url;
    let credential = match &args.token_file {
        Some(path) => tern_edge::Credential::from_file(path).map_err(anyhow::Error::msg)?,
        None => tern_edge::Credential::none(),
    };
    let client_tls = args.tls.config().map_err(anyhow::Error::msg)?;
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
