//! What a model config may hand the CUDA and TensorRT execution providers: only documented keys
//! with typed, bounded values; never a raw address or a library to load; paths only inside the
//! model's directory or its accelerator cache directory; nothing that writes an encrypted
//! model's weights to disk. All of it is checked before any provider is registered, so these
//! run on the CPU-only library too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tern_backend_ort::{AcceleratorScope, OrtBackendError, session_settings, session_settings_for};
use tern_proto::inference::model_optimization_policy::ExecutionAccelerators;
use tern_proto::inference::model_optimization_policy::execution_accelerators::Accelerator;
use tern_proto::inference::{ModelConfig, ModelOptimizationPolicy, ModelParameter};

fn config(accelerator: &str, params: &[(&str, &str)]) -> ModelConfig {
    ModelConfig {
        name: "m".to_string(),
        optimization: Some(ModelOptimizationPolicy {
            execution_accelerators: Some(ExecutionAccelerators {
                gpu_execution_accelerator: vec![Accelerator {
                    name: accelerator.to_string(),
                    parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                }],
                cpu_execution_accelerator: vec![],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn refusal(result: Result<tern_backend_ort::SessionSettings, OrtBackendError>) -> String {
    match result {
        Ok(s) => panic!("expected a refusal, got {:?}", s.gpu),
        Err(e) => e.to_string(),
    }
}

/// The message names the accelerator, the key and the reason.
fn assert_refused(accelerator: &str, params: &[(&str, &str)], key: &str, says: &str) {
    let e = refusal(session_settings(&config(accelerator, params)));
    assert!(
        e.contains(&format!("'{accelerator}'")) && e.contains(key) && e.contains(says),
        "{accelerator} {key}: want {says:?} in {e}"
    );
}

#[test]
fn raw_addresses_are_refused() {
    for key in ["gpu_external_alloc", "gpu_external_free", "gpu_external_empty_cache", "user_compute_stream"]
    {
        assert_refused("cuda", &[(key, "140737488355328")], key, "raw address");
    }
    assert_refused(
        "cuda",
        &[("default_memory_arena_cfg", "4096")],
        "default_memory_arena_cfg",
        "raw address",
    );
    assert_refused("tensorrt", &[("user_compute_stream", "4096")], "user_compute_stream", "raw address");
}

#[test]
fn native_code_is_refused() {
    for value in ["/tmp/evil.so", "libnvinfer_plugin.so", ""] {
        assert_refused(
            "tensorrt",
            &[("trt_extra_plugin_lib_paths", value)],
            "trt_extra_plugin_lib_paths",
            "loads native code",
        );
    }
    assert_refused(
        "tensorrt",
        &[("trt_engine_decryption_lib_path", "/tmp/d.so")],
        "trt_engine_decryption_lib_path",
        "loads native code",
    );
}

#[test]
fn unknown_keys_are_refused() {
    // Triton passes unknown `cuda` keys to ORT; Tern allows only the documented ones.
    assert_refused("cuda", &[("some_future_option", "1")], "some_future_option", "unknown parameter");
    assert_refused("cuda", &[("has_user_compute_stream", "1")], "has_user_compute_stream", "raw address");
    assert_refused("tensorrt", &[("trt_fp16_enable", "1")], "trt_fp16_enable", "unknown parameter");
}

#[test]
fn values_are_typed_and_bounded() {
    for (accelerator, key, value, says) in [
        ("cuda", "gpu_mem_limit", "4611686018427387904", "at most"),
        ("cuda", "gpu_mem_limit", "0", "at least"),
        ("cuda", "gpu_mem_limit", "lots", "byte count"),
        ("cuda", "sdpa_kernel", "1024", "0 to 511"),
        ("cuda", "tunable_op_max_tuning_duration_ms", "-1", "0 to"),
        ("cuda", "do_copy_in_default_stream", "maybe", "true, false"),
        ("cuda", "cudnn_conv_algo_search", "FASTEST", "EXHAUSTIVE, HEURISTIC, DEFAULT"),
        ("tensorrt", "max_workspace_size_bytes", "18446744073709551615", "at most"),
        ("tensorrt", "trt_builder_optimization_level", "9", "0 to 5"),
        ("tensorrt", "trt_auxiliary_streams", "-2", "-1 to"),
        ("tensorrt", "trt_dla_core", "99", "0 to"),
        ("tensorrt", "trt_max_partition_iterations", "0", "1 to"),
        ("tensorrt", "trt_ep_context_embed_mode", "2", "0 to 1"),
        ("tensorrt", "trt_tactic_sources", "-CUDNN,+EVIL", "tactic source"),
        ("tensorrt", "trt_profile_min_shapes", "input:1x3x;rm -rf", "shapes"),
        ("tensorrt", "trt_engine_cache_prefix", "../other", "plain file name"),
        ("tensorrt", "int8_calibration_table_name", "/etc/passwd", "plain file name"),
    ] {
        assert_refused(accelerator, &[(key, value)], key, says);
    }
    // Triton's ParseBoolValue spellings, and the allowed values of each kind, pass.
    let ok = session_settings(&config(
        "tensorrt",
        &[
            ("trt_dla_enable", "on"),
            ("trt_sparsity_enable", "OFF"),
            ("trt_builder_optimization_level", "5"),
            ("trt_auxiliary_streams", "-1"),
            ("trt_tactic_sources", "-CUDNN,+CUBLAS_LT"),
            ("trt_profile_opt_shapes", "input:8x3x224x224,mask:8x128"),
            ("max_workspace_size_bytes", "2147483648"),
        ],
    ));
    let trt = ok.map(|s| s.gpu.tensorrt.map(|t| t.options)).ok().flatten().unwrap_or_default();
    assert_eq!(trt.get("trt_dla_enable").map(String::as_str), Some("1"), "{trt:?}");
    assert_eq!(trt.get("trt_sparsity_enable").map(String::as_str), Some("0"), "{trt:?}");
    assert_eq!(trt.len(), 7, "{trt:?}");
}

#[test]
fn dumps_to_the_working_directory_are_refused() {
    assert_refused("tensorrt", &[("trt_dump_subgraphs", "1")], "trt_dump_subgraphs", "working directory");
    // Caches with no directory would land in the working directory too.
    for key in ["trt_engine_cache_enable", "trt_timing_cache_enable", "trt_dump_ep_context_model"] {
        assert_refused("tensorrt", &[(key, "1")], key, "--accelerator-cache-dir");
    }
    assert!(session_settings(&config("tensorrt", &[("trt_dump_subgraphs", "false")])).is_ok());
}

// --- paths ----------------------------------------------------------------------------------

struct Dirs {
    _tmp: tempfile::TempDir,
    model_dir: PathBuf,
    cache: PathBuf,
    outside: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let base = std::fs::canonicalize(tmp.path()).unwrap_or_else(|e| panic!("canonicalize: {e}"));
    let (model_dir, cache, outside) = (base.join("repo/m"), base.join("cache"), base.join("outside"));
    for d in [&model_dir, &cache, &outside] {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
    }
    Dirs { _tmp: tmp, model_dir, cache, outside }
}

fn scope(d: &Dirs, encrypted: bool) -> AcceleratorScope {
    AcceleratorScope {
        model: "m".to_string(),
        model_dir: Some(d.model_dir.clone()),
        cache_dir: Some(d.cache.clone()),
        encrypted,
    }
}

fn trt_options(
    scope: &AcceleratorScope,
    params: &[(&str, &str)],
) -> Result<HashMap<String, String>, OrtBackendError> {
    let s = session_settings_for(&config("tensorrt", params), scope)?;
    Ok(s.gpu.tensorrt.map(|t| t.options.into_iter().collect()).unwrap_or_default())
}

fn path_of(options: &HashMap<String, String>, key: &str) -> PathBuf {
    PathBuf::from(options.get(key).unwrap_or_else(|| panic!("{key} not set in {options:?}")))
}

#[test]
fn paths_resolve_inside_the_model_cache_directory() -> Result<(), OrtBackendError> {
    let d = dirs();
    let s = scope(&d, false);
    // A cache with no path gets <cache dir>/<model>; relative paths resolve there.
    let o = trt_options(&s, &[("trt_engine_cache_enable", "1")])?;
    assert_eq!(path_of(&o, "trt_engine_cache_path"), d.cache.join("m"));
    let o = trt_options(
        &s,
        &[
            ("trt_engine_cache_enable", "true"),
            ("trt_engine_cache_path", "engines/fp16"),
            ("trt_timing_cache_enable", "1"),
            ("trt_timing_cache_path", "./timing"),
            ("trt_dump_ep_context_model", "1"),
            ("trt_ep_context_file_path", "ctx/m_ctx.onnx"),
            ("trt_engine_cache_prefix", "m_v1"),
        ],
    )?;
    assert_eq!(path_of(&o, "trt_engine_cache_path"), d.cache.join("m/engines/fp16"));
    assert_eq!(path_of(&o, "trt_timing_cache_path"), d.cache.join("m/timing"));
    assert_eq!(path_of(&o, "trt_ep_context_file_path"), d.cache.join("m/ctx/m_ctx.onnx"));
    // Absolute paths inside the model's directory (engines shipped with the model) are fine.
    let shipped = d.model_dir.join("engines");
    let o = trt_options(&s, &[("trt_engine_cache_path", &shipped.display().to_string())])?;
    assert_eq!(path_of(&o, "trt_engine_cache_path"), shipped);
    Ok(())
}

#[test]
fn paths_may_not_escape() {
    let d = dirs();
    let s = scope(&d, false);
    let refused = |key: &str, value: &str, says: &str| {
        let e = match trt_options(&s, &[("trt_engine_cache_enable", "1"), (key, value)]) {
            Ok(o) => panic!("{key}={value}: expected a refusal, got {o:?}"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("'tensorrt'") && e.contains(key) && e.contains(says), "{key}={value}: {e}");
    };
    refused("trt_engine_cache_path", "../escape", "..");
    refused("trt_engine_cache_path", "a/../../b", "..");
    refused("trt_engine_cache_path", "/etc", "outside");
    refused("trt_engine_cache_path", &d.outside.display().to_string(), "outside");
    // Another model's cache directory is outside this model's.
    refused("trt_engine_cache_path", &d.cache.join("other").display().to_string(), "outside");
    refused("trt_timing_cache_path", &d.outside.join("t").display().to_string(), "outside");
    refused("trt_engine_cache_path", "a\nb", "control character");
    // The EP context model is an ONNX file: never into the model directory (it could replace a version).
    refused("trt_ep_context_file_path", &d.model_dir.join("1/model.onnx").display().to_string(), "outside");
    // A symlink inside the cache directory that leads out is followed, then refused.
    let link = d.cache.join("m");
    std::os::unix::fs::symlink(&d.outside, &link).unwrap_or_else(|e| panic!("symlink: {e}"));
    refused("trt_engine_cache_path", "engines", "outside");
    let e = match trt_options(&s, &[("trt_engine_cache_enable", "1")]) {
        Ok(o) => panic!("a symlinked model cache directory must be refused, got {o:?}"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("outside"), "{e}");
}

#[test]
fn without_a_model_directory_or_cache_dir_no_path_is_allowed() {
    let d = dirs();
    // An uploaded model: its directory is the client's, so it is no root.
    let upload = AcceleratorScope { model_dir: None, ..scope(&d, false) };
    let inside_model = d.model_dir.join("engines").display().to_string();
    assert!(trt_options(&upload, &[("trt_engine_cache_path", &inside_model)]).is_err());
    assert!(trt_options(&upload, &[("trt_engine_cache_path", "engines")]).is_ok());
    // No --accelerator-cache-dir: relative paths have nowhere to resolve.
    let no_cache = AcceleratorScope { cache_dir: None, ..scope(&d, false) };
    let e = trt_options(&no_cache, &[("trt_engine_cache_path", "engines")]).err().map(|e| e.to_string());
    assert!(e.as_ref().is_some_and(|e| e.contains("--accelerator-cache-dir")), "{e:?}");
    assert!(trt_options(&no_cache, &[("trt_engine_cache_path", &inside_model)]).is_ok());
}

#[test]
fn encrypted_models_write_no_engine_to_disk() {
    let d = dirs();
    let s = scope(&d, true);
    for (key, value) in [("trt_engine_cache_enable", "1"), ("trt_dump_ep_context_model", "1")] {
        let e = match trt_options(&s, &[(key, value)]) {
            Ok(o) => panic!("{key}: expected a refusal for an encrypted model, got {o:?}"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(key) && e.contains("encrypted"), "{key}: {e}");
    }
    // The timing cache holds tactic timings, not weights; the engine cache off is fine too.
    let o = trt_options(&s, &[("trt_timing_cache_enable", "1"), ("trt_engine_cache_enable", "0")])
        .unwrap_or_else(|e| panic!("timing cache for an encrypted model: {e}"));
    assert_eq!(path_of(&o, "trt_engine_cache_path"), d.cache.join("m"));
    assert_eq!(o.get("trt_engine_cache_enable").map(String::as_str), Some("0"));
}

#[test]
fn each_model_has_its_own_cache_directory() {
    // The scope names the model (a config being auto-completed may have no name yet).
    let d = dirs();
    let s = AcceleratorScope { model: "other".into(), ..scope(&d, false) };
    let o = trt_options(&s, &[("trt_engine_cache_enable", "1")]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.get("trt_engine_cache_path").map(Path::new), Some(d.cache.join("other").as_path()));
    // ... and may not reach into model m's.
    let m = d.cache.join("m").display().to_string();
    assert!(trt_options(&s, &[("trt_engine_cache_path", &m)]).is_err());
}

#[test]
fn legacy_cuda_parameters_are_bounded_too() {
    let mut c = ModelConfig::default();
    c.parameters
        .insert("gpu_mem_limit".into(), ModelParameter { string_value: "4611686018427387904".into() });
    let e = refusal(session_settings(&c));
    assert!(e.contains("gpu_mem_limit") && e.contains("at most"), "{e}");
}
