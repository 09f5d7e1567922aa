//! [`OrtFactory`]: ONNX Runtime behind [`tern_backend::BackendFactory`]. What the lifecycle
//! leaves to the runtime happens here: the config's ORT fields and accelerator parameters are
//! checked (within an [`AcceleratorScope`]) before anything is decrypted, the instances are
//! placed ([`instance_plan`]), and the cores are divided among the CPU instances unless the
//! config sets `intra_op_thread_count`, so they do not oversubscribe the machine.
//!
//! The session opened to read the model's signature is kept as the first instance when the
//! plan puts that instance on the CPU with the same settings (one session fewer per load); the
//! other instances open in parallel (ORT creates sessions concurrently; a GPU load's instances
//! each wait on their own device's initialisation). With a [`ModelCache`], sessions of a model
//! from the operator's repository open through it (never an encrypted or uploaded model's).
//!
//! Batch buckets ([`tern_backend::Backend::batch_buckets`]): an instance whose device the
//! config's `batch_buckets` mode covers (GPU instances by default) pads its batches to
//! [`tern_backend::batch::bucket_sizes`] of the completed config.

use std::path::PathBuf;

use tern_backend::{
    Backend, BackendError, BackendFactory, LoadTarget, ModelBytes, PlacedInstance, Placement, VersionLoader,
};
use tern_core::ModelSignature;
use tern_proto::inference::ModelConfig;
use tern_proto::inference::model_config::SchedulingChoice;

use crate::model_cache::{CacheUse, ModelCache, model_digest};
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
    /// `--model-cache-dir`: ORT's optimized graphs, reused by later loads.
    pub model_cache: Option<ModelCache>,
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
        // An encrypted model's graph would be written in the clear; an upload's files are a
        // client's, which must not fill the node's disk.
        let cache = self.model_cache.clone().filter(|_| !target.encrypted && target.trusted_dir.is_some());
        Ok(Box::new(OrtVersionLoader {
            base,
            probe_settings,
            probe: None,
            plans: Vec::new(),
            buckets: Vec::new(),
            threads_given,
            cores,
            allow_cpu_fallback: self.allow_cpu_fallback,
            cache,
            digest: None,
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
    /// The completed config's batch buckets, for the instances that pad.
    buckets: Vec<u32>,
    threads_given: bool,
    cores: usize,
    allow_cpu_fallback: bool,
    cache: Option<ModelCache>,
    /// The model files' digest, once computed (`None` inside: they could not be read).
    digest: Option<Option<String>>,
}

impl OrtVersionLoader {
    /// Computes the model files' digest for the cache, once per load.
    fn prepare_cache(&mut self, model: ModelBytes<'_>) {
        let (Some(_), ModelBytes::File(path), None) = (&self.cache, model, &self.digest) else { return };
        self.digest = Some(match model_digest(path) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(model = %path.display(), error = %e, "cannot read the model files to key the model cache; loading without it");
                None
            }
        });
    }

    /// Opens one session, through the cache when it applies.
    fn open(&self, model: ModelBytes<'_>, settings: &SessionSettings) -> Result<OrtBackend, OrtBackendError> {
        open_through(self.cache.as_ref(), &self.digest, model, settings)
    }

    /// Instance `index`'s buckets: the model's when its device pads.
    fn buckets_for(&self, plan: &InstancePlan) -> Vec<u32> {
        if plan.settings.batch_buckets.applies_to(plan.device) { self.buckets.clone() } else { Vec::new() }
    }

    /// `backend` as the plan's instance: its buckets, and its IO binding when the device wants one.
    fn finish(&self, backend: OrtBackend, plan: &InstancePlan) -> Box<dyn Backend> {
        let binding = plan.settings.io_binding.applies_to(plan.device);
        Box::new(backend.with_batch_buckets(self.buckets_for(plan)).with_io_binding(binding))
    }
}

impl VersionLoader for OrtVersionLoader {
    fn signature(&mut self, model: ModelBytes<'_>) -> Result<ModelSignature, BackendError> {
        self.prepare_cache(model);
        let first = self.open(model, &self.probe_settings)?;
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
        let max_batch_size = u32::try_from(config.max_batch_size).unwrap_or(0);
        let preferred: Vec<u32> = match &config.scheduling_choice {
            Some(SchedulingChoice::DynamicBatching(d)) => {
                d.preferred_batch_size.iter().filter_map(|&p| u32::try_from(p).ok()).collect()
            }
            _ => Vec::new(),
        };
        self.buckets = tern_backend::batch::bucket_sizes(max_batch_size, &preferred);
        let padding = plans.iter().filter(|p| p.settings.batch_buckets.applies_to(p.device)).count();
        if padding > 0 && !self.buckets.is_empty() {
            tracing::info!(buckets = ?self.buckets, instances = padding, "batches padded to buckets");
        }
        let bound = plans
            .iter()
            .filter(|p| p.settings.batch_buckets.applies_to(p.device))
            .filter(|p| p.settings.io_binding.applies_to(p.device) || p.settings.uses_cuda_graphs())
            .count();
        if bound > 0 && !self.buckets.is_empty() {
            tracing::info!(instances = bound, "bucketed batches run through an IO binding");
        }
        if self.base.cuda_graphs {
            warn_unused_graphs(&plans, !self.buckets.is_empty());
        }
        self.plans = plans;
        Ok(Placement { instance_groups, instances })
    }

