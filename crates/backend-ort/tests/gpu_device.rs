//! On a machine with an NVIDIA GPU and ONNX Runtime's GPU build: placement, CUDA provider
//! options reaching ORT, and sessions on the GPU giving the CPU's answers. Ignored by default
//! (CI has no GPU); `make test-gpu` (scripts/test_gpu.sh) runs them with `--ignored`, with
//! `ORT_DYLIB_PATH` on the GPU build and `TERN_EXAMPLES_REPO` on the example model repository.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use bytes::Bytes;
use common::runtime;
use tern_backend::Backend;
use tern_backend_ort::{
    Device, OrtBackend, SessionSettings, instance_plan, placed_instance_groups, session_settings,
};
use tern_core::{DataType, Tensor};
use tern_proto::inference::model_instance_group::Kind;
use tern_proto::inference::model_optimization_policy::ExecutionAccelerators;
use tern_proto::inference::model_optimization_policy::execution_accelerators::Accelerator;
use tern_proto::inference::{ModelConfig, ModelInstanceGroup, ModelOptimizationPolicy, ModelParameter};

fn example(name: &str) -> PathBuf {
    let repo = std::env::var_os("TERN_EXAMPLES_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/model_repository"));
    let path = repo.join(name).join("1/model.onnx");
    assert!(
        path.is_file(),
        "{} is missing: build the examples (make examples) or set TERN_EXAMPLES_REPO",
        path.display()
    );
    path
}

fn group(kind: Kind, count: i32, gpus: &[i32]) -> ModelInstanceGroup {
    ModelInstanceGroup { kind: kind as i32, count, gpus: gpus.to_vec(), ..Default::default() }
}

