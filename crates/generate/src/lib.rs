//! The generation engine: serves a decoder-only language model stored in ONNX Runtime GenAI's
//! folder layout (`genai_config.json`, `model.onnx` with KV-cache inputs and outputs,
//! `tokenizer.json`, `tokenizer_config.json`) with continuous batching: new sequences join the
//! running batch between decode steps and finished ones leave, so a long generation never
//! holds up a short one.
//!
//! This crate knows nothing of gRPC, HTTP, queues of the scheduler or Prometheus: the node
//! turns a request into a [`GenerateRequest`], streams the [`GenEvent`]s back, and reads
//! [`Engine::stats`] for its gauges.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Engine settings, from the model's config.pbtxt `parameters` and the node's flags.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Most sequences decoded together in one step (continuous batching); 1 turns batching off.
    pub max_batch: usize,
    /// Upper bound on KV-cache bytes the engine holds at once (padding included).
    pub kv_budget_bytes: u64,
    /// Most requests waiting for admission; one more is refused with `ResourceExhausted`.
    pub max_queue: usize,
    /// ONNX Runtime intra-op threads (0: ONNX Runtime's default).
    pub intra_threads: usize,
    /// Run on the CUDA execution provider with the KV cache kept on the device.
    pub cuda_device: Option<i32>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_batch: 16,
            kv_budget_bytes: 256 << 20,
            max_queue: 256,
            intra_threads: 0,
            cuda_device: None,
        }
    }
}

/// What the folder says about the model (genai_config.json, tokenizer files).
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// genai_config.json `model.type` (e.g. "llama").
    pub model_type: String,
    pub vocab_size: usize,
    /// Most tokens (prompt + generated) one sequence may hold.
    pub context_length: usize,
    pub eos_token_ids: Vec<u32>,
    /// KV-cache bytes one token of one sequence takes (all layers, keys and values).
    pub kv_bytes_per_token: u64,
    /// tokenizer_config.json `chat_template`, when the model has one.
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

/// How the next token is chosen. Defaults are greedy decoding.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy.
    pub temperature: f32,
    /// 0 is off.
    pub top_k: u32,
    /// 1.0 is off.
    pub top_p: f32,
    /// Same seed, same prompt, same parameters: the same tokens.
    pub seed: Option<u64>,
    /// 1.0 is off.
    pub repetition_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: None, repetition_penalty: 1.0 }
    }
}

/// The prompt: text (tokenized by the engine, with the model's BOS rules) or token ids.
#[derive(Clone, Debug)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// Most tokens to generate (None: up to the model's context).
    pub max_tokens: Option<u32>,
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings; they are not part of the output.
    pub stop: Vec<String>,
    /// Generation stops at these ids (besides the model's EOS unless `ignore_eos`).
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// The engine stops the sequence at its next step after this instant.
    pub deadline: Option<Instant>,
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token id, or a stop string.
    Stop,
    /// `max_tokens` or the model's context.
    Length,
    /// The caller dropped its [`Generation`] or called [`Generation::cancel`].
    Cancelled,
    /// The request's deadline passed.
    Deadline,
}

impl FinishReason {
    /// The OpenAI / Triton-generate spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Deadline => "deadline",
        }
    }
}

/// One step of a sequence's output, in order. `Token`s are followed by exactly one
/// `Finished` or one `Failed`, after which the channel closes.
#[derive(Clone, Debug)]
pub enum GenEvent {
    /// One generated token. `text` is the text it adds to the output: it may be empty (a
    /// token in the middle of a UTF-8 character, or text held back because it may begin a stop
    /// string) and is then carried by a later event; concatenating every `text` gives the
    /// output exactly.
    Token {
        id: u32,
        text: String,
    },
    Finished {
        reason: FinishReason,
        prompt_tokens: u32,
        generated_tokens: u32,
    },
    Failed(GenError),
}

#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum GenError {
    /// The request is wrong (prompt longer than the context, bad parameter): INVALID_ARGUMENT.
    #[error("{0}")]
    InvalidArgument(String),
    /// The queue is full or the request can never fit the KV budget: RESOURCE_EXHAUSTED.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The engine is shutting down: UNAVAILABLE.
    #[error("{0}")]
    Unavailable(String),
    /// The folder is unusable, or ONNX Runtime failed: INTERNAL (or a load error).
    #[error("{0}")]
    Internal(String),
}

/// A snapshot for gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub kv_bytes_in_use: u64,
    pub kv_budget_bytes: u64,
    pub prompt_tokens_total: u64,
    pub generated_tokens_total: u64,
}

/// A loaded model with its engine thread. Dropping the last `Arc<Engine>` stops the thread
/// after every admitted sequence has ended (graceful unload).
pub struct Engine {
    _private: (),
}

/// The caller's end of one sequence. Dropping it cancels the sequence: its slot and cache are
/// freed at the engine's next step.
pub struct Generation {
    pub events: tokio::sync::mpsc::UnboundedReceiver<GenEvent>,
}

impl Generation {
    /// Stop the sequence now (it ends with `FinishReason::Cancelled`).
    pub fn cancel(&self) {}
}

impl Engine {
    /// Loads the folder (genai_config.json, model.onnx, tokenizer) and starts the engine thread.
    /// ONNX Runtime must already be initialised by the caller (ort's load-dynamic).
    pub fn load(_dir: &Path, _options: EngineOptions) -> Result<Arc<Engine>, GenError> {
        Err(GenError::Unavailable("the generation engine is not built yet".into()))
    }

    /// Whether `dir` holds a generative model folder (has genai_config.json).
    pub fn is_model_folder(dir: &Path) -> bool {
        dir.join("genai_config.json").is_file()
    }

    pub fn info(&self) -> &ModelInfo {
        unimplemented!("API skeleton")
    }

    /// Admits a request: checks it (prompt length against the context, parameters), queues it,
    /// and returns its stream of events. Errors here are immediate refusals.
    pub fn submit(&self, _request: GenerateRequest) -> Result<Generation, GenError> {
        Err(GenError::Unavailable("the generation engine is not built yet".into()))
    }

    /// Token ids of `text` as the engine would tokenize a prompt (for usage counts).
    pub fn encode(&self, _text: &str) -> Result<Vec<u32>, GenError> {
        Err(GenError::Unavailable("the generation engine is not built yet".into()))
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats::default()
    }
}
