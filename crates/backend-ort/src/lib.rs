//! The ONNX Runtime backend: loads the ORT shared library once per process, turns Triton's
//! config fields for the ORT backend into session options, and runs `.onnx` models behind
//! [`tern_backend::Backend`].
//!
//! Layout:
//! - [`runtime`]: [`init_runtime`], the process-wide library and ORT environment (one per
//!   process, kept in a `OnceLock`).
//! - [`settings`]: [`SessionSettings`] and [`session_settings`] (config.pbtxt `parameters` and
//!   `optimization { graph { level } }`, with the Triton ONNX Runtime backend's meanings).
//! - [`accelerators`]: the GPU execution providers' settings ([`GpuSettings`]: TensorRT and
//!   CUDA options from `optimization { execution_accelerators }` and `parameters`), each key
//!   checked against an allowed list, paths confined by an [`AcceleratorScope`].
//! - [`placement`]: [`instance_plan`], one [`InstancePlan`] (settings + [`Device`]) per session
//!   from `instance_group` (KIND_GPU / KIND_CPU / KIND_AUTO, `count`, `gpus`), with the GPU
//!   probe and the CPU fallback.
//! - [`factory`]: [`OrtFactory`], the [`tern_backend::BackendFactory`] the model lifecycle
//!   loads versions through: settings checked before decrypting, instances placed, cores
//!   divided among the CPU instances, instances opened in parallel, batch buckets set.
//! - [`model_cache`]: [`ModelCache`], ORT's optimized graphs saved and reused across loads.
//! - `backend`: [`OrtBackend`], one ORT session; `infer` validates the request against the
//!   model's signature, runs, and hands the outputs back as [`tern_core::Tensor`]s.
//! - `convert`: datatype mapping and the byte-level moves in and out of ORT tensors.
//! - `ffi`: the only `unsafe` in Tern: raw string-tensor element access (so BYTES elements
//!   keep embedded NULs and non-UTF-8 bytes), the CPU arena switch, the library version.
//!
//! Copies: a fixed-size input is lent to ORT in place when its bytes are aligned for the
//! element type (otherwise copied once into an aligned buffer); an output is handed back as a
//! `Bytes` that owns the ORT value itself (no copy), or as a slice of the input it aliases.
//! BYTES tensors are copied once each way (ORT keeps them as `std::string`s).
//!
//! GPU sessions register TensorRT (when configured), then CUDA, then ORT's implicit CPU, each
//! with `error_on_failure` so a missing provider library is a load error, never a silent CPU
//! session. GPU instances run a few fixed batch shapes (batch buckets, each warmed up before
//! READY) through an IO binding per bucket (`binding`: inputs staged in pinned host memory,
//! device buffers reused between runs, outputs copied once into pinned host memory that the
//! response shares), optionally with one CUDA graph per bucket (`optimization { cuda { graphs:
//! true } }`). On the CPU both are off by default (`io_binding` parameter).
//!
//! Not here: batching, queues, instance threads (`tern-backend`), config.pbtxt parsing and
//! auto-complete (`tern-repository`), GPU metrics (NVML, in telemetry).

pub mod accelerators;
mod backend;
mod binding;
mod convert;
pub mod factory;
mod ffi;
pub mod model_cache;
pub mod placement;
pub mod runtime;
pub mod settings;

use std::path::PathBuf;

pub use accelerators::{AcceleratorScope, Device, GpuSettings, TensorRtOptions, TensorRtPrecision};
pub use backend::OrtBackend;
pub use factory::OrtFactory;
pub use ffi::release_freed_memory;
pub use model_cache::{CacheEntry, CacheUse, ModelCache};
pub use placement::{
    GpuSupport, GpuUnusable, InstancePlan, instance_plan, placed_instance_groups, plan_instances,
};
pub use runtime::{RuntimeInfo, init_runtime};
pub use settings::{BucketMode, GraphOptimization, SessionSettings, session_settings, session_settings_for};

/// What to tell an operator whose ONNX Runtime library is missing or unusable.
pub const SETUP_HINT: &str =
    "run `make setup` (scripts/setup.sh) or pass --onnxruntime-lib / set ORT_DYLIB_PATH";

/// Why the ONNX Runtime library, a model's settings or a model could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OrtBackendError {
    /// No path was given and `ORT_DYLIB_PATH` is unset.
    #[error("no ONNX Runtime library configured: {SETUP_HINT}")]
    LibraryNotConfigured,
    /// The library file does not exist.
    #[error("ONNX Runtime library not found at {}: {SETUP_HINT}", path.display())]
    LibraryNotFound { path: PathBuf },
    /// The file exists but is not a usable ONNX Runtime (not a library, too old, ...).
    #[error("cannot load ONNX Runtime from {}: {message}; {SETUP_HINT}", path.display())]
    LibraryLoad { path: PathBuf, message: String },
    /// The process already runs another ONNX Runtime library; only one can be loaded.
    #[error(
        "ONNX Runtime is already loaded from {}; cannot also load {}",
        loaded.display(),
        requested.display()
    )]
    AlreadyInitialized { loaded: PathBuf, requested: PathBuf },
    /// The library loaded but its environment could not be created.
    #[error("cannot create the ONNX Runtime environment: {0}")]
    Environment(String),
    /// A model config parameter has a value the ORT backend cannot use.
    #[error("invalid value {value:?} for ONNX Runtime parameter '{name}': {reason}")]
    InvalidParameter { name: String, value: String, reason: String },
    /// An execution accelerator parameter that is unknown, out of range or not allowed
    /// (`value` is shortened when long).
    #[error("execution accelerator '{accelerator}' parameter '{key}' = {value:?} refused: {reason}")]
    AcceleratorParameter { accelerator: String, key: String, value: String, reason: String },
    /// A `model_operations.op_library_filename` that is missing, refused, or that ONNX Runtime
    /// cannot load.
    #[error(
        "model '{model}': cannot load the custom operations library '{file}' (model_operations.op_library_filename): {reason}"
    )]
    OpLibrary { model: String, file: String, reason: String },
    /// The model file does not exist.
    #[error("model file not found: {}", path.display())]
    ModelNotFound { path: PathBuf },
    /// ORT refused the model (corrupt file, unsupported operator or opset, ...). `model` is
    /// the file's path, or `<memory>`.
    #[error("cannot load ONNX model {model}: {message}")]
    ModelLoad { model: String, message: String },
    /// An instance group asks for a GPU (or TensorRT) this process cannot use, and falling
    /// back is not allowed. `wants` is "KIND_GPU" or "configured for TensorRT (FP16)".
    #[error("instance group '{group}' of model '{model}' is {wants} but {reason}; {hint}")]
    GpuUnavailable { model: String, group: String, wants: String, reason: GpuUnusable, hint: &'static str },
    /// An instance group that cannot be placed as written (bad GPU id, GPUs on a CPU group).
    #[error("{0}")]
    InvalidInstanceGroup(String),
    /// An execution provider could not be registered for a session.
    #[error("cannot use the {provider} execution provider on {device}: {message}")]
    Provider { provider: &'static str, device: Device, message: String },
    /// A model input or output has a type Tern cannot carry (sequence, map, complex, ...).
    #[error("model {kind} '{name}' has unsupported type {found}")]
    UnsupportedTensor { kind: &'static str, name: String, found: String },
}

impl From<OrtBackendError> for tern_backend::BackendError {
    fn from(e: OrtBackendError) -> Self {
        tern_backend::BackendError::Load(e.to_string())
    }
}
