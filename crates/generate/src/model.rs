//! The decoder session: one ONNX Runtime session, its inputs and outputs checked against
//! genai_config.json at load, and one `step` that runs a (padded) batch of sequences.

use std::borrow::Cow;
use std::path::Path;

use ort::ep;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session, SessionInputValue, SessionOutputs};
use ort::value::{DynTensorValueType, DynValue, Tensor, TensorElementType, ValueType};

use crate::GenError;
use crate::config::{GenAiConfig, IoNames};

/// The key/value caches of a batch: `[batch, kv_heads, past_len, head_size]` float32 each,
/// ordered key 0, value 0, key 1, value 1, ...
pub type Cache = Vec<DynValue>;

pub struct Decoder {
    session: Session,
    /// On CUDA: the step's inputs and outputs bound so that `present` stays in device
    /// memory and comes back as the next `past` without a trip through the host.
    device: Option<DeviceBinding>,
    names: IoNames,
    has_position_ids: bool,
    pub layers: usize,
    pub kv_heads: usize,
    pub head_size: usize,
    pub vocab: usize,
}

struct DeviceBinding {
    binding: IoBinding,
    /// Where the caches live (the CUDA device).
    cache_memory: MemoryInfo<'static>,
    /// Where the logits go (host memory, read for sampling).
    host_memory: MemoryInfo<'static>,
}

/// One step's inputs besides the cache: `batch` rows of `seq` new tokens each, with the
/// attention mask over `past_len + seq` columns and the new tokens' positions.
pub struct StepInput {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub position_ids: Vec<i64>,
}

