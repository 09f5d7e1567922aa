//! IO binding for batches padded to a bucket (issue 25): per instance and bucket, one ORT
//! [`IoBinding`] whose buffers are allocated once and reused by every run of that size.
//!
//! - Inputs are copied into staging tensors (pinned host memory on CUDA, so the copy to the
//!   device is a DMA without a bounce buffer; plain host memory on the CPU), then, on CUDA, into
//!   device tensors bound once. That copy replaces the one ORT makes in `Run` for host inputs.
//! - Outputs: on the CPU, ORT writes them straight into a host output set that is bound before
//!   the run. On CUDA they go to device tensors bound once (addresses a CUDA graph may capture),
//!   then one copy into a pinned host output set.
//! - An output set is handed to the response as `Bytes` that share it (no copy). A bucket keeps
//!   [`POOLED_OUTPUT_SETS`] sets and runs into one that no response holds any more
//!   (`Arc::get_mut`), so a response still being sent is never overwritten; when all are held
//!   it allocates a set for that run alone, freed with its response. Memory is bounded by the
//!   buckets, the pool size and the responses in flight.
//! - CUDA graphs (`optimization { cuda { graphs: true } }`, GPU instances on the CUDA provider):
//!   each bucket runs with its own `gpu_graph_id`, so ORT captures one graph per bucket on its
//!   first run and replays it after (ORT's CUDA provider docs, "Using CUDA Graphs"); the bound
//!   device buffers never move. Runs outside the binding pass `gpu_graph_id = -1` (no capture).
//!
//! ORT captures in CUDA's global capture mode, and keeps a captured graph per thread (its CUDA
//! provider's per-thread context, capture after two regular runs): while one thread captures, a
//! CUDA allocation or synchronous copy on any other thread of the process would fail or break the
//! capture. So each bucket's first [`CAPTURE_RUNS`] runs on a thread (the bucket warmup's thread,
//! then the instance's serving thread) hold [`CUDA_CAPTURE`] exclusively, and every other GPU run
//! of this crate, bound or not, holds it shared. Sessions outside this crate (tern-generate's
//! CUDA decoder) do not take it: do not ask for CUDA graphs beside a generative model on a GPU.
//!
//! Only models whose inputs and outputs are fixed-size tensors with a variable batch dimension
//! and every other dimension known take this path (their shapes at a bucket are known before
//! the run); anything else, and any batch not at a bucket's size, runs as before.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::ThreadId;

use bytes::Bytes;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, RunOptions, Session};
use ort::value::DynTensor;
use tern_backend::BackendError;
use tern_core::{DataType, ModelSignature, Tensor, TensorSpec};

use crate::accelerators::Device;
use crate::convert::{PreparedInput, element_type_of, fill_fixed, fixed_bytes, run_error};

/// Host output sets each bucket keeps for reuse.
pub(crate) const POOLED_OUTPUT_SETS: usize = 4;

/// ORT's run config key naming the CUDA graph a run captures or replays; -1: none, 0: reserved
/// by ORT (`kOrtRunOptionsConfigCudaGraphAnnotation`, onnxruntime_run_options_config_keys.h).
pub(crate) const GRAPH_ID_KEY: &str = "gpu_graph_id";

/// Runs of a bucket on one thread that may capture its graph (ORT: two regular runs, then the
/// capture), with one to spare.
pub(crate) const CAPTURE_RUNS: u32 = 4;

/// Held exclusively by a run that may capture a CUDA graph, shared by every other GPU run (see
/// the module docs).
pub(crate) static CUDA_CAPTURE: RwLock<()> = RwLock::new(());

