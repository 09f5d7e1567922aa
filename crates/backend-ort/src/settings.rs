//! Session options from a model's config.pbtxt, with the meanings the Triton ONNX Runtime
//! backend gives them (its README, "Model Config Options", and `src/onnxruntime.cc`):
//!
//! | config                                              | meaning                                   |
//! |-----------------------------------------------------|-------------------------------------------|
//! | `optimization { graph { level } }`                  | -1 basic, 1 extended, 2 disable all; 0 or absent: all |
//! | `parameters` `intra_op_thread_count`                | threads inside one operator; 0 = ORT's default |
//! | `parameters` `inter_op_thread_count`                | threads across operators (parallel mode); 0 = default |
//! | `parameters` `execution_mode`                       | 0 sequential, 1 parallel                  |
//! | `parameters` `enable_mem_arena`                     | CPU memory arena on/off                   |
//! | `parameters` `enable_mem_pattern`                   | memory pattern optimization on/off        |
//! | `parameters` `session.use_device_allocator_for_initializers` | session config entry           |
//! | `parameters` `session.intra_op.allow_spinning`, `session.inter_op.allow_spinning` | session config entries: whether ORT's idle pool threads spin (ORT's default: yes) |
//! | `parameters` `memory.enable_memory_arena_shrinkage` | run config entry, passed through as is    |
//! | `optimization { execution_accelerators }`, CUDA `parameters` | GPU providers: see [`crate::accelerators`] |
//! | `parameters` `batch_buckets` (Tern's)               | `auto` (default: on for GPU instances, off for CPU), or on / off: pad each batch to the next bucket ([`tern_backend::batch::bucket_sizes`]) |
//! | `parameters` `io_binding` (Tern's)                  | `auto` (default: on for GPU instances, off for CPU), or on / off: bucketed batches run through an IO binding with buffers reused between runs (the crate's `binding` module) |
//! | `optimization { cuda { graphs: true } }`            | one CUDA graph per bucket on GPU instances (CUDA provider, not TensorRT); see below |
//!
//! `optimization.cuda.graphs` is Triton's field for its TensorRT backend; Triton's ONNX Runtime
//! backend ignores it (`src/onnxruntime.cc` never reads `optimization.cuda`) and only passes
//! `enable_cuda_graph` through to ORT without an IO binding. Tern honours the field where ORT can
//! replay a graph correctly: a GPU instance on the CUDA provider, batches padded to buckets, and
//! every bucket run on fixed device buffers (ORT's CUDA provider docs, "Using CUDA Graphs":
//! addresses must not change between runs; one graph per `gpu_graph_id`). Elsewhere (a CPU
//! instance, TensorRT, buckets off) it is ignored with a warning at load, as Triton would ignore
//! it, rather than refused: the same config must load on a machine without a GPU.
//!
//! Differences from Triton, on purpose: Triton treats any other graph level as "all" and parses
//! numbers with `std::stoi` (so "4x" is 4); here an unknown level, a negative or non-numeric
//! count, and a boolean other than true/false/on/off/1/0 are errors naming the parameter. Parameters
//! this backend does not know are ignored, as in Triton (they may be meant for something else).

use std::path::{Path, PathBuf};

use tern_proto::inference::ModelConfig;

use crate::OrtBackendError;
use crate::accelerators::{AcceleratorScope, Device, GpuSettings, gpu_settings};

/// How much graph optimization ORT does when it loads the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GraphOptimization {
    /// `ORT_DISABLE_ALL` (Triton level 2).
    Disable,
    /// `ORT_ENABLE_BASIC` (Triton level -1).
    Basic,
    /// `ORT_ENABLE_EXTENDED` (Triton level 1).
    Extended,
    /// `ORT_ENABLE_ALL`, ORT's and Triton's default (level 0 or absent).
    #[default]
    All,
}

