//! Loading an ensemble: a config with no model file, whose steps run other models of the
//! table. As in Triton (core src/model_repository_manager/model_repository_manager.cc,
//! `CheckNode`), an ensemble loads only once its composing models have a loaded version (each
//! step's `model_version`, or any for -1), and its config is then checked against theirs
//! (`ValidateEnsembleConfig`). The loaded ensemble holds no instance: its scheduler (with no
//! instance threads) only keeps its statistics; the node runs its steps through the composing
//! models' own schedulers, found in the table per request, so a step's reload keeps the
//! ensemble serving.

use std::collections::HashMap;
use std::sync::Arc;

use tern_proto::inference::ModelConfig;
use tern_repository::{EnsembleGraph, EnsembleStep, ModelSource};

use crate::loader::LoadedModel;
use crate::table::{ModelEntry, VersionState};

type VersionResults = Vec<(u64, Result<LoadedModel, String>)>;

/// The composing model version a step runs: `-1` (or 0) the highest ready one, else that version.
pub(crate) fn step_model<'a>(
    ensemble: &str,
    step: &EnsembleStep,
    table: &'a HashMap<String, ModelEntry>,
) -> Result<&'a Arc<LoadedModel>, String> {
    let model = step.model.as_str();
    let entry = table.get(model);
    let ready = entry.and_then(|e| e.ready().next_back());
    let Some(latest) = ready else {
        let Some(entry) = entry else {
            // No repository holds it (the ensemble's load already tried to load it): Triton's
            // words for a dependency it cannot find (`ConnectDependencyGraph`).
            return Err(format!(
                "ensemble {ensemble} contains models that are not available or ambiguous: {model}"
            ));
        };
        let entry = Some(entry);
        // Triton's words (CheckNode); with the reason the step's load failed, when it did.
        let failure = entry.and_then(|e| {
            e.reason.clone().or_else(|| {
                e.versions.values().find_map(|s| match s {
                    VersionState::Unavailable(r) => Some(r.clone()),
                    VersionState::Ready(_) => None,
                })
            })
        });
        return Err(match failure {
            Some(reason) => format!(
                "ensemble '{ensemble}' depends on '{model}' which has no loaded version. Model \
                 '{model}' loading failed with error: {reason}"
            ),
            None => format!("ensemble '{ensemble}' depends on '{model}' which has no loaded version."),
        });
    };
    if step.version <= 0 {
        return Ok(latest);
    }
    let wanted = step.version as u64;
    match entry.and_then(|e| e.versions.get(&wanted)) {
        Some(VersionState::Ready(m)) => Ok(m),
        _ => Err(format!(
            "ensemble '{ensemble}' depends on '{model}' whose required version {wanted} is not loaded."
        )),
    }
}

/// Checks `config` on its own and against the composing models loaded in `table`.
pub(crate) fn check_against_table(
    config: &ModelConfig,
    table: &HashMap<String, ModelEntry>,
) -> Result<EnsembleGraph, String> {
    let name = config.name.as_str();
    let graph = tern_repository::validate_ensemble(config).map_err(|e| e.to_string())?;
    let mut models = Vec::with_capacity(graph.steps.len());
    for step in &graph.steps {
        let model = step_model(name, step, table).map_err(|e| format!("model '{name}': {e}"))?;
        if model.ensemble.is_none() && model.generative.is_some() {
            return Err(format!(
                "model '{name}': in ensemble {name}, model {} is a generative model (decoupled); \
                 Tern's ensembles do not run decoupled models yet, only models that give one \
                 response per request",
                step.model
            ));
        }
        models.push(model.clone());
    }
    let configs: Vec<&ModelConfig> = models.iter().map(|m| &m.config).collect();
    tern_repository::check_ensemble_steps(config, &graph, &configs).map_err(|e| e.to_string())?;
    Ok(graph)
}

/// Loads every version the policy selects of ensemble `source` with `config`, against the
/// composing models in `table`. No blocking work: nothing is read or opened.
pub(crate) fn load_ensemble_versions(
    source: &ModelSource,
    mut config: ModelConfig,
    table: &HashMap<String, ModelEntry>,
    runtime: &tokio::runtime::Handle,
    response_cache: Option<&Arc<tern_scheduler::ResponseCache>>,
) -> Result<VersionResults, String> {
    let name = source.name.clone();
    if config.name.is_empty() {
        config.name = name.clone();
    } else if config.name != name {
        return Err(format!(
            "model '{name}': the config's name '{}' differs from the model directory's",
            config.name
        ));
    }
    let graph = Arc::new(check_against_table(&config, table)?);
    let versions = tern_repository::select_versions(source, &config);
    if versions.is_empty() {
        return Err(format!(
            "model '{name}': an ensemble needs a version directory (an empty '1/' will do), as in Triton"
        ));
    }
    // Triton reads label files for every model, ensembles included (core src/model.cc, the
    // label provider filled from each output's `label_filename`), so `class_count` on an
    // ensemble's output answers with the ensemble's labels.
    let labels = tern_repository::load_labels(&source.dir, &config).map_err(|e| e.to_string())?;
    let io = crate::loader::model_io(&config, &labels)?;
    Ok(versions
        .into_iter()
        .map(|v| {
            // The steps run the ensemble; its scheduler keeps the statistics and the drain.
            let scheduler = crate::loader::bookkeeping_scheduler(&name, v, &config, runtime);
            // Triton caches the ensemble's top-level responses when its config asks and the
            // server has a cache (ensemble_scheduler.cc: `is_cache_enabled_`); the steps are
            // then not run for a hit.
            let wants_cache = config.response_cache.as_ref().is_some_and(|c| c.enable);
            let scheduler = scheduler.map(|s| match response_cache {
                Some(cache) if wants_cache => s.with_response_cache(cache.clone(), v),
                None if wants_cache => {
                    tracing::warn!(
                        model = %name,
                        "response_cache is enabled in the config but the node has no cache \
                         (--cache-config local,size=N): responses are not cached"
                    );
                    s
                }
                _ => s,
            });
            let loaded = scheduler.map(|scheduler| LoadedModel {
                name: name.clone(),
                version: v,
                version_str: v.to_string(),
                config: config.clone(),
                io: io.clone(),
                scheduler,
                latency: std::sync::OnceLock::new(),
                generation_metrics: std::sync::OnceLock::new(),
                memory_bytes: 0,
                generative: None,
                ensemble: Some(graph.clone()),
            });
            tracing::info!(model = %name, version = v, steps = graph.steps.len(), "loaded ensemble");
            (v, loaded)
        })
        .collect())
}

