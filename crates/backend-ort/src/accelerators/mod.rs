//! GPU execution providers from a model's config.pbtxt, as Triton's ONNX Runtime backend reads
//! them (its README, "ONNX Runtime with TensorRT optimization" and "... CUDA Execution Provider
//! optimization", and `src/onnxruntime.cc`):
//!
//! ```text
//! optimization { execution_accelerators { gpu_execution_accelerator: [
//!   { name: "tensorrt"
//!     parameters { key: "precision_mode" value: "FP16" }             # FP32 (default), FP16, BF16, INT8
//!     parameters { key: "max_workspace_size_bytes" value: "1073741824" }
//!     parameters { key: "trt_engine_cache_enable" value: "1" }
//!     parameters { key: "trt_engine_cache_path" value: "fp16" } },     # in <--accelerator-cache-dir>/<model>
//!   { name: "cuda"
//!     parameters { key: "cudnn_conv_use_max_workspace" value: "1" } }  # documented CUDA EP options
//! ] } }
//! parameters { key: "cudnn_conv_algo_search" value: { string_value: "1" } }  # 0 EXHAUSTIVE, 1 HEURISTIC, 2 DEFAULT
//! parameters { key: "gpu_mem_limit" value: { string_value: "4294967296" } }
//! parameters { key: "arena_extend_strategy" value: { string_value: "1" } }   # 0 kNextPowerOfTwo, 1 kSameAsRequested
//! parameters { key: "do_copy_in_default_stream" value: { string_value: "1" } }
//! ```
//!
//! Everything here reaches native code (ORT's providers, TensorRT), and a client's
//! RepositoryModelLoad config override can carry it, so nothing passes unchecked:
//!
//! - `tensorrt` takes the keys of Triton's mapping table and `cuda` a documented list of ORT's
//!   CUDA options ([`keys`]), each with a typed, bounded value; any other key is an error (for
//!   `cuda`, unlike Triton, which passes unknown keys through).
//! - Keys that take a raw address (`gpu_external_alloc`, `user_compute_stream`, ...) or load a
//!   shared library (`trt_extra_plugin_lib_paths`) are refused with the reason.
//! - Paths (engine and timing caches, the EP context model) must resolve inside the model's
//!   accelerator cache directory or its own directory ([`paths`]); caches with no directory go
//!   to the model's cache directory instead of ORT's default, the node's working directory.
//! - For a model encrypted at rest, nothing that writes the built engine to disk (engine cache,
//!   EP context model); `trt_dump_subgraphs` is refused for every model.
//! - A GPU instance registers TensorRT, then CUDA, then (implicitly) CPU: nodes TensorRT cannot
//!   run fall back to CUDA, then CPU.
//! - The four top-level `parameters` above are Triton's older spelling of CUDA options; when
//!   given they win over the same key under `cuda` (Triton applies them last).
//! - `device_id` is always the instance's GPU (Triton overrides it the same way).
//! - `cudnn_conv_algo_search` defaults to HEURISTIC, not ORT's EXHAUSTIVE
//!   ([`DEFAULT_CONV_ALGO_SEARCH`] says why).
//! - Both lists are read whatever the instance kind, before any provider is registered, so a
//!   bad value is an error on a CPU-only node too; they only take effect on GPU instances
//!   (Triton ignores them on CPU instances).
//!
//! Differences from Triton, on purpose: numbers and booleans are parsed strictly (no `stoi`
//! prefixes); `enable_cuda_graph` / `trt_cuda_graph_enable` are refused, because ORT replays a
//! captured graph on the device buffers of the capture, which only IO binding with fixed device
//! buffers keeps valid: Tern turns CUDA graphs on itself for `optimization { cuda { graphs: true
//! } }`, with such a binding per bucket (see `crate::settings`); any
//! `cpu_execution_accelerator` is refused ("openvino" is not in Tern's ONNX Runtime).

mod keys;
mod paths;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use tern_proto::inference::ModelConfig;
use tern_proto::inference::model_optimization_policy::execution_accelerators::Accelerator;

pub(crate) use keys::parse_bool;
pub use paths::AcceleratorScope;

use crate::OrtBackendError;
use crate::settings::invalid;
use keys::Value;
use paths::PathUse;

