//! GPU placement against the real (CPU-build) ONNX Runtime this machine has: the probe finds
//! no CUDA provider, KIND_AUTO lands on CPU, KIND_GPU is a clean error or a CPU fallback, and a
//! session forced onto a GPU is a clean provider error, never a silent CPU session or a crash.
//! `scripts/test_gpu.sh` checks the other side on a machine with a GPU.

use crate::common::{model, runtime};
use tern_backend_ort::{
    Device, GpuSettings, OrtBackend, OrtBackendError, SessionSettings, TensorRtOptions, instance_plan,
    session_settings,
};
use tern_proto::inference::model_instance_group::Kind;
use tern_proto::inference::{ModelConfig, ModelInstanceGroup};

fn config(kind: Kind, count: i32, gpus: &[i32]) -> ModelConfig {
    ModelConfig {
        name: "m".to_string(),
        instance_group: vec![ModelInstanceGroup {
            name: "m_0".to_string(),
            kind: kind as i32,
            count,
            gpus: gpus.to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn cpu_build() -> bool {
    // The library `make setup` installs is the CPU build; this test is about that one.
    !runtime().library.to_string_lossy().contains("gpu")
}

#[test]
fn kind_auto_is_cpu_on_this_machine() {
    runtime();
    assert!(cpu_build(), "this test expects the CPU build of ONNX Runtime");
    let base = SessionSettings::default();
    let plans = match instance_plan(&config(Kind::Auto, 1, &[]), &base, false) {
        Ok(p) => p,
        Err(e) => panic!("KIND_AUTO must plan on CPU: {e}"),
    };
    assert_eq!(plans.len(), 1);
    assert_eq!((plans[0].device, plans[0].label.as_str(), plans[0].fallback), (Device::Cpu, "CPU", false));
    // No instance group at all is KIND_AUTO too, with Triton's CPU count.
    let plans = instance_plan(&ModelConfig { name: "m".into(), ..Default::default() }, &base, false);
    assert_eq!(plans.map(|p| p.len()).ok(), Some(2));
}

#[test]
fn kind_gpu_is_unavailable_with_a_reason_or_falls_back() {
    runtime();
    let base = SessionSettings::default();
    let err = match instance_plan(&config(Kind::Gpu, 1, &[0]), &base, false) {
        Ok(p) => panic!("KIND_GPU on a CPU build must not plan: {p:?}"),
        Err(e) => e,
    };
    assert!(matches!(err, OrtBackendError::GpuUnavailable { .. }), "{err:?}");
    let msg = err.to_string();
    for part in
        ["KIND_GPU", "no CUDA execution provider (CPU build)", "make setup GPU=1", "--allow-cpu-fallback"]
    {
        assert!(msg.contains(part), "missing {part:?} in {msg}");
    }

    let plans = match instance_plan(&config(Kind::Gpu, 2, &[0]), &base, true) {
        Ok(p) => p,
        Err(e) => panic!("fallback allowed: {e}"),
    };
    assert_eq!(plans.len(), 2);
    for plan in &plans {
        assert_eq!(
            (plan.device, plan.label.as_str(), plan.fallback),
            (Device::Cpu, "CPU (fallback from GPU 0)", true)
        );
        // The fallback plan loads and runs.
        if let Err(e) = OrtBackend::load(&model("add_sub_FP32"), &plan.settings) {
            panic!("fallback session: {e}");
        }
    }
}

#[test]
fn tensorrt_config_on_a_cpu_build_still_plans_cpu_instances() -> Result<(), OrtBackendError> {
    runtime();
    let text = ModelConfig {
        optimization: Some(tern_proto::inference::ModelOptimizationPolicy {
            execution_accelerators: Some(
                tern_proto::inference::model_optimization_policy::ExecutionAccelerators {
                    gpu_execution_accelerator: vec![
                        tern_proto::inference::model_optimization_policy::execution_accelerators::Accelerator {
                            name: "tensorrt".into(),
                            parameters: [("precision_mode".to_string(), "FP16".to_string())].into(),
                        },
                    ],
                    cpu_execution_accelerator: vec![],
                },
            ),
            ..Default::default()
        }),
        ..config(Kind::Cpu, 1, &[])
    };
    let base = session_settings(&text)?;
    assert!(base.gpu.tensorrt.is_some());
    let plans = instance_plan(&text, &base, false)?;
    assert_eq!(plans.iter().map(|p| p.label.as_str()).collect::<Vec<_>>(), ["CPU"]);
    let err = instance_plan(
        &ModelConfig { instance_group: config(Kind::Gpu, 1, &[]).instance_group, ..text },
        &base,
        false,
    )
    .err()
    .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("KIND_GPU")));
    Ok(())
}

#[test]
fn a_session_forced_onto_a_gpu_is_a_clean_provider_error() {
    runtime();
    let cuda = SessionSettings { device: Device::Cuda { device_id: 0 }, ..Default::default() };
    let trt = SessionSettings {
        gpu: GpuSettings { tensorrt: Some(TensorRtOptions::default()), ..Default::default() },
        ..cuda.clone()
    };
    for (settings, provider) in [(cuda, "CUDA"), (trt, "TensorRT")] {
        match OrtBackend::load(&model("add_sub_FP32"), &settings) {
            Ok(_) => panic!("{provider}: a CPU build must not silently run a GPU session on CPU"),
            Err(e) => {
                assert!(matches!(e, OrtBackendError::Provider { .. }), "{provider}: {e:?}");
                let msg = e.to_string();
                assert!(msg.contains(provider) && msg.contains("GPU 0"), "{msg}");
            }
        }
    }
}
