//! Placement: which node loads which model (ModelMesh-like).
//!
//! - Lazy loading: a request for a model no healthy node holds loads it on one node and waits
//!   (single flight per model, bounded by --lazy-load-timeout-secs).
//! - Replicas: a model in use (requested within --idle-secs, or pinned by --load-model or the
//!   repository API) is kept on `replicas` healthy nodes; lost replicas are re-placed when a
//!   node leaves, and joining nodes take the missing ones.
//! - Memory: a node reports its budget and the memory of its models; a node over budget unloads
//!   its least recently used models with no request in flight.
//!
//! The decisions are pure functions ([`choose_nodes`], [`evictions`]) over a snapshot; the
//! [`Placement`] controller applies them through the nodes' repository RPCs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tern_proto::inference as pb;
use tonic::{Code, Status};

use crate::config::ClusterSettings;
use crate::discovery::refresh;
use crate::metrics::RouterMetrics;
use crate::nodes::{Cluster, Node};

/// A node as placement sees it.
#[derive(Debug, Clone, Default)]
pub struct NodeLoad {
    pub key: String,
    /// Bytes for models; 0: no budget.
    pub budget: u64,
    pub used: u64,
    /// Models it holds or is loading.
    pub models: HashSet<String>,
}

impl NodeLoad {
    fn free(&self) -> u64 {
        if self.budget == 0 { u64::MAX - self.used } else { self.budget.saturating_sub(self.used) }
    }
}

/// Picks up to `count` nodes for `model` (expected `size` bytes) among those not holding it and
/// not in `exclude`: first where it fits, then the most free memory, then the fewest models,
/// then the key (deterministic). Records each choice in `nodes`, so successive calls spread.
pub fn choose_nodes(
    nodes: &mut [NodeLoad],
    model: &str,
    size: u64,
    count: usize,
    exclude: &HashSet<String>,
) -> Vec<usize> {
    let mut chosen = Vec::with_capacity(count);
    for _ in 0..count {
        let best = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.models.contains(model) && !exclude.contains(&n.key))
            .max_by(|(_, a), (_, b)| {
                let fits = |n: &NodeLoad| n.free() >= size;
                fits(a)
                    .cmp(&fits(b))
                    .then(a.free().cmp(&b.free()))
                    .then(b.models.len().cmp(&a.models.len()))
                    .then(b.key.cmp(&a.key))
            })
            .map(|(i, _)| i);
        let Some(i) = best else { break };
        nodes[i].used = nodes[i].used.saturating_add(size);
        nodes[i].models.insert(model.to_string());
        chosen.push(i);
    }
    chosen
}

/// A model resident on a node, for eviction.
#[derive(Debug, Clone)]
pub struct Resident {
    pub model: String,
    pub bytes: u64,
    /// Last request for the model through this router (ms); 0: never.
    pub last_used_ms: u64,
    /// Requests for it in flight on the node now.
    pub busy: bool,
}

/// Models to unload from a node using `used` of `budget` bytes: least recently used first,
/// never one with requests in flight or used within `grace_ms` of `now_ms`, until it fits.
pub fn evictions(budget: u64, used: u64, residents: &[Resident], now_ms: u64, grace_ms: u64) -> Vec<String> {
    if budget == 0 || used <= budget {
        return Vec::new();
    }
    let mut candidates: Vec<&Resident> =
        residents.iter().filter(|r| !r.busy && now_ms.saturating_sub(r.last_used_ms) >= grace_ms).collect();
    candidates.sort_by(|a, b| a.last_used_ms.cmp(&b.last_used_ms).then(a.model.cmp(&b.model)));
    let mut over = used - budget;
    let mut out = Vec::new();
    for r in candidates {
        if over == 0 {
            break;
        }
        over = over.saturating_sub(r.bytes.max(1));
        out.push(r.model.clone());
    }
    out
}

/// Recently used models are never evicted (a lazy load's own model, a burst's model).
const EVICTION_GRACE: Duration = Duration::from_secs(2);
/// After a failed load on a node, placement avoids that node for the model this long.
const FAILED_LOAD_BACKOFF: Duration = Duration::from_secs(30);

