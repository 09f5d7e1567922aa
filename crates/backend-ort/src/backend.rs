//! [`OrtBackend`]: one ORT session behind the [`Backend`] trait.

use std::borrow::Cow;
use std::path::Path;

use ort::environment::Environment;
use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider};
use ort::session::builder::SessionBuilder;
use ort::session::{OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::{Outlet, ValueType};
use tern_backend::{Backend, BackendError};
use tern_core::{ModelSignature, Tensor, TensorSpec};

use crate::accelerators::Device;
use crate::binding::{Bindings, GRAPH_ID_KEY, gpu_run_guard};
use crate::convert::{PreparedInput, datatype_of, output_tensor, run_error};
use crate::model_cache::{self, CacheEntry, CacheUse};
use crate::settings::SessionSettings;
use crate::{OrtBackendError, ffi, runtime};

pub(crate) const ARENA_SHRINKAGE_KEY: &str = "memory.enable_memory_arena_shrinkage";

/// One loaded ONNX model: an ORT session and the signature read from it. `infer` takes
/// `&mut self` because ORT's `Run` is not safe to call concurrently on one session: give each
/// instance thread its own `OrtBackend`.
pub struct OrtBackend {
    session: Session,
    signature: ModelSignature,
    arena_shrinkage: Option<String>,
    /// Batch sizes batches are padded to ([`Backend::batch_buckets`]); empty: none.
    batch_buckets: Vec<u32>,
    device: Device,
    /// ORT's CUDA provider was created with CUDA graphs on ([`SessionSettings::uses_cuda_graphs`]).
    graphs: bool,
    /// Runs at a bucket's size go through these ([`OrtBackend::with_io_binding`]).
    binding: Option<Bindings>,
}

impl std::fmt::Debug for OrtBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtBackend").field("signature", &self.signature).finish_non_exhaustive()
    }
}

impl OrtBackend {
    /// Loads the `.onnx` file at `path` (external data files are found beside it). Loads the
    /// runtime from `ORT_DYLIB_PATH` if [`crate::init_runtime`] has not been called.
    pub fn load(path: &Path, settings: &SessionSettings) -> Result<OrtBackend, OrtBackendError> {
        if !path.is_file() {
            return Err(OrtBackendError::ModelNotFound { path: path.to_path_buf() });
        }
        let model = path.display().to_string();
        let environment = runtime::environment()?;
        let mut builder = configure(environment, settings, &model)?;
        let session = announce_engine_build(settings, &model, || builder.commit_from_file(path))
            .map_err(|e| OrtBackendError::ModelLoad { model: model.clone(), message: e.to_string() })?;
        OrtBackend::new(session, settings, &model)
    }

    /// [`OrtBackend::load`] through the optimized-model cache's `entry` (see
    /// [`crate::model_cache`]): the cached graph when there is one, else the model optimized
    /// and its graph saved.
    pub fn load_cached(
        path: &Path,
        settings: &SessionSettings,
        entry: &CacheEntry,
    ) -> Result<(OrtBackend, CacheUse), OrtBackendError> {
        if !path.is_file() {
            return Err(OrtBackendError::ModelNotFound { path: path.to_path_buf() });
        }
        let model = path.display().to_string();
        runtime::environment()?;
        let builder = model_cache::builder_for(settings, &model);
        let (session, used) = model_cache::commit(path, entry, &builder)
            .map_err(|e| OrtBackendError::ModelLoad { model: model.clone(), message: e.to_string() })?;
        Ok((OrtBackend::new(session, settings, &model)?, used))
    }

    /// Loads a model from its bytes (e.g. after decrypting it). ORT copies what it needs, so
    /// `bytes` may be dropped afterwards. Models with external data files cannot load this way.
    pub fn load_from_memory(bytes: &[u8], settings: &SessionSettings) -> Result<OrtBackend, OrtBackendError> {
        let model = "<memory>";
        let environment = runtime::environment()?;
        let mut builder = configure(environment, settings, model)?;
        let session = announce_engine_build(settings, model, || builder.commit_from_memory(bytes))
            .map_err(|e| OrtBackendError::ModelLoad { model: model.to_string(), message: e.to_string() })?;
        OrtBackend::new(session, settings, model)
    }

