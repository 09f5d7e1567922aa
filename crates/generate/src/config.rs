//! `genai_config.json`: ONNX Runtime GenAI's description of a decoder folder.
//!
//! Field names and defaults follow ORT GenAI's own parser (`src/config.cpp` and `src/config.h`
//! in microsoft/onnxruntime-genai): `model.{type, vocab_size, context_length, bos_token_id,
//! eos_token_id (a number or a list), pad_token_id}`, `model.decoder.{filename,
//! num_hidden_layers, num_key_value_heads, num_attention_heads, head_size, hidden_size,
//! inputs, outputs}` with `%d` standing for the layer index in the cache names, and `search`.
//! Unknown fields are ignored (the builder writes many this engine has no use for); a field
//! the engine needs and cannot use is refused with its path in the message.

use std::path::Path;

use serde::Deserialize;

use crate::GenError;

/// The file's name inside a model folder.
pub const CONFIG_FILE: &str = "genai_config.json";

/// Bounds on numbers the file controls (far above any real model).
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 4096;
const MAX_HEAD_SIZE: usize = 4096;
const MAX_CONTEXT: usize = 1 << 22;
const MAX_VOCAB: usize = 1 << 24;

#[derive(Debug, Deserialize)]
struct RawConfig {
    model: Option<RawModel>,
    #[serde(default)]
    search: RawSearch,
}

