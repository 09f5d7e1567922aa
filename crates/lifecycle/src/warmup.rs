//! Triton's `model_warmup`: every instance of a version runs the config's samples before the
//! version is READY, through the backend-neutral [`Backend::infer`], so a slow first run (lazy
//! initialisation, kernel selection) is paid before traffic switches to it. Instances that pad
//! batches to buckets ([`Backend::batch_buckets`]) first run one batch of each bucket
//! ([`run_buckets`]), so no client pays the first plan of a shape.
//!
//! Like Triton's (core src/backend_model_instance.cc, `GenerateWarmupData` and `WarmUp`), a
//! sample runs on the instance directly: a model with `sequence_batching` gets no sequence slot
//! or state from it, and the control and state tensors the sample names reach the model as
//! given. Those it leaves out are filled in as a sequence of one request
//! ([`tern_scheduler::sequence::warmup_inputs`]), where Triton would pass the sample on without
//! them and an ONNX model would fail its warmup.

use tern_backend::Backend;
use tern_core::{DataType, Tensor};
use tern_proto::inference::ModelConfig;

/// Runs every sample of `config.model_warmup` `count` times on every instance. One sample's
/// tensors exist at a time. What a request naming no output runs: the config's outputs, not
/// every model output.
pub fn run(
    config: &ModelConfig,
    dir: &std::path::Path,
    backends: &mut [Box<dyn Backend>],
    model: &str,
    version: u64,
) -> Result<(), String> {
    let outputs: Vec<String> = config.output.iter().map(|o| o.name.clone()).collect();
    for warmup in &config.model_warmup {
        let mut inputs = warmup_sample(config, dir, warmup)?;
        add_sequence_inputs(config, &mut inputs, warmup.batch_size.max(1));
        for backend in backends.iter_mut() {
            for _ in 0..warmup.count.max(1) {
                backend.infer(inputs.clone(), &outputs).map_err(|e| {
                    format!("model '{model}' version {version}: warmup '{}' failed: {e}", warmup.name)
                })?;
            }
        }
    }
    if !config.model_warmup.is_empty() {
        tracing::info!(version, samples = config.model_warmup.len(), "warmup done");
    }
    Ok(())
}

/// Runs one batch of every bucket on each instance that pads to buckets, instances in parallel:
/// the shapes the instance will ever run are planned before READY. The inputs are zeros (empty
/// strings for BYTES) in the config's dims (a variable dim as 1) and carry no meaning: plans
/// depend on shapes. A bucket that fails is logged and skipped, not a load error: such a model
/// may well serve real inputs, and its first batch of that size then plans as without buckets.
/// A bucket whose inputs would exceed [`MAX_WARMUP_SAMPLE_BYTES`] is skipped too.
pub fn run_buckets(config: &ModelConfig, backends: &mut [Box<dyn Backend>], version: u64) {
    if backends.iter().all(|b| b.batch_buckets().is_empty()) {
        return;
    }
    let outputs: Vec<String> = config.output.iter().map(|o| o.name.clone()).collect();
    let started = std::time::Instant::now();
    let span = tracing::Span::current();
    std::thread::scope(|scope| {
        for backend in backends.iter_mut().filter(|b| !b.batch_buckets().is_empty()) {
            let (outputs, span) = (&outputs, span.clone());
            scope.spawn(move || {
                let _enter = span.enter();
                for bucket in backend.batch_buckets().to_vec() {
                    let inputs = match bucket_inputs(config, bucket) {
                        Ok(mut inputs) => {
                            add_sequence_inputs(config, &mut inputs, bucket);
                            inputs
                        }
                        Err(reason) => {
                            tracing::info!(bucket, reason, "bucket warmup skipped");
                            continue;
                        }
                    };
                    if let Err(e) = backend.infer(inputs, outputs) {
                        tracing::warn!(bucket, error = %e, "bucket warmup failed (zero inputs); its first batch plans it");
                    }
                }
            });
        }
    });
    tracing::info!(version, elapsed_ms = started.elapsed().as_millis() as u64, "batch buckets warmed up");
}

