use super::*;
use crate::parse_config;
use tern_core::DataType;
use tern_proto::inference::ModelTensorReshape;

fn spec(name: &str, datatype: DataType, dims: &[i64]) -> TensorSpec {
    TensorSpec { name: name.to_owned(), datatype, dims: dims.to_vec(), utf8: false }
}

fn resnet() -> ModelSignature {
    ModelSignature {
        inputs: vec![spec("data", DataType::Fp32, &[-1, 3, 224, 224])],
        outputs: vec![spec("prob", DataType::Fp32, &[-1, 1000])],
    }
}

/// A completed config for [`resnet`], with `extra` appended to its text.
fn resnet_config(extra: &str) -> ModelConfig {
    let text = format!(
        r#"
        name: "m"
        platform: "onnxruntime_onnx"
        backend: "onnxruntime"
        max_batch_size: 8
        input [ {{ name: "data" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] }} ]
        output [ {{ name: "prob" data_type: TYPE_FP32 dims: [ 1000 ] }} ]
        {extra}
        "#
    );
    parse_config(&text).unwrap_or_else(|err| panic!("test config does not parse: {err}"))
}

fn message(config: &ModelConfig, signature: &ModelSignature) -> String {
    match validate(config, signature) {
        Ok(()) => "ok".to_owned(),
        Err(err) => err.to_string(),
    }
}

#[test]
fn numbers_that_size_memory_are_bounded() {
    // max_batch_size near 2^31 once sized a statistics vector of ~100 GB (issue 17).
    let mut huge = resnet_config("");
    huge.max_batch_size = i32::MAX;
    assert_eq!(message(&huge, &resnet()), "model 'm': max_batch_size 2147483647 is over the limit of 65536");
    let queue = resnet_config("dynamic_batching { default_queue_policy { max_queue_size: 4000000000 } }");
    assert_eq!(
        message(&queue, &resnet()),
        "model 'm': dynamic_batching.default_queue_policy.max_queue_size 4000000000 is over the limit of 65536"
    );
    let instances = resnet_config("instance_group [ { name: \"g\" count: 100000 kind: KIND_CPU } ]");
    assert_eq!(
        message(&instances, &resnet()),
        "model 'm': instance_group 'g' count 100000 is over the limit of 256"
    );
}

#[test]
fn valid_configs() {
    assert_eq!(message(&resnet_config(""), &resnet()), "ok");
    let dynamic = resnet_config("dynamic_batching { preferred_batch_size: [ 4, 8 ] }");
    assert_eq!(message(&dynamic, &resnet()), "ok");
    // -1 on either side matches anything.
    let mut wildcard = resnet_config("");
    wildcard.input[0].dims = vec![3, -1, -1];
    assert_eq!(message(&wildcard, &resnet()), "ok");
    let symbolic = ModelSignature {
        inputs: vec![spec("data", DataType::Fp32, &[-1, 3, -1, -1])],
        outputs: vec![spec("prob", DataType::Fp32, &[-1, -1])],
    };
    assert_eq!(message(&resnet_config(""), &symbolic), "ok");
    // Unbatched: the config's dims are the model's full shape.
    let mut unbatched = resnet_config("");
    unbatched.max_batch_size = 0;
    unbatched.input[0].dims = vec![-1, 3, 224, 224];
    unbatched.output[0].dims = vec![-1, 1000];
    assert_eq!(message(&unbatched, &resnet()), "ok");
    // Model outputs may be left out of the config.
    let mut fewer_outputs = resnet_config("");
    fewer_outputs.output.clear();
    assert_eq!(message(&fewer_outputs, &resnet()), "ok");
}

#[test]
fn datatype_mismatch() {
    let signature = ModelSignature { inputs: vec![spec("x", DataType::Int64, &[-1, 3])], outputs: vec![] };
    let config = parse_config(
        r#"name: "m" max_batch_size: 4
           input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]"#,
    )
    .unwrap_or_default();
    assert_eq!(
        message(&config, &signature),
        "model 'm': input 'x': data_type TYPE_FP32 in config.pbtxt does not match \
         TYPE_INT64 in the model file"
    );
    assert!(matches!(
        validate(&config, &signature),
        Err(RepositoryError::DataTypeMismatch { kind: TensorKind::Input, .. })
    ));
}