#[derive(Debug, Deserialize)]
struct RawModel {
    #[serde(rename = "type")]
    model_type: Option<String>,
    vocab_size: Option<i64>,
    context_length: Option<i64>,
    bos_token_id: Option<i64>,
    eos_token_id: Option<IdOrIds>,
    pad_token_id: Option<i64>,
    decoder: Option<RawDecoder>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IdOrIds {
    One(i64),
    Many(Vec<i64>),
}

#[derive(Debug, Deserialize)]
struct RawDecoder {
    filename: Option<String>,
    num_hidden_layers: Option<i64>,
    num_key_value_heads: Option<i64>,
    num_attention_heads: Option<i64>,
    head_size: Option<i64>,
    hidden_size: Option<i64>,
    #[serde(default)]
    inputs: RawInputs,
    #[serde(default)]
    outputs: RawOutputs,
}

#[derive(Debug, Default, Deserialize)]
struct RawInputs {
    input_ids: Option<String>,
    attention_mask: Option<String>,
    position_ids: Option<String>,
    past_key_names: Option<String>,
    past_value_names: Option<String>,
    /// GPT-2 style combined cache (`past_%d`): not served.
    past_names: Option<String>,
    inputs_embeds: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawOutputs {
    logits: Option<String>,
    present_key_names: Option<String>,
    present_value_names: Option<String>,
    present_names: Option<String>,
}

/// `search`: ORT GenAI's generation defaults.
#[derive(Debug, Default, Deserialize)]
struct RawSearch {
    max_length: Option<i64>,
    do_sample: Option<bool>,
    temperature: Option<f64>,
    top_k: Option<i64>,
    top_p: Option<f64>,
    repetition_penalty: Option<f64>,
    num_beams: Option<i64>,
}

impl SearchDefaults {
    /// The sampling a request starts from before its own fields: ORT GenAI's meaning of the
    /// file (`config.h`, `Search`): `do_sample: false` is greedy whatever else it says; with
    /// sampling, a field the file leaves out takes GenAI's default (temperature 1, top_k 50,
    /// top_p 0 = off). The repetition penalty applies either way.
    pub fn sampling(&self) -> crate::SamplingParams {
        let mut s = crate::SamplingParams::default();
        if self.do_sample {
            s.temperature = self.temperature.unwrap_or(1.0);
            s.top_k = self.top_k.unwrap_or(50);
            s.top_p = self.top_p.filter(|p| *p > 0.0).unwrap_or(1.0);
        }
        s.repetition_penalty = self.repetition_penalty.unwrap_or(1.0);
        s
    }
}

/// The parsed, checked configuration.
#[derive(Clone, Debug)]
pub struct GenAiConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub context_length: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Checked, unused: the engine pads with mask 0 and never reads padded positions.
    pub _pad_token_id: Option<u32>,
    pub filename: String,
    pub num_hidden_layers: usize,
    pub num_key_value_heads: usize,
    pub head_size: usize,
    pub names: IoNames,
    pub search: SearchDefaults,
}

/// Names of the decoder's inputs and outputs; cache names have the layer index filled in.
#[derive(Clone, Debug)]
pub struct IoNames {
    pub input_ids: String,
    pub attention_mask: String,
    pub position_ids: String,
    pub past_keys: Vec<String>,
    pub past_values: Vec<String>,
    pub logits: String,
    pub present_keys: Vec<String>,
    pub present_values: Vec<String>,
}

/// `search` defaults that a caller may apply to parameters a request leaves out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SearchDefaults {
    pub max_length: Option<usize>,
    pub do_sample: bool,
    pub temperature: Option<f32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

impl GenAiConfig {
    /// Reads and checks `<dir>/genai_config.json`.
    pub fn load(dir: &Path) -> Result<GenAiConfig, GenError> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| GenError::Internal(format!("cannot read {}: {e}", path.display())))?;
        GenAiConfig::parse(&text).map_err(|e| GenError::Internal(format!("{}: {e}", path.display())))
    }

    /// Parses and checks the file's text; the error names the field.
    pub fn parse(text: &str) -> Result<GenAiConfig, String> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON for ORT GenAI: {e}"))?;
        let model = raw.model.ok_or("missing field 'model'")?;
        let model_type = model.model_type.ok_or("missing field 'model.type'")?;
        if model_type == "gpt2" {
            return Err("model.type 'gpt2' (one combined `past_%d` cache input) is not supported; \
                        decoders with separate key and value caches (llama, mistral, qwen2, phi3, \
                        gemma, decoder, ...) are"
                .into());
        }
        let vocab_size = bounded("model.vocab_size", model.vocab_size, 1, MAX_VOCAB)?;
        let context_length = bounded("model.context_length", model.context_length, 1, MAX_CONTEXT)?;
        let token = |field: &str, v: i64| -> Result<u32, String> {
            if v < 0 || v as u64 >= vocab_size as u64 {
                Err(format!("{field} = {v} is outside the vocabulary (model.vocab_size = {vocab_size})"))
            } else {
                Ok(v as u32)
            }
        };
        // ORT GenAI writes -1 for "none" in some exports.
        let optional_token = |field: &str, v: Option<i64>| -> Result<Option<u32>, String> {
            match v {
                None | Some(-1) => Ok(None),
                Some(v) => token(field, v).map(Some),
            }
        };
        let bos_token_id = optional_token("model.bos_token_id", model.bos_token_id)?;
        let pad_token_id = optional_token("model.pad_token_id", model.pad_token_id)?;
        let eos_token_ids = match model.eos_token_id {
            None => Vec::new(),
            Some(IdOrIds::One(v)) => vec![token("model.eos_token_id", v)?],
            Some(IdOrIds::Many(vs)) => {
                if vs.len() > 1024 {
                    return Err("model.eos_token_id has more than 1024 entries".into());
                }
                vs.into_iter().map(|v| token("model.eos_token_id", v)).collect::<Result<_, _>>()?
            }
        };

        let decoder = model.decoder.ok_or("missing field 'model.decoder'")?;
        let filename = decoder.filename.unwrap_or_else(|| "model.onnx".to_string());
        if filename.is_empty()
            || filename.contains('/')
            || filename.contains('\\')
            || filename.starts_with('.')
        {
            return Err(format!(
                "model.decoder.filename {filename:?} must be a plain file name in the folder"
            ));
        }
        let num_hidden_layers =
            bounded("model.decoder.num_hidden_layers", decoder.num_hidden_layers, 1, MAX_LAYERS)?;
        let num_attention_heads =
            bounded("model.decoder.num_attention_heads", decoder.num_attention_heads, 1, MAX_HEADS)?;
        // ORT GenAI: num_key_value_heads defaults to num_attention_heads.
        let num_key_value_heads = match decoder.num_key_value_heads {
            None => num_attention_heads,
            v => bounded("model.decoder.num_key_value_heads", v, 1, MAX_HEADS)?,
        };
        // ORT GenAI: head_size defaults to hidden_size / num_attention_heads.
        let head_size = match (decoder.head_size, decoder.hidden_size) {
            (Some(h), _) => bounded("model.decoder.head_size", Some(h), 1, MAX_HEAD_SIZE)?,
            (None, Some(hidden)) => {
                let hidden =
                    bounded("model.decoder.hidden_size", Some(hidden), 1, MAX_HEADS * MAX_HEAD_SIZE)?;
                if hidden % num_attention_heads != 0 {
                    return Err(format!(
                        "model.decoder.head_size is missing and hidden_size {hidden} is not a multiple of \
                         num_attention_heads {num_attention_heads}"
                    ));
                }
                hidden / num_attention_heads
            }
            (None, None) => return Err("missing field 'model.decoder.head_size' (or 'hidden_size')".into()),
        };

        let inputs = decoder.inputs;
        let outputs = decoder.outputs;
        if inputs.past_names.is_some() || outputs.present_names.is_some() {
            return Err("model.decoder.inputs.past_names / outputs.present_names (one combined cache per \
                        layer) are not supported: the engine needs separate key and value caches"
                .into());
        }
        if inputs.inputs_embeds.is_some() {
            return Err(
                "model.decoder.inputs.inputs_embeds (an embedding model in front of the decoder) is \
                        not supported: the decoder must take input_ids"
                    .into(),
            );
        }
        let layer_names = |field: &str,
                           pattern: Option<String>,
                           default: &str|
         -> Result<Vec<String>, String> {
            let pattern = pattern.unwrap_or_else(|| default.to_string());
            if pattern.matches("%d").count() != 1 {
                return Err(format!("{field} {pattern:?} must contain '%d' (the layer index) exactly once"));
            }
            Ok((0..num_hidden_layers).map(|i| pattern.replace("%d", &i.to_string())).collect())
        };
        let names = IoNames {
            input_ids: inputs.input_ids.unwrap_or_else(|| "input_ids".into()),
            attention_mask: inputs.attention_mask.unwrap_or_else(|| "attention_mask".into()),
            position_ids: inputs.position_ids.unwrap_or_else(|| "position_ids".into()),
            past_keys: layer_names(
                "model.decoder.inputs.past_key_names",
                inputs.past_key_names,
                "past_key_values.%d.key",
            )?,
            past_values: layer_names(
                "model.decoder.inputs.past_value_names",
                inputs.past_value_names,
                "past_key_values.%d.value",
            )?,
            logits: outputs.logits.unwrap_or_else(|| "logits".into()),
            present_keys: layer_names(
                "model.decoder.outputs.present_key_names",
                outputs.present_key_names,
                "present.%d.key",
            )?,
            present_values: layer_names(
                "model.decoder.outputs.present_value_names",
                outputs.present_value_names,
                "present.%d.value",
            )?,
        };

        let search = raw.search;
        if let Some(beams) = search.num_beams
            && beams > 1
        {
            return Err(format!("search.num_beams = {beams}: beam search is not supported (1 only)"));
        }
        // Checked here so that a default taken from the file never fails a request.
        let in_range = |name: &str, v: Option<f64>, lo: f64, lo_open: bool, hi: f64| match v {
            Some(x) if !x.is_finite() || x > hi || x < lo || (lo_open && x == lo) => Err(format!(
                "search.{name} = {x} is out of range ({}{lo}, {hi}]",
                if lo_open { "" } else { "=" }
            )),
            _ => Ok(()),
        };
        in_range("temperature", search.temperature, 0.0, false, 100.0)?;
        in_range("top_p", search.top_p, 0.0, false, 1.0)?;
        in_range("repetition_penalty", search.repetition_penalty, 0.0, true, 100.0)?;
        let search = SearchDefaults {
            max_length: match search.max_length {
                None => None,
                v => Some(bounded("search.max_length", v, 1, MAX_CONTEXT)?),
            },
            do_sample: search.do_sample.unwrap_or(false),
            temperature: search.temperature.map(|v| v as f32),
            top_k: search.top_k.map(|v| v.clamp(0, u32::MAX as i64) as u32),
            top_p: search.top_p.map(|v| v as f32),
            repetition_penalty: search.repetition_penalty.map(|v| v as f32),
        };

        Ok(GenAiConfig {
            model_type,
            vocab_size,
            context_length,
            bos_token_id,
            eos_token_ids,
            _pad_token_id: pad_token_id,
            filename,
            num_hidden_layers,
            num_key_value_heads,
            head_size,
            names,
            search,
        })
    }

    /// KV-cache bytes of one token of one sequence: keys and values of every layer, float32.
    pub fn kv_bytes_per_token(&self) -> u64 {
        (self.num_hidden_layers * 2 * self.num_key_value_heads * self.head_size * 4) as u64
    }
}

