//! Operators' loads and unloads through the router (RepositoryModelLoad/Unload): the intent is
//! written to the cluster store before any node is touched, so every router (and a restarted
//! one) honours it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use tern_proto::inference as pb;
use tonic::Code;

use super::{Placement, is_unknown_model};
use crate::error::ClientError;
use crate::nodes::Node;
use crate::store::{Desired, StoreError, Wanted};

/// Largest `config` override kept in an operator's intent (etcd values stay small).
const MAX_INTENT_CONFIG_BYTES: usize = 64 * 1024;
/// How long a finished load may take to show in the nodes' statuses (heartbeats, polls).
const STATUS_GRACE: Duration = Duration::from_secs(3);

impl Placement {
    /// RepositoryModelLoad through the router: pins the model and (re)loads it on its holders
    /// and on new nodes up to its replica count. Nodes that do not accept placement answer
    /// themselves (Triton's error for a node not in explicit mode).
    pub async fn load_explicit(
        self: &Arc<Self>,
        model: &str,
        parameters: HashMap<String, pb::ModelRepositoryParameter>,
    ) -> Result<(), ClientError> {
        let view = self.cluster.view();
        let (placeable, _) = self.snapshot();
        if placeable.is_empty() {
            self.unloaded.write().unwrap_or_else(PoisonError::into_inner).remove(model);
            self.publish_desired();
            let Some(node) = view.healthy.first() else {
                return Err(ClientError::unavailable(format!(
                    "model '{model}': no node of the cluster is healthy"
                )));
            };
            let request = pb::RepositoryModelLoadRequest {
                repository_name: String::new(),
                model_name: model.to_string(),
                parameters,
            };
            return node.client().load(request).await;
        }
        // The operator's intent is recorded before any node is touched: with etcd
        // unreachable the load is refused, not half applied.
        let config = match parameters.get("config").and_then(|p| p.parameter_choice.as_ref()) {
            Some(pb::model_repository_parameter::ParameterChoice::StringParam(c)) => Some(c.clone()),
            _ => None,
        };
        if config.as_ref().is_some_and(|c| c.len() > MAX_INTENT_CONFIG_BYTES) {
            return Err(ClientError::router(
                Code::InvalidArgument,
                format!(
                    "model '{model}': the 'config' parameter is over {MAX_INTENT_CONFIG_BYTES} bytes, more than the cluster store keeps"
                ),
            ));
        }
        let intent = self.intent(model, Desired::Pinned, config);
        self.store.set_intent(model, intent.clone()).await.map_err(store_unavailable)?;
        self.intents.write().unwrap_or_else(PoisonError::into_inner).insert(model.to_string(), intent);
        self.unloaded.write().unwrap_or_else(PoisonError::into_inner).remove(model);
        self.pinned.write().unwrap_or_else(PoisonError::into_inner).insert(model.to_string());
        self.publish_desired();
        // One writer places: a follower asks the leader, so two operators loading through two
        // routers at once place one replica set. Model files sent with the load
        // (`file:` parameters) are not kept in the store: such a load is placed here.
        let has_files = parameters.keys().any(|k| k.starts_with("file:"));
        if self.store.is_leader() || has_files {
            self.place_operator_load(model, parameters).await
        } else {
            self.operator_load_by_leader(model).await
        }
    }

    /// The leader's side of an operator's load through a follower: places the model's intent
    /// (its replicas and config) as if loaded here.
    pub(super) async fn place_operator_intent(self: &Arc<Self>, model: &str) -> Result<(), ClientError> {
        let pinned = self
            .intents
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
            .is_some_and(|i| i.desired == Desired::Pinned);
        if !pinned {
            return Err(ClientError::router(
                Code::FailedPrecondition,
                format!("model '{model}' is no longer loaded by an operator (unloaded meanwhile)"),
            ));
        }
        self.place_operator_load(model, self.replica_parameters(model)).await
    }

