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
//!     parameters { key: "trt_engine_cache_path" value: "/cache/trt" } },
//!   { name: "cuda"
//!     parameters { key: "cudnn_conv_use_max_workspace" value: "1" } }  # any CUDA EP option
//! ] } }
//! parameters { key: "cudnn_conv_algo_search" value: { string_value: "1" } }  # 0 EXHAUSTIVE, 1 HEURISTIC, 2 DEFAULT
//! parameters { key: "gpu_mem_limit" value: { string_value: "4294967296" } }
//! parameters { key: "arena_extend_strategy" value: { string_value: "1" } }   # 0 kNextPowerOfTwo, 1 kSameAsRequested
//! parameters { key: "do_copy_in_default_stream" value: { string_value: "1" } }
//! ```
//!
//! - `tensorrt` takes the keys of Triton's mapping table (`TRT_KEYS`); any other key is
//!   an error, as in Triton. A GPU instance then registers TensorRT, then CUDA, then (implicitly)
//!   CPU: nodes TensorRT cannot run fall back to CUDA, then CPU.
//! - `cuda` passes its keys to ORT's CUDA execution provider as they are (ORT rejects unknown
//!   ones when the session is created); the ones Tern knows are checked here first.
//! - The four top-level `parameters` above are Triton's older spelling of CUDA options; when
//!   given they win over the same key under `cuda` (Triton applies them last).
//! - `device_id` is always the instance's GPU (Triton overrides it the same way).
//! - Both lists are read whatever the instance kind, so a bad value is an error on a CPU-only
//!   node too; they only take effect on GPU instances (Triton ignores them on CPU instances).
//!
//! Differences from Triton, on purpose: numbers and booleans are parsed strictly (no `stoi`
//! prefixes); `enable_cuda_graph` / `trt_cuda_graph_enable` are refused, because ORT replays a
//! captured graph on the device buffers of the capture, which only IO binding with fixed device
//! buffers keeps valid and Tern binds host buffers (results would silently be stale); any
//! `cpu_execution_accelerator` is refused ("openvino" is not in Tern's ONNX Runtime).

use std::collections::{BTreeMap, HashMap};

use tern_proto::inference::ModelConfig;
use tern_proto::inference::model_optimization_policy::execution_accelerators::Accelerator;

use crate::OrtBackendError;
use crate::settings::{invalid, parse_bool};

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
    /// Every ORT CUDA option for device `device_id`.
    pub(crate) fn cuda_options(&self, device_id: i32) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self.cuda.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.push(("device_id".to_string(), device_id.to_string()));
        all
    }
}

const ACCELERATORS: &str = "optimization.execution_accelerators";
const TENSORRT: &str = "tensorrt";
const CUDA: &str = "cuda";

/// What a parameter's value must be.
#[derive(Debug, Clone, Copy)]
enum Value {
    Bool,
    Int,
    /// A byte count (`size_t`).
    Bytes,
    /// Any string; empty means unset (Triton skips empty values).
    Text,
    /// One of these spellings, passed as is.
    OneOf(&'static [&'static str]),
}

