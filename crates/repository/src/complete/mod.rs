//! Auto-complete: the config Triton would serve for a model directory, from what config.pbtxt
//! says and what the ONNX model file declares. The steps and their order follow Triton's
//! (server-side backend fields, then config normalization, then instance groups, then the
//! ONNX Runtime backend's own auto-complete, then normalization once more, as Triton does
//! after a backend changed the config): a `dynamic_batching {}` written by the user or added by
//! auto-complete gets `preferred_batch_size: [max_batch_size]`.

use tern_core::{ModelSignature, TensorSpec};
use tern_proto::inference::model_config::SchedulingChoice;
use tern_proto::inference::model_instance_group::Kind;
use tern_proto::inference::model_optimization_policy::PinnedMemoryBuffer;
use tern_proto::inference::model_sequence_batching::StrategyChoice;
use tern_proto::inference::model_version_policy::{Latest, PolicyChoice};
use tern_proto::inference::{
    ModelConfig, ModelDynamicBatching, ModelInput, ModelInstanceGroup, ModelOutput, ModelTensorReshape,
    ModelVersionPolicy,
};

use crate::error::RepositoryError;
use crate::scan::DEFAULT_MODEL_FILENAME;

/// `platform` of an ONNX model.
pub const ONNX_PLATFORM: &str = "onnxruntime_onnx";
/// `backend` of an ONNX model.
pub const ONNX_BACKEND: &str = "onnxruntime";
/// max_batch_size given to a batchable model whose config gives none: Triton's
/// `--backend-config=default-max-batch-size` default.
pub const DEFAULT_MAX_BATCH_SIZE: i32 = 4;
/// Instances in a CPU instance group that gives no count. Triton gives ONNX Runtime (and
/// TensorFlow) models two, every other kind of model and every GPU group one.
pub const DEFAULT_CPU_INSTANCE_COUNT: i32 = 2;
/// Triton's default `sequence_batching.max_sequence_idle_microseconds`.
const DEFAULT_SEQUENCE_IDLE_MICROSECONDS: u64 = 1_000_000;

/// Completes a model's config (`None`: the directory has no config.pbtxt) the way Triton with
/// its ONNX Runtime backend does, so that ModelConfig answers match Triton's.
///
/// Always, strict or not (Triton applies these with `--strict-model-config=true` too, and
/// none of them can change what the model computes):
/// - `name` defaults to the directory name and must equal it;
/// - `platform` / `backend` become `onnxruntime_onnx` / `onnxruntime`; any other is an error;
/// - `default_model_filename` defaults to "model.onnx";
/// - `version_policy` defaults to `latest { num_versions: 1 }`;
/// - a user-written `dynamic_batching` (or `sequence_batching` oldest strategy) with no
///   preferred sizes gets `[max_batch_size]`; sequence batching gets its default idle time;
/// - `optimization` gets `input_pinned_memory` / `output_pinned_memory { enable: true }`;
/// - no `instance_group` becomes one group named after the model; unnamed groups are named
///   `<model>_<index>`; a missing count becomes [`DEFAULT_CPU_INSTANCE_COUNT`] for `KIND_CPU`
///   groups and 1 for `KIND_GPU` / `KIND_MODEL` ones. `KIND_AUTO` groups (the default kind, so
///   also the group added when there is none) are left as they are, count included: this
///   crate knows no devices, and Triton resolves `KIND_AUTO` to GPU when one is present (the
///   backend does, with `tern_backend_ort::instance_plan`, and its default count depends on
///   the kind it picks).
///
/// Only when `strict` is false, from the model file (`signature`):
/// - when the config lists no inputs or no outputs: if every input and output of the model
///   has a dynamic first dimension and max_batch_size is 0, max_batch_size becomes
///   [`DEFAULT_MAX_BATCH_SIZE`] and, with no scheduler chosen, `dynamic_batching {}` is added
///   (an explicit `max_batch_size: 0` cannot be told from an absent one: to serve such a
///   model unbatched, list its inputs and outputs); then the missing list is filled from the
///   model, without the batch dimension when max_batch_size > 0;
/// - a listed input or output with no `dims` gets the model's (a Tern convenience: Triton
///   would reject it).
///
/// With `strict`, a missing config.pbtxt, or one that lists no inputs or no outputs, is an
/// error that names what is missing, rather than something to fill in.
///
/// The result still needs [`validate`](crate::validate) against the same signature.
pub fn auto_complete(
    name: &str,
    config: Option<ModelConfig>,
    signature: &ModelSignature,
    strict: bool,
) -> Result<ModelConfig, RepositoryError> {
    let mut config = match config {
        Some(config) => config,
        None if strict => {
            return Err(RepositoryError::ConfigRequired { model: name.to_owned() });
        }
        None => ModelConfig::default(),
    };

    if config.name.is_empty() {
        config.name = name.to_owned();
    } else if config.name != name {
        return Err(RepositoryError::NameMismatch { model: name.to_owned(), config_name: config.name });
    }
    complete_backend_fields(&mut config)?;
    normalize(&mut config);
    normalize_instance_groups(&mut config);

    if strict {
        require_io(&config, signature)?;
    } else {
        complete_from_signature(&mut config, signature)?;
        // Triton normalizes again after the backend completed the config.
        normalize(&mut config);
    }
    Ok(config)
}