/// What a GPU run holds of [`CUDA_CAPTURE`] while it runs.
pub(crate) enum GpuRunGuard {
    Shared { _guard: RwLockReadGuard<'static, ()> },
    Exclusive { _guard: RwLockWriteGuard<'static, ()> },
}

/// Takes [`CUDA_CAPTURE`] for one GPU run (a poisoned lock only means a run panicked).
pub(crate) fn gpu_run_guard(may_capture: bool) -> GpuRunGuard {
    if may_capture {
        GpuRunGuard::Exclusive { _guard: CUDA_CAPTURE.write().unwrap_or_else(|e| e.into_inner()) }
    } else {
        GpuRunGuard::Shared { _guard: CUDA_CAPTURE.read().unwrap_or_else(|e| e.into_inner()) }
    }
}

/// An instance's bindings, one per bucket, each built on the first run of its size.
pub(crate) struct Bindings {
    buckets: Vec<u32>,
    slots: Vec<Option<BucketSlot>>,
    /// Per bucket: the thread of its last run and its runs on that thread (CUDA graphs only).
    runs_on_thread: Vec<(Option<ThreadId>, u32)>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    memory: Memory,
    graphs: bool,
    arena_shrinkage: Option<String>,
}

enum Memory {
    Host,
    Cuda { device: Allocator, staging: Allocator, host_out: Allocator },
}

struct BucketSlot {
    binding: IoBinding,
    options: RunOptions,
    /// The inputs in host memory (pinned on CUDA), in the model's input order.
    staged: Vec<DynTensor>,
    /// CUDA: the inputs' device copies, bound on every run at the same addresses.
    device_inputs: Vec<DynTensor>,
    /// CUDA: where the outputs are written, bound once.
    device_outputs: Vec<DynTensor>,
    pool: Vec<Arc<OutputSet>>,
}

/// One run's outputs in host memory, in the model's output order.
struct OutputSet {
    tensors: Vec<DynTensor>,
}

impl Bindings {
    /// Bindings for `buckets` on `session`, or why this model cannot use them.
    pub(crate) fn new(
        session: &Session,
        signature: &ModelSignature,
        device: Device,
        graphs: bool,
        buckets: &[u32],
        arena_shrinkage: Option<String>,
    ) -> Result<Bindings, String> {
        if buckets.is_empty() {
            return Err(
                "the instance pads no batches to buckets (batch_buckets off, or the model does not batch)"
                    .into(),
            );
        }
        for (kind, spec) in signature
            .inputs
            .iter()
            .map(|s| ("input", s))
            .chain(signature.outputs.iter().map(|s| ("output", s)))
        {
            if spec.datatype.element_size().is_none() {
                return Err(format!(
                    "{kind} '{}' is {} (ORT keeps strings as objects)",
                    spec.name, spec.datatype
                ));
            }
            if spec.dims.first() != Some(&-1) || spec.dims[1..].iter().any(|&d| d < 0) {
                return Err(format!(
                    "{kind} '{}' has dims {:?}: only the first (batch) dimension may vary",
                    spec.name, spec.dims
                ));
            }
        }
        let memory = match device {
            Device::Cpu => Memory::Host,
            Device::Cuda { device_id } => {
                let allocator = |device: AllocationDevice<'static>, memory: MemoryType| {
                    MemoryInfo::new(device, device_id, AllocatorType::Device, memory)
                        .and_then(|info| Allocator::new(session, info))
                        .map_err(|e| e.to_string())
                };
                let device = allocator(AllocationDevice::CUDA, MemoryType::Default)?;
                let pinned = |memory| {
                    allocator(AllocationDevice::CUDA_PINNED, memory).or_else(|e| {
                        tracing::warn!(error = %e, "no pinned host memory from ONNX Runtime's CUDA provider; staging in pageable memory");
                        Ok::<_, String>(Allocator::default())
                    })
                };
                Memory::Cuda {
                    device,
                    staging: pinned(MemoryType::CPUInput)?,
                    host_out: pinned(MemoryType::CPUOutput)?,
                }
            }
        };
        Ok(Bindings {
            buckets: buckets.to_vec(),
            slots: buckets.iter().map(|_| None).collect(),
            runs_on_thread: buckets.iter().map(|_| (None, 0)).collect(),
            inputs: signature.inputs.clone(),
            outputs: signature.outputs.clone(),
            memory,
            graphs,
            arena_shrinkage,
        })
    }

    /// The bucket `inputs` fill exactly (each at the model's dims with the bucket's rows), if any.
    pub(crate) fn bucket_of(&self, inputs: &[PreparedInput]) -> Option<usize> {
        let rows = inputs.first()?.shape().first().copied()?;
        let slot = self.buckets.iter().position(|&b| i64::from(b) == rows)?;
        let fits = self.inputs.iter().all(|spec| {
            inputs.iter().find(|p| p.name == spec.name).is_some_and(|p| {
                let shape = p.shape();
                shape.len() == spec.dims.len() && shape[0] == rows && shape[1..] == spec.dims[1..]
            })
        });
        fits.then_some(slot)
    }

    /// Runs `inputs` (which fill bucket `slot`, see [`Bindings::bucket_of`]) and returns the
    /// outputs named in `selected`, in that order.
    pub(crate) fn run(
        &mut self,
        session: &mut Session,
        slot: usize,
        inputs: &[PreparedInput],
        selected: &[String],
    ) -> Result<Vec<Tensor>, BackendError> {
        let _guard = match self.memory {
            Memory::Host => None,
            Memory::Cuda { .. } => Some(gpu_run_guard(self.graphs && self.may_capture(slot))),
        };
        if self.slots[slot].is_none() {
            let built = self.build_slot(session, slot).map_err(|e| {
                BackendError::Execution(format!(
                    "cannot set up the IO binding for batch size {}: {e}",
                    self.buckets[slot]
                ))
            })?;
            self.slots[slot] = Some(built);
        }
        let Bindings { slots, inputs: input_specs, outputs: output_specs, memory, .. } = self;
        let bucket = slots[slot].as_mut().ok_or_else(|| internal("bucket slot missing"))?;
        let rows = i64::from(self.buckets[slot]);

        for (i, spec) in input_specs.iter().enumerate() {
            let input =
                inputs.iter().find(|p| p.name == spec.name).ok_or_else(|| internal("input missing"))?;
            let data = input.lent().ok_or_else(|| internal("input not fixed-size"))?;
            fill_fixed(&mut bucket.staged[i], spec.datatype, data).map_err(internal)?;
            match memory {
                Memory::Host => bucket.binding.bind_input(spec.name.as_str(), &bucket.staged[i]),
                Memory::Cuda { .. } => {
                    bucket.staged[i].copy_into(&mut bucket.device_inputs[i]).map_err(run_error)?;
                    bucket.binding.bind_input(spec.name.as_str(), &bucket.device_inputs[i])
                }
            }
            .map_err(run_error)?;
        }

        let BucketSlot { binding, options, staged: _, device_inputs: _, device_outputs, pool } = bucket;
        let set = match memory {
            Memory::Host => {
                let mut taken = take_set(pool, || new_set(output_specs, rows, &Allocator::default()))?;
                for (spec, tensor) in output_specs.iter().zip(taken.tensors(pool)?.iter_mut()) {
                    binding.bind_output(spec.name.as_str(), tensor).map_err(run_error)?;
                }
                drop(session.run_binding_with_options(binding, options).map_err(run_error)?);
                taken.into_shared(pool)?
            }
            Memory::Cuda { host_out, .. } => {
                drop(session.run_binding_with_options(binding, options).map_err(run_error)?);
                let mut taken = take_set(pool, || new_set(output_specs, rows, host_out))?;
                for (device, host) in device_outputs.iter().zip(taken.tensors(pool)?.iter_mut()) {
                    device.copy_into(host).map_err(run_error)?;
                }
                taken.into_shared(pool)?
            }
        };

        selected
            .iter()
            .map(|name| {
                let index = output_specs
                    .iter()
                    .position(|s| &s.name == name)
                    .ok_or_else(|| BackendError::Execution(format!("ORT did not return output '{name}'")))?;
                let spec = &output_specs[index];
                let shape: Vec<i64> = std::iter::once(rows).chain(spec.dims[1..].iter().copied()).collect();
                let held = HeldOutput { set: Arc::clone(&set), index, datatype: spec.datatype };
                let expected = spec.datatype.element_size().unwrap_or(0)
                    * shape.iter().map(|&d| usize::try_from(d).unwrap_or(0)).product::<usize>();
                let data = if expected == 0 { Bytes::new() } else { Bytes::from_owner(held) };
                if data.len() != expected {
                    return Err(BackendError::Execution(format!(
                        "ORT returned {} bytes for output '{name}' of shape {shape:?}",
                        data.len()
                    )));
                }
                Ok(Tensor { name: name.clone(), datatype: spec.datatype, shape, data })
            })
            .collect()
    }

    /// Counts a run of bucket `slot` on this thread; whether ORT may capture its graph in it.
    fn may_capture(&mut self, slot: usize) -> bool {
        let me = std::thread::current().id();
        self.runs_on_thread.get_mut(slot).is_none_or(|entry| count_run(entry, me))
    }

    fn build_slot(&self, session: &Session, slot: usize) -> ort::Result<BucketSlot> {
        let rows = i64::from(self.buckets[slot]);
        let mut options = RunOptions::new()?;
        if let Some(devices) = &self.arena_shrinkage {
            options.set(crate::backend::ARENA_SHRINKAGE_KEY, devices)?;
        }
        if self.graphs {
            // From 1: ORT reserves id 0 for its own use (onnxruntime_run_options_config_keys.h).
            options.set(GRAPH_ID_KEY, (slot + 1).to_string())?;
        }
        let mut binding = session.create_binding()?;
        let alloc = |specs: &[TensorSpec], allocator: &Allocator| -> ort::Result<Vec<DynTensor>> {
            specs.iter().map(|s| new_tensor(s, rows, allocator)).collect()
        };
        let (staged, device_inputs, device_outputs) = match &self.memory {
            Memory::Host => (alloc(&self.inputs, &Allocator::default())?, Vec::new(), Vec::new()),
            Memory::Cuda { device, staging, .. } => {
                let mut outputs = alloc(&self.outputs, device)?;
                for (spec, tensor) in self.outputs.iter().zip(outputs.iter_mut()) {
                    binding.bind_output(spec.name.as_str(), tensor)?;
                }
                (alloc(&self.inputs, staging)?, alloc(&self.inputs, device)?, outputs)
            }
        };
        tracing::debug!(rows, graphs = self.graphs, "IO binding set up for a bucket");
        Ok(BucketSlot { binding, options, staged, device_inputs, device_outputs, pool: Vec::new() })
    }
}

/// Counts a run on thread `me` in `entry` (the last thread and its runs; another thread starts
/// over, since ORT's capture state is per thread); whether it is one of the first [`CAPTURE_RUNS`].
fn count_run(entry: &mut (Option<ThreadId>, u32), me: ThreadId) -> bool {
    if entry.0 != Some(me) {
        *entry = (Some(me), 0);
    }
    entry.1 = entry.1.saturating_add(1);
    entry.1 <= CAPTURE_RUNS
}

fn new_tensor(spec: &TensorSpec, rows: i64, allocator: &Allocator) -> ort::Result<DynTensor> {
    let shape: Vec<i64> = std::iter::once(rows).chain(spec.dims[1..].iter().copied()).collect();
    let element =
        element_type_of(spec.datatype).ok_or_else(|| ort::Error::new("BYTES tensor in an IO binding"))?;
    DynTensor::new(allocator, element, shape)
}

fn new_set(specs: &[TensorSpec], rows: i64, allocator: &Allocator) -> Result<OutputSet, BackendError> {
    let tensors = specs
        .iter()
        .map(|s| new_tensor(s, rows, allocator))
        .collect::<ort::Result<_>>()
        .map_err(run_error)?;
    Ok(OutputSet { tensors })
}

/// The output set a run writes: one of the bucket's pool, or one for that run alone.
enum Taken {
    Pooled(usize),
    Alone(OutputSet),
}

/// An output set no response holds: a pooled one, a new pooled one while the pool has room, else
/// one for this run alone.
fn take_set(
    pool: &mut Vec<Arc<OutputSet>>,
    new: impl FnOnce() -> Result<OutputSet, BackendError>,
) -> Result<Taken, BackendError> {
    // `get_mut` (not `strong_count`) synchronizes with the last response's drop on another thread.
    if let Some(free) = pool.iter_mut().position(|s| Arc::get_mut(s).is_some()) {
        return Ok(Taken::Pooled(free));
    }
    let set = new()?;
    if pool.len() < POOLED_OUTPUT_SETS {
        pool.push(Arc::new(set));
        return Ok(Taken::Pooled(pool.len() - 1));
    }
    tracing::debug!("every pooled output set is still held by a response; one for this run alone");
    Ok(Taken::Alone(set))
}

impl Taken {
    fn tensors<'a>(
        &'a mut self,
        pool: &'a mut [Arc<OutputSet>],
    ) -> Result<&'a mut Vec<DynTensor>, BackendError> {
        match self {
            Taken::Pooled(i) => pool
                .get_mut(*i)
                .and_then(Arc::get_mut)
                .map(|s| &mut s.tensors)
                .ok_or_else(|| internal("pooled output set taken while held")),
            Taken::Alone(set) => Ok(&mut set.tensors),
        }
    }

    fn into_shared(self, pool: &[Arc<OutputSet>]) -> Result<Arc<OutputSet>, BackendError> {
        match self {
            Taken::Pooled(i) => {
                pool.get(i).map(Arc::clone).ok_or_else(|| internal("pooled output set missing"))
            }
            Taken::Alone(set) => Ok(Arc::new(set)),
        }
    }
}