fn bounded(field: &str, value: Option<i64>, min: usize, max: usize) -> Result<usize, String> {
    let v = value.ok_or_else(|| format!("missing field '{field}'"))?;
    if v < min as i64 || v > max as i64 {
        return Err(format!("{field} = {v} is out of range ({min}..={max})"));
    }
    Ok(v as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"model": {"type": "llama", "vocab_size": 100, "context_length": 64,
        "eos_token_id": [2, 3], "bos_token_id": 1,
        "decoder": {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                    "hidden_size": 32}}}"#;

    #[test]
    fn search_gives_the_sampling_a_request_starts_from() {
        let greedy = SearchDefaults { temperature: Some(0.7), top_k: Some(5), ..SearchDefaults::default() };
        assert_eq!(greedy.sampling(), crate::SamplingParams::default(), "do_sample false is greedy");
        let sample = SearchDefaults { do_sample: true, top_p: Some(0.9), ..SearchDefaults::default() };
        let s = sample.sampling();
        assert_eq!((s.temperature, s.top_k, s.top_p), (1.0, 50, 0.9), "GenAI's defaults for the rest");
        let penalty = SearchDefaults { repetition_penalty: Some(1.3), ..SearchDefaults::default() };
        assert_eq!(penalty.sampling().repetition_penalty, 1.3);
    }

    #[test]
    fn defaults_follow_ort_genai() {
        let c = GenAiConfig::parse(MINIMAL).expect("parses");
        assert_eq!(c.filename, "model.onnx");
        assert_eq!(c.head_size, 8);
        assert_eq!(c.eos_token_ids, vec![2, 3]);
        assert_eq!(c.names.past_keys, vec!["past_key_values.0.key", "past_key_values.1.key"]);
        assert_eq!(c.names.present_values, vec!["present.0.value", "present.1.value"]);
        assert_eq!(c.kv_bytes_per_token(), 2 * 2 * 2 * 8 * 4);
    }

    #[test]
    fn errors_name_the_field() {
        let e = GenAiConfig::parse(&MINIMAL.replace("\"vocab_size\": 100", "\"vocab_size\": -5"))
            .expect_err("refused");
        assert!(e.contains("model.vocab_size"), "{e}");
        let e = GenAiConfig::parse(
            &MINIMAL.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1000000"),
        )
        .expect_err("refused");
        assert!(e.contains("model.decoder.num_hidden_layers"), "{e}");
        let e = GenAiConfig::parse(&MINIMAL.replace("[2, 3]", "[2, 300]")).expect_err("refused");
        assert!(e.contains("model.eos_token_id"), "{e}");
        let e = GenAiConfig::parse(&MINIMAL.replace("\"llama\"", "\"gpt2\"")).expect_err("refused");
        assert!(e.contains("gpt2"), "{e}");
        let e =
            GenAiConfig::parse(&MINIMAL.replace(
                "\"hidden_size\": 32",
                "\"hidden_size\": 32, \"inputs\": {\"past_key_names\": \"k\"}",
            ))
            .expect_err("refused");
        assert!(e.contains("past_key_names") && e.contains("%d"), "{e}");
        let e =
            GenAiConfig::parse(&MINIMAL.replace(
                "\"num_hidden_layers\": 2,",
                "\"filename\": \"../x.onnx\", \"num_hidden_layers\": 2,",
            ))
            .expect_err("refused");
        assert!(e.contains("model.decoder.filename"), "{e}");
    }
}
