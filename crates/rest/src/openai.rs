//! The OpenAI-compatible API on the HTTP port (`/v1/...`), so the `openai` client works with
//! `base_url="http://host:8000/v1"`: `GET /v1/models[/{id}]`, `POST /v1/completions`,
//! `POST /v1/chat/completions` (generative models) and `POST /v1/embeddings` (embedding models).
//!
//! Like every route of this crate it is a translation: the caller's token is checked as the
//! gRPC auth layer checks ModelStreamInfer (generation, listing) or ModelInfer (embeddings),
//! then the same service methods run (`StreamOne::stream_one`, ModelInfer, ModelConfig,
//! RepositoryIndex) with the caller's principal, so per-model permissions, limits, metrics and
//! traces are those of the gRPC path, on node, router and `tern serve` alike.
//!
//! Model ids are model names; a request always runs the server's choice of version (the
//! latest READY one). Shapes and words follow OpenAI's API reference
//! (platform.openai.com/docs/api-reference: completions, chat, embeddings, models, errors).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Map, Value, json};
use tern_edge::triton::InferResponses;
use tern_proto::inference::{self as pb, infer_parameter::ParameterChoice};

use crate::body;
use crate::error::RestError;
use crate::generate::FINAL_RESPONSE;
use crate::routes::{Service, Shared, authorize, grpc_request, trace_metadata};

/// The generative backend (tern-repository's `GENAI_BACKEND`; this crate sees only configs).
const GENAI_BACKEND: &str = "onnxruntime_genai";
/// Final-response parameters the node puts on a generation's last response.
const PROMPT_TOKENS: &str = "prompt_tokens";
const COMPLETION_TOKENS: &str = "completion_tokens";
/// Most inputs one embeddings request may give (OpenAI's limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2_048;
/// Most stop strings (the node's limit).
pub const MAX_STOP: usize = 64;
/// Most messages of one chat request.
pub const MAX_MESSAGES: usize = 4_096;
/// Longest deadline a request header may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How long a model's config facts are reused before ModelConfig is asked again.
const FACTS_TTL: Duration = Duration::from_secs(5);
/// Most models whose facts are cached at once.
const FACTS_CAPACITY: usize = 256;

// === Errors ===

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl OpenAiError {
    /// 400 `invalid_request_error` naming `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> OpenAiError {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_owned()),
            code: None,
        }
    }

    /// 400 `invalid_request_error` without a parameter.
    pub fn bad_request(message: impl Into<String>) -> OpenAiError {
        OpenAiError { param: None, ..OpenAiError::invalid("", message) }
    }

    /// 404 `model_not_found` (OpenAI's words: "The model `x` does not exist").
    pub fn model_not_found(model: &str, detail: &str) -> OpenAiError {
        OpenAiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model '{model}' does not exist or is not ready ({detail})"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn internal(message: impl Into<String>) -> OpenAiError {
        OpenAiError::from(RestError::internal(message))
    }

    /// The body OpenAI sends, also the `data:` of an error event on a stream.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<RestError> for OpenAiError {
    /// The status stays; the type and code are OpenAI's for that status.
    fn from(e: RestError) -> OpenAiError {
        let (kind, code) = match e.status {
            StatusCode::UNAUTHORIZED => ("authentication_error", Some("invalid_api_key")),
            StatusCode::FORBIDDEN => ("permission_error", None),
            StatusCode::NOT_FOUND => ("invalid_request_error", Some("model_not_found")),
            StatusCode::TOO_MANY_REQUESTS => ("rate_limit_error", Some("rate_limit_exceeded")),
            StatusCode::GATEWAY_TIMEOUT => ("timeout_error", Some("timeout")),
            s if s.is_server_error() => ("server_error", None),
            _ => ("invalid_request_error", None),
        };
        let param = (e.status == StatusCode::NOT_FOUND).then(|| "model".to_owned());
        OpenAiError { status: e.status, message: e.message, kind, param, code }
    }
}

impl From<tonic::Status> for OpenAiError {
    fn from(status: tonic::Status) -> OpenAiError {
        OpenAiError::from(RestError::from(status))
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let bytes = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = (self.status, bytes).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tern\""));
        }
        response
    }
}

// === Per-token hook ===

/// Called with each piece of a generation before it is sent, with the tokens it adds: the
/// place for a later per-token rate limit or quota (per caller, per model). An error ends the
/// generation (its stream is dropped, which cancels it) and is reported to the client. Today
/// it admits everything.
pub fn meter_tokens(
    _model: &str,
    _caller: Option<&tern_edge::Principal>,
    _tokens: usize,
) -> Result<(), OpenAiError> {
    Ok(())
}

// === Dispatch ===

