//! Loading one model version: ONNX Runtime sessions for its instances, the config completed
//! from the model file, and a scheduler in front. Runs on a blocking thread; never panics on
//! what a file says.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tern_core::{DataType, IoSpec, ModelIo, Tensor};
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
    /// Memory estimate for placement: the model file (and files beside it in the version
    /// directory, such as external weights) times the number of instances holding a session.
    pub memory_bytes: u64,
}

/// What a load needs besides the model itself.
#[derive(Clone)]
pub struct LoadOptions {
    pub strict_model_config: bool,
    /// Load KIND_GPU instances on the CPU when no GPU can take them (with a warning).
    pub allow_cpu_fallback: bool,
    /// Decrypts `model.onnx.enc` files (`--model-key-file` / `TERN_MODEL_KEY`).
    pub model_key: Option<Arc<tern_crypto::ModelKey>>,
    /// `--accelerator-cache-dir`: where TensorRT caches may be written.
    pub accelerator_cache_dir: Option<PathBuf>,
    /// The operator's repositories: a model directory inside one may hold accelerator caches
    /// (an uploaded model's directory, written by a client, may not).
    pub model_repositories: Vec<PathBuf>,
}

impl LoadOptions {
    /// What `source`'s execution accelerator parameters may touch.
    fn accelerator_scope(&self, source: &ModelSource, encrypted: bool) -> tern_backend_ort::AcceleratorScope {
        // A scan names a repository's model `<repository>/<name>`; an upload lives elsewhere.
        let in_repository = self.model_repositories.iter().any(|r| r.join(&source.name) == source.dir);
        tern_backend_ort::AcceleratorScope {
            model: source.name.clone(),
            model_dir: in_repository.then(|| source.dir.clone()),
            cache_dir: self.accelerator_cache_dir.clone(),
            encrypted,
        }
    }
}