/// Where one ORT session runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Device {
    /// ORT's CPU execution provider only.
    #[default]
    Cpu,
    /// CUDA device `device_id` (TensorRT first when configured), CPU for what they cannot run.
    Cuda { device_id: i32 },
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("CPU"),
            Device::Cuda { device_id } => write!(f, "GPU {device_id}"),
        }
    }
}

/// TensorRT's `precision_mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TensorRtPrecision {
    #[default]
    Fp32,
    Fp16,
    Bf16,
    Int8,
}

impl TensorRtPrecision {
    /// Triton's spelling ("FP16").
    pub fn as_str(self) -> &'static str {
        match self {
            TensorRtPrecision::Fp32 => "FP32",
            TensorRtPrecision::Fp16 => "FP16",
            TensorRtPrecision::Bf16 => "BF16",
            TensorRtPrecision::Int8 => "INT8",
        }
    }

    /// The ORT TensorRT option that turns this precision on (`None` for FP32).
    fn ort_key(self) -> Option<&'static str> {
        match self {
            TensorRtPrecision::Fp32 => None,
            TensorRtPrecision::Fp16 => Some("trt_fp16_enable"),
            TensorRtPrecision::Bf16 => Some("trt_bf16_enable"),
            TensorRtPrecision::Int8 => Some("trt_int8_enable"),
        }
    }
}

/// The TensorRT execution provider's settings (`gpu_execution_accelerator { name: "tensorrt" }`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TensorRtOptions {
    pub precision: TensorRtPrecision,
    /// ORT TensorRT provider options (`trt_*` keys), checked; precision and device not included.
    pub options: BTreeMap<String, String>,
}

impl TensorRtOptions {
    /// Every ORT option for device `device_id`, precision included.
    pub(crate) fn ort_options(&self, device_id: i32) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> =
            self.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(key) = self.precision.ort_key() {
            all.push((key.to_string(), "1".to_string()));
        }
        all.push(("device_id".to_string(), device_id.to_string()));
        all
    }
}

/// What a session registers when it runs on a GPU. Parsed from the config whatever the
/// instance kind; used only when [`crate::SessionSettings::device`] is a GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuSettings {
    /// ORT CUDA provider options (device not included).
    pub cuda: BTreeMap<String, String>,
    /// `Some` when the config asks for TensorRT (in front of CUDA).
    pub tensorrt: Option<TensorRtOptions>,
}

impl GpuSettings {
    /// Every ORT CUDA option for device `device_id`, with Tern's default
    /// `cudnn_conv_algo_search` when the config gives none.
    pub(crate) fn cuda_options(&self, device_id: i32) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self.cuda.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if !self.cuda.contains_key(CONV_ALGO_SEARCH) {
            all.push((CONV_ALGO_SEARCH.to_string(), DEFAULT_CONV_ALGO_SEARCH.to_string()));
        }
        all.push(("device_id".to_string(), device_id.to_string()));
        all
    }
}

const CONV_ALGO_SEARCH: &str = "cudnn_conv_algo_search";
/// Tern's default for `cudnn_conv_algo_search`, where ORT's (and Triton's) is EXHAUSTIVE.
/// EXHAUSTIVE benchmarks every cuDNN algorithm of each convolution the first time it sees an
/// input shape, so under dynamic batching each new batch size stalls its batch for a search
/// (on an H100, light_resnet50 served 47 img/s at concurrency 16 against 1,200+ at a fixed
/// batch). HEURISTIC asks cuDNN's heuristics per shape (microseconds, no benchmark) and
/// usually lands on the same algorithm; DEFAULT would pin one algorithm for every shape and
/// leave speed behind. A config can still ask for EXHAUSTIVE (then batch buckets and their
/// warmup pay the searches before READY).
pub const DEFAULT_CONV_ALGO_SEARCH: &str = "HEURISTIC";
const ACCELERATORS: &str = "optimization.execution_accelerators";
const TENSORRT: &str = "tensorrt";
const CUDA: &str = "cuda";

const SEE_DOCS: &str =
    "the allowed keys are listed in docs/security.md, \"Execution accelerator parameters\"";
const ENCRYPTED_ENGINE: &str = "the model is encrypted at rest, and the TensorRT engine cache would write the \
     built engine, which holds its weights in the clear, to disk (set it to 0; the timing cache is fine)";
