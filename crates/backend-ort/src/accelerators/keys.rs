//! The keys each accelerator takes, with the kind and range of their values, and the keys that
//! are refused outright. docs/security.md, "Execution accelerator parameters", is the same list for
//! operators (a test keeps the two in step).

/// Byte counts (GPU memory limit, TensorRT workspace) are capped at 4 TiB: more than any GPU
/// has, small enough that no arithmetic on it overflows.
pub(crate) const MAX_DEVICE_BYTES: u64 = 1 << 42;

/// Longest value of any key (a path, a list of profile shapes).
pub(crate) const MAX_VALUE_LEN: usize = 4096;

/// What a parameter's value must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value {
    /// Triton's boolean spellings; ORT gets "1" or "0".
    Bool,
    /// A boolean that must stay off, and why.
    Off(&'static str),
    /// An integer in `min..=max`.
    Int { min: i64, max: i64 },
    /// A byte count in `min..=max`.
    Bytes { min: u64, max: u64 },
    /// One of these spellings, passed as is.
    OneOf(&'static [&'static str]),
    /// A plain file name, which ORT joins to the engine cache directory.
    FileName,
    /// A directory ORT reads and writes (engine or timing cache).
    CacheDir,
    /// The file ORT writes the EP context model to.
    ContextFile,
    /// TensorRT optimization profile shapes: `input:1x3x224x224,mask:1x128`.
    Shapes,
    /// `trt_tactic_sources`: `-CUDNN,+CUBLAS`.
    TacticSources,
    /// Never allowed; the reason.
    Refused(&'static str),
}

/// One key: Triton's name, the ORT provider option it sets, its value.
pub(crate) struct Key {
    pub name: &'static str,
    pub ort: &'static str,
    pub value: Value,
}

const fn key(name: &'static str, ort: &'static str, value: Value) -> Key {
    Key { name, ort, value }
}

const fn int(min: i64, max: i64) -> Value {
    Value::Int { min, max }
}

pub(crate) const RAW_ADDRESS: &str = "takes a raw address (a pointer ONNX Runtime would dereference or call): \
     a model config must not name memory in the node";
pub(crate) const NATIVE_CODE: &str = "loads native code (ONNX Runtime would dlopen() the shared library into \
     the node); custom TensorRT plugins and engine decryption libraries are not supported";
const DUMP_SUBGRAPHS: &str = "writes the model's TensorRT subgraphs, weights included, into the node's working \
     directory, outside the model directory and the accelerator cache directory";
const CUDA_GRAPH: &str = "CUDA graphs replay on the device buffers they were captured with, which needs IO \
     binding with fixed device buffers per batch shape; ask for them with `optimization { cuda { graphs: true } }` \
     (CUDA provider, batch buckets), which Tern binds that way, and set this to 0 or remove it";

pub(crate) const PRECISION_MODES: &[&str] = &["FP32", "FP16", "BF16", "INT8"];
pub(crate) const TACTIC_SOURCES: &[&str] =
    &["CUBLAS", "CUBLAS_LT", "CUDNN", "EDGE_MASK_CONVOLUTIONS", "JIT_CONVOLUTIONS"];
pub(crate) const CUDA_ALGO_SEARCH: &[&str] = &["EXHAUSTIVE", "HEURISTIC", "DEFAULT"];
pub(crate) const CUDA_ARENA_STRATEGY: &[&str] = &["kNextPowerOfTwo", "kSameAsRequested"];

