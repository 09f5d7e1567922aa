//! Triton's checks of `sequence_batching` (core src/model_config_utils.cc, `ValidateModelConfig`
//! and `GetBooleanSequenceControlProperties` / `GetTypedSequenceControlProperties`), in its
//! words, plus what Tern does not serve, refused with a reason rather than ignored. Control and
//! state tensors are the scheduler's to fill: they must be model inputs (outputs, for a state's
//! `output_name`), but never config `input`s a client sends.

use std::collections::HashSet;

use tern_core::{DataType, ModelSignature};
use tern_proto::inference::model_sequence_batching::control::Kind;
use tern_proto::inference::model_sequence_batching::initial_state::StateData;
use tern_proto::inference::model_sequence_batching::{Control, StrategyChoice};
use tern_proto::inference::{DataType as ConfigType, ModelConfig, ModelSequenceBatching};

use crate::error::RepositoryError;

/// The model inputs the sequence batcher fills (control inputs and state inputs), and the model
/// outputs it reads (state outputs): auto-complete leaves them out of the config's tensors, and
/// validation does not ask for them there.
pub fn sequence_tensor_names(config: &ModelConfig) -> (Vec<&str>, Vec<&str>) {
    let Some(sb) = sequence_batching(config) else { return (Vec::new(), Vec::new()) };
    let inputs = sb
        .control_input
        .iter()
        .map(|c| c.name.as_str())
        .chain(sb.state.iter().map(|s| s.input_name.as_str()))
        .collect();
    let outputs = sb.state.iter().map(|s| s.output_name.as_str()).collect();
    (inputs, outputs)
}

pub(crate) fn sequence_batching(config: &ModelConfig) -> Option<&ModelSequenceBatching> {
    match &config.scheduling_choice {
        Some(tern_proto::inference::model_config::SchedulingChoice::SequenceBatching(sb)) => Some(sb),
        _ => None,
    }
}

fn kind_name(kind: i32) -> &'static str {
    Kind::try_from(kind).map(|k| k.as_str_name()).unwrap_or("CONTROL_UNKNOWN")
}