const ENCRYPTED_CONTEXT: &str = "the model is encrypted at rest, and the EP context model would write its \
     TensorRT engine, which holds its weights in the clear, to disk";

/// Reads the GPU execution providers' settings (see the module docs); paths and what may be
/// written are checked against `scope`.
pub(crate) fn gpu_settings(
    config: &ModelConfig,
    scope: &AcceleratorScope,
) -> Result<GpuSettings, OrtBackendError> {
    let mut gpu = GpuSettings::default();
    if let Some(eas) = config.optimization.as_ref().and_then(|o| o.execution_accelerators.as_ref()) {
        if let Some(ea) = eas.cpu_execution_accelerator.first() {
            return Err(invalid(
                &format!("{ACCELERATORS}.cpu_execution_accelerator"),
                &ea.name,
                "unknown Execution Accelerator; Tern's ONNX Runtime has no CPU accelerators (no OpenVINO)",
            ));
        }
        for ea in &eas.gpu_execution_accelerator {
            match ea.name.as_str() {
                TENSORRT => {
                    if gpu.tensorrt.is_some() {
                        return Err(invalid(
                            &format!("{ACCELERATORS}.gpu_execution_accelerator"),
                            TENSORRT,
                            "listed more than once",
                        ));
                    }
                    gpu.tensorrt = Some(tensorrt_options(ea, scope)?);
                }
                CUDA => cuda_accelerator(ea, &mut gpu.cuda)?,
                other => {
                    return Err(invalid(
                        &format!("{ACCELERATORS}.gpu_execution_accelerator"),
                        other,
                        "unknown Execution Accelerator; expected \"tensorrt\" or \"cuda\"",
                    ));
                }
            }
        }
    }
    legacy_cuda_parameters(&config.parameters, &mut gpu.cuda)?;
    Ok(gpu)
}

/// An accelerator parameter that is refused; long values are shortened in the message.
fn refused(accelerator: &str, key: &str, value: &str, reason: impl Into<String>) -> OrtBackendError {
    const SHOWN: usize = 120;
    let value = match value.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}...", &value[..at]),
        None => value.to_string(),
    };
    OrtBackendError::AcceleratorParameter {
        accelerator: accelerator.to_string(),
        key: key.to_string(),
        value,
        reason: reason.into(),
    }
}

fn tensorrt_options(ea: &Accelerator, scope: &AcceleratorScope) -> Result<TensorRtOptions, OrtBackendError> {
    let mut trt = TensorRtOptions::default();
    for (key, value) in sorted(&ea.parameters) {
        let fail = |reason: String| refused(TENSORRT, key, value, reason);
        if key == "precision_mode" {
            let mode = keys::check(value, Value::OneOf(keys::PRECISION_MODES)).map_err(fail)?;
            trt.precision = match mode.as_deref() {
                Some("FP16") => TensorRtPrecision::Fp16,
                Some("BF16") => TensorRtPrecision::Bf16,
                Some("INT8") => TensorRtPrecision::Int8,
                _ => TensorRtPrecision::Fp32,
            };
            continue;
        }
        let Some(k) = keys::find(keys::TRT_KEYS, key) else {
            return Err(fail(format!(
                "unknown parameter for the TensorRT Execution Accelerator; {SEE_DOCS}"
            )));
        };
        let checked = match k.value {
            // Triton skips empty values: an empty path leaves the option unset.
            Value::CacheDir | Value::ContextFile if value.is_empty() => None,
            Value::CacheDir => Some(scope.resolve(value, PathUse::Cache).map_err(fail)?),
            Value::ContextFile => Some(scope.resolve(value, PathUse::ContextModel).map_err(fail)?),
            kind => keys::check(value, kind).map_err(fail)?,
        };
        if let Some(v) = checked {
            trt.options.insert(k.ort.to_string(), v);
        }
    }
    tensorrt_rules(&mut trt, &ea.parameters, scope)?;
    Ok(trt)
}

