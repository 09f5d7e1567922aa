//! Lazy loading: the first request for a model no node holds has it loaded and waits.
//!
//! One load per model at a time, run by a task of the router: every request for the model
//! waits on that task's outcome, each up to --lazy-load-timeout-secs. A request that goes away
//! (its deadline, a cancelled call) only stops waiting; the load goes on and always clears its
//! entry, so the next request finds the model placed or the load still running, never a load
//! that nobody will finish.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::Code;

use crate::error::ClientError;
use crate::store::Wanted;

use super::{MAX_LAZY_LOADS, MAX_UNKNOWN_MODELS, Placement, UNKNOWN_MODEL_TTL, bounded, is_unknown_model};

/// How a lazy load ended (`ClientError` is not `Clone`: its code and message).
type Outcome = Result<(), (Code, String)>;

/// The requests waiting for one model's lazy load: each holds a receiver.
pub(super) type Waiters = watch::Receiver<Option<Outcome>>;

/// Removes a model's lazy-load entry when the task that runs the load ends, however it ends.
struct LazyEntry {
    placement: Arc<Placement>,
    model: String,
}

impl Drop for LazyEntry {
    fn drop(&mut self) {
        self.placement.lazy.remove(&self.model);
    }
}

impl Placement {
    /// Makes `model` served somewhere, loading it on one node if none holds it; waits up to
    /// the lazy-load timeout. Callers check [`Self::lazy_refusal`] first.
    pub async fn lazy_load(self: &Arc<Self>, model: &str) -> Result<(), ClientError> {
        if let Some(answer) = self.known_unknown(model) {
            return Err(answer);
        }
        let started = Instant::now();
        // The waiting request uses the model: it must not look idle to eviction once loaded.
        self.touch(model);
        let mut waiters = self.join_or_start(model)?;
        let timeout = self.settings.lazy_load_timeout;
        let outcome = match tokio::time::timeout(timeout, waiters.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone(),
            Ok(Err(_)) => Some(Err((
                Code::Internal,
                format!("model '{model}': the lazy load ended without an outcome"),
            ))),
            Err(_) => None,
        };
        match outcome {
            Some(Ok(())) => {
                self.metrics.lazy_load(started.elapsed());
                Ok(())
            }
            Some(Err((code, message))) => Err(ClientError::router(code, message)),
            None => Err(ClientError::unavailable(format!(
                "model '{model}' could not be loaded within {} s (--lazy-load-timeout-secs)",
                timeout.as_secs()
            ))),
        }
    }

    /// The waiters of `model`'s lazy load in progress, or of a new one started now.
    fn join_or_start(self: &Arc<Self>, model: &str) -> Result<Waiters, ClientError> {
        if let Some(waiters) = self.lazy.get(model) {
            return Ok(waiters.clone());
        }
        if self.lazy.len() >= MAX_LAZY_LOADS {
            return Err(ClientError::unavailable(format!(
                "model '{model}' is not loaded on any node, and {MAX_LAZY_LOADS} other models are being loaded now; retry shortly"
            )));
        }
        let (outcome, waiters) = watch::channel(None);
        match self.lazy.entry(model.to_string()) {
            dashmap::Entry::Occupied(e) => return Ok(e.get().clone()),
            dashmap::Entry::Vacant(e) => {
                e.insert(waiters.clone());
            }
        }
        let entry = LazyEntry { placement: self.clone(), model: model.to_string() };
        tokio::spawn(async move {
            let this = entry.placement.clone();
            let model = entry.model.as_str();
            let timeout = this.settings.lazy_load_timeout;
            let result =
                tokio::time::timeout(timeout, this.lazy_load_inner(model)).await.unwrap_or_else(|_| {
                    Err(ClientError::unavailable(format!(
                        "model '{model}' could not be loaded within {} s (--lazy-load-timeout-secs)",
                        timeout.as_secs()
                    )))
                });
            if result.is_err() {
                // Not a model in use (no such model, or broken): keep it out of replica top-ups.
                this.last_used.remove(model);
            }
            let _ = outcome.send(Some(result.map_err(|e| (e.code(), e.message().to_string()))));
            drop(entry);
        });
        Ok(waiters)
    }

