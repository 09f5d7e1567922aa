//! Validation of a (completed) config on its own and against the model file's signature: what
//! Triton core's `ValidateModelConfig` and the ONNX Runtime backend's input/output checks
//! reject, with messages that name the model, the tensor and the field.

use std::collections::HashSet;
use std::path::{Component, Path};

use tern_core::{ModelSignature, TensorSpec};
use tern_proto::inference::model_config::SchedulingChoice;
use tern_proto::inference::{DataType as ConfigType, ModelConfig};

use crate::complete::check_backend_fields;
use crate::error::{RepositoryError, TensorKind};

mod ensemble;
mod sequence;
pub use sequence::sequence_tensor_names;
mod tensor;
pub use ensemble::{
    ENSEMBLE_PLATFORM, EnsembleGraph, EnsembleStep, MAX_ENSEMBLE_STEPS, check_ensemble_steps, is_ensemble,
    validate_ensemble,
};
use tensor::ConfigTensor;
#[cfg(test)]
use tensor::same_element_count;

/// Checks `config` on its own and against `signature`:
/// - `name` is set; platform/backend are ONNX Runtime's (or empty); no ensemble scheduling
///   (ensembles are checked by [`validate_ensemble`]) and sequence batching as Triton checks it
///   (see [`sequence`]);
///   `max_batch_size >= 0`; `default_model_filename` is a plain file name; the numbers that size
///   memory or threads within [`crate::check_bounds`]'s limits;
/// - dynamic batching preferred sizes are in `1..=max_batch_size`, priority levels consistent;
/// - every input/output has a unique name, a data_type, dims of values >= 1 or -1, and a
///   reshape (if any) of the same element count; optional inputs only without batching;
/// - every config input/output exists in the model file with the same datatype
///   (TYPE_STRING is BYTES) and a matching shape (-1 on either side matches anything); with
///   max_batch_size > 0 the model's first dimension must be dynamic and the config's dims (or
///   `reshape.shape`, when given) are compared to the rest;
/// - every model input is listed (model outputs may be left out: they are not computed).
pub fn validate(config: &ModelConfig, signature: &ModelSignature) -> Result<(), RepositoryError> {
    let model = config.name.as_str();
    if model.is_empty() {
        return Err(RepositoryError::invalid(model, "the config must give the model's 'name'"));
    }
    check_response_cache(config)?;
    check_backend_fields(config)?;
    let max_batch_size = config.max_batch_size;
    if max_batch_size < 0 {
        return Err(RepositoryError::invalid(
            model,
            format!("max_batch_size {max_batch_size} is invalid: it must be >= 0"),
        ));
    }
    crate::bounds::check_bounds(model, config)?;
    check_model_filename(model, &config.default_model_filename)?;
    check_model_operations(config)?;
    check_scheduling(config, signature)?;

    let inputs: Vec<ConfigTensor<'_>> = config
        .input
        .iter()
        .map(|i| ConfigTensor {
            kind: TensorKind::Input,
            name: &i.name,
            data_type: i.data_type,
            dims: &i.dims,
            reshape: i.reshape.as_ref(),
        })
        .collect();
    let outputs: Vec<ConfigTensor<'_>> = config
        .output
        .iter()
        .map(|o| ConfigTensor {
            kind: TensorKind::Output,
            name: &o.name,
            data_type: o.data_type,
            dims: &o.dims,
            reshape: o.reshape.as_ref(),
        })
        .collect();

    for tensors in [&inputs, &outputs] {
        let mut seen = HashSet::new();
        for tensor in tensors.iter() {
            if !seen.insert(tensor.name) {
                return Err(RepositoryError::invalid(
                    model,
                    format!("{} '{}' is listed more than once in config.pbtxt", tensor.kind, tensor.name),
                ));
            }
            tensor.check_shape_fields(model, max_batch_size)?;
        }
    }
    if max_batch_size > 0
        && let Some(input) = config.input.iter().find(|i| i.optional)
    {
        return Err(RepositoryError::invalid(
            model,
            format!("input '{}': optional inputs are not supported when max_batch_size > 0", input.name),
        ));
    }

    check_names(model, TensorKind::Input, &inputs, &signature.inputs)?;
    check_names(model, TensorKind::Output, &outputs, &signature.outputs)?;
    // The sequence batcher fills its control and state inputs; the client never sends them.
    let (sequence_inputs, _) = sequence_tensor_names(config);
    let missing: Vec<&str> = signature
        .inputs
        .iter()
        .filter(|spec| !inputs.iter().any(|t| t.name == spec.name))
        .filter(|spec| !sequence_inputs.contains(&spec.name.as_str()))
        .map(|spec| spec.name.as_str())
        .collect();
    if !missing.is_empty() {
        let (noun, verb) = if missing.len() == 1 { ("input", "is") } else { ("inputs", "are") };
        return Err(RepositoryError::invalid(
            model,
            format!(
                "the model file's {noun} {} {verb} missing from config.pbtxt; every model input \
                 must be listed",
                quote_all(&missing)
            ),
        ));
    }

    for (tensors, specs) in [(&inputs, &signature.inputs), (&outputs, &signature.outputs)] {
        for tensor in tensors.iter() {
            if let Some(spec) = specs.iter().find(|s| s.name == tensor.name) {
                tensor.check_against(model, max_batch_size, spec)?;
            }
        }
    }
    Ok(())
}

