//! The model table: which models exist, which version of each is loaded, and why a model that
//! is not ready is not. Requests read the table without locking (`ArcSwap`).
//!
//! At this stage every model is loaded once at start, highest version only; versions, reload
//! and control modes come with the lifecycle work.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tern_backend::Instance;
use tern_core::{IoSpec, ModelIo, RequestError};
use tern_proto::inference::ModelConfig;
use tern_repository::{ModelSource, ScannedModel};
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
}

/// Where a model stands.
#[derive(Clone)]
pub enum ModelState {
    Ready(Arc<LoadedModel>),
    /// Failed to load; the reason is logged and shown by RepositoryIndex.
    Unavailable {
        version: Option<u64>,
        reason: String,
    },
}

/// Every model the repositories hold, by name.
pub struct ModelManager {
    table: ArcSwap<HashMap<String, ModelState>>,
}

/// What a load needs besides the model itself.
#[derive(Clone)]
pub struct LoadOptions {
    pub strict_model_config: bool,
    /// Load KIND_GPU instances on the CPU when no GPU can take them (with a warning).
    pub allow_cpu_fallback: bool,
}

/// Triton's default instance count for ONNX Runtime models on CPU.
const DEFAULT_CPU_INSTANCES: usize = 2;

impl ModelManager {
    /// Scans the repositories and loads every model, `parallel` at a time. A model that fails is
    /// recorded as unavailable with its reason; it never fails the node.
    pub async fn load_all(
        repositories: &[PathBuf],
        options: LoadOptions,
        parallel: usize,
    ) -> Result<ModelManager, String> {
        let scanned = tern_repository::scan(repositories).map_err(|e| e.to_string())?;
        let limit = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let mut tasks = Vec::new();
        for item in scanned {
            let options = options.clone();
            let limit = limit.clone();
            let runtime = tokio::runtime::Handle::current();
            tasks.push(tokio::spawn(async move {
                let _permit = limit.acquire_owned().await;
                match item {
                    ScannedModel::Found(source) => {
                        let name = source.name.clone();
                        let state =
                            tokio::task::spawn_blocking(move || load_model(source, &options, &runtime))
                                .await
                                .unwrap_or_else(|e| ModelState::Unavailable {
                                    version: None,
                                    reason: format!("loading panicked: {e}"),
                                });
                        (name, state)
                    }
                    ScannedModel::Failed { name, error } => {
                        (name, ModelState::Unavailable { version: None, reason: error.to_string() })
                    }
                }
            }));
        }
        let mut table = HashMap::new();
        for task in tasks {
            let (name, state) = task.await.map_err(|e| format!("model load task failed: {e}"))?;
            match &state {
                ModelState::Ready(m) => tracing::info!(model = %name, version = m.version, "model ready"),
                ModelState::Unavailable { reason, .. } => {
                    tracing::error!(model = %name, %reason, "model failed to load")
                }
            }
            table.insert(name, state);
        }
        Ok(ModelManager { table: ArcSwap::from_pointee(table) })
    }

    /// The model to serve for `name` and `version` ("" = the server's choice).
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<LoadedModel>, RequestError> {
        if !version.is_empty() && !version.parse::<i64>().is_ok_and(|v| v > 0) {
            return Err(RequestError::InvalidArgument(format!(
                "failed to get model version from specified version string '{version}', version should be an integral value > 0"
            )));
        }
        let table = self.table.load();
        let Some(state) = table.get(name) else {
            return Err(RequestError::NotFound(format!("Request for unknown model: '{name}' is not found")));
        };
        match state {
            ModelState::Ready(model) => {
                if version.is_empty() || version == model.version_str {
                    Ok(model.clone())
                } else {
                    Err(RequestError::NotFound(format!(
                        "Request for unknown model: '{name}' version {version} is not found"
                    )))
                }
            }
            ModelState::Unavailable { .. } => Err(RequestError::NotFound(format!(
                "Request for unknown model: '{name}' has no available versions"
            ))),
        }
    }

    pub fn all_ready(&self) -> bool {
        self.table.load().values().all(|s| matches!(s, ModelState::Ready(_)))
    }

    /// Snapshot of every model and its state, sorted by name.
    pub fn index(&self) -> Vec<(String, ModelState)> {
        let mut all: Vec<(String, ModelState)> =
            self.table.load().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Drops every model: their instance threads finish queued work and end.
    pub fn clear(&self) {
        self.table.store(Arc::new(HashMap::new()));
    }
}

fn load_model(source: ModelSource, options: &LoadOptions, runtime: &tokio::runtime::Handle) -> ModelState {
    let name = source.name.clone();
    let span = tracing::info_span!("load", model = %name);
    let _enter = span.enter();
    let mut version = None;
    let result = (|| -> Result<LoadedModel, String> {
        let given = source.config.clone();
        let base = given.clone().unwrap_or_default();
        let v = tern_repository::highest_version(&source, &base).ok_or_else(|| {
            format!(
                "model '{name}': no version directory holds '{}'",
                if base.default_model_filename.is_empty() {
                    "model.onnx"
                } else {
                    &base.default_model_filename
                }
            )
        })?;
        version = Some(v);
        let path = tern_repository::model_file_path(&source, &base, v);
        let base_settings =
            tern_backend_ort::session_settings(&base).map_err(|e| format!("model '{name}': {e}"))?;
        // The first session reads the model's signature for auto-complete; it is kept as the
        // first instance when the plan puts that instance on the CPU with the same settings.
        let threads_given = base_settings.intra_op_threads.is_some();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let load = |settings: &tern_backend_ort::SessionSettings| {
            tern_backend_ort::OrtBackend::load(&path, settings).map_err(|e| format!("model '{name}': {e}"))
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
            .map_err(|e| format!("model '{name}': {e}"))?;
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
        let count = backends.len();
        let placement: Vec<&str> = plans.iter().map(|p| p.label.as_str()).collect();
        let instance = Instance::spawn_group(format!("{name}-{v}"), backends, 1024)
            .map_err(|e| format!("model '{name}': cannot start instance thread: {e}"))?;
        let scheduling = SchedulerConfig::from_model_config(&config);
        tracing::info!(
            version = v,
            instances = count,
            placement = ?placement,
            dynamic_batching = scheduling.dynamic,
            "loaded"
        );
        let scheduler = Scheduler::start(name.clone(), scheduling, instance, runtime);
        Ok(LoadedModel { name: name.clone(), version: v, version_str: v.to_string(), config, io, scheduler })
    })();
    match result {
        Ok(model) => ModelState::Ready(Arc::new(model)),
        Err(reason) => ModelState::Unavailable { version, reason },
    }
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
