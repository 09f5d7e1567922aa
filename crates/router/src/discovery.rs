//! Finding nodes and keeping their status fresh: the Membership service registered nodes call,
//! and the loop that resolves --node-dns, polls static and DNS nodes, and expires the silent.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_proto::cluster::{self as pb, NodeStatus, membership_server::Membership};
use tern_proto::inference as ipb;
use tonic::{Code, Request, Response, Status};

use crate::error::ClientError;
use crate::nodes::{Cluster, Node, Registration, Source};

/// Registered nodes silent for this long are forgotten (they re-register when they return).
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// Asks `node` for its status: tern-node's NodeControl.Status, or for a server without it
/// (Triton itself) ServerReady plus the repository index.
pub async fn fetch_status(node: &Node, timeout: Duration) -> Result<NodeStatus, ClientError> {
    match node.client().node_status(pb::NodeStatusRequest::default(), timeout).await {
        Err(e) if e.code() == Code::Unimplemented => triton_status(node, timeout).await,
        other => other,
    }
}

async fn triton_status(node: &Node, timeout: Duration) -> Result<NodeStatus, ClientError> {
    let client = node.client();
    if !client.server_ready(timeout).await? {
        return Err(ClientError::unavailable(format!("node {} is not ready", node.addr)));
    }
    let index = ipb::RepositoryIndexRequest { repository_name: String::new(), ready: false };
    let models = client
        .repository_index(index, Some(timeout))
        .await?
        .models
        .into_iter()
        .map(|m| pb::ModelReplica {
            name: m.name,
            version: m.version,
            state: m.state,
            reason: m.reason,
            ..Default::default()
        })
        .collect();
    Ok(NodeStatus {
        node_id: node.addr.clone(),
        grpc_address: node.addr.clone(),
        models,
        ..Default::default()
    })
}

/// Polls `node` now and records the result (placement calls this right after a load).
pub async fn refresh(cluster: &Cluster, node: &Node) -> Result<(), ClientError> {
    let status = fetch_status(node, Duration::from_secs(2)).await?;
    cluster.record_status(node, status);
    Ok(())
}

/// Resolves `name:port` to socket addresses (as host:port strings).
async fn resolve(name: &str) -> Result<HashSet<String>, std::io::Error> {
    Ok(tokio::net::lookup_host(name).await?.map(|a| a.to_string()).collect())
}

/// The discovery loop: static nodes at start, DNS every `dns_refresh`, a status poll of every
/// non-registered node each `interval`, and the routing view rebuilt each round.
pub async fn run(
    cluster: Arc<Cluster>,
    static_nodes: Vec<String>,
    dns_names: Vec<String>,
    interval: Duration,
    dns_refresh: Duration,
) {
    for addr in &static_nodes {
        if let Err(e) = cluster.upsert(addr, Source::Static) {
            tracing::error!(node = %addr, error = %e, "ignoring --node");
        }
    }
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_dns: Option<Instant> = None;
    let poll_timeout = interval.mul_f32(0.8);
    loop {
        ticks.tick().await;
        if !dns_names.is_empty() && last_dns.is_none_or(|t| t.elapsed() >= dns_refresh) {
            last_dns = Some(Instant::now());
            refresh_dns(&cluster, &dns_names).await;
        }
        let nodes = cluster.nodes();
        let now = cluster.now_ms();
        let polls = nodes.iter().filter(|n| n.source != Source::Registered).map(|node| {
            let cluster = cluster.clone();
            async move {
                match fetch_status(node, poll_timeout).await {
                    Ok(status) => cluster.record_status(node, status),
                    Err(e) => {
                        if cluster.is_healthy(node, cluster.now_ms()) {
                            tracing::debug!(node = %node.addr, error = %e.message(), "status poll failed");
                        }
                    }
                }
            }
        });
        futures::future::join_all(polls).await;
        for node in nodes.iter().filter(|n| n.source == Source::Registered) {
            if now.saturating_sub(node.last_seen_ms()) > FORGET_AFTER.as_millis() as u64 {
                cluster.remove(&node.addr);
            }
        }
        if cluster.rebuild() {
            cluster.changed.notify_one();
            let view = cluster.view();
            tracing::info!(healthy = view.healthy.len(), known = nodes.len(), "healthy nodes changed");
        }
    }
}

async fn refresh_dns(cluster: &Cluster, names: &[String]) {
    let mut found = HashSet::new();
    for name in names {
        match resolve(name).await {
            Ok(addrs) => found.extend(addrs),
            Err(e) => {
                // Keep what we have: a DNS hiccup must not empty the cluster.
                tracing::warn!(%name, error = %e, "cannot resolve --node-dns; keeping the known nodes");
                return;
            }
        }
    }
    for addr in &found {
        if let Err(e) = cluster.upsert(addr, Source::Dns) {
            tracing::warn!(node = %addr, error = %e, "ignoring a resolved node address");
        }
    }
    for node in cluster.nodes().iter().filter(|n| n.source == Source::Dns && !found.contains(&n.addr)) {
        cluster.remove(&node.addr);
    }
}

/// How long the router waits for a registering node to answer its identity check.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(2);

/// Bounds of a registration's session secret (tern-node sends 43 characters: 256 bits).
const MIN_SESSION_LEN: usize = 16;
const MAX_SESSION_LEN: usize = 256;