/// What the keys mean together: what an encrypted model may not write, and a directory for
/// every cache ORT would otherwise put in the node's working directory.
fn tensorrt_rules(
    trt: &mut TensorRtOptions,
    given: &HashMap<String, String>,
    scope: &AcceleratorScope,
) -> Result<(), OrtBackendError> {
    let on = |ort: &str| trt.options.get(ort).is_some_and(|v| v == "1");
    let value = |name: &str| given.get(name).map_or("", String::as_str);
    let dump_context = on("trt_dump_ep_context_model");
    if scope.encrypted {
        for (name, reason) in
            [("trt_engine_cache_enable", ENCRYPTED_ENGINE), ("trt_dump_ep_context_model", ENCRYPTED_CONTEXT)]
        {
            if on(name) {
                return Err(refused(TENSORRT, name, value(name), reason));
            }
        }
    }
    // ORT reads the INT8 table and writes engines (and, without its own path, the timing
    // cache) in trt_engine_cache_path; dumping an EP context model turns the engine cache on.
    let needs_cache_dir = [
        ("trt_engine_cache_enable", on("trt_engine_cache_enable")),
        ("trt_dump_ep_context_model", dump_context),
        (
            "trt_timing_cache_enable",
            on("trt_timing_cache_enable") && !trt.options.contains_key("trt_timing_cache_path"),
        ),
        (
            "int8_calibration_table_name",
            trt.precision == TensorRtPrecision::Int8
                && trt.options.contains_key("trt_int8_calibration_table_name"),
        ),
    ];
    let needs_cache_dir = needs_cache_dir.iter().find(|(_, needed)| *needed).map(|(name, _)| *name);
    if let Some(name) = needs_cache_dir.filter(|_| !trt.options.contains_key("trt_engine_cache_path")) {
        let dir = scope.default_cache_dir().map_err(|e| {
            refused(
                TENSORRT,
                name,
                value(name),
                format!(
                    "needs a cache directory and none is given (ONNX Runtime would use the node's \
                     working directory): set trt_engine_cache_path, or {e}"
                ),
            )
        })?;
        trt.options.insert("trt_engine_cache_path".to_string(), dir);
    }
    if dump_context && !trt.options.contains_key("trt_ep_context_file_path") {
        let name = "trt_dump_ep_context_model";
        let file = scope.resolve("model_ctx.onnx", PathUse::ContextModel).map_err(|e| {
            refused(TENSORRT, name, value(name), format!("needs trt_ep_context_file_path: {e}"))
        })?;
        trt.options.insert("trt_ep_context_file_path".to_string(), file);
    }
    Ok(())
}

fn cuda_accelerator(ea: &Accelerator, cuda: &mut BTreeMap<String, String>) -> Result<(), OrtBackendError> {
    for (key, value) in sorted(&ea.parameters) {
        if key == "device_id" {
            // The instance group's GPU decides, as in Triton.
            continue;
        }
        let fail = |reason: String| refused(CUDA, key, value, reason);
        let Some(k) = keys::find(keys::CUDA_KEYS, key) else {
            return Err(fail(format!("unknown parameter for the CUDA Execution Accelerator; {SEE_DOCS}")));
        };
        if let Some(v) = keys::check(value, k.value).map_err(fail)? {
            cuda.insert(k.ort.to_string(), v);
        }
    }
    Ok(())
}

fn legacy_cuda_parameters(
    parameters: &HashMap<String, tern_proto::inference::ModelParameter>,
    cuda: &mut BTreeMap<String, String>,
) -> Result<(), OrtBackendError> {
    for (key, kind, choices) in keys::LEGACY_CUDA_PARAMETERS {
        let Some(p) = parameters.get(*key) else { continue };
        let value = p.string_value.as_str();
        let ort_value = if choices.is_empty() {
            keys::check(value, *kind).map_err(|reason| invalid(key, value, &reason))?
        } else {
            let expected = choices.iter().enumerate().map(|(i, c)| format!("{i} ({c})")).collect::<Vec<_>>();
            let reason = format!("expected {}", expected.join(", "));
            let index = value.trim().parse::<usize>().map_err(|_| invalid(key, value, &reason))?;
            Some(choices.get(index).ok_or_else(|| invalid(key, value, &reason))?.to_string())
        };
        if let Some(v) = ort_value {
            cuda.insert(key.to_string(), v);
        }
    }
    Ok(())
}

fn sorted(map: &HashMap<String, String>) -> Vec<(&String, &String)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort();
    entries
}
