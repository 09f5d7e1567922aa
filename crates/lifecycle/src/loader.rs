//! Loading one model version: its model file (decrypted when encrypted), the config completed
//! from the model's signature, the instances the runtime places and opens, warmup, and a
//! scheduler in front. Runs on a blocking thread; never panics on what a file says.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tern_backend::{BackendFactory, LoadTarget};
use tern_core::{IoSpec, ModelIo};
use tern_proto::inference::ModelConfig;
use tern_repository::ModelSource;
use tern_scheduler::{Scheduler, SchedulerConfig};

/// A model version that is loaded and serving.
pub struct LoadedModel {
    pub name: String,
    pub version: u64,
    pub version_str: String,
    /// The completed config (after auto-complete), as ModelConfig returns it.
    pub config: ModelConfig,
    pub io: ModelIo,
    /// Queues and batches requests for this version's instances; owns its statistics.
    pub scheduler: Scheduler,
    /// This version's latency histogram series, looked up once rather than per request.
    pub latency: std::sync::OnceLock<tern_telemetry::RequestLatency>,
    /// A generative model's token metrics, looked up once rather than per token.
    pub generation_metrics: std::sync::OnceLock<tern_telemetry::GenerationMetrics>,
    /// Memory estimate for placement: the model file (and files beside it in the version
    /// directory, such as external weights) times the number of instances holding a session.
    pub memory_bytes: u64,
    /// The engine of a generative model (decoupled: served over ModelStreamInfer); `None` for
    /// a model the scheduler's instances run.
    pub generative: Option<Arc<dyn tern_backend::GenerativeModel>>,
    /// An ensemble's steps (`platform: "ensemble"`): the node runs them through the composing
    /// models' schedulers; `None` for every other model.
    pub ensemble: Option<Arc<tern_repository::EnsembleGraph>>,
}

impl LoadedModel {
    /// Whether the model answers with zero or more responses per request (Triton's
    /// `model_transaction_policy { decoupled: true }`).
    pub fn decoupled(&self) -> bool {
        self.config.model_transaction_policy.as_ref().is_some_and(|p| p.decoupled)
    }
}

/// What a load needs besides the model itself.
#[derive(Clone)]
pub struct LoadOptions {
    pub strict_model_config: bool,
    /// Makes the instances of each version (the runtime: devices, threads, sessions).
    pub backend: Arc<dyn BackendFactory>,
    /// Decrypts `model.onnx.enc` files (`--model-key-file` / `TERN_MODEL_KEY`).
    pub model_key: Option<Arc<tern_crypto::ModelKey>>,
    /// The operator's repositories: a model directory inside one is trusted with runtime
    /// caches (an uploaded model's directory, written by a client, is not).
    pub model_repositories: Vec<PathBuf>,
    /// Starts the engines of generative models; `None`: such models fail to load, saying so.
    pub generative: Option<Arc<dyn tern_backend::GenerativeFactory>>,
    /// The node's response cache (`--cache-config local,size=N`), for models whose config has
    /// `response_cache { enable: true }`; `None`: no model is cached.
    pub response_cache: Option<Arc<tern_scheduler::ResponseCache>>,
    /// Quantiles of Triton's latency summaries (`--metrics-config summary_latencies=true`);
    /// `None`: no summaries.
    pub summary_quantiles: Option<Vec<f64>>,
}

impl LoadOptions {
    /// What the runtime is told about version `v` of `source`.
    pub(crate) fn target(&self, source: &ModelSource, v: u64, encrypted: bool) -> LoadTarget {
        // A scan names a repository's model `<repository>/<name>`; an upload lives elsewhere.
        let in_repository = self.model_repositories.iter().any(|r| r.join(&source.name) == source.dir);
        LoadTarget {
            model: source.name.clone(),
            version: v,
            trusted_dir: in_repository.then(|| source.dir.clone()),
            encrypted,
        }
    }
}

