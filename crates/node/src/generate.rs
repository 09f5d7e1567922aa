//! Generative models on the node: the engine factory the lifecycle loads them with
//! ([`EngineFactory`], tern-generate behind `tern_backend::GenerativeFactory`), and one
//! generation request served as a decoupled model: the request's inputs (or parameters) become
//! a [`GenerateRequest`], each generated token a response, the end a final response.
//!
//! Request inputs (config names, all optional but `text_input`): `text_input` BYTES [1],
//! `max_tokens` INT32, `temperature` FP32, `top_k` INT32, `top_p` FP32, `seed` UINT64,
//! `repetition_penalty` FP32, `stop` BYTES [-1], `stop_token_ids` INT32 [-1], `ignore_eos` BOOL,
//! `stream` BOOL. The same names may come as request `parameters` (as Triton's generate
//! extension forwards the JSON fields that are not inputs); an input wins over a parameter.
//! The request's `timeout` parameter (microseconds) is the generation's deadline.
//!
//! Responses: `text_output` BYTES [1] (the text the response adds), `output_ids` INT32 [n] (the
//! token ids it adds), and in the final response `finish_reason` BYTES [1]; parameter
//! `triton_final_response` is true on the final response only. With `stream: false`, one
//! response carries the whole text.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_backend::{BackendError, GenerativeFactory, GenerativeLoad, GenerativeModel};
use tern_core::{DataType, FailureReason, RequestError, Tensor};
use tern_generate::{
    Engine, EngineOptions, FinishReason, GenError, GenEvent, GenerateRequest, Generation, Prompt,
};
use tern_lifecycle::LoadedModel;
use tern_proto::inference::infer_parameter::ParameterChoice;
use tern_proto::inference::{self as pb, InferParameter};
use tonic::Status;

use crate::stream::mark_final;

/// Most stop strings one request may give.
pub const MAX_STOP_STRINGS: usize = 64;
/// Longest stop string, in bytes.
pub const MAX_STOP_STRING_BYTES: usize = 1_024;
/// Most stop token ids one request may give.
pub const MAX_STOP_TOKEN_IDS: usize = 1_024;
/// Highest temperature a request may ask for.
pub const MAX_TEMPERATURE: f32 = 100.0;

// === EngineFactory ===

/// Starts a tern-generate [`Engine`] for each generative model version.
#[derive(Debug, Default, Clone)]
pub struct EngineFactory {
    /// `--model-cache-dir`: the decoder's optimized graph, reused by later loads.
    pub model_cache: Option<tern_backend_ort::ModelCache>,
}

/// A loaded engine, as the lifecycle holds it.
pub struct NodeEngine {
    pub engine: Arc<Engine>,
    memory_bytes: u64,
}

impl GenerativeFactory for EngineFactory {
    fn load(&self, load: &GenerativeLoad) -> Result<Arc<dyn GenerativeModel>, BackendError> {
        let options = EngineOptions {
            max_batch: load.max_batch,
            kv_budget_bytes: load.kv_cache_bytes,
            max_queue: load.max_queue,
            intra_threads: load.intra_op_threads,
            intra_spinning: load.intra_op_spinning,
            cuda_device: load.gpu,
            // An upload's files are a client's: they must not fill the node's disk.
            model_cache: self
                .model_cache
                .clone()
                .filter(|_| load.target.trusted_dir.is_some() && !load.target.encrypted),
        };
        let engine = Engine::load(&load.dir, options).map_err(|e| BackendError::Load(e.to_string()))?;
        let memory_bytes = tern_lifecycle::loader::dir_bytes(&load.dir).saturating_add(load.kv_cache_bytes);
        Ok(Arc::new(NodeEngine { engine, memory_bytes }))
    }
}

impl GenerativeModel for NodeEngine {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }
}

/// The engine of a loaded generative model (made by [`EngineFactory`]).
pub fn engine_of(model: &LoadedModel) -> Option<&Arc<Engine>> {
    let generative = model.generative.as_ref()?;
    generative.as_any().downcast_ref::<NodeEngine>().map(|e| &e.engine)
}

// === Request ===

