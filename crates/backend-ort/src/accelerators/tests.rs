//! The accelerator parsing and its rules, module-level; the security rules end to end are in
//! `tests/cpu/accelerator_policy.rs`.

use tern_proto::inference::model_optimization_policy::ExecutionAccelerators;
use tern_proto::inference::{ModelOptimizationPolicy, ModelParameter};

use super::keys::{CUDA_ALGO_SEARCH, CUDA_KEYS, LEGACY_CUDA_PARAMETERS, TRT_KEYS};
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

/// No model directory, no cache directory, not encrypted: what `session_settings` checks with.
fn parse(config: &ModelConfig) -> Result<GpuSettings, OrtBackendError> {
    gpu_settings(config, &AcceleratorScope::default())
}

fn err(config: &ModelConfig) -> String {
    match parse(config) {
        Ok(s) => panic!("expected an error, got {s:?}"),
        Err(e) => e.to_string(),
    }
}

fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn no_accelerators_no_gpu_settings() {
    assert_eq!(parse(&ModelConfig::default()).ok(), Some(GpuSettings::default()));
    assert_eq!(parse(&config(vec![], &[])).ok(), Some(GpuSettings::default()));
}

#[test]
fn tensorrt_like_the_triton_readme() -> Result<(), OrtBackendError> {
    let trt = accelerator(
        "tensorrt",
        &[
            ("precision_mode", "FP16"),
            ("max_workspace_size_bytes", "1073741824"),
            ("trt_engine_cache_enable", "true"),
            ("trt_engine_cache_path", "trt"),
            ("trt_builder_optimization_level", "3"),
            ("trt_auxiliary_streams", "-1"),
            ("trt_profile_min_shapes", "input:1x3x224x224"),
            ("int8_calibration_table_name", ""),
        ],
    );
    let cache = tempfile::tempdir().map_err(|e| invalid("tempdir", "", &e.to_string()))?;
    let scope = AcceleratorScope {
        model: "m".into(),
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let gpu = gpu_settings(&config(vec![trt], &[]), &scope)?;
    let trt = gpu.tensorrt.as_ref().expect("tensorrt requested");
    assert_eq!(trt.precision, TensorRtPrecision::Fp16);
    let engines = std::fs::canonicalize(cache.path()).map(|p| p.join("m/trt")).unwrap_or_default();
    assert_eq!(
        trt.options,
        map(&[
            ("trt_max_workspace_size", "1073741824"),
            ("trt_engine_cache_enable", "1"),
            ("trt_engine_cache_path", &engines.display().to_string()),
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
        let gpu = parse(&config(vec![accelerator("tensorrt", &[("precision_mode", mode)])], &[]));
        let trt = gpu.ok().and_then(|g| g.tensorrt);
        assert_eq!(trt.as_ref().map(|t| t.precision), Some(want), "{mode}");
        assert_eq!(want.as_str(), mode);
        let enabled: Vec<_> =
            trt.map(|t| t.ort_options(0)).unwrap_or_default().into_iter().filter(|(_, v)| v == "1").collect();
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
        ("trt_engine_cache_path", "a\0b", "control characters"),
        ("trt_fp16_enable", "1", "unknown parameter"),
        ("workspace", "1", "unknown parameter"),
        ("trt_cuda_graph_enable", "1", "IO binding"),
    ] {
        let e = err(&config(vec![accelerator("tensorrt", &[(key, value)])], &[]));
        assert!(e.contains(key) && e.contains(says), "{key}={value}: {e}");
    }
    // Off is fine.
    let off = config(vec![accelerator("tensorrt", &[("trt_cuda_graph_enable", "0")])], &[]);
    assert!(parse(&off).is_ok());
}

#[test]
fn cuda_accelerator_takes_documented_options() -> Result<(), OrtBackendError> {
    let cuda = accelerator(
        "cuda",
        &[
            ("cudnn_conv_use_max_workspace", "0"),
            ("use_ep_level_unified_stream", "True"),
            ("cudnn_conv_algo_search", "HEURISTIC"),
            ("arena_extend_strategy", "kSameAsRequested"),
            ("gpu_mem_limit", "2147483648"),
            ("device_id", "3"),
        ],
    );
    let gpu = parse(&config(vec![cuda], &[]))?;
    assert_eq!(
        gpu.cuda,
        map(&[
            ("cudnn_conv_use_max_workspace", "0"),
            ("use_ep_level_unified_stream", "1"),
            ("cudnn_conv_algo_search", "HEURISTIC"),
            ("arena_extend_strategy", "kSameAsRequested"),
            ("gpu_mem_limit", "2147483648"),
        ])
    );
    assert!(gpu.tensorrt.is_none());
    assert_eq!(gpu.cuda_options(2).last(), Some(&("device_id".to_string(), "2".to_string())));
    Ok(())
}

#[test]
fn conv_algo_search_defaults_to_heuristic_and_a_config_wins() -> Result<(), OrtBackendError> {
    let search = |gpu: &GpuSettings| {
        gpu.cuda_options(0)
            .into_iter()
            .filter(|(k, _)| k == "cudnn_conv_algo_search")
            .map(|(_, v)| v)
            .collect::<Vec<_>>()
    };
    assert_eq!(search(&parse(&config(vec![], &[]))?), vec!["HEURISTIC"]);
    assert_eq!(search(&parse(&config(vec![], &[("cudnn_conv_algo_search", "0")]))?), vec!["EXHAUSTIVE"]);
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
        ("", "1", "unknown parameter"),
        ("some_future_option", "x", "unknown parameter"),
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
    let gpu = parse(&config(vec![cuda], &params))?;
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
        let gpu = parse(&config(vec![], &[("cudnn_conv_algo_search", &i.to_string())]))?;
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

#[test]
fn security_md_documents_every_key() {
    let doc = include_str!("../../../../docs/security.md");
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Execution accelerator parameters"))
        .unwrap_or_else(|| panic!("docs/security.md has no section \"Execution accelerator parameters\""));
    let named = |k: &str| section.contains(&format!("`{k}`"));
    for k in TRT_KEYS.iter().chain(CUDA_KEYS) {
        assert!(named(k.name), "docs/security.md does not document `{}`", k.name);
    }
    for (k, _, _) in LEGACY_CUDA_PARAMETERS {
        assert!(named(k), "docs/security.md does not document `{k}`");
    }
    assert!(named("precision_mode") && named("--accelerator-cache-dir"));
}