impl GraphOptimization {
    /// From Triton's `optimization.graph.level`; `None` for a value Triton does not document.
    pub fn from_triton_level(level: i32) -> Option<GraphOptimization> {
        match level {
            -1 => Some(GraphOptimization::Basic),
            0 => Some(GraphOptimization::All),
            1 => Some(GraphOptimization::Extended),
            2 => Some(GraphOptimization::Disable),
            _ => None,
        }
    }

    pub(crate) fn to_ort(self) -> ort::session::builder::GraphOptimizationLevel {
        use ort::session::builder::GraphOptimizationLevel as L;
        match self {
            GraphOptimization::Disable => L::Disable,
            GraphOptimization::Basic => L::Level1,
            GraphOptimization::Extended => L::Level2,
            GraphOptimization::All => L::All,
        }
    }
}

/// Tern's `batch_buckets` and `io_binding` parameters: whether an instance pads its batches up
/// to a few fixed sizes ([`tern_backend::Backend::batch_buckets`]), and whether it runs them
/// through an IO binding with reused buffers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BucketMode {
    /// On for GPU instances, where ORT's CUDA provider plans per input shape; off on CPU, where
    /// padding rows would only cost compute.
    #[default]
    Auto,
    On,
    Off,
}

impl BucketMode {
    /// Whether an instance on `device` pads.
    pub fn applies_to(self, device: Device) -> bool {
        match self {
            BucketMode::Auto => matches!(device, Device::Cuda { .. }),
            BucketMode::On => true,
            BucketMode::Off => false,
        }
    }
}

/// Options for one ORT session. `None` leaves ORT's default. `Default` is what a config with
/// none of the ORT backend's fields gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSettings {
    /// Threads inside one operator (`intra_op_thread_count`); ORT's default is one per
    /// physical core.
    pub intra_op_threads: Option<usize>,
    /// Threads across operators, used in parallel execution mode (`inter_op_thread_count`).
    pub inter_op_threads: Option<usize>,
    /// `optimization { graph { level } }`.
    pub graph_optimization: GraphOptimization,
    /// Run independent operators in parallel (`execution_mode: 1`).
    pub parallel_execution: bool,
    /// `enable_mem_arena`.
    pub cpu_mem_arena: Option<bool>,
    /// `enable_mem_pattern`.
    pub mem_pattern: Option<bool>,
    /// `session.use_device_allocator_for_initializers`.
    pub device_allocator_for_initializers: Option<bool>,
    /// `session.intra_op.allow_spinning`: idle intra-op threads spin before they sleep.
    pub intra_op_spinning: Option<bool>,
    /// `session.inter_op.allow_spinning`.
    pub inter_op_spinning: Option<bool>,
    /// `memory.enable_memory_arena_shrinkage`, set on every run (e.g. "cpu:0").
    pub arena_shrinkage: Option<String>,
    /// Where the session runs. [`session_settings`] leaves `Cpu`; [`crate::instance_plan`]
    /// places each instance.
    pub device: Device,
    /// The GPU execution providers' options, used when `device` is a GPU.
    pub gpu: GpuSettings,
    /// `batch_buckets` (Tern's parameter).
    pub batch_buckets: BucketMode,
    /// `io_binding` (Tern's parameter): same meaning of auto / on / off as `batch_buckets`.
    pub io_binding: BucketMode,
    /// `optimization { cuda { graphs: true } }`: used by GPU instances on the CUDA provider.
    pub cuda_graphs: bool,
    /// `model_operations { op_library_filename }`: custom-op libraries ORT opens before the
    /// model (see [`op_libraries`]).
    pub op_libraries: Vec<PathBuf>,
}

impl SessionSettings {
    /// Whether ORT's CUDA provider captures graphs for this session: asked for, on a GPU, and
    /// the CUDA provider not behind TensorRT (whose own graph option Tern does not drive).
    pub fn uses_cuda_graphs(&self) -> bool {
        self.cuda_graphs && matches!(self.device, Device::Cuda { .. }) && self.gpu.tensorrt.is_none()
    }
}

