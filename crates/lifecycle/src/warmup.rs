//! Triton's `model_warmup`: every instance of a version runs the config's samples before the
//! version is READY, through the backend-neutral [`Backend::infer`], so a slow first run (lazy
//! initialisation, kernel selection) is paid before traffic switches to it.

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
        let inputs = warmup_sample(config, dir, warmup)?;
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
