use super::*;
use std::path::PathBuf;
use tern_proto::inference::ModelParameter;

fn parse(text: &str) -> ModelConfig {
    crate::parse_config(text).expect("test config parses")
}

fn complete(text: Option<&str>) -> Result<ModelConfig, String> {
    auto_complete_generative("llm", text.map(parse), false).map_err(|e| e.to_string())
}

#[test]
fn absent_config_is_completed_as_a_decoupled_generate_model() -> Result<(), String> {
    let c = complete(None)?;
    assert_eq!(c.name, "llm");
    assert_eq!(c.backend, GENAI_BACKEND);
    assert_eq!(c.platform, "");
    assert_eq!(c.max_batch_size, 0);
    assert_eq!(c.model_transaction_policy, Some(ModelTransactionPolicy { decoupled: true }));
    let inputs: Vec<(&str, i32, &[i64], bool)> =
        c.input.iter().map(|i| (i.name.as_str(), i.data_type, i.dims.as_slice(), i.optional)).collect();
    assert_eq!(inputs.len(), 11);
    assert_eq!(inputs[0], ("text_input", DataType::TypeString as i32, &[1][..], false));
    assert!(inputs.contains(&("stop", DataType::TypeString as i32, &[-1][..], true)));
    assert!(inputs.contains(&("seed", DataType::TypeUint64 as i32, &[1][..], true)));
    assert!(inputs.contains(&("stream", DataType::TypeBool as i32, &[1][..], true)));
    let outputs: Vec<&str> = c.output.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outputs, ["text_output", "output_ids", "finish_reason"]);
    assert_eq!(c.instance_group.len(), 1);
    assert_eq!((c.instance_group[0].kind, c.instance_group[0].count), (Kind::Cpu as i32, 1));
    assert!(c.version_policy.is_some());
    let p = generative_parameters(&c).map_err(|e| e.to_string())?;
    assert_eq!(
        p,
        GenerativeParameters {
            max_batch: 16,
            kv_cache_bytes: 256 << 20,
            max_queue: 256,
            intra_op_threads: 0,
            intra_op_spinning: None,
            gpu: None
        }
    );
    Ok(())
}

#[test]
fn partial_config_keeps_what_it_gives_and_gets_the_rest() -> Result<(), String> {
    let c = complete(Some(
        "backend: \"onnxruntime_genai\"\n\
             input [ { name: \"text_input\" data_type: TYPE_STRING dims: [ 1 ] }, { name: \"max_tokens\" } ]\n\
             parameters { key: \"max_batch\" value { string_value: \"4\" } }\n\
             parameters { key: \"kv_cache_bytes\" value { string_value: \"8388608\" } }\n\
             instance_group [ { kind: KIND_GPU } ]\n\
             version_policy { all {} }",
    ))?;
    assert_eq!(c.input.len(), 11);
    assert_eq!(c.input[1].name, "max_tokens");
    assert_eq!((c.input[1].data_type, c.input[1].optional), (DataType::TypeInt32 as i32, true));
    assert_eq!(c.output.len(), 3);
    assert!(matches!(c.version_policy.and_then(|p| p.policy_choice), Some(PolicyChoice::All(_))));
    let p = generative_parameters(&complete(Some(
        "parameters { key: \"max_batch\" value { string_value: \"4\" } }\n\
             parameters { key: \"max_queue\" value { string_value: \"0\" } }\n\
             parameters { key: \"session.intra_op.allow_spinning\" value { string_value: \"0\" } }\n\
             instance_group [ { kind: KIND_GPU gpus: [ 1 ] } ]",
    ))?)
    .map_err(|e| e.to_string())?;
    assert_eq!((p.max_batch, p.max_queue, p.intra_op_spinning, p.gpu), (4, 0, Some(false), Some(1)));
    Ok(())
}