fn check_names(
    model: &str,
    kind: TensorKind,
    tensors: &[ConfigTensor<'_>],
    specs: &[TensorSpec],
) -> Result<(), RepositoryError> {
    let unknown: Vec<&str> =
        tensors.iter().filter(|t| !specs.iter().any(|s| s.name == t.name)).map(|t| t.name).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    Err(RepositoryError::invalid(
        model,
        format!(
            "config.pbtxt lists {kind}{} {} that the model file does not have (its {kind}s: {})",
            plural(unknown.len()),
            quote_all(&unknown),
            if known.is_empty() { "none".to_owned() } else { quote_all(&known) }
        ),
    ))
}

pub(crate) fn check_model_filename(model: &str, filename: &str) -> Result<(), RepositoryError> {
    if filename.is_empty() {
        return Ok(());
    }
    let mut components = Path::new(filename).components();
    let plain = matches!((components.next(), components.next()), (Some(Component::Normal(_)), None))
        && !filename.contains(['/', '\\']);
    if plain {
        Ok(())
    } else {
        Err(RepositoryError::invalid(
            model,
            format!(
                "default_model_filename '{filename}' must be a file name inside the version \
                 directory, without path separators"
            ),
        ))
    }
}

/// Most custom-op libraries one model may name in `model_operations.op_library_filename`.
pub const MAX_OP_LIBRARIES: usize = 16;

/// `model_operations.op_library_filename`: each a usable path (not empty, no NUL, at most
/// [`MAX_OP_LIBRARIES`]). Whether the file exists and loads is the ONNX Runtime backend's check
/// when the model loads (the libraries are native code: docs/security.md).
pub fn check_model_operations(config: &ModelConfig) -> Result<(), RepositoryError> {
    let Some(operations) = config.model_operations.as_ref() else { return Ok(()) };
    let model = config.name.as_str();
    let names = &operations.op_library_filename;
    if names.len() > MAX_OP_LIBRARIES {
        return Err(RepositoryError::invalid(
            model,
            format!(
                "model_operations names {} op_library_filename entries; at most {MAX_OP_LIBRARIES} \
                 are allowed",
                names.len()
            ),
        ));
    }
    for name in names {
        if name.trim().is_empty() || name.contains('\0') || name.len() > 4096 {
            return Err(RepositoryError::invalid(
                model,
                format!(
                    "model_operations.op_library_filename {name:?} is not a usable path (empty, \
                     over 4096 bytes, or containing NUL)"
                ),
            ));
        }
    }
    Ok(())
}

/// A client's `config` override (RepositoryModelLoad) may not name custom-op libraries: they
/// are native code loaded into the node, so they come only from a config.pbtxt in the
/// operator's repository. Triton accepts them in an override; Tern refuses, as it refuses
/// accelerator parameters that load native code (docs/security.md).
pub fn check_override_loads_no_native_code(model: &str, config: &ModelConfig) -> Result<(), RepositoryError> {
    match config.model_operations.as_ref() {
        Some(ops) if !ops.op_library_filename.is_empty() => Err(RepositoryError::invalid(
            model,
            "model_operations.op_library_filename loads native code into the server: it is \
             taken only from the model's config.pbtxt in the repository, not from a load \
             request's config",
        )),
        _ => Ok(()),
    }
}

/// Triton's checks of the dynamic batcher's settings; ensembles are refused.
/// Triton refuses `response_cache { enable: true }` for a decoupled model and for one with the
/// sequence batcher, with these words (core src/model_config_utils.cc, `ValidateModelConfig`:
/// DLIS-3916 and DLIS-4034), before any other check of the scheduler.
pub fn check_response_cache(config: &ModelConfig) -> Result<(), RepositoryError> {
    if !config.response_cache.as_ref().is_some_and(|c| c.enable) {
        return Ok(());
    }
    let model = config.name.as_str();
    if matches!(config.scheduling_choice, Some(SchedulingChoice::SequenceBatching(_))) {
        return Err(RepositoryError::invalid(
            model,
            format!(
                "Response Cache does not currently support model {model} with sequence batching \
                 scheduler. Please disable the response cache."
            ),
        ));
    }
    if config.model_transaction_policy.as_ref().is_some_and(|p| p.decoupled) {
        return Err(RepositoryError::invalid(
            model,
            format!(
                "Response Cache does not currently support model {model} with 'decoupled' \
                 transaction policy. Please disable the response cache."
            ),
        ));
    }
    Ok(())
}

fn check_scheduling(config: &ModelConfig, signature: &ModelSignature) -> Result<(), RepositoryError> {
    let model = config.name.as_str();
    crate::queue_delay::check_auto_needs_batching(config)?;
    let batching = match &config.scheduling_choice {
        Some(SchedulingChoice::DynamicBatching(batching)) => batching,
        // Triton's words (core src/model_config_utils.cc, `ValidateEnsembleSchedulingConfig`);
        // a config with `platform: "ensemble"` is checked by `validate_ensemble` instead.
        Some(SchedulingChoice::EnsembleScheduling(_)) => {
            return Err(RepositoryError::invalid(
                model,
                format!(
                    "ensemble scheduling cannot be set for model '{model}' whose platform is not \
                     {ENSEMBLE_PLATFORM}"
                ),
            ));
        }
        Some(SchedulingChoice::SequenceBatching(sb)) => return sequence::check(config, sb, signature),
        None => return Ok(()),
    };
    if let Some(&size) =
        batching.preferred_batch_size.iter().find(|&&size| size < 1 || size > config.max_batch_size)
    {
        return Err(RepositoryError::invalid(
            model,
            format!(
                "dynamic_batching.preferred_batch_size {size} is invalid: it must be in 1..={} \
                 (max_batch_size)",
                config.max_batch_size
            ),
        ));
    }
    let levels = batching.priority_levels;
    if levels != 0 {
        let default = batching.default_priority_level;
        if default == 0 || default > levels {
            return Err(RepositoryError::invalid(
                model,
                format!(
                    "dynamic_batching.default_priority_level {default} must be in 1..={levels} \
                     (priority_levels)"
                ),
            ));
        }
        if let Some(level) =
            batching.priority_queue_policy.keys().find(|&&level| level == 0 || level > levels)
        {
            return Err(RepositoryError::invalid(
                model,
                format!(
                    "dynamic_batching.priority_queue_policy has level {level}, outside \
                     1..={levels} (priority_levels)"
                ),
            ));
        }
    }
    Ok(())
}

/// `[3,224,224]`, as Triton prints shapes.
pub(crate) fn shape_string(dims: &[i64]) -> String {
    let dims: Vec<String> = dims.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(","))
}

fn config_type_name(data_type: i32) -> String {
    ConfigType::try_from(data_type)
        .map(|t| t.as_str_name().to_owned())
        .unwrap_or_else(|_| data_type.to_string())
}

fn quote_all(names: &[&str]) -> String {
    names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests;
