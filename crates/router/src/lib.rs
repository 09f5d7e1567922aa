//! tern-router: presents a cluster of tern-nodes as one server speaking Triton's gRPC protocol.
//!
//! Layout: [`config`] (flags), [`nodes`] (membership, health, the routing view),
//! [`discovery`] (registration, static and DNS nodes, status polls), [`control`] (the
//! control plane's own authenticated listener), [`placement`] (which node
//! loads which model), [`client`] (talking to a node, [`error`] its failures), [`retry`]
//! (replica choice and retries), [`forward`] (the inference path), [`relay`] (streams:
//! ModelStreamInfer, decoupled models, StreamOne), [`raw`] (inference messages as bytes), [`aggregate`] (cluster-wide statistics and index), [`service`] (the gRPC
//! services) and [`Router`], which composes them. The router never links ONNX Runtime.

pub mod aggregate;
pub mod client;
pub mod config;
pub mod control;
pub mod discovery;
pub mod error;
pub mod forward;
pub mod metrics;
pub mod nodes;
pub mod placement;
pub mod raw;
pub mod relay;
pub mod retry;
pub mod service;
mod shm;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{ClusterSettings, Config};
use discovery::MembershipService;
use forward::Forwarder;
use metrics::RouterMetrics;
use nodes::Cluster;
use placement::Placement;
use service::{InferenceRoutes, RouterState};

/// A running router: membership, placement and forwarding, ready to be served.
pub struct Router {
    state: Arc<RouterState>,
    settings: ClusterSettings,
    tasks: Vec<JoinHandle<()>>,
}

/// What the router's gRPC server checks before any work: TLS, tokens, transport limits.
pub use tern_edge::FrontDoor;

/// Where nodes come from besides registration.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub nodes: Vec<String>,
    pub node_dns: Vec<String>,
}

impl Router {
    /// Starts discovery, placement and housekeeping; registers the router's metric families
    /// into `registry`. Call inside a Tokio runtime.
    pub fn start(
        settings: ClusterSettings,
        server_name: String,
        discovery: Discovery,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Router> {
        Router::start_with_store(
            settings,
            server_name,
            discovery,
            registry,
            Arc::new(store::MemoryStore::default()),
        )
    }

    /// [`Router::start`] with the cluster's shared state in `store` (see [`store`]).
    pub fn start_with_store(
        settings: ClusterSettings,
        server_name: String,
        discovery: Discovery,
        registry: &prometheus::Registry,
        store: Arc<dyn store::ClusterStore>,
    ) -> anyhow::Result<Router> {
        let metrics = Arc::new(RouterMetrics::new(registry)?);
        let cluster = Arc::new(Cluster::new(
            settings.heartbeat_timeout,
            settings.upstream_connections,
            settings.node_tls.clone(),
            settings.node_credential.clone(),
            metrics.clone(),
        ));
        let placement = Arc::new(Placement::with_store(
            cluster.clone(),
            settings.clone(),
            metrics.clone(),
            store.clone(),
        ));
        let forwarder = Arc::new(Forwarder::new(cluster.clone(), placement.clone(), metrics.clone()));
        let state = Arc::new(RouterState {
            server_name,
            cluster: cluster.clone(),
            placement: placement.clone(),
            forwarder: forwarder.clone(),
            shm: settings.shm.clone(),
        });
        let mut tasks = vec![
            tokio::spawn(discovery::run(
                cluster.clone(),
                discovery.nodes,
                discovery.node_dns,
                settings.health_interval,
                settings.dns_refresh,
            )),
            tokio::spawn(placement.clone().run()),
            tokio::spawn(store::follow(store, placement, cluster.clone())),
        ];
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(5));
            loop {
                ticks.tick().await;
                forwarder.expire_sequences();
            }
        }));
        Ok(Router { state, settings, tasks })
    }

    /// True while a healthy node reports itself ready (ServerReady).
    pub fn ready(&self) -> bool {
        self.state.cluster.ready()
    }

    /// True once a node is healthy (serving, though perhaps with a failed model).
    pub fn serving(&self) -> bool {
        !self.state.cluster.view().healthy.is_empty()
    }

    /// A readiness check for /metrics' health hooks.
    pub fn readiness(&self) -> tern_telemetry::HealthCheck {
        let cluster = self.state.cluster.clone();
        Arc::new(move || cluster.ready())
    }

    /// The client-facing inference service, for the HTTP front end (tern-rest).
    pub fn inference_service(&self) -> service::RouterService {
        service::RouterService::new(self.state.clone())
    }

    /// The Membership service, for the control-plane listener ([`control::serve`]). The
    /// client port never serves it.
    pub fn membership(&self) -> MembershipService {
        MembershipService {
            cluster: self.state.cluster.clone(),
            router_id: self.settings.router_id.clone(),
            heartbeat_interval: self.settings.health_interval,
            store: self.state.placement.store().clone(),
        }
    }

    /// Serves the router's client-facing gRPC services (inference, health, reflection) on
    /// `listener` behind `front` until `shutdown`; in-flight requests then get `exit_timeout`.
    pub async fn serve(
        self,
        listener: TcpListener,
        front: FrontDoor,
        shutdown: impl Future<Output = ()> + Send + 'static,
        exit_timeout: Duration,
    ) -> anyhow::Result<()> {
        let inference = InferenceRoutes::new(self.state.clone(), front.limits.grpc_max_message_size);
        // Overall health ("") is liveness; the inference service's follows readiness.
        let (reporter, health) = tonic_health::server::health_reporter();
        let cluster = self.state.cluster.clone();
        let health_task = tokio::spawn(async move {
            let mut last = None;
            let mut ticks = tokio::time::interval(Duration::from_millis(500));
            loop {
                ticks.tick().await;
                let ready = cluster.ready();
                if last != Some(ready) {
                    let status = if ready {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    reporter.set_service_status("inference.GRPCInferenceService", status).await;
                    last = Some(ready);
                }
            }
        });
        let reflection = tern_edge::grpc::reflection()?;
        let reflection_v1alpha = tern_edge::grpc::reflection_v1alpha()?;

        let routes = front
            .server()
            .add_service(inference)
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_v1alpha);
        let before_close = |_deadline| async {
            tracing::info!("shutting down: no new connections, finishing in-flight requests");
        };
        tern_edge::grpc::serve(routes, listener, front.tls, shutdown, exit_timeout, before_close).await?;
        health_task.abort();
        for task in self.tasks {
            task.abort();
        }
        Ok(())
    }
}