/// Triton's default instance count for ONNX Runtime models on CPU.
const DEFAULT_CPU_INSTANCES: usize = 2;

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
    // Accelerator parameters reach native code (ORT's providers): checked before anything
    // is decrypted or any session is made, on every node whether it has a GPU or not.
    let scope = options.accelerator_scope(source, matches!(file, tern_repository::ModelFile::Encrypted(_)));
    let base_settings = tern_backend_ort::session_settings_for(&base, &scope)
        .map_err(|e| format!("model '{name}' version {v}: {e}"))?;
    // Encrypted files are decrypted here, in memory, for the sessions of this load only.
    let model = crate::encrypted::open_model(&file, options.model_key.as_deref(), &name, v)?;
    {
        // The first session reads the model's signature for auto-complete; it is kept as the
        // first instance when the plan puts that instance on the CPU with the same settings.
        let threads_given = base_settings.intra_op_threads.is_some();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let load = |settings: &tern_backend_ort::SessionSettings| match &model {
            crate::encrypted::ModelBytes::File(path) => tern_backend_ort::OrtBackend::load(path, settings)
                .map_err(|e| format!("model '{name}' version {v}: {e}")),
            crate::encrypted::ModelBytes::Memory(bytes) => {
                tern_backend_ort::OrtBackend::load_from_memory(bytes, settings).map_err(|e| {
                    format!(
                        "model '{name}' version {v}: {} (decrypted in memory): {e}",
                        file.path().display()
                    )
                })
            }
        };
        let mut probe_settings = base_settings.clone();
        if !threads_given {
            let guess =
                if base.instance_group.is_empty() { DEFAULT_CPU_INSTANCES } else { instance_count(&base) };
            probe_settings.intra_op_threads = Some((cores / guess).max(1));
        }
        let first = load(&probe_settings)?;
        let signature = first.signature();
        let mut config =
            tern_repository::auto_complete(&name, given, &signature, options.strict_model_config)
                .map_err(|e| e.to_string())?;
        tern_repository::validate(&config, &signature).map_err(|e| e.to_string())?;
        let labels = tern_repository::load_labels(&source.dir, &config).map_err(|e| e.to_string())?;
        let io = model_io(&config, &labels)?;

        // Place the instances (CPU, or GPUs through the CUDA / TensorRT providers), then report
        // the groups as placed, as Triton does. Unless the config sets intra-op threads, the
        // cores are divided among the CPU instances so they do not oversubscribe the machine.
        let mut plans = tern_backend_ort::instance_plan(&config, &base_settings, options.allow_cpu_fallback)
            .map_err(|e| format!("model '{name}' version {v}: {e}"))?;
        config.instance_group = tern_backend_ort::placed_instance_groups(&config, &plans);
        let cpu_instances = plans.iter().filter(|p| p.device == tern_backend_ort::Device::Cpu).count();
        if !threads_given && cpu_instances > 0 {
            for plan in plans.iter_mut().filter(|p| p.device == tern_backend_ort::Device::Cpu) {
                plan.settings.intra_op_threads = Some((cores / cpu_instances).max(1));
            }
        }
        let mut first = Some(first);
        let mut backends: Vec<Box<dyn tern_backend::Backend>> = Vec::with_capacity(plans.len());
        for plan in &plans {
            if plan.fallback {
                tracing::warn!(instance = %plan.label, "instance runs on a fallback device (--allow-cpu-fallback)");
            }
            let backend = match first.take_if(|_| plan.settings == probe_settings) {
                Some(b) => b,
                None => load(&plan.settings)?,
            };
            backends.push(Box::new(backend));
        }
        drop(first);
        // model_warmup: every instance runs the samples before the version is READY. One
        // sample's tensors exist at a time. What a request naming no output runs: the config's
        // outputs, not every model output.
        let outputs: Vec<String> = config.output.iter().map(|o| o.name.clone()).collect();
        for warmup in &config.model_warmup {
            let inputs = warmup_sample(&config, &source.dir, warmup)?;
            for backend in &mut backends {
                for _ in 0..warmup.count.max(1) {
                    backend.infer(inputs.clone(), &outputs).map_err(|e| {
                        format!("model '{name}' version {v}: warmup '{}' failed: {e}", warmup.name)
                    })?;
                }
            }
        }
        if !config.model_warmup.is_empty() {
            tracing::info!(version = v, samples = config.model_warmup.len(), "warmup done");
        }
        let count = backends.len();
        let placement: Vec<&str> = plans.iter().map(|p| p.label.as_str()).collect();
        let scheduling = SchedulerConfig::from_model_config(&config);
        let dynamic_batching = scheduling.dynamic;
        let scheduler = Scheduler::start(name.clone(), &format!("{name}-{v}"), scheduling, backends, runtime)
            .map_err(|e| format!("model '{name}': cannot start instance thread: {e}"))?;
        tracing::info!(version = v, instances = count, placement = ?placement, dynamic_batching, "loaded");
        let memory_bytes = version_dir_bytes(file.path()) * plans.len().max(1) as u64;
        Ok(LoadedModel {
            name: name.clone(),
            version: v,
            version_str: v.to_string(),
            config,
            io,
            scheduler,
            latency: std::sync::OnceLock::new(),
            memory_bytes,
        })
    }
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