/// `/v1/...`: every answer, errors included, in OpenAI's shape.
pub(crate) async fn route<T: Service>(
    s: &Shared<T>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let result = match path.trim_end_matches('/') {
        "/v1/models" => want(method, Method::GET).map(|_| ()).map(|_| None),
        "/v1/completions" | "/v1/chat/completions" | "/v1/embeddings" => {
            want(method, Method::POST).map(|_| None)
        }
        other => match other.strip_prefix("/v1/models/") {
            Some(id) => want(method, Method::GET)
                .and_then(|_| crate::routes::decode_segment(id).map(Some).map_err(OpenAiError::from)),
            None => Err(OpenAiError {
                status: StatusCode::NOT_FOUND,
                message: format!("Unknown request URL: {method} {path}"),
                kind: "invalid_request_error",
                param: None,
                code: Some("unknown_url"),
            }),
        },
    };
    let answer = match result {
        Err(e) => Err(e),
        Ok(Some(id)) => models(s, headers, Some(&id)).await,
        Ok(None) => match path.trim_end_matches('/') {
            "/v1/models" => models(s, headers, None).await,
            "/v1/completions" => generate(s, headers, body, Kind::Completion).await,
            "/v1/chat/completions" => generate(s, headers, body, Kind::Chat).await,
            _ => embeddings(s, headers, body).await,
        },
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

fn want(method: &Method, allowed: Method) -> Result<(), OpenAiError> {
    if *method == allowed {
        Ok(())
    } else {
        Err(OpenAiError {
            code: Some("method_not_allowed"),
            ..OpenAiError::from(RestError::method_not_allowed())
        })
    }
}

fn json_response(value: &Value) -> Result<Response, OpenAiError> {
    let bytes = serde_json::to_vec(value).map_err(|e| OpenAiError::internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A response id: `prefix` and 24 hex digits, unique in the process and unpredictable enough
/// to tell requests apart in logs (not a secret).
fn response_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    // splitmix64 of the counter and clock.
    let mut z = nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    format!("{prefix}-{z:016x}{:08x}", n as u32)
}

// === /v1/models ===

/// The READY models the caller's token may see (RepositoryIndex with the caller's principal,
/// which filters by the token's models), one entry per name.
async fn models<T: Service>(
    s: &Shared<T>,
    headers: &HeaderMap,
    id: Option<&str>,
) -> Result<Response, OpenAiError> {
    let caller = authorize(s, "ModelStreamInfer", headers)?;
    let request = pb::RepositoryIndexRequest { repository_name: String::new(), ready: true };
    let index = s.service.repository_index(grpc_request(request, headers, caller)).await?.into_inner();
    let mut names: Vec<String> = index
        .models
        .into_iter()
        .filter(|m| m.state.is_empty() || m.state == "READY")
        .map(|m| m.name)
        .collect();
    names.sort();
    names.dedup();
    let entry = |name: &str| json!({"id": name, "object": "model", "created": s.created, "owned_by": "tern"});
    match id {
        None => json_response(&json!({
            "object": "list",
            "data": names.iter().map(|n| entry(n)).collect::<Vec<_>>(),
        })),
        Some(id) if names.iter().any(|n| n == id) => json_response(&entry(id)),
        Some(id) => Err(OpenAiError::model_not_found(id, "no READY model of that name")),
    }
}

// === Model facts (from ModelConfig, cached) ===

/// What the OpenAI routes need from a model's config.
#[derive(Debug, Clone, Default)]
pub struct ModelFacts {
    pub generative: bool,
    pub chat_template: Option<String>,
    pub bos_token: String,
    pub eos_token: String,
    /// `Some` for a model that meets the embedding contract.
    pub embedding: Option<EmbeddingFacts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingFacts {
    pub max_batch_size: usize,
    pub dimensions: usize,
}

impl ModelFacts {
    pub fn of(config: &pb::ModelConfig) -> ModelFacts {
        let param = |key: &str| config.parameters.get(key).map(|p| p.string_value.clone());
        let decoupled = config.model_transaction_policy.as_ref().is_some_and(|p| p.decoupled);
        let generative = config.backend == GENAI_BACKEND
            || (decoupled && config.input.iter().any(|i| i.name == "text_input"));
        ModelFacts {
            generative,
            chat_template: param("chat_template"),
            bos_token: param("bos_token").unwrap_or_default(),
            eos_token: param("eos_token").unwrap_or_default(),
            embedding: embedding_facts(config),
        }
    }
}

/// The embedding contract: max_batch_size > 0, input `text` (TYPE_STRING dims [1]), outputs
/// `embedding` (TYPE_FP32 dims [D]) and `token_count` (TYPE_INT64 dims [1]).
fn embedding_facts(config: &pb::ModelConfig) -> Option<EmbeddingFacts> {
    let max_batch_size = usize::try_from(config.max_batch_size).ok().filter(|&b| b > 0)?;
    let text = config.input.iter().find(|i| i.name == "text")?;
    if text.data_type != pb::DataType::TypeString as i32 || text.dims != [1] {
        return None;
    }
    let embedding = config.output.iter().find(|o| o.name == "embedding")?;
    let dimensions = match embedding.dims.as_slice() {
        [d] if *d > 0 && embedding.data_type == pb::DataType::TypeFp32 as i32 => usize::try_from(*d).ok()?,
        _ => return None,
    };
    let count = config.output.iter().find(|o| o.name == "token_count")?;
    (count.data_type == pb::DataType::TypeInt64 as i32)
        .then_some(EmbeddingFacts { max_batch_size, dimensions })
}

/// ModelConfig answers per model, kept [`FACTS_TTL`]. The lock is held only to read or write
/// the map, never across the ModelConfig call.
#[derive(Default)]
pub(crate) struct FactsCache(Mutex<HashMap<String, (Instant, std::sync::Arc<ModelFacts>)>>);

impl FactsCache {
    fn get(&self, model: &str) -> Option<std::sync::Arc<ModelFacts>> {
        let map = self.0.lock().ok()?;
        map.get(model).filter(|(at, _)| at.elapsed() < FACTS_TTL).map(|(_, f)| f.clone())
    }

    fn put(&self, model: &str, facts: std::sync::Arc<ModelFacts>) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= FACTS_CAPACITY {
                map.retain(|_, (at, _)| at.elapsed() < FACTS_TTL);
                if map.len() >= FACTS_CAPACITY {
                    map.clear();
                }
            }
            map.insert(model.to_owned(), (Instant::now(), facts));
        }
    }
}

/// The facts of `model` (latest version), the caller authorized for the model first so that
/// the cache never answers for a model the token may not use.
async fn facts<T: Service>(
    s: &Shared<T>,
    headers: &HeaderMap,
    caller: &Option<tern_edge::Principal>,
    model: &str,
) -> Result<std::sync::Arc<ModelFacts>, OpenAiError> {
    tern_edge::authorize_model(caller.as_ref(), model)?;
    if let Some(f) = s.openai.get(model) {
        return Ok(f);
    }
    let request = pb::ModelConfigRequest { name: model.to_owned(), version: String::new() };
    let config = s
        .service
        .model_config(grpc_request(request, headers, caller.clone()))
        .await
        .map_err(|status| match status.code() {
            tonic::Code::NotFound | tonic::Code::Unavailable => {
                OpenAiError::model_not_found(model, status.message())
            }
            _ => OpenAiError::from(status),
        })?
        .into_inner()
        .config
        .unwrap_or_default();
    let f = std::sync::Arc::new(ModelFacts::of(&config));
    s.openai.put(model, f.clone());
    Ok(f)
}

// === Generation requests ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Completion,
    Chat,
}

/// A parsed `/v1/completions` or `/v1/chat/completions` body.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenRequest {
    pub model: String,
    /// Completions: the prompt.
    pub prompt: String,
    /// Chat: the messages, each `{role, content}` (content as text), `name` kept.
    pub messages: Vec<Value>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub repetition_penalty: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
}

/// Whether a field holds its default value.
type IsDefault = dyn Fn(&Value) -> bool;

fn is_null_or(v: Option<&Value>, default: impl Fn(&Value) -> bool) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(v) => default(v),
    }
}

/// A JSON body as an object.
fn object(body: &[u8]) -> Result<Map<String, Value>, OpenAiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(OpenAiError::bad_request("the request body must be a JSON object")),
        Err(e) => {
            Err(OpenAiError::bad_request(format!("We could not parse the JSON body of your request: {e}")))
        }
    }
}

fn model_field(body: &Map<String, Value>) -> Result<String, OpenAiError> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        None | Some(Value::Null) => Err(OpenAiError::invalid("model", "you must provide a model parameter")),
        Some(_) => Err(OpenAiError::invalid("model", "'model' must be a non-empty string")),
    }
}

