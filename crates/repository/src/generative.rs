//! Generative language models: a version directory in ONNX Runtime GenAI's layout
//! (`genai_config.json`, `model.onnx`, `tokenizer.json`, `tokenizer_config.json`), served by the
//! generation engine as a decoupled model (`backend: "onnxruntime_genai"`).
//!
//! The Triton-facing inputs and outputs are the engine's, not the ONNX file's (which holds
//! token ids and KV-cache tensors): [`auto_complete_generative`] fills them in when config.pbtxt
//! is absent or lists only some, and refuses a config that contradicts them, naming the model
//! and the field. The engine settings come from config `parameters`
//! ([`GenerativeParameters`]), each bounded.

use std::path::Path;

use tern_proto::inference::model_config::SchedulingChoice;
use tern_proto::inference::model_instance_group::Kind;
use tern_proto::inference::model_version_policy::{Latest, PolicyChoice};
use tern_proto::inference::{
    DataType, ModelConfig, ModelInput, ModelInstanceGroup, ModelOutput, ModelTransactionPolicy,
    ModelVersionPolicy,
};

use crate::error::RepositoryError;
use crate::scan::ModelSource;

/// `backend` of a generative model.
pub const GENAI_BACKEND: &str = "onnxruntime_genai";
/// The file that makes a version directory a generative model.
pub const GENAI_CONFIG_FILENAME: &str = "genai_config.json";

/// `parameters` key: most sequences decoded together in one step (1: no continuous batching).
pub const MAX_BATCH_KEY: &str = "max_batch";
/// `parameters` key: KV-cache bytes the engine may hold at once.
pub const KV_CACHE_BYTES_KEY: &str = "kv_cache_bytes";
/// `parameters` key: most requests waiting for admission.
pub const MAX_QUEUE_KEY: &str = "max_queue";
/// `parameters` key: ONNX Runtime intra-op threads (as for ONNX models; 0: ORT's default).
pub const INTRA_OP_THREADS_KEY: &str = "intra_op_thread_count";
/// `parameters` key: whether ONNX Runtime's idle intra-op threads spin before they sleep (as for
/// ONNX models; ONNX Runtime's default: yes).
pub const INTRA_OP_SPINNING_KEY: &str = "session.intra_op.allow_spinning";

/// Default of `max_batch`.
pub const DEFAULT_GEN_MAX_BATCH: usize = 16;
/// Default of `kv_cache_bytes` (256 MiB).
pub const DEFAULT_KV_CACHE_BYTES: u64 = 256 << 20;
/// Default of `max_queue`.
pub const DEFAULT_GEN_MAX_QUEUE: usize = 256;
/// Upper bound of `max_batch`.
pub const MAX_GEN_BATCH: usize = 1_024;
/// Bounds of `kv_cache_bytes`: 1 MiB to 1 TiB.
pub const MIN_KV_CACHE_BYTES: u64 = 1 << 20;
pub const MAX_KV_CACHE_BYTES: u64 = 1 << 40;
/// Upper bound of `max_queue`.
pub const MAX_GEN_QUEUE: usize = 65_536;
/// Upper bound of `intra_op_thread_count` (as for ONNX models).
pub const MAX_GEN_THREADS: usize = 1_024;

/// `parameters` key: the model's chat template (tokenizer_config.json `chat_template`), which
/// the OpenAI chat route renders at the edge (it has no tokenizer files).
pub const CHAT_TEMPLATE_KEY: &str = "chat_template";
/// `parameters` key: tokenizer_config.json `bos_token` (a template variable).
pub const BOS_TOKEN_KEY: &str = "bos_token";
/// `parameters` key: tokenizer_config.json `eos_token` (a template variable).
pub const EOS_TOKEN_KEY: &str = "eos_token";
/// The tokenizer file that holds the chat template.
pub const TOKENIZER_CONFIG_FILENAME: &str = "tokenizer_config.json";
/// Largest tokenizer_config.json read for the chat template (real ones are a few hundred KiB
/// at most, with their added-token tables).
pub const MAX_TOKENIZER_CONFIG_BYTES: u64 = 8 << 20;
/// Largest chat template carried in the config (real ones are a few KiB).
pub const MAX_CHAT_TEMPLATE_BYTES: usize = 256 << 10;

