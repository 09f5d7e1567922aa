//! Operators' loads and unloads through the router (RepositoryModelLoad/Unload): the intent is
//! written to the cluster store before any node is touched, so every router (and a restarted
//! one) honours it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};

use tern_proto::inference as pb;

use super::{Placement, is_unknown_model};
use crate::error::ClientError;
use crate::nodes::Node;
use crate::store::{Desired, StoreError};

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
        self.store.set_intent(model, self.intent(model, Desired::Pinned)).await.map_err(store_unavailable)?;
        self.unloaded.write().unwrap_or_else(PoisonError::into_inner).remove(model);
        self.pinned.write().unwrap_or_else(PoisonError::into_inner).insert(model.to_string());
        self.publish_desired();
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
            Some(e) if ok == 0 => {
                if is_unknown_model(&e) {
                    // Nothing to keep placed: a pin would have every round ask the nodes again.
                    self.pinned.write().unwrap_or_else(PoisonError::into_inner).remove(model);
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
    /// stops lazy loading of it until it is loaded again.
    pub async fn unload_explicit(&self, model: &str) -> Result<(), ClientError> {
        let was_pinned = self.pinned.read().unwrap_or_else(PoisonError::into_inner).contains(model);
        // A name no node knows has nothing to stop (and must not grow the set).
        let known = was_pinned || self.cluster.knows_model(model);
        if known {
            // Recorded first: with etcd unreachable the unload is refused, not half applied.
            self.store
                .set_intent(model, self.intent(model, Desired::Unloaded))
                .await
                .map_err(store_unavailable)?;
        }
        self.pinned.write().unwrap_or_else(PoisonError::into_inner).remove(model);
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
        let results = futures::future::join_all(holders.iter().map(|n| self.unload_on(n, model))).await;
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
