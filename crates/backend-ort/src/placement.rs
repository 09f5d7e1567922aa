//! Where each instance of a model runs: [`instance_plan`] turns the config's `instance_group`
//! into one [`InstancePlan`] (session settings + device) per ORT session, as Triton does.
//!
//! - `KIND_GPU`: `count` sessions on each GPU in `gpus`, or on every visible GPU when `gpus` is
//!   empty; each registers TensorRT (when configured), then CUDA, then ORT's implicit CPU.
//! - `KIND_CPU` (and `KIND_MODEL`, which for ONNX Runtime means CPU, as in Triton's backend):
//!   `count` CPU sessions.
//! - `KIND_AUTO`: `KIND_GPU` on every visible GPU if one is usable, else `KIND_CPU` (Triton
//!   decides the same way when it loads the model).
//! - `count` < 1: 1 per GPU, [`DEFAULT_CPU_INSTANCE_COUNT`] on CPU (Triton's defaults).
//!
//! "A GPU is usable" ([`GpuSupport`], probed once per process): the loaded ONNX Runtime
//! library has the CUDA execution provider, registering it succeeds (which loads
//! `libonnxruntime_providers_cuda.so` and the CUDA libraries it links), and the CUDA runtime
//! reports at least one device. TensorRT is probed the same way, only when a model asks for
//! it. Each failure is kept as a sentence saying why.
//!
//! No usable GPU for a `KIND_GPU` group (or no TensorRT for a model that asks for it) is a
//! load error saying why, unless the node allows falling back: then the instance runs on
//! CPU (without TensorRT: on CUDA) and its plan says `fallback: true` so the node can warn and
//! label it. The planning itself ([`plan_instances`]) is a pure function of the config and a
//! [`GpuSupport`], so it is tested on machines without GPUs.

use std::sync::OnceLock;

use ort::ep::{self, ExecutionProvider};
use tern_proto::inference::model_instance_group::Kind;
use tern_proto::inference::{ModelConfig, ModelInstanceGroup};

use crate::accelerators::Device;
use crate::settings::SessionSettings;
use crate::{OrtBackendError, ffi, runtime};

/// Triton's default instance count for a CPU group with no `count` (the same value as
/// `tern_repository::DEFAULT_CPU_INSTANCE_COUNT`).
pub const DEFAULT_CPU_INSTANCE_COUNT: u32 = 2;

/// One ORT session to create for a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancePlan {
    /// The instance group it belongs to (its name, or `<model>_<index>` for an unnamed one).
    pub group: String,
    /// That group's index in `instance_group` (0 for the implicit group of a config with none).
    pub group_index: usize,
    /// The settings to load the session with (`settings.device == device`).
    pub settings: SessionSettings,
    pub device: Device,
    /// For logs and metrics: "GPU 0", "GPU 0 (TensorRT FP16)", "CPU", "CPU (fallback from
    /// GPU 0)", "GPU 0 (CUDA, fallback from TensorRT)".
    pub label: String,
    /// The config asked for more than this instance gets (no GPU, or no TensorRT), and the
    /// node allowed the fallback.
    pub fallback: bool,
}

/// What this process can run on, as far as GPUs go. `Err` holds why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSupport {
    /// The number of usable CUDA devices (at least 1).
    pub cuda: Result<u32, GpuUnusable>,
    /// Whether the TensorRT execution provider can be registered.
    pub tensorrt: Result<(), GpuUnusable>,
}

/// Why CUDA or TensorRT is not usable, as a sentence that ends up in the model's load error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GpuUnusable(pub String);

impl GpuSupport {
    /// No GPU at all, for `reason`.
    pub fn none(reason: &str) -> GpuSupport {
        GpuSupport {
            cuda: Err(GpuUnusable(reason.to_string())),
            tensorrt: Err(GpuUnusable(reason.to_string())),
        }
    }
}

/// Plans the sessions of a model (see the module docs). Probes the GPUs the first time a
/// model may need one; needs the ONNX Runtime library loaded (or `ORT_DYLIB_PATH` set).
pub fn instance_plan(
    config: &ModelConfig,
    base: &SessionSettings,
    allow_cpu_fallback: bool,
) -> Result<Vec<InstancePlan>, OrtBackendError> {
    let wants_gpu = config.instance_group.is_empty()
        || config.instance_group.iter().any(|g| matches!(Kind::try_from(g.kind), Ok(Kind::Gpu | Kind::Auto)));
    let support = if wants_gpu {
        let cuda = probe_cuda()?;
        let tensorrt = if cuda.is_ok() && base.gpu.tensorrt.is_some() {
            probe_tensorrt()?
        } else {
            Err(GpuUnusable("not probed".to_string()))
        };
        GpuSupport { cuda, tensorrt }
    } else {
        GpuSupport::none("no instance group asks for a GPU")
    };
    plan_instances(config, base, allow_cpu_fallback, &support)
}