/// Adds `chat_template`, `bos_token` and `eos_token` from `dir`'s tokenizer_config.json to the
/// config `parameters` of generative model `name`, each unless the config already gives it. A
/// template given as a list of named templates (newer Hugging Face files) gives its "default"
/// one. No tokenizer_config.json, or no template in it: nothing is added (the chat route then
/// says the model has no chat template).
pub fn complete_chat_parameters(
    name: &str,
    config: &mut ModelConfig,
    dir: &Path,
) -> Result<(), RepositoryError> {
    use serde_json::Value;
    use tern_proto::inference::ModelParameter;
    let invalid = |message: String| RepositoryError::invalid(name, message);
    let path = dir.join(TOKENIZER_CONFIG_FILENAME);
    let Ok(meta) = std::fs::metadata(&path) else { return Ok(()) };
    if meta.len() > MAX_TOKENIZER_CONFIG_BYTES {
        return Err(invalid(format!(
            "{} has {} bytes, over the limit of {MAX_TOKENIZER_CONFIG_BYTES}",
            path.display(),
            meta.len()
        )));
    }
    let text = std::fs::read(&path).map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    let json: Value = serde_json::from_slice(&text)
        .map_err(|e| invalid(format!("{} is not valid JSON: {e}", path.display())))?;
    let template = match json.get(CHAT_TEMPLATE_KEY) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        Some(_) => {
            return Err(invalid(format!(
                "{}: 'chat_template' must be a string or a list of {{name, template}}",
                path.display()
            )));
        }
    };
    // A token is a string or an AddedToken object with `content`.
    let token = |field: &str| match json.get(field) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => v.get("content").and_then(Value::as_str).map(str::to_owned),
        None => None,
    };
    let Some(template) = template else { return Ok(()) };
    if template.len() > MAX_CHAT_TEMPLATE_BYTES {
        return Err(invalid(format!(
            "{}: the chat template has {} bytes, over the limit of {MAX_CHAT_TEMPLATE_BYTES}",
            path.display(),
            template.len()
        )));
    }
    for (key, value) in [
        (CHAT_TEMPLATE_KEY, Some(template)),
        (BOS_TOKEN_KEY, token(BOS_TOKEN_KEY)),
        (EOS_TOKEN_KEY, token(EOS_TOKEN_KEY)),
    ] {
        if let Some(value) = value
            && value.len() <= MAX_CHAT_TEMPLATE_BYTES
        {
            config.parameters.entry(key.to_owned()).or_insert(ModelParameter { string_value: value });
        }
    }
    Ok(())
}

/// One Triton-facing tensor of a generative model.
struct Io {
    name: &'static str,
    data_type: DataType,
    dims: &'static [i64],
    optional: bool,
}

const fn io(name: &'static str, data_type: DataType, dims: &'static [i64], optional: bool) -> Io {
    Io { name, data_type, dims, optional }
}

/// The inputs: the prompt, and the sampling parameters of Triton's generate extension.
const INPUTS: &[Io] = &[
    io("text_input", DataType::TypeString, &[1], false),
    io("max_tokens", DataType::TypeInt32, &[1], true),
    io("temperature", DataType::TypeFp32, &[1], true),
    io("top_k", DataType::TypeInt32, &[1], true),
    io("top_p", DataType::TypeFp32, &[1], true),
    io("seed", DataType::TypeUint64, &[1], true),
    io("repetition_penalty", DataType::TypeFp32, &[1], true),
    io("stop", DataType::TypeString, &[-1], true),
    io("stop_token_ids", DataType::TypeInt32, &[-1], true),
    io("ignore_eos", DataType::TypeBool, &[1], true),
    io("stream", DataType::TypeBool, &[1], true),
];

/// The outputs: the text and ids each response adds, and why the generation ended (final
/// response only).
const OUTPUTS: &[Io] = &[
    io("text_output", DataType::TypeString, &[1], false),
    io("output_ids", DataType::TypeInt32, &[-1], false),
    io("finish_reason", DataType::TypeString, &[1], false),
];

/// The names of a generative model's inputs, in config order.
pub fn generative_input_names() -> impl Iterator<Item = &'static str> {
    INPUTS.iter().map(|i| i.name)
}

