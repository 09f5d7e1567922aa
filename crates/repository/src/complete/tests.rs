use super::*;
use crate::parse_config;
use tern_core::DataType;
use tern_proto::inference::DataType as ConfigType;

fn spec(name: &str, datatype: DataType, dims: &[i64]) -> TensorSpec {
    TensorSpec { name: name.to_owned(), datatype, dims: dims.to_vec(), utf8: false }
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
    let groups: Vec<_> = config.instance_group.iter().map(|g| (g.name.as_str(), g.kind, g.count)).collect();
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
    let written = parse_config(r#"input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]"#)?;
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
    assert_eq!(err, RepositoryError::NameMismatch { model: "m".to_owned(), config_name: "other".to_owned() });
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
        let written =
            ModelConfig { platform: platform.to_owned(), backend: backend.to_owned(), ..Default::default() };
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
    let err =
        auto_complete("resnet", Some(ModelConfig::default()), &resnet(), true).expect_err("nothing listed");
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