/// [`instance_plan`] for a given [`GpuSupport`]: no probing, no side effects.
pub fn plan_instances(
    config: &ModelConfig,
    base: &SessionSettings,
    allow_cpu_fallback: bool,
    support: &GpuSupport,
) -> Result<Vec<InstancePlan>, OrtBackendError> {
    let default_group = [ModelInstanceGroup { name: config.name.clone(), ..Default::default() }];
    let groups =
        if config.instance_group.is_empty() { &default_group[..] } else { &config.instance_group[..] };
    let mut plans = Vec::new();
    for (index, group) in groups.iter().enumerate() {
        let name =
            if group.name.is_empty() { format!("{}_{index}", config.name) } else { group.name.clone() };
        let planner = Planner { model: &config.name, group: &name, index, base, allow_cpu_fallback, support };
        let kind = Kind::try_from(group.kind)
            .map_err(|_| planner.invalid(format!("has unknown kind {}", group.kind)))?;
        match kind {
            Kind::Cpu | Kind::Model => {
                if !group.gpus.is_empty() {
                    return Err(planner
                        .invalid(format!("has kind {} but specifies one or more GPUs", kind.as_str_name())));
                }
                planner.cpu(group.count, &mut plans);
            }
            Kind::Auto if support.cuda.is_err() => planner.cpu(group.count, &mut plans),
            Kind::Auto | Kind::Gpu => planner.gpu(group, &mut plans)?,
        }
    }
    Ok(plans)
}

/// Plans one instance group.
struct Planner<'a> {
    model: &'a str,
    group: &'a str,
    index: usize,
    base: &'a SessionSettings,
    allow_cpu_fallback: bool,
    support: &'a GpuSupport,
}

impl Planner<'_> {
    fn cpu(&self, count: i32, plans: &mut Vec<InstancePlan>) {
        let count = positive(count).unwrap_or(DEFAULT_CPU_INSTANCE_COUNT);
        for _ in 0..count {
            plans.push(self.plan(Device::Cpu, "CPU".to_string(), false));
        }
    }

    fn gpu(&self, group: &ModelInstanceGroup, plans: &mut Vec<InstancePlan>) -> Result<(), OrtBackendError> {
        let count = positive(group.count).unwrap_or(1);
        let visible = match &self.support.cuda {
            Ok(n) => *n,
            Err(reason) => {
                if !self.allow_cpu_fallback {
                    return Err(OrtBackendError::GpuUnavailable {
                        model: self.model.to_string(),
                        group: self.group.to_string(),
                        wants: "KIND_GPU".to_string(),
                        reason: reason.clone(),
                        hint: GPU_HINT,
                    });
                }
                // Keep the instance count the config asked for, on CPU.
                let from: Vec<String> = if group.gpus.is_empty() {
                    vec!["GPU".to_string()]
                } else {
                    group.gpus.iter().map(|g| format!("GPU {g}")).collect()
                };
                for from in from {
                    for _ in 0..count {
                        plans.push(self.plan(Device::Cpu, format!("CPU (fallback from {from})"), true));
                    }
                }
                return Ok(());
            }
        };
        let devices: Vec<i32> = if group.gpus.is_empty() {
            (0..visible).filter_map(|d| i32::try_from(d).ok()).collect()
        } else {
            group.gpus.clone()
        };
        if let Some(bad) = devices.iter().find(|&&d| d < 0 || u32::try_from(d).is_ok_and(|d| d >= visible)) {
            let ids: Vec<String> = (0..visible).map(|d| d.to_string()).collect();
            return Err(self.invalid(format!(
                "specifies invalid or unsupported gpu id {bad}; the visible GPUs are: {}",
                ids.join(" ")
            )));
        }
        let mut tensorrt_fallback = false;
        if let (Some(trt), Err(reason)) = (&self.base.gpu.tensorrt, &self.support.tensorrt) {
            if !self.allow_cpu_fallback {
                return Err(OrtBackendError::GpuUnavailable {
                    model: self.model.to_string(),
                    group: self.group.to_string(),
                    wants: format!("configured for TensorRT ({})", trt.precision.as_str()),
                    reason: reason.clone(),
                    hint: TENSORRT_HINT,
                });
            }
            tensorrt_fallback = true;
        }
        for device_id in devices {
            for _ in 0..count {
                let device = Device::Cuda { device_id };
                let mut plan = match (&self.base.gpu.tensorrt, tensorrt_fallback) {
                    (Some(_), true) => {
                        self.plan(device, format!("{device} (CUDA, fallback from TensorRT)"), true)
                    }
                    (Some(trt), false) => {
                        self.plan(device, format!("{device} (TensorRT {})", trt.precision.as_str()), false)
                    }
                    (None, _) => self.plan(device, device.to_string(), false),
                };
                if tensorrt_fallback {
                    plan.settings.gpu.tensorrt = None;
                }
                plans.push(plan);
            }
        }
        Ok(())
    }

    fn plan(&self, device: Device, label: String, fallback: bool) -> InstancePlan {
        InstancePlan {
            group: self.group.to_string(),
            group_index: self.index,
            settings: SessionSettings { device, ..self.base.clone() },
            device,
            label,
            fallback,
        }
    }

    fn invalid(&self, what: String) -> OrtBackendError {
        OrtBackendError::InvalidInstanceGroup(format!(
            "instance group '{}' of model '{}' {what}",
            self.group, self.model
        ))
    }
}