/// Bytes of the files in the directory holding `model_file` (one level: the model and its
/// external data). Deterministic, unlike resident-memory growth, so placement can rely on it.
fn version_dir_bytes(model_file: &std::path::Path) -> u64 {
    let Some(dir) = model_file.parent() else { return 0 };
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Bytes of one warmup sample's inputs, all together, at most.
const MAX_WARMUP_SAMPLE_BYTES: usize = 512 << 20;

/// The inputs of one `model_warmup` sample: zeros, random values, or a file from the model's
/// `warmup/` directory (Triton's layout), with the batch dimension when the model batches.
fn warmup_sample(
    config: &ModelConfig,
    dir: &std::path::Path,
    w: &tern_proto::inference::ModelWarmup,
) -> Result<Vec<Tensor>, String> {
    use tern_proto::inference::model_warmup::input::InputDataType;
    let model = &config.name;
    let mut total = 0usize;
    let mut inputs = Vec::new();
    for (name, input) in &w.inputs {
        let datatype = DataType::from_config(input.data_type).ok_or_else(|| {
            format!("model '{model}': warmup '{}': input '{name}' has no valid data_type", w.name)
        })?;
        let mut shape = input.dims.clone();
        if config.max_batch_size > 0 {
            shape.insert(0, i64::from(w.batch_size.max(1)));
        }
        let elements =
            tern_core::request::element_count(&shape).filter(|&n| n <= 1 << 28).ok_or_else(|| {
                format!("model '{model}': warmup '{}': input '{name}' has an invalid shape", w.name)
            })? as usize;
        // Checked before anything is allocated or read (BYTES elements take 8 bytes here).
        let bytes = match &input.input_data_type {
            Some(InputDataType::InputDataFile(file)) => {
                if tern_repository::validate_model_name(file).is_err() {
                    return Err(format!("model '{model}': warmup file '{file}' must be a plain file name"));
                }
                std::fs::metadata(dir.join("warmup").join(file))
                    .map_or(0, |m| usize::try_from(m.len()).unwrap_or(usize::MAX))
            }
            _ => elements.saturating_mul(datatype.element_size().unwrap_or(8)),
        };
        total = total.saturating_add(bytes);
        if total > MAX_WARMUP_SAMPLE_BYTES {
            return Err(format!(
                "model '{model}': warmup '{}': its inputs take over {} MiB, the limit for one sample",
                w.name,
                MAX_WARMUP_SAMPLE_BYTES >> 20
            ));
        }
        let data: Vec<u8> = match (&input.input_data_type, datatype.element_size()) {
            (Some(InputDataType::InputDataFile(file)), _) => std::fs::read(dir.join("warmup").join(file))
                .map_err(|e| format!("model '{model}': warmup file '{file}': {e}"))?,
            // BYTES: each element an empty string (zeros) or 4 random bytes.
            (Some(InputDataType::RandomData(true)), None) => (0..elements)
                .flat_map(|i| [4u8, 0, 0, 0].into_iter().chain((i as u32).to_le_bytes()))
                .collect(),
            (_, None) => vec![0u8; elements * 4],
            (Some(InputDataType::RandomData(true)), Some(size)) if datatype == DataType::Fp32 => {
                // Random but finite: floats in [0, 1) from a small LCG.
                let mut x = 0x2545_f491u32;
                let _ = size;
                (0..elements)
                    .flat_map(|_| {
                        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        ((x >> 8) as f32 / (1u32 << 24) as f32).to_le_bytes()
                    })
                    .collect()
            }
            (_, Some(size)) => vec![0u8; elements * size],
        };
        inputs.push(Tensor { name: name.clone(), datatype, shape, data: bytes::Bytes::from(data) });
    }
    Ok(inputs)
}

/// Instances the config asks for (every group's count; at least one).
fn instance_count(config: &ModelConfig) -> usize {
    let n: i64 = config.instance_group.iter().map(|g| i64::from(g.count.max(1))).sum();
    usize::try_from(n).unwrap_or(1).clamp(1, 64)
}

fn model_io(config: &ModelConfig, labels: &HashMap<String, Arc<Vec<String>>>) -> Result<ModelIo, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &str) -> ModelSource {
        ModelSource { name: "m".into(), dir: PathBuf::from(dir), config: None, versions: vec![1] }
    }

    #[test]
    fn only_a_repository_model_directory_may_hold_accelerator_caches() {
        let options = LoadOptions {
            strict_model_config: false,
            allow_cpu_fallback: false,
            model_key: None,
            accelerator_cache_dir: Some(PathBuf::from("/var/cache/tern")),
            model_repositories: vec![PathBuf::from("/models"), PathBuf::from("/more")],
        };
        let scope = options.accelerator_scope(&source("/more/m"), true);
        assert_eq!(scope.model_dir, Some(PathBuf::from("/more/m")));
        assert_eq!((scope.model.as_str(), scope.encrypted), ("m", true));
        assert_eq!(scope.cache_dir, Some(PathBuf::from("/var/cache/tern")));
        // An upload lives in a temporary directory the client filled: not a root.
        assert_eq!(options.accelerator_scope(&source("/tmp/tern-upload-x/m"), false).model_dir, None);
        assert_eq!(options.accelerator_scope(&source("/models/m/1"), false).model_dir, None);
    }
}