/// Parses and checks a generation body: OpenAI's fields mapped to the engine's, harmless ones
/// ignored, unsupported ones refused unless they hold their default, naming the parameter.
pub fn parse_generate(kind: Kind, body: &[u8]) -> Result<GenRequest, OpenAiError> {
    let b = object(body)?;
    let mut r = GenRequest { model: model_field(&b)?, ..Default::default() };
    // Parameters Tern does not implement: accepted only at their defaults.
    let unsupported: &[(&str, &IsDefault)] = &[
        ("n", &|v: &Value| v.as_u64() == Some(1)),
        ("best_of", &|v: &Value| v.as_u64() == Some(1)),
        ("echo", &|v: &Value| v == &Value::Bool(false)),
        ("logprobs", &|v: &Value| v == &Value::Bool(false)),
        ("top_logprobs", &|v: &Value| v.as_u64() == Some(0)),
        ("presence_penalty", &|v: &Value| v.as_f64() == Some(0.0)),
        ("frequency_penalty", &|v: &Value| v.as_f64() == Some(0.0)),
        ("logit_bias", &|v: &Value| v.as_object().is_some_and(Map::is_empty)),
        ("suffix", &|v: &Value| v.as_str() == Some("")),
        ("tools", &|v: &Value| v.as_array().is_some_and(Vec::is_empty)),
        ("functions", &|v: &Value| v.as_array().is_some_and(Vec::is_empty)),
        ("tool_choice", &|v: &Value| v.as_str() == Some("none") || v.as_str() == Some("auto")),
        ("function_call", &|v: &Value| v.as_str() == Some("none") || v.as_str() == Some("auto")),
        ("response_format", &|v: &Value| v.get("type").and_then(Value::as_str) == Some("text")),
        ("modalities", &|v: &Value| v == &json!(["text"])),
        ("audio", &|_: &Value| false),
        ("prediction", &|_: &Value| false),
        ("reasoning_effort", &|_: &Value| false),
        ("web_search_options", &|_: &Value| false),
    ];
    for (param, default) in unsupported {
        if !is_null_or(b.get(*param), default) {
            let got = b.get(*param).map(Value::to_string).unwrap_or_default();
            let want = if *param == "n" || *param == "best_of" { " (only 1 is supported)" } else { "" };
            return Err(OpenAiError::invalid(
                param,
                format!("'{param}' is not supported by Tern with the value {got}{want}"),
            ));
        }
    }
    match kind {
        Kind::Completion => {
            r.prompt = match b.get("prompt") {
                Some(Value::String(p)) => p.clone(),
                Some(Value::Array(items)) => match items.as_slice() {
                    [Value::String(p)] => p.clone(),
                    [] => return Err(OpenAiError::invalid("prompt", "'prompt' is an empty list")),
                    items if items.iter().all(Value::is_string) => {
                        return Err(OpenAiError::invalid(
                            "prompt",
                            format!(
                                "'prompt' holds {} prompts: Tern takes one prompt per request",
                                items.len()
                            ),
                        ));
                    }
                    _ => {
                        return Err(OpenAiError::invalid(
                            "prompt",
                            "'prompt' as token ids is not supported: give the prompt as a string",
                        ));
                    }
                },
                None | Some(Value::Null) => {
                    return Err(OpenAiError::invalid("prompt", "you must provide a prompt parameter"));
                }
                Some(_) => return Err(OpenAiError::invalid("prompt", "'prompt' must be a string")),
            };
        }
        Kind::Chat => r.messages = parse_messages(b.get("messages"))?,
    }
    let uint = |name: &str| -> Result<Option<u64>, OpenAiError> {
        match b.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                OpenAiError::invalid(name, format!("'{name}' must be a non-negative integer, got {v}"))
            }),
        }
    };
    let number = |name: &str, range: std::ops::RangeInclusive<f64>| -> Result<Option<f64>, OpenAiError> {
        match b.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if range.contains(&x) => Ok(Some(x)),
                _ => Err(OpenAiError::invalid(
                    name,
                    format!("'{name}' must be a number from {} to {}, got {v}", range.start(), range.end()),
                )),
            },
        }
    };
    // max_completion_tokens replaces max_tokens (OpenAI deprecated the latter for chat).
    for name in ["max_tokens", "max_completion_tokens"] {
        if let Some(n) = uint(name)? {
            if n == 0 || n > u64::from(u32::MAX) {
                return Err(OpenAiError::invalid(name, format!("'{name}' must be at least 1, got {n}")));
            }
            r.max_tokens = Some(n as u32);
        }
    }
    // OpenAI's default for completions is 16 tokens; for chat, up to the context.
    if kind == Kind::Completion && r.max_tokens.is_none() {
        r.max_tokens = Some(16);
    }
    r.temperature = number("temperature", 0.0..=2.0)?;
    r.top_p = number("top_p", 0.0..=1.0)?;
    if r.top_p == Some(0.0) {
        return Err(OpenAiError::invalid("top_p", "'top_p' must be greater than 0"));
    }
    r.repetition_penalty = number("repetition_penalty", f64::MIN_POSITIVE..=100.0)?;
    r.top_k = match b.get("top_k") {
        // vLLM's -1 for "off" is 0 here.
        Some(v) if v.as_i64() == Some(-1) => Some(0),
        _ => uint("top_k")?.map(|k| u32::try_from(k).unwrap_or(u32::MAX)),
    };
    r.seed = match b.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(s), _) => Some(s),
            // OpenAI takes any int64: a negative seed is a seed too.
            (None, Some(s)) => Some(s as u64),
            _ => return Err(OpenAiError::invalid("seed", format!("'seed' must be an integer, got {v}"))),
        },
    };
    r.stop = match b.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| {
                s.as_str().map(str::to_owned).ok_or_else(|| {
                    OpenAiError::invalid("stop", "'stop' must be a string or a list of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(OpenAiError::invalid("stop", "'stop' must be a string or a list of strings")),
    };
    // An empty stop string stops nothing.
    r.stop.retain(|s| !s.is_empty());
    if r.stop.len() > MAX_STOP {
        return Err(OpenAiError::invalid(
            "stop",
            format!("{} stop strings are more than the limit of {MAX_STOP}", r.stop.len()),
        ));
    }
    let boolean = |name: &str| -> Result<bool, OpenAiError> {
        match b.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(v)) => Ok(*v),
            Some(v) => Err(OpenAiError::invalid(name, format!("'{name}' must be true or false, got {v}"))),
        }
    };
    r.ignore_eos = boolean("ignore_eos")?;
    r.stream = boolean("stream")?;
    r.include_usage = match b.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            if !r.stream {
                return Err(OpenAiError::invalid(
                    "stream_options",
                    "'stream_options' is only allowed when 'stream' is true",
                ));
            }
            match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(v)) => *v,
                Some(_) => {
                    return Err(OpenAiError::invalid(
                        "stream_options",
                        "'stream_options.include_usage' must be true or false",
                    ));
                }
            }
        }
        Some(_) => return Err(OpenAiError::invalid("stream_options", "'stream_options' must be an object")),
    };
    Ok(r)
}