/// A generation request as the node runs it.
pub(crate) struct Parsed {
    pub request: GenerateRequest,
    /// One response per token (true) or one for the whole generation.
    pub stream: bool,
    /// Outputs to return; every output when empty.
    pub outputs: Vec<String>,
}

/// What a request gives for one name: an input tensor or a request parameter.
enum Given<'a> {
    Input(&'a Tensor),
    Parameter(&'a ParameterChoice),
}

struct Reader<'a> {
    model: &'a str,
    inputs: &'a [Tensor],
    parameters: &'a HashMap<String, InferParameter>,
}

impl<'a> Reader<'a> {
    fn invalid(&self, name: &str, what: impl std::fmt::Display) -> RequestError {
        RequestError::InvalidArgument(format!("model '{}': input '{name}': {what}", self.model))
    }

    fn given(&self, name: &str) -> Option<Given<'a>> {
        if let Some(t) = self.inputs.iter().find(|t| t.name == name) {
            return Some(Given::Input(t));
        }
        self.parameters.get(name).and_then(|p| p.parameter_choice.as_ref()).map(Given::Parameter)
    }

    /// The one element of a scalar input (validation checked its datatype; the shape is [1]).
    fn scalar<const N: usize>(&self, name: &str, t: &Tensor) -> Result<[u8; N], RequestError> {
        let data = t.data.as_ref();
        if data.len() != N {
            return Err(self.invalid(name, format!("expected one element, got {} bytes", data.len())));
        }
        let mut out = [0u8; N];
        out.copy_from_slice(data);
        Ok(out)
    }

    fn int(&self, name: &str) -> Result<Option<i64>, RequestError> {
        Ok(match self.given(name) {
            None => None,
            Some(Given::Input(t)) => Some(i64::from(i32::from_le_bytes(self.scalar(name, t)?))),
            Some(Given::Parameter(ParameterChoice::Int64Param(v))) => Some(*v),
            Some(Given::Parameter(ParameterChoice::Uint64Param(v))) => {
                Some(i64::try_from(*v).map_err(|_| self.invalid(name, format!("{v} is too large")))?)
            }
            Some(Given::Parameter(other)) => {
                return Err(self.invalid(
                    name,
                    format!("the request parameter must be an integer, got {}", kind(other)),
                ));
            }
        })
    }

    fn uint64(&self, name: &str) -> Result<Option<u64>, RequestError> {
        Ok(match self.given(name) {
            None => None,
            Some(Given::Input(t)) => Some(u64::from_le_bytes(self.scalar(name, t)?)),
            Some(Given::Parameter(ParameterChoice::Uint64Param(v))) => Some(*v),
            Some(Given::Parameter(ParameterChoice::Int64Param(v))) => {
                Some(u64::try_from(*v).map_err(|_| self.invalid(name, format!("{v} is negative")))?)
            }
            Some(Given::Parameter(other)) => {
                return Err(self.invalid(
                    name,
                    format!("the request parameter must be a non-negative integer, got {}", kind(other)),
                ));
            }
        })
    }

    fn float(&self, name: &str) -> Result<Option<f32>, RequestError> {
        let value = match self.given(name) {
            None => return Ok(None),
            Some(Given::Input(t)) => f32::from_le_bytes(self.scalar(name, t)?),
            Some(Given::Parameter(ParameterChoice::DoubleParam(v))) => *v as f32,
            Some(Given::Parameter(ParameterChoice::Int64Param(v))) => *v as f32,
            Some(Given::Parameter(ParameterChoice::Uint64Param(v))) => *v as f32,
            Some(Given::Parameter(other)) => {
                return Err(self
                    .invalid(name, format!("the request parameter must be a number, got {}", kind(other))));
            }
        };
        if !value.is_finite() {
            return Err(self.invalid(name, format!("{value} is not a finite number")));
        }
        Ok(Some(value))
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, RequestError> {
        Ok(match self.given(name) {
            None => None,
            Some(Given::Input(t)) => Some(self.scalar::<1>(name, t)?[0] != 0),
            Some(Given::Parameter(ParameterChoice::BoolParam(v))) => Some(*v),
            Some(Given::Parameter(other)) => {
                return Err(
                    self.invalid(name, format!("the request parameter must be a bool, got {}", kind(other)))
                );
            }
        })
    }

    /// BYTES elements of an input as UTF-8 strings, or one string parameter.
    fn strings(&self, name: &str) -> Result<Vec<String>, RequestError> {
        match self.given(name) {
            None => Ok(Vec::new()),
            Some(Given::Input(t)) => tern_core::codec::bytes_elements(&t.data)
                .map(|e| {
                    let e = e.map_err(|e| self.invalid(name, e))?;
                    String::from_utf8(e.to_vec())
                        .map_err(|_| self.invalid(name, "the text is not valid UTF-8"))
                })
                .collect(),
            Some(Given::Parameter(ParameterChoice::StringParam(s))) => Ok(vec![s.clone()]),
            Some(Given::Parameter(other)) => {
                Err(self
                    .invalid(name, format!("the request parameter must be a string, got {}", kind(other))))
            }
        }
    }

    /// INT32 elements of an input, or one integer parameter.
    fn ints(&self, name: &str) -> Result<Vec<i64>, RequestError> {
        match self.given(name) {
            None => Ok(Vec::new()),
            Some(Given::Input(t)) => Ok(t
                .data
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect()),
            Some(Given::Parameter(_)) => Ok(self.int(name)?.into_iter().collect()),
        }
    }
}