/// The config's instance groups as `plans` placed them, for reporting the config the way
/// Triton does (resolved): a group that got GPUs becomes `KIND_GPU` with those `gpus` and
/// `count` per GPU; any other becomes `KIND_CPU` with its number of instances (a CPU fallback
/// from `gpus: [0, 1]`, `count: 2` reads `KIND_CPU`, `count: 4`). Names are filled as in
/// [`plan_instances`]; other fields are kept.
pub fn placed_instance_groups(config: &ModelConfig, plans: &[InstancePlan]) -> Vec<ModelInstanceGroup> {
    let default_group = [ModelInstanceGroup { name: config.name.clone(), ..Default::default() }];
    let groups =
        if config.instance_group.is_empty() { &default_group[..] } else { &config.instance_group[..] };
    groups
        .iter()
        .enumerate()
        .map(|(index, group)| {
            let mine: Vec<&InstancePlan> = plans.iter().filter(|p| p.group_index == index).collect();
            let mut gpus: Vec<i32> = Vec::new();
            for plan in &mine {
                if let Device::Cuda { device_id } = plan.device
                    && !gpus.contains(&device_id)
                {
                    gpus.push(device_id);
                }
            }
            let instances = i32::try_from(mine.len()).unwrap_or(i32::MAX);
            let name = mine.first().map_or_else(|| group.name.clone(), |p| p.group.clone());
            let (kind, count) = match i32::try_from(gpus.len()) {
                Ok(n) if n > 0 => (Kind::Gpu, instances / n),
                _ => (Kind::Cpu, instances),
            };
            ModelInstanceGroup { name, kind: kind as i32, count, gpus, ..group.clone() }
        })
        .collect()
}

fn positive(count: i32) -> Option<u32> {
    u32::try_from(count).ok().filter(|&c| c > 0)
}

/// How to get a GPU, said after why there is none.
pub const GPU_HINT: &str = "run `make setup GPU=1` (onnxruntime-gpu, CUDA 13, cuDNN 9) on a machine with an \
     NVIDIA GPU, use KIND_CPU, or pass --allow-cpu-fallback";

/// How to get TensorRT, said after why it is missing.
pub const TENSORRT_HINT: &str = "install TensorRT 10 (libnvinfer.so.10, libnvonnxparser.so.10) where the \
     dynamic loader finds it, remove the tensorrt accelerator, or pass --allow-cpu-fallback (then CUDA without \
     TensorRT)";

// === probes ===

static CUDA_PROBE: OnceLock<Result<u32, GpuUnusable>> = OnceLock::new();
static TENSORRT_PROBE: OnceLock<Result<(), GpuUnusable>> = OnceLock::new();