#[test]
fn string_is_bytes() {
    let signature = ModelSignature {
        inputs: vec![spec("text", DataType::Bytes, &[-1])],
        outputs: vec![spec("ids", DataType::Int32, &[-1])],
    };
    let config = parse_config(
        r#"name: "m"
           input [ { name: "text" data_type: TYPE_STRING dims: [ -1 ] } ]
           output [ { name: "ids" data_type: TYPE_INT32 dims: [ -1 ] } ]"#,
    )
    .unwrap_or_default();
    assert_eq!(message(&config, &signature), "ok");
}

#[test]
fn dims_mismatch() {
    let mut config = resnet_config("");
    config.input[0].dims = vec![3, 224, 225];
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': input 'data': dims [3,224,225] in config.pbtxt do not match \
         [3,224,224] in the model file (shape [-1,3,224,224] without its batch dimension, \
         as max_batch_size 8 > 0)"
    );
    // The batch dimension written into dims while max_batch_size > 0.
    let mut config = resnet_config("");
    config.output[0].dims = vec![-1, 1000];
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': output 'prob': dims [-1,1000] in config.pbtxt do not match [1000] in \
         the model file (shape [-1,1000] without its batch dimension, as max_batch_size 8 \
         > 0)"
    );
    // Unbatched: compared with the full shape.
    let mut config = resnet_config("");
    config.max_batch_size = 0;
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': input 'data': dims [3,224,224] in config.pbtxt do not match \
         [-1,3,224,224] in the model file"
    );
}

#[test]
fn fixed_batch_dimension() {
    let signature = ModelSignature {
        inputs: vec![spec("data", DataType::Fp32, &[1, 3, 224, 224])],
        outputs: vec![spec("prob", DataType::Fp32, &[-1, 1000])],
    };
    assert_eq!(
        message(&resnet_config(""), &signature),
        "model 'm': max_batch_size 8 > 0 but input 'data' has a fixed batch dimension 1 in \
         the model file; set max_batch_size: 0 or re-export with a dynamic batch dimension"
    );
    let scalar = ModelSignature {
        inputs: vec![spec("data", DataType::Fp32, &[-1, 3, 224, 224])],
        outputs: vec![spec("prob", DataType::Fp32, &[])],
    };
    assert_eq!(
        message(&resnet_config(""), &scalar),
        "model 'm': max_batch_size 8 > 0 but output 'prob' is a scalar in the model file, so \
         it has no batch dimension; set max_batch_size: 0"
    );
}

#[test]
fn reshape_is_compared_instead_of_dims() {
    let signature = ModelSignature {
        inputs: vec![spec("data", DataType::Fp32, &[-1, 1, 3, 224, 224])],
        outputs: vec![spec("prob", DataType::Fp32, &[-1])],
    };
    let mut config = resnet_config("");
    config.input[0].reshape = Some(ModelTensorReshape { shape: vec![1, 3, 224, 224] });
    config.output[0].dims = vec![1];
    config.output[0].reshape = Some(ModelTensorReshape { shape: vec![] });
    assert_eq!(message(&config, &signature), "ok");

    config.input[0].reshape = Some(ModelTensorReshape { shape: vec![3, 1, 224, 224] });
    assert_eq!(
        message(&config, &signature),
        "model 'm': input 'data': reshape.shape [3,1,224,224] in config.pbtxt do not match \
         [1,3,224,224] in the model file (shape [-1,1,3,224,224] without its batch \
         dimension, as max_batch_size 8 > 0)"
    );
}

#[test]
fn reshape_element_count() {
    let mut config = resnet_config("");
    config.input[0].reshape = Some(ModelTensorReshape { shape: vec![3, 224, 225] });
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': input 'data': dims [3,224,224] and reshape.shape [3,224,225] have \
         different element counts"
    );
    assert!(same_element_count(&[2, 4, -1, 6], &[8, -1, 1, 6]));
    assert!(!same_element_count(&[2, 4, -1, 6], &[8, -1, 2, 3, 2]));
    assert!(!same_element_count(&[-1, 4], &[4]));
    assert!(same_element_count(&[1], &[]));
    assert!(!same_element_count(&[2], &[]));
    assert!(!same_element_count(&[i64::MAX, 4], &[4, i64::MAX]));

    let mut empty_unbatched = resnet_config("");
    empty_unbatched.max_batch_size = 0;
    empty_unbatched.output[0].dims = vec![1];
    empty_unbatched.output[0].reshape = Some(ModelTensorReshape { shape: vec![] });
    assert_eq!(
        message(&empty_unbatched, &resnet()),
        "model 'm': output 'prob': reshape.shape is empty, which is only allowed when \
         max_batch_size > 0 (scalar tensors without a batch dimension are not supported)"
    );
}

