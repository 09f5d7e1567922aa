//! The engine side of a generation: the request sent through the generate stream, and what
//! each of its responses adds.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tern_proto::inference::{self as pb, infer_parameter::ParameterChoice};

use super::{COMPLETION_TOKENS, GenRequest, MAX_TIMEOUT, OpenAiError, PROMPT_TOKENS};
use crate::error::RestError;
use crate::generate::FINAL_RESPONSE;

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

pub(super) fn parameter(choice: ParameterChoice) -> pb::InferParameter {
    pb::InferParameter { parameter_choice: Some(choice) }
}

/// Triton's BYTES element encoding: a little-endian u32 length before each element.
pub(super) fn bytes_elements<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
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
pub(super) fn first_element(raw: &[u8]) -> Result<String, OpenAiError> {
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
pub(super) fn finish_reason(engine: &str) -> Result<&'static str, OpenAiError> {
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
