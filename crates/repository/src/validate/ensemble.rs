//! Ensembles (`platform: "ensemble"` with `ensemble_scheduling`): a config with no model file
//! whose steps run other models, the tensors flowing between them by name. Two checks, as in
//! Triton:
//! - [`validate_ensemble`] the config on its own (core src/model_config_utils.cc,
//!   `ValidateEnsembleSchedulingConfig` and `BuildEnsembleGraph`): the steps are complete, no
//!   ensemble tensor is written twice, every ensemble input is used, every output is written
//!   (a cycle leaves its tensors never written), no tensor is left unused;
//! - [`check_ensemble_steps`] against the composing models' completed configs, once they are
//!   loaded (core src/ensemble_scheduler/ensemble_utils.cc, `ValidateEnsembleConfig` and
//!   `ValidateTensorMapping`): max_batch_size, every step input mapped once, no unknown input
//!   or output, and each ensemble tensor's datatype and shape agree wherever it is used.
//!
//! Messages keep Triton's words and name the ensemble, the step's model and the tensor.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use tern_proto::inference::ModelConfig;
use tern_proto::inference::model_config::SchedulingChoice;

use super::tensor::ConfigTensor;
use super::{config_type_name, shape_string};
use crate::error::{RepositoryError, TensorKind};

/// Triton's `kEnsemblePlatform`.
pub const ENSEMBLE_PLATFORM: &str = "ensemble";

/// The most steps an ensemble may have: the config is a file, so its size is bounded.
pub const MAX_ENSEMBLE_STEPS: usize = 256;

/// One step of a validated ensemble: the model it runs and how its tensors map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsembleStep {
    pub model: String,
    /// `-1` (Triton's default in practice: the latest ready version), or a version number.
    pub version: i64,
    /// (step model input, ensemble tensor), sorted by input name.
    pub inputs: Vec<(String, String)>,
    /// (step model output, ensemble tensor), sorted by output name.
    pub outputs: Vec<(String, String)>,
}

impl EnsembleStep {
    /// The version as a request names it ("" = the latest ready one).
    pub fn version_str(&self) -> String {
        if self.version > 0 { self.version.to_string() } else { String::new() }
    }
}

/// The steps of an ensemble whose data flow is valid on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsembleGraph {
    pub steps: Vec<EnsembleStep>,
}

impl EnsembleGraph {
    /// The composing models' names, each once, in step order.
    pub fn models(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.steps.iter().map(|s| s.model.as_str()).filter(|m| seen.insert(*m)).collect()
    }
}

/// Whether `config` describes an ensemble (either field makes it one; validation then
/// requires both).
pub fn is_ensemble(config: &ModelConfig) -> bool {
    config.platform == ENSEMBLE_PLATFORM
        || matches!(config.scheduling_choice, Some(SchedulingChoice::EnsembleScheduling(_)))
}

