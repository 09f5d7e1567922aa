//! Membership: the nodes the router knows, their health and last status, and the routing view
//! (model -> nodes holding it READY) that the request path reads without locking.
//!
//! Health is time-based: a node is healthy while its last status (heartbeat or poll) is younger
//! than the heartbeat timeout and no request has found it unreachable since.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use dashmap::DashMap;
use tern_core::ModelState;
use tern_proto::cluster::NodeStatus;

use crate::client::NodeClient;
use crate::metrics::RouterMetrics;

/// Registered nodes a router keeps at most: registrations beyond it are refused.
pub const MAX_REGISTERED_NODES: usize = 1024;

/// How the router found a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The node registered itself and sends heartbeats.
    Registered,
    /// `--node`.
    Static,
    /// `--node-dns`.
    Dns,
    /// A node record in the cluster store (etcd): another router receives its heartbeats and
    /// keeps its lease; this router polls it like a static node until the record goes.
    Store,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Registered => "registered",
            Source::Static => "static",
            Source::Dns => "dns",
            Source::Store => "store",
        }
    }
}

/// One node: its connections, load and last status.
pub struct Node {
    /// host:port of the node's gRPC server: the node's key.
    pub addr: String,
    pub source: Source,
    client: NodeClient,
    /// Requests the router has outstanding on this node (the balancer's load signal).
    pub outstanding: AtomicU64,
    /// The same by model, while any is outstanding (queued or executing on the node): eviction
    /// spares a model this router has requests on. Entries leave at zero.
    per_model: DashMap<String, u64>,
    status: ArcSwapOption<NodeStatus>,
    /// Milliseconds since the cluster's epoch of the last status; 0: never heard from.
    last_seen_ms: AtomicU64,
    /// When a request last found the node unreachable (ms since epoch); 0: not suspect. A
    /// status received afterwards clears it.
    suspect_since_ms: AtomicU64,
    /// The verified registration of a registered node: heartbeats must match it.
    registration: ArcSwapOption<Registration>,
}

/// What a node's verified registration binds its heartbeats to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The secret the router issued (RegisterResponse.session).
    pub session: String,
    /// The node process the router found answering at the node's address.
    pub instance: String,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("addr", &self.addr).field("source", &self.source).finish_non_exhaustive()
    }
}

impl Node {
    fn new(
        addr: &str,
        source: Source,
        connections: usize,
        tls: Option<&tonic::transport::ClientTlsConfig>,
        credential: tern_edge::Credential,
    ) -> Result<Node, String> {
        let client = NodeClient::connect(addr, connections, tls, credential)?;
        Ok(Node {
            addr: addr.to_string(),
            source,
            client,
            outstanding: AtomicU64::new(0),
            per_model: DashMap::new(),
            status: ArcSwapOption::empty(),
            last_seen_ms: AtomicU64::new(0),
            suspect_since_ms: AtomicU64::new(0),
            registration: ArcSwapOption::empty(),
        })
    }

    /// Binds this node's heartbeats to a verified registration (replacing an earlier one).
    pub fn set_registration(&self, registration: Registration) {
        self.registration.store(Some(Arc::new(registration)));
    }

    /// True when a heartbeat with `session` from process `instance` belongs to this node's
    /// current registration.
    pub fn heartbeat_matches(&self, session: &str, instance: &str) -> bool {
        self.registration.load().as_ref().is_some_and(|r| {
            // Constant-time on the secret: its bytes must not leak through timing.
            constant_time_eq(r.session.as_bytes(), session.as_bytes()) && r.instance == instance
        })
    }

    /// The node's connections: what the router asks it.
    pub fn client(&self) -> &NodeClient {
        &self.client
    }

    pub fn status(&self) -> Option<Arc<NodeStatus>> {
        self.status.load_full()
    }

    /// The node's name: its `node_id`, or its address before it reported one.
    pub fn id(&self) -> String {
        self.status
            .load()
            .as_ref()
            .map(|s| s.node_id.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| self.addr.clone())
    }

    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    /// Counts a request for `model` as outstanding on this node while the guard lives.
    pub fn begin(self: &Arc<Self>, model: &str) -> Outstanding {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        match self.per_model.get_mut(model) {
            Some(mut n) => *n += 1,
            None => *self.per_model.entry(model.to_string()).or_insert(0) += 1,
        }
        Outstanding { node: self.clone(), model: model.to_string() }
    }

