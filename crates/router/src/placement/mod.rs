//! Placement: which node loads which model (ModelMesh-like).
//!
//! - Operators' loads and unloads ([`operator`]): recorded in the cluster store first, then
//!   applied to the nodes.
//! - Lazy loading ([`lazy`]): a request for a model no healthy node holds loads it on one node
//!   and waits (single flight per model, bounded by --lazy-load-timeout-secs). The load belongs
//!   to a task of the router, never to the request, so a caller that goes away leaves nothing
//!   stranded.
//! - Replicas: a model in use (requested within --idle-secs, or pinned by --load-model or the
//!   repository API) is kept on `replicas` healthy nodes; lost replicas are re-placed when a
//!   node leaves, and joining nodes take the missing ones.
//! - Memory: a node reports its budget and the memory of its models; a node over budget unloads
//!   its least recently used models that are neither pinned nor busy (requests queued or
//!   executing there). Recency is the nodes' own (each reports its models' last inference), so
//!   every router, whichever requests went through it, evicts by the same order.
//! - Bounds: every map keyed by a name a client chose is capped (see [`bounded`]), and names no
//!   node knows are remembered briefly so nodes are not asked again for each request.
//!
//! The decisions are pure functions ([`choose_nodes`], [`evictions`]) over a snapshot; the
//! [`Placement`] controller applies them through the nodes' repository RPCs.

mod bounded;
mod decide;
mod lazy;
mod operator;
mod shared;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tern_core::ModelState;
use tern_proto::inference as pb;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::config::ClusterSettings;
use crate::discovery::refresh;
use crate::error::ClientError;
use crate::metrics::RouterMetrics;
use crate::nodes::{Cluster, Node};
use crate::store::{ClusterStore, Desired, Intent, LoadingSet, MemoryStore};
pub use bounded::{MAX_FAILED_LOADS, MAX_LAZY_LOADS, MAX_UNKNOWN_MODELS, UNKNOWN_MODEL_TTL};
pub use decide::{NodeLoad, Resident, choose_nodes, evictions};

/// Recently used models are never evicted (a lazy load's own model, a burst's model).
const EVICTION_GRACE: Duration = Duration::from_secs(2);
/// Model sizes remembered (names come only from nodes' reports); beyond this, only the sizes of
/// models some node reports now are kept. An evicted model's size is kept so that replica
/// top-ups know it does not fit.
const MAX_MODEL_SIZES: usize = 65_536;
/// After a failed load on a node, placement avoids that node for the model this long.
const FAILED_LOAD_BACKOFF: Duration = Duration::from_secs(30);

/// The placement controller. Shared by the service (lazy loads, repository API) and the
/// background loop ([`Placement::run`]).
pub struct Placement {
    cluster: Arc<Cluster>,
    settings: ClusterSettings,
    metrics: Arc<RouterMetrics>,
    /// Last request per model, ms on the cluster's clock. Names no node knows leave when their
    /// lazy load fails; known ones idle past --idle-secs leave once no node knows them.
    last_used: DashMap<String, u64>,
    /// Kept placed whether used or not: --load-model and RepositoryModelLoad. Never evicted.
    pinned: RwLock<HashSet<String>>,
    /// Unloaded through the repository API: not lazily loaded again until loaded explicitly.
    /// Only models the cluster knows (nothing to stop otherwise).
    unloaded: RwLock<HashSet<String>>,
    /// Loads in progress, (model, node address) -> how many; see [`LoadingMark`].
    loading: DashMap<(String, String), u32>,
    /// Failed loads: (model, node address) -> when (ms); at most [`MAX_FAILED_LOADS`].
    failed: DashMap<(String, String), u64>,
    /// Last known memory of each model the nodes report, for choosing where it fits.
    sizes: DashMap<String, u64>,
    /// The mean of `sizes`: what a model never loaded yet is expected to take, so loads
    /// placed at once (before any node reports their memory) spread rather than pile onto the
    /// node with the most free memory.
    typical_size: std::sync::atomic::AtomicU64,
    /// Lazy loads in progress, one per model; at most [`MAX_LAZY_LOADS`].
    lazy: DashMap<String, lazy::Waiters>,
    /// Names every node said it does not have (NOT_FOUND, INVALID_ARGUMENT) -> (when, answer);
    /// not asked again for [`UNKNOWN_MODEL_TTL`]; at most [`MAX_UNKNOWN_MODELS`].
    unknown: DashMap<String, (u64, Code, String)>,
    /// Where operators' intents are written (pins, unloads): this router's memory, or etcd
    /// shared with every router (see [`Placement::apply_intents`]).
    store: Arc<dyn ClusterStore>,
    /// The operators' intents by model (replicas and config of pins), as the store has them.
    intents: RwLock<HashMap<String, Intent>>,
    /// Loads in progress by any router, as the shared store publishes them (model, node).
    loading_elsewhere: RwLock<LoadingSet>,
    /// Operators' loads placing now, one per model at a time (entries leave when done).
    operator_loads: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// Counts a load of a model on a node as in progress while it lives: placement then treats the
/// model as placed there. Held by the task that runs the load, so it ends with the load.
struct LoadingMark {
    placement: Arc<Placement>,
    key: (String, String),
}

impl LoadingMark {
    fn new(placement: &Arc<Placement>, model: &str, node: &str) -> LoadingMark {
        let key = (model.to_string(), node.to_string());
        *placement.loading.entry(key.clone()).or_insert(0) += 1;
        placement.store.load_started(model, node);
        LoadingMark { placement: placement.clone(), key }
    }
}

impl Drop for LoadingMark {
    fn drop(&mut self) {
        if let Some(mut count) = self.placement.loading.get_mut(&self.key) {
            *count = count.saturating_sub(1);
        }
        if self.placement.loading.remove_if(&self.key, |_, count| *count == 0).is_some() {
            self.placement.store.load_ended(&self.key.0, &self.key.1);
        }
    }
}

impl Placement {
    pub fn new(cluster: Arc<Cluster>, settings: ClusterSettings, metrics: Arc<RouterMetrics>) -> Placement {
        Placement::with_store(cluster, settings, metrics, Arc::new(MemoryStore::default()))
    }