#[test]
fn scalar_in_unbatched_model() {
    let signature = ModelSignature {
        inputs: vec![spec("x", DataType::Fp32, &[])],
        outputs: vec![spec("y", DataType::Fp32, &[])],
    };
    let config = parse_config(
        r#"name: "m"
           input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
           output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]"#,
    )
    .unwrap_or_default();
    assert_eq!(
        message(&config, &signature),
        "model 'm': output 'y': dims [2] in config.pbtxt do not match the model file, where \
         it is a scalar; write dims: [ 1 ]"
    );
}

#[test]
fn negative_max_batch_size() {
    let mut config = resnet_config("");
    config.max_batch_size = -1;
    assert_eq!(message(&config, &resnet()), "model 'm': max_batch_size -1 is invalid: it must be >= 0");
}

#[test]
fn unknown_and_missing_tensors() {
    let mut config = resnet_config("");
    config.input[0].name = "image".to_owned();
    let mut extra = config.input[0].clone();
    extra.name = "mask".to_owned();
    config.input.push(extra);
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': config.pbtxt lists inputs 'image', 'mask' that the model file does not \
         have (its inputs: 'data')"
    );

    let mut config = resnet_config("");
    config.output[0].name = "scores".to_owned();
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': config.pbtxt lists output 'scores' that the model file does not have \
         (its outputs: 'prob')"
    );

    let two_inputs = ModelSignature {
        inputs: vec![
            spec("data", DataType::Fp32, &[-1, 3, 224, 224]),
            spec("mask", DataType::Bool, &[-1, 224, 224]),
        ],
        outputs: resnet().outputs,
    };
    assert_eq!(
        message(&resnet_config(""), &two_inputs),
        "model 'm': the model file's input 'mask' is missing from config.pbtxt; every model \
         input must be listed"
    );
}

#[test]
fn duplicate_names() {
    let mut config = resnet_config("");
    config.output.push(config.output[0].clone());
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': output 'prob' is listed more than once in config.pbtxt"
    );
}

#[test]
fn bad_dims_values() {
    for (dims, shown, bad) in [(vec![3, 0, 224], "[3,0,224]", 0), (vec![3, -2, 224], "[3,-2,224]", -2)] {
        let mut config = resnet_config("");
        config.input[0].dims = dims;
        assert_eq!(
            message(&config, &resnet()),
            format!(
                "model 'm': input 'data': dims {shown} has {bad}; every dimension must be \
                 >= 1, or -1 for a variable size"
            )
        );
    }
    let mut config = resnet_config("");
    config.output[0].dims.clear();
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': output 'prob': dims must be given (use dims: [ 1 ] with reshape: { \
         shape: [ ] } for a scalar)"
    );
}

#[test]
fn missing_data_type() {
    let mut config = resnet_config("");
    config.input[0].data_type = ConfigType::TypeInvalid as i32;
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': input 'data': data_type must be given (it is TYPE_INVALID)"
    );
    config.input[0].data_type = 99;
    assert_eq!(message(&config, &resnet()), "model 'm': input 'data': data_type 99 is not a known type");
}

#[test]
fn batching_settings() {
    let config = resnet_config("dynamic_batching { preferred_batch_size: [ 4, 16 ] }");
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': dynamic_batching.preferred_batch_size 16 is invalid: it must be in \
         1..=8 (max_batch_size)"
    );
    let config = resnet_config("dynamic_batching { priority_levels: 2 }");
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': dynamic_batching.default_priority_level 0 must be in 1..=2 \
         (priority_levels)"
    );
    let config = resnet_config(
        "dynamic_batching { priority_levels: 2 default_priority_level: 1 \
         priority_queue_policy { key: 3 value: { } } }",
    );
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': dynamic_batching.priority_queue_policy has level 3, outside 1..=2 \
         (priority_levels)"
    );
    let config = resnet_config("ensemble_scheduling { }");
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': ensemble scheduling cannot be set for model 'm' whose platform is not ensemble"
    );
}