/// Platform and backend must be ONNX Runtime's, or empty (auto-complete fills them: Tern
/// serves nothing else).
pub(crate) fn check_backend_fields(config: &ModelConfig) -> Result<(), RepositoryError> {
    let platform_ok = matches!(config.platform.as_str(), "" | ONNX_PLATFORM);
    let backend_ok = matches!(config.backend.as_str(), "" | ONNX_BACKEND);
    if platform_ok && backend_ok {
        Ok(())
    } else {
        Err(RepositoryError::UnsupportedBackend {
            model: config.name.clone(),
            platform: config.platform.clone(),
            backend: config.backend.clone(),
        })
    }
}

fn complete_backend_fields(config: &mut ModelConfig) -> Result<(), RepositoryError> {
    check_backend_fields(config)?;
    ONNX_PLATFORM.clone_into(&mut config.platform);
    ONNX_BACKEND.clone_into(&mut config.backend);
    if config.default_model_filename.is_empty() {
        DEFAULT_MODEL_FILENAME.clone_into(&mut config.default_model_filename);
    }
    Ok(())
}

/// Triton's `NormalizeModelConfig`.
fn normalize(config: &mut ModelConfig) {
    if config.version_policy.is_none() {
        config.version_policy = Some(ModelVersionPolicy {
            policy_choice: Some(PolicyChoice::Latest(Latest { num_versions: 1 })),
        });
    }
    let max_batch_size = config.max_batch_size;
    match &mut config.scheduling_choice {
        Some(SchedulingChoice::DynamicBatching(batching))
            if batching.preferred_batch_size.is_empty() && max_batch_size > 0 =>
        {
            batching.preferred_batch_size.push(max_batch_size);
        }
        Some(SchedulingChoice::DynamicBatching(_)) => {}
        Some(SchedulingChoice::SequenceBatching(sequence)) => {
            if sequence.max_sequence_idle_microseconds == 0 {
                sequence.max_sequence_idle_microseconds = DEFAULT_SEQUENCE_IDLE_MICROSECONDS;
            }
            if let Some(StrategyChoice::Oldest(oldest)) = &mut sequence.strategy_choice
                && oldest.preferred_batch_size.is_empty()
                && max_batch_size > 0
            {
                oldest.preferred_batch_size.push(max_batch_size);
            }
        }
        // Ensembles are rejected by validation; leave them as written.
        Some(SchedulingChoice::EnsembleScheduling(_)) => return,
        None => {}
    }
    let optimization = config.optimization.get_or_insert_default();
    optimization.input_pinned_memory.get_or_insert(PinnedMemoryBuffer { enable: true });
    optimization.output_pinned_memory.get_or_insert(PinnedMemoryBuffer { enable: true });
}

/// Triton's `NormalizeInstanceGroup`, less what needs to know the devices (`KIND_AUTO`).
fn normalize_instance_groups(config: &mut ModelConfig) {
    if matches!(config.scheduling_choice, Some(SchedulingChoice::EnsembleScheduling(_))) {
        return;
    }
    if config.instance_group.is_empty() {
        config.instance_group.push(ModelInstanceGroup { name: config.name.clone(), ..Default::default() });
    }
    for (index, group) in config.instance_group.iter_mut().enumerate() {
        if group.name.is_empty() {
            group.name = format!("{}_{index}", config.name);
        }
        if group.kind == Kind::Auto as i32 {
            continue;
        }
        if group.count < 1 {
            group.count = if group.kind == Kind::Cpu as i32 { DEFAULT_CPU_INSTANCE_COUNT } else { 1 };
        }
    }
}