/// For a model with `sequence_batching`: the control and state inputs `inputs` does not give,
/// as `rows` rows of a sequence of one request.
fn add_sequence_inputs(config: &ModelConfig, inputs: &mut Vec<Tensor>, rows: u32) {
    let Some(sequence) = tern_scheduler::sequence::SequenceConfig::from_model_config(config) else { return };
    let batching = config.max_batch_size > 0;
    for tensor in tern_scheduler::sequence::warmup_inputs(&sequence, batching, rows as usize) {
        if !inputs.iter().any(|t| t.name == tensor.name) {
            inputs.push(tensor);
        }
    }
}

/// Zero inputs of `rows` rows for every input the config requires.
fn bucket_inputs(config: &ModelConfig, rows: u32) -> Result<Vec<Tensor>, &'static str> {
    let mut total = 0usize;
    let mut inputs = Vec::with_capacity(config.input.len());
    for input in config.input.iter().filter(|i| !i.optional) {
        let datatype = DataType::from_config(input.data_type).ok_or("an input has no valid data_type")?;
        let dims = input.reshape.as_ref().map_or(&input.dims, |r| &r.shape);
        let shape: Vec<i64> =
            std::iter::once(i64::from(rows)).chain(dims.iter().map(|&d| d.max(1))).collect();
        let elements = tern_core::request::element_count(&shape).ok_or("an input's shape is too large")?;
        let element_bytes = datatype.element_size().unwrap_or(4);
        let bytes =
            usize::try_from(elements).ok().and_then(|n| n.checked_mul(element_bytes)).ok_or("too large")?;
        total = total.saturating_add(bytes);
        if total > MAX_WARMUP_SAMPLE_BYTES {
            return Err("its inputs would take over 512 MiB");
        }
        // BYTES: each element an empty string (a zero length).
        inputs.push(Tensor {
            name: input.name.clone(),
            datatype,
            shape,
            data: bytes::Bytes::from(vec![0u8; bytes]),
        });
    }
    Ok(inputs)
}

/// Bytes of one warmup sample's inputs, all together, at most.
const MAX_WARMUP_SAMPLE_BYTES: usize = 512 << 20;

