//! What an embedding model's config and files say: pooling, normalization, token limit, the
//! tokenizer, and the ONNX model's inputs and hidden-state output.

use std::path::{Path, PathBuf};

use tern_core::{DataType, ModelSignature, TensorSpec};
use tern_proto::inference::ModelConfig;

/// `parameters` key marking an embedding model: "mean" or "cls".
pub const POOLING_KEY: &str = "embedding_pooling";
/// `parameters` key: "true" (default) or "false": L2-normalize the pooled vector.
pub const NORMALIZE_KEY: &str = "embedding_normalize";
/// `parameters` key: tokens kept per text (special tokens included); longer texts are
/// truncated, as sentence-transformers does.
pub const MAX_TOKENS_KEY: &str = "embedding_max_tokens";

pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// sentence-transformers' pooling module config, beside the model.
pub const ST_POOLING_FILE: &str = "1_Pooling/config.json";
/// sentence-transformers' module list (says whether a Normalize module follows pooling).
pub const ST_MODULES_FILE: &str = "modules.json";
/// sentence-transformers' `max_seq_length`.
pub const ST_CONFIG_FILE: &str = "sentence_bert_config.json";

/// Tokens per text when neither the config nor sentence_bert_config.json says (BERT's
/// position table).
pub const DEFAULT_MAX_TOKENS: usize = 512;
/// Bounds on `embedding_max_tokens` (the tokenizer needs room for its special tokens).
pub const MIN_MAX_TOKENS: usize = 8;
pub const MAX_MAX_TOKENS: usize = 8192;
/// Bytes of one text; longer ones are refused before tokenizing.
pub const MAX_TEXT_BYTES: usize = 256 << 10;
/// Bound on the JSON files read here (a tokenizer.json is a few MB at most).
const MAX_JSON_BYTES: u64 = 64 << 20;

/// The served tensors (the contract the OpenAI embeddings route relies on).
pub const TEXT_INPUT: &str = "text";
pub const EMBEDDING_OUTPUT: &str = "embedding";
pub const TOKEN_COUNT_OUTPUT: &str = "token_count";

/// Model inputs the backend knows how to feed.
pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const TOKEN_TYPE_IDS: &str = "token_type_ids";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean of the token vectors under the attention mask (sentence-transformers' default).
    Mean,
    /// The first token's vector ([CLS]).
    Cls,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingSettings {
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_tokens: usize,
}

/// How the ONNX model is driven: which optional inputs it has and which output is the hidden
/// state, of what width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInputs {
    pub token_type_ids: bool,
    pub hidden_output: String,
    pub hidden_size: usize,
}

fn load_error(message: String) -> tern_backend::BackendError {
    tern_backend::BackendError::Load(message)
}

/// The directories a model file's companions may lie in: its version directory, then the
/// model directory.
fn companion_dirs(model_file: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::with_capacity(2);
    if let Some(version_dir) = model_file.parent() {
        dirs.push(version_dir.to_path_buf());
        if let Some(model_dir) = version_dir.parent() {
            dirs.push(model_dir.to_path_buf());
        }
    }
    dirs
}