/// Whether CUDA is usable, probed once per process (devices do not come and go).
fn probe_cuda() -> Result<Result<u32, GpuUnusable>, OrtBackendError> {
    if let Some(done) = CUDA_PROBE.get() {
        return Ok(done.clone());
    }
    let environment = runtime::environment()?;
    let result = (|| {
        match <ep::CUDA as ExecutionProvider>::is_available() {
            Ok(true) => {}
            Ok(false) => {
                return Err(format!(
                    "this ONNX Runtime library ({}) has no CUDA execution provider (CPU build)",
                    runtime::library_description()
                ));
            }
            Err(e) => return Err(format!("ONNX Runtime cannot list its execution providers: {e}")),
        }
        // Loads the provider library and the CUDA libraries it links, without a session.
        register(environment, ep::CUDA::default().with_device_id(0).build())
            .map_err(|e| format!("the CUDA execution provider cannot be loaded: {e}"))?;
        match ffi::cuda_device_count()? {
            0 => Err("no CUDA device is visible to this process (see nvidia-smi and CUDA_VISIBLE_DEVICES)"
                .to_string()),
            n => Ok(n),
        }
    })()
    .map_err(GpuUnusable);
    match &result {
        Ok(n) => tracing::info!(devices = n, "CUDA execution provider usable"),
        Err(reason) => tracing::info!(%reason, "no usable GPU"),
    }
    Ok(CUDA_PROBE.get_or_init(|| result).clone())
}

/// Whether TensorRT can be registered, probed once per process.
fn probe_tensorrt() -> Result<Result<(), GpuUnusable>, OrtBackendError> {
    if let Some(done) = TENSORRT_PROBE.get() {
        return Ok(done.clone());
    }
    let environment = runtime::environment()?;
    let result = match <ep::TensorRT as ExecutionProvider>::is_available() {
        Ok(true) => register(environment, ep::TensorRT::default().with_device_id(0).build())
            .map_err(|e| format!("the TensorRT execution provider cannot be loaded: {e}")),
        Ok(false) => Err(format!(
            "this ONNX Runtime library ({}) has no TensorRT execution provider",
            runtime::library_description()
        )),
        Err(e) => Err(format!("ONNX Runtime cannot list its execution providers: {e}")),
    }
    .map_err(GpuUnusable);
    if let Err(reason) = &result {
        tracing::info!(%reason, "TensorRT unusable");
    }
    Ok(TENSORRT_PROBE.get_or_init(|| result).clone())
}