/// Triton's checks of an ensemble's config on its own; returns its steps.
pub fn validate_ensemble(config: &ModelConfig) -> Result<EnsembleGraph, RepositoryError> {
    let name = config.name.as_str();
    let invalid = |message: String| RepositoryError::invalid(name, message);
    if name.is_empty() {
        return Err(invalid("model configuration must specify 'name'".into()));
    }
    let Some(SchedulingChoice::EnsembleScheduling(scheduling)) = &config.scheduling_choice else {
        return Err(invalid(format!(
            "ensemble scheduling must be set for ensemble {name} whose platform is {ENSEMBLE_PLATFORM}"
        )));
    };
    if config.platform != ENSEMBLE_PLATFORM {
        return Err(invalid(format!(
            "ensemble scheduling cannot be set for model '{name}' whose platform is not {ENSEMBLE_PLATFORM}"
        )));
    }
    if !config.backend.is_empty() {
        return Err(invalid(format!(
            "Ensemble model '{name}' must have platform type '{ENSEMBLE_PLATFORM}' and empty backend type"
        )));
    }
    if !config.instance_group.is_empty() {
        return Err(invalid(format!("instance group should not be specified for ensemble '{name}'")));
    }
    if config.optimization.is_some() {
        return Err(invalid(format!("optimization should not be specified for ensemble '{name}'")));
    }
    if !config.model_warmup.is_empty() {
        return Err(invalid(format!("model_warmup can not be specified for ensemble '{name}'")));
    }
    // Triton caches an ensemble's top-level responses (core src/ensemble_scheduler/
    // ensemble_scheduler.cc, `CacheLookUp` in `Enqueue`, `CacheEnsembleTopLevelRequest` in
    // `FinishEnsemble`), under the rules of any model's cache (`ValidateModelConfig`).
    super::check_response_cache(config)?;
    if config.max_batch_size < 0 {
        return Err(invalid(format!("max_batch_size {} is invalid: it must be >= 0", config.max_batch_size)));
    }
    crate::bounds::check_bounds(name, config)?;
    check_io_fields(config)?;
    if scheduling.step.is_empty() {
        return Err(invalid(format!("must specify 'step' for ensemble '{name}'")));
    }
    if scheduling.step.len() > MAX_ENSEMBLE_STEPS {
        return Err(invalid(format!(
            "ensemble '{name}' has {} steps, over the limit of {MAX_ENSEMBLE_STEPS}",
            scheduling.step.len()
        )));
    }

    let mut steps = Vec::with_capacity(scheduling.step.len());
    // Ensemble tensor -> the step that writes it.
    let mut written_by: HashMap<&str, usize> = HashMap::new();
    for (index, step) in scheduling.step.iter().enumerate() {
        let missing =
            |field: &str| invalid(format!("must specify '{field}' in step {index} of ensemble '{name}'"));
        if step.model_name.is_empty() {
            return Err(missing("model_name"));
        }
        if step.input_map.is_empty() {
            return Err(missing("input_map"));
        }
        if step.output_map.is_empty() {
            return Err(missing("output_map"));
        }
        crate::validate_model_name(&step.model_name)
            .map_err(|e| invalid(format!("step {index} of ensemble '{name}': {e}")))?;
        if step.model_name == name {
            return Err(invalid(format!("circular dependency between ensembles: {name} -> {name}")));
        }
        for tensor in step.output_map.values() {
            if written_by.insert(tensor.as_str(), index).is_some() {
                return Err(invalid(format!(
                    "ensemble tensor '{tensor}' can appear in an output map only once for ensemble \
                     '{name}' step {index}"
                )));
            }
        }
        let sorted = |map: &HashMap<String, String>| {
            let mut pairs: Vec<(String, String)> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            pairs.sort();
            pairs
        };
        steps.push(EnsembleStep {
            model: step.model_name.clone(),
            version: step.model_version,
            inputs: sorted(&step.input_map),
            outputs: sorted(&step.output_map),
        });
    }
    let graph = EnsembleGraph { steps };
    check_data_flow(config, &graph)?;
    Ok(graph)
}

/// The ensemble's own inputs and outputs: unique names, data types and dims given.
fn check_io_fields(config: &ModelConfig) -> Result<(), RepositoryError> {
    let model = config.name.as_str();
    let inputs = config.input.iter().map(|i| ConfigTensor {
        kind: TensorKind::Input,
        name: &i.name,
        data_type: i.data_type,
        dims: &i.dims,
        reshape: i.reshape.as_ref(),
    });
    let outputs = config.output.iter().map(|o| ConfigTensor {
        kind: TensorKind::Output,
        name: &o.name,
        data_type: o.data_type,
        dims: &o.dims,
        reshape: o.reshape.as_ref(),
    });
    let mut seen = HashSet::new();
    for tensor in inputs.chain(outputs) {
        tensor.check_shape_fields(model, config.max_batch_size)?;
        // Inputs and outputs share one namespace of ensemble tensors.
        if !seen.insert(tensor.name) {
            return Err(RepositoryError::invalid(
                model,
                format!(
                    "ensemble tensor '{}' is listed more than once among the ensemble's inputs and outputs",
                    tensor.name
                ),
            ));
        }
    }
    Ok(())
}