fn kind(p: &ParameterChoice) -> &'static str {
    match p {
        ParameterChoice::BoolParam(_) => "a bool",
        ParameterChoice::Int64Param(_) => "an int64",
        ParameterChoice::Uint64Param(_) => "a uint64",
        ParameterChoice::DoubleParam(_) => "a double",
        ParameterChoice::StringParam(_) => "a string",
    }
}

/// Turns a validated request (inputs checked against the config: names, datatypes, shapes)
/// and its parameters into a generation request, checking every value.
pub(crate) fn parse_request(
    model: &str,
    validated: &tern_core::ValidatedRequest,
    parameters: &HashMap<String, InferParameter>,
    search: &tern_generate::SearchDefaults,
    arrived: Instant,
) -> Result<Parsed, RequestError> {
    let r = Reader { model, inputs: &validated.inputs, parameters };
    let mut prompt = r.strings("text_input")?;
    if prompt.len() != 1 {
        return Err(r.invalid("text_input", format!("expected one prompt, got {}", prompt.len())));
    }
    let text = prompt.remove(0);
    let max_tokens = match r.int("max_tokens")? {
        None => None,
        Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => Some(n as u32),
        Some(n) => return Err(r.invalid("max_tokens", format!("{n} must be at least 1"))),
    };
    // genai_config.json `search` for what the request leaves out.
    let mut sampling = search.sampling();
    if let Some(t) = r.float("temperature")? {
        if !(0.0..=MAX_TEMPERATURE).contains(&t) {
            return Err(r.invalid("temperature", format!("{t} must be between 0 and {MAX_TEMPERATURE}")));
        }
        sampling.temperature = t;
    }
    if let Some(k) = r.int("top_k")? {
        sampling.top_k =
            u32::try_from(k).map_err(|_| r.invalid("top_k", format!("{k} must be 0 (off) or more")))?;
    }
    if let Some(p) = r.float("top_p")? {
        if !(p > 0.0 && p <= 1.0) {
            return Err(r.invalid("top_p", format!("{p} must be in (0, 1]")));
        }
        sampling.top_p = p;
    }
    sampling.seed = r.uint64("seed")?;
    if let Some(p) = r.float("repetition_penalty")? {
        if !(p > 0.0 && p <= MAX_TEMPERATURE) {
            return Err(r.invalid("repetition_penalty", format!("{p} must be in (0, {MAX_TEMPERATURE}]")));
        }
        sampling.repetition_penalty = p;
    }
    let stop = r.strings("stop")?;
    if stop.len() > MAX_STOP_STRINGS {
        return Err(r.invalid(
            "stop",
            format!("{} stop strings are more than the limit of {MAX_STOP_STRINGS}", stop.len()),
        ));
    }
    if let Some(s) = stop.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_STRING_BYTES) {
        return Err(r.invalid(
            "stop",
            format!("a stop string must have 1 to {MAX_STOP_STRING_BYTES} bytes, got {}", s.len()),
        ));
    }
    let ids = r.ints("stop_token_ids")?;
    if ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(r.invalid(
            "stop_token_ids",
            format!("{} ids are more than the limit of {MAX_STOP_TOKEN_IDS}", ids.len()),
        ));
    }
    let stop_token_ids = ids
        .into_iter()
        .map(|id| {
            u32::try_from(id).map_err(|_| r.invalid("stop_token_ids", format!("{id} is not a token id")))
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let ignore_eos = r.bool("ignore_eos")?.unwrap_or(false);
    let stream = r.bool("stream")?.unwrap_or(true);
    // Triton's `timeout` request parameter (microseconds), read by validation.
    let deadline = validated.timeout.and_then(|t| arrived.checked_add(t));
    Ok(Parsed {
        request: GenerateRequest {
            prompt: Prompt::Text(text),
            max_tokens,
            sampling,
            stop,
            stop_token_ids,
            ignore_eos,
            deadline,
        },
        stream,
        outputs: validated.outputs.iter().map(|o| o.name.clone()).collect(),
    })
}

/// The gRPC status of an engine error.
pub(crate) fn gen_status(model: &str, e: GenError) -> Status {
    let message = format!("model '{model}': {e}");
    match e {
        GenError::InvalidArgument(_) => Status::invalid_argument(message),
        GenError::ResourceExhausted(_) => Status::resource_exhausted(message),
        GenError::Unavailable(_) => Status::unavailable(message),
        GenError::Internal(_) => Status::internal(message),
    }
}

/// Statistics' failure reason for an engine error.
pub(crate) fn gen_failure(e: &GenError) -> FailureReason {
    match e {
        GenError::ResourceExhausted(_) => FailureReason::Rejected,
        GenError::Internal(_) => FailureReason::Backend,
        GenError::InvalidArgument(_) | GenError::Unavailable(_) => FailureReason::Other,
    }
}

// === Responses ===

/// Builds the responses of one generation.
pub(crate) struct ResponseBuilder {
    pub model: Arc<LoadedModel>,
    pub id: String,
    /// Outputs to return; every output when empty.
    pub outputs: Vec<String>,
}

impl ResponseBuilder {
    fn wants(&self, name: &str) -> bool {
        self.outputs.is_empty() || self.outputs.iter().any(|o| o == name)
    }

    /// A response adding `text` and `ids`; the final one also says why the generation ended.
    pub fn response(&self, text: &str, ids: &[u32], finish: Option<FinishReason>) -> pb::ModelInferResponse {
        let mut response = pb::ModelInferResponse {
            model_name: self.model.name.clone(),
            model_version: self.model.version_str.clone(),
            id: self.id.clone(),
            ..Default::default()
        };
        let mut push = |name: &str, datatype: DataType, shape: Vec<i64>, data: Bytes| {
            if self.wants(name) {
                response.outputs.push(pb::model_infer_response::InferOutputTensor {
                    name: name.to_owned(),
                    datatype: datatype.wire_name().to_owned(),
                    shape,
                    ..Default::default()
                });
                response.raw_output_contents.push(data);
            }
        };
        push(
            "text_output",
            DataType::Bytes,
            vec![1],
            tern_core::codec::encode_bytes_elements([text.as_bytes()]),
        );
        let id_bytes: Vec<u8> = ids.iter().flat_map(|&id| (id as i32).to_le_bytes()).collect();
        push("output_ids", DataType::Int32, vec![ids.len() as i64], Bytes::from(id_bytes));
        if let Some(reason) = finish {
            push(
                "finish_reason",
                DataType::Bytes,
                vec![1],
                tern_core::codec::encode_bytes_elements([reason.as_str().as_bytes()]),
            );
        }
        mark_final(&mut response.parameters, finish.is_some());
        response
    }
}

/// Final-response parameter: tokens of the prompt as the engine encoded it (the OpenAI routes'
/// `usage.prompt_tokens`; the edge has no tokenizer).
pub const PROMPT_TOKENS_PARAMETER: &str = "prompt_tokens";
/// Final-response parameter: tokens the generation produced.
pub const COMPLETION_TOKENS_PARAMETER: &str = "completion_tokens";

/// Puts the usage counts on a final response as int64 parameters.
pub(crate) fn usage_parameters(
    parameters: &mut HashMap<String, InferParameter>,
    prompt_tokens: u32,
    completion_tokens: u32,
) {
    for (key, n) in
        [(PROMPT_TOKENS_PARAMETER, prompt_tokens), (COMPLETION_TOKENS_PARAMETER, completion_tokens)]
    {
        parameters.insert(
            key.to_owned(),
            InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(i64::from(n))) },
        );
    }
}