/// Whether `source` (with its given config, or none) is a generative model: the config says
/// `backend: "onnxruntime_genai"`, or names no platform or backend and the highest version
/// directory holds `genai_config.json`.
pub fn is_generative(source: &ModelSource, config: Option<&ModelConfig>) -> bool {
    let (platform, backend) = config.map_or(("", ""), |c| (c.platform.as_str(), c.backend.as_str()));
    if backend == GENAI_BACKEND {
        return true;
    }
    platform.is_empty()
        && backend.is_empty()
        && source.versions.iter().rev().any(|v| is_generative_version(&source.dir.join(v.to_string())))
}

/// Whether a version directory is in ONNX Runtime GenAI's layout.
pub fn is_generative_version(dir: &Path) -> bool {
    dir.join(GENAI_CONFIG_FILENAME).is_file()
}

/// Completes the config of generative model `name` (`None`: no config.pbtxt): `backend`,
/// `max_batch_size: 0`, `model_transaction_policy { decoupled: true }`, the inputs and
/// outputs a config leaves out, one instance, and the version policy as for every model.
/// Refuses what the engine cannot serve, naming the model and field: another platform or
/// backend, batching (the engine batches by itself), a non-decoupled policy, an unknown
/// input or output, a datatype or shape other than the engine's, more than one instance,
/// and `parameters` out of bounds ([`generative_parameters`]). With `strict`, config.pbtxt
/// must be there (its inputs and outputs are still filled in: they are the engine's, not the
/// model file's).
pub fn auto_complete_generative(
    name: &str,
    config: Option<ModelConfig>,
    strict: bool,
) -> Result<ModelConfig, RepositoryError> {
    let mut config = match config {
        Some(config) => config,
        None if strict => return Err(RepositoryError::ConfigRequired { model: name.to_owned() }),
        None => ModelConfig::default(),
    };
    let invalid = |message: String| RepositoryError::invalid(name, message);
    if config.name.is_empty() {
        config.name = name.to_owned();
    } else if config.name != name {
        return Err(RepositoryError::NameMismatch { model: name.to_owned(), config_name: config.name });
    }
    if !config.platform.is_empty() || !matches!(config.backend.as_str(), "" | GENAI_BACKEND) {
        return Err(invalid(format!(
            "the version directory holds {GENAI_CONFIG_FILENAME} (a generative model), served by \
             backend '{GENAI_BACKEND}', but the config gives platform '{}' / backend '{}'",
            config.platform, config.backend
        )));
    }
    GENAI_BACKEND.clone_into(&mut config.backend);
    if config.max_batch_size != 0 {
        return Err(invalid(format!(
            "max_batch_size {} is not supported for a generative model: it must be 0 (the \
             engine batches sequences itself; set parameters {{ key: \"{MAX_BATCH_KEY}\" }})",
            config.max_batch_size
        )));
    }
    match &config.model_transaction_policy {
        Some(ModelTransactionPolicy { decoupled: false }) => {
            return Err(invalid(
                "model_transaction_policy.decoupled must be true for a generative model (it \
                 answers with one response per token)"
                    .to_owned(),
            ));
        }
        _ => config.model_transaction_policy = Some(ModelTransactionPolicy { decoupled: true }),
    }
    match &config.scheduling_choice {
        None => {}
        Some(SchedulingChoice::DynamicBatching(_)) => {
            return Err(invalid(format!(
                "dynamic_batching is not supported for a generative model (the engine batches \
                 sequences itself; set parameters {{ key: \"{MAX_BATCH_KEY}\" }})"
            )));
        }
        Some(_) => {
            return Err(invalid("sequence_batching is not supported for a generative model".to_owned()));
        }
    }
    if config.version_policy.is_none() {
        config.version_policy = Some(ModelVersionPolicy {
            policy_choice: Some(PolicyChoice::Latest(Latest { num_versions: 1 })),
        });
    }
    complete_inputs(&mut config)?;
    complete_outputs(&mut config)?;
    complete_instance_group(&mut config)?;
    generative_parameters(&config)?;
    // A generative model is decoupled: Triton refuses its response cache.
    crate::validate::check_response_cache(&config)?;
    Ok(config)
}

fn type_name(data_type: i32) -> String {
    DataType::try_from(data_type).map_or_else(|_| data_type.to_string(), |t| t.as_str_name().to_owned())
}