#[test]
fn contradicting_configs_are_refused_naming_model_and_field() {
    let cases = [
        ("max_batch_size: 8", "model 'llm': max_batch_size 8 is not supported for a generative model"),
        (
            "model_transaction_policy { decoupled: false }",
            "model 'llm': model_transaction_policy.decoupled must be true",
        ),
        ("platform: \"onnxruntime_onnx\"", "model 'llm': the version directory holds genai_config.json"),
        ("backend: \"python\"", "backend 'python'"),
        ("dynamic_batching {}", "model 'llm': dynamic_batching is not supported"),
        ("input [ { name: \"prompt\" } ]", "model 'llm': unexpected input 'prompt' for a generative model"),
        (
            "input [ { name: \"max_tokens\" data_type: TYPE_INT64 } ]",
            "model 'llm': input 'max_tokens': data_type TYPE_INT64 is not supported; a generative model's 'max_tokens' is TYPE_INT32",
        ),
        (
            "input [ { name: \"text_input\" dims: [ 4 ] } ]",
            "model 'llm': input 'text_input': dims [4] are not supported",
        ),
        ("input [ { name: \"text_input\" optional: true } ]", "input 'text_input' cannot be optional"),
        ("output [ { name: \"logits\" } ]", "unexpected output 'logits'"),
        ("instance_group [ { count: 2 } ]", "count 2: a generative model runs one engine per version"),
        ("instance_group [ { kind: KIND_GPU gpus: [ 0, 1 ] } ]", "runs on one GPU"),
        ("name: \"other\"", "the name must equal the directory name"),
        (
            "parameters { key: \"max_batch\" value { string_value: \"0\" } }",
            "model 'llm': parameters 'max_batch': 0 is out of range (1 to 1024)",
        ),
        (
            "parameters { key: \"max_batch\" value { string_value: \"lots\" } }",
            "parameters 'max_batch': 'lots' is not a whole number",
        ),
        (
            "parameters { key: \"kv_cache_bytes\" value { string_value: \"1\" } }",
            "parameters 'kv_cache_bytes': 1 is out of range",
        ),
        (
            "parameters { key: \"max_queue\" value { string_value: \"99999999999\" } }",
            "parameters 'max_queue': 99999999999 is out of range",
        ),
        (
            "parameters { key: \"intra_op_thread_count\" value { string_value: \"-1\" } }",
            "'intra_op_thread_count': '-1' is not a whole number",
        ),
        (
            "parameters { key: \"session.intra_op.allow_spinning\" value { string_value: \"maybe\" } }",
            "model 'llm': parameters 'session.intra_op.allow_spinning': 'maybe' is not a boolean",
        ),
    ];
    for (text, expected) in cases {
        let err = complete(Some(text)).expect_err(text);
        assert!(err.contains(expected), "{text}: {err}");
    }
    assert_eq!(
        auto_complete_generative("llm", None, true).map_err(|e| e.to_string()),
        Err("model 'llm': config.pbtxt is required with --strict-model-config=true".to_owned())
    );
}

#[test]
fn chat_parameters_come_from_tokenizer_config() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("tern-chat-params-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut c = complete(None)?;
    // No tokenizer_config.json: nothing added.
    complete_chat_parameters("llm", &mut c, &dir).map_err(|e| e.to_string())?;
    assert!(!c.parameters.contains_key(CHAT_TEMPLATE_KEY));
    let file = dir.join(TOKENIZER_CONFIG_FILENAME);
    std::fs::write(
            &file,
            r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>",
                "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .map_err(|e| e.to_string())?;
    complete_chat_parameters("llm", &mut c, &dir).map_err(|e| e.to_string())?;
    assert_eq!(c.parameters[CHAT_TEMPLATE_KEY].string_value, "D");
    assert_eq!(c.parameters[BOS_TOKEN_KEY].string_value, "<s>");
    assert_eq!(c.parameters[EOS_TOKEN_KEY].string_value, "</s>");
    // A config's own template wins.
    let mut given = complete(None)?;
    given.parameters.insert(CHAT_TEMPLATE_KEY.into(), ModelParameter { string_value: "mine".into() });
    complete_chat_parameters("llm", &mut given, &dir).map_err(|e| e.to_string())?;
    assert_eq!(given.parameters[CHAT_TEMPLATE_KEY].string_value, "mine");
    std::fs::write(&file, r#"{"chat_template": 7}"#).map_err(|e| e.to_string())?;
    let e = complete_chat_parameters("llm", &mut complete(None)?, &dir)
        .map(|_| ())
        .expect_err("a number is not a template");
    assert!(e.to_string().contains("'chat_template' must be a string"), "{e}");
    std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(())
}

#[test]
fn a_version_directory_with_genai_config_makes_a_generative_model() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("1"))?;
    std::fs::create_dir_all(dir.path().join("2"))?;
    let source =
        ModelSource { name: "llm".into(), dir: dir.path().to_path_buf(), config: None, versions: vec![1, 2] };
    assert!(!is_generative(&source, None));
    std::fs::write(dir.path().join("2").join(GENAI_CONFIG_FILENAME), "{}")?;
    assert!(is_generative(&source, None));
    let onnx = ModelConfig { platform: "onnxruntime_onnx".into(), ..Default::default() };
    assert!(!is_generative(&source, Some(&onnx)), "a config naming ONNX Runtime is an ONNX model");
    let elsewhere = ModelSource { dir: PathBuf::from("/nonexistent"), ..source };
    let genai = ModelConfig { backend: GENAI_BACKEND.into(), ..Default::default() };
    assert!(is_generative(&elsewhere, Some(&genai)));
    let mut with_param = ModelConfig::default();
    with_param.parameters.insert("max_batch".into(), ModelParameter { string_value: "2".into() });
    assert!(!is_generative(&elsewhere, Some(&with_param)));
    Ok(())
}