    /// A controller whose operators' intents go to `store`.
    pub fn with_store(
        cluster: Arc<Cluster>,
        settings: ClusterSettings,
        metrics: Arc<RouterMetrics>,
        store: Arc<dyn ClusterStore>,
    ) -> Placement {
        let pinned = settings.pinned.iter().cloned().collect();
        let placement = Placement {
            cluster,
            settings,
            metrics,
            last_used: DashMap::new(),
            pinned: RwLock::new(pinned),
            unloaded: RwLock::default(),
            loading: DashMap::new(),
            failed: DashMap::new(),
            sizes: DashMap::new(),
            typical_size: Default::default(),
            lazy: DashMap::new(),
            unknown: DashMap::new(),
            store,
            intents: RwLock::default(),
            loading_elsewhere: RwLock::default(),
            operator_loads: DashMap::new(),
        };
        placement.publish_desired();
        placement
    }

    pub fn store(&self) -> &Arc<dyn ClusterStore> {
        &self.store
    }

    /// Takes the intents of the shared store (every router's operators' loads and unloads) as
    /// this router's pins and unloads: `--load-model` pins, plus models pinned there, less
    /// models unloaded there. Called with each change the store's watch brings.
    pub fn apply_intents(&self, intents: &std::collections::BTreeMap<String, Intent>) {
        let mut pinned: HashSet<String> = self.settings.pinned.iter().cloned().collect();
        let mut unloaded = HashSet::new();
        for (model, intent) in intents {
            match intent.desired {
                Desired::Pinned => {
                    pinned.insert(model.clone());
                }
                Desired::Unloaded => {
                    pinned.remove(model);
                    unloaded.insert(model.clone());
                }
            }
        }
        for model in &unloaded {
            // Not "in use" here either: its replicas are not topped up again.
            self.last_used.remove(model);
        }
        // The intents first: a replica top-up that sees the pin then finds its count.
        *self.intents.write().unwrap_or_else(PoisonError::into_inner) =
            intents.iter().map(|(m, i)| (m.clone(), i.clone())).collect();
        *self.pinned.write().unwrap_or_else(PoisonError::into_inner) = pinned;
        *self.unloaded.write().unwrap_or_else(PoisonError::into_inner) = unloaded;
        self.publish_desired();
        self.cluster.changed.notify_one();
    }

    /// Sets the pinned / unloaded gauges from the sets.
    fn publish_desired(&self) {
        let pinned = self.pinned.read().unwrap_or_else(PoisonError::into_inner).len();
        let unloaded = self.unloaded.read().unwrap_or_else(PoisonError::into_inner).len();
        self.metrics.desired(pinned, unloaded);
    }