    fn new(session: Session, settings: &SessionSettings, model: &str) -> Result<OrtBackend, OrtBackendError> {
        let signature = ModelSignature {
            inputs: session.inputs().iter().map(|o| spec("input", o)).collect::<Result<_, _>>()?,
            outputs: session.outputs().iter().map(|o| spec("output", o)).collect::<Result<_, _>>()?,
        };
        tracing::debug!(model, ?signature, "loaded ONNX model");
        Ok(OrtBackend {
            session,
            signature,
            arena_shrinkage: settings.arena_shrinkage.clone(),
            batch_buckets: Vec::new(),
            device: settings.device,
            graphs: settings.uses_cuda_graphs(),
            binding: None,
        })
    }

    /// Pads batches up to `buckets` (ascending; see [`tern_backend::batch::bucket_sizes`]).
    pub fn with_batch_buckets(mut self, buckets: Vec<u32>) -> OrtBackend {
        self.batch_buckets = buckets;
        self
    }

    /// Runs batches at a bucket's size through an IO binding with buffers reused between runs
    /// (see the `binding` module) when `on`, or when the session captures CUDA graphs (which need
    /// it). Call after [`OrtBackend::with_batch_buckets`]. A model that cannot be bound (strings,
    /// dims other than the batch that vary, no buckets) runs as before, and the reason is logged.
    pub fn with_io_binding(mut self, on: bool) -> OrtBackend {
        if !on && !self.graphs {
            self.binding = None;
            return self;
        }
        let arena = self.arena_shrinkage.clone();
        match Bindings::new(
            &self.session,
            &self.signature,
            self.device,
            self.graphs,
            &self.batch_buckets,
            arena,
        ) {
            Ok(b) => self.binding = Some(b),
            Err(reason) if self.graphs => {
                tracing::warn!(device = %self.device, reason, "CUDA graphs asked for (optimization.cuda.graphs) but not used: batches run without an IO binding");
            }
            Err(reason) => {
                tracing::info!(device = %self.device, reason, "io_binding: batches run without an IO binding")
            }
        }
        self
    }

    /// Whether batches at a bucket's size run through an IO binding.
    pub fn io_binding(&self) -> bool {
        self.binding.is_some()
    }

    /// The model's inputs and outputs, in the file's order; -1 for symbolic or unknown dims.
    pub fn signature(&self) -> ModelSignature {
        self.signature.clone()
    }

    /// Validates names and datatypes against the model and prepares each payload.
    fn prepare_inputs(&self, inputs: Vec<Tensor>) -> Result<Vec<PreparedInput>, BackendError> {
        let model_inputs = &self.signature.inputs;
        let mut seen = vec![false; model_inputs.len()];
        let mut prepared = Vec::with_capacity(inputs.len());
        for tensor in inputs {
            let Some(index) = model_inputs.iter().position(|s| s.name == tensor.name) else {
                return Err(BackendError::InvalidInput(format!(
                    "unexpected inference input '{}', the model's inputs are {}",
                    tensor.name,
                    names(model_inputs.iter().map(|s| s.name.as_str())),
                )));
            };
            let spec = &model_inputs[index];
            if std::mem::replace(&mut seen[index], true) {
                return Err(BackendError::InvalidInput(format!(
                    "input '{}' was given more than once",
                    tensor.name
                )));
            }
            if tensor.datatype != spec.datatype {
                return Err(BackendError::InvalidInput(format!(
                    "inference input '{}' data-type is '{}', but the model expects '{}'",
                    tensor.name, tensor.datatype, spec.datatype
                )));
            }
            prepared.push(PreparedInput::new(tensor)?);
        }
        if seen.iter().any(|s| !s) {
            let missing = model_inputs.iter().zip(&seen).filter(|(_, s)| !**s).map(|(m, _)| m.name.as_str());
            return Err(BackendError::InvalidInput(format!(
                "missing required input(s) {}; got input(s) {}",
                names(missing),
                names(prepared.iter().map(|p| p.name.as_str())),
            )));
        }
        Ok(prepared)
    }

