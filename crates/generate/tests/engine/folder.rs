//! Model folders the engine must refuse at load, and a real ONNX Runtime failure at run time
//! (positions past the model's rotary table, made reachable by a config that claims a longer
//! context than the model has): the sequences fail with `Internal`, the engine keeps serving.

use std::path::Path;

use crate::common::{collect, options, prompt, runtime};
use tern_generate::{Engine, FinishReason, GenError, GenerateRequest, Prompt, SamplingParams};

/// A copy of tiny_llm/1 (model and tokenizer linked) with genai_config.json edited.
fn edited_folder(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let source = crate::common::model_dir();
    let dir = tempfile::tempdir().expect("temporary directory");
    for name in ["model.onnx", "tokenizer.json", "tokenizer_config.json"] {
        std::os::unix::fs::symlink(source.join(name), dir.path().join(name)).expect("link");
    }
    let text = std::fs::read_to_string(source.join("genai_config.json")).expect("read the config");
    let mut config: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    edit(&mut config);
    std::fs::write(dir.path().join("genai_config.json"), config.to_string()).expect("write the config");
    dir
}

fn load_error(dir: &Path) -> String {
    runtime();
    match Engine::load(dir, options(4)) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn folders_that_cannot_be_served_are_refused_with_the_field() {
    let dir = edited_folder(|c| c["model"]["decoder"]["num_key_value_heads"] = 4.into());
    let e = load_error(dir.path());
    assert!(e.contains("num_key_value_heads") && e.contains("past_key_values.0.key"), "{e}");

    let dir = edited_folder(|c| c["model"]["decoder"]["inputs"]["past_key_names"] = "past.%d.k".into());
    let e = load_error(dir.path());
    assert!(e.contains("past_key_values.0.key") || e.contains("past.0.k"), "{e}");

    let dir = edited_folder(|c| c["model"]["decoder"]["filename"] = "missing.onnx".into());
    let e = load_error(dir.path());
    assert!(e.contains("missing.onnx") && e.contains("model.decoder.filename"), "{e}");

    let dir = edited_folder(|c| c["model"]["vocab_size"] = 100.into());
    let e = load_error(dir.path());
    assert!(
        e.contains("genai_config.json") && e.contains("model.eos_token_id") || e.contains("vocab"),
        "{e}"
    );

    let dir = edited_folder(|c| {
        c["model"].as_object_mut().expect("object").remove("context_length");
    });
    let e = load_error(dir.path());
    assert!(e.contains("genai_config.json") && e.contains("model.context_length"), "{e}");

    let dir = edited_folder(|_| {});
    std::fs::remove_file(dir.path().join("tokenizer.json")).expect("remove");
    let e = load_error(dir.path());
    assert!(e.contains("tokenizer.json"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onnx_runtime_failure_fails_the_sequence_and_the_engine_goes_on() {
    // The model's rotary table has 512 positions; this config claims 1024.
    let dir = edited_folder(|c| c["model"]["context_length"] = 1024.into());
    runtime();
    let e = Engine::load(dir.path(), options(4)).expect("loads");
    let request = |tokens: Vec<u32>, max_tokens: u32| GenerateRequest {
        prompt: Prompt::Tokens(tokens),
        max_tokens: Some(max_tokens),
        sampling: SamplingParams::default(),
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: true,
        deadline: None,
    };
    // Prefill past position 511.
    let out = collect(e.submit(request(prompt(600, 1), 4)).expect("admitted")).await;
    assert!(matches!(&out.end, Err(GenError::Internal(m)) if m.contains("ONNX Runtime")), "{:?}", out.end);
    // A decode step past position 511 fails the batch it runs in.
    let out = collect(e.submit(request(prompt(505, 2), 20)).expect("admitted")).await;
    assert!(matches!(&out.end, Err(GenError::Internal(m)) if m.contains("ONNX Runtime")), "{:?}", out.end);
    assert!(!out.ids.is_empty() && out.ids.len() < 20, "{} tokens before the failure", out.ids.len());
    // The engine still serves.
    let out = collect(e.submit(request(prompt(10, 3), 5)).expect("admitted")).await;
    assert_eq!(out.reason(), FinishReason::Length);
    assert_eq!(out.ids.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_max_length_bounds_a_request_without_max_tokens() {
    // ORT GenAI's max_length counts the prompt: 10 prompt tokens + 3.
    let dir = edited_folder(|c| c["search"]["max_length"] = 13.into());
    runtime();
    let e = Engine::load(dir.path(), options(4)).expect("loads");
    let request = |max_tokens: Option<u32>| GenerateRequest {
        prompt: Prompt::Tokens(prompt(10, 7)),
        max_tokens,
        sampling: SamplingParams::default(),
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: true,
        deadline: None,
    };
    let out = collect(e.submit(request(None)).expect("admitted")).await;
    assert_eq!((out.reason(), out.ids.len()), (FinishReason::Length, 3));
    // A request's own max_tokens wins.
    let out = collect(e.submit(request(Some(5))).expect("admitted")).await;
    assert_eq!((out.reason(), out.ids.len()), (FinishReason::Length, 5));
}

#[test]
fn search_defaults_out_of_range_are_refused_at_load() {
    for (field, value) in [("temperature", -1.0), ("top_p", 1.5), ("repetition_penalty", 0.0)] {
        let dir = edited_folder(|c| c["search"][field] = value.into());
        let e = load_error(dir.path());
        assert!(e.contains(&format!("search.{field}")), "{e}");
    }
}