/// Triton's `tensorrt` parameters: (Triton key, ORT TensorRT option, value). `precision_mode`
/// is handled on its own.
const TRT_KEYS: &[(&str, &str, Value)] = &[
    ("max_workspace_size_bytes", "trt_max_workspace_size", Value::Bytes),
    ("trt_max_partition_iterations", "trt_max_partition_iterations", Value::Int),
    ("trt_min_subgraph_size", "trt_min_subgraph_size", Value::Int),
    ("int8_calibration_table_name", "trt_int8_calibration_table_name", Value::Text),
    ("int8_use_native_calibration_table", "trt_int8_use_native_calibration_table", Value::Bool),
    ("trt_dla_enable", "trt_dla_enable", Value::Bool),
    ("trt_dla_core", "trt_dla_core", Value::Int),
    ("trt_engine_cache_enable", "trt_engine_cache_enable", Value::Bool),
    ("trt_engine_cache_path", "trt_engine_cache_path", Value::Text),
    ("trt_engine_cache_prefix", "trt_engine_cache_prefix", Value::Text),
    ("trt_dump_subgraphs", "trt_dump_subgraphs", Value::Bool),
    ("trt_force_sequential_engine_build", "trt_force_sequential_engine_build", Value::Bool),
    ("trt_context_memory_sharing_enable", "trt_context_memory_sharing_enable", Value::Bool),
    ("trt_layer_norm_fp32_fallback", "trt_layer_norm_fp32_fallback", Value::Bool),
    ("trt_timing_cache_enable", "trt_timing_cache_enable", Value::Bool),
    ("trt_timing_cache_path", "trt_timing_cache_path", Value::Text),
    ("trt_force_timing_cache", "trt_force_timing_cache", Value::Bool),
    ("trt_detailed_build_log", "trt_detailed_build_log", Value::Bool),
    ("trt_build_heuristics_enable", "trt_build_heuristics_enable", Value::Bool),
    ("trt_sparsity_enable", "trt_sparsity_enable", Value::Bool),
    ("trt_builder_optimization_level", "trt_builder_optimization_level", Value::Int),
    ("trt_auxiliary_streams", "trt_auxiliary_streams", Value::Int),
    ("trt_tactic_sources", "trt_tactic_sources", Value::Text),
    ("trt_extra_plugin_lib_paths", "trt_extra_plugin_lib_paths", Value::Text),
    ("trt_profile_min_shapes", "trt_profile_min_shapes", Value::Text),
    ("trt_profile_max_shapes", "trt_profile_max_shapes", Value::Text),
    ("trt_profile_opt_shapes", "trt_profile_opt_shapes", Value::Text),
    ("trt_cuda_graph_enable", "trt_cuda_graph_enable", Value::Bool),
    ("trt_dump_ep_context_model", "trt_dump_ep_context_model", Value::Bool),
    ("trt_ep_context_file_path", "trt_ep_context_file_path", Value::Text),
    ("trt_ep_context_embed_mode", "trt_ep_context_embed_mode", Value::Int),
];

const CUDA_ALGO_SEARCH: &[&str] = &["EXHAUSTIVE", "HEURISTIC", "DEFAULT"];
const CUDA_ARENA_STRATEGY: &[&str] = &["kNextPowerOfTwo", "kSameAsRequested"];

/// CUDA EP options Tern checks before ORT sees them; other keys pass through unchecked.
const CUDA_KEYS: &[(&str, Value)] = &[
    ("gpu_mem_limit", Value::Bytes),
    ("arena_extend_strategy", Value::OneOf(CUDA_ARENA_STRATEGY)),
    ("cudnn_conv_algo_search", Value::OneOf(CUDA_ALGO_SEARCH)),
    ("do_copy_in_default_stream", Value::Bool),
    ("use_ep_level_unified_stream", Value::Bool),
    ("cudnn_conv_use_max_workspace", Value::Bool),
    ("cudnn_conv1d_pad_to_nc1d", Value::Bool),
    ("enable_cuda_graph", Value::Bool),
    ("enable_skip_layer_norm_strict_mode", Value::Bool),
    ("use_tf32", Value::Bool),
    ("prefer_nhwc", Value::Bool),
    ("fuse_conv_bias", Value::Bool),
    ("tunable_op_enable", Value::Bool),
    ("tunable_op_tuning_enable", Value::Bool),
    ("tunable_op_max_tuning_duration_ms", Value::Int),
    ("sdpa_kernel", Value::Int),
];

/// Triton's older, top-level spelling of four CUDA options: (key, value, ORT spelling of each
/// numeric choice).
const LEGACY_CUDA_PARAMETERS: &[(&str, Value, &[&str])] = &[
    ("cudnn_conv_algo_search", Value::Int, CUDA_ALGO_SEARCH),
    ("gpu_mem_limit", Value::Bytes, &[]),
    ("arena_extend_strategy", Value::Int, CUDA_ARENA_STRATEGY),
    ("do_copy_in_default_stream", Value::Bool, &[]),
];

const CUDA_GRAPH_REASON: &str = "CUDA graphs replay on the device buffers they were captured with, which needs IO \
     binding with fixed device buffers; Tern binds host buffers, so results would be stale (set it to 0 or \
     remove it)";