const INTRA_OP_THREADS: &str = "intra_op_thread_count";
const INTER_OP_THREADS: &str = "inter_op_thread_count";
const EXECUTION_MODE: &str = "execution_mode";
const MEM_ARENA: &str = "enable_mem_arena";
const MEM_PATTERN: &str = "enable_mem_pattern";
const DEVICE_ALLOCATOR_FOR_INITIALIZERS: &str = "session.use_device_allocator_for_initializers";
const ARENA_SHRINKAGE: &str = "memory.enable_memory_arena_shrinkage";
const INTRA_OP_SPINNING: &str = "session.intra_op.allow_spinning";
const INTER_OP_SPINNING: &str = "session.inter_op.allow_spinning";
/// Tern's own parameter (Triton has no such setting).
pub const BATCH_BUCKETS: &str = "batch_buckets";
/// Tern's own parameter (Triton has no such setting).
pub const IO_BINDING: &str = "io_binding";

/// [`session_settings_for`] with the strictest scope: no model directory, no cache directory,
/// so every accelerator path and cache is refused.
pub fn session_settings(config: &ModelConfig) -> Result<SessionSettings, OrtBackendError> {
    session_settings_for(config, &AcceleratorScope { model: config.name.clone(), ..Default::default() })
}

/// Reads the ORT backend's fields from a model config (see the module docs for the mapping);
/// accelerator paths and caches are confined to `scope`.
pub fn session_settings_for(
    config: &ModelConfig,
    scope: &AcceleratorScope,
) -> Result<SessionSettings, OrtBackendError> {
    let param = |name: &str| config.parameters.get(name).map(|p| p.string_value.as_str());
    let mut settings = SessionSettings {
        gpu: gpu_settings(config, scope)?,
        op_libraries: op_libraries(config, scope)?,
        ..SessionSettings::default()
    };

    if let Some(graph) = config.optimization.as_ref().and_then(|o| o.graph.as_ref()) {
        settings.graph_optimization = GraphOptimization::from_triton_level(graph.level).ok_or_else(|| {
            invalid("optimization.graph.level", &graph.level.to_string(), "expected -1, 0, 1 or 2")
        })?;
    }
    if let Some(v) = param(INTRA_OP_THREADS) {
        settings.intra_op_threads = parse_thread_count(INTRA_OP_THREADS, v)?;
    }
    if let Some(v) = param(INTER_OP_THREADS) {
        settings.inter_op_threads = parse_thread_count(INTER_OP_THREADS, v)?;
    }
    if let Some(v) = param(EXECUTION_MODE) {
        settings.parallel_execution = match v.trim() {
            "0" => false,
            "1" => true,
            _ => return Err(invalid(EXECUTION_MODE, v, "expected 0 (sequential) or 1 (parallel)")),
        };
    }
    if let Some(v) = param(MEM_ARENA) {
        settings.cpu_mem_arena = Some(parse_bool(MEM_ARENA, v)?);
    }
    if let Some(v) = param(MEM_PATTERN) {
        settings.mem_pattern = Some(parse_bool(MEM_PATTERN, v)?);
    }
    if let Some(v) = param(DEVICE_ALLOCATOR_FOR_INITIALIZERS) {
        settings.device_allocator_for_initializers = Some(parse_bool(DEVICE_ALLOCATOR_FOR_INITIALIZERS, v)?);
    }
    if let Some(v) = param(INTRA_OP_SPINNING) {
        settings.intra_op_spinning = Some(parse_bool(INTRA_OP_SPINNING, v)?);
    }
    if let Some(v) = param(INTER_OP_SPINNING) {
        settings.inter_op_spinning = Some(parse_bool(INTER_OP_SPINNING, v)?);
    }
    if let Some(v) = param(BATCH_BUCKETS) {
        settings.batch_buckets = parse_mode(BATCH_BUCKETS, v)?;
    }
    if let Some(v) = param(IO_BINDING) {
        settings.io_binding = parse_mode(IO_BINDING, v)?;
    }
    if let Some(cuda) = config.optimization.as_ref().and_then(|o| o.cuda.as_ref()) {
        settings.cuda_graphs = cuda.graphs;
    }
    if let Some(v) = param(ARENA_SHRINKAGE) {
        // ORT validates the device list ("cpu:0;gpu:0") when the run starts.
        if v.contains('\0') {
            return Err(invalid(ARENA_SHRINKAGE, v, "must not contain NUL"));
        }
        // ORT only says so on the first run, as a bad-argument error each request would get.
        if settings.cpu_mem_arena == Some(false) && v.to_ascii_lowercase().contains("cpu") {
            return Err(invalid(
                ARENA_SHRINKAGE,
                v,
                "shrinks the CPU arena, which enable_mem_arena turns off",
            ));
        }
        settings.arena_shrinkage = Some(v.to_string());
    }
    Ok(settings)
}

