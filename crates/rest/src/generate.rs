//! Triton's generate extension (server docs/protocol/extension_generate.md; src/http_server.cc,
//! `HandleGenerate`, `ConvertGenerateRequest`, `ExactMappingInput`, `FinalizeResponse`,
//! `ExactMappingOutput`): a flat JSON object in, flat JSON objects out.
//!
//! Request: each top-level field, and each field of the optional `parameters` object, that
//! names an input of the model (its ModelMetadata) becomes that input, a scalar or a flat
//! array of the input's datatype shaped by the model's dims; every other field becomes a
//! request parameter (string, integer, boolean or number); `id` is the request id.
//! Response: `id` (when set), `model_name`, `model_version`, the response's parameters and each
//! output as a field of its own, an output of one element as a scalar, otherwise a flat array.
//! `/generate` answers one such object; `/generate_stream` one Server-Sent Event
//! (`data: {...}\n\n`) per response.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Map, Value};
use tern_proto::inference::{self as pb, infer_parameter::ParameterChoice};

use crate::error::{RestError, error_json};
use crate::infer::parameter_json;
use crate::tensor::{DType, json_to_raw, raw_to_json};

/// The response parameter that marks a decoupled model's last response on a gRPC stream
/// (Triton's gRPC front end adds it; the generate extension does not show it).
pub const FINAL_RESPONSE: &str = "triton_final_response";

/// The input a generative model reads to choose one response per token (true) or one response
/// with the whole text (false). `/generate` sets it to false and `/generate_stream` to true
/// when the client does not give it (Tern's generative models; see the README).
pub const STREAM_INPUT: &str = "stream";

/// Triton's error when `/generate` gets other than one response (`SendChunkResponse`).
pub const NOT_ONE_RESPONSE: &str = "generate expects model to produce exactly 1 response, use generate stream for \
                                    model that generates various number of responses";