    /// Requests of this router for `model` outstanding on this node now.
    pub fn model_outstanding(&self, model: &str) -> u64 {
        self.per_model.get(model).map_or(0, |n| *n)
    }
}

/// See [`Node::begin`].
pub struct Outstanding {
    node: Arc<Node>,
    model: String,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.node.outstanding.fetch_sub(1, Ordering::Relaxed);
        if let Some(mut n) = self.node.per_model.get_mut(&self.model) {
            *n = n.saturating_sub(1);
        }
        self.node.per_model.remove_if(&self.model, |_, n| *n == 0);
    }
}

/// Where one model can be served.
#[derive(Debug, Default, Clone)]
pub struct ModelRoutes {
    /// Nodes with at least one READY version.
    pub ready: Vec<Arc<Node>>,
    /// READY nodes by version.
    pub versions: HashMap<String, Vec<Arc<Node>>>,
    /// Nodes loading it now.
    pub loading: Vec<Arc<Node>>,
}

/// A snapshot of the healthy part of the cluster, rebuilt on every change.
#[derive(Debug, Default)]
pub struct RoutingView {
    pub healthy: Vec<Arc<Node>>,
    pub models: HashMap<String, ModelRoutes>,
}

impl RoutingView {
    /// Nodes that serve `model` at `version` ("" for any).
    pub fn candidates(&self, model: &str, version: &str) -> &[Arc<Node>] {
        let Some(routes) = self.models.get(model) else { return &[] };
        if version.is_empty() {
            &routes.ready
        } else {
            routes.versions.get(version).map_or(&[], Vec::as_slice)
        }
    }
}

/// Every node the router knows, and the routing view over the healthy ones.
pub struct Cluster {
    epoch: Instant,
    heartbeat_timeout: Duration,
    upstream_connections: usize,
    tls: Option<tonic::transport::ClientTlsConfig>,
    credential: tern_edge::Credential,
    nodes: RwLock<HashMap<String, Arc<Node>>>,
    view: ArcSwap<RoutingView>,
    metrics: Arc<RouterMetrics>,
    /// Wakes the placement controller when the healthy set or a node's models change.
    pub changed: tokio::sync::Notify,
}

impl Cluster {
    pub fn new(
        heartbeat_timeout: Duration,
        upstream_connections: usize,
        tls: Option<tonic::transport::ClientTlsConfig>,
        credential: tern_edge::Credential,
        metrics: Arc<RouterMetrics>,
    ) -> Cluster {
        Cluster {
            epoch: Instant::now(),
            heartbeat_timeout,
            upstream_connections,
            tls,
            credential,
            nodes: RwLock::default(),
            view: ArcSwap::default(),
            metrics,
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Milliseconds since the router started (never 0, so 0 can mean "never").
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// ServerReady of the cluster: a healthy node reports itself ready.
    pub fn ready(&self) -> bool {
        self.view.load().healthy.iter().any(|n| n.status().is_some_and(|s| s.ready))
    }

    pub fn view(&self) -> Arc<RoutingView> {
        self.view.load_full()
    }

    /// True when a healthy node reports `model` (in any state): a model of the cluster.
    pub fn knows_model(&self, model: &str) -> bool {
        self.view.load().models.contains_key(model)
    }

    /// The `model` label of a per-model metric: the model when the cluster knows it, else ""
    /// (a name a client made up must not create a time series).
    pub fn metric_label<'a>(&self, model: &'a str) -> &'a str {
        if self.knows_model(model) { model } else { "" }
    }

    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    pub fn get(&self, addr: &str) -> Option<Arc<Node>> {
        self.nodes.read().unwrap_or_else(PoisonError::into_inner).get(addr).cloned()
    }

    /// A connection to `addr` that is not (yet) part of the cluster: the router checks that a
    /// registering address answers as the node it claims to be before adding it.
    pub fn probe(&self, addr: &str) -> Result<Node, String> {
        Node::new(addr, Source::Registered, 1, self.tls.as_ref(), self.credential.clone())
    }