fn parse_mode(name: &str, value: &str) -> Result<BucketMode, OrtBackendError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "auto" | "" => Ok(BucketMode::Auto),
        _ => match crate::accelerators::parse_bool(value) {
            Ok(true) => Ok(BucketMode::On),
            Ok(false) => Ok(BucketMode::Off),
            Err(_) => Err(invalid(name, value, "expected auto, true, false, on, off, 1 or 0")),
        },
    }
}

/// The config's `model_operations.op_library_filename`, resolved and checked before ORT sees
/// them. Triton's ONNX Runtime backend hands each name to ORT's `RegisterCustomOpsLibrary` as
/// written (onnxruntime_backend src/onnxruntime.cc), so `dlopen` resolves it; Tern resolves a
/// relative name against the model's directory instead of the server's working directory, and
/// checks that the file exists, so the load error names the file rather than a `dlopen` message.
///
/// These libraries are native code that runs inside the server, as in Triton: they are allowed
/// only for a model in the operator's repository, never for one a client uploaded.
fn op_libraries(config: &ModelConfig, scope: &AcceleratorScope) -> Result<Vec<PathBuf>, OrtBackendError> {
    let Some(operations) = config.model_operations.as_ref() else { return Ok(Vec::new()) };
    let names = &operations.op_library_filename;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let refuse = |name: &str, reason: String| OrtBackendError::OpLibrary {
        model: config.name.clone(),
        file: name.to_string(),
        reason,
    };
    let Some(model_dir) = scope.model_dir.as_deref() else {
        return Err(refuse(
            &names[0],
            "custom-op libraries are native code: they are not loaded for a model uploaded with \
             its load request"
                .to_string(),
        ));
    };
    names
        .iter()
        .map(|name| {
            let path = Path::new(name);
            let path = if path.is_absolute() { path.to_path_buf() } else { model_dir.join(path) };
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => Ok(path),
                Ok(_) => Err(refuse(name, format!("{} is not a file", path.display()))),
                Err(e) => Err(refuse(name, format!("cannot open {}: {e}", path.display()))),
            }
        })
        .collect()
}

/// Threads one session's pool may have (each instance has its own): a config must not make
/// ONNX Runtime start millions of threads.
pub const MAX_THREADS: usize = 256;

/// `None` for 0 (ORT picks), like Triton.
fn parse_thread_count(name: &str, value: &str) -> Result<Option<usize>, OrtBackendError> {
    match value.trim().parse::<usize>() {
        Ok(0) => Ok(None),
        Ok(n) if n <= MAX_THREADS => Ok(Some(n)),
        Ok(_) => Err(invalid(name, value, &format!("over the limit of {MAX_THREADS} threads"))),
        Err(_) => Err(invalid(name, value, "expected a non-negative integer")),
    }
}