    /// The outputs to compute: all (in model order) when none are named; else the named ones,
    /// each once, in the order first named.
    fn selected_outputs<'a>(&'a self, requested: &'a [String]) -> Result<Vec<&'a str>, BackendError> {
        let model_outputs = &self.signature.outputs;
        if requested.is_empty() {
            return Ok(model_outputs.iter().map(|s| s.name.as_str()).collect());
        }
        let mut selected: Vec<&str> = Vec::with_capacity(requested.len());
        for name in requested {
            if !model_outputs.iter().any(|s| &s.name == name) {
                return Err(BackendError::InvalidInput(format!(
                    "unexpected inference output '{name}', the model's outputs are {}",
                    names(model_outputs.iter().map(|s| s.name.as_str())),
                )));
            }
            if !selected.contains(&name.as_str()) {
                selected.push(name);
            }
        }
        Ok(selected)
    }
}

impl Backend for OrtBackend {
    fn batch_buckets(&self) -> &[u32] {
        &self.batch_buckets
    }

    fn infer(&mut self, inputs: Vec<Tensor>, outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
        let prepared = self.prepare_inputs(inputs)?;
        let selected: Vec<String> = self.selected_outputs(outputs)?.into_iter().map(str::to_string).collect();
        if let Some(binding) = &mut self.binding
            && let Some(slot) = binding.bucket_of(&prepared)
        {
            let produced = binding.run(&mut self.session, slot, &prepared, &selected)?;
            return answer(outputs, produced);
        }

        let run_inputs = prepared
            .iter()
            .map(|p| Ok((Cow::Borrowed(p.name.as_str()), p.value()?)))
            .collect::<Result<Vec<(Cow<'_, str>, SessionInputValue<'_>)>, BackendError>>()?;
        let mut options = RunOptions::new().map_err(run_error)?;
        if let Some(devices) = &self.arena_shrinkage {
            options.set(ARENA_SHRINKAGE_KEY, devices).map_err(run_error)?;
        }
        if self.graphs {
            // Not at a bucket's buffers: no graph may be captured or replayed for this run.
            options.set(GRAPH_ID_KEY, "-1").map_err(run_error)?;
        }
        let selector = selected.iter().fold(OutputSelector::no_default(), |s, name| s.with(name.as_str()));
        let options = options.with_outputs(selector);

        let session_inner = self.session.inner();
        // Shared with other GPU runs, never during a CUDA graph capture (see the `binding` module).
        let guard = matches!(self.device, Device::Cuda { .. }).then(|| gpu_run_guard(false));
        let mut results = self.session.run_with_options(run_inputs, &options).map_err(run_error)?;
        drop(guard);
        let lent: Vec<_> = prepared.iter().filter_map(PreparedInput::lent).collect();
        let mut produced = Vec::with_capacity(selected.len());
        for name in &selected {
            let value = results
                .remove(name.as_str())
                .ok_or_else(|| BackendError::Execution(format!("ORT did not return output '{name}'")))?;
            produced.push(output_tensor(name, value, &lent, &session_inner)?);
        }
        answer(outputs, produced)
    }
}

/// The outputs a request named, in its order, from those `produced` (each named output once).
fn answer(outputs: &[String], produced: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
    if outputs.is_empty() || outputs.len() == produced.len() {
        return Ok(produced);
    }
    // Some output was named more than once: answer each mention (cheap `Bytes` clones).
    outputs
        .iter()
        .map(|name| {
            produced
                .iter()
                .find(|t| &t.name == name)
                .cloned()
                .ok_or_else(|| BackendError::Execution(format!("ORT did not return output '{name}'")))
        })
        .collect()
}

