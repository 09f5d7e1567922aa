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
        // An ensemble's use is its steps' use: their requests come from the ensemble, so a
        // step must not look idle (and be evicted, unloading the ensemble with it) while the
        // ensemble is used. Nested ensembles pass it down, a bounded number of levels.
        let mut steps: Vec<(String, String)> = Vec::new();
        for node in &self.cluster.view().healthy {
            let Some(status) = node.status() else { continue };
            for m in &status.models {
                steps.extend(m.composing_models.iter().map(|s| (m.name.clone(), s.clone())));
            }
        }
        spread_to_steps(&mut out, &steps);
        out
    }
}

/// Gives each step (ensemble, step) the recency of its ensemble when that is later.
fn spread_to_steps(recency: &mut HashMap<String, u64>, steps: &[(String, String)]) {
    const MAX_NESTING: usize = 8;
    for _ in 0..MAX_NESTING {
        let mut changed = false;
        for (ensemble, step) in steps {
            let Some(&used) = recency.get(ensemble) else { continue };
            let t = recency.entry(step.clone()).or_insert(0);
            if used > *t {
                *t = used;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use clap::Parser;
    use tern_proto::cluster::{ModelReplica, NodeStatus};

    use super::*;
    use crate::metrics::RouterMetrics;
    use crate::nodes::{Cluster, Source};
    use crate::placement::{Resident, evictions};
    use crate::store::Intent;

    fn placement(args: &[&str]) -> (Arc<Cluster>, Placement) {
        let metrics = Arc::new(RouterMetrics::unregistered());
        let cluster = Arc::new(Cluster::new(
            Duration::from_secs(5),
            1,
            None,
            tern_edge::Credential::none(),
            metrics.clone(),
        ));
        let settings = crate::Config::try_parse_from(args).expect("flags").cluster();
        (cluster.clone(), Placement::new(cluster, settings, metrics))
    }

    /// Recency is the nodes' report (their last inference), converted to this router's clock,
    /// and the latest wins whichever router saw the request.
    #[tokio::test]
    async fn recency_comes_from_the_nodes_reports() {
        let (cluster, placement) = placement(&["tern-router"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let wall_now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis()
                as u64;
        let replica = |name: &str, ago_ms: u64| ModelReplica {
            name: name.into(),
            version: "1".into(),
            state: "READY".into(),
            last_inference_ms: if ago_ms == u64::MAX { 0 } else { wall_now - ago_ms },
            ..Default::default()
        };
        let a = cluster.upsert("127.0.0.1:1", Source::Static).expect("a");
        let b = cluster.upsert("127.0.0.1:2", Source::Static).expect("b");
        let status = |models| NodeStatus { models, ..Default::default() };
        cluster.record_status(
            &a,
            status(vec![replica("old", 40), replica("shared", 30), replica("never", u64::MAX)]),
        );
        cluster.record_status(&b, status(vec![replica("shared", 1)]));
        let recency = placement.recency();
        let now = cluster.now_ms();
        // "old" was used 40 ms ago by the node's clock: about 40 ms before now on ours.
        let old = now - recency["old"];
        assert!((40..1000).contains(&old), "old used {old} ms ago");
        // The latest report wins: node b saw "shared" 1 ms ago.
        assert!(recency["shared"] > recency["old"]);
        assert!(!recency.contains_key("never"), "a model never used has no recency");
    }

    /// Steps of an ensemble get no requests of their own: the ensemble's use (seen by this
    /// router, or reported by a node) is theirs, so under memory pressure an idle plain model
    /// goes before a used ensemble's steps, whose eviction would unload the ensemble.
    #[tokio::test]
    async fn a_used_ensemble_keeps_its_steps_from_being_evicted_first() {
        let (cluster, placement) = placement(&["tern-router"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let wall_now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis()
                as u64;
        let replica = |name: &str, ago_ms: Option<u64>, steps: &[&str]| ModelReplica {
            name: name.into(),
            version: "1".into(),
            state: "READY".into(),
            memory_bytes: if steps.is_empty() { 100 } else { 0 },
            last_inference_ms: ago_ms.map_or(0, |ago| wall_now - ago),
            composing_models: steps.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let node = cluster.upsert("127.0.0.1:1", Source::Static).expect("node");
        let models = vec![
            replica("plain", Some(20), &[]),
            // The steps last ran long ago (the ensemble's answers came from its cache since),
            // or never; the outer ensemble runs the inner one.
            replica("pre", Some(40), &[]),
            replica("post", None, &[]),
            replica("inner", Some(40), &["pre", "post"]),
            replica("outer", None, &["inner"]),
        ];
        cluster.record_status(&node, NodeStatus { models, ..Default::default() });
        // The outer ensemble's latest request went through this router.
        placement.last_used.insert("outer".into(), cluster.now_ms());
        let recency = placement.recency();
        for step in ["inner", "pre", "post"] {
            assert!(recency[step] >= recency["outer"], "{step} is as recent as the ensemble that runs it");
            assert!(recency[step] > recency["plain"], "{step}");
        }
        let residents: Vec<Resident> = ["plain", "pre", "post"]
            .iter()
            .map(|m| Resident {
                model: m.to_string(),
                bytes: 100,
                last_used_ms: recency.get(*m).copied().unwrap_or(0),
                busy: false,
                pinned: false,
            })
            .collect();
        // 100 bytes over budget: one model goes, the idle plain one.
        assert_eq!(evictions(200, 300, &residents, cluster.now_ms() + 60_000, 0), vec!["plain".to_string()]);
    }

    /// An operator's intent sets the replica count and the config of new replicas for every
    /// router, whatever its own flags say; without one, the flags count.
    #[test]
    fn intents_set_replicas_and_config() {
        let (_, placement) = placement(&["tern-router", "--model-replicas", "m=3"]);
        assert_eq!(placement.replicas_of("m"), 3);
        assert!(placement.replica_parameters("m").is_empty());
        let pin = Intent {
            desired: Desired::Pinned,
            replicas: 2,
            config: Some("{\"x\":1}".into()),
            router: "b".into(),
        };
        placement.apply_intents(&[("m".to_string(), pin)].into_iter().collect());
        assert_eq!(placement.replicas_of("m"), 2);
        let config = placement.replica_parameters("m");
        assert!(matches!(
            config.get("config").and_then(|p| p.parameter_choice.as_ref()),
            Some(pb::model_repository_parameter::ParameterChoice::StringParam(c)) if c == "{\"x\":1}"
        ));
        let unload = Intent { desired: Desired::Unloaded, replicas: 0, config: None, router: "b".into() };
        placement.apply_intents(&[("m".to_string(), unload)].into_iter().collect());
        assert_eq!(placement.replicas_of("m"), 3, "an unloaded model's count is the flags' again");
    }
}