/// Checks `sb` against Triton's rules and the model file's `signature`.
pub(crate) fn check(
    config: &ModelConfig,
    sb: &ModelSequenceBatching,
    signature: &ModelSignature,
) -> Result<(), RepositoryError> {
    let model = config.name.as_str();
    let invalid = |m: String| RepositoryError::invalid(model, m);
    if sb.iterative_sequence {
        return Err(invalid(
            "sequence_batching.iterative_sequence is not supported: it serves decoupled models, \
             and Tern's ONNX models are not decoupled"
                .into(),
        ));
    }
    if config.model_transaction_policy.as_ref().is_some_and(|p| p.decoupled) {
        return Err(invalid("sequence_batching is not supported for a decoupled model".into()));
    }
    match &sb.strategy_choice {
        Some(StrategyChoice::Oldest(oldest)) => {
            // Triton's words (model_config_utils.cc).
            for &size in &oldest.preferred_batch_size {
                if size <= 0 {
                    return Err(invalid(format!(
                        "sequence batching preferred batch size must be positive for {model}"
                    )));
                }
                if size > config.max_batch_size {
                    return Err(invalid(format!(
                        "sequence batching preferred batch size must be <= max batch size for {model}"
                    )));
                }
            }
            if oldest.max_candidate_sequences < 0 {
                return Err(invalid(format!(
                    "sequence_batching.oldest.max_candidate_sequences {} is invalid: it must be >= 1",
                    oldest.max_candidate_sequences
                )));
            }
            if oldest.preserve_ordering {
                return Err(invalid(
                    "sequence_batching.oldest.preserve_ordering is not supported: responses of one \
                     sequence already leave in order, one request per sequence per batch"
                        .into(),
                ));
            }
        }
        Some(StrategyChoice::Direct(direct)) => {
            let u = direct.minimum_slot_utilization;
            if !(0.0..=1.0).contains(&u) {
                return Err(invalid(format!(
                    "sequence batching minimum slot utilization must be in range (0.0, 1.0] for {model}"
                )));
            }
        }
        None => {}
    }
    let mut seen_names = HashSet::new();
    let mut seen_kinds = HashSet::new();
    for input in &sb.control_input {
        if input.name.is_empty() {
            return Err(invalid(format!("sequence batching control tensor must have a name for {model}")));
        }
        if !seen_names.insert(input.name.as_str()) || input.control.len() > 1 {
            return Err(invalid(format!(
                "sequence batching control tensor '{}' is specified for multiple control kinds for {model}",
                input.name
            )));
        }
        let Some(control) = input.control.first() else {
            return Err(invalid(format!(
                "sequence batching control tensor '{}' must give one 'control' for {model}",
                input.name
            )));
        };
        if !seen_kinds.insert(control.kind) {
            return Err(invalid(format!(
                "sequence batching specifies multiple {} tensors for {model}",
                kind_name(control.kind)
            )));
        }
        let expected = control_type(model, &input.name, control)?;
        let Some(spec) = signature.inputs.iter().find(|s| s.name == input.name) else {
            return Err(invalid(format!(
                "sequence batching control tensor '{}' is not an input of the model file",
                input.name
            )));
        };
        if spec.datatype != expected {
            return Err(invalid(format!(
                "sequence batching control tensor '{}' is {} in the model file, but its control \
                 gives {}",
                input.name, spec.datatype, expected
            )));
        }
    }
    for state in &sb.state {
        check_state(config, state, signature)?;
    }
    let (controlled, _) = sequence_tensor_names(config);
    if let Some(input) = config.input.iter().find(|i| controlled.contains(&i.name.as_str())) {
        return Err(invalid(format!(
            "input '{}' is a sequence batching control or state tensor; the sequence batcher \
             fills it, so it must not also be listed under 'input'",
            input.name
        )));
    }
    Ok(())
}

/// The datatype a control tensor takes: from its `*_false_true` field, or CORRID's `data_type`.
fn control_type(model: &str, name: &str, control: &Control) -> Result<DataType, RepositoryError> {
    let invalid = |m: String| RepositoryError::invalid(model, m);
    let kind = kind_name(control.kind);
    if control.kind == Kind::ControlSequenceCorrid as i32 {
        if !control.int32_false_true.is_empty()
            || !control.fp32_false_true.is_empty()
            || !control.bool_false_true.is_empty()
        {
            return Err(invalid(format!(
                "sequence batching must not specify either 'int32_false_true', 'fp32_false_true' \
                 or 'bool_false_true' for {kind} for {model}"
            )));
        }
        let allowed = [
            ConfigType::TypeUint64,
            ConfigType::TypeInt64,
            ConfigType::TypeUint32,
            ConfigType::TypeInt32,
            ConfigType::TypeString,
        ];
        return match ConfigType::try_from(control.data_type) {
            Ok(t) if allowed.contains(&t) => DataType::from_config(control.data_type)
                .ok_or_else(|| invalid(format!("control '{name}': unknown data_type"))),
            _ => Err(invalid(format!(
                "unexpected data type for control {kind} for {model}. Allowed data types are \
                 TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING"
            ))),
        };
    }
    if Kind::try_from(control.kind).is_err() {
        return Err(invalid(format!("sequence batching control tensor '{name}' has an unknown kind")));
    }
    let given = [
        (
            !control.int32_false_true.is_empty(),
            control.int32_false_true.len(),
            "int32_false_true",
            DataType::Int32,
        ),
        (
            !control.fp32_false_true.is_empty(),
            control.fp32_false_true.len(),
            "fp32_false_true",
            DataType::Fp32,
        ),
        (
            !control.bool_false_true.is_empty(),
            control.bool_false_true.len(),
            "bool_false_true",
            DataType::Bool,
        ),
    ];
    let mut chosen = given.iter().filter(|g| g.0);
    let Some(&(_, len, field, datatype)) = chosen.next() else {
        return Err(invalid(format!(
            "sequence batching must specify either 'int32_false_true', 'fp32_false_true' or \
             'bool_false_true' for {kind} for {model}"
        )));
    };
    if chosen.next().is_some() {
        return Err(invalid(format!(
            "sequence batching specifies more than one from 'int32_false_true', 'fp32_false_true' \
             and 'bool_false_true' for {kind} for {model}"
        )));
    }
    if len != 2 {
        return Err(invalid(format!(
            "sequence batching control '{field}' must have exactly 2 entries for {kind} for {model}"
        )));
    }
    Ok(datatype)
}