/// A session builder for `environment` with `settings` applied: session options, then the
/// execution providers for `settings.device`.
pub(crate) fn configure(
    environment: &Environment,
    settings: &SessionSettings,
    model: &str,
) -> Result<SessionBuilder, OrtBackendError> {
    let mut builder = session_options(environment, settings)
        .map_err(|e| OrtBackendError::ModelLoad { model: model.to_string(), message: e.to_string() })?;
    for library in &settings.op_libraries {
        // ORT dlopens the file and calls its RegisterCustomOps (Triton's model_operations).
        builder = builder.with_operator_library(library).map_err(|e| OrtBackendError::OpLibrary {
            model: model.to_string(),
            file: library.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    if let Device::Cuda { device_id } = settings.device {
        let device = settings.device;
        // Registration order is priority order: TensorRT takes what it can, CUDA the rest, and
        // ORT's CPU provider (always there) what neither supports. `error_on_failure`: a
        // provider that cannot load fails the load instead of leaving a silent CPU session.
        if let Some(trt) = &settings.gpu.tensorrt {
            let provider = trt
                .ort_options(device_id)
                .into_iter()
                .fold(ep::TensorRT::default(), |p, (k, v)| p.with_arbitrary_config(k, v));
            builder =
                builder.with_execution_providers([provider.build().error_on_failure()]).map_err(|e| {
                    OrtBackendError::Provider {
                        provider: "TensorRT",
                        device,
                        message: e.to_string().trim_end().to_string(),
                    }
                })?;
        }
        let mut cuda_options = settings.gpu.cuda_options(device_id);
        if settings.uses_cuda_graphs() {
            // Safe only because every bucket runs on fixed device buffers (crate::binding) and
            // every other run passes gpu_graph_id = -1.
            cuda_options.push(("enable_cuda_graph".to_string(), "1".to_string()));
        }
        let provider =
            cuda_options.into_iter().fold(ep::CUDA::default(), |p, (k, v)| p.with_arbitrary_config(k, v));
        builder = builder.with_execution_providers([provider.build().error_on_failure()]).map_err(|e| {
            OrtBackendError::Provider {
                provider: "CUDA",
                device,
                message: e.to_string().trim_end().to_string(),
            }
        })?;
    }
    Ok(builder)
}

/// TensorRT builds its engine while the session is created, which takes minutes for a large
/// model without a cached engine: say so when it starts, every 30 s while it runs, and when done.
fn announce_engine_build<T>(settings: &SessionSettings, model: &str, commit: impl FnOnce() -> T) -> T {
    if settings.gpu.tensorrt.is_none() || !matches!(settings.device, Device::Cuda { .. }) {
        return commit();
    }
    let started = std::time::Instant::now();
    tracing::info!(
        model,
        "building the TensorRT engine (minutes for a large model; a cached engine loads fast)"
    );
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                done_rx.recv_timeout(std::time::Duration::from_secs(30))
            {
                tracing::info!(
                    model,
                    elapsed_s = started.elapsed().as_secs(),
                    "still building the TensorRT engine"
                );
            }
        });
        let result = commit();
        drop(done_tx);
        tracing::info!(model, elapsed_ms = started.elapsed().as_millis() as u64, "TensorRT session ready");
        result
    })
}

/// The session options part of `settings`.
fn session_options(environment: &Environment, settings: &SessionSettings) -> ort::Result<SessionBuilder> {
    let mut builder =
        Session::builder(environment)?.with_optimization_level(settings.graph_optimization.to_ort())?;
    if let Some(n) = settings.intra_op_threads {
        builder = builder.with_intra_threads(n)?;
    }
    if let Some(n) = settings.inter_op_threads {
        builder = builder.with_inter_threads(n)?;
    }
    if settings.parallel_execution {
        builder = builder.with_parallel_execution(true)?;
    }
    if let Some(enable) = settings.mem_pattern {
        builder = builder.with_memory_pattern(enable)?;
    }
    if let Some(enable) = settings.cpu_mem_arena {
        ffi::set_cpu_mem_arena(&mut builder, enable)?;
    }
    if let Some(enable) = settings.device_allocator_for_initializers {
        let value = if enable { "1" } else { "0" };
        builder = builder.with_config_entry("session.use_device_allocator_for_initializers", value)?;
    }
    if let Some(enable) = settings.intra_op_spinning {
        builder = builder.with_intra_op_spinning(enable)?;
    }
    if let Some(enable) = settings.inter_op_spinning {
        builder = builder.with_inter_op_spinning(enable)?;
    }
    Ok(builder)
}

fn spec(kind: &'static str, outlet: &Outlet) -> Result<TensorSpec, OrtBackendError> {
    let unsupported = || OrtBackendError::UnsupportedTensor {
        kind,
        name: outlet.name().to_string(),
        found: outlet.dtype().to_string(),
    };
    let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
        return Err(unsupported());
    };
    Ok(TensorSpec {
        name: outlet.name().to_string(),
        datatype: datatype_of(*ty).ok_or_else(unsupported)?,
        dims: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
        // ONNX string tensors are byte strings; only a backend that reads text asks for UTF-8.
        utf8: false,
    })
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = names.map(|n| format!("'{n}'")).collect();
    format!("[{}]", quoted.join(", "))
}
