//! On a machine with an NVIDIA GPU and ONNX Runtime's GPU build: placement, CUDA provider
//! options reaching ORT, and sessions on the GPU giving the CPU's answers, each checked so that
//! a session that silently ran on the CPU fails (GPU results differ from the CPU's in the last
//! bits; CUDA options change them measurably). `make test-gpu` (scripts/test_gpu.sh) runs them
//! with `ORT_DYLIB_PATH` on the GPU build, `TERN_EXAMPLES_REPO` on the example model repository
//! and `TERN_REQUIRE_GPU=1`.
//!
//! Where no GPU is usable (CI, `cargo test` with the CPU build) each test says on stderr that
//! its GPU checks are NOT APPLICABLE, and why, and checks instead what the same config really
//! gets there: KIND_GPU is a load error naming the reason, `--allow-cpu-fallback` gives CPU
//! sessions labelled as a fallback that compute the right answer. It fails instead when
//! `TERN_REQUIRE_GPU=1`, or when the NVIDIA driver shows a GPU and the GPU build of ONNX
//! Runtime is loaded but CUDA is still unusable (a broken CUDA path on a GPU machine).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use common::{model, runtime};
use tern_backend::Backend;
use tern_backend_ort::{
    Device, OrtBackend, OrtBackendError, SessionSettings, instance_plan, placed_instance_groups,
    session_settings,
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

/// NVIDIA GPUs as the driver lists them, whatever ONNX Runtime and the CUDA libraries can do.
fn driver_gpus() -> usize {
    let listed = std::fs::read_dir("/proc/driver/nvidia/gpus").map(|d| d.count()).unwrap_or(0);
    let nodes = (0..16).filter(|i| std::path::Path::new(&format!("/dev/nvidia{i}")).exists()).count();
    listed.max(nodes)
}

/// Whether the GPU checks of `test` apply here (see the module docs). When they do not, says
/// so on stderr, checks `config`'s CPU side ([`assert_cpu_side`]) and returns false.
fn gpu_applies(test: &str, config: &ModelConfig) -> bool {
    runtime();
    let probe = config_plans(&self::config(vec![group(Kind::Gpu, 1, &[0])], &[], &[]), false);
    let reason = match probe {
        Ok(plans) if plans.iter().all(|p| matches!(p.device, Device::Cuda { .. }) && !p.fallback) => {
            return true;
        }
        Ok(plans) => panic!("{test}: KIND_GPU planned off the GPU without a fallback allowed: {plans:?}"),
        Err(e) => e.to_string(),
    };
    let require = std::env::var("TERN_REQUIRE_GPU").is_ok_and(|v| v == "1");
    assert!(!require, "{test}: TERN_REQUIRE_GPU=1 but no GPU is usable: {reason}");
    let gpus = driver_gpus();
    assert!(
        gpus == 0 || reason.contains("(CPU build)"),
        "{test}: the NVIDIA driver lists {gpus} GPU(s) and ONNX Runtime is its GPU build, but CUDA is unusable: {reason}"
    );
    // Straight to stderr, not eprintln!: the test harness captures that, and this line must show
    // in every run's log.
    let _ = writeln!(
        std::io::stderr(),
        "{test}: GPU checks NOT APPLICABLE on this machine ({reason}); checked the CPU side of the same \
         config instead (TERN_REQUIRE_GPU=1 makes this a failure)"
    );
    assert_cpu_side(config);
    false
}

fn config_plans(
    config: &ModelConfig,
    allow_cpu_fallback: bool,
) -> Result<Vec<tern_backend_ort::InstancePlan>, OrtBackendError> {
    instance_plan(config, &session_settings(config)?, allow_cpu_fallback)
}

/// Where no GPU is usable: a config with a KIND_GPU group does not plan (an error naming
/// KIND_GPU and why), with the fallback allowed every GPU instance is a CPU session labelled as
/// a fallback, KIND_AUTO is plain CPU, and every planned session computes the right sum.
fn assert_cpu_side(config: &ModelConfig) {
    let wants_gpu = config.instance_group.iter().any(|g| g.kind == Kind::Gpu as i32);
    match config_plans(config, false) {
        Ok(plans) => assert!(!wants_gpu, "KIND_GPU planned without a GPU: {plans:?}"),
        Err(e) => {
            assert!(wants_gpu, "{e}");
            assert!(
                matches!(e, OrtBackendError::GpuUnavailable { .. }) && e.to_string().contains("KIND_GPU"),
                "{e:?}"
            );
        }
    }
    let plans = config_plans(config, true).unwrap_or_else(|e| panic!("with the CPU fallback allowed: {e}"));
    assert!(!plans.is_empty());
    for plan in &plans {
        assert_eq!(plan.device, Device::Cpu, "{plan:?}");
        assert_eq!(plan.fallback, plan.label.starts_with("CPU (fallback from GPU"), "{plan:?}");
        let mut b = load(&model("add_sub_FP32"), &plan.settings);
        let t = |name: &str, v: [f32; 4]| Tensor {
            name: name.into(),
            datatype: DataType::Fp32,
            shape: vec![4],
            data: Bytes::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()),
        };
        let out = run(&mut b, vec![t("INPUT0", [1., 2., 3., 4.]), t("INPUT1", [10., 20., 30., 40.])]);
        let sum = out.iter().find(|o| o.name == "OUTPUT0").expect("OUTPUT0");
        assert_eq!(f32s(sum), [11., 22., 33., 44.], "{}", plan.label);
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
fn kind_auto_and_kind_gpu_land_on_the_gpu() {
    let auto = config(vec![group(Kind::Auto, 0, &[])], &[], &[]);
    let two = config(vec![group(Kind::Gpu, 2, &[0]), group(Kind::Cpu, 1, &[])], &[], &[]);
    if !gpu_applies("kind_auto_and_kind_gpu_land_on_the_gpu", &auto) {
        assert_cpu_side(&two);
        return;
    }
    let plans = plans_for(&auto);
    assert!(!plans.is_empty());
    assert!(plans.iter().all(|p| matches!(p.device, Device::Cuda { .. }) && !p.fallback), "{plans:?}");
    assert_eq!(plans[0].label, "GPU 0");
    let placed = placed_instance_groups(&auto, &plans);
    assert_eq!((placed[0].kind, placed[0].count), (Kind::Gpu as i32, 1));

    let plans = plans_for(&two);
    let labels: Vec<_> = plans.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["GPU 0", "GPU 0", "CPU"]);
    let model = example("resnet50_random");
    let mut backends: Vec<OrtBackend> = plans.iter().map(|p| load(&model, &p.settings)).collect();
    let outputs: Vec<Vec<f32>> = backends.iter_mut().map(|b| f32s(&run(b, vec![images()])[0])).collect();
    // Two GPU sessions agree exactly; the GPU agrees with the CPU within TF32 error, but not
    // bit for bit: cuDNN's convolutions (TF32 by default) sum in another order than the CPU's,
    // so identical outputs mean the "GPU" sessions ran on the CPU.
    assert_eq!(outputs[0], outputs[1]);
    let d = max_diff(&outputs[0], &outputs[2]);
    eprintln!("resnet50_random batch 4, GPU vs CPU: max |diff| {d:.2e}");
    assert!(d < 2e-3, "GPU vs CPU differ by {d}");
    assert!(d > 0.0, "the GPU sessions' outputs equal the CPU's bit for bit: they did not run on the GPU");
}

#[test]
fn cuda_options_reach_ort() {
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
    if !gpu_applies("cuda_options_reach_ort", &c) {
        return;
    }
    let plans = plans_for(&c);
    let cuda = &plans[0].settings.gpu.cuda;
    assert_eq!(cuda.get("cudnn_conv_algo_search").map(String::as_str), Some("HEURISTIC"));
    let model = example("resnet50_random");
    let mut gpu = load(&model, &plans[0].settings);
    let mut cpu = load(&model, &SessionSettings::default());
    let cpu_out = f32s(&run(&mut cpu, vec![images()])[0]);
    let d = max_diff(&f32s(&run(&mut gpu, vec![images()])[0]), &cpu_out);
    // CUDA's defaults (TF32 convolutions): benches/RESULTS.md measured 1.25e-4 against 3.4e-7
    // with use_tf32=0, so an option that never reached ORT shows as the larger error.
    let defaults = plans_for(&config(vec![group(Kind::Gpu, 1, &[0])], &[], &[]));
    let tf32 = max_diff(&f32s(&run(&mut load(&model, &defaults[0].settings), vec![images()])[0]), &cpu_out);
    eprintln!("GPU vs CPU max |diff|: use_tf32=0 + HEURISTIC {d:.2e}, CUDA defaults {tf32:.2e}");
    assert!(d < 1e-4, "without TF32 the GPU should match the CPU closely, got {d}");
    assert!(d > 0.0, "the GPU session's outputs equal the CPU's bit for bit: it did not run on the GPU");
    assert!(
        tf32 > 10.0 * d,
        "use_tf32=0 changed nothing ({d:.2e} vs {tf32:.2e} with TF32): it did not reach ORT"
    );
}

#[test]
fn a_cuda_option_tern_does_not_know_is_refused_before_ort_sees_it() {
    // Checked when the settings are read, so no GPU is needed (tests/cpu/accelerator_policy.rs has the rest).
    let c = config(vec![group(Kind::Gpu, 1, &[0])], &[("no_such_cuda_option", "1")], &[]);
    let e = session_settings(&c).err().map(|e| e.to_string());
    assert!(
        e.as_ref().is_some_and(|e| e.contains("no_such_cuda_option") && e.contains("unknown parameter")),
        "{e:?}"
    );
}

/// An error that names the option `key`: a refusal of the config (before ORT) or the CUDA
/// provider's (ORT's ProviderOptionsParser: `Unknown provider option: "<key>".`).
fn assert_names_option(key: &str, settings: Result<SessionSettings, OrtBackendError>, device: Device) {
    let settings = match settings {
        Err(e) => {
            return assert!(e.to_string().contains(key), "the config was refused without naming {key}: {e}");
        }
        Ok(s) => SessionSettings { device, ..s },
    };
    match OrtBackend::load(&example("add_fp32"), &settings) {
        Ok(_) => panic!("a session with the unknown CUDA option {key} loaded: the option never reached ORT"),
        Err(e) => {
            assert!(matches!(e, OrtBackendError::Provider { provider: "CUDA", .. }), "{e:?}");
            eprintln!("unknown CUDA option: {e}");
        }
    }
}

#[test]
fn a_cuda_option_ort_does_not_know_is_a_clean_load_error() {
    let key = "no_such_cuda_option";
    let c = config(vec![group(Kind::Gpu, 1, &[0])], &[(key, "1")], &[]);
    if !gpu_applies("a_cuda_option_ort_does_not_know_is_a_clean_load_error", &config(vec![], &[], &[])) {
        // A session forced onto CUDA with the option is still an error, never a CPU session.
        return assert_names_option(key, session_settings(&c), Device::Cuda { device_id: 0 });
    }
    // The same model on GPU 0 without the option loads and adds, so the error below is the
    // option's, not a broken CUDA path's.
    let plain = plans_for(&config(vec![group(Kind::Gpu, 1, &[0])], &[], &[]));
    let mut add = load(&example("add_fp32"), &plain[0].settings);
    let ones = Tensor {
        name: "INPUT0".into(),
        datatype: DataType::Fp32,
        shape: vec![1, 16],
        data: Bytes::from(1f32.to_le_bytes().repeat(16)),
    };
    let out = run(&mut add, vec![ones.clone(), Tensor { name: "INPUT1".into(), ..ones }]);
    assert_eq!(f32s(out.iter().find(|o| o.name == "OUTPUT0").expect("OUTPUT0")), [2.0; 16]);
    let settings = session_settings(&c).and_then(|base| {
        let plans = instance_plan(&c, &base, false)?;
        Ok(plans[0].settings.clone())
    });
    assert_names_option(key, settings, Device::Cuda { device_id: 0 });
}

#[test]
fn bad_gpu_ids_are_errors() {
    let c = config(vec![group(Kind::Gpu, 1, &[64])], &[], &[]);
    if !gpu_applies("bad_gpu_ids_are_errors", &c) {
        return;
    }
    let base = SessionSettings::default();
    let err = instance_plan(&c, &base, true).err().map(|e| e.to_string());
    assert!(
        err.as_ref().is_some_and(|e| e.contains("gpu id 64") && e.contains("visible GPUs are: 0")),
        "{err:?}"
    );
}

#[test]
fn every_example_datatype_runs_on_the_gpu() {
    let c = config(vec![group(Kind::Gpu, 1, &[0])], &[], &[]);
    if !gpu_applies("every_example_datatype_runs_on_the_gpu", &c) {
        return;
    }
    let plans = plans_for(&c);
    assert!(matches!(plans[0].device, Device::Cuda { device_id: 0 }) && !plans[0].fallback, "{plans:?}");
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

/// `images()` with every value shifted: a second, different batch of 4.
fn other_images() -> Tensor {
    let t = images();
    let data: Vec<u8> = f32s(&t).iter().flat_map(|v| (1.0 - v).to_le_bytes()).collect();
    Tensor { data: Bytes::from(data), ..t }
}

#[test]
fn io_binding_and_cuda_graphs_give_the_unbound_answers_on_the_gpu() {
    // Issue 25: buckets through an IO binding (pinned staging, device buffers reused), with and
    // without one CUDA graph per bucket, against the same GPU without a binding. Two different
    // batches in turn: a graph replayed on stale buffers would answer the first for the second.
    let c = config(vec![group(Kind::Gpu, 1, &[0])], &[], &[]);
    if !gpu_applies("io_binding_and_cuda_graphs_give_the_unbound_answers_on_the_gpu", &c) {
        return;
    }
    let plans = plans_for(&c);
    let model = example("resnet50_random");
    let buckets = vec![1, 2, 4, 8];
    let mut plain =
        load(&model, &plans[0].settings).with_batch_buckets(buckets.clone()).with_io_binding(false);
    let mut bound =
        load(&model, &plans[0].settings).with_batch_buckets(buckets.clone()).with_io_binding(true);
    let graph_settings = SessionSettings { cuda_graphs: true, ..plans[0].settings.clone() };
    assert!(graph_settings.uses_cuda_graphs());
    let mut graphs = load(&model, &graph_settings).with_batch_buckets(buckets).with_io_binding(false);
    assert!(
        !plain.io_binding() && bound.io_binding() && graphs.io_binding(),
        "graphs bind even when io_binding is off"
    );
    let expected: Vec<Vec<f32>> =
        [images(), other_images()].map(|i| f32s(&run(&mut plain, vec![i])[0])).to_vec();
    assert!(max_diff(&expected[0], &expected[1]) > 1e-3, "the two batches must answer differently");
    for (name, backend) in [("io binding", &mut bound), ("io binding + CUDA graphs", &mut graphs)] {
        let mut address = None;
        for round in 0..3 {
            for (i, input) in [images(), other_images()].into_iter().enumerate() {
                let out = run(backend, vec![input]);
                let d = max_diff(&f32s(&out[0]), &expected[i]);
                eprintln!("{name}, round {round}, batch {i}: max |diff| vs unbound {d:.2e}");
                assert!(d < 1e-5, "{name}: batch {i} differs from the unbound run by {d}");
                // Dropped before the next run: the same pinned output buffer each time.
                let here = out[0].data.as_ptr() as usize;
                assert_eq!(*address.get_or_insert(here), here, "{name}: the output buffer moved");
            }
        }
    }
}