/// Triton's data-flow walk: from the ensemble inputs, a tensor is ready once every input of
/// the step writing it is. A cycle's tensors never become ready.
fn check_data_flow(config: &ModelConfig, graph: &EnsembleGraph) -> Result<(), RepositoryError> {
    let name = config.name.as_str();
    let invalid = |message: String| RepositoryError::invalid(name, message);
    // Every tensor the steps mention: who writes it, who reads it.
    let mut writer: HashMap<&str, usize> = HashMap::new();
    let mut readers: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, step) in graph.steps.iter().enumerate() {
        for (_, tensor) in &step.outputs {
            writer.insert(tensor, index);
            readers.entry(tensor).or_default();
        }
        for (_, tensor) in &step.inputs {
            readers.entry(tensor).or_default().push(index);
        }
    }
    let mut ready: HashSet<&str> = HashSet::new();
    let mut queue = VecDeque::new();
    for input in &config.input {
        if !readers.contains_key(input.name.as_str()) {
            return Err(invalid(format!("ensemble input '{}' for ensemble {name}' is not used", input.name)));
        }
        if writer.contains_key(input.name.as_str()) {
            return Err(invalid(format!(
                "ensemble tensor '{}' is an input of ensemble '{name}' and is also written by step {}",
                input.name,
                writer[input.name.as_str()]
            )));
        }
        ready.insert(&input.name);
        queue.push_back(input.name.as_str());
    }
    let mut step_done = vec![false; graph.steps.len()];
    while let Some(tensor) = queue.pop_front() {
        for &index in &readers[tensor] {
            let step = &graph.steps[index];
            if step_done[index] || !step.inputs.iter().all(|(_, t)| ready.contains(t.as_str())) {
                continue;
            }
            step_done[index] = true;
            for (_, out) in &step.outputs {
                if ready.insert(out) {
                    queue.push_back(out);
                }
            }
        }
    }
    for output in &config.output {
        if !readers.contains_key(output.name.as_str()) {
            return Err(invalid(format!(
                "ensemble output '{}' for ensemble {name}' is not used",
                output.name
            )));
        }
        if !ready.contains(output.name.as_str()) {
            let mut message = format!("output '{}' for ensemble '{name}' is not written", output.name);
            if let Some(source) = unconnected_source(&output.name, graph, &writer, &ready) {
                message += &format!(": at least one of its depending tensors, '{source}', is not connected");
            }
            return Err(invalid(message));
        }
    }
    let outputs: HashSet<&str> = config.output.iter().map(|o| o.name.as_str()).collect();
    for (tensor, reading) in &readers {
        if outputs.contains(tensor) {
            continue;
        }
        if !ready.contains(tensor) || reading.is_empty() {
            return Err(invalid(format!("ensemble tensor '{tensor}' is unused in ensemble '{name}'")));
        }
    }
    Ok(())
}

/// Walks back from a tensor that is never written to the furthest tensor it depends on that
/// is not ready either (remembering names, as a cycle would loop), as Triton's message does.
fn unconnected_source<'a>(
    start: &'a str,
    graph: &'a EnsembleGraph,
    writer: &HashMap<&str, usize>,
    ready: &HashSet<&str>,
) -> Option<&'a str> {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut last = start;
    while let Some(&index) = writer.get(last) {
        let next = graph.steps[index]
            .inputs
            .iter()
            .map(|(_, t)| t.as_str())
            .find(|t| !ready.contains(t) && !seen.contains(t));
        let Some(next) = next else { break };
        seen.insert(next);
        last = next;
    }
    (last != start).then_some(last)
}

/// What a step model declares about one tensor, as the checks see it.
struct TensorNode<'a> {
    model: &'a str,
    data_type: i32,
    dims: &'a [i64],
    batching: bool,
}

impl TensorNode<'_> {
    /// The shape with the batch dimension (-1) when the model batches.
    fn full_dims(&self) -> Vec<i64> {
        let batch = self.batching.then_some(-1);
        batch.into_iter().chain(self.dims.iter().copied()).collect()
    }
}

/// Same length, and each dimension equal or -1 on either side (Triton's
/// `CompareDimsWithWildcard`).
fn dims_agree(a: &[i64], b: &[i64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| x == -1 || y == -1 || x == y)
}

/// Triton's `ValidateTensorConsistency`: the same ensemble tensor seen by two models.
fn check_consistent(
    ensemble: &str,
    tensor: &str,
    a: &TensorNode<'_>,
    b: &TensorNode<'_>,
) -> Result<(), RepositoryError> {
    let prefix = format!("in ensemble {ensemble}, ensemble tensor {tensor}: ");
    if a.data_type != b.data_type {
        return Err(RepositoryError::invalid(
            ensemble,
            format!(
                "{prefix}inconsistent data type: {} is inferred from model {} while {} is inferred from model {}",
                config_type_name(a.data_type),
                a.model,
                config_type_name(b.data_type),
                b.model
            ),
        ));
    }
    // A tensor may pass between a batching and a non-batching model: then the non-batching
    // model's full shape [-1, ...] matches the batching model's dims with the batch dimension.
    if !dims_agree(a.dims, b.dims) && !dims_agree(&a.full_dims(), &b.full_dims()) {
        return Err(RepositoryError::invalid(
            ensemble,
            format!(
                "{prefix}inconsistent shape: {} is inferred from model {} while {} is inferred from model {}",
                shape_string(&a.full_dims()),
                a.model,
                shape_string(&b.full_dims()),
                b.model
            ),
        ));
    }
    Ok(())
}