    fn instance(&mut self, index: usize, model: ModelBytes<'_>) -> Result<Box<dyn Backend>, BackendError> {
        self.prepare_cache(model);
        let Some(plan) = self.plans.get(index) else {
            return Err(BackendError::Load(format!("no instance {index} in the plan")));
        };
        let backend = match self.probe.take_if(|_| plan.settings == self.probe_settings) {
            Some(b) => b,
            None => self.open(model, &plan.settings)?,
        };
        Ok(self.finish(backend, plan))
    }

    fn instances(
        &mut self,
        count: usize,
        model: ModelBytes<'_>,
    ) -> Result<Vec<Box<dyn Backend>>, BackendError> {
        if count > self.plans.len() {
            return Err(BackendError::Load(format!("no instance {} in the plan", self.plans.len())));
        }
        self.prepare_cache(model);
        // The signature's session goes to the first instance planned with its settings.
        let mut opened: Vec<Option<OrtBackend>> = (0..count).map(|_| None).collect();
        if let Some(i) = (0..count).find(|&i| self.plans[i].settings == self.probe_settings) {
            opened[i] = self.probe.take();
        }
        let to_open: Vec<usize> = (0..count).filter(|&i| opened[i].is_none()).collect();
        // One thread per session up to the cores (a GPU session's creation mostly waits on its device).
        let workers = to_open.len().min(self.cores.max(2));
        let (cache, digest, plans) = (self.cache.as_ref(), &self.digest, &self.plans);
        let results: Vec<(usize, Result<OrtBackend, OrtBackendError>)> = std::thread::scope(|scope| {
            let chunks: Vec<Vec<usize>> =
                (0..workers).map(|w| to_open.iter().copied().skip(w).step_by(workers).collect()).collect();
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|mine| {
                    scope.spawn(move || {
                        mine.into_iter()
                            .map(|i| (i, open_through(cache, digest, model, &plans[i].settings)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join().unwrap_or_else(|_| {
                        vec![(
                            usize::MAX,
                            Err(OrtBackendError::ModelLoad {
                                model: "<instance>".into(),
                                message: "session creation panicked".into(),
                            }),
                        )]
                    })
                })
                .collect()
        });
        for (i, result) in results {
            let backend = result?;
            if let Some(slot) = opened.get_mut(i) {
                *slot = Some(backend);
            }
        }
        opened
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                let b = b.ok_or_else(|| BackendError::Load(format!("instance {i} was not opened")))?;
                Ok(self.finish(b, &self.plans[i]))
            })
            .collect()
    }
}

/// `optimization { cuda { graphs: true } }` where an instance cannot use it: said at load, not
/// refused (Triton's ONNX Runtime backend ignores the field, so such configs exist; and a
/// KIND_AUTO model lands on the CPU on a machine without a GPU).
fn warn_unused_graphs(plans: &[InstancePlan], buckets: bool) {
    for plan in plans {
        let reason = match plan.device {
            Device::Cpu => "CUDA graphs apply to GPU instances only",
            Device::Cuda { .. } if plan.settings.gpu.tensorrt.is_some() => {
                "the instance runs TensorRT, whose CUDA graphs Tern does not drive"
            }
            Device::Cuda { .. } if !buckets || !plan.settings.batch_buckets.applies_to(plan.device) => {
                "CUDA graphs need fixed batch shapes (batch_buckets) and the model has none"
            }
            Device::Cuda { .. } => continue,
        };
        tracing::warn!(instance = %plan.label, reason, "optimization.cuda.graphs ignored for this instance");
    }
}

/// [`OrtVersionLoader::open`] on the parts it reads (the loader holds sessions, which are not
/// `Sync`, so its threads cannot share it).
fn open_through(
    cache: Option<&ModelCache>,
    digest: &Option<Option<String>>,
    model: ModelBytes<'_>,
    settings: &SessionSettings,
) -> Result<OrtBackend, OrtBackendError> {
    let (Some(cache), ModelBytes::File(path), Some(Some(digest))) = (cache, model, digest) else {
        return open(model, settings);
    };
    match cache.entry(digest, settings) {
        Ok(entry) => {
            let (backend, used) = OrtBackend::load_cached(path, settings, &entry)?;
            tracing::debug!(model = %path.display(), ?used, "model cache");
            if used == CacheUse::Uncached {
                tracing::debug!("the session was optimized online");
            }
            Ok(backend)
        }
        Err(reason) => {
            tracing::debug!(model = %path.display(), reason, "not cached");
            open(model, settings)
        }
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
