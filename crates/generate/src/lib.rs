//! The generation engine: serves a decoder-only language model stored in ONNX Runtime GenAI's
//! folder layout (`genai_config.json`, `model.onnx` with KV-cache inputs and outputs,
//! `tokenizer.json`, `tokenizer_config.json`) with continuous batching: new sequences join the
//! running batch between decode steps and finished ones leave, so a long generation never
//! holds up a short one.
//!
//! This crate knows nothing of gRPC, HTTP, queues of the scheduler or Prometheus: the node
//! turns a request into a [`GenerateRequest`], streams the [`GenEvent`]s back, and reads
//! [`Engine::stats`] for its gauges.
//!
//! Layout:
//! - `config`: genai_config.json (ORT GenAI's field names and defaults), checked.
//! - `text`: tokenizer.json / tokenizer_config.json, incremental detokenization, stop strings.
//! - `sampling`: repetition penalty, greedy / temperature / top-k / top-p, seeded generator.
//! - `model`: the ONNX Runtime session, its signature checked against the config, one step.
//! - `engine`: the engine thread (one per model, a plain OS thread): admission within
//!   `max_batch` and the KV budget, prefill, the left-padded batch cache, decode steps.
//!
//! Admission rules (checked in [`Engine::submit`], refused at once): a prompt must leave room
//! for one generated token within the model's context (as OpenAI and vLLM refuse a prompt
//! longer than the context); `max_tokens` beyond the context is clamped, not refused (the
//! sequence then ends with `Length` when the context is full); a request whose KV cache
//! (prompt + max_tokens, or the whole context when max_tokens is absent) can never fit the
//! budget is `ResourceExhausted`; a full queue is `ResourceExhausted`. Otherwise it waits,
//! FIFO, until the batch has a slot and the budget room: the engine admits a sequence only
//! while (members + 1) x (the longest reservation) x bytes per token stays within the budget,
//! so the padded cache it holds between steps never exceeds it. (ONNX Runtime briefly holds
//! a step's past and present together.)
//!
//! Prompts are tokenized in [`Engine::submit`], on the caller's thread; a prompt is prefilled
//! alone (no padding), then joins the batch. (Prefilling a step's joiners together, left-padded
//! to the longest, was measured and kept out: on CPU the padding costs more than the runs it
//! saves, and a burst of joiners delays every first token; see benches/RESULTS.md.) Each
//! generation has a tracing span
//! (`generation`, a child of the caller's current span) with events for admission, first
//! token, every token (trace level) and the end.

mod config;
mod engine;
mod model;
mod sampling;
mod text;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub use config::SearchDefaults;

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
    /// Whether ONNX Runtime's idle intra-op threads spin before sleeping (`None`: its default,
    /// yes). Spinning threads take the cores the streaming front end needs between steps.
    pub intra_spinning: Option<bool>,
    /// Run on the CUDA execution provider with the KV cache kept on the device: the step's
    /// inputs and outputs go through an IO binding, `present` stays in device memory and is fed
    /// back as the next `past`; only a batch rebuild (a sequence joins or leaves) copies the
    /// cache through the host. The provider must load (no silent CPU fallback).
    pub cuda_device: Option<i32>,
    /// ONNX Runtime's optimized graph of the decoder, saved on the first load and opened
    /// without optimizing on later ones (CPU only: see `tern_backend_ort::model_cache`).
    pub model_cache: Option<tern_backend_ort::ModelCache>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_batch: 16,
            kv_budget_bytes: 256 << 20,
            max_queue: 256,
            intra_threads: 0,
            intra_spinning: None,
            cuda_device: None,
            model_cache: None,
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
    /// output exactly. A sequence that ends on EOS or a stop token id sends that token too
    /// (its own text is never part of the output; its event carries any text still held
    /// back); one that ends on a stop string sends the token that completed it, with the text
    /// before the stop string.
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

/// Bounds on what a request may carry.
const MAX_STOP_STRINGS: usize = 32;
const MAX_STOP_STRING_BYTES: usize = 1024;
const MAX_STOP_TOKEN_IDS: usize = 1024;