/// One output of a set, owned by a response's `Bytes`.
struct HeldOutput {
    set: Arc<OutputSet>,
    index: usize,
    datatype: DataType,
}

impl AsRef<[u8]> for HeldOutput {
    fn as_ref(&self) -> &[u8] {
        // Host memory (plain, or pinned on CUDA), checked when the set was allocated.
        self.set.tensors.get(self.index).and_then(|t| fixed_bytes(t, self.datatype).ok()).unwrap_or(&[])
    }
}

fn internal(e: impl std::fmt::Display) -> BackendError {
    BackendError::Execution(format!("internal error in the ONNX Runtime IO binding (this is a bug): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_runs_of_a_bucket_on_each_thread_may_capture() {
        let mut entry = (None, 0);
        let here = std::thread::current().id();
        let there = std::thread::spawn(|| std::thread::current().id()).join().expect("thread");
        let first: Vec<bool> = (0..CAPTURE_RUNS + 2).map(|_| count_run(&mut entry, here)).collect();
        assert_eq!(first.iter().filter(|&&c| c).count(), CAPTURE_RUNS as usize);
        assert!(first[..CAPTURE_RUNS as usize].iter().all(|&c| c), "{first:?}");
        // The serving thread after the warmup's: its own captures.
        assert!(count_run(&mut entry, there));
        assert_eq!(entry, (Some(there), 1));
    }
}
