//! What placement takes from the shared store besides pins and unloads: the intents' replica
//! counts and config, every router's loads in progress, and the nodes' recency.

use std::collections::HashMap;
use std::sync::PoisonError;

use tern_proto::inference as pb;

use super::Placement;
use crate::store::{Desired, LoadingSet};

impl Placement {
    /// The shared store's loads in progress (every router's): placement treats those models
    /// as placed there, so no router starts a second load.
    pub fn set_loading_elsewhere(&self, loading: LoadingSet) {
        *self.loading_elsewhere.write().unwrap_or_else(PoisonError::into_inner) = loading;
    }

    /// True when a load of `model` is in progress on some node, by this router or another.
    pub(super) fn loading_anywhere(&self, model: &str) -> bool {
        self.loading.iter().any(|e| e.key().0 == model)
            || self
                .loading_elsewhere
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|(m, _)| m == model)
    }

    /// Replicas to keep of `model`: the count of its operator's intent (shared by every router
    /// through the store), else this router's --model-replicas / --replicas.
    pub fn replicas_of(&self, model: &str) -> usize {
        self.intents
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
            .filter(|i| i.desired == Desired::Pinned && i.replicas > 0)
            .map_or_else(|| self.settings.replicas_of(model), |i| i.replicas)
    }

    /// Load parameters for a new replica of `model`: the config override of its operator's
    /// intent, so every replica serves the versions the operator chose.
    pub(super) fn replica_parameters(&self, model: &str) -> HashMap<String, pb::ModelRepositoryParameter> {
        let intents = self.intents.read().unwrap_or_else(PoisonError::into_inner);
        let Some(config) =
            intents.get(model).filter(|i| i.desired == Desired::Pinned).and_then(|i| i.config.clone())
        else {
            return HashMap::new();
        };
        let value = pb::model_repository_parameter::ParameterChoice::StringParam(config);
        HashMap::from([(
            "config".to_string(),
            pb::ModelRepositoryParameter { parameter_choice: Some(value) },
        )])
    }

    /// When each model was last used anywhere, on this router's clock: the latest of the
    /// nodes' reports (their last inference) and this router's own requests.
    pub(super) fn recency(&self) -> HashMap<String, u64> {
        let now = self.cluster.now_ms();
        let wall_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut out: HashMap<String, u64> =
            self.last_used.iter().map(|e| (e.key().clone(), *e.value())).collect();
        for node in &self.cluster.view().healthy {
            let Some(status) = node.status() else { continue };
            for m in status.models.iter().filter(|m| m.last_inference_ms > 0) {
                // Wall-clock ages: a node's clock only has to agree with ours on the age.
                let at = now.saturating_sub(wall_now.saturating_sub(m.last_inference_ms)).max(1);
                let t = out.entry(m.name.clone()).or_insert(0);
                *t = (*t).max(at);
            }
        }
        out
    }
}