    /// The node at `addr`, added if new. Registered nodes are capped at
    /// [`MAX_REGISTERED_NODES`].
    pub fn upsert(&self, addr: &str, source: Source) -> Result<Arc<Node>, String> {
        if let Some(n) = self.get(addr) {
            return Ok(n);
        }
        if source == Source::Registered {
            let registered = self
                .nodes
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .filter(|n| n.source == Source::Registered)
                .count();
            if registered >= MAX_REGISTERED_NODES {
                return Err(format!(
                    "the router already has {MAX_REGISTERED_NODES} registered nodes (the most it keeps)"
                ));
            }
        }
        let node = Arc::new(Node::new(
            addr,
            source,
            self.upstream_connections,
            self.tls.as_ref(),
            self.credential.clone(),
        )?);
        let mut nodes = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
        let node = nodes.entry(addr.to_string()).or_insert(node).clone();
        drop(nodes);
        tracing::info!(node = addr, source = source.as_str(), "node added");
        Ok(node)
    }

    pub fn remove(&self, addr: &str) {
        let removed = self.nodes.write().unwrap_or_else(PoisonError::into_inner).remove(addr);
        if removed.is_some() {
            tracing::info!(node = addr, "node removed");
            self.metrics.forget_node(addr);
            self.rebuild();
        }
    }

    pub fn is_healthy(&self, node: &Node, now_ms: u64) -> bool {
        let seen = node.last_seen_ms.load(Ordering::Relaxed);
        seen != 0
            && now_ms.saturating_sub(seen) <= self.heartbeat_timeout.as_millis() as u64
            && node.suspect_since_ms.load(Ordering::Relaxed) == 0
    }

    /// A fresh status from `node` (heartbeat or poll): it is alive, and holds these models.
    pub fn record_status(&self, node: &Node, status: NodeStatus) {
        let now = self.now_ms();
        let stale = node.status.load().as_ref().is_some_and(|old| {
            old.instance == status.instance && !status.instance.is_empty() && status.sequence < old.sequence
        });
        if stale {
            // Overtaken by a newer status of the same process: alive, but the models are old.
            node.last_seen_ms.store(now, Ordering::Relaxed);
            return;
        }
        let models_changed = node.status.load().as_ref().is_none_or(|old| !same_models(old, &status));
        let was_healthy = self.is_healthy(node, now);
        node.status.store(Some(Arc::new(status)));
        node.last_seen_ms.store(now, Ordering::Relaxed);
        let suspect = node.suspect_since_ms.load(Ordering::Relaxed);
        if suspect != 0 && suspect < now {
            node.suspect_since_ms.store(0, Ordering::Relaxed);
        }
        if !was_healthy {
            tracing::info!(node = %node.addr, "node healthy");
        }
        if models_changed || !was_healthy {
            self.rebuild();
            self.changed.notify_one();
        }
    }

    /// A request found `node` unreachable: route around it until it reports again.
    pub fn mark_suspect(&self, node: &Node, reason: &str) {
        if node.suspect_since_ms.swap(self.now_ms(), Ordering::Relaxed) == 0 {
            tracing::warn!(node = %node.addr, %reason, "node suspect: routing around it until it reports again");
            self.rebuild();
            self.changed.notify_one();
        }
    }

