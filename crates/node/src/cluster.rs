//! The node's side of the cluster control plane (proto/tern/cluster/v1): the `NodeControl`
//! service routers poll, and the agent that registers with each `--router-address` and sends
//! heartbeats. Both report the same [`NodeStatus`]: models and states, load, memory.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tern_core::ModelState;
use tern_lifecycle::ControlMode;
use tern_proto::cluster::{
    self as pb, NodeStatus, membership_client::MembershipClient, node_control_server::NodeControl,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::service::NodeState;

/// How this node presents itself to routers.
#[derive(Debug, Clone)]
pub struct ClusterIdentity {
    /// `--node-id`; `None`: the advertised address.
    pub node_id: Option<String>,
    /// `--advertise-address`; `None`: derived from the bound address (see [`advertise_for`]).
    pub advertise: Option<String>,
    /// Where the gRPC server is bound.
    pub bound: SocketAddr,
    /// `--model-memory-budget-mb` in bytes; 0: none.
    pub memory_budget_bytes: u64,
    /// The session secrets of this node's registrations, one per router.
    pub sessions: Arc<Sessions>,
}

/// The secrets this node sent with its registrations (RegisterRequest.session). A router
/// confirms a registration by asking the node at the registered address whether the secret is
/// its own, so nobody can register an address in this node's name.
#[derive(Debug, Default)]
pub struct Sessions(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl Sessions {
    /// A fresh secret for the registration with `router`, replacing the previous one.
    fn renew(&self, router: &str) -> Result<String, String> {
        let secret = tern_edge::new_token()?;
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(router.to_string(), secret.clone());
        Ok(secret)
    }

    /// True when `secret` is the current session of one of this node's registrations.
    fn confirms(&self, secret: &str) -> bool {
        !secret.is_empty()
            && self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().any(|s| s == secret)
    }
}

/// The node's status now, as routers see it.
pub fn node_status(state: &NodeState, identity: &ClusterIdentity, advertised: &str) -> NodeStatus {
    let ready = state.models.all_ready_models();
    // Draining (SIGTERM, finishing what is in flight): every version is reported UNLOADING, so
    // routers stop sending requests and placing models here while the node can still answer.
    let draining = state.models.draining();
    let mut models: Vec<pb::ModelReplica> = state
        .models
        .index()
        .into_iter()
        .map(|row| pb::ModelReplica {
            name: row.name,
            version: row.version,
            state: if draining && row.state == Some(ModelState::Ready) {
                ModelState::Unloading.as_str().into()
            } else {
                row.state.map_or("", ModelState::as_str).to_string()
            },
            reason: if draining { "the node is shutting down".into() } else { row.reason },
            memory_bytes: 0,
            in_flight: 0,
            last_inference_ms: 0,
            composing_models: Vec::new(),
        })
        .collect();
    let mut queue_depth = 0;
    let mut memory_used = 0;
    for model in &ready {
        let stats = model.scheduler.stats().snapshot();
        let pending = stats.pending;
        queue_depth += pending;
        memory_used += model.memory_bytes;
        if let Some(row) = models.iter_mut().find(|r| r.name == model.name && r.version == model.version_str)
        {
            row.memory_bytes = model.memory_bytes;
            row.in_flight = pending;
            row.last_inference_ms = stats.last_inference_ms;
            if let Some(graph) = &model.ensemble {
                row.composing_models = graph.models().into_iter().map(str::to_owned).collect();
            }
        }
    }
    NodeStatus {
        node_id: identity.node_id.clone().unwrap_or_else(|| advertised.to_string()),
        grpc_address: advertised.to_string(),
        models,
        queue_depth,
        in_flight: state.in_flight.load(Ordering::Relaxed),
        memory_used_bytes: memory_used,
        memory_budget_bytes: identity.memory_budget_bytes,
        explicit_model_control: state.control_mode == ControlMode::Explicit,
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        ready: state.models.server_ready(state.strict_readiness),
        instance: instance().to_string(),
        sequence: STATUS_SEQUENCE.fetch_add(1, Ordering::Relaxed) + 1,
        session_confirmed: false,
    }
}

/// Orders this process's statuses (see NodeStatus.sequence).
static STATUS_SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// This process among restarts of the same node: its pid and start time.
fn instance() -> &'static str {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| {
        let started =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        format!("{}-{started}", std::process::id())
    })
}