/// Loads `version` of the model in `source` with `config` (config.pbtxt or an override; `None`
/// for auto-complete from the model file).
pub fn load_version(
    source: &ModelSource,
    given: Option<ModelConfig>,
    v: u64,
    options: &LoadOptions,
    runtime: &tokio::runtime::Handle,
) -> Result<LoadedModel, String> {
    let name = source.name.clone();
    let span = tracing::info_span!("load", model = %name, version = v);
    let _enter = span.enter();
    let base = given.clone().unwrap_or_default();
    // Before any session exists (validate checks again after auto-complete).
    tern_repository::check_bounds(&name, &base).map_err(|e| e.to_string())?;
    let path = tern_repository::model_file_path(source, &base, v);
    let file = tern_repository::find_model_file(source, &base, v)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("model '{name}' version {v}: model file {} not found", path.display()))?;
    // Progress a person can follow: large models take a while to open (and to warm up).
    let started = std::time::Instant::now();
    let file_bytes = version_dir_bytes(file.path());
    tracing::info!(version = v, file = %file.path().display(), bytes = file_bytes, size = %human_bytes(file_bytes), "loading");
    let in_version = |e: tern_backend::BackendError| format!("model '{name}' version {v}: {e}");
    // The runtime checks what the config asks of it before anything is decrypted or opened.
    let target = options.target(source, v, matches!(file, tern_repository::ModelFile::Encrypted(_)));
    let mut loader = options.backend.begin(&target, &base).map_err(in_version)?;
    // Encrypted files are decrypted here, in memory, for the instances of this load only.
    let model = crate::encrypted::open_model(&file, options.model_key.as_deref(), &name, v)?;
    let opening = |e: tern_backend::BackendError| match &model {
        crate::encrypted::ModelBytes::File(_) => in_version(e),
        crate::encrypted::ModelBytes::Memory(_) => {
            format!("model '{name}' version {v}: {} (decrypted in memory): {e}", file.path().display())
        }
    };
    let signature = loader.signature(model.bytes()).map_err(opening)?;
    let mut config = tern_repository::auto_complete(&name, given, &signature, options.strict_model_config)
        .map_err(|e| e.to_string())?;
    tern_repository::validate(&config, &signature).map_err(|e| e.to_string())?;
    let labels = tern_repository::load_labels(&source.dir, &config).map_err(|e| e.to_string())?;
    let mut io = model_io(&config, &labels)?;
    // The config has no word for "UTF-8 only"; the backend's signature does.
    for spec in &mut io.inputs {
        spec.utf8 = signature.inputs.iter().any(|s| s.name == spec.name && s.utf8);
    }

    // The runtime places the instances; the config reports the groups as placed, as Triton does.
    let placement = loader.plan(&config).map_err(in_version)?;
    config.instance_group = placement.instance_groups;
    for instance in placement.instances.iter().filter(|i| i.fallback) {
        tracing::warn!(instance = %instance.label, "instance runs on a fallback device (--allow-cpu-fallback)");
    }
    let mut backends = loader.instances(placement.instances.len(), model.bytes()).map_err(opening)?;
    drop(loader);
    drop(model);
    crate::warmup::run_buckets(&config, &mut backends, v);
    crate::warmup::run(&config, &source.dir, &mut backends, &name, v)?;
    let count = backends.len();
    let placement: Vec<&str> = placement.instances.iter().map(|p| p.label.as_str()).collect();
    let mut scheduling = SchedulerConfig::from_model_config(&config);
    // Tern's `queue_delay: auto` (checked by validate above).
    scheduling.auto_delay_budget =
        tern_repository::auto_queue_delay_budget(&config).map_err(|e| e.to_string())?;
    let dynamic_batching = scheduling.dynamic;
    let scheduler = Scheduler::start(name.clone(), &format!("{name}-{v}"), scheduling, backends, runtime)
        .map_err(|e| format!("model '{name}': cannot start instance thread: {e}"))?;
    // Triton caches a model's responses only when the server has a cache as well
    // (core src/dynamic_batch_scheduler.cc: `ResponseCacheEnabled()` of the model and the
    // server); otherwise it serves the model uncached, as here.
    let wants_cache = config.response_cache.as_ref().is_some_and(|c| c.enable);
    let scheduler = match &options.response_cache {
        Some(cache) if wants_cache => scheduler.with_response_cache(cache.clone(), v),
        None if wants_cache => {
            tracing::warn!(
                "response_cache is enabled in the config but the node has no cache \
                 (--cache-config local,size=N): responses are not cached"
            );
            scheduler
        }
        _ => scheduler,
    };
    if let Some(quantiles) = &options.summary_quantiles {
        // As Triton's reporter, by the config's flag alone (core src/model.cc).
        scheduler.stats().enable_summaries(quantiles.clone(), wants_cache);
    }
    let response_cache = scheduler.response_cache_enabled();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(version = v, instances = count, placement = ?placement, dynamic_batching, response_cache, elapsed_ms, "loaded");
    let memory_bytes = file_bytes * count.max(1) as u64;
    Ok(LoadedModel {
        name: name.clone(),
        version: v,
        version_str: v.to_string(),
        config,
        io,
        scheduler,
        latency: std::sync::OnceLock::new(),
        generation_metrics: std::sync::OnceLock::new(),
        memory_bytes,
        generative: None,
        ensemble: None,
    })
}

type VersionResults = Vec<(u64, Result<LoadedModel, String>)>;