/// A JSON object's fields in document order, duplicates kept (Triton refuses an input given
/// twice, and parses fields in order); `None` for a JSON value that is not an object. The
/// top-level `parameters` object is kept as an array of `[key, value]` pairs, for the same
/// reasons; other values are plain.
struct Fields(Option<Vec<(String, Value)>>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit(bool);
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = if self.0 && key == "parameters" {
                        match map.next_value::<Fields>()?.0 {
                            Some(pairs) => Value::Array(
                                pairs
                                    .into_iter()
                                    .map(|(k, v)| Value::Array(vec![Value::String(k), v]))
                                    .collect(),
                            ),
                            // Not an object: refused by the caller, whatever it was.
                            None => Value::Null,
                        }
                    } else {
                        map.next_value::<Value>()?
                    };
                    // Bounded by the body's size: every field took bytes of it.
                    fields.push((key, value));
                }
                Ok(Fields(Some(fields)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Fields, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Fields(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Fields, E> {
                Ok(Fields(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Fields, E> {
                Ok(Fields(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Fields, E> {
                Ok(Fields(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Fields, E> {
                Ok(Fields(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Fields, E> {
                Ok(Fields(None))
            }
            fn visit_unit<E>(self) -> Result<Fields, E> {
                Ok(Fields(None))
            }
        }
        d.deserialize_any(Visit(true))
    }
}

/// An input of the model as its metadata describes it.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

impl InputSpec {
    pub fn from_metadata(metadata: &pb::ModelMetadataResponse) -> Vec<InputSpec> {
        metadata
            .inputs
            .iter()
            .map(|t| InputSpec { name: t.name.clone(), datatype: t.datatype.clone(), shape: t.shape.clone() })
            .collect()
    }
}

/// Builds the ModelInferRequest of a generate body for `model` (`version` "" for the server's
/// choice). `streaming`: the route is `/generate_stream`. `limit` bounds the bytes of all
/// inputs together.
pub fn parse_request(
    model: &str,
    version: &str,
    body: &[u8],
    inputs: &[InputSpec],
    streaming: bool,
    limit: usize,
) -> Result<pb::ModelInferRequest, RestError> {
    // An empty body is an empty request (Triton's `EVRequestToJsonAllowsEmpty`).
    let fields = if body.iter().all(u8::is_ascii_whitespace) {
        Vec::new()
    } else {
        match serde_json::from_slice::<Fields>(body) {
            Ok(Fields(Some(fields))) => fields,
            Ok(Fields(None)) => {
                return Err(RestError::bad_request(format!(
                    "the generate request for model '{model}' must be a JSON object"
                )));
            }
            Err(e) => {
                return Err(RestError::bad_request(format!(
                    "malformed generate request JSON for model '{model}': {e}"
                )));
            }
        }
    };
    let mut request = pb::ModelInferRequest {
        model_name: model.to_string(),
        model_version: version.to_string(),
        ..Default::default()
    };
    let mut used = 0usize;
    let mut seen_parameters = false;
    for (key, value) in &fields {
        match key.as_str() {
            "id" if !request.id.is_empty() => {
                return Err(RestError::bad_request("'id' is given twice in the generate request"));
            }
            // Triton also passes `id` on as a request parameter; the request id is enough.
            "id" => {
                request.id = value
                    .as_str()
                    .ok_or_else(|| RestError::bad_request("Unable to parse 'id': want a string"))?
                    .to_string();
            }
            "parameters" => {
                if std::mem::replace(&mut seen_parameters, true) {
                    return Err(RestError::bad_request(
                        "'parameters' is given twice in the generate request",
                    ));
                }
                if inputs.iter().any(|i| i.name == "parameters") {
                    return Err(RestError::bad_request(format!(
                        "Keyword 'parameters' for nested schema also given as input tensor name (model '{model}')"
                    )));
                }
                let Value::Array(nested) = value else {
                    return Err(RestError::bad_request("Expected JSON object for keyword: 'parameters'"));
                };
                for (key, value) in nested
                    .iter()
                    .filter_map(|kv| kv.as_array())
                    .filter_map(|kv| Some((kv.first()?.as_str()?, kv.get(1)?)))
                {
                    map_field(model, key, value, inputs, &mut request, &mut used, limit, true)?;
                }
            }
            _ => map_field(model, key, value, inputs, &mut request, &mut used, limit, false)?,
        }
    }
    // A generative model's `stream` input follows the route unless the client set it.
    if let Some(spec) = inputs.iter().find(|i| i.name == STREAM_INPUT && i.datatype == "BOOL")
        && !request.inputs.iter().any(|i| i.name == STREAM_INPUT)
    {
        let value = Value::Bool(streaming);
        map_field(
            model,
            STREAM_INPUT,
            &value,
            std::slice::from_ref(spec),
            &mut request,
            &mut used,
            limit,
            false,
        )?;
    }
    Ok(request)
}

/// One field of the request: an input when `inputs` names it, otherwise a request parameter.
#[allow(clippy::too_many_arguments)]
fn map_field(
    model: &str,
    key: &str,
    value: &Value,
    inputs: &[InputSpec],
    request: &mut pb::ModelInferRequest,
    used: &mut usize,
    limit: usize,
    nested: bool,
) -> Result<(), RestError> {
    let Some(spec) = inputs.iter().find(|i| i.name == key) else {
        if key.starts_with("triton_") {
            return Err(RestError::bad_request(
                "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified.",
            ));
        }
        let choice = match value {
            Value::String(s) => ParameterChoice::StringParam(s.clone()),
            Value::Bool(b) => ParameterChoice::BoolParam(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => ParameterChoice::Int64Param(i),
                None => ParameterChoice::DoubleParam(n.as_f64().unwrap_or_default()),
            },
            _ => {
                return Err(RestError::bad_request(format!(
                    "parameter '{key}' has invalid type. It should be either 'int', 'bool', or 'string'. (model '{model}'{})",
                    if nested { ", in 'parameters'" } else { "" }
                )));
            }
        };
        if request
            .parameters
            .insert(key.to_string(), pb::InferParameter { parameter_choice: Some(choice) })
            .is_some()
        {
            return Err(RestError::bad_request(format!(
                "parameter '{key}' is given twice in the generate request for model '{model}'"
            )));
        }
        return Ok(());
    };
    if request.inputs.iter().any(|i| i.name == key) {
        return Err(RestError::bad_request(format!(
            "input '{key}' already exists in request: given twice in the generate request for model '{model}'"
        )));
    }
    let raw = input_tensor(model, spec, value, limit.saturating_sub(*used))?;
    *used += raw.1.len();
    request.inputs.push(pb::model_infer_request::InferInputTensor {
        name: spec.name.clone(),
        datatype: spec.datatype.clone(),
        shape: raw.0,
        parameters: HashMap::new(),
        contents: None,
    });
    request.raw_input_contents.push(Bytes::from(raw.1));
    Ok(())
}

/// A scalar or flat array as input `spec`: its shape (the model's dims with the element count
/// placed as Triton places it) and raw bytes (at most `limit`).
fn input_tensor(
    model: &str,
    spec: &InputSpec,
    value: &Value,
    limit: usize,
) -> Result<(Vec<i64>, Vec<u8>), RestError> {
    let name = &spec.name;
    let dtype = DType::parse(&spec.datatype).ok_or_else(|| {
        RestError::bad_request(format!(
            "input '{name}' has unsupported datatype {} (model '{model}')",
            spec.datatype
        ))
    })?;
    let elements = match value {
        Value::Array(items) => {
            if items.iter().any(|v| v.is_array() || v.is_object()) {
                return Err(RestError::bad_request(format!(
                    "input '{name}' of model '{model}': the generate extension takes a scalar or a flat array"
                )));
            }
            items.len()
        }
        Value::Object(_) | Value::Null => {
            return Err(RestError::bad_request(format!(
                "input '{name}' of model '{model}': want a scalar or a flat array of {}, got {}",
                spec.datatype,
                if value.is_null() { "null" } else { "an object" }
            )));
        }
        _ => 1,
    };
    let shape = place_elements(&spec.shape, elements).ok_or_else(|| {
        RestError::bad_request(format!(
            "The schema can not convert input '{name}' to tensor with proper shape: {elements} element(s) for the \
             model's shape {:?} (model '{model}')",
            spec.shape
        ))
    })?;
    let raw = json_to_raw(name, dtype, value, elements, limit).map_err(|e| {
        if e.contains("over the server's limit") {
            RestError::bad_request(format!(
                "{e}: the generate request's inputs exceed the maximum allowed input size of {limit} bytes (model '{model}')"
            ))
        } else {
            RestError::bad_request(format!("{e} (model '{model}')"))
        }
    })?;
    if raw.len() > limit {
        return Err(RestError::bad_request(format!(
            "input '{name}' of model '{model}': the generate request's inputs exceed the maximum allowed input size"
        )));
    }
    Ok((shape, raw))
}

/// The shape of `elements` values for an input of dims `dims`, as Triton's `ExactMappingInput`
/// places them: fixed dims must divide the count, the innermost variable dim (-1) takes what
/// remains, other variable dims are 1. `None` when the count does not fit.
pub fn place_elements(dims: &[i64], elements: usize) -> Option<Vec<i64>> {
    let mut left = elements as u64;
    for &d in dims.iter().rev() {
        if d >= 0 {
            let d = d as u64;
            if d == 0 {
                if left != 0 {
                    return None;
                }
                continue;
            }
            if !left.is_multiple_of(d) {
                return None;
            }
            left /= d;
        }
    }
    let mut shape = dims.to_vec();
    for d in shape.iter_mut().rev() {
        if *d < 0 {
            *d = i64::try_from(left).ok()?;
            left = 1;
        }
    }
    (left == 1 || (elements == 0 && left == 0)).then_some(shape)
}

/// True for a response that only closes a decoupled request (no outputs, marked final): it is
/// not written, as Triton writes nothing for a flags-only final callback.
pub fn is_flags_only(response: &pb::ModelInferResponse) -> bool {
    response.outputs.is_empty()
        && matches!(
            response.parameters.get(FINAL_RESPONSE).and_then(|p| p.parameter_choice.as_ref()),
            Some(ParameterChoice::BoolParam(true))
        )
}

/// One response as the generate extension's JSON object.
pub fn response_json(response: &pb::ModelInferResponse) -> Result<Map<String, Value>, RestError> {
    let model = &response.model_name;
    let mut out = Map::new();
    if !response.id.is_empty() {
        out.insert("id".into(), Value::String(response.id.clone()));
    }
    out.insert("model_name".into(), Value::String(response.model_name.clone()));
    out.insert("model_version".into(), Value::String(response.model_version.clone()));
    for (key, param) in &response.parameters {
        if key == FINAL_RESPONSE {
            continue;
        }
        out.insert(key.clone(), parameter_json(param));
    }
    if response.raw_output_contents.len() != response.outputs.len() {
        return Err(RestError::internal(format!(
            "model '{model}' answered {} outputs with {} raw contents",
            response.outputs.len(),
            response.raw_output_contents.len()
        )));
    }
    for (output, raw) in response.outputs.iter().zip(&response.raw_output_contents) {
        let dtype = DType::parse(&output.datatype).ok_or_else(|| {
            RestError::internal(format!(
                "output '{}' has unknown datatype '{}'",
                output.name, output.datatype
            ))
        })?;
        let elements = output
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
            .ok_or_else(|| RestError::internal(format!("output '{}' has an invalid shape", output.name)))?;
        let mut data = raw_to_json(&output.name, dtype, raw, elements).map_err(RestError::internal)?;
        // One element is written as a scalar (Triton strips the array).
        let value = if data.len() == 1 { data.pop().unwrap_or(Value::Null) } else { Value::Array(data) };
        out.insert(output.name.clone(), value);
    }
    Ok(out)
}

/// One Server-Sent Event carrying `json`.
pub fn sse_event(json: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(json.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(json);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// The event of a response, or of the error that converting it met.
pub fn response_event(response: &pb::ModelInferResponse) -> Bytes {
    match response_json(response)
        .and_then(|m| serde_json::to_vec(&Value::Object(m)).map_err(|e| RestError::internal(e.to_string())))
    {
        Ok(json) => sse_event(&json),
        Err(e) => error_event(&e.message),
    }
}

/// Whether a request's first error came from the model while it ran, rather than from the checks
/// before inference (unknown model or version, bad or missing inputs, authorization, the server
/// shutting down), which Triton answers before a stream begins. Through a relay only the code is
/// known, so the code decides: the checks' codes are INVALID_ARGUMENT, NOT_FOUND,
/// UNAUTHENTICATED, PERMISSION_DENIED, UNAVAILABLE and UNIMPLEMENTED; a refusal by the engine
/// (RESOURCE_EXHAUSTED), a failure (INTERNAL, UNKNOWN) or a deadline came from inference.
pub fn failed_in_inference(code: tonic::Code) -> bool {
    use tonic::Code as C;
    !matches!(
        code,
        C::InvalidArgument
            | C::NotFound
            | C::Unauthenticated
            | C::PermissionDenied
            | C::Unavailable
            | C::Unimplemented
    )
}

/// An error in the middle of a stream: an event holding `{"error": message}`, as Triton writes
/// it (`AddErrorJson`); the HTTP status was sent with the first event.
pub fn error_event(message: &str) -> Bytes {
    sse_event(&error_json(message))
}

#[cfg(test)]
mod tests;
