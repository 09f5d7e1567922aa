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
        complete_max_batch_size(config, signature)?;
        let max_batch_size = config.max_batch_size;
        if !has_inputs {
            config.input = signature
                .inputs
                .iter()
                .map(|spec| {
                    let (dims, reshape) = config_dims(spec, max_batch_size);
                    ModelInput {
                        name: spec.name.clone(),
                        data_type: spec.datatype.to_config() as i32,
                        dims,
                        reshape,
                        ..Default::default()
                    }
                })
                .collect();
        }
        if !has_outputs {
            config.output = signature
                .outputs
                .iter()
                .map(|spec| {
                    let (dims, reshape) = config_dims(spec, max_batch_size);
                    ModelOutput {
                        name: spec.name.clone(),
                        data_type: spec.datatype.to_config() as i32,
                        dims,
                        reshape,
                        ..Default::default()
                    }
                })
                .collect();
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
mod tests {
    use super::*;
    use crate::parse_config;
    use tern_core::DataType;
    use tern_proto::inference::DataType as ConfigType;

    fn spec(name: &str, datatype: DataType, dims: &[i64]) -> TensorSpec {
        TensorSpec { name: name.to_owned(), datatype, dims: dims.to_vec() }
    }

    /// light_resnet50 of the reference: FP32 [-1,3,224,224] -> [-1,1000].
    fn resnet() -> ModelSignature {
        ModelSignature {
            inputs: vec![spec("input", DataType::Fp32, &[-1, 3, 224, 224])],
            outputs: vec![spec("output", DataType::Fp32, &[-1, 1000])],
        }
    }

    fn fixed() -> ModelSignature {
        ModelSignature {
            inputs: vec![spec("a", DataType::Int64, &[1, 4]), spec("text", DataType::Bytes, &[])],
            outputs: vec![spec("y", DataType::Fp32, &[1, -1])],
        }
    }

    fn dynamic_batching(config: &ModelConfig) -> Option<&ModelDynamicBatching> {
        match &config.scheduling_choice {
            Some(SchedulingChoice::DynamicBatching(db)) => Some(db),
            _ => None,
        }
    }

    #[test]
    fn no_config_batchable_model() -> Result<(), RepositoryError> {
        let config = auto_complete("resnet", None, &resnet(), false)?;
        let expected = parse_config(
            r#"
            name: "resnet"
            platform: "onnxruntime_onnx"
            backend: "onnxruntime"
            default_model_filename: "model.onnx"
            version_policy { latest { num_versions: 1 } }
            max_batch_size: 4
            input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
            output [ { name: "output" data_type: TYPE_FP32 dims: [ 1000 ] } ]
            instance_group [ { name: "resnet" kind: KIND_AUTO } ]
            dynamic_batching { preferred_batch_size: [ 4 ] }
            optimization {
              input_pinned_memory { enable: true }
              output_pinned_memory { enable: true }
            }
            "#,
        )?;
        assert_eq!(config, expected);
        Ok(())
    }

    #[test]
    fn no_config_unbatchable_model() -> Result<(), RepositoryError> {
        let config = auto_complete("m", None, &fixed(), false)?;
        assert_eq!(config.max_batch_size, 0);
        assert_eq!(config.scheduling_choice, None);
        let inputs: Vec<_> = config
            .input
            .iter()
            .map(|i| (i.name.as_str(), i.data_type, i.dims.clone(), i.reshape.clone()))
            .collect();
        assert_eq!(
            inputs,
            vec![
                ("a", ConfigType::TypeInt64 as i32, vec![1, 4], None),
                // A scalar without batching: dims [1] and no reshape, as the backend writes it.
                ("text", ConfigType::TypeString as i32, vec![1], None),
            ]
        );
        assert_eq!(config.output[0].dims, vec![1, -1]);
        Ok(())
    }

    #[test]
    fn batched_scalar_gets_empty_reshape() -> Result<(), RepositoryError> {
        let signature = ModelSignature {
            inputs: vec![spec("x", DataType::Fp32, &[-1])],
            outputs: vec![spec("y", DataType::Fp32, &[-1, 2])],
        };
        let config = auto_complete("m", None, &signature, false)?;
        assert_eq!(config.max_batch_size, 4);
        assert_eq!(config.input[0].dims, vec![1]);
        assert_eq!(config.input[0].reshape, Some(ModelTensorReshape { shape: vec![] }));
        assert_eq!(config.output[0].dims, vec![2]);
        Ok(())
    }

    #[test]
    fn partial_config_keeps_what_the_user_wrote() -> Result<(), RepositoryError> {
        let written = parse_config(
            r#"
            max_batch_size: 8
            dynamic_batching { max_queue_delay_microseconds: 100 }
            instance_group [ { kind: KIND_CPU }, { name: "gpu" count: 3 kind: KIND_GPU }, { kind: KIND_GPU },
                             { name: "auto" kind: KIND_AUTO } ]
            parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
            version_policy: { all { } }
            optimization { graph { level: 1 } input_pinned_memory { enable: false } }
            "#,
        )?;
        let config = auto_complete("resnet", Some(written.clone()), &resnet(), false)?;
        assert_eq!(config.max_batch_size, 8);
        assert_eq!(config.version_policy, written.version_policy);
        assert_eq!(config.parameters, written.parameters);
        let db = dynamic_batching(&config).cloned().unwrap_or_default();
        assert_eq!(db.max_queue_delay_microseconds, 100);
        // Normalization fills the preferred size from a user-written max_batch_size.
        assert_eq!(db.preferred_batch_size, vec![8]);
        let groups: Vec<_> =
            config.instance_group.iter().map(|g| (g.name.as_str(), g.kind, g.count)).collect();
        assert_eq!(
            groups,
            vec![
                ("resnet_0", Kind::Cpu as i32, 2),
                ("gpu", Kind::Gpu as i32, 3),
                ("resnet_2", Kind::Gpu as i32, 1),
                // Left for the backend, which knows whether a GPU is present.
                ("auto", Kind::Auto as i32, 0),
            ]
        );
        let optimization = config.optimization.unwrap_or_default();
        assert_eq!(optimization.graph.map(|g| g.level), Some(1));
        assert_eq!(optimization.input_pinned_memory, Some(PinnedMemoryBuffer { enable: false }));
        assert_eq!(optimization.output_pinned_memory, Some(PinnedMemoryBuffer { enable: true }));
        assert_eq!(config.input[0].dims, vec![3, 224, 224]);
        assert_eq!(config.output[0].dims, vec![1000]);
        Ok(())
    }

    #[test]
    fn auto_added_dynamic_batching_prefers_max_batch_size() -> Result<(), RepositoryError> {
        // Triton normalizes again after the backend's auto-complete: `{}` becomes [4].
        let config = auto_complete("m", None, &resnet(), false)?;
        let db = dynamic_batching(&config).cloned();
        assert_eq!(db, Some(ModelDynamicBatching { preferred_batch_size: vec![4], ..Default::default() }));
        Ok(())
    }

    #[test]
    fn sequence_batching_is_not_replaced() -> Result<(), RepositoryError> {
        let written = parse_config("sequence_batching { }")?;
        let config = auto_complete("m", Some(written), &resnet(), false)?;
        match &config.scheduling_choice {
            Some(SchedulingChoice::SequenceBatching(sb)) => {
                assert_eq!(sb.max_sequence_idle_microseconds, 1_000_000)
            }
            other => panic!("unexpected scheduling {other:?}"),
        }
        assert_eq!(config.max_batch_size, 4);
        Ok(())
    }

    #[test]
    fn listed_inputs_outputs_are_not_replaced_but_dims_are_filled() -> Result<(), RepositoryError> {
        let written = parse_config(
            r#"
            max_batch_size: 2
            input [ { name: "input" data_type: TYPE_FP32 } ]
            output [ { name: "output" data_type: TYPE_FP32 dims: [ -1 ] } ]
            "#,
        )?;
        let config = auto_complete("resnet", Some(written), &resnet(), false)?;
        assert_eq!(config.input.len(), 1);
        assert_eq!(config.input[0].dims, vec![3, 224, 224]);
        assert_eq!(config.output[0].dims, vec![-1]);
        // Both lists given: the backend's auto-complete (and its dynamic batching) is skipped.
        assert_eq!(config.scheduling_choice, None);
        Ok(())
    }

    #[test]
    fn only_outputs_missing() -> Result<(), RepositoryError> {
        let written =
            parse_config(r#"input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]"#)?;
        let config = auto_complete("resnet", Some(written), &resnet(), false)?;
        assert_eq!(config.max_batch_size, 4);
        assert_eq!(config.input[0].dims, vec![3, 224, 224]);
        assert_eq!(config.output.len(), 1);
        assert_eq!(config.output[0].dims, vec![1000]);
        Ok(())
    }

    #[test]
    fn max_batch_size_on_unbatchable_model() {
        let written = ModelConfig { max_batch_size: 8, ..Default::default() };
        let err = auto_complete("m", Some(written), &fixed(), false).expect_err("unbatchable");
        assert_eq!(
            err.to_string(),
            "model 'm': max_batch_size 8 > 0 but the model file does not support batching: 'a' \
             has shape [1,4] in the model file, and batching needs a dynamic (-1) first \
             dimension on every input and output; set max_batch_size: 0 or re-export the model \
             with a dynamic batch dimension"
        );
    }

    #[test]
    fn name_must_match_directory() {
        let written = ModelConfig { name: "other".to_owned(), ..Default::default() };
        let err = auto_complete("m", Some(written), &resnet(), false).expect_err("mismatch");
        assert_eq!(
            err,
            RepositoryError::NameMismatch { model: "m".to_owned(), config_name: "other".to_owned() }
        );
        assert!(err.to_string().contains("must equal the directory name"));
    }

    #[test]
    fn platform_and_backend() -> Result<(), RepositoryError> {
        for (platform, backend) in
            [("onnxruntime_onnx", ""), ("", "onnxruntime"), ("onnxruntime_onnx", "onnxruntime")]
        {
            let written = ModelConfig {
                platform: platform.to_owned(),
                backend: backend.to_owned(),
                default_model_filename: "net.onnx".to_owned(),
                ..Default::default()
            };
            let config = auto_complete("m", Some(written), &resnet(), false)?;
            assert_eq!(config.platform, ONNX_PLATFORM);
            assert_eq!(config.backend, ONNX_BACKEND);
            assert_eq!(config.default_model_filename, "net.onnx");
        }
        for (platform, backend) in
            [("tensorflow_savedmodel", ""), ("", "python"), ("onnxruntime_onnx", "tensorrt")]
        {
            let written = ModelConfig {
                platform: platform.to_owned(),
                backend: backend.to_owned(),
                ..Default::default()
            };
            let err = auto_complete("m", Some(written), &resnet(), false).expect_err(platform);
            assert_eq!(
                err,
                RepositoryError::UnsupportedBackend {
                    model: "m".to_owned(),
                    platform: platform.to_owned(),
                    backend: backend.to_owned(),
                }
            );
        }
        let err = auto_complete(
            "m",
            Some(ModelConfig { platform: "tensorflow_savedmodel".to_owned(), ..Default::default() }),
            &resnet(),
            true,
        )
        .expect_err("strict too");
        assert_eq!(
            err.to_string(),
            "model 'm': platform 'tensorflow_savedmodel' / backend '' is not supported; Tern \
             serves ONNX models (platform 'onnxruntime_onnx', backend 'onnxruntime')"
        );
        Ok(())
    }

    #[test]
    fn strict_requires_config() {
        let err = auto_complete("m", None, &resnet(), true).expect_err("strict");
        assert_eq!(err.to_string(), "model 'm': config.pbtxt is required with --strict-model-config=true");
    }

    #[test]
    fn strict_requires_inputs_and_outputs() -> Result<(), RepositoryError> {
        let err = auto_complete("resnet", Some(ModelConfig::default()), &resnet(), true)
            .expect_err("nothing listed");
        assert_eq!(
            err.to_string(),
            "model 'resnet': config.pbtxt lists no inputs (the model file has 'input') and no \
             outputs (the model file has 'output'); with --strict-model-config=true they must \
             be listed"
        );
        let inputs_only = parse_config(r#"input [ { name: "input" } ]"#)?;
        let err = auto_complete("resnet", Some(inputs_only), &resnet(), true).expect_err("outputs");
        assert!(err.to_string().contains("lists no outputs (the model file has 'output');"), "{err}");
        Ok(())
    }

    #[test]
    fn strict_applies_only_harmless_defaults() -> Result<(), RepositoryError> {
        let written = parse_config(
            r#"
            input [ { name: "input" data_type: TYPE_FP32 dims: [ -1, 3, 224, 224 ] } ]
            output [ { name: "output" data_type: TYPE_FP32 } ]
            "#,
        )?;
        let config = auto_complete("resnet", Some(written.clone()), &resnet(), true)?;
        // Nothing from the model file: no batching, no dims.
        assert_eq!(config.max_batch_size, 0);
        assert_eq!(config.scheduling_choice, None);
        assert_eq!(config.input, written.input);
        assert_eq!(config.output, written.output);
        // The harmless defaults.
        assert_eq!(config.name, "resnet");
        assert_eq!(config.platform, ONNX_PLATFORM);
        assert_eq!(config.backend, ONNX_BACKEND);
        assert_eq!(config.default_model_filename, "model.onnx");
        assert!(config.version_policy.is_some());
        assert_eq!(config.instance_group.len(), 1);
        assert_eq!(config.instance_group[0].name, "resnet");
        assert_eq!(config.instance_group[0].kind, Kind::Auto as i32);
        let cpu = parse_config(r#"instance_group [ { kind: KIND_CPU } ]"#)?;
        let config = auto_complete(
            "resnet",
            Some(ModelConfig { input: written.input, output: written.output, ..cpu }),
            &resnet(),
            true,
        )?;
        assert_eq!(config.instance_group[0].count, DEFAULT_CPU_INSTANCE_COUNT);
        Ok(())
    }

    #[test]
    fn user_max_batch_size_one_adds_no_dynamic_batching() -> Result<(), RepositoryError> {
        let written = ModelConfig { max_batch_size: 1, ..Default::default() };
        let config = auto_complete("resnet", Some(written), &resnet(), false)?;
        assert_eq!(config.max_batch_size, 1);
        assert_eq!(config.scheduling_choice, None);
        Ok(())
    }
}
