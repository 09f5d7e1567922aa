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
//!
//! Layout: `error` (OpenAI's error shape), `models` (`/v1/models` and the cached model
//! facts), `request` (completion and chat bodies), `template` (chat templates),
//! `engine` (the engine request and its responses), `sse` (chunks and events),
//! `completions` (`/v1/completions`, `/v1/chat/completions`), `embeddings` (`/v1/embeddings`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::Value;

use crate::error::RestError;
use crate::routes::{Service, Shared};

mod completions;
mod embeddings;
mod engine;
mod error;
mod models;
mod request;
mod sse;
mod template;

pub use embeddings::{EmbeddingsRequest, embedding_entry, parse_embeddings};
pub use engine::{Piece, header_timeout, infer_request, piece};
pub use error::OpenAiError;
pub(crate) use models::FactsCache;
pub use models::{EmbeddingFacts, ModelFacts};
pub use request::{GenRequest, Kind, parse_generate};
pub use sse::{DONE, Framer, Usage, sse};
pub use template::{ChatTemplate, render_chat};

use completions::generate;
use embeddings::embeddings;
use models::models;

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

#[cfg(test)]
mod tests;