/// Chat messages with their content as text: a string, or a list of `{"type": "text"}` parts
/// (joined); other part types are refused.
fn parse_messages(messages: Option<&Value>) -> Result<Vec<Value>, OpenAiError> {
    let bad = |m: String| OpenAiError::invalid("messages", m);
    let items = match messages {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => return Err(bad("'messages' must hold at least one message".into())),
        None | Some(Value::Null) => return Err(bad("you must provide a messages parameter".into())),
        Some(_) => return Err(bad("'messages' must be a list of messages".into())),
    };
    if items.len() > MAX_MESSAGES {
        return Err(bad(format!("{} messages are more than the limit of {MAX_MESSAGES}", items.len())));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let Some(m) = m.as_object() else { return Err(bad(format!("messages[{i}] must be an object"))) };
        let role = match m.get("role") {
            Some(Value::String(r))
                if matches!(r.as_str(), "system" | "developer" | "user" | "assistant" | "tool") =>
            {
                r.clone()
            }
            Some(r) => {
                return Err(bad(format!(
                    "messages[{i}].role {r} is not one of 'system', 'developer', 'user', 'assistant', 'tool'"
                )));
            }
            None => return Err(bad(format!("messages[{i}] has no 'role'"))),
        };
        let content = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(bad(format!(
                                "messages[{i}].content[{j}]: content parts of type {} are not supported \
                                 (only 'text')",
                                kind.unwrap_or("<none>")
                            )));
                        }
                    }
                }
                text
            }
            Some(_) => return Err(bad(format!("messages[{i}].content must be a string or a list of parts"))),
        };
        let mut message = Map::new();
        message.insert("role".into(), Value::String(role));
        message.insert("content".into(), Value::String(content));
        if let Some(Value::String(name)) = m.get("name") {
            message.insert("name".into(), Value::String(name.clone()));
        }
        out.push(Value::Object(message));
    }
    Ok(out)
}

// === Chat templates ===

/// Renders `template` (a Hugging Face chat template) for `messages` as transformers'
/// `apply_chat_template` does: Jinja with `trim_blocks` and `lstrip_blocks`, Python's string
/// methods, `raise_exception`, `bos_token`, `eos_token`, `add_generation_prompt=true`. A
/// template that does not compile is the model's fault (500); one that fails on these
/// messages (its `raise_exception`, most often) the request's (400).
pub fn render_chat(
    model: &str,
    template: &str,
    bos_token: &str,
    eos_token: &str,
    messages: &[Value],
) -> Result<String, OpenAiError> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
    });
    env.add_template("chat_template", template).map_err(|e| {
        OpenAiError::internal(format!("the chat template of model '{model}' does not compile: {e:#}"))
    })?;
    let compiled = env
        .get_template("chat_template")
        .map_err(|e| OpenAiError::internal(format!("model '{model}': {e}")))?;
    compiled
        .render(minijinja::context! {
            messages => messages,
            bos_token => bos_token,
            eos_token => eos_token,
            add_generation_prompt => true,
        })
        .map_err(|e| {
            let detail = e.detail().map(str::to_owned).unwrap_or_else(|| e.to_string());
            OpenAiError::invalid(
                "messages",
                format!("the chat template of model '{model}' cannot render these messages: {detail}"),
            )
        })
}

// === Generation ===

/// The deadline a request's headers ask for: `x-request-timeout` (seconds), or, for an
/// answer sent whole, the OpenAI Python client's `x-stainless-read-timeout` (seconds: the
/// client stops reading then, so the server need not go on; a stream's read timeout is per
/// chunk, not a deadline). Bounded by [`MAX_TIMEOUT`].
pub fn header_timeout(headers: &HeaderMap, stream: bool) -> Result<Option<Duration>, OpenAiError> {
    let names: &[&str] =
        if stream { &["x-request-timeout"] } else { &["x-request-timeout", "x-stainless-read-timeout"] };
    for name in names {
        let Some(v) = headers.get(*name) else { continue };
        let text = v.to_str().unwrap_or("");
        let seconds =
            text.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s > 0.0).ok_or_else(|| {
                OpenAiError::bad_request(format!(
                    "header '{name}' must be a positive number of seconds, got '{text}'"
                ))
            })?;
        return Ok(Some(Duration::from_secs_f64(seconds.min(MAX_TIMEOUT.as_secs_f64()))));
    }
    Ok(None)
}

fn parameter(choice: ParameterChoice) -> pb::InferParameter {
    pb::InferParameter { parameter_choice: Some(choice) }
}

/// Triton's BYTES element encoding: a little-endian u32 length before each element.
fn bytes_elements<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    Bytes::from(out)
}

/// The engine request for a prompt: `text_input` and `stop` as inputs, the sampling values as
/// request parameters (the node reads either), always streamed so pieces can be relayed.
pub fn infer_request(r: &GenRequest, prompt: &str, timeout: Option<Duration>) -> pb::ModelInferRequest {
    use pb::model_infer_request::InferInputTensor;
    let mut request = pb::ModelInferRequest { model_name: r.model.clone(), ..Default::default() };
    request.inputs.push(InferInputTensor {
        name: "text_input".into(),
        datatype: "BYTES".into(),
        shape: vec![1],
        ..Default::default()
    });
    request.raw_input_contents.push(bytes_elements([prompt.as_bytes()]));
    if !r.stop.is_empty() {
        request.inputs.push(InferInputTensor {
            name: "stop".into(),
            datatype: "BYTES".into(),
            shape: vec![r.stop.len() as i64],
            ..Default::default()
        });
        request.raw_input_contents.push(bytes_elements(r.stop.iter().map(String::as_bytes)));
    }
    let p = &mut request.parameters;
    p.insert("stream".into(), parameter(ParameterChoice::BoolParam(true)));
    if let Some(n) = r.max_tokens {
        p.insert("max_tokens".into(), parameter(ParameterChoice::Int64Param(i64::from(n))));
    }
    if let Some(t) = r.temperature {
        p.insert("temperature".into(), parameter(ParameterChoice::DoubleParam(t)));
    }
    if let Some(t) = r.top_p {
        p.insert("top_p".into(), parameter(ParameterChoice::DoubleParam(t)));
    }
    if let Some(k) = r.top_k {
        p.insert("top_k".into(), parameter(ParameterChoice::Int64Param(i64::from(k))));
    }
    if let Some(x) = r.repetition_penalty {
        p.insert("repetition_penalty".into(), parameter(ParameterChoice::DoubleParam(x)));
    }
    if let Some(seed) = r.seed {
        p.insert("seed".into(), parameter(ParameterChoice::Uint64Param(seed)));
    }
    if r.ignore_eos {
        p.insert("ignore_eos".into(), parameter(ParameterChoice::BoolParam(true)));
    }
    if let Some(t) = timeout {
        // Triton's `timeout` request parameter, in microseconds: the node's deadline.
        let micros = i64::try_from(t.as_micros()).unwrap_or(i64::MAX).max(1);
        p.insert("timeout".into(), parameter(ParameterChoice::Int64Param(micros)));
    }
    request
}

/// What one engine response adds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub tokens: usize,
    pub finish: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub last: bool,
}