/// A stateful model: INPUT from the client; START, READY, CORRID and the state filled by the
/// sequence batcher (Triton's qa `simple_sequence` style, with implicit state).
fn accumulator() -> ModelSignature {
    ModelSignature {
        inputs: vec![
            spec("INPUT", DataType::Int32, &[-1, 1]),
            spec("START", DataType::Int32, &[-1, 1]),
            spec("READY", DataType::Int32, &[-1, 1]),
            spec("CORRID", DataType::Uint64, &[-1, 1]),
            spec("INPUT_STATE", DataType::Int32, &[-1, 1]),
        ],
        outputs: vec![
            spec("OUTPUT", DataType::Int32, &[-1, 1]),
            spec("OUTPUT_STATE", DataType::Int32, &[-1, 1]),
        ],
    }
}

fn accumulator_config(sequence: &str) -> ModelConfig {
    let text = format!(
        r#"
        name: "m"
        platform: "onnxruntime_onnx"
        backend: "onnxruntime"
        max_batch_size: 4
        input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        output [ {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        sequence_batching {{ {sequence} }}
        "#
    );
    parse_config(&text).unwrap_or_else(|err| panic!("test config does not parse: {err}"))
}

const CONTROLS: &str = r#"
    control_input [
      { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
      { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
      { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
    ]
    state [ { input_name: "INPUT_STATE" output_name: "OUTPUT_STATE" data_type: TYPE_INT32 dims: [ 1 ]
              initial_state: { name: "zero" data_type: TYPE_INT32 dims: [ 1 ] zero_data: true } } ]"#;

/// Control and state tensors are the batcher's: never reported as missing config inputs.
#[test]
fn sequence_batching_with_controls_and_state_is_accepted() {
    for strategy in ["", "direct { }", "oldest { max_candidate_sequences: 4 preferred_batch_size: [ 2 ] }"] {
        let config = accumulator_config(&format!("{CONTROLS} {strategy}"));
        assert_eq!(message(&config, &accumulator()), "ok", "{strategy}");
    }
    // Without the controls, the model's START etc. are missing inputs again.
    let config = accumulator_config("");
    assert!(message(&config, &accumulator()).contains("missing from config.pbtxt"));
}

/// Triton's words for its checks (core src/model_config_utils.cc), and a reason for what Tern
/// does not serve.
#[test]
fn sequence_batching_errors_name_the_problem() {
    let cases = [
        (
            r#"control_input [ { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32 } ] } ]"#,
            "unexpected data type for control CONTROL_SEQUENCE_CORRID for m. Allowed data types are \
             TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING",
        ),
        (
            r#"control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0 ] } ] } ]"#,
            "sequence batching control 'int32_false_true' must have exactly 2 entries for \
             CONTROL_SEQUENCE_START for m",
        ),
        (
            r#"control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START } ] } ]"#,
            "sequence batching must specify either 'int32_false_true', 'fp32_false_true' or \
             'bool_false_true' for CONTROL_SEQUENCE_START for m",
        ),
        (
            r#"control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] } ]"#,
            "sequence batching control tensor 'START' is INT32 in the model file, but its control gives FP32",
        ),
        (
            r#"control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
               { name: "READY" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] } ]"#,
            "sequence batching specifies multiple CONTROL_SEQUENCE_START tensors for m",
        ),
        (
            "oldest { preferred_batch_size: [ 8 ] }",
            "sequence batching preferred batch size must be <= max batch size for m",
        ),
        (
            "direct { minimum_slot_utilization: 1.5 }",
            "sequence batching minimum slot utilization must be in range (0.0, 1.0] for m",
        ),
        (
            r#"state [ { input_name: "INPUT_STATE" output_name: "OUTPUT_STATE" data_type: TYPE_INT32 dims: [ 1 ]
                         initial_state: { data_type: TYPE_INT32 dims: [ 1 ] data_file: "s" } } ]"#,
            "sequence_batching.state 'INPUT_STATE': initial_state data_file 's' is not supported yet; use zero_data: true",
        ),
        (
            r#"state [ { input_name: "INPUT_STATE" output_name: "NOPE" data_type: TYPE_INT32 dims: [ 1 ] } ]"#,
            "sequence_batching.state: 'NOPE' is not an output of the model file",
        ),
        ("iterative_sequence: true", "sequence_batching.iterative_sequence is not supported"),
    ];
    for (sequence, expected) in cases {
        let config = accumulator_config(sequence);
        let got = message(&config, &accumulator());
        assert!(got.starts_with(&format!("model 'm': {expected}")), "{sequence}\n got: {got}");
    }
}

#[test]
fn optional_inputs_need_no_batching() {
    let mut config = resnet_config("");
    config.input[0].optional = true;
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': input 'data': optional inputs are not supported when max_batch_size > 0"
    );
}