/// The address a router at `router` should use for this node: `--advertise-address`, else the
/// bound address, else (bound to a wildcard such as 0.0.0.0) the local address this host uses
/// to reach the router — found by connecting a UDP socket, which sends nothing.
pub async fn advertise_for(identity: &ClusterIdentity, router: &str) -> Result<String, String> {
    if let Some(a) = &identity.advertise {
        return Ok(a.clone());
    }
    if !identity.bound.ip().is_unspecified() {
        return Ok(identity.bound.to_string());
    }
    let router_addr = tokio::net::lookup_host(router)
        .await
        .map_err(|e| format!("cannot resolve router {router}: {e}"))?
        .next()
        .ok_or_else(|| format!("router {router} resolves to no address"))?;
    let local = if router_addr.ip().is_loopback() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        let probe = std::net::UdpSocket::bind(SocketAddr::new(identity.bound.ip(), 0))
            .and_then(|s| s.connect(router_addr).and_then(|()| s.local_addr()))
            .map_err(|e| format!("cannot find a local address toward router {router}: {e}"))?;
        probe.ip()
    };
    Ok(SocketAddr::new(local, identity.bound.port()).to_string())
}

/// `NodeControl`: routers that found this node by list or DNS poll it.
pub struct NodeControlService {
    pub state: Arc<NodeState>,
    pub identity: ClusterIdentity,
}

#[tonic::async_trait]
impl NodeControl for NodeControlService {
    async fn status(&self, req: Request<pb::NodeStatusRequest>) -> Result<Response<NodeStatus>, Status> {
        // The address the router dialled is the one it knows us by.
        let advertised = match (&self.identity.advertise, req.local_addr()) {
            (Some(a), _) => a.clone(),
            (None, Some(local)) => SocketAddr::new(local.ip(), self.identity.bound.port()).to_string(),
            (None, None) => self.identity.bound.to_string(),
        };
        let mut status = node_status(&self.state, &self.identity, &advertised);
        status.session_confirmed = self.identity.sessions.confirms(&req.get_ref().confirm_session);
        Ok(Response::new(status))
    }
}

/// Registers with `router` and sends a heartbeat every `interval` until the task is aborted.
/// Router outages are logged once per change and retried at the same pace.
pub async fn heartbeat_agent(
    router: String,
    state: Arc<NodeState>,
    identity: ClusterIdentity,
    interval: Duration,
    credential: tern_edge::Credential,
    tls: Option<tonic::transport::ClientTlsConfig>,
) {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{router}")).and_then(|e| match tls {
        Some(tls) => e.tls_config(tls),
        None => Ok(e),
    });
    let endpoint = match endpoint {
        Ok(e) => e.connect_timeout(Duration::from_secs(1)).timeout(Duration::from_secs(2)).tcp_nodelay(true),
        Err(e) => {
            tracing::error!(%router, error = %e, "invalid --router-address or --router-tls-*; not registering there");
            return;
        }
    };
    let mut client = MembershipClient::with_interceptor(endpoint.connect_lazy(), credential);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut registered = false;
    let mut reachable = true;
    let mut advertised: Option<String> = None;
    let mut session = String::new();
    loop {
        ticks.tick().await;
        if advertised.is_none() {
            match advertise_for(&identity, &router).await {
                Ok(a) => advertised = Some(a),
                Err(e) => {
                    if reachable {
                        tracing::warn!(%router, error = %e, "cannot register with router; retrying");
                        reachable = false;
                    }
                    continue;
                }
            }
        }
        let Some(addr) = advertised.as_deref() else { continue };
        let status = node_status(&state, &identity, addr);
        if !registered {
            // A new secret for each registration: the router confirms it with this node.
            session = match identity.sessions.renew(&router) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(%router, error = %e, "cannot make a registration secret; retrying");
                    continue;
                }
            };
        }
        let result = beat(&mut client, status, &session, registered).await;
        match result {
            Ok(known) => {
                if !registered {
                    tracing::info!(%router, advertised = addr, "registered with router");
                }
                if !reachable {
                    tracing::info!(%router, "router reachable again");
                    reachable = true;
                }
                registered = known;
            }
            Err(e) => {
                if reachable {
                    match e.code() {
                        tonic::Code::Unimplemented => tracing::error!(
                            %router,
                            "the router does not serve node registration at this address: point \
                             --router-address at its control-plane port (tern-router --cluster-port)"
                        ),
                        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => tracing::error!(
                            %router, error = %e.message(),
                            "the router refused this node: it needs --router-token-file with a token \
                             of the `cluster` group, or a --router-tls-cert its --cluster-tls-ca signed"
                        ),
                        _ => {
                            tracing::warn!(%router, error = %e.message(), "router unreachable or registration refused; retrying every heartbeat")
                        }
                    }
                    reachable = false;
                }
                registered = false;
            }
        }
    }
}

/// One register or heartbeat call; `Ok(false)`: the router forgot us (register next time).
async fn beat(
    client: &mut MembershipClient<InterceptedService<Channel, tern_edge::Credential>>,
    status: NodeStatus,
    session: &str,
    registered: bool,
) -> Result<bool, Status> {
    let session = session.to_string();
    if registered {
        let reply = client.heartbeat(pb::HeartbeatRequest { status: Some(status), session }).await?;
        Ok(reply.into_inner().known)
    } else {
        client.register(pb::RegisterRequest { status: Some(status), session }).await?;
        Ok(true)
    }
}