    /// Recomputes health and the routing view; true when the healthy set changed.
    pub fn rebuild(&self) -> bool {
        let now = self.now_ms();
        let mut nodes = self.nodes();
        nodes.sort_by(|a, b| a.addr.cmp(&b.addr));
        let mut view = RoutingView::default();
        for node in nodes {
            let healthy = self.is_healthy(&node, now);
            self.metrics.node_health(&node.addr, healthy, node.outstanding.load(Ordering::Relaxed));
            if !healthy {
                continue;
            }
            if let Some(status) = node.status() {
                for m in &status.models {
                    let routes = view.models.entry(m.name.clone()).or_default();
                    match ModelState::parse(&m.state) {
                        Some(ModelState::Ready) => {
                            if !routes.ready.iter().any(|n| Arc::ptr_eq(n, &node)) {
                                routes.ready.push(node.clone());
                            }
                            routes.versions.entry(m.version.clone()).or_default().push(node.clone());
                        }
                        Some(ModelState::Loading) => routes.loading.push(node.clone()),
                        _ => {}
                    }
                }
            }
            view.healthy.push(node);
        }
        let old = self.view.load();
        let changed = old.healthy.len() != view.healthy.len()
            || old.healthy.iter().zip(&view.healthy).any(|(a, b)| !Arc::ptr_eq(a, b));
        self.view.store(Arc::new(view));
        changed
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn same_models(a: &NodeStatus, b: &NodeStatus) -> bool {
    a.models.len() == b.models.len()
        && a.models
            .iter()
            .zip(&b.models)
            .all(|(x, y)| x.name == y.name && x.version == y.version && x.state == y.state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::cluster::ModelReplica;

    fn status(models: &[(&str, &str, &str)]) -> NodeStatus {
        NodeStatus {
            models: models
                .iter()
                .map(|(n, v, s)| ModelReplica {
                    name: n.to_string(),
                    version: v.to_string(),
                    state: s.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn view_follows_status_suspicion_and_timeouts() {
        let cluster = Cluster::new(
            Duration::from_millis(200),
            1,
            None,
            tern_edge::Credential::none(),
            Arc::new(RouterMetrics::unregistered()),
        );
        let a = cluster.upsert("127.0.0.1:1", Source::Static).expect("a");
        let b = cluster.upsert("127.0.0.1:2", Source::Registered).expect("b");
        assert!(cluster.view().healthy.is_empty(), "never heard from: not healthy");
        cluster.record_status(&a, status(&[("m", "1", "READY"), ("m", "2", "LOADING")]));
        cluster.record_status(&b, status(&[("m", "2", "READY")]));
        let view = cluster.view();
        assert_eq!(view.healthy.len(), 2);
        assert_eq!(view.candidates("m", "").len(), 2);
        assert_eq!(view.candidates("m", "1")[0].addr, "127.0.0.1:1");
        assert_eq!(view.candidates("m", "2")[0].addr, "127.0.0.1:2");
        assert!(view.candidates("other", "").is_empty());

        // A status overtaken by a newer one of the same process is ignored.
        let newer = NodeStatus { instance: "p1".into(), sequence: 5, ..status(&[("m", "2", "READY")]) };
        cluster.record_status(&b, newer);
        let older = NodeStatus { instance: "p1".into(), sequence: 4, ..status(&[]) };
        cluster.record_status(&b, older);
        assert_eq!(
            cluster.view().candidates("m", "2").len(),
            1,
            "the older status did not replace the newer"
        );

        cluster.mark_suspect(&b, "test");
        assert_eq!(cluster.view().candidates("m", "").len(), 1);
        tokio::time::sleep(Duration::from_millis(5)).await;
        cluster.record_status(&b, status(&[("m", "2", "READY")]));
        assert_eq!(cluster.view().candidates("m", "").len(), 2, "a status after suspicion clears it");

        tokio::time::sleep(Duration::from_millis(250)).await;
        cluster.record_status(&a, status(&[("m", "1", "READY")]));
        assert!(!cluster.rebuild(), "b timed out but the set changed on record_status already");
        let view = cluster.view();
        assert_eq!(view.healthy.len(), 1, "b's last status is older than the timeout");
        assert_eq!(view.healthy[0].addr, "127.0.0.1:1");
    }

    #[tokio::test]
    async fn heartbeats_match_only_the_confirmed_registration() {
        let cluster = Cluster::new(
            Duration::from_secs(1),
            1,
            None,
            tern_edge::Credential::none(),
            Arc::new(RouterMetrics::unregistered()),
        );
        let node = cluster.upsert("127.0.0.1:1", Source::Registered).expect("node");
        assert!(!node.heartbeat_matches("", ""), "no registration: nothing matches");
        node.set_registration(Registration { session: "secret-1".into(), instance: "p1".into() });
        assert!(node.heartbeat_matches("secret-1", "p1"));
        assert!(!node.heartbeat_matches("secret-2", "p1"), "another session");
        assert!(!node.heartbeat_matches("secret-1", "p2"), "another process with the session");
        assert!(!node.heartbeat_matches("secret-", "p1"), "a prefix of the session");
        node.set_registration(Registration { session: "secret-2".into(), instance: "p2".into() });
        assert!(!node.heartbeat_matches("secret-1", "p1"), "a new registration replaces the old");
    }
}