/// Registers `provider` on a throwaway session builder (no session is created).
fn register(
    environment: &ort::environment::Environment,
    provider: ep::ExecutionProviderDispatch,
) -> Result<(), String> {
    let builder = ort::session::Session::builder(environment).map_err(|e| e.to_string())?;
    builder
        .with_execution_providers([provider.error_on_failure()])
        .map(drop)
        .map_err(|e| e.to_string().trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accelerators::{GpuSettings, TensorRtOptions, TensorRtPrecision};

    const CPU_BUILD: &str = "this ONNX Runtime library (1.31.1) has no CUDA execution provider (CPU build)";

    fn group(name: &str, kind: Kind, count: i32, gpus: &[i32]) -> ModelInstanceGroup {
        ModelInstanceGroup {
            name: name.to_string(),
            kind: kind as i32,
            count,
            gpus: gpus.to_vec(),
            ..Default::default()
        }
    }

    fn config(groups: Vec<ModelInstanceGroup>) -> ModelConfig {
        ModelConfig { name: "resnet".to_string(), instance_group: groups, ..Default::default() }
    }

    fn gpus(n: u32) -> GpuSupport {
        GpuSupport { cuda: Ok(n), tensorrt: Ok(()) }
    }

    fn no_gpu() -> GpuSupport {
        GpuSupport::none(CPU_BUILD)
    }

    fn trt_settings() -> SessionSettings {
        SessionSettings {
            gpu: GpuSettings {
                tensorrt: Some(TensorRtOptions { precision: TensorRtPrecision::Fp16, ..Default::default() }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn plan(
        config: &ModelConfig,
        base: &SessionSettings,
        fallback: bool,
        support: &GpuSupport,
    ) -> Vec<InstancePlan> {
        match plan_instances(config, base, fallback, support) {
            Ok(p) => p,
            Err(e) => panic!("plan failed: {e}"),
        }
    }

    fn plan_err(
        config: &ModelConfig,
        base: &SessionSettings,
        fallback: bool,
        support: &GpuSupport,
    ) -> String {
        match plan_instances(config, base, fallback, support) {
            Ok(p) => panic!("expected an error, got {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn placed(config: &ModelConfig, plans: &[InstancePlan]) -> Vec<(String, Kind, i32, Vec<i32>)> {
        placed_instance_groups(config, plans)
            .into_iter()
            .map(|g| (g.name, Kind::try_from(g.kind).unwrap_or(Kind::Auto), g.count, g.gpus))
            .collect()
    }

    #[test]
    fn placed_groups_report_what_was_placed() {
        let c = config(vec![
            group("g", Kind::Gpu, 2, &[]),
            group("", Kind::Auto, 0, &[]),
            group("c", Kind::Cpu, 0, &[]),
        ]);
        let on_gpus = plan(&c, &SessionSettings::default(), false, &gpus(2));
        assert_eq!(
            placed(&c, &on_gpus),
            [
                ("g".to_string(), Kind::Gpu, 2, vec![0, 1]),
                ("resnet_1".to_string(), Kind::Gpu, 1, vec![0, 1]),
                ("c".to_string(), Kind::Cpu, 2, vec![]),
            ]
        );
        let c = config(vec![group("g", Kind::Gpu, 2, &[0, 1]), group("a", Kind::Auto, 0, &[])]);
        let fallback = plan(&c, &SessionSettings::default(), true, &no_gpu());
        assert_eq!(
            placed(&c, &fallback),
            [("g".to_string(), Kind::Cpu, 4, vec![]), ("a".to_string(), Kind::Cpu, 2, vec![])]
        );
        let none = config(vec![]);
        let plans = plan(&none, &SessionSettings::default(), false, &no_gpu());
        assert_eq!(placed(&none, &plans), [("resnet".to_string(), Kind::Cpu, 2, vec![])]);
    }

    fn labels(plans: &[InstancePlan]) -> Vec<&str> {
        plans.iter().map(|p| p.label.as_str()).collect()
    }

    #[test]
    fn kind_gpu_places_count_sessions_per_listed_gpu() {
        let c = config(vec![group("g", Kind::Gpu, 2, &[0, 1])]);
        let plans = plan(&c, &SessionSettings::default(), false, &gpus(2));
        assert_eq!(labels(&plans), ["GPU 0", "GPU 0", "GPU 1", "GPU 1"]);
        assert!(plans.iter().all(|p| !p.fallback && p.group == "g" && p.settings.device == p.device));
        assert_eq!(plans[2].device, Device::Cuda { device_id: 1 });
    }

    #[test]
    fn kind_gpu_without_gpus_uses_every_visible_gpu_once() {
        let c = config(vec![group("g", Kind::Gpu, 0, &[])]);
        let plans = plan(&c, &SessionSettings::default(), false, &gpus(3));
        assert_eq!(labels(&plans), ["GPU 0", "GPU 1", "GPU 2"]);
    }

    #[test]
    fn kind_cpu_stays_on_cpu_even_with_gpus() {
        let c = config(vec![group("c", Kind::Cpu, 3, &[])]);
        let plans = plan(&c, &SessionSettings::default(), false, &gpus(1));
        assert_eq!(labels(&plans), ["CPU"; 3]);
        assert!(plans.iter().all(|p| p.device == Device::Cpu && !p.fallback));
        let c = config(vec![group("c", Kind::Cpu, 0, &[])]);
        assert_eq!(plan(&c, &SessionSettings::default(), false, &gpus(1)).len(), 2, "Triton's default");
        let c = config(vec![group("m", Kind::Model, 1, &[])]);
        assert_eq!(labels(&plan(&c, &SessionSettings::default(), false, &gpus(1))), ["CPU"]);
    }

    #[test]
    fn kind_auto_is_gpu_when_present_else_cpu() {
        let c = config(vec![group("a", Kind::Auto, 0, &[])]);
        assert_eq!(labels(&plan(&c, &SessionSettings::default(), false, &gpus(2))), ["GPU 0", "GPU 1"]);
        let cpu = plan(&c, &SessionSettings::default(), false, &no_gpu());
        assert_eq!(labels(&cpu), ["CPU", "CPU"]);
        assert!(cpu.iter().all(|p| !p.fallback), "AUTO on CPU is not a fallback");
        // No instance_group at all: one AUTO group named after the model.
        let plans = plan(&config(vec![]), &SessionSettings::default(), false, &no_gpu());
        assert_eq!(plans.iter().map(|p| p.group.as_str()).collect::<Vec<_>>(), ["resnet", "resnet"]);
        // Unnamed groups are named like the repository names them.
        let plans =
            plan(&config(vec![group("", Kind::Cpu, 1, &[])]), &SessionSettings::default(), false, &no_gpu());
        assert_eq!(plans[0].group, "resnet_0");
    }

    #[test]
    fn kind_gpu_without_gpu_is_an_error_saying_why() {
        let c = config(vec![group("g", Kind::Gpu, 1, &[0])]);
        let e = plan_err(&c, &SessionSettings::default(), false, &no_gpu());
        for part in [
            "'g'",
            "'resnet'",
            "KIND_GPU",
            "no CUDA execution provider (CPU build)",
            "make setup GPU=1",
            "--allow-cpu-fallback",
        ] {
            assert!(e.contains(part), "missing {part:?} in {e}");
        }
    }

    #[test]
    fn kind_gpu_falls_back_to_cpu_when_allowed() {
        let c = config(vec![group("g", Kind::Gpu, 2, &[0, 1]), group("c", Kind::Cpu, 1, &[])]);
        let plans = plan(&c, &SessionSettings::default(), true, &no_gpu());
        assert_eq!(
            labels(&plans),
            [
                "CPU (fallback from GPU 0)",
                "CPU (fallback from GPU 0)",
                "CPU (fallback from GPU 1)",
                "CPU (fallback from GPU 1)",
                "CPU"
            ]
        );
        assert_eq!(plans.iter().map(|p| p.fallback).collect::<Vec<_>>(), [true, true, true, true, false]);
        assert!(plans.iter().all(|p| p.device == Device::Cpu && p.settings.device == Device::Cpu));
        let c = config(vec![group("g", Kind::Gpu, 0, &[])]);
        assert_eq!(
            labels(&plan(&c, &SessionSettings::default(), true, &no_gpu())),
            ["CPU (fallback from GPU)"]
        );
    }

    #[test]
    fn bad_gpu_ids_and_gpus_on_cpu_groups_are_errors() {
        let c = config(vec![group("g", Kind::Gpu, 1, &[0, 2])]);
        let e = plan_err(&c, &SessionSettings::default(), true, &gpus(2));
        assert!(e.contains("invalid or unsupported gpu id 2") && e.contains("0 1"), "{e}");
        let c = config(vec![group("g", Kind::Gpu, 1, &[-1])]);
        assert!(plan_err(&c, &SessionSettings::default(), false, &gpus(1)).contains("gpu id -1"));
        let c = config(vec![group("c", Kind::Cpu, 1, &[0])]);
        let e = plan_err(&c, &SessionSettings::default(), false, &gpus(1));
        assert!(e.contains("KIND_CPU but specifies one or more GPUs"), "{e}");
        let c = config(vec![ModelInstanceGroup { name: "x".into(), kind: 9, ..Default::default() }]);
        assert!(plan_err(&c, &SessionSettings::default(), false, &gpus(1)).contains("unknown kind 9"));
    }

    #[test]
    fn tensorrt_when_available() {
        let c = config(vec![group("g", Kind::Gpu, 1, &[0])]);
        let plans = plan(&c, &trt_settings(), false, &gpus(1));
        assert_eq!(labels(&plans), ["GPU 0 (TensorRT FP16)"]);
        assert!(plans[0].settings.gpu.tensorrt.is_some());
        // On CPU instances TensorRT is simply not used (as in Triton).
        let c = config(vec![group("c", Kind::Cpu, 1, &[])]);
        assert_eq!(labels(&plan(&c, &trt_settings(), false, &no_gpu())), ["CPU"]);
    }

    #[test]
    fn missing_tensorrt_is_an_error_or_a_cuda_fallback() {
        let support = GpuSupport {
            cuda: Ok(1),
            tensorrt: Err(GpuUnusable("libnvinfer.so.10: cannot open".to_string())),
        };
        let c = config(vec![group("g", Kind::Gpu, 1, &[0])]);
        let e = plan_err(&c, &trt_settings(), false, &support);
        for part in ["TensorRT (FP16)", "libnvinfer.so.10", "--allow-cpu-fallback"] {
            assert!(e.contains(part), "missing {part:?} in {e}");
        }
        let plans = plan(&c, &trt_settings(), true, &support);
        assert_eq!(labels(&plans), ["GPU 0 (CUDA, fallback from TensorRT)"]);
        assert!(plans[0].fallback && plans[0].settings.gpu.tensorrt.is_none());
        assert_eq!(plans[0].device, Device::Cuda { device_id: 0 });
        // Neither GPU nor TensorRT: the GPU reason comes first.
        let e = plan_err(&c, &trt_settings(), false, &no_gpu());
        assert!(e.contains("KIND_GPU") && e.contains("CPU build"), "{e}");
    }
}