/// Triton's checks of an ensemble against its composing models' completed configs
/// (`step_configs[i]` is the config of the model step `i` runs). Steps that are decoupled are
/// refused: Tern's ensembles run one response per step.
pub fn check_ensemble_steps(
    config: &ModelConfig,
    graph: &EnsembleGraph,
    step_configs: &[&ModelConfig],
) -> Result<(), RepositoryError> {
    let ensemble = config.name.as_str();
    let batching = config.max_batch_size > 0;
    let invalid = |message: String| RepositoryError::invalid(ensemble, message);
    let mut tensors: HashMap<&str, TensorNode<'_>> = HashMap::new();
    for io in config
        .input
        .iter()
        .map(|i| (&i.name, i.data_type, &i.dims, &i.reshape))
        .chain(config.output.iter().map(|o| (&o.name, o.data_type, &o.dims, &o.reshape)))
    {
        let (name, data_type, dims, reshape) = io;
        let dims = reshape.as_ref().map_or(dims.as_slice(), |r| r.shape.as_slice());
        tensors.insert(name, TensorNode { model: ensemble, data_type, dims, batching });
    }
    for (index, step) in graph.steps.iter().enumerate() {
        let Some(&model_config) = step_configs.get(index) else {
            return Err(invalid(format!("in ensemble {ensemble}, step {index} has no model config")));
        };
        let model = step.model.as_str();
        if model_config.max_batch_size != 0 && model_config.max_batch_size < config.max_batch_size {
            return Err(invalid(format!(
                "ensemble {ensemble} allows maximum batch size {}, but it contains model {model} \
                 which only allows maximum batch size to be {}",
                config.max_batch_size, model_config.max_batch_size
            )));
        }
        if model_config.model_transaction_policy.as_ref().is_some_and(|p| p.decoupled) {
            return Err(invalid(format!(
                "in ensemble {ensemble}, model {model} is decoupled; Tern's ensembles run models \
                 with one response per request"
            )));
        }
        let step_batching = model_config.max_batch_size > 0;
        for (input, tensor) in &step.inputs {
            if !model_config.input.iter().any(|i| &i.name == input) {
                return Err(invalid(format!(
                    "in ensemble {ensemble}, ensemble tensor {tensor} is mapping to non-existing \
                     input {input} in model {model}"
                )));
            }
        }
        for model_input in &model_config.input {
            let Some((_, tensor)) = step.inputs.iter().find(|(i, _)| *i == model_input.name) else {
                if model_input.optional {
                    continue;
                }
                return Err(invalid(format!(
                    "in ensemble {ensemble}, input {} in model {model} is not mapped to any ensemble tensors",
                    model_input.name
                )));
            };
            let node = TensorNode {
                model,
                data_type: model_input.data_type,
                dims: &model_input.dims,
                batching: step_batching,
            };
            match tensors.get(tensor.as_str()) {
                Some(known) => check_consistent(ensemble, tensor, known, &node)?,
                None => {
                    tensors.insert(tensor, node);
                }
            }
        }
        for (output, tensor) in &step.outputs {
            let Some(model_output) = model_config.output.iter().find(|o| &o.name == output) else {
                return Err(invalid(format!(
                    "in ensemble {ensemble}, ensemble tensor {tensor} is mapped from non-existing \
                     output {output} in model {model}"
                )));
            };
            let node = TensorNode {
                model,
                data_type: model_output.data_type,
                dims: &model_output.dims,
                batching: step_batching,
            };
            match tensors.get(tensor.as_str()) {
                Some(known) => check_consistent(ensemble, tensor, known, &node)?,
                None => {
                    tensors.insert(tensor, node);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "ensemble_tests.rs"]
mod tests;