    fn intent(&self, model: &str, desired: Desired, config: Option<String>) -> Intent {
        let replicas = if desired == Desired::Pinned { self.settings.replicas_of(model) } else { 0 };
        Intent { desired, replicas, config, router: self.settings.router_id.clone() }
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// Records a request for `model` (LRU and "in use").
    pub fn touch(&self, model: &str) {
        let now = self.cluster.now_ms();
        match self.last_used.get_mut(model) {
            Some(mut t) => *t = now,
            None => {
                self.last_used.insert(model.to_string(), now);
            }
        }
    }

    fn is_unloaded(&self, model: &str) -> bool {
        self.unloaded.read().unwrap_or_else(PoisonError::into_inner).contains(model)
    }

    /// Why `model` cannot be loaded lazily, if it cannot.
    pub fn lazy_refusal(&self, model: &str) -> Option<String> {
        if !self.settings.lazy_load {
            return Some(format!("model '{model}' is not loaded on any node and lazy loading is off"));
        }
        if self.is_unloaded(model) {
            return Some(format!(
                "model '{model}' was unloaded through the repository API; load it again to serve it"
            ));
        }
        None
    }

    /// Nodes that accept placement now, with their load.
    fn snapshot(&self) -> (Vec<Arc<Node>>, Vec<NodeLoad>) {
        let view = self.cluster.view();
        let mut nodes = Vec::new();
        let mut loads = Vec::new();
        for node in &view.healthy {
            let Some(status) = node.status() else { continue };
            if !status.explicit_model_control {
                continue;
            }
            let mut load = NodeLoad {
                key: node.addr.clone(),
                budget: status.memory_budget_bytes,
                used: status.memory_used_bytes,
                models: HashSet::new(),
            };
            for m in &status.models {
                if let Some(size) = (m.memory_bytes > 0).then_some(m.memory_bytes) {
                    self.sizes.insert(m.name.clone(), size);
                }
                if matches!(ModelState::parse(&m.state), Some(ModelState::Ready | ModelState::Loading)) {
                    load.models.insert(m.name.clone());
                }
            }
            for entry in self.loading.iter().filter(|e| e.key().1 == node.addr) {
                let model = &entry.key().0;
                if load.models.insert(model.clone()) {
                    load.used += self.size_of(model);
                }
            }
            let elsewhere = self.loading_elsewhere.read().unwrap_or_else(PoisonError::into_inner).clone();
            for (model, _) in elsewhere.iter().filter(|(_, n)| *n == node.addr) {
                if load.models.insert(model.clone()) {
                    load.used += self.size_of(model);
                }
            }
            nodes.push(node.clone());
            loads.push(load);
        }
        let (total, count) =
            self.sizes.iter().fold((0u64, 0u64), |(t, n), e| (t.saturating_add(*e.value()), n + 1));
        self.typical_size.store(total.checked_div(count).unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        (nodes, loads)
    }

    fn size_of(&self, model: &str) -> u64 {
        self.sizes
            .get(model)
            .map_or_else(|| self.typical_size.load(std::sync::atomic::Ordering::Relaxed), |s| *s)
    }

    fn recently_failed(&self, model: &str) -> HashSet<String> {
        let now = self.cluster.now_ms();
        let backoff = FAILED_LOAD_BACKOFF.as_millis() as u64;
        self.failed
            .iter()
            .filter(|e| e.key().0 == model && now.saturating_sub(*e.value()) < backoff)
            .map(|e| e.key().1.clone())
            .collect()
    }

    /// Chooses up to `count` new nodes for `model`, avoiding nodes where it failed to load
    /// recently.
    fn choose(&self, model: &str, count: usize) -> Vec<Arc<Node>> {
        self.choose_excluding(model, count, &self.recently_failed(model))
    }

    fn choose_excluding(&self, model: &str, count: usize, exclude: &HashSet<String>) -> Vec<Arc<Node>> {
        let (nodes, mut loads) = self.snapshot();
        choose_nodes(&mut loads, model, self.size_of(model), count, exclude)
            .into_iter()
            .map(|i| nodes[i].clone())
            .collect()
    }

    /// Loads `model` on `node` with the repository API (with `parameters`, e.g. a config
    /// override), then refreshes the node's status so routing sees the result at once. The load
    /// runs in a task of its own: a caller that goes away (a deadline, a cancelled request)
    /// neither aborts it half way on the node nor leaves it marked as in progress.
    pub async fn load_on(
        self: &Arc<Self>,
        node: &Arc<Node>,
        model: &str,
        parameters: HashMap<String, pb::ModelRepositoryParameter>,
    ) -> Result<(), ClientError> {
        self.start_load(node.clone(), model.to_string(), parameters).await.unwrap_or_else(|e| {
            Err(ClientError::router(
                Code::Internal,
                format!("model '{model}': loading on node {} failed: {e}", node.addr),
            ))
        })
    }

    /// Starts a load (see [`Self::load_on`]); it is marked in progress before this returns.
    fn start_load(
        self: &Arc<Self>,
        node: Arc<Node>,
        model: String,
        parameters: HashMap<String, pb::ModelRepositoryParameter>,
    ) -> JoinHandle<Result<(), ClientError>> {
        let mark = LoadingMark::new(self, &model, &node.addr);
        let this = self.clone();
        tokio::spawn(async move {
            let request = pb::RepositoryModelLoadRequest {
                repository_name: String::new(),
                model_name: model.clone(),
                parameters,
            };
            let started = Instant::now();
            let result = node.client().load(request).await;
            let _ = refresh(&this.cluster, &node).await;
            drop(mark);
            let key = (model, node.addr.clone());
            let model = key.0.as_str();
            match &result {
                Ok(_) => {
                    this.failed.remove(&key);
                    tracing::info!(model, node = %node.addr, elapsed_ms = started.elapsed().as_millis() as u64, "placed model");
                }
                // The name itself is refused (no such model, an invalid name): every node would
                // say the same, so it is remembered as unknown rather than as this node's failure.
                Err(e) if is_unknown_model(e) => {
                    this.remember_unknown(model, e);
                    tracing::debug!(model, node = %node.addr, error = %e.message(), "no such model");
                }
                Err(e) => {
                    let now = this.cluster.now_ms();
                    bounded::insert(
                        &this.failed,
                        key.clone(),
                        now,
                        now,
                        FAILED_LOAD_BACKOFF,
                        MAX_FAILED_LOADS,
                        |t| *t,
                    );
                    tracing::warn!(model, node = %node.addr, error = %e.message(), "placing model failed");
                }
            }
            this.metrics.placement(this.cluster.metric_label(model), result.is_ok());
            result
        })
    }

    async fn unload_on(
        &self,
        node: &Arc<Node>,
        model: &str,
        unload_dependents: bool,
    ) -> Result<(), ClientError> {
        let mut parameters = HashMap::new();
        if unload_dependents {
            let value = pb::model_repository_parameter::ParameterChoice::BoolParam(true);
            parameters.insert(
                "unload_dependents".to_string(),
                pb::ModelRepositoryParameter { parameter_choice: Some(value) },
            );
        }
        let request = pb::RepositoryModelUnloadRequest {
            repository_name: String::new(),
            model_name: model.to_string(),
            parameters,
        };
        let result = node.client().unload(request).await;
        let _ = refresh(&self.cluster, node).await;
        result
    }

    fn no_node_for(&self, model: &str) -> ClientError {
        let view = self.cluster.view();
        if view.healthy.is_empty() {
            return ClientError::unavailable(format!("model '{model}': no node of the cluster is healthy"));
        }
        let explicit =
            view.healthy.iter().filter(|n| n.status().is_some_and(|s| s.explicit_model_control)).count();
        if explicit == 0 {
            return ClientError::unavailable(format!(
                "model '{model}' is not loaded on any node, and no node accepts placement ({} healthy, none in explicit model control mode)",
                view.healthy.len()
            ));
        }
        // Not UNAVAILABLE: the request path then lets a node answer for the model.
        ClientError::router(
            Code::FailedPrecondition,
            format!(
                "model '{model}': every node that could load it failed to within the last {} s",
                FAILED_LOAD_BACKOFF.as_secs()
            ),
        )
    }

    /// The background loop: replicas and memory budgets, every health interval and whenever
    /// membership changes.
    pub async fn run(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.settings.health_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = self.cluster.changed.notified() => {}
            }
            self.prune();
            // One writer: with etcd only the leader places and evicts (always, in memory).
            let leading = self.store.is_leader();
            self.metrics.leader(leading);
            if leading {
                self.top_up_replicas();
                self.enforce_budgets().await;
            }
        }
    }