/// The Membership service (on the control-plane listener, see [`crate::control`]): nodes
/// register and heartbeat; operators read the cluster's state.
///
/// A registration is believed only after the router has dialled the address it names and the
/// Tern node there confirmed the registration's session secret as its own: a caller cannot
/// point the router at an address it does not serve, nor register another node. A heartbeat
/// then updates a node only with that secret and from the same process (`instance`), so one
/// node cannot overwrite another's status.
pub struct MembershipService {
    pub cluster: Arc<Cluster>,
    pub router_id: String,
    pub heartbeat_interval: Duration,
    /// Where a registered node's record is published (etcd: under a lease its heartbeats keep).
    pub store: Arc<dyn crate::store::ClusterStore>,
}

impl MembershipService {
    /// The membership record of a registered node, as the cluster store keeps it.
    fn record(&self, node: &Node, status: &NodeStatus) -> crate::store::NodeRecord {
        let mut models: Vec<String> = status.models.iter().map(|m| m.name.clone()).collect();
        models.sort();
        models.dedup();
        crate::store::NodeRecord {
            node_id: status.node_id.clone(),
            address: node.addr.clone(),
            models,
            memory_budget_bytes: status.memory_budget_bytes,
            memory_used_bytes: status.memory_used_bytes,
            router: self.router_id.clone(),
        }
    }

    /// Checks that `claimed.grpc_address` answers NodeControl.Status as a Tern node that sent
    /// this registration (it confirms `session`); returns the status the node itself reported.
    async fn verify(&self, claimed: &NodeStatus, session: &str) -> Result<NodeStatus, Status> {
        let addr = &claimed.grpc_address;
        let probe = self
            .cluster
            .probe(addr)
            .map_err(|e| Status::invalid_argument(format!("status.grpc_address: {e}")))?;
        let request = pb::NodeStatusRequest { confirm_session: session.to_string() };
        let status = probe.client().node_status(request, VERIFY_TIMEOUT);
        let answered = match tokio::time::timeout(VERIFY_TIMEOUT, status).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                return Err(Status::failed_precondition(format!(
                    "registration refused: the router could not confirm a Tern node at {addr} \
                     (NodeControl.Status answered {:?}: {})",
                    e.code(),
                    e.message()
                )));
            }
            Err(_) => {
                return Err(Status::failed_precondition(format!(
                    "registration refused: the node at {addr} did not answer the router within {} ms",
                    VERIFY_TIMEOUT.as_millis()
                )));
            }
        };
        if !answered.session_confirmed {
            return Err(Status::permission_denied(format!(
                "registration refused: the node at {addr} did not send this registration"
            )));
        }
        // The router knows the node by the address it dialled, whatever the node calls it.
        Ok(NodeStatus { grpc_address: addr.clone(), session_confirmed: false, ..answered })
    }
}

#[tonic::async_trait]
impl Membership for MembershipService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = req.into_inner();
        let claimed = req.status.ok_or_else(|| Status::invalid_argument("missing field 'status'"))?;
        if claimed.grpc_address.is_empty() {
            return Err(Status::invalid_argument(
                "status.grpc_address is empty: the router cannot reach the node",
            ));
        }
        if req.session.len() < MIN_SESSION_LEN || req.session.len() > MAX_SESSION_LEN {
            return Err(Status::invalid_argument(format!(
                "session: expected a secret of {MIN_SESSION_LEN} to {MAX_SESSION_LEN} bytes (an older \
                 tern-node? nodes and routers must be the same version)"
            )));
        }
        let status = self.verify(&claimed, &req.session).await.inspect_err(|e| {
            tracing::warn!(node = %claimed.grpc_address, error = %e.message(), "node registration refused");
        })?;
        let node = self
            .cluster
            .upsert(&status.grpc_address, Source::Registered)
            .map_err(|e| Status::resource_exhausted(format!("registration refused: {e}")))?;
        node.set_registration(Registration { session: req.session, instance: status.instance.clone() });
        tracing::info!(node = %node.addr, node_id = %status.node_id, "node registered (identity confirmed)");
        self.store.node_alive(self.record(&node, &status));
        self.cluster.record_status(&node, status);
        Ok(Response::new(pb::RegisterResponse {
            router_id: self.router_id.clone(),
            heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u32,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = req.into_inner();
        let status = req.status.ok_or_else(|| Status::invalid_argument("missing field 'status'"))?;
        let Some(node) = self.cluster.get(&status.grpc_address) else {
            return Ok(Response::new(pb::HeartbeatResponse { known: false }));
        };
        if !node.heartbeat_matches(&req.session, &status.instance) {
            // Not the registration the router confirmed (another caller, or the node restarted):
            // the sender must register, which checks with the node again.
            tracing::debug!(node = %node.addr, "heartbeat without this node's session: ignored");
            return Ok(Response::new(pb::HeartbeatResponse { known: false }));
        }
        self.store.node_alive(self.record(&node, &status));
        self.cluster.record_status(&node, status);
        Ok(Response::new(pb::HeartbeatResponse { known: true }))
    }

    async fn cluster_status(
        &self,
        _: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let now = self.cluster.now_ms();
        let mut nodes: Vec<pb::NodeView> = self
            .cluster
            .nodes()
            .into_iter()
            .map(|n| pb::NodeView {
                status: n.status().map(|s| (*s).clone()),
                source: n.source.as_str().to_string(),
                healthy: self.cluster.is_healthy(&n, now),
                last_seen_ms: if n.last_seen_ms() == 0 { 0 } else { now.saturating_sub(n.last_seen_ms()) },
                outstanding: n.outstanding.load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect();
        nodes.sort_by(|a, b| {
            let addr =
                |v: &pb::NodeView| v.status.as_ref().map(|s| s.grpc_address.clone()).unwrap_or_default();
            addr(a).cmp(&addr(b))
        });
        Ok(Response::new(pb::ClusterStatusResponse { router_id: self.router_id.clone(), nodes }))
    }
}