/// A loaded model with its engine thread. Dropping the last `Arc<Engine>` stops the thread
/// after every admitted sequence has ended (graceful unload).
pub struct Engine {
    info: ModelInfo,
    search: SearchDefaults,
    codec: Arc<text::TextCodec>,
    shared: Arc<engine::Shared>,
    options: EngineOptions,
}

/// The caller's end of one sequence. Dropping it cancels the sequence: its slot and cache are
/// freed at the engine's next step.
pub struct Generation {
    pub events: tokio::sync::mpsc::UnboundedReceiver<GenEvent>,
    cancel: Arc<AtomicBool>,
}

impl Generation {
    /// Stop the sequence now (it ends with `FinishReason::Cancelled`).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Engine {
    /// Loads the folder (genai_config.json, model.onnx, tokenizer) and starts the engine thread.
    /// ONNX Runtime must already be initialised by the caller (ort's load-dynamic).
    pub fn load(dir: &Path, options: EngineOptions) -> Result<Arc<Engine>, GenError> {
        if options.max_batch == 0 || options.max_batch > 1024 {
            return Err(GenError::InvalidArgument(format!(
                "max_batch must be 1..=1024, got {}",
                options.max_batch
            )));
        }
        if options.max_queue > 1 << 20 {
            return Err(GenError::InvalidArgument(format!(
                "max_queue must be at most 1048576, got {}",
                options.max_queue
            )));
        }
        let config = config::GenAiConfig::load(dir)?;
        let codec = Arc::new(text::TextCodec::load(dir, config.bos_token_id)?);
        let decoder = model::Decoder::load(
            dir,
            &config,
            options.intra_threads,
            options.intra_spinning,
            options.cuda_device,
            options.model_cache.as_ref(),
        )?;
        let kv_bytes_per_token = config.kv_bytes_per_token();
        let info = ModelInfo {
            model_type: config.model_type.clone(),
            vocab_size: config.vocab_size,
            context_length: config.context_length,
            eos_token_ids: config.eos_token_ids.clone(),
            kv_bytes_per_token,
            chat_template: codec.chat_template.clone(),
            bos_token: codec.bos_token.clone(),
            eos_token: codec.eos_token.clone(),
        };
        let shared = Arc::new(engine::Shared::new(options.kv_budget_bytes));
        let parts = engine::EngineParts {
            decoder,
            codec: codec.clone(),
            max_batch: options.max_batch,
            kv_budget_bytes: options.kv_budget_bytes,
            kv_bytes_per_token,
        };
        let name = dir
            .parent()
            .and_then(|p| p.file_name())
            .or_else(|| dir.file_name())
            .map(|n| n.to_string_lossy().chars().take(10).collect::<String>())
            .unwrap_or_default();
        let thread_shared = shared.clone();
        let eos = config.eos_token_ids.clone();
        std::thread::Builder::new()
            .name(format!("gen-{name}"))
            .spawn(move || engine::engine_task(thread_shared, parts, eos))
            .map_err(|e| GenError::Internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Arc::new(Engine { info, search: config.search, codec, shared, options }))
    }