    /// Drops what no longer bears on placement, so no map grows with names over time: expired
    /// failures and unknown names, sizes beyond [`MAX_MODEL_SIZES`] of models no node reports
    /// now, and the last use of models
    /// that are idle and that no node knows any more.
    fn prune(&self) {
        let now = self.cluster.now_ms();
        let view = self.cluster.view();
        let backoff = FAILED_LOAD_BACKOFF.as_millis() as u64;
        self.failed.retain(|_, t| now.saturating_sub(*t) < backoff);
        let ttl = UNKNOWN_MODEL_TTL.as_millis() as u64;
        self.unknown.retain(|_, (t, _, _)| now.saturating_sub(*t) < ttl);
        if self.sizes.len() > MAX_MODEL_SIZES {
            self.sizes.retain(|m, _| view.models.contains_key(m));
        }
        let idle = self.settings.idle.as_millis() as u64;
        self.last_used.retain(|m, t| now.saturating_sub(*t) < idle || view.models.contains_key(m));
    }

    /// Models that should be kept at their replica count now.
    fn in_use(&self) -> Vec<String> {
        let now = self.cluster.now_ms();
        let idle = self.settings.idle.as_millis() as u64;
        let mut models: HashSet<String> = self.pinned.read().unwrap_or_else(PoisonError::into_inner).clone();
        // Used through any router: the nodes' reports count, not only this router's requests.
        models.extend(
            self.recency().into_iter().filter(|(_, t)| now.saturating_sub(*t) < idle).map(|(m, _)| m),
        );
        let unloaded = self.unloaded.read().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<String> = models.into_iter().filter(|m| !unloaded.contains(m)).collect();
        out.sort();
        out
    }

