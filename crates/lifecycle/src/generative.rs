//! Loading one version of a generative model (a version directory in ONNX Runtime GenAI's
//! layout): the config completed as a decoupled model with the engine's inputs and outputs,
//! the engine settings from its `parameters`, and the engine started by the
//! [`GenerativeFactory`](tern_backend::GenerativeFactory) the node gave. Runs on a blocking
//! thread, like [`crate::loader::load_version`]; never panics on what a file says.

use std::collections::HashMap;

use tern_backend::GenerativeLoad;
use tern_proto::inference::ModelConfig;
use tern_repository::ModelSource;

use crate::loader::{LoadOptions, LoadedModel};

/// Loads `version` of generative model `source` with `given` (config.pbtxt or an override).
pub(crate) fn load_generative_version(
    source: &ModelSource,
    given: Option<ModelConfig>,
    v: u64,
    options: &LoadOptions,
    runtime: &tokio::runtime::Handle,
) -> Result<LoadedModel, String> {
    let name = source.name.clone();
    let span = tracing::info_span!("load", model = %name, version = v, generative = true);
    let _enter = span.enter();
    if let Some(config) = &given {
        tern_repository::check_bounds(&name, config).map_err(|e| e.to_string())?;
    }
    let config = tern_repository::auto_complete_generative(&name, given, options.strict_model_config)
        .map_err(|e| e.to_string())?;
    let parameters = tern_repository::generative_parameters(&config).map_err(|e| e.to_string())?;
    let dir = source.dir.join(v.to_string());
    if !tern_repository::is_generative_version(&dir) {
        return Err(format!(
            "model '{name}' version {v}: {} not found (a generative model's version directory holds \
             ONNX Runtime GenAI's folder: {}, model.onnx, tokenizer.json)",
            dir.join(tern_repository::GENAI_CONFIG_FILENAME).display(),
            tern_repository::GENAI_CONFIG_FILENAME
        ));
    }
    let started = std::time::Instant::now();
    let bytes = crate::loader::version_dir_bytes(&dir.join("model.onnx"));
    tracing::info!(version = v, dir = %dir.display(), bytes, size = %crate::loader::human_bytes(bytes), "loading");
    let mut config = config;
    tern_repository::complete_chat_parameters(&name, &mut config, &dir).map_err(|e| e.to_string())?;
    let Some(factory) = &options.generative else {
        return Err(format!("model '{name}' version {v}: this server has no generation engine"));
    };
    let load = GenerativeLoad {
        target: options.target(source, v, false),
        dir,
        max_batch: parameters.max_batch,
        kv_cache_bytes: parameters.kv_cache_bytes,
        max_queue: parameters.max_queue,
        intra_op_threads: parameters.intra_op_threads,
        intra_op_spinning: parameters.intra_op_spinning,
        gpu: parameters.gpu,
    };
    let engine = factory.load(&load).map_err(|e| format!("model '{name}' version {v}: {e}"))?;
    let io = crate::loader::model_io(&config, &HashMap::new())?;
    // The engine runs the model; its scheduler keeps the statistics and the drain.
    let scheduler = crate::loader::bookkeeping_scheduler(&name, v, &config, runtime)?;
    tracing::info!(
        version = v,
        max_batch = parameters.max_batch,
        kv_cache_bytes = parameters.kv_cache_bytes,
        max_queue = parameters.max_queue,
        gpu = ?parameters.gpu,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "loaded generative model"
    );
    Ok(LoadedModel {
        name,
        version: v,
        version_str: v.to_string(),
        memory_bytes: engine.memory_bytes(),
        config,
        io,
        scheduler,
        latency: std::sync::OnceLock::new(),
        generation_metrics: std::sync::OnceLock::new(),
        generative: Some(engine),
        ensemble: None,
    })
}