    async fn lazy_load_inner(self: &Arc<Self>, model: &str) -> Result<(), ClientError> {
        if !self.store.is_leader() {
            return self.placed_by_leader(model).await;
        }
        loop {
            let view = self.cluster.view();
            if !view.candidates(model, "").is_empty() {
                return Ok(());
            }
            // Loading somewhere already (a replica top-up, another router as etcd shows, a node
            // reporting LOADING): wait for it rather than start a second load.
            let loading_there = view.models.get(model).is_some_and(|r| !r.loading.is_empty());
            if loading_there || self.loading_anywhere(model) {
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
                        return Err(ClientError::unavailable(format!(
                            "model '{model}' loaded on node {} but no version is ready",
                            node.addr
                        )));
                    }
                    return Ok(());
                }
                // The model does not exist or cannot load: every node would say the same.
                Err(e) if is_unknown_model(&e) => return Err(e),
                Err(e) => {
                    if self.choose(model, 1).is_empty() {
                        return Err(e);
                    }
                    // Another node may do better; the failed one is excluded for a while.
                }
            }
        }
    }

    /// A follower's lazy load (etcd store, another router leads placement): asks the leader
    /// through etcd and waits until a node serves the model, or the leader answers why not.
    /// With etcd or the leader away it waits too (a leader is elected within the lease TTL, and
    /// etcd comes back), up to --lazy-load-timeout-secs, then fails naming what it waited for.
    async fn placed_by_leader(self: &Arc<Self>, model: &str) -> Result<(), ClientError> {
        let deadline = self.leader_deadline();
        let wanted = Wanted::ask(&self.settings.router_id, false);
        self.ask_leader(model, &wanted, deadline).await?;
        let answers = self.store.watch_wanted();
        loop {
            if !self.cluster.view().candidates(model, "").is_empty() {
                return Ok(());
            }
            let answer = answers.as_ref().and_then(|a| a.borrow().get(model).and_then(|w| w.error.clone()));
            if let Some((code, message)) = answer {
                let error = ClientError::router(Code::from(code), message);
                if is_unknown_model(&error) {
                    // Answered from memory for a while, as on the leader: no etcd write per
                    // request for a name no node has.
                    self.remember_unknown(model, &error);
                }
                return Err(error);
            }
            if Instant::now() >= deadline {
                return Err(self.no_leader_answer(model));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How long a follower waits for the leader: a little less than the lazy-load timeout, so
    /// its own answer (naming etcd or the leader) is the one the caller gets.
    pub(super) fn leader_deadline(&self) -> Instant {
        let timeout = self.settings.lazy_load_timeout;
        Instant::now() + timeout.saturating_sub(Duration::from_millis(250).min(timeout / 4))
    }

    /// Writes `wanted` for the leader, retrying while etcd cannot take it, until `deadline`.
    pub(super) async fn ask_leader(
        &self,
        model: &str,
        wanted: &Wanted,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let error = match tokio::time::timeout(left, self.store.want_placed(model, wanted.clone())).await
            {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("cluster store {} did not answer", self.store.describe()),
            };
            if Instant::now() + Duration::from_millis(500) >= deadline {
                return Err(ClientError::unavailable(format!(
                    "model '{model}' is not loaded on any node, and placement is paused: {error}; waited {} s (--lazy-load-timeout-secs) for it",
                    self.settings.lazy_load_timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A follower waited for the leader in vain.
    pub(super) fn no_leader_answer(&self, model: &str) -> ClientError {
        ClientError::unavailable(format!(
            "model '{model}': no placement leader answered within {} s (--lazy-load-timeout-secs); the leader is elected through the cluster store, {}",
            self.settings.lazy_load_timeout.as_secs(),
            self.store.describe()
        ))
    }

    /// The leader's side of [`Self::placed_by_leader`] and of an operator's load through a
    /// follower: places `model`, then clears the request or answers it.
    pub async fn place_for_follower(self: &Arc<Self>, model: &str, request: Wanted) {
        let result = if request.operator {
            self.place_operator_intent(model).await
        } else {
            match self.lazy_refusal(model) {
                Some(refusal) => Err(ClientError::router(Code::FailedPrecondition, refusal)),
                None => self.lazy_load(model).await,
            }
        };
        let answer = |error, done| Wanted { error, done, ..request.clone() };
        let written = match &result {
            Ok(()) if request.operator => self.store.want_placed(model, answer(None, true)).await,
            Ok(()) => self.store.placed(model).await,
            Err(e) => {
                let error = Some((e.code() as i32, e.message().to_string()));
                self.store.want_placed(model, answer(error, false)).await
            }
        };
        if let Err(e) = written {
            tracing::warn!(model, error = %e, "cannot answer a follower's placement request");
        }
    }

    /// Remembers that the nodes refused `model`'s name (`answer`), for [`UNKNOWN_MODEL_TTL`].
    pub(super) fn remember_unknown(&self, model: &str, answer: &ClientError) {
        let value = (self.cluster.now_ms(), answer.code(), answer.message().to_string());
        let now = value.0;
        bounded::insert(
            &self.unknown,
            model.to_string(),
            value,
            now,
            UNKNOWN_MODEL_TTL,
            MAX_UNKNOWN_MODELS,
            |v| v.0,
        );
    }

    /// The nodes' recent answer for a name they do not have, if there is one.
    fn known_unknown(&self, model: &str) -> Option<ClientError> {
        let entry = self.unknown.get(model)?;
        let (when, code, message) = entry.value();
        let fresh = self.cluster.now_ms().saturating_sub(*when) < UNKNOWN_MODEL_TTL.as_millis() as u64;
        fresh.then(|| ClientError::router(*code, message.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RouterMetrics;
    use crate::nodes::Cluster;
    use clap::Parser;

    fn placement() -> Arc<Placement> {
        let metrics = Arc::new(RouterMetrics::unregistered());
        let cluster = Arc::new(Cluster::new(
            Duration::from_secs(1),
            1,
            None,
            tern_edge::Credential::none(),
            metrics.clone(),
        ));
        let settings = crate::Config::try_parse_from(["tern-router"]).expect("defaults").cluster();
        Arc::new(Placement::new(cluster, settings, metrics))
    }

    /// Lazy loads of many distinct names (none can load: no node) leave no entry behind: the
    /// single-flight map and the last-use map hold only loads in progress.
    #[tokio::test]
    async fn lazy_loads_of_distinct_names_leave_no_entries() {
        let placement = placement();
        for i in 0..2000 {
            let e = placement.lazy_load(&format!("made_up_{i}")).await.expect_err("no node");
            assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
            assert!(e.message().contains("no node of the cluster is healthy"), "{}", e.message());
        }
        // Each load's task clears its entry right after answering its waiters.
        for _ in 0..100 {
            if placement.lazy.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(placement.lazy.len(), 0, "lazy-load entries left behind");
        assert_eq!(placement.last_used.len(), 0, "failed names kept as in use");
    }

    /// The shared store's intents become the router's pins and unloads: an operator's unload
    /// through another router stops lazy loading here, and `--load-model` pins stay unless
    /// an operator unloaded them.
    #[test]
    fn intents_from_the_store_become_pins_and_unloads() {
        use crate::store::{Desired, Intent};
        let metrics = Arc::new(RouterMetrics::unregistered());
        let cluster = Arc::new(Cluster::new(
            Duration::from_secs(1),
            1,
            None,
            tern_edge::Credential::none(),
            metrics.clone(),
        ));
        let settings = crate::Config::try_parse_from([
            "tern-router",
            "--load-model",
            "flag_pin",
            "--load-model",
            "kept",
        ])
        .expect("flags")
        .cluster();
        let placement = Placement::new(cluster, settings, metrics);
        let intent = |desired| Intent { desired, replicas: 0, config: None, router: "b".into() };
        placement.touch("gone");
        let intents = [
            ("gone".to_string(), intent(Desired::Unloaded)),
            ("flag_pin".to_string(), intent(Desired::Unloaded)),
            ("pinned_elsewhere".to_string(), intent(Desired::Pinned)),
        ]
        .into_iter()
        .collect();
        placement.apply_intents(&intents);
        assert!(
            placement.lazy_refusal("gone").expect("refused").contains("unloaded through the repository API")
        );
        assert!(placement.lazy_refusal("flag_pin").is_some());
        assert!(placement.lazy_refusal("pinned_elsewhere").is_none());
        // In use: pins (flags and the store's), not the unloaded (its last use forgotten).
        assert_eq!(placement.in_use(), vec!["kept".to_string(), "pinned_elsewhere".to_string()]);
        // Loaded again elsewhere: the intent goes, and lazy loading resumes.
        placement.apply_intents(&Default::default());
        assert!(placement.lazy_refusal("gone").is_none());
        assert_eq!(placement.in_use(), vec!["flag_pin".to_string(), "kept".to_string()]);
    }
}
