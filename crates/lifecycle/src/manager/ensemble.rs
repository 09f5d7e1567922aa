//! The manager's side of ensembles: their composing models load first, and an unloaded
//! composing model takes its ensembles down with it.

use futures::future::BoxFuture;
use tern_proto::inference::ModelConfig;

use super::ModelManager;
use crate::table::{ModelEntry, VersionState};

impl ModelManager {
    /// Loads the composing models `config` (ensemble `name`'s) needs that have no ready version,
    /// deepest first. Triton's explicit-mode load of an ensemble polls its composing models
    /// with it and loads them (model_repository_manager.cc, `PollModels`: "A polling chain is
    /// needed if the polled model is ensemble"); models already serving are left as they are.
    /// A step that fails to load is reported by the ensemble's own load; a cycle between
    /// ensembles is the error returned. Boxed: a step may be an ensemble, whose load comes here
    /// again.
    pub(super) fn ensure_steps<'a>(
        &'a self,
        name: &'a str,
        config: &'a ModelConfig,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let repositories = self.repositories.clone();
            let (owned, config) = (name.to_owned(), config.clone());
            let order = tokio::task::spawn_blocking(move || {
                crate::ensemble::dependency_order(&repositories, &owned, &config)
            })
            .await
            .map_err(|e| format!("model '{name}': reading its composing models failed: {e}"))??;
            for step in order {
                if self.get(&step, "").is_ok() {
                    continue;
                }
                tracing::info!(ensemble = %name, model = %step, "loading a composing model of the ensemble");
                // Not a load by name: Triton marks only the requested model `explicitly_load_`,
                // so an unload of the ensemble with `unload_dependents` may take this one too.
                let loaded = self.flights.join(&step, || self.load_from(&step, None, Vec::new())).await;
                if let Err(e) = loaded {
                    tracing::warn!(ensemble = %name, model = %step, error = %e, "composing model failed to load");
                }
            }
            Ok(())
        })
    }

    /// Whether a ready ensemble runs `step` in one of its steps (Triton: the node still has
    /// downstreams, so a cascading unload keeps it).
    pub(super) fn run_by_an_ensemble(&self, step: &str) -> bool {
        self.table.load().values().any(|entry| entry.ready().any(|m| crate::ensemble::runs(m, step)))
    }

    /// Unloads the ensembles that run `step`, now unloaded. In Triton the ensemble's dependency
    /// on a model no longer there makes it invalid, and it is unloaded (model_repository_manager.cc,
    /// `ConnectDependencyGraph`: "contains models that are not available"; `LoadModelByDependency`
    /// unloads invalid nodes); the composing models of an unloaded ensemble stay loaded.
    pub(super) fn unload_dependents<'a>(&'a self, step: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let dependents: Vec<String> = self
                .table
                .load()
                .iter()
                .filter(|(_, entry)| entry.ready().any(|m| crate::ensemble::runs(m, step)))
                .map(|(name, _)| name.clone())
                .collect();
            for ensemble in dependents {
                tracing::warn!(
                    model = %ensemble,
                    "ensemble {ensemble} contains models that are not available or ambiguous: {step}; unloading it"
                );
                if let Err(e) = self.unload(&ensemble).await {
                    tracing::warn!(model = %ensemble, error = %e, "unloading the ensemble failed");
                }
            }
        })
    }

    /// After `step` (re)loaded: the ensembles that run it are checked again against the
    /// composing models now serving, as Triton checks an ensemble whose dependency changed
    /// (model_repository_manager.cc, `CheckNode` then `ValidateEnsembleConfig`). One that no
    /// longer fits is unloaded, with the reason in the repository index; the others keep
    /// serving, now on the new version of `step` (the node finds it per request).
    pub(super) fn revalidate_dependents<'a>(&'a self, step: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let invalid: Vec<(String, String)> = {
                let table = self.table.load();
                table
                    .iter()
                    .filter_map(|(name, entry)| {
                        let model = entry.ready().find(|m| crate::ensemble::runs(m, step))?;
                        crate::ensemble::check_against_table(&model.config, &table)
                            .err()
                            .map(|e| (name.clone(), e))
                    })
                    .collect()
            };
            self.invalidate_cached_responses(step, 0);
            for (ensemble, reason) in invalid {
                tracing::error!(model = %ensemble, %reason, "ensemble no longer fits its composing models; unloading it");
                let versions: Vec<u64> = self
                    .table
                    .load()
                    .get(&ensemble)
                    .map(|e| e.versions.keys().copied().collect())
                    .unwrap_or_default();
                if self.unload(&ensemble).await.is_ok() {
                    let versions = versions
                        .into_iter()
                        .map(|v| (v, VersionState::Unavailable(reason.clone())))
                        .collect();
                    self.store(
                        &ensemble,
                        Some(ModelEntry { versions, reason: Some(reason), fingerprint: 0 }),
                    );
                }
            }
        })
    }

    /// The ensembles that run `step` (and those that run them) forget their cached responses:
    /// a reloaded step may answer differently, and a cached answer must be one the ensemble
    /// would give now.
    fn invalidate_cached_responses(&self, step: &str, depth: usize) {
        if depth >= 8 {
            return;
        }
        let dependents: Vec<(String, Vec<std::sync::Arc<crate::LoadedModel>>)> = self
            .table
            .load()
            .iter()
            .map(|(name, entry)| {
                (name.clone(), entry.ready().filter(|m| crate::ensemble::runs(m, step)).cloned().collect())
            })
            .filter(|(_, models): &(String, Vec<_>)| !models.is_empty())
            .collect();
        for (name, models) in dependents {
            for model in models {
                model.scheduler.invalidate_response_cache();
            }
            self.invalidate_cached_responses(&name, depth + 1);
        }
    }
}
