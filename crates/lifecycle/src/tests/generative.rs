//! Generative models through the lifecycle, with [`FakeGenerativeFactory`] for the engine:
//! the config completed as a decoupled model, the engine settings passed on, a reload beside
//! the serving engine while a stream holds the old one, an unload that waits for the stream,
//! and clear failures.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::fake::{FakeEngine, FakeGenerativeFactory};
use super::state::{Harness, TestResult, eventually};
use crate::LoadedModel;

/// A generative model directory: `config` as config.pbtxt (none when `None`), and version 1
/// in ONNX Runtime GenAI's layout whose genai_config.json holds `generation`.
fn write_llm(repo: &Path, name: &str, config: Option<&str>, generation: u32) -> std::io::Result<()> {
    let dir = repo.join(name);
    std::fs::create_dir_all(dir.join("1"))?;
    if let Some(config) = config {
        std::fs::write(dir.join("config.pbtxt"), config)?;
    }
    std::fs::write(dir.join("1").join("genai_config.json"), generation.to_string())
}

/// The generation of the engine `model` runs on.
fn generation(model: &LoadedModel) -> Result<String, String> {
    let engine = model.generative.as_ref().ok_or("not a generative model")?;
    let fake = engine.as_any().downcast_ref::<FakeEngine>().ok_or("not the fake engine")?;
    Ok(fake.generation.clone())
}

fn alive(g: &FakeGenerativeFactory) -> usize {
    g.alive.load(Ordering::SeqCst)
}

const PARTIAL: &str = "parameters { key: \"max_batch\" value { string_value: \"4\" } }\n\
                       parameters { key: \"kv_cache_bytes\" value { string_value: \"8388608\" } }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generative_model_loads_as_a_decoupled_model_with_its_engine_settings() -> TestResult {
    let h = Harness::new()?;
    write_llm(h.repo.path(), "llm", Some(PARTIAL), 1)?;
    h.manager.load("llm", None, Vec::new()).await?;
    let model = h.manager.get("llm", "")?;
    assert_eq!(generation(&model)?, "1");
    assert!(model.decoupled());
    assert_eq!(model.config.backend, "onnxruntime_genai");
    assert_eq!(model.config.max_batch_size, 0);
    let inputs: Vec<&str> = model.io.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(inputs.first(), Some(&"text_input"));
    assert_eq!(inputs.len(), 11);
    let outputs: Vec<&str> = model.io.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outputs, ["text_output", "output_ids", "finish_reason"]);
    let loads = h.generative.loads.lock().map_err(|e| e.to_string())?.clone();
    assert_eq!(loads.len(), 1);
    let load = &loads[0];
    assert_eq!((load.max_batch, load.kv_cache_bytes, load.max_queue, load.gpu), (4, 8 << 20, 256, None));
    assert_eq!(load.dir, h.repo.path().join("llm").join("1"));
    assert_eq!(load.target.model, "llm");
    assert_eq!(h.row("llm"), ("READY".to_string(), String::new()));
    assert_eq!(model.memory_bytes, 1 << 20);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_switches_engines_while_a_stream_on_the_old_one_finishes() -> TestResult {
    let h = Harness::new()?;
    write_llm(h.repo.path(), "llm", Some(PARTIAL), 1)?;
    h.manager.load("llm", None, Vec::new()).await?;
    // A stream in progress holds the version it runs on.
    let stream = h.manager.get("llm", "")?;

    write_llm(h.repo.path(), "llm", Some(PARTIAL), 2)?;
    let reload = tokio::spawn({
        let manager = h.manager.clone();
        async move { manager.load("llm", None, Vec::new()).await }
    });
    eventually("the new engine serves", || {
        h.manager.get("llm", "").ok().is_some_and(|m| generation(&m).ok().as_deref() == Some("2"))
    })
    .await?;
    assert_eq!(alive(&h.generative), 2, "the old engine lives beside the new one while a stream holds it");
    assert_eq!(generation(&stream)?, "1");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!reload.is_finished(), "the reload waits for the old version's streams");
    drop(stream);
    reload.await??;
    assert_eq!(alive(&h.generative), 1, "the old engine is dropped once its stream ended");
    assert_eq!(h.row("llm"), ("READY".to_string(), String::new()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unload_waits_for_the_streams_then_drops_the_engine() -> TestResult {
    let h = Harness::new()?;
    write_llm(h.repo.path(), "llm", Some(PARTIAL), 1)?;
    h.manager.load("llm", None, Vec::new()).await?;
    let stream = h.manager.get("llm", "")?;
    let unload = tokio::spawn({
        let manager = h.manager.clone();
        async move { manager.unload("llm").await }
    });
    eventually("the model stops taking requests", || h.manager.get("llm", "").is_err()).await?;
    assert_eq!(h.row("llm"), ("UNAVAILABLE".to_string(), "unloaded".to_string()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!unload.is_finished(), "the unload waits for the stream in flight");
    assert_eq!(alive(&h.generative), 1);
    drop(stream);
    unload.await??;
    assert_eq!(alive(&h.generative), 0, "the engine is gone once the unload returns");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generative_load_failures_name_the_model_and_the_cause() -> TestResult {
    let h = Harness::new()?;
    let error = |name: &'static str| {
        let manager = h.manager.clone();
        async move { manager.load(name, None, Vec::new()).await.err().map(|e| e.to_string()).unwrap_or_default() }
    };
    // The harness runs with --strict-model-config=true.
    write_llm(h.repo.path(), "bare", None, 1)?;
    let e = error("bare").await;
    assert!(e.contains("model 'bare': config.pbtxt is required with --strict-model-config=true"), "{e}");

    write_llm(h.repo.path(), "batched", Some("max_batch_size: 8"), 1)?;
    let e = error("batched").await;
    assert!(e.contains("model 'batched': max_batch_size 8 is not supported for a generative model"), "{e}");

    write_llm(
        h.repo.path(),
        "big",
        Some("parameters { key: \"max_queue\" value { string_value: \"1000000\" } }"),
        1,
    )?;
    let e = error("big").await;
    assert!(e.contains("model 'big': parameters 'max_queue': 1000000 is out of range (0 to 65536)"), "{e}");

    *h.generative.fail.lock().map_err(|e| e.to_string())? = Some("tokenizer.json: not found".into());
    write_llm(h.repo.path(), "broken", Some(PARTIAL), 1)?;
    let e = error("broken").await;
    assert!(e.contains("model 'broken' version 1: tokenizer.json: not found"), "{e}");
    assert_eq!(h.row("broken").0, "UNAVAILABLE");

    // A config naming the backend on a directory without the folder says what is missing.
    let dir = h.repo.path().join("empty");
    std::fs::create_dir_all(dir.join("1"))?;
    std::fs::write(dir.join("config.pbtxt"), "backend: \"onnxruntime_genai\"")?;
    let e = error("empty").await;
    assert!(e.contains("model 'empty' version 1:") && e.contains("genai_config.json not found"), "{e}");
    assert_eq!(alive(&h.generative), 0);
    Ok(())
}