/// The composing models of `config` (an ensemble's, not yet validated), each once.
pub(crate) fn step_names(config: &ModelConfig) -> Vec<String> {
    use tern_proto::inference::model_config::SchedulingChoice;
    let Some(SchedulingChoice::EnsembleScheduling(s)) = &config.scheduling_choice else {
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::new();
    for step in s.step.iter().take(tern_repository::MAX_ENSEMBLE_STEPS) {
        if !step.model_name.is_empty() && !names.contains(&step.model_name) {
            names.push(step.model_name.clone());
        }
    }
    names
}

/// The composing models an ensemble needs loaded, deepest first (a step that is an ensemble
/// comes after its own steps), read from the repositories' configs; or Triton's error for a
/// cycle between ensembles (model_repository_manager.cc, `CircularDependencyCheck`). Blocking:
/// reads config files.
pub(crate) fn dependency_order(
    repositories: &[std::path::PathBuf],
    name: &str,
    config: &ModelConfig,
) -> Result<Vec<String>, String> {
    fn visit(
        repositories: &[std::path::PathBuf],
        name: &str,
        config: &ModelConfig,
        chain: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), String> {
        chain.push(name.to_owned());
        for step in step_names(config) {
            if chain.first() == Some(&step) || chain.contains(&step) {
                let start = chain.first().cloned().unwrap_or_default();
                return Err(format!(
                    "circular dependency between ensembles: {start} -> ... -> {name} -> {step}"
                ));
            }
            if order.contains(&step) {
                continue;
            }
            // A step that is itself an ensemble brings its own steps first.
            let found = tern_repository::scan_model(repositories, &step);
            if let Some(tern_repository::ScannedModel::Found(source)) = found
                && let Some(step_config) = source.config.as_ref().filter(|c| tern_repository::is_ensemble(c))
                && chain.len() < 16
            {
                visit(repositories, &step, step_config, chain, order)?;
            }
            order.push(step);
        }
        chain.pop();
        Ok(())
    }
    let mut order = Vec::new();
    visit(repositories, name, config, &mut Vec::new(), &mut order)?;
    Ok(order)
}

/// Whether ensemble `model` runs `step` in one of its steps.
pub(crate) fn runs(model: &LoadedModel, step: &str) -> bool {
    model.ensemble.as_ref().is_some_and(|g| g.steps.iter().any(|s| s.model == step))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository of ensembles: `name` -> the models its one step runs.
    fn repository(ensembles: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temporary directory");
        for (name, step) in ensembles {
            let model = dir.path().join(name);
            std::fs::create_dir_all(model.join("1")).expect("model directory");
            let config = format!(
                r#"name: "{name}" platform: "ensemble" max_batch_size: 1
                input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }} ]
                output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
                ensemble_scheduling {{ step [ {{ model_name: "{step}" input_map {{ key: "x" value: "x" }}
                output_map {{ key: "y" value: "y" }} }} ] }}"#
            );
            std::fs::write(model.join("config.pbtxt"), config).expect("config");
        }
        dir
    }

    fn order(repository: &tempfile::TempDir, name: &str) -> Result<Vec<String>, String> {
        let repositories = vec![repository.path().to_path_buf()];
        let Some(tern_repository::ScannedModel::Found(source)) =
            tern_repository::scan_model(&repositories, name)
        else {
            panic!("{name} is in the repository");
        };
        dependency_order(&repositories, name, source.config.as_ref().expect("a config"))
    }

    #[test]
    fn nested_ensembles_load_their_steps_first() {
        let repository = repository(&[("outer", "inner"), ("inner", "plain")]);
        assert_eq!(order(&repository, "outer"), Ok(vec!["plain".to_owned(), "inner".to_owned()]));
    }

    #[test]
    fn ensembles_that_run_each_other_are_a_cycle() {
        let repository = repository(&[("a", "b"), ("b", "c"), ("c", "a")]);
        assert_eq!(
            order(&repository, "a"),
            Err("circular dependency between ensembles: a -> ... -> c -> a".to_owned())
        );
    }
}