fn check_state(
    config: &ModelConfig,
    state: &tern_proto::inference::model_sequence_batching::State,
    signature: &ModelSignature,
) -> Result<(), RepositoryError> {
    let model = config.name.as_str();
    let invalid = |m: String| RepositoryError::invalid(model, m);
    if state.input_name.is_empty() || state.output_name.is_empty() {
        return Err(invalid("sequence_batching.state must give 'input_name' and 'output_name'".into()));
    }
    let name = &state.input_name;
    let Some(datatype) = DataType::from_config(state.data_type) else {
        return Err(invalid(format!("sequence_batching.state '{name}' must give a 'data_type'")));
    };
    if state.dims.is_empty() || state.dims.iter().any(|&d| d < 1 && d != -1) {
        return Err(invalid(format!(
            "sequence_batching.state '{name}' dims {:?} are invalid: give dims of values >= 1 or -1",
            state.dims
        )));
    }
    if state.use_same_buffer_for_input_output || state.use_growable_memory {
        return Err(invalid(format!(
            "sequence_batching.state '{name}': use_same_buffer_for_input_output and \
             use_growable_memory are not supported (Triton allows them for GPU buffers only)"
        )));
    }
    if state.initial_state.len() > 1 {
        return Err(invalid(format!("sequence_batching.state '{name}' gives more than one initial_state")));
    }
    if let Some(initial) = state.initial_state.first() {
        match &initial.state_data {
            Some(StateData::ZeroData(true)) => {}
            Some(StateData::DataFile(file)) => {
                return Err(invalid(format!(
                    "sequence_batching.state '{name}': initial_state data_file '{file}' is not \
                     supported yet; use zero_data: true"
                )));
            }
            _ => {
                return Err(invalid(format!(
                    "sequence_batching.state '{name}': initial_state must set zero_data: true"
                )));
            }
        }
        if initial.dims.iter().any(|&d| d < 1) || initial.dims.len() != state.dims.len() {
            return Err(invalid(format!(
                "sequence_batching.state '{name}': initial_state dims {:?} must match the state's \
                 dims {:?} with no wildcard",
                initial.dims, state.dims
            )));
        }
    }
    let batching = config.max_batch_size > 0;
    for (tensor, specs, side) in
        [(&state.input_name, &signature.inputs, "input"), (&state.output_name, &signature.outputs, "output")]
    {
        let Some(spec) = specs.iter().find(|s| &s.name == tensor) else {
            return Err(invalid(format!(
                "sequence_batching.state: '{tensor}' is not an {side} of the model file"
            )));
        };
        let dims = if batching { spec.dims.get(1..).unwrap_or(&[]) } else { spec.dims.as_slice() };
        let shapes_match = dims.len() == state.dims.len()
            && dims.iter().zip(&state.dims).all(|(&m, &c)| m == -1 || c == -1 || m == c);
        if spec.datatype != datatype || !shapes_match {
            return Err(invalid(format!(
                "sequence_batching.state: the model file's {side} '{tensor}' is {} {}, but the \
                 state gives {datatype} {}",
                spec.datatype,
                super::shape_string(dims),
                super::shape_string(&state.dims)
            )));
        }
    }
    Ok(())
}