/// tern-router's process: [`tern_edge::main!`] on tokio's default runtime.
impl tern_edge::Server for Config {
    const NAME: &'static str = "tern-router";
    const RUNTIME: tern_edge::Runtime = tern_edge::Runtime::Default;

    fn tracing(&mut self) -> &mut tern_telemetry::TracingConfig {
        &mut self.tracing
    }

    fn validate(&self) -> Result<(), String> {
        Config::validate(self)
    }

    fn grpc_addr(&self) -> std::net::SocketAddr {
        Config::grpc_addr(self)
    }

    async fn serve(
        self,
        listener: TcpListener,
        shutdown: tern_edge::process::Shutdown,
    ) -> anyhow::Result<()> {
        run(self, listener, shutdown).await
    }
}

/// tern-router's main: metrics endpoint, router, gRPC server, until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(tern_telemetry::Metrics::new(&config.metrics)?);
    let front = FrontDoor {
        tls: config.tls.server().map_err(anyhow::Error::msg)?,
        auth: tern_edge::AuthLayer { auth: config.auth.authenticator().map_err(anyhow::Error::msg)? },
        limits: config.limits.clone(),
    };
    let mut settings = config.cluster();
    settings.node_tls = config.node_tls().map_err(anyhow::Error::msg)?;
    settings.node_credential = config.node_credential().map_err(anyhow::Error::msg)?;
    let store = config.store.open(&settings.router_id).await.map_err(anyhow::Error::msg)?;
    let router = Router::start_with_store(
        settings,
        config.server_name.clone(),
        Discovery { nodes: config.nodes.clone(), node_dns: config.node_dns.clone() },
        metrics.registry(),
        store,
    )?;
    metrics.set_readiness(router.readiness());
    // The control plane on its own listener, bound before the client port is announced.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let control = match config.control.front().map_err(anyhow::Error::msg)? {
        Some(control_front) => {
            let addr = config.control.addr();
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot bind the control-plane address {addr}: {e}"))?;
            let bound = listener.local_addr()?;
            let mut stop = stop_rx.clone();
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let task = tokio::spawn(control::serve(listener, control_front, router.membership(), stopped));
            Some((bound.to_string(), task))
        }
        None => {
            tracing::info!(
                "control plane off: nodes cannot register (give --cluster-token-file or --cluster-tls-ca \
                 to let them); nodes come from --node and --node-dns"
            );
            None
        }
    };
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let metrics_endpoint = tern_edge::metrics_endpoint::MetricsEndpoint::start(
        &config.metrics,
        metrics.clone(),
        front.auth.clone(),
        &config.tls,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let metrics_addr = metrics_endpoint.addr.clone();
    // HTTP/REST (Triton's port 8000): the same service behind the same TLS, tokens and limits.
    let http = tern_rest::HttpEndpoint::start(&config.http, router.inference_service(), (&front).into())
        .await
        .map_err(anyhow::Error::msg)?;
    let http_addr = http.addr.clone();
    let addr = listener.local_addr()?;
    let cluster_addr = control.as_ref().map_or_else(|| "off".to_string(), |(a, _)| a.clone());
    tracing::info!(
        nodes = config.nodes.len(),
        node_dns = config.node_dns.len(),
        "tern-router ready grpc={addr} http={http_addr} metrics={metrics_addr} cluster={cluster_addr}"
    );
    router.serve(listener, front, shutdown, Duration::from_secs(config.exit_timeout_secs)).await?;
    if let Some((_, task)) = control {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "control plane stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "control-plane task failed"),
        }
    }
    http.stop().await;
    metrics_endpoint.stop().await;
    tracing::info!("tern-router stopped");
    Ok(())
}