    /// Starts loads (in the background) for models in use with fewer replicas than wanted.
    fn top_up_replicas(self: &Arc<Self>) {
        let (nodes, mut loads) = self.snapshot();
        if nodes.is_empty() {
            return;
        }
        let pinned = self.pinned.read().unwrap_or_else(PoisonError::into_inner).clone();
        for model in self.in_use() {
            let have = loads.iter().filter(|l| l.models.contains(&model)).count();
            let want = self.replicas_of(&model);
            if have >= want {
                continue;
            }
            let size = self.size_of(&model);
            let mut exclude = self.recently_failed(&model);
            if !pinned.contains(&model) {
                // Only where it fits: on a node over budget it would evict another model in use,
                // or be evicted itself, and be placed again next round, for ever. (A pinned
                // model is placed regardless; eviction then makes room from unpinned ones.)
                exclude
                    .extend(loads.iter().filter(|l| l.budget > 0 && l.free() < size).map(|l| l.key.clone()));
            }
            for i in choose_nodes(&mut loads, &model, size, want - have, &exclude) {
                // Marked in progress at once, so the next round does not choose again.
                drop(self.start_load(nodes[i].clone(), model.clone(), self.replica_parameters(&model)));
            }
        }
    }

    /// Unloads least recently used idle models from nodes over their memory budget.
    async fn enforce_budgets(&self) {
        let now = self.cluster.now_ms();
        let (nodes, _) = self.snapshot();
        let recency = self.recency();
        for node in nodes {
            let Some(status) = node.status() else { continue };
            if status.memory_budget_bytes == 0 || status.memory_used_bytes <= status.memory_budget_bytes {
                continue;
            }
            let pinned = self.pinned.read().unwrap_or_else(PoisonError::into_inner).clone();
            let mut residents: HashMap<&str, Resident> = HashMap::new();
            for m in status.models.iter().filter(|m| m.state == ModelState::Ready.as_str()) {
                let r = residents.entry(m.name.as_str()).or_insert_with(|| Resident {
                    model: m.name.clone(),
                    bytes: 0,
                    last_used_ms: recency.get(&m.name).copied().unwrap_or(0),
                    // Requests this router has on the node count whether queued or executing
                    // (a node's per-model count covers its queue), so a long inference keeps its
                    // model; requests of other routers count through the node's report.
                    busy: node.model_outstanding(&m.name) > 0,
                    pinned: pinned.contains(&m.name),
                });
                r.bytes += m.memory_bytes;
                r.busy |= m.in_flight > 0;
            }
            let residents: Vec<Resident> = residents.into_values().collect();
            let evict = evictions(
                status.memory_budget_bytes,
                status.memory_used_bytes,
                &residents,
                now,
                EVICTION_GRACE.as_millis() as u64,
            );
            for model in evict {
                tracing::info!(model, node = %node.addr, used = status.memory_used_bytes, budget = status.memory_budget_bytes, "evicting least recently used model");
                match self.unload_on(&node, &model, false).await {
                    Ok(()) => self.metrics.eviction(self.cluster.metric_label(&model)),
                    Err(e) => {
                        tracing::warn!(model, node = %node.addr, error = %e.message(), "eviction failed")
                    }
                }
            }
        }
    }
}

/// A load refused for the name itself: no such model in any repository, or an invalid name.
/// A node says "no such model" as Triton does, INTERNAL "failed to load '<name>', failed to
/// poll from model repository" (core src/model_repository_manager.cc,
/// ModelRepositoryManager::LoadUnloadModel); NOT_FOUND is accepted too.
fn is_unknown_model(status: &ClientError) -> bool {
    match status.code() {
        Code::NotFound | Code::InvalidArgument => true,
        // Also a config or files the nodes cannot read, which Triton reports the same way.
        Code::Internal => status.message().contains("failed to poll from model repository"),
        _ => false,
    }
}