impl Decoder {
    pub fn load(
        dir: &Path,
        config: &GenAiConfig,
        intra_threads: usize,
        intra_spinning: Option<bool>,
        cuda_device: Option<i32>,
        cache: Option<&tern_backend_ort::ModelCache>,
    ) -> Result<Decoder, GenError> {
        let path = dir.join(&config.filename);
        if !path.is_file() {
            return Err(GenError::Internal(format!(
                "model file {} (genai_config.json model.decoder.filename) not found",
                path.display()
            )));
        }
        let load_error = |e: String| GenError::Internal(format!("cannot load {}: {e}", path.display()));
        let environment = tern_backend_ort::runtime::environment().map_err(|e| load_error(e.to_string()))?;
        let session = match cache.filter(|_| cuda_device.is_none()) {
            // The CPU decoder through the optimized-model cache, with the settings a CPU
            // session gets below (ORT's default level: all).
            Some(cache) => {
                let settings = tern_backend_ort::SessionSettings {
                    intra_op_threads: (intra_threads > 0).then_some(intra_threads),
                    intra_op_spinning: intra_spinning,
                    ..Default::default()
                };
                tern_backend_ort::model_cache::open_cached(cache, &path, &settings)
                    .map_err(|e| load_error(e.to_string()))?
            }
            None => {
                let mut builder = Session::builder(environment).map_err(|e| load_error(e.to_string()))?;
                if intra_threads > 0 {
                    builder =
                        builder.with_intra_threads(intra_threads).map_err(|e| load_error(e.to_string()))?;
                }
                if let Some(spin) = intra_spinning {
                    builder = builder.with_intra_op_spinning(spin).map_err(|e| load_error(e.to_string()))?;
                }
                if let Some(device) = cuda_device {
                    // `error_on_failure`: a CUDA request that cannot be met fails the load instead of
                    // silently running on the CPU.
                    builder = builder
                        .with_execution_providers([ep::CUDA::default()
                            .with_device_id(device)
                            .build()
                            .error_on_failure()])
                        .map_err(|e| {
                            load_error(format!("CUDA execution provider on device {device}: {e}"))
                        })?;
                }
                builder.commit_from_file(&path).map_err(|e| load_error(e.to_string()))?
            }
        };
        let device = match cuda_device {
            None => None,
            Some(id) => {
                let binding = session.create_binding().map_err(|e| load_error(e.to_string()))?;
                let cache_memory =
                    MemoryInfo::new(AllocationDevice::CUDA, id, AllocatorType::Device, MemoryType::Default)
                        .map_err(|e| load_error(e.to_string()))?;
                let host_memory =
                    MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)
                        .map_err(|e| load_error(e.to_string()))?;
                Some(DeviceBinding { binding, cache_memory, host_memory })
            }
        };
        let decoder = Decoder {
            device,
            has_position_ids: session.inputs().iter().any(|i| i.name() == config.names.position_ids),
            session,
            names: config.names.clone(),
            layers: config.num_hidden_layers,
            kv_heads: config.num_key_value_heads,
            head_size: config.head_size,
            vocab: config.vocab_size,
        };
        decoder.check_signature().map_err(|e| {
            GenError::Internal(format!("{} does not match genai_config.json: {e}", path.display()))
        })?;
        Ok(decoder)
    }

    /// The model's inputs and outputs against the names, types and sizes the config gives.
    fn check_signature(&self) -> Result<(), String> {
        let n = &self.names;
        let mut expected_inputs: Vec<(&str, TensorElementType, usize)> = vec![
            (&n.input_ids, TensorElementType::Int64, 2),
            (&n.attention_mask, TensorElementType::Int64, 2),
        ];
        if self.has_position_ids {
            expected_inputs.push((&n.position_ids, TensorElementType::Int64, 2));
        }
        for name in n.past_keys.iter().chain(&n.past_values) {
            expected_inputs.push((name, TensorElementType::Float32, 4));
        }
        for input in self.session.inputs() {
            if !expected_inputs.iter().any(|(name, _, _)| *name == input.name()) {
                return Err(format!(
                    "the model has input '{}', which genai_config.json does not name (the engine feeds \
                     only input_ids, attention_mask, position_ids and the key/value caches)",
                    input.name()
                ));
            }
        }
        for (name, ty, rank) in expected_inputs {
            let input = self
                .session
                .inputs()
                .iter()
                .find(|i| i.name() == name)
                .ok_or_else(|| format!("the model has no input '{name}'"))?;
            self.check_tensor("input", name, input.dtype(), ty, rank)?;
        }
        let mut expected_outputs: Vec<(&str, TensorElementType, usize)> =
            vec![(&n.logits, TensorElementType::Float32, 3)];
        for name in n.present_keys.iter().chain(&n.present_values) {
            expected_outputs.push((name, TensorElementType::Float32, 4));
        }
        for (name, ty, rank) in expected_outputs {
            let output = self
                .session
                .outputs()
                .iter()
                .find(|o| o.name() == name)
                .ok_or_else(|| format!("the model has no output '{name}'"))?;
            self.check_tensor("output", name, output.dtype(), ty, rank)?;
        }
        Ok(())
    }

    fn check_tensor(
        &self,
        kind: &str,
        name: &str,
        dtype: &ValueType,
        ty: TensorElementType,
        rank: usize,
    ) -> Result<(), String> {
        let ValueType::Tensor { ty: got, shape, .. } = dtype else {
            return Err(format!("{kind} '{name}' is not a tensor"));
        };
        if *got != ty {
            return Err(format!("{kind} '{name}' has element type {got}, the engine needs {ty}"));
        }
        if shape.len() != rank {
            return Err(format!("{kind} '{name}' has {} dimensions, expected {rank}", shape.len()));
        }
        let fixed = |i: usize, want: usize, what: &str| -> Result<(), String> {
            let d = shape[i];
            if d >= 0 && d as usize != want {
                return Err(format!(
                    "{kind} '{name}' dimension {i} is {d}, genai_config.json says {what} = {want}"
                ));
            }
            Ok(())
        };
        if rank == 4 {
            fixed(1, self.kv_heads, "num_key_value_heads")?;
            fixed(3, self.head_size, "head_size")?;
        }
        if rank == 3 {
            fixed(2, self.vocab, "vocab_size")?;
        }
        Ok(())
    }

    /// An empty cache for `batch` rows (past length 0), for a prefill.
    pub fn empty_cache(&self, batch: usize) -> Result<Cache, String> {
        (0..self.layers * 2)
            .map(|_| {
                Tensor::<f32>::from_array(([batch, self.kv_heads, 0, self.head_size], Vec::<f32>::new()))
                    .map(|t| t.into_dyn())
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    /// Runs one step. `on_row(row, logits)` sees the logits of each row's last new token; the
    /// step's present key/values come back as the next cache (moved, never copied).
    pub fn step(
        &mut self,
        input: StepInput,
        past: Cache,
        mut on_row: impl FnMut(usize, &[f32]),
    ) -> Result<Cache, String> {
        let StepInput { batch, seq, input_ids, attention_mask, position_ids } = input;
        let err = |e: ort::Error| e.to_string();
        let names = &self.names;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(3 + past.len());
        inputs.push((
            Cow::Borrowed(names.input_ids.as_str()),
            Tensor::from_array(([batch, seq], input_ids)).map_err(err)?.into(),
        ));
        let mask_len = attention_mask.len() / batch.max(1);
        inputs.push((
            Cow::Borrowed(names.attention_mask.as_str()),
            Tensor::from_array(([batch, mask_len], attention_mask)).map_err(err)?.into(),
        ));
        if self.has_position_ids {
            inputs.push((
                Cow::Borrowed(names.position_ids.as_str()),
                Tensor::from_array(([batch, seq], position_ids)).map_err(err)?.into(),
            ));
        }
        let mut past = past.into_iter();
        for layer in 0..self.layers {
            let (Some(k), Some(v)) = (past.next(), past.next()) else {
                return Err("the cache has fewer layers than the model (this is a bug)".into());
            };
            inputs.push((Cow::Borrowed(names.past_keys[layer].as_str()), k.into()));
            inputs.push((Cow::Borrowed(names.past_values[layer].as_str()), v.into()));
        }
        let mut outputs: SessionOutputs<'_> = match &mut self.device {
            None => self.session.run(inputs).map_err(err)?,
            Some(device) => {
                let binding = &mut device.binding;
                binding.clear();
                for (name, value) in &inputs {
                    binding.bind_input(name.as_ref(), &**value).map_err(err)?;
                }
                drop(inputs);
                binding.bind_output_to_device(names.logits.as_str(), &device.host_memory).map_err(err)?;
                for name in names.present_keys.iter().chain(&names.present_values) {
                    binding.bind_output_to_device(name.as_str(), &device.cache_memory).map_err(err)?;
                }
                self.session.run_binding(binding).map_err(err)?
            }
        };
        {
            let logits = outputs.get(&names.logits).ok_or("the model gave no logits")?;
            let (shape, data) = logits.try_extract_tensor::<f32>().map_err(err)?;
            let dims: &[i64] = shape;
            if dims.len() != 3 || dims[0] as usize != batch || dims[2] as usize != self.vocab || dims[1] < 1 {
                return Err(format!("logits have shape {dims:?}, expected [{batch}, {seq}, {}]", self.vocab));
            }
            let steps = dims[1] as usize;
            for row in 0..batch {
                let start = (row * steps + steps - 1) * self.vocab;
                on_row(row, &data[start..start + self.vocab]);
            }
        }
        let mut cache = Vec::with_capacity(self.layers * 2);
        for layer in 0..self.layers {
            for name in [&names.present_keys[layer], &names.present_values[layer]] {
                cache.push(outputs.remove(name).ok_or_else(|| format!("the model gave no output '{name}'"))?);
            }
        }
        drop(outputs);
        if let Some(device) = &mut self.device {
            // Let go of this step's inputs (the previous cache) now, not at the next step.
            device.binding.clear();
        }
        Ok(cache)
    }
}

/// A cache tensor in host memory: as it is on the CPU, copied from the device on CUDA (when
/// the batch is rebuilt).
pub fn to_host(value: DynValue) -> Result<DynValue, String> {
    let tensor = value.downcast::<DynTensorValueType>().map_err(|e| e.to_string())?;
    if tensor.memory_info().is_cpu_accessible() {
        return Ok(tensor.into_dyn());
    }
    tensor.to(AllocationDevice::CPU, 0).map(|t| t.into_dyn()).map_err(|e| e.to_string())
}
