//! `tern serve`: a router and a node in one process, serving a model repository with
//! tern-node's (Triton's) flags. Clients talk to the router on --grpc-port; the node listens on
//! a private loopback port. /metrics on --metrics-port has both (Triton's families and
//! `tern_router_*`).

use std::sync::Arc;
use std::time::Duration;

/// `tern serve`'s process: [`tern_edge::main!`] with tern-node's flags.
#[derive(Debug)]
pub struct Serve(pub tern_node::Config);

impl tern_edge::Server for Serve {
    const NAME: &'static str = "tern";
    const RUNTIME: tern_edge::Runtime = tern_edge::Runtime::Batching;

    fn tracing(&mut self) -> &mut tern_telemetry::TracingConfig {
        &mut self.0.tracing
    }

    fn validate(&self) -> Result<(), String> {
        self.0.validate()
    }

    fn prepare(&self) -> Result<(), String> {
        // Logged here rather than by tern_node::load_onnxruntime: `tern`'s lines keep the
        // target `tern`, as before the subcommands moved into modules.
        let info =
            tern_backend_ort::init_runtime(self.0.onnxruntime_lib.as_deref()).map_err(|e| e.to_string())?;
        tracing::info!(target: "tern", onnxruntime = ?info, "ONNX Runtime loaded");
        Ok(())
    }

    fn grpc_addr(&self) -> std::net::SocketAddr {
        self.0.grpc_addr()
    }

    async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: tern_edge::process::Shutdown,
    ) -> anyhow::Result<()> {
        serve(self.0, listener, shutdown).await
    }
}

/// The router faces clients; the node behind it on a private loopback port. On SIGTERM the
/// router stops first (finishing its in-flight requests on the node), then the node.
async fn serve(
    mut config: tern_node::Config,
    public: tokio::net::TcpListener,
    shutdown: tern_edge::process::Shutdown,
) -> anyhow::Result<()> {
    // With tokens on, the router presents an in-memory token to the node behind it, which
    // accepts it besides the token file's.
    let mut node_credential = tern_edge::Credential::none();
    if config.auth.auth_token_file.is_some() {
        let internal = tern_edge::InternalToken::generate().map_err(anyhow::Error::msg)?;
        node_credential = internal.credential().map_err(anyhow::Error::msg)?;
        config.auth.internal = Some(internal);
    }
    let front = tern_edge::FrontDoor {
        // TLS is for clients, on the router's port; the node behind it is on private loopback.
        tls: config.tls.server().map_err(anyhow::Error::msg)?,
        auth: tern_edge::AuthLayer { auth: config.auth.authenticator().map_err(anyhow::Error::msg)? },
        limits: config.limits.transport.clone(),
    };
    let private = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the node's loopback port: {e}"))?;
    let node_addr = private.local_addr()?.to_string();
    let metrics = Arc::new(tern_telemetry::Metrics::new(&config.metrics)?);
    // One registry of client shared-memory regions: the router resolves ModelInfer's, the
    // node ModelStreamInfer's (relayed as bytes).
    let shm = config.client_shm.registry();
    config.client_shm.shared = Some(shm.clone());
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
        shm,
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
    node_config.tls = tern_edge::tls::TlsArgs {
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
    let http = tern_rest::HttpEndpoint::start(&config.http, router.inference_service(), (&front).into())
        .await
        .map_err(anyhow::Error::msg)?;
    tracing::info!(target: "tern", node = %node_addr, "tern ready grpc={} http={} metrics={metrics_addr}", public.local_addr()?, http.addr);
    router.serve(public, front, shutdown, exit_timeout).await?;
    http.stop().await;
    let _ = node_stop_tx.send(());
    match node.await {
        Ok(result) => result?,
        Err(e) => anyhow::bail!("the node task failed: {e}"),
    }
    tracing::info!(target: "tern", "tern stopped");
    Ok(())
}