/// How a generation went, for statistics and metrics (recorded once, when it ends).
pub(crate) struct Progress {
    pub arrived: Instant,
    pub last_token: Option<Instant>,
    pub metrics: tern_telemetry::GenerationMetrics,
}

impl Progress {
    pub fn token(&mut self) {
        let now = Instant::now();
        match self.last_token {
            None => self.metrics.first_token(now.duration_since(self.arrived)),
            Some(previous) => self.metrics.next_token(now.duration_since(previous)),
        }
        self.last_token = Some(now);
    }

    pub fn elapsed(&self) -> Duration {
        self.arrived.elapsed()
    }
}

/// The engine's half of one generation: events in, responses out.
pub(crate) struct Running {
    pub generation: Generation,
    pub builder: ResponseBuilder,
    pub stream: bool,
    pub progress: Progress,
    /// `stream: false`: what is gathered for the one response.
    pub text: String,
    pub ids: Vec<u32>,
    pub done: bool,
    pub span: tracing::Span,
}

impl Running {
    /// The next response, or `None` once the final one was sent.
    pub async fn next(&mut self) -> Option<Result<pb::ModelInferResponse, Status>> {
        while !self.done {
            let Some(event) = self.generation.events.recv().await else {
                self.done = true;
                let message = format!("model '{}': the generation engine stopped", self.builder.model.name);
                self.fail(FailureReason::Backend, "error");
                return Some(Err(Status::internal(message)));
            };
            match event {
                GenEvent::Token { id, text } => {
                    self.progress.token();
                    tracing::trace!(parent: &self.span, token = id, "token");
                    if self.stream {
                        return Some(Ok(self.builder.response(&text, &[id], None)));
                    }
                    self.text.push_str(&text);
                    self.ids.push(id);
                }
                GenEvent::Finished { reason, prompt_tokens, generated_tokens } => {
                    self.done = true;
                    self.span.record("prompt_tokens", prompt_tokens);
                    self.span.record("generated_tokens", generated_tokens);
                    self.span.record("finish_reason", reason.as_str());
                    self.progress.metrics.finished(reason.as_str(), u64::from(prompt_tokens));
                    let stats = self.builder.model.scheduler.stats();
                    stats.record_request(self.progress.elapsed());
                    let (text, ids) = (std::mem::take(&mut self.text), std::mem::take(&mut self.ids));
                    let mut response = self.builder.response(&text, &ids, Some(reason));
                    usage_parameters(&mut response.parameters, prompt_tokens, generated_tokens);
                    return Some(Ok(response));
                }
                GenEvent::Failed(e) => {
                    self.done = true;
                    self.span.record("finish_reason", "error");
                    self.fail(gen_failure(&e), "error");
                    return Some(Err(gen_status(&self.builder.model.name, e)));
                }
            }
        }
        None
    }

    fn fail(&self, reason: FailureReason, finish: &str) {
        self.progress.metrics.finished(finish, 0);
        self.builder.model.scheduler.stats().record_failure(reason, self.progress.elapsed());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            // The client went away: dropping the generation cancels the sequence.
            self.span.record("finish_reason", "cancelled");
            self.progress.metrics.finished("cancelled", 0);
            self.builder
                .model
                .scheduler
                .stats()
                .record_failure(FailureReason::Canceled, self.progress.elapsed());
        }
    }
}