/// Checks one listed tensor against the engine's; fills in missing dims and datatype.
fn check_tensor(
    model: &str,
    kind: &str,
    known: &[Io],
    name: &str,
    data_type: &mut i32,
    dims: &mut Vec<i64>,
) -> Result<(), RepositoryError> {
    let Some(spec) = known.iter().find(|k| k.name == name) else {
        let names: Vec<&str> = known.iter().map(|k| k.name).collect();
        return Err(RepositoryError::invalid(
            model,
            format!("unexpected {kind} '{name}' for a generative model (its {kind}s: {})", names.join(", ")),
        ));
    };
    if *data_type == DataType::TypeInvalid as i32 {
        *data_type = spec.data_type as i32;
    } else if *data_type != spec.data_type as i32 {
        return Err(RepositoryError::invalid(
            model,
            format!(
                "{kind} '{name}': data_type {} is not supported; a generative model's '{name}' is {}",
                type_name(*data_type),
                spec.data_type.as_str_name()
            ),
        ));
    }
    if dims.is_empty() {
        *dims = spec.dims.to_vec();
    } else if dims.as_slice() != spec.dims {
        return Err(RepositoryError::invalid(
            model,
            format!(
                "{kind} '{name}': dims {dims:?} are not supported; a generative model's '{name}' has dims {:?}",
                spec.dims
            ),
        ));
    }
    Ok(())
}

fn complete_inputs(config: &mut ModelConfig) -> Result<(), RepositoryError> {
    let model = config.name.clone();
    for input in &mut config.input {
        check_tensor(&model, "input", INPUTS, &input.name, &mut input.data_type, &mut input.dims)?;
        if input.name == "text_input" && input.optional {
            return Err(RepositoryError::invalid(&model, "input 'text_input' cannot be optional".to_owned()));
        }
        if input.reshape.is_some() || input.is_shape_tensor || input.allow_ragged_batch {
            return Err(RepositoryError::invalid(
                &model,
                format!(
                    "input '{}': reshape, is_shape_tensor and allow_ragged_batch are not supported for a generative model",
                    input.name
                ),
            ));
        }
        input.optional = INPUTS.iter().any(|k| k.name == input.name && k.optional);
    }
    for spec in INPUTS {
        if !config.input.iter().any(|i| i.name == spec.name) {
            config.input.push(ModelInput {
                name: spec.name.to_owned(),
                data_type: spec.data_type as i32,
                dims: spec.dims.to_vec(),
                optional: spec.optional,
                ..Default::default()
            });
        }
    }
    Ok(())
}

fn complete_outputs(config: &mut ModelConfig) -> Result<(), RepositoryError> {
    let model = config.name.clone();
    for output in &mut config.output {
        check_tensor(&model, "output", OUTPUTS, &output.name, &mut output.data_type, &mut output.dims)?;
        if output.reshape.is_some() || !output.label_filename.is_empty() {
            return Err(RepositoryError::invalid(
                &model,
                format!(
                    "output '{}': reshape and label_filename are not supported for a generative model",
                    output.name
                ),
            ));
        }
    }
    for spec in OUTPUTS {
        if !config.output.iter().any(|o| o.name == spec.name) {
            config.output.push(ModelOutput {
                name: spec.name.to_owned(),
                data_type: spec.data_type as i32,
                dims: spec.dims.to_vec(),
                ..Default::default()
            });
        }
    }
    Ok(())
}

/// One engine per version: one instance, on the CPU or on one GPU.
fn complete_instance_group(config: &mut ModelConfig) -> Result<(), RepositoryError> {
    let model = config.name.clone();
    let invalid = |message: String| Err(RepositoryError::invalid(&model, message));
    match config.instance_group.as_mut_slice() {
        [] => config.instance_group.push(ModelInstanceGroup {
            name: model.clone(),
            kind: Kind::Cpu as i32,
            count: 1,
            ..Default::default()
        }),
        [group] => {
            if group.count > 1 {
                return invalid(format!(
                    "instance_group '{}' count {}: a generative model runs one engine per version (count 1); \
                     the engine serves many sequences at once",
                    group.name, group.count
                ));
            }
            group.count = 1;
            if group.name.is_empty() {
                group.name = format!("{model}_0");
            }
            match Kind::try_from(group.kind) {
                Ok(Kind::Cpu) | Ok(Kind::Auto) if group.gpus.is_empty() => group.kind = Kind::Cpu as i32,
                Ok(Kind::Gpu) | Ok(Kind::Auto) if group.gpus.len() <= 1 => {
                    group.kind = Kind::Gpu as i32;
                    if group.gpus.is_empty() {
                        group.gpus.push(0);
                    }
                }
                Ok(Kind::Gpu) => {
                    return invalid(format!(
                        "instance_group '{}': a generative model runs on one GPU, the config lists {:?}",
                        group.name, group.gpus
                    ));
                }
                _ => {
                    return invalid(format!(
                        "instance_group '{}': kind {} is not supported for a generative model (KIND_CPU or KIND_GPU)",
                        group.name,
                        Kind::try_from(group.kind)
                            .map_or_else(|_| group.kind.to_string(), |k| k.as_str_name().to_owned())
                    ));
                }
            }
        }
        _ => {
            return invalid(
                "a generative model runs one engine per version: give one instance_group".to_owned(),
            );
        }
    }
    Ok(())
}