/// The placement controller. Shared by the service (lazy loads, repository API) and the
/// background loop ([`Placement::run`]).
pub struct Placement {
    cluster: Arc<Cluster>,
    settings: ClusterSettings,
    metrics: Arc<RouterMetrics>,
    /// Last request per model, ms on the cluster's clock.
    last_used: DashMap<String, u64>,
    /// Kept placed whether used or not: --load-model and RepositoryModelLoad.
    pinned: RwLock<HashSet<String>>,
    /// Unloaded through the repository API: not lazily loaded again until loaded explicitly.
    unloaded: RwLock<HashSet<String>>,
    /// Loads in progress: (model, node address).
    loading: DashMap<(String, String), u64>,
    /// Failed loads: (model, node address) -> when (ms).
    failed: DashMap<(String, String), u64>,
    /// Last known memory of each model, for choosing where it fits.
    sizes: DashMap<String, u64>,
    /// One lazy load at a time per model.
    lazy: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

impl Placement {
    pub fn new(cluster: Arc<Cluster>, settings: ClusterSettings, metrics: Arc<RouterMetrics>) -> Placement {
        let pinned = settings.pinned.iter().cloned().collect();
        Placement {
            cluster,
            settings,
            metrics,
            last_used: DashMap::new(),
            pinned: RwLock::new(pinned),
            unloaded: RwLock::default(),
            loading: DashMap::new(),
            failed: DashMap::new(),
            sizes: DashMap::new(),
            lazy: DashMap::new(),
        }
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
                if matches!(m.state.as_str(), "READY" | "LOADING") {
                    load.models.insert(m.name.clone());
                }
            }
            for entry in self.loading.iter().filter(|e| e.key().1 == node.addr) {
                let model = &entry.key().0;
                if load.models.insert(model.clone()) {
                    load.used += self.size_of(model);
                }
            }
            nodes.push(node.clone());
            loads.push(load);
        }
        (nodes, loads)
    }

    fn size_of(&self, model: &str) -> u64 {
        self.sizes.get(model).map_or(0, |s| *s)
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
    /// override), then refreshes the node's status so routing sees the result at once.
    pub async fn load_on(
        &self,
        node: &Arc<Node>,
        model: &str,
        parameters: HashMap<String, pb::ModelRepositoryParameter>,
    ) -> Result<(), Status> {
        let key = (model.to_string(), node.addr.clone());
        self.loading.insert(key.clone(), self.cluster.now_ms());
        let request = pb::RepositoryModelLoadRequest {
            repository_name: String::new(),
            model_name: model.to_string(),
            parameters,
        };
        let started = Instant::now();
        let result = node.client().repository_model_load(request).await;
        let _ = refresh(&self.cluster, node).await;
        self.loading.remove(&key);
        match &result {
            Ok(_) => {
                self.failed.remove(&key);
                tracing::info!(model, node = %node.addr, elapsed_ms = started.elapsed().as_millis() as u64, "placed model");
            }
            Err(e) => {
                self.failed.insert(key, self.cluster.now_ms());
                tracing::warn!(model, node = %node.addr, error = %e.message(), "placing model failed");
            }
        }
        self.metrics.placement(model, result.is_ok());
        result.map(|_| ())
    }

    async fn unload_on(&self, node: &Arc<Node>, model: &str) -> Result<(), Status> {
        let request = pb::RepositoryModelUnloadRequest {
            repository_name: String::new(),
            model_name: model.to_string(),
            parameters: HashMap::new(),
        };
        let result = node.client().repository_model_unload(request).await;
        let _ = refresh(&self.cluster, node).await;
        result.map(|_| ())
    }

    /// Makes `model` served somewhere, loading it on one node if none holds it; waits up to
    /// the lazy-load timeout. Callers check [`Self::lazy_refusal`] first.
    pub async fn lazy_load(&self, model: &str) -> Result<(), Status> {
        let started = Instant::now();
        // The waiting request uses the model: it must not look idle to eviction once loaded.
        self.touch(model);
        let timeout = self.settings.lazy_load_timeout;
        let result = tokio::time::timeout(timeout, self.lazy_load_inner(model)).await.unwrap_or_else(|_| {
            Err(Status::unavailable(format!(
                "model '{model}' could not be loaded within {} s (--lazy-load-timeout-secs)",
                timeout.as_secs()
            )))
        });
        match &result {
            Ok(()) => self.metrics.lazy_load(started.elapsed()),
            // Not a model in use (no such model, or broken): keep it out of replica top-ups.
            Err(_) => {
                self.last_used.remove(model);
            }
        }
        result
    }

    async fn lazy_load_inner(&self, model: &str) -> Result<(), Status> {
        let lock = self.lazy.entry(model.to_string()).or_default().clone();
        let _single_flight = lock.lock().await;
        loop {
            let view = self.cluster.view();
            if !view.candidates(model, "").is_empty() {
                return Ok(());
            }
            // Loading somewhere already (a replica top-up, another router): wait for it.
            let loading_here = self.loading.iter().any(|e| e.key().0 == model);
            let loading_there = view.models.get(model).is_some_and(|r| !r.loading.is_empty());
            if loading_here || loading_there {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let Some(node) = self.choose(model, 1).into_iter().next() else {
                return Err(self.no_node_for(model));
            };
            match self.load_on(&node, model, HashMap::new()).await {
                Ok(()) => {
                    if self.cluster.view().candidates(model, "").is_empty() {
                        // Loaded but not READY (every version failed): the node says why.
                        return Err(Status::unavailable(format!(
                            "model '{model}' loaded on node {} but no version is ready",
                            node.addr
                        )));
                    }
                    return Ok(());
                }
                // The model does not exist or cannot load: every node would say the same.
                Err(e) if matches!(e.code(), Code::NotFound | Code::InvalidArgument) => return Err(e),
                Err(e) => {
                    if self.choose(model, 1).is_empty() {
                        return Err(e);
                    }
                    // Another node may do better; the failed one is excluded for a while.
                }
            }
        }
    }

    fn no_node_for(&self, model: &str) -> Status {
        let view = self.cluster.view();
        if view.healthy.is_empty() {
            return Status::unavailable(format!("model '{model}': no node of the cluster is healthy"));
        }
        let explicit =
            view.healthy.iter().filter(|n| n.status().is_some_and(|s| s.explicit_model_control)).count();
        if explicit == 0 {
            return Status::unavailable(format!(
                "model '{model}' is not loaded on any node, and no node accepts placement ({} healthy, none in explicit model control mode)",
                view.healthy.len()
            ));
        }
        // Not UNAVAILABLE: the request path then lets a node answer for the model.
        Status::failed_precondition(format!(
            "model '{model}': every node that could load it failed to within the last {} s",
            FAILED_LOAD_BACKOFF.as_secs()
        ))
    }

    /// RepositoryModelLoad through the router: pins the model and (re)loads it on its holders
    /// and on new nodes up to its replica count. Nodes that do not accept placement answer
    /// themselves (Triton's error for a node not in explicit mode).
    pub async fn load_explicit(
        &self,
        model: &str,
        parameters: HashMap<String, pb::ModelRepositoryParameter>,
    ) -> Result<(), Status> {
        self.unloaded.write().unwrap_or_else(PoisonError::into_inner).remove(model);
        let view = self.cluster.view();
        let (placeable, _) = self.snapshot();
        if placeable.is_empty() {
            let Some(node) = view.healthy.first() else {
                return Err(Status::unavailable(format!(
                    "model '{model}': no node of the cluster is healthy"
                )));
            };
            let request = pb::RepositoryModelLoadRequest {
                repository_name: String::new(),
                model_name: model.to_string(),
                parameters,
            };
            node.client().repository_model_load(request).await?;
            return Ok(());
        }
        self.pinned.write().unwrap_or_else(PoisonError::into_inner).insert(model.to_string());
        let holders: Vec<Arc<Node>> = placeable
            .iter()
            .filter(|n| {
                n.status().is_some_and(|s| s.models.iter().any(|m| m.name == model && !m.state.is_empty()))
            })
            .cloned()
            .collect();
        let target = self.settings.replicas_of(model);
        let mut targets = holders.clone();
        if holders.len() < target {
            // An operator's load is always attempted, even where the model failed recently.
            targets.extend(self.choose_excluding(model, target - holders.len(), &HashSet::new()));
        }
        if targets.is_empty() {
            return Err(self.no_node_for(model));
        }
        let results =
            futures::future::join_all(targets.iter().map(|n| self.load_on(n, model, parameters.clone())))
                .await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        match results.into_iter().find_map(Result::err) {
            Some(e) if ok == 0 => Err(e),
            _ => Ok(()),
        }
    }

    /// RepositoryModelUnload through the router: unpins the model, unloads it everywhere, and
    /// stops lazy loading of it until it is loaded again.
    pub async fn unload_explicit(&self, model: &str) -> Result<(), Status> {
        self.pinned.write().unwrap_or_else(PoisonError::into_inner).remove(model);
        self.unloaded.write().unwrap_or_else(PoisonError::into_inner).insert(model.to_string());
        self.last_used.remove(model);
        let view = self.cluster.view();
        let mut holders: Vec<Arc<Node>> = view
            .healthy
            .iter()
            .filter(|n| n.status().is_some_and(|s| s.models.iter().any(|m| m.name == model)))
            .cloned()
            .collect();
        if holders.is_empty() {
            // Let a node answer for a model nobody holds (Triton's reply for it).
            holders.extend(view.healthy.first().cloned());
        }
        if holders.is_empty() {
            return Err(Status::unavailable(format!("model '{model}': no node of the cluster is healthy")));
        }
        let results = futures::future::join_all(holders.iter().map(|n| self.unload_on(n, model))).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        match results.into_iter().find_map(Result::err) {
            Some(e) if ok == 0 => Err(e),
            _ => Ok(()),
        }
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
            self.top_up_replicas();
            self.enforce_budgets().await;
        }
    }

    /// Models that should be kept at their replica count now.
    fn in_use(&self) -> Vec<String> {
        let now = self.cluster.now_ms();
        let idle = self.settings.idle.as_millis() as u64;
        let mut models: HashSet<String> = self.pinned.read().unwrap_or_else(PoisonError::into_inner).clone();
        models.extend(
            self.last_used.iter().filter(|e| now.saturating_sub(*e.value()) < idle).map(|e| e.key().clone()),
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
        for model in self.in_use() {
            let have = loads.iter().filter(|l| l.models.contains(&model)).count();
            let want = self.settings.replicas_of(&model);
            if have >= want {
                continue;
            }
            let exclude = self.recently_failed(&model);
            for i in choose_nodes(&mut loads, &model, self.size_of(&model), want - have, &exclude) {
                let node = nodes[i].clone();
                let this = self.clone();
                let model = model.clone();
                // Marked before the task runs, so the next tick does not choose again.
                self.loading.insert((model.clone(), node.addr.clone()), self.cluster.now_ms());
                tokio::spawn(async move {
                    let _ = this.load_on(&node, &model, HashMap::new()).await;
                });
            }
        }
    }

    /// Unloads least recently used idle models from nodes over their memory budget.
    async fn enforce_budgets(&self) {
        let now = self.cluster.now_ms();
        let (nodes, _) = self.snapshot();
        for node in nodes {
            let Some(status) = node.status() else { continue };
            if status.memory_budget_bytes == 0 || status.memory_used_bytes <= status.memory_budget_bytes {
                continue;
            }
            let mut residents: HashMap<&str, Resident> = HashMap::new();
            for m in status.models.iter().filter(|m| m.state == "READY") {
                let r = residents.entry(m.name.as_str()).or_insert_with(|| Resident {
                    model: m.name.clone(),
                    bytes: 0,
                    last_used_ms: self.last_used.get(&m.name).map_or(0, |t| *t),
                    busy: false,
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
                match self.unload_on(&node, &model).await {
                    Ok(()) => self.metrics.eviction(&model),
                    Err(e) => {
                        tracing::warn!(model, node = %node.addr, error = %e.message(), "eviction failed")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(key: &str, budget: u64, used: u64, models: &[&str]) -> NodeLoad {
        NodeLoad { key: key.into(), budget, used, models: models.iter().map(|m| m.to_string()).collect() }
    }

    #[test]
    fn chooses_where_it_fits_then_most_free() {
        let mut nodes = vec![node("a", 100, 90, &[]), node("b", 100, 20, &["m"]), node("c", 100, 50, &[])];
        // b holds m already; c fits (50 free), a does not (10 free).
        assert_eq!(choose_nodes(&mut nodes, "m", 30, 1, &HashSet::new()), vec![2]);
        assert_eq!(nodes[2].used, 80);
        // Two replicas of n: b (80 free) then c is at 80 used (20 free) vs a (10 free): c.
        assert_eq!(choose_nodes(&mut nodes, "n", 10, 2, &HashSet::new()), vec![1, 2]);
        // Nothing fits: the most free still takes it (eviction follows).
        assert_eq!(choose_nodes(&mut nodes, "big", 500, 1, &HashSet::new()), vec![1]);
        // Excluded and holding nodes are never chosen; asking for more than exist stops short.
        let exclude: HashSet<String> = ["a".to_string()].into();
        assert_eq!(choose_nodes(&mut nodes, "big", 1, 3, &exclude), vec![2]);
    }

    #[test]
    fn unlimited_budgets_balance_by_memory() {
        let mut nodes: Vec<NodeLoad> = (0..4).map(|i| node(&format!("n{i}"), 0, 0, &[])).collect();
        for m in 0..40 {
            choose_nodes(&mut nodes, &format!("m{m}"), 10, 1, &HashSet::new());
        }
        assert!(
            nodes.iter().all(|n| n.used == 100),
            "{:?}",
            nodes.iter().map(|n| n.used).collect::<Vec<_>>()
        );
    }

    #[test]
    fn evicts_least_recently_used_idle_models_until_within_budget() {
        let r = |m: &str, bytes, last, busy| Resident { model: m.into(), bytes, last_used_ms: last, busy };
        let residents = vec![
            r("old", 30, 100, false),
            r("busy", 30, 50, true),
            r("mid", 30, 500, false),
            r("new", 30, 9_900, false),
        ];
        // 120 used of 70: 50 over -> old (30), then mid (30); busy and recent ones stay.
        assert_eq!(evictions(70, 120, &residents, 10_000, 2_000), vec!["old", "mid"]);
        assert!(evictions(200, 120, &residents, 10_000, 2_000).is_empty());
        assert!(evictions(0, 120, &residents, 10_000, 2_000).is_empty(), "no budget, no eviction");
    }

    /// Placement at scale: 1,000 models (2 replicas, 1-100 MiB) onto 100 nodes with 8 GiB
    /// each. Prints the time and the balance; `cargo test -p tern-router --release placement_at_scale -- --nocapture`.
    #[test]
    fn placement_at_scale() {
        const MIB: u64 = 1 << 20;
        let mut nodes: Vec<NodeLoad> =
            (0..100).map(|i| node(&format!("node-{i:03}"), 8 << 30, 0, &[])).collect();
        let mut rng = fastrand::Rng::with_seed(7);
        let sizes: Vec<u64> = (0..1000).map(|_| rng.u64(1..=100) * MIB).collect();
        let started = Instant::now();
        for (m, size) in sizes.iter().enumerate() {
            let chosen = choose_nodes(&mut nodes, &format!("model-{m}"), *size, 2, &HashSet::new());
            assert_eq!(chosen.len(), 2);
            assert_ne!(nodes[chosen[0]].key, nodes[chosen[1]].key, "replicas on distinct nodes");
        }
        let elapsed = started.elapsed();
        let used: Vec<u64> = nodes.iter().map(|n| n.used).collect();
        let total: u64 = sizes.iter().sum::<u64>() * 2;
        assert_eq!(used.iter().sum::<u64>(), total);
        let mean = total as f64 / nodes.len() as f64;
        let max = *used.iter().max().unwrap_or(&0) as f64;
        let min = *used.iter().min().unwrap_or(&0) as f64;
        println!(
            "placement_at_scale: 1000 models x 2 replicas on 100 nodes in {:.1} ms; per node mean {:.0} MiB, min {:.0}, max {:.0} (max/mean {:.3})",
            elapsed.as_secs_f64() * 1e3,
            mean / MIB as f64,
            min / MIB as f64,
            max / MIB as f64,
            max / mean
        );
        assert!(used.iter().all(|&u| u <= 8 << 30), "no node over budget when the total fits");
        // Greedy most-free placement keeps every node within one model (100 MiB) of the others.
        assert!(
            max - min <= (100 * MIB) as f64,
            "spread {} MiB exceeds the largest model",
            (max - min) / MIB as f64
        );
    }
}
