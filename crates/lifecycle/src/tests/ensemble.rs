//! Ensembles through the lifecycle over fake composing models: what an unload with
//! `unload_dependents` takes with it, the ensemble's response cache forgotten when a step
//! reloads, and a generative (decoupled) step refused at load.

use std::path::Path;
use std::sync::Arc;

use tern_core::{DataType, Tensor};
use tern_scheduler::{CacheProbe, ResponseCache};

use super::state::{Harness, TestResult, write_model};

/// An ensemble `name` running `steps` one after another on `x` -> `y` (FP32 [2]), each step
/// a model with input `x` and output `y`.
fn write_ensemble(repo: &Path, name: &str, steps: &[&str], extra: &str) -> std::io::Result<()> {
    let dir = repo.join(name);
    std::fs::create_dir_all(dir.join("1"))?;
    let last = steps.len() - 1;
    let steps: Vec<String> = steps
        .iter()
        .enumerate()
        .map(|(i, model)| {
            let input = if i == 0 { "x".to_string() } else { format!("t{i}") };
            let output = if i == last { "y".to_string() } else { format!("t{}", i + 1) };
            format!(
                "{{ model_name: \"{model}\" model_version: -1 input_map {{ key: \"x\" value: \"{input}\" }} \
                 output_map {{ key: \"y\" value: \"{output}\" }} }}"
            )
        })
        .collect();
    std::fs::write(
        dir.join("config.pbtxt"),
        format!(
            "name: \"{name}\"\nplatform: \"ensemble\"\nmax_batch_size: 0\n\
             input [ {{ name: \"x\" data_type: TYPE_FP32 dims: [ 2 ] }} ]\n\
             output [ {{ name: \"y\" data_type: TYPE_FP32 dims: [ 2 ] }} ]\n\
             ensemble_scheduling {{ step [ {} ] }}\n{extra}",
            steps.join(", ")
        ),
    )
}

fn ready(h: &Harness, name: &str) -> bool {
    h.manager.get(name, "").is_ok()
}

/// Triton's cascading removal (model_repository_manager.cc, `DependencyGraph::RemoveNodes`):
/// the unloaded ensemble's composing models go with it unless loaded by name or still run by
/// another ensemble; nested ensembles cascade; a plain unload keeps every composing model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_dependents_takes_only_the_steps_nothing_else_needs() -> TestResult {
    let h = Harness::new()?;
    let repo = h.repo.path();
    for (i, step) in ["a", "b", "c", "d"].into_iter().enumerate() {
        write_model(repo, step, i as u32 + 1)?;
    }
    write_ensemble(repo, "e1", &["a", "b", "c"], "")?;
    write_ensemble(repo, "e2", &["b"], "")?;
    write_ensemble(repo, "inner", &["d"], "")?;
    write_ensemble(repo, "outer", &["inner"], "")?;

    h.manager.load("e1", None, Vec::new()).await?;
    assert!(["a", "b", "c"].iter().all(|m| ready(&h, m)), "the ensemble's load loads its steps");
    h.manager.load("c", None, Vec::new()).await?; // now loaded by name
    h.manager.load("e2", None, Vec::new()).await?;
    h.manager.unload_with("e1", true).await?;
    assert!(!ready(&h, "e1"));
    assert!(!ready(&h, "a"), "a was loaded only for e1");
    assert!(ready(&h, "b"), "e2 still runs b");
    assert!(ready(&h, "c"), "c was loaded by name");
    h.manager.unload_with("e2", true).await?;
    assert!(!ready(&h, "b"), "no ensemble runs b any more");

    // Without the parameter, Triton keeps the composing models.
    h.manager.load("e1", None, Vec::new()).await?;
    h.manager.unload("e1").await?;
    assert!(ready(&h, "a") && ready(&h, "b"));

    h.manager.load("outer", None, Vec::new()).await?;
    assert!(ready(&h, "inner") && ready(&h, "d"));
    h.manager.unload_with("outer", true).await?;
    assert!(!ready(&h, "inner") && !ready(&h, "d"), "nested ensembles cascade");
    Ok(())
}

/// An ensemble with `response_cache { enable: true }` caches its top-level responses (Triton's
/// ensemble scheduler, `CacheLookUp` / `CacheEnsembleTopLevelRequest`); a step's reload makes
/// it forget them, so no answer of the step's previous load is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_reload_empties_the_ensembles_response_cache() -> TestResult {
    let h = Harness::with_cache(Some(Arc::new(ResponseCache::new(1 << 20))))?;
    write_model(h.repo.path(), "a", 1)?;
    write_ensemble(h.repo.path(), "cached", &["a"], "response_cache { enable: true }\n")?;
    h.manager.load("cached", None, Vec::new()).await?;
    let x = Tensor { name: "x".into(), datatype: DataType::Fp32, shape: vec![2], data: vec![0u8; 8].into() };
    let y = Tensor { name: "y".into(), datatype: DataType::Fp32, shape: vec![2], data: vec![1u8; 8].into() };
    let probe = |h: &Harness| -> Result<Option<CacheProbe>, Box<dyn std::error::Error>> {
        Ok(h.manager.get("cached", "")?.scheduler.cache_probe(std::slice::from_ref(&x), &[]))
    };
    let Some(CacheProbe::Miss(miss)) = probe(&h)? else { return Err("a first lookup misses".into()) };
    h.manager.get("cached", "")?.scheduler.cache_offer(miss, std::slice::from_ref(&y));
    let Some(CacheProbe::Hit(outputs)) = probe(&h)? else { return Err("the answer was cached".into()) };
    assert_eq!(outputs[0].data, y.data);

    // Reloaded with another model file: the ensemble keeps serving, its cache starts empty.
    write_model(h.repo.path(), "a", 2)?;
    h.manager.load("a", None, Vec::new()).await?;
    assert!(matches!(probe(&h)?, Some(CacheProbe::Miss(_))), "a step's reload empties the cache");
    let stats = h.manager.get("cached", "")?.scheduler.stats().snapshot();
    assert_eq!((stats.cache_hit.count, stats.cache_miss.count), (1, 1));
    Ok(())
}

/// Tern's decoupled models are its generative models; an ensemble step that is one is refused
/// at load with the reason (Triton would run it and make the ensemble decoupled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generative_step_is_refused_at_load() -> TestResult {
    let h = Harness::new()?;
    let dir = h.repo.path().join("llm");
    std::fs::create_dir_all(dir.join("1"))?;
    std::fs::write(dir.join("1").join("genai_config.json"), "1")?;
    std::fs::write(
        dir.join("config.pbtxt"),
        "parameters { key: \"max_batch\" value { string_value: \"4\" } }\n",
    )?;
    let ens = h.repo.path().join("chat");
    std::fs::create_dir_all(ens.join("1"))?;
    std::fs::write(
        ens.join("config.pbtxt"),
        "name: \"chat\"\nplatform: \"ensemble\"\nmax_batch_size: 0\n\
         input [ { name: \"prompt\" data_type: TYPE_STRING dims: [ 1 ] } ]\n\
         output [ { name: \"text\" data_type: TYPE_STRING dims: [ -1 ] } ]\n\
         ensemble_scheduling { step [ { model_name: \"llm\" model_version: -1 \
         input_map { key: \"text_input\" value: \"prompt\" } output_map { key: \"text_output\" value: \"text\" } } ] }\n",
    )?;
    let error =
        h.manager.load("chat", None, Vec::new()).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("in ensemble chat, model llm is a generative model (decoupled)"), "{error}");
    assert!(ready(&h, "llm"), "the step itself loaded");
    assert!(!ready(&h, "chat"));
    Ok(())
}