/// Reads one response of the generate stream (outputs `text_output`, `output_ids`,
/// `finish_reason`; parameters `prompt_tokens`, `completion_tokens`, `triton_final_response`).
pub fn piece(response: &pb::ModelInferResponse) -> Result<Piece, OpenAiError> {
    let mut p = Piece::default();
    for (i, output) in response.outputs.iter().enumerate() {
        let raw = response.raw_output_contents.get(i).map(Bytes::as_ref).unwrap_or_default();
        match output.name.as_str() {
            "text_output" => p.text = first_element(raw)?,
            "output_ids" => p.tokens = raw.len() / 4,
            "finish_reason" => p.finish = Some(first_element(raw)?),
            _ => {}
        }
    }
    let int = |key: &str| match response.parameters.get(key).and_then(|p| p.parameter_choice.as_ref()) {
        Some(ParameterChoice::Int64Param(n)) => u64::try_from(*n).ok(),
        Some(ParameterChoice::Uint64Param(n)) => Some(*n),
        _ => None,
    };
    p.prompt_tokens = int(PROMPT_TOKENS);
    p.completion_tokens = int(COMPLETION_TOKENS);
    p.last = matches!(
        response.parameters.get(FINAL_RESPONSE).and_then(|p| p.parameter_choice.as_ref()),
        Some(ParameterChoice::BoolParam(true))
    ) || p.finish.is_some();
    Ok(p)
}

/// The first BYTES element of a raw output, as text.
fn first_element(raw: &[u8]) -> Result<String, OpenAiError> {
    let bad = || OpenAiError::internal("malformed BYTES output in the generate response");
    if raw.is_empty() {
        return Ok(String::new());
    }
    let len = u32::from_le_bytes(raw.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let bytes = raw.get(4..4 + len).ok_or_else(bad)?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// OpenAI's `finish_reason` for the engine's: "length" stays, the rest of a normal end (EOS,
/// stop string or id) is "stop". A deadline is not a finish: it is an error (504).
fn finish_reason(engine: &str) -> Result<&'static str, OpenAiError> {
    match engine {
        "length" => Ok("length"),
        "deadline" => Err(OpenAiError::from(RestError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "the request's deadline passed before the generation ended",
        ))),
        "cancelled" => Err(OpenAiError::internal("the generation was cancelled")),
        _ => Ok("stop"),
    }
}

/// Counts of a finished generation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// Builds the JSON objects of one completion, streamed (chunks) or whole.
pub struct Framer {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
    role_sent: bool,
}

impl Framer {
    pub fn new(kind: Kind, model: &str, include_usage: bool) -> Framer {
        let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        Framer {
            kind,
            id: response_id(prefix),
            created: unix_now(),
            model: model.to_owned(),
            include_usage,
            role_sent: false,
        }
    }

    /// A streamed chunk adding `text`, with `finish` on the last.
    pub fn chunk(&mut self, text: &str, finish: Option<&str>) -> Value {
        let mut chunk = match self.kind {
            Kind::Completion => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
            }),
            Kind::Chat => {
                let mut delta = Map::new();
                if !std::mem::replace(&mut self.role_sent, true) {
                    delta.insert("role".into(), json!("assistant"));
                }
                if !text.is_empty() || finish.is_none() {
                    delta.insert("content".into(), json!(text));
                }
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "system_fingerprint": null,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                })
            }
        };
        if self.include_usage {
            // OpenAI: with include_usage every chunk has `usage: null` but the last.
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// The extra last chunk of `stream_options.include_usage`: empty choices, the usage.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": [], "usage": usage.json(),
        })
    }

    /// The whole (non-streamed) answer.
    pub fn whole(&self, text: &str, finish: &str, usage: Usage) -> Value {
        match self.kind {
            Kind::Completion => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
                "usage": usage.json(),
            }),
            Kind::Chat => json!({
                "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "system_fingerprint": null,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": null},
                    "logprobs": null,
                    "finish_reason": finish,
                }],
                "usage": usage.json(),
            }),
        }
    }
}

/// One Server-Sent Event: `data: <json>\n\n`.
pub fn sse(value: &Value) -> Bytes {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&serde_json::to_vec(value).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The event that ends every OpenAI stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

async fn generate<T: Service>(
    s: &Shared<T>,
    headers: &HeaderMap,
    body: Body,
    kind: Kind,
) -> Result<Response, OpenAiError> {
    let caller = authorize(s, "ModelStreamInfer", headers)?;
    let bytes = body::read(headers, body, s.max_body).await?;
    let r = parse_generate(kind, &bytes)?;
    drop(bytes);
    let timeout = header_timeout(headers, r.stream)?;
    let facts = facts(s, headers, &caller, &r.model).await?;
    if !facts.generative {
        return Err(OpenAiError::invalid(
            "model",
            format!(
                "model '{}' is not a generative model: the completions APIs serve models with backend \
                 '{GENAI_BACKEND}'",
                r.model
            ),
        ));
    }
    let prompt = match kind {
        Kind::Completion => r.prompt.clone(),
        Kind::Chat => {
            let Some(template) = &facts.chat_template else {
                return Err(OpenAiError::invalid(
                    "model",
                    format!(
                        "model '{}' has no chat template (tokenizer_config.json 'chat_template', or the \
                         config parameter 'chat_template'): use /v1/completions",
                        r.model
                    ),
                ));
            };
            let (model, template, bos, eos, messages) = (
                r.model.clone(),
                template.clone(),
                facts.bos_token.clone(),
                facts.eos_token.clone(),
                r.messages.clone(),
            );
            // Rendering is CPU work of unbounded size: off the async workers.
            tokio::task::spawn_blocking(move || render_chat(&model, &template, &bos, &eos, &messages))
                .await
                .map_err(|e| OpenAiError::internal(format!("chat template task failed: {e}")))??
        }
    };
    let request = infer_request(&r, &prompt, timeout);
    let mut responses = s.service.stream_one(request, trace_metadata(headers), caller.clone());
    let mut framer = Framer::new(kind, &r.model, r.include_usage);
    if !r.stream {
        // The whole answer; a client that goes away drops this future and the stream with it.
        let (mut text, mut tokens, mut prompt_tokens, mut finish) = (String::new(), 0u64, 0u64, None);
        while let Some(response) = responses.next().await {
            let p = piece(&response?)?;
            meter_tokens(&r.model, caller.as_ref(), p.tokens)?;
            text.push_str(&p.text);
            tokens += p.tokens as u64;
            if p.last {
                prompt_tokens = p.prompt_tokens.unwrap_or(0);
                finish = Some(finish_reason(p.finish.as_deref().unwrap_or("stop"))?);
                break;
            }
        }
        let finish =
            finish.ok_or_else(|| OpenAiError::internal("the generation ended without a final response"))?;
        let usage = Usage { prompt_tokens, completion_tokens: tokens };
        return json_response(&framer.whole(&text, finish, usage));
    }
    // An error before the first piece is a plain error with its status; after it, an error
    // event ends the stream.
    let first = match responses.next().await {
        Some(Err(status)) => return Err(status.into()),
        first => first,
    };
    let mut out = VecDeque::new();
    if kind == Kind::Chat {
        // OpenAI's first chat chunk carries the role and empty content.
        out.push_back(sse(&framer.chunk("", None)));
    }
    let relay =
        Relay { model: r.model.clone(), caller, framer, responses: Some(responses), first, out, tokens: 0 };
    let events = futures::stream::unfold(relay, |mut relay| async move {
        let bytes = relay.next().await?;
        Some((Ok::<_, Infallible>(bytes), relay))
    });
    // The body owns the stream: a client that goes away drops it, which cancels the generation.
    let mut response = Response::new(Body::from_stream(events));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// Relays a generation's responses as OpenAI chunks.
struct Relay {
    model: String,
    caller: Option<tern_edge::Principal>,
    framer: Framer,
    /// `None` once the generation ended (dropped: nothing more runs).
    responses: Option<InferResponses>,
    first: Option<Result<pb::ModelInferResponse, tonic::Status>>,
    out: VecDeque<Bytes>,
    tokens: u64,
}

impl Relay {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.out.pop_front() {
                return Some(bytes);
            }
            let responses = self.responses.as_mut()?;
            let item = match self.first.take() {
                Some(item) => Some(item),
                None => responses.next().await,
            };
            match item.map(|r| r.map_err(OpenAiError::from).and_then(|r| piece(&r))) {
                Some(Ok(p)) => {
                    if let Err(e) = meter_tokens(&self.model, self.caller.as_ref(), p.tokens) {
                        self.fail(e);
                        continue;
                    }
                    self.tokens += p.tokens as u64;
                    if !p.last {
                        if !p.text.is_empty() {
                            self.out.push_back(sse(&self.framer.chunk(&p.text, None)));
                        }
                        continue;
                    }
                    self.responses = None;
                    match finish_reason(p.finish.as_deref().unwrap_or("stop")) {
                        Ok(finish) => {
                            self.out.push_back(sse(&self.framer.chunk(&p.text, Some(finish))));
                            if self.framer.include_usage {
                                let usage = Usage {
                                    prompt_tokens: p.prompt_tokens.unwrap_or(0),
                                    completion_tokens: self.tokens,
                                };
                                self.out.push_back(sse(&self.framer.usage_chunk(usage)));
                            }
                            self.out.push_back(Bytes::from_static(DONE));
                        }
                        Err(e) => self.fail(e),
                    }
                }
                Some(Err(e)) => self.fail(e),
                None => self.fail(OpenAiError::internal("the generation ended without a final response")),
            }
        }
    }

    /// An error event, then the end of the stream (the generation is dropped).
    fn fail(&mut self, e: OpenAiError) {
        self.responses = None;
        self.out.push_back(sse(&e.body()));
        self.out.push_back(Bytes::from_static(DONE));
    }
}