/// With `--strict-model-config=true` the config must list the inputs and outputs itself.
fn require_io(config: &ModelConfig, signature: &ModelSignature) -> Result<(), RepositoryError> {
    let mut missing = Vec::new();
    if config.input.is_empty() && config.batch_input.is_empty() && !signature.inputs.is_empty() {
        missing.push(format!("no inputs (the model file has {})", quoted_names(&signature.inputs)));
    }
    if config.output.is_empty() && !signature.outputs.is_empty() {
        missing.push(format!("no outputs (the model file has {})", quoted_names(&signature.outputs)));
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(RepositoryError::invalid(
        &config.name,
        format!(
            "config.pbtxt lists {}; with --strict-model-config=true they must be listed",
            missing.join(" and ")
        ),
    ))
}

/// The ONNX Runtime backend's auto-complete, plus filling empty `dims` of listed tensors.
fn complete_from_signature(
    config: &mut ModelConfig,
    signature: &ModelSignature,
) -> Result<(), RepositoryError> {
    // As the backend counts them: batch inputs count as inputs.
    let has_inputs = !config.input.is_empty() || !config.batch_input.is_empty();
    let has_outputs = !config.output.is_empty();
    if !(has_inputs && has_outputs) {
        // The sequence batcher's control and state tensors are not the client's to send or
        // read: Triton's ONNX Runtime backend leaves them out of the completed config too.
        let signature = &{
            let (sequence_inputs, sequence_outputs) = crate::sequence_tensor_names(config);
            let client_side = |specs: &[TensorSpec], skip: &[&str]| -> Vec<TensorSpec> {
                specs.iter().filter(|s| !skip.contains(&s.name.as_str())).cloned().collect()
            };
            ModelSignature {
                inputs: client_side(&signature.inputs, &sequence_inputs),
                outputs: client_side(&signature.outputs, &sequence_outputs),
            }
        };
        complete_max_batch_size(config, signature)?;
        let max_batch_size = config.max_batch_size;
        if !has_inputs {
            config.input =
                config_tensors(&signature.inputs, max_batch_size, |name, data_type, dims, reshape| {
                    ModelInput { name, data_type, dims, reshape, ..Default::default() }
                });
        }
        if !has_outputs {
            config.output =
                config_tensors(&signature.outputs, max_batch_size, |name, data_type, dims, reshape| {
                    ModelOutput { name, data_type, dims, reshape, ..Default::default() }
                });
        }
    }

    let max_batch_size = config.max_batch_size;
    for input in config.input.iter_mut() {
        if input.dims.is_empty()
            && input.reshape.is_none()
            && let Some(spec) = signature.inputs.iter().find(|s| s.name == input.name)
        {
            (input.dims, input.reshape) = config_dims(spec, max_batch_size);
        }
    }
    for output in config.output.iter_mut() {
        if output.dims.is_empty()
            && output.reshape.is_none()
            && let Some(spec) = signature.outputs.iter().find(|s| s.name == output.name)
        {
            (output.dims, output.reshape) = config_dims(spec, max_batch_size);
        }
    }
    Ok(())
}

fn complete_max_batch_size(
    config: &mut ModelConfig,
    signature: &ModelSignature,
) -> Result<(), RepositoryError> {
    let unbatchable =
        signature.inputs.iter().chain(&signature.outputs).find(|spec| spec.dims.first() != Some(&-1));
    match unbatchable {
        None => {
            if config.max_batch_size == 0 {
                config.max_batch_size = DEFAULT_MAX_BATCH_SIZE;
            }
            if config.max_batch_size > 1 && config.scheduling_choice.is_none() {
                config.scheduling_choice =
                    Some(SchedulingChoice::DynamicBatching(ModelDynamicBatching::default()));
            }
            Ok(())
        }
        Some(spec) if config.max_batch_size > 0 => Err(RepositoryError::invalid(
            &config.name,
            format!(
                "max_batch_size {} > 0 but the model file does not support batching: '{}' has \
                 shape {} in the model file, and batching needs a dynamic (-1) first dimension \
                 on every input and output; set max_batch_size: 0 or re-export the model with a \
                 dynamic batch dimension",
                config.max_batch_size,
                spec.name,
                crate::validate::shape_string(&spec.dims)
            ),
        )),
        // max_batch_size 0 stays; a negative one is for validation to report.
        Some(_) => Ok(()),
    }
}

/// Config entries for the model's own tensors `specs`, each built by
/// `entry(name, data_type, dims, reshape)` (a ModelInput or a ModelOutput).
fn config_tensors<T>(
    specs: &[TensorSpec],
    max_batch_size: i32,
    entry: impl Fn(String, i32, Vec<i64>, Option<ModelTensorReshape>) -> T,
) -> Vec<T> {
    specs
        .iter()
        .map(|spec| {
            let (dims, reshape) = config_dims(spec, max_batch_size);
            entry(spec.name.clone(), spec.datatype.to_config() as i32, dims, reshape)
        })
        .collect()
}

/// A model tensor's shape as config.pbtxt writes it: without the batch dimension when
/// batching, and a scalar as `dims: [ 1 ]` (plus `reshape: { shape: [ ] }` when batching,
/// where the model's shape is `[ -1 ]`), as the ONNX Runtime backend writes them.
fn config_dims(spec: &TensorSpec, max_batch_size: i32) -> (Vec<i64>, Option<ModelTensorReshape>) {
    let dims =
        if max_batch_size > 0 { spec.dims.get(1..).unwrap_or_default().to_vec() } else { spec.dims.clone() };
    if !dims.is_empty() {
        return (dims, None);
    }
    let reshape = (max_batch_size > 0).then(|| ModelTensorReshape { shape: Vec::new() });
    (vec![1], reshape)
}

fn quoted_names(specs: &[TensorSpec]) -> String {
    specs.iter().map(|s| format!("'{}'", s.name)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests;