    /// A follower's operator load: asks the leader through the store and waits for its answer,
    /// then until this router's own view serves the model (as Triton answers a load once the
    /// model is ready).
    async fn operator_load_by_leader(self: &Arc<Self>, model: &str) -> Result<(), ClientError> {
        let deadline = self.leader_deadline();
        let wanted = Wanted::ask(&self.settings.router_id, true);
        self.ask_leader(model, &wanted, deadline).await?;
        let Some(answers) = self.store.watch_wanted() else {
            return Err(self.no_leader_answer(model));
        };
        let mut id = wanted.id.clone();
        loop {
            let entry = answers.borrow().get(model).cloned();
            match entry {
                // A later request for the model (another operator) replaced ours: the leader
                // places the same intent for both, so its answer is ours.
                Some(w) if w.id != id && !w.answered() => id = w.id,
                Some(w) if w.id == id && w.done => break,
                Some(w) if w.id == id => {
                    if let Some((code, message)) = w.error {
                        return Err(ClientError::router(Code::from(code), message));
                    }
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                if !self.cluster.view().candidates(model, "").is_empty() {
                    return Ok(());
                }
                return Err(self.no_leader_answer(model));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while self.cluster.view().candidates(model, "").is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Waits (bounded by the lazy-load timeout) for loads already under way to serve `model`;
    /// once none is under way, a little longer for the nodes' statuses to show the result.
    async fn wait_placed(&self, model: &str) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.settings.lazy_load_timeout;
        let mut settled: Option<Instant> = None;
        while Instant::now() < deadline {
            let view = self.cluster.view();
            if !view.candidates(model, "").is_empty() {
                return Ok(());
            }
            let under_way =
                self.loading_anywhere(model) || view.models.get(model).is_some_and(|r| !r.loading.is_empty());
            if under_way {
                settled = None;
            } else if settled.get_or_insert_with(Instant::now).elapsed() > STATUS_GRACE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(ClientError::unavailable(format!("model '{model}': the loads in progress did not make it ready")))
    }

    /// Loads `model` on its holders and on new nodes up to its replica count, one operator's
    /// load of a model at a time (a second waits, then reloads the same replicas).
    async fn place_operator_load(
        self: &Arc<Self>,
        model: &str,
        parameters: HashMap<String, pb::ModelRepositoryParameter>,
    ) -> Result<(), ClientError> {
        let turn = self.operator_loads.entry(model.to_string()).or_default().clone();
        let result = {
            let _turn = turn.lock().await;
            self.place_operator_load_now(model, parameters).await
        };
        drop(turn);
        // The last one out removes the entry, so the map holds only loads in progress.
        self.operator_loads.remove_if(model, |_, t| Arc::strong_count(t) == 1);
        result
    }

    async fn place_operator_load_now(
        self: &Arc<Self>,
        model: &str,
        parameters: HashMap<String, pb::ModelRepositoryParameter>,
    ) -> Result<(), ClientError> {
        let (placeable, loads) = self.snapshot();
        let holders: Vec<Arc<Node>> = placeable
            .iter()
            .filter(|n| {
                n.status().is_some_and(|s| s.models.iter().any(|m| m.name == model && !m.state.is_empty()))
            })
            .cloned()
            .collect();
        // Loads already under way (a replica top-up that saw the pin first, another router's)
        // count towards the target: they load the same intent.
        let under_way = loads
            .iter()
            .filter(|l| l.models.contains(model) && !holders.iter().any(|h| h.addr == l.key))
            .count();
        let target = self.replicas_of(model).saturating_sub(under_way);
        let mut targets = holders.clone();
        if holders.len() < target {
            // An operator's load is always attempted, even where the model failed recently.
            targets.extend(self.choose_excluding(model, target - holders.len(), &HashSet::new()));
        }
        if targets.is_empty() {
            if under_way > 0 {
                return self.wait_placed(model).await;
            }
            return Err(self.no_node_for(model));
        }
        let results =
            futures::future::join_all(targets.iter().map(|n| self.load_on(n, model, parameters.clone())))
                .await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        match results.into_iter().find_map(Result::err) {
            Some(e) if ok == 0 => {
                if is_unknown_model(&e) {
                    // Nothing to keep placed: a pin would have every round ask the nodes again.
                    self.pinned.write().unwrap_or_else(PoisonError::into_inner).remove(model);
                    self.intents.write().unwrap_or_else(PoisonError::into_inner).remove(model);
                    self.publish_desired();
                    if let Err(store_error) = self.store.clear_intent(model).await {
                        tracing::warn!(model, error = %store_error, "cannot clear the pin of an unknown model");
                    }
                }
                Err(e)
            }
            _ => Ok(()),
        }
    }

    /// RepositoryModelUnload through the router: unpins the model, unloads it everywhere, and
    /// stops lazy loading of it until it is loaded again. `unload_dependents` goes to the nodes
    /// (an ensemble's composing models loaded for it go with it there).
    pub async fn unload_explicit(&self, model: &str, unload_dependents: bool) -> Result<(), ClientError> {
        let was_pinned = self.pinned.read().unwrap_or_else(PoisonError::into_inner).contains(model);
        // A name no node knows has nothing to stop (and must not grow the set).
        let known = was_pinned || self.cluster.knows_model(model);
        if known {
            // Recorded first: with etcd unreachable the unload is refused, not half applied.
            self.store
                .set_intent(model, self.intent(model, Desired::Unloaded, None))
                .await
                .map_err(store_unavailable)?;
        }
        self.pinned.write().unwrap_or_else(PoisonError::into_inner).remove(model);
        self.intents.write().unwrap_or_else(PoisonError::into_inner).remove(model);
        if known {
            self.unloaded.write().unwrap_or_else(PoisonError::into_inner).insert(model.to_string());
        }
        self.last_used.remove(model);
        self.publish_desired();
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
            return Err(ClientError::unavailable(format!(
                "model '{model}': no node of the cluster is healthy"
            )));
        }
        let results =
            futures::future::join_all(holders.iter().map(|n| self.unload_on(n, model, unload_dependents)))
                .await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        match results.into_iter().find_map(Result::err) {
            Some(e) if ok == 0 => Err(e),
            _ => Ok(()),
        }
    }
}

/// An operator's change the cluster store could not record: UNAVAILABLE, naming the store.
fn store_unavailable(e: StoreError) -> ClientError {
    ClientError::unavailable(format!("{e}; operators' loads and unloads are refused until it is reachable"))
}