/// Triton's `tensorrt` keys (onnxruntime_backend, `src/onnxruntime.cc`, `ModelState::LoadModel`)
/// and the ORT option each sets; `precision_mode` is handled on its own. The last four are
/// not Triton keys (Triton answers "unknown parameter"), listed to say why they never will be.
pub(crate) const TRT_KEYS: &[Key] = &[
    key("max_workspace_size_bytes", "trt_max_workspace_size", Value::Bytes { min: 0, max: MAX_DEVICE_BYTES }),
    key("trt_max_partition_iterations", "trt_max_partition_iterations", int(1, 100_000)),
    key("trt_min_subgraph_size", "trt_min_subgraph_size", int(1, 1_000_000)),
    key("int8_calibration_table_name", "trt_int8_calibration_table_name", Value::FileName),
    key("int8_use_native_calibration_table", "trt_int8_use_native_calibration_table", Value::Bool),
    key("trt_dla_enable", "trt_dla_enable", Value::Bool),
    key("trt_dla_core", "trt_dla_core", int(0, 15)),
    key("trt_engine_cache_enable", "trt_engine_cache_enable", Value::Bool),
    key("trt_engine_cache_path", "trt_engine_cache_path", Value::CacheDir),
    key("trt_engine_cache_prefix", "trt_engine_cache_prefix", Value::FileName),
    key("trt_dump_subgraphs", "trt_dump_subgraphs", Value::Off(DUMP_SUBGRAPHS)),
    key("trt_force_sequential_engine_build", "trt_force_sequential_engine_build", Value::Bool),
    key("trt_context_memory_sharing_enable", "trt_context_memory_sharing_enable", Value::Bool),
    key("trt_layer_norm_fp32_fallback", "trt_layer_norm_fp32_fallback", Value::Bool),
    key("trt_timing_cache_enable", "trt_timing_cache_enable", Value::Bool),
    key("trt_timing_cache_path", "trt_timing_cache_path", Value::CacheDir),
    key("trt_force_timing_cache", "trt_force_timing_cache", Value::Bool),
    key("trt_detailed_build_log", "trt_detailed_build_log", Value::Bool),
    key("trt_build_heuristics_enable", "trt_build_heuristics_enable", Value::Bool),
    key("trt_sparsity_enable", "trt_sparsity_enable", Value::Bool),
    key("trt_builder_optimization_level", "trt_builder_optimization_level", int(0, 5)),
    key("trt_auxiliary_streams", "trt_auxiliary_streams", int(-1, 64)),
    key("trt_tactic_sources", "trt_tactic_sources", Value::TacticSources),
    key("trt_extra_plugin_lib_paths", "trt_extra_plugin_lib_paths", Value::Refused(NATIVE_CODE)),
    key("trt_profile_min_shapes", "trt_profile_min_shapes", Value::Shapes),
    key("trt_profile_max_shapes", "trt_profile_max_shapes", Value::Shapes),
    key("trt_profile_opt_shapes", "trt_profile_opt_shapes", Value::Shapes),
    key("trt_cuda_graph_enable", "trt_cuda_graph_enable", Value::Off(CUDA_GRAPH)),
    key("trt_dump_ep_context_model", "trt_dump_ep_context_model", Value::Bool),
    key("trt_ep_context_file_path", "trt_ep_context_file_path", Value::ContextFile),
    key("trt_ep_context_embed_mode", "trt_ep_context_embed_mode", int(0, 1)),
    key("user_compute_stream", "user_compute_stream", Value::Refused(RAW_ADDRESS)),
    key("trt_onnx_bytestream", "trt_onnx_bytestream", Value::Refused(RAW_ADDRESS)),
    key("trt_external_data_bytestream", "trt_external_data_bytestream", Value::Refused(RAW_ADDRESS)),
    key("trt_engine_decryption_lib_path", "trt_engine_decryption_lib_path", Value::Refused(NATIVE_CODE)),
];

/// The ORT CUDA provider options Tern allows (Triton passes any `cuda` key through; these are
/// the ones with a documented meaning and a value that can be checked).
pub(crate) const CUDA_KEYS: &[Key] = &[
    key("gpu_mem_limit", "gpu_mem_limit", Value::Bytes { min: 1, max: MAX_DEVICE_BYTES }),
    key("arena_extend_strategy", "arena_extend_strategy", Value::OneOf(CUDA_ARENA_STRATEGY)),
    key("cudnn_conv_algo_search", "cudnn_conv_algo_search", Value::OneOf(CUDA_ALGO_SEARCH)),
    key("do_copy_in_default_stream", "do_copy_in_default_stream", Value::Bool),
    key("use_ep_level_unified_stream", "use_ep_level_unified_stream", Value::Bool),
    key("cudnn_conv_use_max_workspace", "cudnn_conv_use_max_workspace", Value::Bool),
    key("cudnn_conv1d_pad_to_nc1d", "cudnn_conv1d_pad_to_nc1d", Value::Bool),
    key("enable_cuda_graph", "enable_cuda_graph", Value::Off(CUDA_GRAPH)),
    key("enable_skip_layer_norm_strict_mode", "enable_skip_layer_norm_strict_mode", Value::Bool),
    key("use_tf32", "use_tf32", Value::Bool),
    key("prefer_nhwc", "prefer_nhwc", Value::Bool),
    key("fuse_conv_bias", "fuse_conv_bias", Value::Bool),
    key("tunable_op_enable", "tunable_op_enable", Value::Bool),
    key("tunable_op_tuning_enable", "tunable_op_tuning_enable", Value::Bool),
    key("tunable_op_max_tuning_duration_ms", "tunable_op_max_tuning_duration_ms", int(0, 3_600_000)),
    // A bit set of ORT's attention kernels (flash, efficient, TRT fused, cuDNN, math, ...).
    key("sdpa_kernel", "sdpa_kernel", int(0, 511)),
    key("user_compute_stream", "user_compute_stream", Value::Refused(RAW_ADDRESS)),
    key("has_user_compute_stream", "has_user_compute_stream", Value::Refused(RAW_ADDRESS)),
    key("gpu_external_alloc", "gpu_external_alloc", Value::Refused(RAW_ADDRESS)),
    key("gpu_external_free", "gpu_external_free", Value::Refused(RAW_ADDRESS)),
    key("gpu_external_empty_cache", "gpu_external_empty_cache", Value::Refused(RAW_ADDRESS)),
    key("default_memory_arena_cfg", "default_memory_arena_cfg", Value::Refused(RAW_ADDRESS)),
];