// === /v1/embeddings ===

/// A parsed `/v1/embeddings` body.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub inputs: Vec<String>,
    pub base64: bool,
    pub dimensions: Option<u64>,
}

pub fn parse_embeddings(body: &[u8]) -> Result<EmbeddingsRequest, OpenAiError> {
    let b = object(body)?;
    let model = model_field(&b)?;
    let token_arrays =
        || OpenAiError::invalid("input", "'input' as token ids is not supported: give strings");
    let inputs = match b.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(OpenAiError::invalid("input", "'input' must not be an empty list"));
        }
        Some(Value::Array(items)) => {
            if items.len() > MAX_EMBEDDING_INPUTS {
                return Err(OpenAiError::invalid(
                    "input",
                    format!("{} inputs are more than the limit of {MAX_EMBEDDING_INPUTS}", items.len()),
                ));
            }
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(_) | Value::Array(_) => Err(token_arrays()),
                    _ => Err(OpenAiError::invalid("input", "'input' must be a string or a list of strings")),
                })
                .collect::<Result<_, _>>()?
        }
        None | Some(Value::Null) => {
            return Err(OpenAiError::invalid("input", "you must provide an input parameter"));
        }
        Some(_) => {
            return Err(OpenAiError::invalid("input", "'input' must be a string or a list of strings"));
        }
    };
    let base64 = match b.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(v) if v == "float" => false,
        Some(v) if v == "base64" => true,
        Some(v) => {
            return Err(OpenAiError::invalid(
                "encoding_format",
                format!("'encoding_format' must be 'float' or 'base64', got {v}"),
            ));
        }
    };
    let dimensions = match b.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|&d| d > 0).ok_or_else(|| {
            OpenAiError::invalid("dimensions", format!("'dimensions' must be a positive integer, got {v}"))
        })?),
    };
    Ok(EmbeddingsRequest { model, inputs, base64, dimensions })
}

/// One ModelInfer request for `texts` (a batch of the `text` input).
fn embedding_request(model: &str, texts: &[String]) -> pb::ModelInferRequest {
    use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    pb::ModelInferRequest {
        model_name: model.to_owned(),
        inputs: vec![InferInputTensor {
            name: "text".into(),
            datatype: "BYTES".into(),
            shape: vec![texts.len() as i64, 1],
            ..Default::default()
        }],
        outputs: ["embedding", "token_count"]
            .into_iter()
            .map(|name| InferRequestedOutputTensor { name: name.into(), ..Default::default() })
            .collect(),
        raw_input_contents: vec![bytes_elements(texts.iter().map(String::as_bytes))],
        ..Default::default()
    }
}

/// The embeddings (`n` rows of `dimensions` floats, little-endian bytes) and token counts of
/// one ModelInfer answer.
fn embedding_rows(
    model: &str,
    response: &pb::ModelInferResponse,
    n: usize,
    dimensions: usize,
) -> Result<(Vec<Bytes>, u64), OpenAiError> {
    let raw = |name: &str| -> Result<Bytes, OpenAiError> {
        let i = response.outputs.iter().position(|o| o.name == name).ok_or_else(|| {
            OpenAiError::internal(format!("model '{model}' answered without output '{name}'"))
        })?;
        if let Some(raw) = response.raw_output_contents.get(i) {
            return Ok(raw.clone());
        }
        let contents = response.outputs[i].contents.as_ref();
        Ok(match name {
            "embedding" => contents
                .map(|c| c.fp32_contents.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>())
                .unwrap_or_default()
                .into(),
            _ => contents
                .map(|c| c.int64_contents.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>())
                .unwrap_or_default()
                .into(),
        })
    };
    let embedding = raw("embedding")?;
    let counts = raw("token_count")?;
    let row = dimensions * 4;
    if embedding.len() != n * row || counts.len() != n * 8 {
        return Err(OpenAiError::internal(format!(
            "model '{model}' answered {} embedding bytes and {} token_count bytes for {n} inputs of {dimensions} \
             dimensions",
            embedding.len(),
            counts.len()
        )));
    }
    let rows = (0..n).map(|i| embedding.slice(i * row..(i + 1) * row)).collect();
    let tokens = counts
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()).max(0) as u64)
        .sum();
    Ok((rows, tokens))
}

/// One `data` entry: floats, or their little-endian f32 bytes in base64 (as OpenAI sends).
pub fn embedding_entry(index: usize, row: &[u8], base64: bool) -> Value {
    let embedding = if base64 {
        Value::String(base64::engine::general_purpose::STANDARD.encode(row))
    } else {
        Value::Array(
            row.chunks_exact(4)
                .map(|c| {
                    let f = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    serde_json::Number::from_f64(f64::from(f)).map_or(Value::Null, Value::Number)
                })
                .collect(),
        )
    };
    json!({"object": "embedding", "index": index, "embedding": embedding})
}