fn find_companion(model_file: &Path, name: &str) -> Option<PathBuf> {
    companion_dirs(model_file).into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let size = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
    if size > MAX_JSON_BYTES {
        return Err(format!("{} is larger than {MAX_JSON_BYTES} bytes", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not valid JSON: {e}", path.display()))
}

/// Whether the config (its `embedding_*` parameters) or sentence-transformers files beside the
/// model file make this an embedding model, and with which settings. `None`: a plain model.
pub fn resolve(
    model: &str,
    config: &ModelConfig,
    model_file: &Path,
) -> Result<Option<EmbeddingSettings>, String> {
    let param = |key: &str| config.parameters.get(key).map(|p| p.string_value.trim().to_string());
    let st_pooling = find_companion(model_file, ST_POOLING_FILE);
    let max_tokens_from_st = || -> Result<Option<usize>, String> {
        let Some(path) = find_companion(model_file, ST_CONFIG_FILE) else { return Ok(None) };
        let json = read_json(&path)?;
        Ok(json.get("max_seq_length").and_then(serde_json::Value::as_u64).map(|n| n as usize))
    };
    let (pooling, normalize) = match param(POOLING_KEY) {
        Some(value) => {
            let pooling = match value.as_str() {
                "mean" => Pooling::Mean,
                "cls" => Pooling::Cls,
                other => {
                    return Err(format!(
                        "model '{model}': parameters '{POOLING_KEY}': unknown pooling '{other}' \
                         (expected 'mean' or 'cls')"
                    ));
                }
            };
            let normalize = match param(NORMALIZE_KEY).as_deref() {
                None | Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(format!(
                        "model '{model}': parameters '{NORMALIZE_KEY}': '{other}' is not 'true' or 'false'"
                    ));
                }
            };
            (pooling, normalize)
        }
        None => {
            let Some(path) = st_pooling else {
                for key in [NORMALIZE_KEY, MAX_TOKENS_KEY] {
                    if config.parameters.contains_key(key) {
                        return Err(format!(
                            "model '{model}': parameters '{key}' is given without '{POOLING_KEY}' \
                             (or a sentence-transformers {ST_POOLING_FILE})"
                        ));
                    }
                }
                return Ok(None);
            };
            let json = read_json(&path).map_err(|e| format!("model '{model}': {e}"))?;
            let flag = |k: &str| json.get(k).and_then(serde_json::Value::as_bool).unwrap_or(false);
            let pooling = if flag("pooling_mode_mean_tokens") {
                Pooling::Mean
            } else if flag("pooling_mode_cls_token") {
                Pooling::Cls
            } else {
                return Err(format!(
                    "model '{model}': {}: no supported pooling mode (pooling_mode_mean_tokens or \
                     pooling_mode_cls_token)",
                    path.display()
                ));
            };
            // sentence-transformers normalizes only when a Normalize module follows pooling.
            let normalize = match find_companion(model_file, ST_MODULES_FILE) {
                None => false,
                Some(path) => {
                    let json = read_json(&path).map_err(|e| format!("model '{model}': {e}"))?;
                    json.as_array().is_some_and(|modules| {
                        modules.iter().any(|m| {
                            m.get("type")
                                .and_then(serde_json::Value::as_str)
                                .is_some_and(|t| t.ends_with("Normalize"))
                        })
                    })
                }
            };
            (pooling, normalize)
        }
    };
    let max_tokens = match param(MAX_TOKENS_KEY) {
        Some(value) => value.parse::<usize>().map_err(|_| {
            format!("model '{model}': parameters '{MAX_TOKENS_KEY}': '{value}' is not a whole number")
        })?,
        None => {
            max_tokens_from_st().map_err(|e| format!("model '{model}': {e}"))?.unwrap_or(DEFAULT_MAX_TOKENS)
        }
    };
    if !(MIN_MAX_TOKENS..=MAX_MAX_TOKENS).contains(&max_tokens) {
        return Err(format!(
            "model '{model}': parameters '{MAX_TOKENS_KEY}': {max_tokens} is out of range \
             ({MIN_MAX_TOKENS} to {MAX_MAX_TOKENS})"
        ));
    }
    Ok(Some(EmbeddingSettings { pooling, normalize, max_tokens }))
}

/// Loads `tokenizer.json` (version directory first, then the model directory), truncating to
/// `max_tokens` and without padding of its own (the backend pads a batch to its longest text).
pub fn load_tokenizer(
    model: &str,
    model_file: &Path,
    max_tokens: usize,
) -> Result<tokenizers::Tokenizer, tern_backend::BackendError> {
    let Some(path) = find_companion(model_file, TOKENIZER_FILE) else {
        let dirs: Vec<String> = companion_dirs(model_file).iter().map(|d| d.display().to_string()).collect();
        return Err(load_error(format!(
            "model '{model}': embedding model has no {TOKENIZER_FILE} (looked in {})",
            dirs.join(" and ")
        )));
    };
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(u64::MAX);
    if size > MAX_JSON_BYTES {
        return Err(load_error(format!(
            "model '{model}': {} is larger than {MAX_JSON_BYTES} bytes",
            path.display()
        )));
    }
    let mut tokenizer = tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| load_error(format!("model '{model}': cannot load {}: {e}", path.display())))?;
    // As sentence-transformers: truncate each text to max_seq_length tokens, special tokens
    // included; tokenizer.json's own padding (often a fixed length) is ours to decide.
    let truncation = tokenizers::TruncationParams { max_length: max_tokens, ..Default::default() };
    tokenizer
        .with_truncation(Some(truncation))
        .map_err(|e| load_error(format!("model '{model}': {}: truncation: {e}", path.display())))?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

/// Checks the ONNX model's signature: INT64 `input_ids` and `attention_mask` (and optionally
/// `token_type_ids`), nothing else, and a rank-3 FP32 hidden-state output
/// (`last_hidden_state`, `token_embeddings`, or the only rank-3 output).
pub fn model_inputs(model: &str, onnx: &ModelSignature, config: &ModelConfig) -> Result<ModelInputs, String> {
    let refuse = |m: String| format!("model '{model}': embedding model {m}");
    let mut token_type_ids = false;
    for required in [INPUT_IDS, ATTENTION_MASK] {
        if !onnx.inputs.iter().any(|s| s.name == required) {
            return Err(refuse(format!(
                "lacks input '{required}' (the model's inputs are {})",
                names(&onnx.inputs)
            )));
        }
    }
    for spec in &onnx.inputs {
        match spec.name.as_str() {
            INPUT_IDS | ATTENTION_MASK => {}
            TOKEN_TYPE_IDS => token_type_ids = true,
            other => {
                return Err(refuse(format!(
                    "has input '{other}'; only '{INPUT_IDS}', '{ATTENTION_MASK}' and \
                     '{TOKEN_TYPE_IDS}' can be fed"
                )));
            }
        }
        if spec.datatype != DataType::Int64 {
            return Err(refuse(format!("input '{}' is {}, expected INT64", spec.name, spec.datatype)));
        }
    }
    let rank3: Vec<&TensorSpec> = onnx.outputs.iter().filter(|s| s.dims.len() == 3).collect();
    let hidden = ["last_hidden_state", "token_embeddings"]
        .iter()
        .find_map(|n| onnx.outputs.iter().find(|s| s.name == *n))
        .or_else(|| (rank3.len() == 1).then(|| rank3[0]))
        .ok_or_else(|| {
            refuse(format!(
                "has no hidden-state output of rank 3 [batch, tokens, hidden] named \
                 'last_hidden_state' or 'token_embeddings' (the model's outputs are {})",
                names(&onnx.outputs)
            ))
        })?;
    if hidden.dims.len() != 3 {
        return Err(refuse(format!(
            "output '{}' has dims {:?}; expected rank 3 [batch, tokens, hidden]",
            hidden.name, hidden.dims
        )));
    }
    if hidden.datatype != DataType::Fp32 {
        return Err(refuse(format!("output '{}' is {}, expected FP32", hidden.name, hidden.datatype)));
    }
    // A symbolic hidden size: the config's `embedding` dims must say it.
    let from_config = config
        .output
        .iter()
        .find(|o| o.name == EMBEDDING_OUTPUT)
        .and_then(|o| o.dims.last().copied())
        .filter(|&d| d > 0);
    let hidden_size = match (hidden.dims[2], from_config) {
        (d, Some(c)) if d > 0 && d != c => {
            return Err(refuse(format!(
                "output '{EMBEDDING_OUTPUT}' dims say {c} but '{}' has hidden size {d}",
                hidden.name
            )));
        }
        (d, _) if d > 0 => d,
        (_, Some(c)) => c,
        _ => {
            return Err(refuse(format!(
                "output '{}' has a symbolic hidden size; give output '{EMBEDDING_OUTPUT}' dims [D] \
                 in config.pbtxt",
                hidden.name
            )));
        }
    };
    let hidden_size = usize::try_from(hidden_size)
        .ok()
        .filter(|&d| d <= 1 << 16)
        .ok_or_else(|| refuse(format!("hidden size {hidden_size} is out of range")))?;
    Ok(ModelInputs { token_type_ids, hidden_output: hidden.name.clone(), hidden_size })
}

/// What clients see: `text` -> `embedding`, `token_count`, batched.
pub fn served_signature(inputs: &ModelInputs) -> ModelSignature {
    let spec =
        |name: &str, datatype, dims: Vec<i64>| TensorSpec { name: name.into(), datatype, dims, utf8: false };
    ModelSignature {
        // The tokenizer reads text: validation refuses non-UTF-8 per request, before the
        // request can join (and fail) a batch.
        inputs: vec![TensorSpec { utf8: true, ..spec(TEXT_INPUT, DataType::Bytes, vec![-1, 1]) }],
        outputs: vec![
            spec(EMBEDDING_OUTPUT, DataType::Fp32, vec![-1, inputs.hidden_size as i64]),
            spec(TOKEN_COUNT_OUTPUT, DataType::Int64, vec![-1, 1]),
        ],
    }
}

fn names(specs: &[TensorSpec]) -> String {
    let quoted: Vec<String> = specs.iter().map(|s| format!("'{}'", s.name)).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::inference::{ModelOutput, ModelParameter};

    fn with_params(params: &[(&str, &str)]) -> ModelConfig {
        let mut config = ModelConfig::default();
        for (k, v) in params {
            config.parameters.insert((*k).into(), ModelParameter { string_value: (*v).into() });
        }
        config
    }

    fn model_file(dir: &Path) -> PathBuf {
        let version = dir.join("1");
        std::fs::create_dir_all(&version).expect("version dir");
        version.join("model.onnx")
    }

    #[test]
    fn parameters_and_sentence_transformers_files() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = model_file(dir.path());
        assert_eq!(resolve("m", &ModelConfig::default(), &file)?, None, "a plain model");
        let s = resolve("m", &with_params(&[(POOLING_KEY, "cls"), (NORMALIZE_KEY, "false")]), &file)?;
        assert_eq!(s, Some(EmbeddingSettings { pooling: Pooling::Cls, normalize: false, max_tokens: 512 }));

        // Without parameters: 1_Pooling/config.json, modules.json and sentence_bert_config.json.
        std::fs::create_dir_all(dir.path().join("1_Pooling"))?;
        std::fs::write(dir.path().join(ST_POOLING_FILE), r#"{"pooling_mode_mean_tokens": true}"#)?;
        std::fs::write(
            dir.path().join(ST_MODULES_FILE),
            r#"[{"type": "sentence_transformers.models.Pooling"}, {"type": "sentence_transformers.models.Normalize"}]"#,
        )?;
        std::fs::write(dir.path().join(ST_CONFIG_FILE), r#"{"max_seq_length": 256}"#)?;
        let s = resolve("m", &ModelConfig::default(), &file)?;
        assert_eq!(s, Some(EmbeddingSettings { pooling: Pooling::Mean, normalize: true, max_tokens: 256 }));
        Ok(())
    }

    #[test]
    fn bad_settings_name_model_and_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = model_file(dir.path());
        let err =
            |params: &[(&str, &str)]| resolve("m", &with_params(params), &file).err().unwrap_or_default();
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[(POOLING_KEY, "max")], "model 'm': parameters 'embedding_pooling': unknown pooling 'max'"),
            (&[(POOLING_KEY, "mean"), (NORMALIZE_KEY, "yes")], "'embedding_normalize': 'yes'"),
            (&[(POOLING_KEY, "mean"), (MAX_TOKENS_KEY, "2")], "'embedding_max_tokens': 2 is out of range"),
            (&[(NORMALIZE_KEY, "true")], "'embedding_normalize' is given without 'embedding_pooling'"),
        ];
        for (params, expected) in cases {
            let message = err(params);
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn the_onnx_model_must_take_token_ids_and_give_hidden_states() {
        let spec = |name: &str, datatype, dims: &[i64]| TensorSpec {
            name: name.into(),
            datatype,
            dims: dims.to_vec(),
            utf8: false,
        };
        let bert = ModelSignature {
            inputs: vec![
                spec(INPUT_IDS, DataType::Int64, &[-1, -1]),
                spec(ATTENTION_MASK, DataType::Int64, &[-1, -1]),
                spec(TOKEN_TYPE_IDS, DataType::Int64, &[-1, -1]),
            ],
            outputs: vec![spec("last_hidden_state", DataType::Fp32, &[-1, -1, 384])],
        };
        let config = ModelConfig::default();
        let inputs = model_inputs("m", &bert, &config).expect("a BERT encoder");
        assert_eq!((inputs.token_type_ids, inputs.hidden_size), (true, 384));
        let served = served_signature(&inputs);
        assert_eq!(served.outputs[0].dims, vec![-1, 384]);
        // `text` is marked UTF-8 so validation refuses other bytes per request.
        assert!(served.inputs[0].name == TEXT_INPUT && served.inputs[0].utf8);

        let mut no_mask = bert.clone();
        no_mask.inputs.remove(1);
        let e = model_inputs("m", &no_mask, &config).err().unwrap_or_default();
        assert!(e.contains("model 'm'") && e.contains("lacks input 'attention_mask'"), "{e}");

        let mut pooled = bert.clone();
        pooled.outputs = vec![spec("last_hidden_state", DataType::Fp32, &[-1, 384])];
        let e = model_inputs("m", &pooled, &config).err().unwrap_or_default();
        assert!(e.contains("rank 3"), "{e}");

        // A symbolic hidden size needs the config's `embedding` dims.
        let mut symbolic = bert;
        symbolic.outputs[0].dims = vec![-1, -1, -1];
        assert!(model_inputs("m", &symbolic, &config).is_err());
        let mut given = ModelConfig::default();
        given.output.push(ModelOutput {
            name: EMBEDDING_OUTPUT.into(),
            dims: vec![768],
            ..Default::default()
        });
        assert_eq!(model_inputs("m", &symbolic, &given).map(|i| i.hidden_size), Ok(768));
    }
}
