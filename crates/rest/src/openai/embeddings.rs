//! `/v1/embeddings`: texts batched to ModelInfer calls of an embedding model.

use axum::body::Body;
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Value, json};
use tern_proto::inference as pb;

use super::engine::bytes_elements;
use super::models::facts;
use super::request::{model_field, object};
use super::{MAX_EMBEDDING_INPUTS, OpenAiError, json_response};
use crate::body;
use crate::routes::{Service, Shared, authorize, grpc_request};

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

pub(super) async fn embeddings<T: Service>(
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