/// Triton's older, top-level spelling of four CUDA options (`parameters { key: ... }`): the
/// key, its value, and the ORT spelling of each numeric choice.
pub(crate) const LEGACY_CUDA_PARAMETERS: &[(&str, Value, &[&str])] = &[
    ("cudnn_conv_algo_search", Value::Int { min: 0, max: 2 }, CUDA_ALGO_SEARCH),
    ("gpu_mem_limit", Value::Bytes { min: 1, max: MAX_DEVICE_BYTES }, &[]),
    ("arena_extend_strategy", Value::Int { min: 0, max: 1 }, CUDA_ARENA_STRATEGY),
    ("do_copy_in_default_stream", Value::Bool, &[]),
];

pub(crate) fn find(keys: &'static [Key], name: &str) -> Option<&'static Key> {
    keys.iter().find(|k| k.name == name)
}

/// Checks a value that is not a path; `Ok(None)` for an empty value of a kind where empty
/// means unset. Paths are [`super::paths`]'s.
pub(crate) fn check(value: &str, kind: Value) -> Result<Option<String>, String> {
    if value.len() > MAX_VALUE_LEN {
        return Err(format!("longer than {MAX_VALUE_LEN} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    let v = value.trim();
    match kind {
        Value::Bool => parse_bool(value).map(|b| Some(if b { "1" } else { "0" }.to_string())),
        Value::Off(reason) => match parse_bool(value)? {
            true => Err(reason.to_string()),
            false => Ok(Some("0".to_string())),
        },
        Value::Int { min, max } => match v.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n.to_string())),
            _ => Err(format!("expected an integer from {min} to {max}")),
        },
        Value::Bytes { min, max } => {
            let n = v
                .parse::<u64>()
                .map_err(|_| format!("expected a byte count (a non-negative integer, at most {max})"))?;
            if n < min {
                Err(format!("must be at least {min} bytes"))
            } else if n > max {
                Err(format!("must be at most {max} bytes (4 TiB)"))
            } else {
                Ok(Some(n.to_string()))
            }
        }
        Value::OneOf(choices) if choices.contains(&v) => Ok(Some(v.to_string())),
        Value::OneOf(choices) => Err(format!("expected one of {}", choices.join(", "))),
        Value::FileName => file_name(value).map(|()| (!value.is_empty()).then(|| value.to_string())),
        Value::Shapes => shapes(v).map(|()| (!v.is_empty()).then(|| v.to_string())),
        Value::TacticSources => tactic_sources(v).map(|()| (!v.is_empty()).then(|| v.to_string())),
        Value::Refused(reason) => Err(reason.to_string()),
        Value::CacheDir | Value::ContextFile => Err("a path is checked by the path rules".into()),
    }
}

/// The spellings of Triton's `ParseBoolValue` (backend `backend_common.cc`): true, on, 1 and
/// false, off, 0, in any case.
pub(crate) fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "1" => Ok(true),
        "false" | "off" | "0" => Ok(false),
        _ => Err("expected true, false, on, off, 1 or 0".into()),
    }
}

/// A name ORT joins to a directory: nothing that could lead elsewhere.
fn file_name(value: &str) -> Result<(), String> {
    let plain = !value.contains(['/', '\\']) && value != "." && value != ".." && value.len() <= 255;
    if value.is_empty() || plain {
        Ok(())
    } else {
        Err("must be a plain file name (no '/' or '\\', not '.' or '..', at most 255 bytes): ORT \
             looks it up in the engine cache directory"
            .into())
    }
}

/// `name:1x3x224x224,other:1x16`: ORT parses these itself; the shape is checked here so no
/// other text reaches it.
fn shapes(value: &str) -> Result<(), String> {
    let ok = value.is_empty()
        || value.split(',').all(|item| {
            let Some((name, dims)) = item.trim().rsplit_once(':') else { return false };
            !name.is_empty()
                && dims
                    .split('x')
                    .all(|d| !d.is_empty() && d.len() <= 10 && d.bytes().all(|b| b.is_ascii_digit()))
        });
    if ok {
        Ok(())
    } else {
        Err("expected TensorRT profile shapes: <input>:<dim>x<dim>..., comma-separated (e.g. \
             input:1x3x224x224,mask:1x128)"
            .into())
    }
}

fn tactic_sources(value: &str) -> Result<(), String> {
    let ok = value.is_empty()
        || value.split(',').all(|item| {
            let item = item.trim();
            let name = item.strip_prefix(['+', '-']).unwrap_or(item).to_ascii_uppercase();
            TACTIC_SOURCES.contains(&name.as_str())
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a comma-separated list of tactic sources, each with an optional + or -: {}",
            TACTIC_SOURCES.join(", ")
        ))
    }
}