/// Reads the GPU execution providers' settings (see the module docs).
pub(crate) fn gpu_settings(config: &ModelConfig) -> Result<GpuSettings, OrtBackendError> {
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
                    gpu.tensorrt = Some(tensorrt_options(ea)?);
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

fn tensorrt_options(ea: &Accelerator) -> Result<TensorRtOptions, OrtBackendError> {
    let mut trt = TensorRtOptions::default();
    for (key, value) in sorted(&ea.parameters) {
        let name = format!("tensorrt parameter {key}");
        if key == "precision_mode" {
            trt.precision = match value.as_str() {
                "FP32" => TensorRtPrecision::Fp32,
                "FP16" => TensorRtPrecision::Fp16,
                "BF16" => TensorRtPrecision::Bf16,
                "INT8" => TensorRtPrecision::Int8,
                _ => {
                    return Err(invalid(
                        &name,
                        value,
                        "unsupported precision mode; expected FP32, FP16, BF16 or INT8",
                    ));
                }
            };
            continue;
        }
        let Some((_, ort_key, kind)) = TRT_KEYS.iter().find(|(k, _, _)| k == key) else {
            return Err(invalid(
                &name,
                value,
                "unknown parameter for the TensorRT Execution Accelerator (see Triton's onnxruntime_backend \
                 README for the keys)",
            ));
        };
        if *ort_key == "trt_cuda_graph_enable" && parse_bool(&name, value)? {
            return Err(invalid(&name, value, CUDA_GRAPH_REASON));
        }
        if let Some(v) = checked(&name, value, *kind)? {
            trt.options.insert(ort_key.to_string(), v);
        }
    }
    Ok(trt)
}

fn cuda_accelerator(ea: &Accelerator, cuda: &mut BTreeMap<String, String>) -> Result<(), OrtBackendError> {
    for (key, value) in sorted(&ea.parameters) {
        let name = format!("cuda parameter {key}");
        if key.is_empty() || key.contains('\0') {
            return Err(invalid(&name, value, "a key must be non-empty and contain no NUL"));
        }
        if key == "device_id" {
            // The instance group's GPU decides, as in Triton.
            continue;
        }
        let kind = CUDA_KEYS.iter().find(|(k, _)| k == key).map_or(Value::Text, |(_, kind)| *kind);
        if key == "enable_cuda_graph" && parse_bool(&name, value)? {
            return Err(invalid(&name, value, CUDA_GRAPH_REASON));
        }
        if let Some(v) = checked(&name, value, kind)? {
            cuda.insert(key.to_string(), v);
        }
    }
    Ok(())
}

fn legacy_cuda_parameters(
    parameters: &HashMap<String, tern_proto::inference::ModelParameter>,
    cuda: &mut BTreeMap<String, String>,
) -> Result<(), OrtBackendError> {
    for (key, kind, choices) in LEGACY_CUDA_PARAMETERS {
        let Some(p) = parameters.get(*key) else { continue };
        let value = p.string_value.as_str();
        let ort_value = if choices.is_empty() {
            checked(key, value, *kind)?
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

/// The value to hand ORT (booleans as "1"/"0"), `None` for an empty text value.
fn checked(name: &str, value: &str, kind: Value) -> Result<Option<String>, OrtBackendError> {
    if value.contains('\0') {
        return Err(invalid(name, value, "must not contain NUL"));
    }
    let v = value.trim();
    match kind {
        Value::Bool => Ok(Some(if parse_bool(name, value)? { "1" } else { "0" }.to_string())),
        Value::Int => v
            .parse::<i32>()
            .map(|n| Some(n.to_string()))
            .map_err(|_| invalid(name, value, "expected an integer")),
        Value::Bytes => v
            .parse::<u64>()
            .map(|n| Some(n.to_string()))
            .map_err(|_| invalid(name, value, "expected a byte count (non-negative integer)")),
        Value::Text => Ok((!value.is_empty()).then(|| value.to_string())),
        Value::OneOf(choices) => {
            if choices.contains(&v) {
                Ok(Some(v.to_string()))
            } else {
                Err(invalid(name, value, &format!("expected one of {}", choices.join(", "))))
            }
        }
    }
}

fn sorted(map: &HashMap<String, String>) -> Vec<(&String, &String)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort();
    entries
}

#[cfg(test)]
mod tests {
    use tern_proto::inference::model_optimization_policy::ExecutionAccelerators;
    use tern_proto::inference::{ModelOptimizationPolicy, ModelParameter};

    use super::*;

    fn accelerator(name: &str, params: &[(&str, &str)]) -> Accelerator {
        Accelerator {
            name: name.to_string(),
            parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn config(gpu: Vec<Accelerator>, params: &[(&str, &str)]) -> ModelConfig {
        ModelConfig {
            optimization: Some(ModelOptimizationPolicy {
                execution_accelerators: Some(ExecutionAccelerators {
                    gpu_execution_accelerator: gpu,
                    cpu_execution_accelerator: vec![],
                }),
                ..Default::default()
            }),
            parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), ModelParameter { string_value: v.to_string() }))
                .collect(),
            ..Default::default()
        }
    }

    fn err(config: &ModelConfig) -> String {
        match gpu_settings(config) {
            Ok(s) => panic!("expected an error, got {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn no_accelerators_no_gpu_settings() {
        assert_eq!(gpu_settings(&ModelConfig::default()).ok(), Some(GpuSettings::default()));
        assert_eq!(gpu_settings(&config(vec![], &[])).ok(), Some(GpuSettings::default()));
    }

    #[test]
    fn tensorrt_like_the_triton_readme() -> Result<(), OrtBackendError> {
        let trt = accelerator(
            "tensorrt",
            &[
                ("precision_mode", "FP16"),
                ("max_workspace_size_bytes", "1073741824"),
                ("trt_engine_cache_enable", "true"),
                ("trt_engine_cache_path", "/tmp/trt"),
                ("trt_builder_optimization_level", "3"),
                ("trt_auxiliary_streams", "-1"),
                ("trt_profile_min_shapes", "input:1x3x224x224"),
                ("int8_calibration_table_name", ""),
            ],
        );
        let gpu = gpu_settings(&config(vec![trt], &[]))?;
        let trt = gpu.tensorrt.as_ref().expect("tensorrt requested");
        assert_eq!(trt.precision, TensorRtPrecision::Fp16);
        assert_eq!(
            trt.options,
            map(&[
                ("trt_max_workspace_size", "1073741824"),
                ("trt_engine_cache_enable", "1"),
                ("trt_engine_cache_path", "/tmp/trt"),
                ("trt_builder_optimization_level", "3"),
                ("trt_auxiliary_streams", "-1"),
                ("trt_profile_min_shapes", "input:1x3x224x224"),
            ])
        );
        let all = trt.ort_options(1);
        assert!(all.contains(&("trt_fp16_enable".into(), "1".into())), "{all:?}");
        assert!(all.contains(&("device_id".into(), "1".into())), "{all:?}");
        assert!(gpu.cuda.is_empty());
        Ok(())
    }

    #[test]
    fn precision_modes() {
        for (mode, want, key) in [
            ("FP32", TensorRtPrecision::Fp32, None),
            ("FP16", TensorRtPrecision::Fp16, Some("trt_fp16_enable")),
            ("BF16", TensorRtPrecision::Bf16, Some("trt_bf16_enable")),
            ("INT8", TensorRtPrecision::Int8, Some("trt_int8_enable")),
        ] {
            let gpu = gpu_settings(&config(vec![accelerator("tensorrt", &[("precision_mode", mode)])], &[]));
            let trt = gpu.ok().and_then(|g| g.tensorrt);
            assert_eq!(trt.as_ref().map(|t| t.precision), Some(want), "{mode}");
            assert_eq!(want.as_str(), mode);
            let enabled: Vec<_> = trt
                .map(|t| t.ort_options(0))
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, v)| v == "1")
                .collect();
            assert_eq!(enabled.first().map(|(k, _)| k.as_str()), key, "{mode}");
        }
        let e = err(&config(vec![accelerator("tensorrt", &[("precision_mode", "fp16")])], &[]));
        assert!(e.contains("precision_mode") && e.contains("\"fp16\"") && e.contains("FP32, FP16"), "{e}");
    }

    #[test]
    fn tensorrt_bad_values_and_unknown_keys() {
        for (key, value, says) in [
            ("max_workspace_size_bytes", "-1", "byte count"),
            ("max_workspace_size_bytes", "1GB", "byte count"),
            ("trt_engine_cache_enable", "yes", "true, false"),
            ("trt_min_subgraph_size", "x", "integer"),
            ("trt_builder_optimization_level", "3.5", "integer"),
            ("trt_engine_cache_path", "a\0b", "NUL"),
            ("trt_fp16_enable", "1", "unknown parameter"),
            ("workspace", "1", "unknown parameter"),
            ("trt_cuda_graph_enable", "1", "IO binding"),
        ] {
            let e = err(&config(vec![accelerator("tensorrt", &[(key, value)])], &[]));
            assert!(e.contains(key) && e.contains(says), "{key}={value}: {e}");
        }
        // Off is fine.
        let off = config(vec![accelerator("tensorrt", &[("trt_cuda_graph_enable", "0")])], &[]);
        assert!(gpu_settings(&off).is_ok());
    }

    #[test]
    fn cuda_accelerator_passes_options_through() -> Result<(), OrtBackendError> {
        let cuda = accelerator(
            "cuda",
            &[
                ("cudnn_conv_use_max_workspace", "0"),
                ("use_ep_level_unified_stream", "True"),
                ("cudnn_conv_algo_search", "HEURISTIC"),
                ("arena_extend_strategy", "kSameAsRequested"),
                ("gpu_mem_limit", "2147483648"),
                ("some_future_option", "x"),
                ("device_id", "3"),
            ],
        );
        let gpu = gpu_settings(&config(vec![cuda], &[]))?;
        assert_eq!(
            gpu.cuda,
            map(&[
                ("cudnn_conv_use_max_workspace", "0"),
                ("use_ep_level_unified_stream", "1"),
                ("cudnn_conv_algo_search", "HEURISTIC"),
                ("arena_extend_strategy", "kSameAsRequested"),
                ("gpu_mem_limit", "2147483648"),
                ("some_future_option", "x"),
            ])
        );
        assert!(gpu.tensorrt.is_none());
        assert_eq!(gpu.cuda_options(2).last(), Some(&("device_id".to_string(), "2".to_string())));
        Ok(())
    }

    #[test]
    fn cuda_bad_values() {
        for (key, value, says) in [
            ("do_copy_in_default_stream", "maybe", "true, false"),
            ("gpu_mem_limit", "lots", "byte count"),
            ("cudnn_conv_algo_search", "1", "EXHAUSTIVE, HEURISTIC, DEFAULT"),
            ("arena_extend_strategy", "0", "kNextPowerOfTwo"),
            ("tunable_op_max_tuning_duration_ms", "soon", "integer"),
            ("enable_cuda_graph", "1", "IO binding"),
            ("", "1", "non-empty"),
        ] {
            let e = err(&config(vec![accelerator("cuda", &[(key, value)])], &[]));
            assert!(e.contains(says), "{key}={value}: {e}");
        }
    }

    #[test]
    fn legacy_parameters_map_like_triton_and_win() -> Result<(), OrtBackendError> {
        let params = [
            ("cudnn_conv_algo_search", "1"),
            ("gpu_mem_limit", "4294967200"),
            ("arena_extend_strategy", "1"),
            ("do_copy_in_default_stream", "0"),
            ("intra_op_thread_count", "2"),
        ];
        let cuda = accelerator("cuda", &[("cudnn_conv_algo_search", "DEFAULT")]);
        let gpu = gpu_settings(&config(vec![cuda], &params))?;
        assert_eq!(
            gpu.cuda,
            map(&[
                ("cudnn_conv_algo_search", "HEURISTIC"),
                ("gpu_mem_limit", "4294967200"),
                ("arena_extend_strategy", "kSameAsRequested"),
                ("do_copy_in_default_stream", "0"),
            ])
        );
        for (i, want) in CUDA_ALGO_SEARCH.iter().enumerate() {
            let gpu = gpu_settings(&config(vec![], &[("cudnn_conv_algo_search", &i.to_string())]))?;
            assert_eq!(gpu.cuda.get("cudnn_conv_algo_search").map(String::as_str), Some(*want));
        }
        Ok(())
    }

    #[test]
    fn legacy_bad_values() {
        for (key, value, says) in [
            ("cudnn_conv_algo_search", "3", "0 (EXHAUSTIVE), 1 (HEURISTIC), 2 (DEFAULT)"),
            ("cudnn_conv_algo_search", "HEURISTIC", "0 (EXHAUSTIVE)"),
            ("arena_extend_strategy", "2", "1 (kSameAsRequested)"),
            ("gpu_mem_limit", "-5", "byte count"),
            ("do_copy_in_default_stream", "2", "true, false"),
        ] {
            let e = err(&config(vec![], &[(key, value)]));
            assert!(e.contains(key) && e.contains(says), "{key}={value}: {e}");
        }
    }

    #[test]
    fn unknown_accelerators_are_errors() {
        let e = err(&config(vec![accelerator("openvino", &[])], &[]));
        assert!(e.contains("openvino") && e.contains("unknown Execution Accelerator"), "{e}");
        let e = err(&config(vec![accelerator("tensorrt", &[]), accelerator("tensorrt", &[])], &[]));
        assert!(e.contains("more than once"), "{e}");
        let mut cpu = config(vec![], &[]);
        if let Some(eas) = cpu.optimization.as_mut().and_then(|o| o.execution_accelerators.as_mut()) {
            eas.cpu_execution_accelerator.push(accelerator("openvino", &[]));
        }
        let e = err(&cpu);
        assert!(e.contains("cpu_execution_accelerator") && e.contains("openvino"), "{e}");
    }

    #[test]
    fn device_labels() {
        assert_eq!(Device::Cpu.to_string(), "CPU");
        assert_eq!(Device::Cuda { device_id: 1 }.to_string(), "GPU 1");
        assert_eq!(Device::default(), Device::Cpu);
    }
}