/// The engine settings of a generative model's config `parameters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerativeParameters {
    pub max_batch: usize,
    pub kv_cache_bytes: u64,
    pub max_queue: usize,
    /// 0: ONNX Runtime's default.
    pub intra_op_threads: usize,
    /// `None`: ONNX Runtime's default (spin).
    pub intra_op_spinning: Option<bool>,
    /// `Some(gpu)` for a `KIND_GPU` instance group.
    pub gpu: Option<i32>,
}

/// Reads and bounds `max_batch` (1 ..= [`MAX_GEN_BATCH`]), `kv_cache_bytes`
/// ([`MIN_KV_CACHE_BYTES`] ..= [`MAX_KV_CACHE_BYTES`]), `max_queue` (0 ..= [`MAX_GEN_QUEUE`])
/// and `intra_op_thread_count` (0 ..= [`MAX_GEN_THREADS`]) from a completed config.
pub fn generative_parameters(config: &ModelConfig) -> Result<GenerativeParameters, RepositoryError> {
    let model = config.name.as_str();
    let read = |key: &str, default: u64, min: u64, max: u64| -> Result<u64, RepositoryError> {
        let Some(param) = config.parameters.get(key) else { return Ok(default) };
        let text = param.string_value.trim();
        let value: u64 = text.parse().map_err(|_| {
            RepositoryError::invalid(
                model,
                format!("parameters '{key}': '{}' is not a whole number", param.string_value),
            )
        })?;
        if value < min || value > max {
            return Err(RepositoryError::invalid(
                model,
                format!("parameters '{key}': {value} is out of range ({min} to {max})"),
            ));
        }
        Ok(value)
    };
    let gpu = config
        .instance_group
        .iter()
        .find(|g| g.kind == Kind::Gpu as i32)
        .map(|g| g.gpus.first().copied().unwrap_or(0));
    Ok(GenerativeParameters {
        max_batch: read(MAX_BATCH_KEY, DEFAULT_GEN_MAX_BATCH as u64, 1, MAX_GEN_BATCH as u64)? as usize,
        kv_cache_bytes: read(
            KV_CACHE_BYTES_KEY,
            DEFAULT_KV_CACHE_BYTES,
            MIN_KV_CACHE_BYTES,
            MAX_KV_CACHE_BYTES,
        )?,
        max_queue: read(MAX_QUEUE_KEY, DEFAULT_GEN_MAX_QUEUE as u64, 0, MAX_GEN_QUEUE as u64)? as usize,
        intra_op_threads: read(INTRA_OP_THREADS_KEY, 0, 0, MAX_GEN_THREADS as u64)? as usize,
        intra_op_spinning: config
            .parameters
            .get(INTRA_OP_SPINNING_KEY)
            .map(|p| match p.string_value.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "on" => Ok(true),
                "0" | "false" | "off" => Ok(false),
                _ => Err(RepositoryError::invalid(
                    model,
                    format!(
                        "parameters '{INTRA_OP_SPINNING_KEY}': '{}' is not a boolean (true, false, 1 or 0)",
                        p.string_value
                    ),
                )),
            })
            .transpose()?,
        gpu,
    })
}

/// Whether `config` (completed) is of a generative model.
pub fn is_generative_config(config: &ModelConfig) -> bool {
    config.backend == GENAI_BACKEND
}

#[cfg(test)]
mod tests;