fn config(groups: Vec<ModelInstanceGroup>, cuda: &[(&str, &str)], params: &[(&str, &str)]) -> ModelConfig {
    let cuda: HashMap<String, String> = cuda.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    ModelConfig {
        name: "m".to_string(),
        instance_group: groups,
        optimization: (!cuda.is_empty()).then(|| ModelOptimizationPolicy {
            execution_accelerators: Some(ExecutionAccelerators {
                gpu_execution_accelerator: vec![Accelerator { name: "cuda".to_string(), parameters: cuda }],
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

fn plans_for(config: &ModelConfig) -> Vec<tern_backend_ort::InstancePlan> {
    let base = match session_settings(config) {
        Ok(s) => s,
        Err(e) => panic!("settings: {e}"),
    };
    match instance_plan(config, &base, false) {
        Ok(p) => p,
        Err(e) => panic!("plan: {e}"),
    }
}

fn load(path: &std::path::Path, settings: &SessionSettings) -> OrtBackend {
    match OrtBackend::load(path, settings) {
        Ok(b) => b,
        Err(e) => panic!("load {} on {:?}: {e}", path.display(), settings.device),
    }
}

/// Batch 4 of distinct images for resnet50_random.
fn images() -> Tensor {
    let n = 4 * 3 * 224 * 224;
    let data: Vec<u8> = (0..n).flat_map(|i| ((i as f32 * 0.0007).sin() * 0.5 + 0.5).to_le_bytes()).collect();
    Tensor {
        name: "input".into(),
        datatype: DataType::Fp32,
        shape: vec![4, 3, 224, 224],
        data: Bytes::from(data),
    }
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0., f32::max)
}

fn run(backend: &mut OrtBackend, inputs: Vec<Tensor>) -> Vec<Tensor> {
    match backend.infer(inputs, &[]) {
        Ok(o) => o,
        Err(e) => panic!("infer: {e}"),
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and ONNX Runtime's GPU build: make test-gpu"]
fn kind_auto_and_kind_gpu_land_on_the_gpu() {
    runtime();
    let auto = config(vec![group(Kind::Auto, 0, &[])], &[], &[]);
    let plans = plans_for(&auto);
    assert!(!plans.is_empty());
    assert!(plans.iter().all(|p| matches!(p.device, Device::Cuda { .. }) && !p.fallback), "{plans:?}");
    assert_eq!(plans[0].label, "GPU 0");
    let placed = placed_instance_groups(&auto, &plans);
    assert_eq!((placed[0].kind, placed[0].count), (Kind::Gpu as i32, 1));

    let two = config(vec![group(Kind::Gpu, 2, &[0]), group(Kind::Cpu, 1, &[])], &[], &[]);
    let plans = plans_for(&two);
    let labels: Vec<_> = plans.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["GPU 0", "GPU 0", "CPU"]);
    let model = example("resnet50_random");
    let mut backends: Vec<OrtBackend> = plans.iter().map(|p| load(&model, &p.settings)).collect();
    let outputs: Vec<Vec<f32>> = backends.iter_mut().map(|b| f32s(&run(b, vec![images()])[0])).collect();
    // Two GPU sessions agree exactly; the GPU agrees with the CPU within TF32 error.
    assert_eq!(outputs[0], outputs[1]);
    let d = max_diff(&outputs[0], &outputs[2]);
    eprintln!("resnet50_random batch 4, GPU vs CPU: max |diff| {d:.2e}");
    assert!(d < 2e-3, "GPU vs CPU differ by {d}");
}

#[test]
#[ignore = "needs an NVIDIA GPU and ONNX Runtime's GPU build: make test-gpu"]
fn cuda_options_reach_ort() {
    runtime();
    let c = config(
        vec![group(Kind::Gpu, 1, &[0])],
        &[
            ("cudnn_conv_use_max_workspace", "1"),
            ("use_tf32", "0"),
            ("prefer_nhwc", "false"),
            ("use_ep_level_unified_stream", "1"),
        ],
        &[
            ("cudnn_conv_algo_search", "1"),
            ("gpu_mem_limit", "4294967296"),
            ("arena_extend_strategy", "1"),
            ("do_copy_in_default_stream", "1"),
        ],
    );
    let plans = plans_for(&c);
    let cuda = &plans[0].settings.gpu.cuda;
    assert_eq!(cuda.get("cudnn_conv_algo_search").map(String::as_str), Some("HEURISTIC"));
    let model = example("resnet50_random");
    let mut gpu = load(&model, &plans[0].settings);
    let mut cpu = load(&model, &SessionSettings::default());
    let d = max_diff(&f32s(&run(&mut gpu, vec![images()])[0]), &f32s(&run(&mut cpu, vec![images()])[0]));
    eprintln!("with use_tf32=0, HEURISTIC: GPU vs CPU max |diff| {d:.2e}");
    assert!(d < 1e-4, "without TF32 the GPU should match the CPU closely, got {d}");
}

#[test]
fn a_cuda_option_tern_does_not_know_is_refused_before_ort_sees_it() {
    // Checked when the settings are read, so no GPU is needed (tests/accelerator_policy.rs has the rest).
    let c = config(vec![group(Kind::Gpu, 1, &[0])], &[("no_such_cuda_option", "1")], &[]);
    let e = session_settings(&c).err().map(|e| e.to_string());
    assert!(
        e.as_ref().is_some_and(|e| e.contains("no_such_cuda_option") && e.contains("unknown parameter")),
        "{e:?}"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU and ONNX Runtime's GPU build: make test-gpu"]
fn bad_gpu_ids_are_errors() {
    runtime();
    let c = config(vec![group(Kind::Gpu, 1, &[64])], &[], &[]);
    let base = SessionSettings::default();
    let err = instance_plan(&c, &base, true).err().map(|e| e.to_string());
    assert!(
        err.as_ref().is_some_and(|e| e.contains("gpu id 64") && e.contains("visible GPUs are: 0")),
        "{err:?}"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU and ONNX Runtime's GPU build: make test-gpu"]
fn every_example_datatype_runs_on_the_gpu() {
    runtime();
    let plans = plans_for(&config(vec![group(Kind::Gpu, 1, &[0])], &[], &[]));
    let settings = &plans[0].settings;
    // FP16 and FP32 arithmetic on CUDA kernels; strings through ORT's CPU fallback for the nodes
    // CUDA has no kernel for, in the same session.
    let fp16: Vec<u8> = (0..16u16).flat_map(|i| half::f16::from_f32(f32::from(i)).to_le_bytes()).collect();
    let mut add = load(&example("add_fp16"), settings);
    let t = |name: &str| Tensor {
        name: name.into(),
        datatype: DataType::Fp16,
        shape: vec![1, 16],
        data: Bytes::from(fp16.clone()),
    };
    let out = run(&mut add, vec![t("INPUT0"), t("INPUT1")]);
    let sum: Vec<f32> =
        out[0].data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
    assert_eq!(sum, (0..16).map(|i| 2.0 * i as f32).collect::<Vec<_>>());

    let mut strings = load(&example("identity_string"), settings);
    let mut data = Vec::new();
    for s in [&b"gpu"[..], b"", b"a\0b", b"\xff"].iter().cycle().take(16) {
        data.extend_from_slice(&(s.len() as u32).to_le_bytes());
        data.extend_from_slice(s);
    }
    let input = Tensor {
        name: "INPUT0".into(),
        datatype: DataType::Bytes,
        shape: vec![1, 16],
        data: Bytes::from(data.clone()),
    };
    let out = run(&mut strings, vec![input]);
    assert_eq!(out[0].data, Bytes::from(data));
}