/// The spellings Triton's `ParseBoolValue` accepts (true, on, 1 / false, off, 0).
pub(crate) fn parse_bool(name: &str, value: &str) -> Result<bool, OrtBackendError> {
    crate::accelerators::parse_bool(value).map_err(|reason| invalid(name, value, &reason))
}

pub(crate) fn invalid(name: &str, value: &str, reason: &str) -> OrtBackendError {
    OrtBackendError::InvalidParameter {
        name: name.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use tern_proto::inference::{ModelOptimizationPolicy, ModelParameter, model_optimization_policy};

    use super::*;

    fn config(params: &[(&str, &str)], level: Option<i32>) -> ModelConfig {
        ModelConfig {
            parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), ModelParameter { string_value: v.to_string() }))
                .collect(),
            optimization: level.map(|level| ModelOptimizationPolicy {
                graph: Some(model_optimization_policy::Graph { level }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn empty_config_gives_defaults() {
        assert_eq!(session_settings(&ModelConfig::default()).ok(), Some(SessionSettings::default()));
    }

    #[test]
    fn triton_levels_map_like_the_onnxruntime_backend() {
        let level = |l| session_settings(&config(&[], Some(l))).map(|s| s.graph_optimization).ok();
        assert_eq!(level(-1), Some(GraphOptimization::Basic));
        assert_eq!(level(0), Some(GraphOptimization::All));
        assert_eq!(level(1), Some(GraphOptimization::Extended));
        assert_eq!(level(2), Some(GraphOptimization::Disable));
        let err = session_settings(&config(&[], Some(7))).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("optimization.graph.level") && e.contains('7')));
    }

    #[test]
    fn parameters_parse() {
        let s = session_settings(&config(
            &[
                ("intra_op_thread_count", "2"),
                ("inter_op_thread_count", "0"),
                ("execution_mode", "1"),
                ("enable_mem_arena", "True"),
                ("enable_mem_pattern", "1"),
                ("session.use_device_allocator_for_initializers", "true"),
                ("memory.enable_memory_arena_shrinkage", "cpu:0"),
                ("session.intra_op.allow_spinning", "0"),
                ("session.inter_op.allow_spinning", "true"),
                ("something_else", "ignored"),
            ],
            None,
        ));
        let s = s.ok();
        assert_eq!(
            s,
            Some(SessionSettings {
                intra_op_threads: Some(2),
                inter_op_threads: None,
                graph_optimization: GraphOptimization::All,
                parallel_execution: true,
                cpu_mem_arena: Some(true),
                mem_pattern: Some(true),
                device_allocator_for_initializers: Some(true),
                arena_shrinkage: Some("cpu:0".to_string()),
                intra_op_spinning: Some(false),
                inter_op_spinning: Some(true),
                ..Default::default()
            })
        );
    }

    #[test]
    fn batch_buckets_default_to_gpu_instances_only() {
        let mode =
            |v: &str| session_settings(&config(&[("batch_buckets", v)], None)).map(|s| s.batch_buckets).ok();
        assert_eq!(
            session_settings(&ModelConfig::default()).map(|s| s.batch_buckets).ok(),
            Some(BucketMode::Auto)
        );
        assert_eq!(mode("AUTO"), Some(BucketMode::Auto));
        assert_eq!(mode("on"), Some(BucketMode::On));
        assert_eq!(mode("0"), Some(BucketMode::Off));
        let gpu = Device::Cuda { device_id: 0 };
        assert!(BucketMode::Auto.applies_to(gpu) && !BucketMode::Auto.applies_to(Device::Cpu));
        assert!(BucketMode::On.applies_to(Device::Cpu) && !BucketMode::Off.applies_to(gpu));
    }

    #[test]
    fn io_binding_and_cuda_graphs_parse() {
        let s = |params: &[(&str, &str)], graphs: bool| {
            let mut c = config(params, None);
            c.optimization = Some(ModelOptimizationPolicy {
                cuda: Some(model_optimization_policy::Cuda { graphs, ..Default::default() }),
                ..Default::default()
            });
            session_settings(&c).ok()
        };
        let defaults = s(&[], false);
        assert_eq!(defaults.as_ref().map(|s| (s.io_binding, s.cuda_graphs)), Some((BucketMode::Auto, false)));
        let on = s(&[("io_binding", "on")], true);
        assert_eq!(on.as_ref().map(|s| (s.io_binding, s.cuda_graphs)), Some((BucketMode::On, true)));
        let mut gpu = on.unwrap_or_default();
        assert!(!gpu.uses_cuda_graphs(), "not on the CPU");
        gpu.device = Device::Cuda { device_id: 0 };
        assert!(gpu.uses_cuda_graphs());
        gpu.gpu.tensorrt = Some(Default::default());
        assert!(!gpu.uses_cuda_graphs(), "not behind TensorRT");
    }

    #[test]
    fn arena_shrinkage_needs_the_arena() {
        let params = [("enable_mem_arena", "0"), ("memory.enable_memory_arena_shrinkage", "cpu:0")];
        let err = session_settings(&config(&params, None)).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("memory.enable_memory_arena_shrinkage")));
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for (key, value) in [
            ("intra_op_thread_count", "-1"),
            ("inter_op_thread_count", "four"),
            // One number must not start millions of threads (issue 17).
            ("intra_op_thread_count", "1000000"),
            ("inter_op_thread_count", "257"),
            ("execution_mode", "2"),
            ("enable_mem_arena", "yes"),
            ("enable_mem_pattern", ""),
            ("session.intra_op.allow_spinning", "sometimes"),
            ("batch_buckets", "sometimes"),
            ("io_binding", "maybe"),
        ] {
            let err = session_settings(&config(&[(key, value)], None)).err().map(|e| e.to_string());
            assert!(err.as_ref().is_some_and(|e| e.contains(key)), "{key}={value}: {err:?}");
        }
    }

    #[test]
    fn op_libraries_resolve_in_the_model_directory_and_must_exist() -> Result<(), Box<dyn std::error::Error>>
    {
        use tern_proto::inference::ModelOperations;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("libops.so"), b"not loaded here")?;
        let with = |names: &[&str]| ModelConfig {
            name: "m".into(),
            model_operations: Some(ModelOperations {
                op_library_filename: names.iter().map(|n| n.to_string()).collect(),
            }),
            ..Default::default()
        };
        let scope = |dir: Option<&Path>| AcceleratorScope {
            model: "m".into(),
            model_dir: dir.map(Path::to_path_buf),
            cache_dir: None,
            encrypted: false,
        };
        let trusted = scope(Some(dir.path()));

        // Relative: the model's directory, not the server's working directory.
        let found = session_settings_for(&with(&["libops.so"]), &trusted)?.op_libraries;
        assert_eq!(found, vec![dir.path().join("libops.so")]);
        let absolute = dir.path().join("libops.so");
        let found = session_settings_for(&with(&[absolute.to_str().ok_or("utf-8")?]), &trusted)?.op_libraries;
        assert_eq!(found, vec![absolute]);

        let missing = session_settings_for(&with(&["libmissing.so"]), &trusted).err().map(|e| e.to_string());
        assert!(
            missing.as_deref().is_some_and(|m| m.contains("model 'm'") && m.contains("libmissing.so")),
            "{missing:?}"
        );
        let a_dir = session_settings_for(&with(&["."]), &trusted).err().map(|e| e.to_string());
        assert!(a_dir.is_some_and(|m| m.contains("is not a file")));
        // A client's upload may not bring native code.
        let uploaded = session_settings_for(&with(&["libops.so"]), &scope(None)).err().map(|e| e.to_string());
        assert!(uploaded.is_some_and(|m| m.contains("native code") && m.contains("libops.so")));
        Ok(())
    }
}