/// Loads every version `source`'s version policy selects, each on its own result.
pub(crate) fn load_versions(
    source: &ModelSource,
    override_config: Option<ModelConfig>,
    options: &LoadOptions,
    runtime: &tokio::runtime::Handle,
) -> Result<VersionResults, String> {
    let given = override_config.or_else(|| source.config.clone());
    let base = given.clone().unwrap_or_default();
    let versions = tern_repository::select_versions(source, &base);
    if tern_repository::is_generative(source, given.as_ref()) {
        if versions.is_empty() {
            return Err(format!(
                "model '{}': no version directory holds '{}'",
                source.name,
                tern_repository::GENAI_CONFIG_FILENAME
            ));
        }
        return Ok(versions
            .into_iter()
            .map(|v| {
                let loaded =
                    crate::generative::load_generative_version(source, given.clone(), v, options, runtime);
                (v, loaded)
            })
            .collect());
    }
    if versions.is_empty() {
        return Err(format!(
            "model '{}': no version directory holds '{}'",
            source.name,
            tern_repository::model_file_path(source, &base, 1)
                .file_name()
                .map_or_else(|| "model.onnx".to_string(), |f| f.to_string_lossy().into_owned())
        ));
    }
    Ok(versions.into_iter().map(|v| (v, load_version(source, given.clone(), v, options, runtime))).collect())
}

/// `bytes` for a log line: "512 B", "3.2 MiB", "1.4 GiB".
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Bytes of the files in the directory holding `model_file` (the model and its external
/// data), see [`dir_bytes`].
pub(crate) fn version_dir_bytes(model_file: &std::path::Path) -> u64 {
    model_file.parent().map_or(0, dir_bytes)
}

/// Bytes of the files in `dir` (one level: a version's model, external data, tokenizer). A
/// model's memory estimate: deterministic, unlike resident-memory growth, so placement can
/// rely on it.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

pub(crate) fn model_io(
    config: &ModelConfig,
    labels: &HashMap<String, Arc<Vec<String>>>,
) -> Result<ModelIo, String> {
    let dt = |name: &str, v: i32| {
        tern_core::DataType::from_config(v)
            .ok_or_else(|| format!("model '{}': tensor '{name}': invalid data_type {v}", config.name))
    };
    let inputs = config
        .input
        .iter()
        .map(|i| {
            Ok(IoSpec {
                name: i.name.clone(),
                datatype: dt(&i.name, i.data_type)?,
                dims: i.dims.clone(),
                reshape: i.reshape.as_ref().map(|r| r.shape.clone()),
                optional: i.optional,
                labels: None,
                utf8: false,
            })
        })
        .collect::<Result<_, String>>()?;
    let outputs = config
        .output
        .iter()
        .map(|o| {
            Ok(IoSpec {
                name: o.name.clone(),
                datatype: dt(&o.name, o.data_type)?,
                dims: o.dims.clone(),
                reshape: o.reshape.as_ref().map(|r| r.shape.clone()),
                optional: false,
                labels: labels.get(&o.name).cloned(),
                utf8: false,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(ModelIo {
        model: config.name.clone(),
        max_batch_size: u32::try_from(config.max_batch_size).unwrap_or(0),
        inputs,
        outputs,
    })
}

/// A scheduler with no instance threads, for a version something else runs (a generative
/// model's engine, an ensemble's steps): it keeps the version's statistics (ModelStatistics)
/// and the drain's bookkeeping the same as for other models.
pub(crate) fn bookkeeping_scheduler(
    name: &str,
    v: u64,
    config: &ModelConfig,
    runtime: &tokio::runtime::Handle,
) -> Result<Scheduler, String> {
    Scheduler::start(
        name.to_owned(),
        &format!("{name}-{v}"),
        SchedulerConfig::from_model_config(config),
        Vec::new(),
        runtime,
    )
    .map_err(|e| format!("model '{name}': cannot start its scheduler: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &str) -> ModelSource {
        ModelSource { name: "m".into(), dir: PathBuf::from(dir), config: None, versions: vec![1] }
    }

    #[test]
    fn sizes_in_load_logs_read_as_a_person_would_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(98 * 1024 * 1024), "98.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn only_a_repository_model_directory_is_trusted_with_runtime_caches() {
        let options = LoadOptions {
            strict_model_config: false,
            backend: Arc::new(crate::tests::fake::FakeFactory::default()),
            model_key: None,
            model_repositories: vec![PathBuf::from("/models"), PathBuf::from("/more")],
            generative: None,
            response_cache: None,
            summary_quantiles: None,
        };
        let target = options.target(&source("/more/m"), 3, true);
        assert_eq!(target.trusted_dir, Some(PathBuf::from("/more/m")));
        assert_eq!((target.model.as_str(), target.version, target.encrypted), ("m", 3, true));
        // An upload lives in a temporary directory the client filled: not trusted.
        assert_eq!(options.target(&source("/tmp/tern-upload-x/m"), 1, false).trusted_dir, None);
        assert_eq!(options.target(&source("/models/m/1"), 1, false).trusted_dir, None);
    }
}
