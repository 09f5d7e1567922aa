//! [`OrtFactory`]: ONNX Runtime behind [`tern_backend::BackendFactory`]. What the lifecycle
//! leaves to the runtime happens here: the config's ORT fields and accelerator parameters are
//! checked (within an [`AcceleratorScope`]) before anything is decrypted, the instances are
//! placed ([`instance_plan`]), and the cores are divided among the CPU instances unless the
//! config sets `intra_op_thread_count`, so they do not oversubscribe the machine.
//!
//! The session opened to read the model's signature is kept as the first instance when the
//! plan puts that instance on the CPU with the same settings (one session fewer per load).

use std::path::PathBuf;

use tern_backend::{
    Backend, BackendError, BackendFactory, LoadTarget, ModelBytes, PlacedInstance, Placement, VersionLoader,
};
use tern_core::ModelSignature;
use tern_proto::inference::ModelConfig;

use crate::placement::DEFAULT_CPU_INSTANCE_COUNT;
use crate::{
    AcceleratorScope, Device, InstancePlan, OrtBackend, OrtBackendError, SessionSettings, instance_plan,
    placed_instance_groups, session_settings_for,
};

/// Makes ORT sessions for the model lifecycle; one per node.
#[derive(Debug, Clone, Default)]
pub struct OrtFactory {
    /// Load KIND_GPU instances on the CPU when no GPU can take them (with a warning).
    pub allow_cpu_fallback: bool,
    /// `--accelerator-cache-dir`: where TensorRT caches may be written.
    pub accelerator_cache_dir: Option<PathBuf>,
}

impl BackendFactory for OrtFactory {
    fn begin(
        &self,
        target: &LoadTarget,
        config: &ModelConfig,
    ) -> Result<Box<dyn VersionLoader>, BackendError> {
        let scope = AcceleratorScope {
            model: target.model.clone(),
            model_dir: target.trusted_dir.clone(),
            cache_dir: self.accelerator_cache_dir.clone(),
            encrypted: target.encrypted,
        };
        // Accelerator parameters reach native code (ORT's providers): checked on every node,
        // whether it has a GPU or not.
        let base = session_settings_for(config, &scope)?;
        let threads_given = base.intra_op_threads.is_some();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut probe_settings = base.clone();
        if !threads_given {
            let guess = if config.instance_group.is_empty() {
                DEFAULT_CPU_INSTANCE_COUNT as usize
            } else {
                instance_count(config)
            };
            probe_settings.intra_op_threads = Some((cores / guess).max(1));
        }
        Ok(Box::new(OrtVersionLoader {
            base,
            probe_settings,
            probe: None,
            plans: Vec::new(),
            threads_given,
            cores,
            allow_cpu_fallback: self.allow_cpu_fallback,
        }))
    }

    fn release_freed_memory(&self) {
        crate::release_freed_memory();
    }
}

/// One version's sessions being opened.
struct OrtVersionLoader {
    /// The config's settings (before any thread division).
    base: SessionSettings,
    /// What the signature's session was opened with.
    probe_settings: SessionSettings,
    /// That session, until an instance takes it.
    probe: Option<OrtBackend>,
    plans: Vec<InstancePlan>,
    threads_given: bool,
    cores: usize,
    allow_cpu_fallback: bool,
}

impl VersionLoader for OrtVersionLoader {
    fn signature(&mut self, model: ModelBytes<'_>) -> Result<ModelSignature, BackendError> {
        let first = open(model, &self.probe_settings)?;
        let signature = first.signature();
        self.probe = Some(first);
        Ok(signature)
    }

    fn plan(&mut self, config: &ModelConfig) -> Result<Placement, BackendError> {
        // CPU, or GPUs through the CUDA / TensorRT providers; the groups are reported as
        // placed, as Triton does.
        let mut plans = instance_plan(config, &self.base, self.allow_cpu_fallback)?;
        let instance_groups = placed_instance_groups(config, &plans);
        let cpu_instances = plans.iter().filter(|p| p.device == Device::Cpu).count();
        if !self.threads_given && cpu_instances > 0 {
            for plan in plans.iter_mut().filter(|p| p.device == Device::Cpu) {
                plan.settings.intra_op_threads = Some((self.cores / cpu_instances).max(1));
            }
        }
        let instances =
            plans.iter().map(|p| PlacedInstance { label: p.label.clone(), fallback: p.fallback }).collect();
        self.plans = plans;
        Ok(Placement { instance_groups, instances })
    }

    fn instance(&mut self, index: usize, model: ModelBytes<'_>) -> Result<Box<dyn Backend>, BackendError> {
        let Some(plan) = self.plans.get(index) else {
            return Err(BackendError::Load(format!("no instance {index} in the plan")));
        };
        let backend = match self.probe.take_if(|_| plan.settings == self.probe_settings) {
            Some(b) => b,
            None => open(model, &plan.settings)?,
        };
        Ok(Box::new(backend))
    }
}

fn open(model: ModelBytes<'_>, settings: &SessionSettings) -> Result<OrtBackend, OrtBackendError> {
    match model {
        ModelBytes::File(path) => OrtBackend::load(path, settings),
        ModelBytes::Memory(bytes) => OrtBackend::load_from_memory(bytes, settings),
    }
}

/// Instances the config asks for (every group's count; at least one).
fn instance_count(config: &ModelConfig) -> usize {
    let n: i64 = config.instance_group.iter().map(|g| i64::from(g.count.max(1))).sum();
    usize::try_from(n).unwrap_or(1).clamp(1, 64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::inference::ModelOptimizationPolicy;
    use tern_proto::inference::model_optimization_policy::ExecutionAccelerators;
    use tern_proto::inference::model_optimization_policy::execution_accelerators::Accelerator;

    #[test]
    fn accelerator_paths_may_lie_only_in_a_trusted_model_directory() -> Result<(), Box<dyn std::error::Error>>
    {
        // A TensorRT engine cache inside the model directory: allowed only when the lifecycle
        // says the directory is the operator's (not a client's upload).
        let dir = tempfile::tempdir()?;
        let engines = dir.path().join("engines");
        std::fs::create_dir(&engines)?;
        let accelerator = Accelerator {
            name: "tensorrt".into(),
            parameters: [("trt_engine_cache_path".to_string(), engines.display().to_string())].into(),
        };
        let config = ModelConfig {
            name: "m".into(),
            optimization: Some(ModelOptimizationPolicy {
                execution_accelerators: Some(ExecutionAccelerators {
                    gpu_execution_accelerator: vec![accelerator],
                    cpu_execution_accelerator: vec![],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let factory = OrtFactory::default();
        let trusted = LoadTarget {
            model: "m".into(),
            version: 1,
            trusted_dir: Some(dir.path().to_path_buf()),
            encrypted: false,
        };
        if let Err(e) = factory.begin(&trusted, &config) {
            return Err(format!("a trusted directory may hold the cache: {e}").into());
        }
        let upload = LoadTarget { trusted_dir: None, ..trusted };
        let refused = factory.begin(&upload, &config).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("trt_engine_cache_path"), "{refused}");
        Ok(())
    }
}