/// The inputs of one `model_warmup` sample: zeros, random values, or a file from the model's
/// `warmup/` directory (Triton's layout), with the batch dimension when the model batches.
fn warmup_sample(
    config: &ModelConfig,
    dir: &std::path::Path,
    w: &tern_proto::inference::ModelWarmup,
) -> Result<Vec<Tensor>, String> {
    use tern_proto::inference::model_warmup::input::InputDataType;
    let model = &config.name;
    let mut total = 0usize;
    let mut inputs = Vec::new();
    for (name, input) in &w.inputs {
        let datatype = DataType::from_config(input.data_type).ok_or_else(|| {
            format!("model '{model}': warmup '{}': input '{name}' has no valid data_type", w.name)
        })?;
        let mut shape = input.dims.clone();
        if config.max_batch_size > 0 {
            shape.insert(0, i64::from(w.batch_size.max(1)));
        }
        let elements =
            tern_core::request::element_count(&shape).filter(|&n| n <= 1 << 28).ok_or_else(|| {
                format!("model '{model}': warmup '{}': input '{name}' has an invalid shape", w.name)
            })? as usize;
        // Checked before anything is allocated or read (BYTES elements take 8 bytes here).
        let bytes = match &input.input_data_type {
            Some(InputDataType::InputDataFile(file)) => {
                if tern_repository::validate_model_name(file).is_err() {
                    return Err(format!("model '{model}': warmup file '{file}' must be a plain file name"));
                }
                std::fs::metadata(dir.join("warmup").join(file))
                    .map_or(0, |m| usize::try_from(m.len()).unwrap_or(usize::MAX))
            }
            _ => elements.saturating_mul(datatype.element_size().unwrap_or(8)),
        };
        total = total.saturating_add(bytes);
        if total > MAX_WARMUP_SAMPLE_BYTES {
            return Err(format!(
                "model '{model}': warmup '{}': its inputs take over {} MiB, the limit for one sample",
                w.name,
                MAX_WARMUP_SAMPLE_BYTES >> 20
            ));
        }
        let data: Vec<u8> = match (&input.input_data_type, datatype.element_size()) {
            (Some(InputDataType::InputDataFile(file)), _) => std::fs::read(dir.join("warmup").join(file))
                .map_err(|e| format!("model '{model}': warmup file '{file}': {e}"))?,
            // BYTES: each element an empty string (zeros) or 4 random bytes.
            (Some(InputDataType::RandomData(true)), None) => (0..elements)
                .flat_map(|i| [4u8, 0, 0, 0].into_iter().chain((i as u32).to_le_bytes()))
                .collect(),
            (_, None) => vec![0u8; elements * 4],
            (Some(InputDataType::RandomData(true)), Some(size)) if datatype == DataType::Fp32 => {
                // Random but finite: floats in [0, 1) from a small LCG.
                let mut x = 0x2545_f491u32;
                let _ = size;
                (0..elements)
                    .flat_map(|_| {
                        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        ((x >> 8) as f32 / (1u32 << 24) as f32).to_le_bytes()
                    })
                    .collect()
            }
            (_, Some(size)) => vec![0u8; elements * size],
        };
        inputs.push(Tensor { name: name.clone(), datatype, shape, data: bytes::Bytes::from(data) });
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use tern_proto::inference::{DataType as ConfigType, ModelInput};

    use super::*;

    fn input(name: &str, data_type: ConfigType, dims: &[i64], optional: bool) -> ModelInput {
        ModelInput {
            name: name.into(),
            data_type: data_type as i32,
            dims: dims.to_vec(),
            optional,
            ..Default::default()
        }
    }

    #[test]
    fn bucket_inputs_are_zeros_of_the_bucket_size_for_required_inputs() {
        let config = ModelConfig {
            max_batch_size: 8,
            input: vec![
                input("x", ConfigType::TypeFp32, &[-1, 3], false),
                input("s", ConfigType::TypeString, &[2], false),
                input("extra", ConfigType::TypeFp32, &[1], true),
            ],
            ..Default::default()
        };
        let inputs = bucket_inputs(&config, 4).expect("inputs");
        assert_eq!(inputs.len(), 2, "optional inputs are left out");
        assert_eq!(inputs[0].shape, vec![4, 1, 3], "a variable dim runs as 1");
        assert_eq!(inputs[0].data.len(), 4 * 3 * 4);
        assert!(inputs[0].data.iter().all(|&b| b == 0));
        assert_eq!(inputs[1].shape, vec![4, 2]);
        // BYTES: empty strings (a zero length each).
        assert_eq!(inputs[1].data.len(), 4 * 2 * 4);
        let huge = ModelConfig {
            input: vec![input("x", ConfigType::TypeFp32, &[1 << 20, 1 << 10], false)],
            ..config
        };
        assert!(bucket_inputs(&huge, 8).is_err(), "over the warmup byte limit");
    }

    #[test]
    fn a_sequence_sample_keeps_its_own_controls_and_gets_the_others() {
        let config: ModelConfig = tern_repository::parse_config(
            r#"name: "s" max_batch_size: 4
            input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
            sequence_batching {
              control_input [
                { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
                { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] }
              ]
              state [ { input_name: "S" output_name: "S_OUT" data_type: TYPE_FP32 dims: [ 2 ] } ]
            }"#,
        )
        .expect("config");
        let given = Tensor {
            name: "START".into(),
            datatype: DataType::Int32,
            shape: vec![2, 1],
            data: bytes::Bytes::from(vec![0u8; 8]),
        };
        let mut inputs = vec![given.clone()];
        add_sequence_inputs(&config, &mut inputs, 2);
        let names: Vec<&str> = inputs.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["START", "READY", "S"]);
        assert_eq!(inputs[0], given, "the sample's own START, as given (Triton)");
        assert_eq!((inputs[1].shape.clone(), inputs[1].data.to_vec()), (vec![2, 1], [1, 0, 0, 0].repeat(2)));
        assert_eq!(inputs[2].shape, vec![2, 2]);
        let mut plain = vec![];
        add_sequence_inputs(&ModelConfig::default(), &mut plain, 2);
        assert!(plain.is_empty());
    }
}