async fn embeddings<T: Service>(
    s: &Shared<T>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, OpenAiError> {
    let caller = authorize(s, "ModelInfer", headers)?;
    let bytes = body::read(headers, body, s.max_body).await?;
    let r = parse_embeddings(&bytes)?;
    drop(bytes);
    let facts = facts(s, headers, &caller, &r.model).await?;
    let Some(e) = facts.embedding else {
        return Err(OpenAiError::invalid(
            "model",
            format!(
                "model '{}' is not an embedding model (one with max_batch_size > 0, input 'text' TYPE_STRING \
                 [1], outputs 'embedding' TYPE_FP32 [D] and 'token_count' TYPE_INT64 [1])",
                r.model
            ),
        ));
    };
    if let Some(d) = r.dimensions
        && d != e.dimensions as u64
    {
        return Err(OpenAiError::invalid(
            "dimensions",
            format!(
                "model '{}' gives {} dimensions; 'dimensions' {d} is not supported",
                r.model, e.dimensions
            ),
        ));
    }
    // Batches of at most max_batch_size, sent at once: the dynamic batcher merges them with
    // other clients' requests.
    let model = r.model.as_str();
    let calls = r.inputs.chunks(e.max_batch_size).map(|texts| {
        let request = grpc_request(embedding_request(model, texts), headers, caller.clone());
        let service = s.service.clone();
        async move {
            let response = service.model_infer(request).await.map_err(OpenAiError::from)?.into_inner();
            embedding_rows(model, &response, texts.len(), e.dimensions)
        }
    });
    let answers = futures::future::try_join_all(calls).await?;
    let mut data = Vec::with_capacity(r.inputs.len());
    let mut prompt_tokens = 0u64;
    for (rows, tokens) in answers {
        prompt_tokens += tokens;
        for row in rows {
            data.push(embedding_entry(data.len(), &row, r.base64));
        }
    }
    json_response(&json!({
        "object": "list",
        "data": data,
        "model": r.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_body(kind: Kind, body: &str) -> Result<GenRequest, OpenAiError> {
        parse_generate(kind, body.as_bytes())
    }

    #[test]
    fn completion_requests_map_openai_fields() {
        let r = parse_body(
            Kind::Completion,
            r#"{"model": "m", "prompt": ["Hi"], "max_tokens": 5, "temperature": 0.5, "top_p": 0.9,
                "seed": 7, "stop": "\n", "n": 1, "presence_penalty": 0, "user": "u", "logit_bias": null,
                "stream": true, "stream_options": {"include_usage": true}}"#,
        )
        .expect("parses");
        assert_eq!(r.model, "m");
        assert_eq!(r.prompt, "Hi");
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!((r.temperature, r.top_p, r.seed), (Some(0.5), Some(0.9), Some(7)));
        assert_eq!(r.stop, vec!["\n".to_string()]);
        assert!(r.stream && r.include_usage);
        // OpenAI's default max_tokens for completions.
        assert_eq!(
            parse_body(Kind::Completion, r#"{"model": "m", "prompt": "x"}"#).expect("ok").max_tokens,
            Some(16)
        );
        let chat = parse_body(
            Kind::Chat,
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}],
                                       "max_completion_tokens": 3, "max_tokens": 9}"#,
        )
        .expect("chat");
        assert_eq!(chat.max_tokens, Some(3));
        assert_eq!(
            parse_body(Kind::Chat, r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#)
                .expect("chat")
                .max_tokens,
            None
        );
    }

    #[test]
    fn bad_and_unsupported_fields_name_the_param() {
        let cases = [
            (Kind::Completion, r#"{"model": "m", "prompt": "x", "n": 2}"#, "n"),
            (Kind::Completion, r#"{"model": "m", "prompt": ["a", "b"]}"#, "prompt"),
            (Kind::Completion, r#"{"model": "m", "prompt": [1, 2]}"#, "prompt"),
            (Kind::Completion, r#"{"model": "m", "prompt": "x", "temperature": 3}"#, "temperature"),
            (Kind::Completion, r#"{"model": "m", "prompt": "x", "top_p": 0}"#, "top_p"),
            (Kind::Completion, r#"{"model": "m", "prompt": "x", "max_tokens": 0}"#, "max_tokens"),
            (Kind::Completion, r#"{"model": "m", "prompt": "x", "logprobs": 2}"#, "logprobs"),
            (Kind::Completion, r#"{"model": "m", "prompt": "x", "stop": [1]}"#, "stop"),
            (Kind::Completion, r#"{"model": "m", "prompt": "x", "stream_options": {}}"#, "stream_options"),
            (Kind::Completion, r#"{"prompt": "x"}"#, "model"),
            (Kind::Chat, r#"{"model": "m", "messages": []}"#, "messages"),
            (Kind::Chat, r#"{"model": "m", "messages": [{"role": "robot", "content": "x"}]}"#, "messages"),
            (
                Kind::Chat,
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}],
                             "tools": [{"type": "function"}]}"#,
                "tools",
            ),
            (
                Kind::Chat,
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}],
                             "frequency_penalty": 0.5}"#,
                "frequency_penalty",
            ),
        ];
        for (kind, body, param) in cases {
            let e = parse_body(kind, body).expect_err(body);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
            assert_eq!(e.kind, "invalid_request_error");
            assert!(e.message.contains(param), "{body}: {}", e.message);
        }
        let e = parse_body(Kind::Completion, "[1]").expect_err("not an object");
        assert_eq!(e.param, None);
    }

    #[test]
    fn message_content_parts_are_joined() {
        let r = parse_body(
            Kind::Chat,
            r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                {"type": "text", "text": "b"}]}]}"#,
        )
        .expect("parts");
        assert_eq!(r.messages, vec![json!({"role": "user", "content": "ab"})]);
        let e = parse_body(
            Kind::Chat,
            r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
        )
        .expect_err("image");
        assert!(e.message.contains("image_url"), "{}", e.message);
    }

    const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + \
                          message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt \
                          %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn chat_templates_render_like_transformers() {
        let messages =
            [json!({"role": "system", "content": "Be brief."}), json!({"role": "user", "content": "Hi"})];
        let text = render_chat("m", CHATML, "<s>", "</s>", &messages).expect("render");
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        // Python string methods, bos_token, trim_blocks / lstrip_blocks, raise_exception.
        let template = "{{ bos_token }}\n{% for m in messages %}\n  {% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}\n{{ m['content'].strip().upper() }}{% if m['content'].startswith(' ') %}!{% endif %}\n{% endfor %}";
        let out = render_chat("m", template, "<s>", "</s>", &[json!({"role": "user", "content": " hi "})])
            .expect("render");
        assert_eq!(out, "<s>\nHI!");
        let e = render_chat("m", template, "<s>", "</s>", &messages).expect_err("raise");
        assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some("messages")));
        assert!(e.message.contains("no system role") && e.message.contains("'m'"), "{}", e.message);
        let e = render_chat("llm", "{% for %}", "", "", &messages).expect_err("compile");
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(e.message.contains("model 'llm'"), "{}", e.message);
    }

    #[test]
    fn errors_have_openais_shape() {
        let e = OpenAiError::invalid("n", "bad n");
        assert_eq!(
            e.body(),
            json!({"error": {"message": "bad n", "type": "invalid_request_error", "param": "n", "code": null}})
        );
        let e = OpenAiError::from(tonic::Status::not_found("Request for unknown model: 'x' is not found"));
        assert_eq!(
            (e.status, e.code, e.param.as_deref()),
            (StatusCode::NOT_FOUND, Some("model_not_found"), Some("model"))
        );
        let e = OpenAiError::from(tonic::Status::resource_exhausted("KV budget"));
        assert_eq!((e.status, e.kind), (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"));
        let e = OpenAiError::from(tonic::Status::unauthenticated("no token"));
        assert_eq!((e.status, e.kind), (StatusCode::UNAUTHORIZED, "authentication_error"));
        let e = OpenAiError::from(tonic::Status::permission_denied("not yours"));
        assert_eq!((e.status, e.kind), (StatusCode::FORBIDDEN, "permission_error"));
        let e = OpenAiError::from(tonic::Status::internal("boom"));
        assert_eq!((e.status, e.kind), (StatusCode::INTERNAL_SERVER_ERROR, "server_error"));
    }

    #[test]
    fn sse_frames_and_chunks() {
        assert_eq!(&sse(&json!({"a": 1}))[..], b"data: {\"a\":1}\n\n");
        let mut f = Framer::new(Kind::Chat, "m", true);
        assert!(f.id.starts_with("chatcmpl-"));
        let first = f.chunk("", None);
        assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(first["usage"], Value::Null);
        assert_eq!(first["object"], "chat.completion.chunk");
        let next = f.chunk("hi", None);
        assert_eq!(next["choices"][0]["delta"], json!({"content": "hi"}));
        let last = f.chunk("", Some("length"));
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        let usage = f.usage_chunk(Usage { prompt_tokens: 3, completion_tokens: 2 });
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 5);
        let c = Framer::new(Kind::Completion, "m", false);
        assert!(c.id.starts_with("cmpl-"));
        let whole = c.whole("t", "stop", Usage::default());
        assert_eq!(whole["object"], "text_completion");
        assert_eq!(whole["choices"][0]["text"], "t");
        assert_ne!(response_id("x"), response_id("x"));
    }

    #[test]
    fn pieces_read_text_ids_and_usage() {
        let mut response = pb::ModelInferResponse::default();
        for (name, raw) in [
            ("text_output", bytes_elements([b"ab".as_slice()])),
            ("output_ids", Bytes::from_static(&[1, 0, 0, 0, 2, 0, 0, 0])),
            ("finish_reason", bytes_elements([b"length".as_slice()])),
        ] {
            response.outputs.push(pb::model_infer_response::InferOutputTensor {
                name: name.into(),
                ..Default::default()
            });
            response.raw_output_contents.push(raw);
        }
        response.parameters.insert(PROMPT_TOKENS.into(), parameter(ParameterChoice::Int64Param(7)));
        let p = piece(&response).expect("piece");
        assert_eq!(
            (p.text.as_str(), p.tokens, p.finish.as_deref(), p.prompt_tokens, p.last),
            ("ab", 2, Some("length"), Some(7), true)
        );
        assert_eq!(finish_reason("length"), Ok("length"));
        assert_eq!(finish_reason("stop"), Ok("stop"));
        assert_eq!(finish_reason("deadline").map_err(|e| e.status), Err(StatusCode::GATEWAY_TIMEOUT));
    }

    #[test]
    fn engine_requests_carry_inputs_and_parameters() {
        let r = parse_body(
            Kind::Completion,
            r#"{"model": "m", "prompt": "x", "stop": ["a", "bc"], "seed": 3, "temperature": 0}"#,
        )
        .expect("ok");
        let request = infer_request(&r, "x", Some(Duration::from_millis(1500)));
        assert_eq!(
            request.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["text_input", "stop"]
        );
        assert_eq!(request.inputs[1].shape, vec![2]);
        assert_eq!(&request.raw_input_contents[1][..], b"\x01\0\0\0a\x02\0\0\0bc");
        let p = |k: &str| request.parameters[k].parameter_choice.clone();
        assert_eq!(p("timeout"), Some(ParameterChoice::Int64Param(1_500_000)));
        assert_eq!(p("stream"), Some(ParameterChoice::BoolParam(true)));
        assert_eq!(p("seed"), Some(ParameterChoice::Uint64Param(3)));
        assert_eq!(p("max_tokens"), Some(ParameterChoice::Int64Param(16)));
        let mut h = HeaderMap::new();
        h.insert("x-stainless-read-timeout", HeaderValue::from_static("2.5"));
        assert_eq!(header_timeout(&h, false).expect("ok"), Some(Duration::from_millis(2500)));
        // A stream's read timeout is per chunk: not a deadline.
        assert_eq!(header_timeout(&h, true).expect("ok"), None);
        h.insert("x-request-timeout", HeaderValue::from_static("soon"));
        assert!(header_timeout(&h, true).is_err());
    }

    #[test]
    fn embeddings_requests_and_entries() {
        let r = parse_embeddings(
            br#"{"model": "e", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 4}"#,
        )
        .expect("ok");
        assert_eq!((r.inputs.len(), r.base64, r.dimensions), (2, true, Some(4)));
        for (body, param) in [
            (r#"{"model": "e", "input": [[1, 2]]}"#, "input"),
            (r#"{"model": "e", "input": [1, 2]}"#, "input"),
            (r#"{"model": "e", "input": []}"#, "input"),
            (r#"{"model": "e", "input": "x", "encoding_format": "int8"}"#, "encoding_format"),
            (r#"{"model": "e", "input": "x", "dimensions": 0}"#, "dimensions"),
        ] {
            let e = parse_embeddings(body.as_bytes()).expect_err(body);
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
        let row: Vec<u8> = [1.0f32, -0.5].iter().flat_map(|f| f.to_le_bytes()).collect();
        assert_eq!(embedding_entry(0, &row, false)["embedding"], json!([1.0, -0.5]));
        assert_eq!(embedding_entry(1, &row, true)["embedding"], json!("AACAPwAAAL8="));
        let mut config = pb::ModelConfig { max_batch_size: 8, ..Default::default() };
        config.input.push(pb::ModelInput {
            name: "text".into(),
            data_type: pb::DataType::TypeString as i32,
            dims: vec![1],
            ..Default::default()
        });
        config.output.push(pb::ModelOutput {
            name: "embedding".into(),
            data_type: pb::DataType::TypeFp32 as i32,
            dims: vec![384],
            ..Default::default()
        });
        config.output.push(pb::ModelOutput {
            name: "token_count".into(),
            data_type: pb::DataType::TypeInt64 as i32,
            dims: vec![1],
            ..Default::default()
        });
        assert_eq!(embedding_facts(&config), Some(EmbeddingFacts { max_batch_size: 8, dimensions: 384 }));
        config.max_batch_size = 0;
        assert_eq!(embedding_facts(&config), None);
    }
}