#[test]
fn other_fields() {
    let mut config = resnet_config("");
    config.name.clear();
    assert_eq!(message(&config, &resnet()), "model '': the config must give the model's 'name'");
    let mut config = resnet_config("");
    config.backend = "pytorch".to_owned();
    assert!(matches!(validate(&config, &resnet()), Err(RepositoryError::UnsupportedBackend { .. })));
    for bad in ["../model.onnx", "a/model.onnx", "/model.onnx", "..", "a\\b"] {
        let mut config = resnet_config("");
        config.default_model_filename = bad.to_owned();
        assert_eq!(
            message(&config, &resnet()),
            format!(
                "model 'm': default_model_filename '{bad}' must be a file name inside the \
                 version directory, without path separators"
            )
        );
    }
    let mut config = resnet_config("");
    config.default_model_filename = "resnet.v2.onnx".to_owned();
    assert_eq!(message(&config, &resnet()), "ok");
}

/// Triton's refusals of a response cache it cannot serve (core src/model_config_utils.cc).
#[test]
fn response_cache_is_refused_for_sequence_batching_and_decoupled_models() {
    let config = resnet_config("response_cache { enable: true } sequence_batching { }");
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': Response Cache does not currently support model m with sequence batching \
         scheduler. Please disable the response cache."
    );
    let config =
        resnet_config("response_cache { enable: true } model_transaction_policy { decoupled: true }");
    assert_eq!(
        message(&config, &resnet()),
        "model 'm': Response Cache does not currently support model m with 'decoupled' transaction \
         policy. Please disable the response cache."
    );
    let config = resnet_config("response_cache { enable: true } dynamic_batching { }");
    assert!(validate(&config, &resnet()).is_ok());
    let config =
        resnet_config("response_cache { enable: false } model_transaction_policy { decoupled: true }");
    assert!(check_response_cache(&config).is_ok());
}

#[test]
fn model_operations_parse_and_are_checked() {
    // Triton's spelling, a list of one (and of two) library names.
    let one = resnet_config(r#"model_operations { op_library_filename: [ "/opt/ops/libcustom.so" ] }"#);
    assert_eq!(
        one.model_operations.as_ref().map(|o| o.op_library_filename.clone()),
        Some(vec!["/opt/ops/libcustom.so".to_string()])
    );
    assert_eq!(message(&one, &resnet()), "ok");
    let two = resnet_config(
        r#"model_operations { op_library_filename: "liba.so" op_library_filename: "libb.so" }"#,
    );
    assert_eq!(two.model_operations.map(|o| o.op_library_filename.len()), Some(2));

    let empty = resnet_config(r#"model_operations { op_library_filename: [ "" ] }"#);
    let msg = message(&empty, &resnet());
    assert!(msg.contains("model_operations.op_library_filename") && msg.contains("'m'"), "{msg}");

    let names: Vec<String> = (0..=MAX_OP_LIBRARIES).map(|i| format!("\"lib{i}.so\"")).collect();
    let many =
        resnet_config(&format!("model_operations {{ op_library_filename: [ {} ] }}", names.join(", ")));
    let msg = message(&many, &resnet());
    assert!(msg.contains(&format!("at most {MAX_OP_LIBRARIES}")), "{msg}");

    // A field that is not Triton's is a parse error, as in Triton.
    let text = "name: \"m\"\nmodel_operations { op_library: \"x.so\" }";
    assert!(parse_config(text).is_err());
}

#[test]
fn a_load_requests_config_may_not_name_op_libraries() {
    let config = resnet_config(r#"model_operations { op_library_filename: [ "/tmp/x.so" ] }"#);
    let err = check_override_loads_no_native_code("m", &config).map_err(|e| e.to_string());
    assert!(err.as_ref().is_err_and(|e| e.contains("native code") && e.contains("'m'")), "{err:?}");
    assert!(check_override_loads_no_native_code("m", &resnet_config("")).is_ok());
}