    /// Whether `dir` holds a generative model folder (has genai_config.json).
    pub fn is_model_folder(dir: &Path) -> bool {
        dir.join("genai_config.json").is_file()
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// genai_config.json `search`: defaults a caller applies to sampling parameters a request
    /// leaves out ([`SearchDefaults::sampling`]); the engine itself applies `max_length` to a
    /// request without `max_tokens`.
    pub fn search_defaults(&self) -> &SearchDefaults {
        &self.search
    }

    /// Admits a request: checks it (prompt length against the context, parameters), queues it,
    /// and returns its stream of events. Errors here are immediate refusals.
    pub fn submit(&self, request: GenerateRequest) -> Result<Generation, GenError> {
        let invalid = |m: String| Err(GenError::InvalidArgument(m));
        let info = &self.info;
        let prompt = match request.prompt {
            Prompt::Text(text) => self.codec.encode(&text)?,
            Prompt::Tokens(ids) => ids,
        };
        if prompt.is_empty() {
            return invalid("the prompt is empty (no tokens)".into());
        }
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= info.vocab_size) {
            return invalid(format!(
                "prompt token id {bad} is outside the vocabulary (size {})",
                info.vocab_size
            ));
        }
        if prompt.len() >= info.context_length {
            return invalid(format!(
                "the prompt has {} tokens but the model's context is {} tokens (prompt and generated \
                 tokens together); shorten the prompt",
                prompt.len(),
                info.context_length
            ));
        }
        let room = info.context_length - prompt.len();
        let max_new = match request.max_tokens {
            Some(0) => return invalid("max_tokens must be at least 1".into()),
            Some(n) => (n as usize).min(room),
            // ORT GenAI's `search.max_length` counts the prompt too; at least one new token.
            None => match self.search.max_length {
                Some(total) => total.saturating_sub(prompt.len()).clamp(1, room),
                None => room,
            },
        };
        sampling::validate(&request.sampling)?;
        if request.stop.len() > MAX_STOP_STRINGS {
            return invalid(format!("at most {MAX_STOP_STRINGS} stop strings, got {}", request.stop.len()));
        }
        if let Some(s) = request.stop.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_STRING_BYTES) {
            return invalid(format!(
                "a stop string must have 1 to {MAX_STOP_STRING_BYTES} bytes, got {}",
                s.len()
            ));
        }
        if request.stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
            return invalid(format!(
                "at most {MAX_STOP_TOKEN_IDS} stop token ids, got {}",
                request.stop_token_ids.len()
            ));
        }
        if let Some(bad) = request.stop_token_ids.iter().find(|&&t| t as usize >= info.vocab_size) {
            return invalid(format!(
                "stop token id {bad} is outside the vocabulary (size {})",
                info.vocab_size
            ));
        }
        let reserve = prompt.len() + max_new;
        let needed = reserve as u64 * info.kv_bytes_per_token;
        if needed > self.options.kv_budget_bytes {
            return Err(GenError::ResourceExhausted(format!(
                "the request needs {needed} bytes of KV cache ({} prompt + {max_new} generated tokens x {} \
                 bytes), more than the model's KV-cache budget of {} bytes; lower max_tokens or the prompt",
                prompt.len(),
                info.kv_bytes_per_token,
                self.options.kv_budget_bytes
            )));
        }

        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let prompt_len = prompt.len();
        let cancel = Arc::new(AtomicBool::new(false));
        let pending = engine::Pending {
            prompt,
            max_new,
            reserve,
            sampling: request.sampling,
            stop: request.stop,
            stop_ids: request.stop_token_ids,
            ignore_eos: request.ignore_eos,
            deadline: request.deadline,
            tx,
            cancel: cancel.clone(),
            span: tracing::info_span!(
                "generation",
                prompt_tokens = prompt_len,
                max_tokens = max_new,
                generated_tokens = tracing::field::Empty,
                finish_reason = tracing::field::Empty,
            ),
        };
        {
            let mut q = self.shared.lock();
            if q.waiting.len() >= self.options.max_queue {
                return Err(GenError::ResourceExhausted(format!(
                    "the generation queue is full ({} requests waiting, max_queue {})",
                    q.waiting.len(),
                    self.options.max_queue
                )));
            }
            q.waiting.push_back(pending);
            q.stats.waiting = q.waiting.len();
        }
        self.shared.notify();
        Ok(Generation { events, cancel })
    }

    /// Token ids of `text` as the engine would tokenize a prompt (for usage counts).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, GenError> {
        self.codec.encode(text)
    }

    /// Text of generated token ids, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.codec.decode(ids)
    }

    pub fn stats(&self) -> EngineStats {
        self.shared.lock().stats
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The thread finishes what was admitted, then ends (nothing joins it: dropping an
        // engine never blocks the caller).
        self.shared.lock().shutdown = true;
        self.shared.notify();
    }
}
