//! The infer route's bodies: an HTTP request (a JSON header, then binary tensor data when
//! `Inference-Header-Content-Length` says where the header ends) to a gRPC
//! `ModelInferRequest`, and a `ModelInferResponse` back to JSON plus binary data. Binary inputs
//! become `raw_input_contents` as slices of the request body and binary outputs are sent from
//! `raw_output_contents` as they are: no tensor byte is copied. As Triton's
//! (server src/http_server.cc, `EVRequestToTritonRequest` and `FinalizeResponse`).

use std::collections::HashMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};
use tern_proto::inference::{self as pb, infer_parameter::ParameterChoice};

use crate::error::RestError;
use crate::tensor::{DType, json_to_raw, raw_to_json};

#[derive(Debug, Deserialize)]
struct RequestJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Debug, Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// How each output is returned: binary data, JSON `data`, or neither (written into a client
/// shared-memory region).
#[derive(Debug, Default)]
pub struct OutputKinds {
    default_binary: bool,
    binary: HashMap<String, bool>,
    in_shared_memory: std::collections::HashSet<String>,
}

impl OutputKinds {
    fn is_binary(&self, name: &str) -> bool {
        self.binary.get(name).copied().unwrap_or(self.default_binary)
    }
}

/// Parses an infer request for `model` (version `version`, empty for the server's choice).
/// `body` is the whole (decompressed) body and `header_len` the length of its JSON part; the
/// rest is binary tensor data, in input order. `limit` bounds every tensor converted from JSON.
pub fn parse_request(
    model: &str,
    version: &str,
    body: Bytes,
    header_len: usize,
    limit: usize,
) -> Result<(pb::ModelInferRequest, OutputKinds), RestError> {
    let json = body.slice(..header_len);
    let mut binary = body.slice(header_len..);
    // Malformed JSON is the client's error: 400 (Triton answers 500 here).
    let request: RequestJson = serde_json::from_slice(&json).map_err(|e| {
        RestError::bad_request(format!("malformed inference request JSON for model '{model}': {e}"))
    })?;

    let mut kinds = OutputKinds::default();
    let mut parameters = HashMap::new();
    for (key, value) in request.parameters.unwrap_or_default() {
        match key.as_str() {
            "binary_data_output" => {
                kinds.default_binary = value.as_bool().ok_or_else(|| {
                    RestError::bad_request("Unable to parse 'binary_data_output': want true or false")
                })?;
            }
            k if k.starts_with("triton_") => {
                return Err(RestError::bad_request(
                    "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified.",
                ));
            }
            _ => {
                let p = infer_parameter(&format!("request parameter '{key}'"), &value)?;
                parameters.insert(key, p);
            }
        }
    }

    let mut inputs = Vec::with_capacity(request.inputs.len());
    let mut raw = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let name = &input.name;
        let dtype = DType::parse(&input.datatype).ok_or_else(|| {
            RestError::bad_request(format!(
                "input '{name}' of model '{model}': 'datatype' {:?} is not a KServe v2 datatype",
                input.datatype
            ))
        })?;
        let elements = element_count(model, name, &input.shape)?;
        let mut binary_size = None;
        let mut in_shared_memory = false;
        let mut input_params = HashMap::new();
        for (key, value) in input.parameters.unwrap_or_default() {
            match key.as_str() {
                "binary_data_size" => {
                    let size = value.as_u64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| {
                        RestError::bad_request(format!(
                            "input '{name}' of model '{model}': Unable to parse 'binary_data_size': want a byte count, got {value}"
                        ))
                    })?;
                    binary_size = Some(size);
                }
                _ => {
                    // shared_memory_region / _offset / _byte_size go on as parameters: the
                    // service resolves them (tern_core::shm), as for gRPC.
                    in_shared_memory |= key == "shared_memory_region";
                    let p = infer_parameter(&format!("input '{name}' parameter '{key}'"), &value)?;
                    input_params.insert(key, p);
                }
            }
        }
        if in_shared_memory {
            // Triton's `ValidateInputContentType`: one of data, binary data or a region.
            let set: Vec<&str> =
                [(input.data.is_some(), " 'data'"), (binary_size.is_some(), " 'binary_data_size'")]
                    .into_iter()
                    .filter_map(|(given, what)| given.then_some(what))
                    .collect();
            if !set.is_empty() {
                return Err(RestError::bad_request(format!(
                    "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', \
                     'shared_memory_region' in 'parameters'. But set{} 'shared_memory_region' (input '{name}' of model '{model}')",
                    set.concat()
                )));
            }
            // No raw entry: raw contents count the inputs sent in them, as over gRPC.
            inputs.push(pb::model_infer_request::InferInputTensor {
                name: input.name,
                datatype: input.datatype,
                shape: input.shape,
                parameters: input_params,
                contents: None,
            });
            continue;
        }
        let contents = match (binary_size, &input.data) {
            (Some(_), Some(_)) => {
                return Err(RestError::bad_request(format!(
                    "input '{name}' of model '{model}' has both 'data' and 'binary_data_size'; give one"
                )));
            }
            (Some(size), None) => {
                if header_len == body.len() && size > 0 {
                    return Err(RestError::bad_request(
                        "must specify valid 'Inference-Header-Content-Length' in request header and 'binary_data_size' \
                         when passing inputs in binary data format",
                    ));
                }
                if binary.len() < size {
                    return Err(RestError::bad_request(format!(
                        "unexpected size for input '{name}', expecting {} additional bytes for model '{model}' \
                         (its 'binary_data_size' is {size}; the body holds {} more)",
                        size - binary.len(),
                        binary.len()
                    )));
                }
                // A slice of the body: the tensor bytes are not copied.
                binary.split_to(size)
            }
            (None, Some(data)) => Bytes::from(
                json_to_raw(name, dtype, data, elements, limit)
                    .map_err(|e| RestError::bad_request(format!("{e} (model '{model}')")))?,
            ),
            (None, None) => {
                return Err(RestError::bad_request(format!(
                    "input '{name}' of model '{model}' has neither 'data' nor 'binary_data_size'"
                )));
            }
        };
        raw.push(contents);
        inputs.push(pb::model_infer_request::InferInputTensor {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            parameters: input_params,
            contents: None,
        });
    }
    if !binary.is_empty() {
        return Err(RestError::bad_request(format!(
            "unexpected additional input data for model '{model}': {} bytes after the last input's binary data",
            binary.len()
        )));
    }

    let mut outputs = Vec::new();
    for output in request.outputs.unwrap_or_default() {
        let mut output_params = HashMap::new();
        for (key, value) in output.parameters.unwrap_or_default() {
            match key.as_str() {
                "binary_data" => {
                    let b = value.as_bool().ok_or_else(|| {
                        RestError::bad_request(format!(
                            "output '{}' of model '{model}': Unable to parse 'binary_data': want true or false",
                            output.name
                        ))
                    })?;
                    kinds.binary.insert(output.name.clone(), b);
                }
                _ => {
                    let p = infer_parameter(&format!("output '{}' parameter '{key}'", output.name), &value)?;
                    output_params.insert(key, p);
                }
            }
        }
        if output_params.contains_key("shared_memory_region") {
            // Triton's `ValidateOutputParameter`.
            let refuse = |other: &str| {
                RestError::bad_request(format!(
                    "Output can't set both 'shared_memory_region' and '{other}' (output '{}' of model '{model}')",
                    output.name
                ))
            };
            if output_params.contains_key("classification") {
                return Err(refuse("classification"));
            }
            if kinds.binary.get(&output.name) == Some(&true) {
                return Err(refuse("binary_data"));
            }
            kinds.in_shared_memory.insert(output.name.clone());
        }
        outputs.push(pb::model_infer_request::InferRequestedOutputTensor {
            name: output.name,
            parameters: output_params,
        });
    }

    let request = pb::ModelInferRequest {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id: request.id.unwrap_or_default(),
        parameters,
        inputs,
        outputs,
        raw_input_contents: raw,
    };
    Ok((request, kinds))
}

/// The element count of `shape`, refusing negative dimensions and overflow.
fn element_count(model: &str, name: &str, shape: &[i64]) -> Result<usize, RestError> {
    shape.iter().try_fold(1usize, |n, &d| {
        let d = usize::try_from(d).map_err(|_| {
            RestError::bad_request(format!(
                "input '{name}' of model '{model}': 'shape' {shape:?} contains one or more invalid dimensions"
            ))
        })?;
        n.checked_mul(d).ok_or_else(|| {
            RestError::bad_request(format!("input '{name}' of model '{model}': 'shape' {shape:?} overflows"))
        })
    })
}

/// A JSON parameter as the gRPC protocol carries it.
fn infer_parameter(what: &str, value: &Value) -> Result<pb::InferParameter, RestError> {
    let choice = match value {
        Value::Bool(b) => ParameterChoice::BoolParam(*b),
        Value::String(s) => ParameterChoice::StringParam(s.clone()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                ParameterChoice::Int64Param(i)
            } else if let Some(u) = n.as_u64() {
                ParameterChoice::Uint64Param(u)
            } else {
                ParameterChoice::DoubleParam(n.as_f64().unwrap_or_default())
            }
        }
        other => {
            return Err(RestError::bad_request(format!(
                "{what} must be a boolean, number or string, got {}",
                other.to_string().chars().take(40).collect::<String>()
            )));
        }
    };
    Ok(pb::InferParameter { parameter_choice: Some(choice) })
}

/// A gRPC parameter as JSON.
pub fn parameter_json(p: &pb::InferParameter) -> Value {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Value::Bool(*b),
        Some(ParameterChoice::Int64Param(i)) => Value::from(*i),
        Some(ParameterChoice::Uint64Param(u)) => Value::from(*u),
        Some(ParameterChoice::DoubleParam(d)) => Value::from(*d),
        Some(ParameterChoice::StringParam(s)) => Value::String(s.clone()),
        None => Value::Null,
    }
}

/// The response body's parts: the JSON header, then the binary outputs in order.
pub struct ResponseBody {
    pub header: Vec<u8>,
    pub binary: Vec<Bytes>,
}

/// Builds the HTTP response of `response` with outputs returned as `kinds` asks.
pub fn build_response(
    response: pb::ModelInferResponse,
    kinds: &OutputKinds,
) -> Result<ResponseBody, RestError> {
    let model = &response.model_name;
    if response.raw_output_contents.len() != response.outputs.len() {
        return Err(RestError::internal(format!(
            "model '{model}' answered {} outputs with {} raw contents",
            response.outputs.len(),
            response.raw_output_contents.len()
        )));
    }
    let mut head = Map::new();
    if !response.id.is_empty() {
        head.insert("id".into(), Value::String(response.id.clone()));
    }
    head.insert("model_name".into(), Value::String(response.model_name.clone()));
    head.insert("model_version".into(), Value::String(response.model_version.clone()));
    if !response.parameters.is_empty() {
        let params = response.parameters.iter().map(|(k, v)| (k.clone(), parameter_json(v))).collect();
        head.insert("parameters".into(), Value::Object(params));
    }
    let mut binary = Vec::new();
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for (output, raw) in response.outputs.into_iter().zip(response.raw_output_contents) {
        let mut o = Map::new();
        let mut params: Map<String, Value> =
            output.parameters.iter().map(|(k, v)| (k.clone(), parameter_json(v))).collect();
        if kinds.in_shared_memory.contains(&output.name) {
            // Its data is in the client's region: name, datatype and shape only, as Triton.
        } else if kinds.is_binary(&output.name) {
            params.insert("binary_data_size".into(), Value::from(raw.len()));
            if !raw.is_empty() {
                binary.push(raw);
            }
        } else {
            let dtype = DType::parse(&output.datatype).ok_or_else(|| {
                RestError::internal(format!(
                    "output '{}' has unknown datatype '{}'",
                    output.name, output.datatype
                ))
            })?;
            let elements =
                output.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?));
            let elements = elements.ok_or_else(|| {
                RestError::internal(format!("output '{}' has an invalid shape", output.name))
            })?;
            let data = raw_to_json(&output.name, dtype, &raw, elements).map_err(RestError::bad_request)?;
            o.insert("data".into(), Value::Array(data));
        }
        o.insert("name".into(), Value::String(output.name));
        o.insert("datatype".into(), Value::String(output.datatype));
        o.insert("shape".into(), Value::from(output.shape));
        if !params.is_empty() {
            o.insert("parameters".into(), Value::Object(params));
        }
        outputs.push(Value::Object(o));
    }
    head.insert("outputs".into(), Value::Array(outputs));
    let header = serde_json::to_vec(&Value::Object(head)).map_err(|e| RestError::internal(e.to_string()))?;
    Ok(ResponseBody { header, binary })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str, binary: &[u8]) -> (Bytes, usize) {
        let mut b = json.as_bytes().to_vec();
        b.extend_from_slice(binary);
        (Bytes::from(b), json.len())
    }

    #[test]
    fn binary_inputs_are_slices_of_the_body() {
        let json = r#"{"inputs":[{"name":"A","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},
            {"name":"B","shape":[1],"datatype":"INT32","data":[7]}],"outputs":[{"name":"C","parameters":{"binary_data":true,"classification":2}}]}"#;
        let (b, n) = body(json, &[1, 0, 0, 0, 2, 0, 0, 0]);
        let start = b.as_ptr() as usize;
        let (req, kinds) = parse_request("m", "", b, n, 1 << 20).expect("parse");
        assert_eq!(req.raw_input_contents[0].as_ptr() as usize, start + n, "no copy");
        assert_eq!(&req.raw_input_contents[1][..], &7i32.to_le_bytes());
        assert!(kinds.is_binary("C"));
        assert!(req.outputs[0].parameters.contains_key("classification"));
        assert!(!req.outputs[0].parameters.contains_key("binary_data"));
    }

    #[test]
    fn truncated_and_extra_binary_data_name_the_input() {
        let json =
            r#"{"inputs":[{"name":"A","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}]}"#;
        let (b, n) = body(json, &[1, 0, 0]);
        let e = parse_request("m", "", b, n, 1 << 20).expect_err("short");
        assert!(
            e.message.contains("input 'A'") && e.message.contains("expecting 5 additional bytes"),
            "{e:?}"
        );
        let (b, n) = body(json, &[0; 9]);
        let e = parse_request("m", "", b, n, 1 << 20).expect_err("long");
        assert!(e.message.contains("unexpected additional input data"), "{e:?}");
    }

    #[test]
    fn malformed_json_and_bad_fields_are_400_naming_the_field() {
        let (b, n) = body(r#"{"inputs":[{"name":"A""#, b"");
        let e = parse_request("m", "", b, n, 1 << 20).expect_err("malformed");
        assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
        let (b, n) = body(r#"{"inputs":[{"name":"A","shape":[1],"datatype":"FP99","data":[1]}]}"#, b"");
        let e = parse_request("m", "", b, n, 1 << 20).expect_err("datatype");
        assert!(e.message.contains("'datatype'") && e.message.contains("FP99"), "{e:?}");
        let (b, n) = body(r#"{"inputs":[{"name":"A","datatype":"FP32","data":[1]}]}"#, b"");
        let e = parse_request("m", "", b, n, 1 << 20).expect_err("shape");
        assert!(e.message.contains("shape"), "{e:?}");
    }

    #[test]
    fn shared_memory_tensors_take_no_raw_entry_and_one_source_only() {
        let json = r#"{"inputs":[{"name":"A","shape":[2],"datatype":"INT32","parameters":{"shared_memory_region":"r","shared_memory_byte_size":8}},
            {"name":"B","shape":[1],"datatype":"INT32","data":[7]}],"outputs":[{"name":"C","parameters":{"shared_memory_region":"o","shared_memory_byte_size":8}}]}"#;
        let (b, n) = body(json, b"");
        let (req, kinds) = parse_request("m", "", b, n, 1 << 20).expect("parses");
        assert_eq!(req.raw_input_contents.len(), 1, "only B's data is raw");
        assert!(req.inputs[0].parameters.contains_key("shared_memory_region"));
        assert!(kinds.in_shared_memory.contains("C"));
        let both = r#"{"inputs":[{"name":"A","shape":[1],"datatype":"INT32","data":[1],"parameters":{"shared_memory_region":"r","shared_memory_byte_size":4}}]}"#;
        let (b, n) = body(both, b"");
        let e = parse_request("m", "", b, n, 1 << 20).err().map(|e| e.message);
        assert!(e.is_some_and(|m| m.contains("But set 'data' 'shared_memory_region'")));
    }

    #[test]
    fn response_mixes_json_and_binary_outputs() {
        let response = pb::ModelInferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: "req-1".into(),
            outputs: vec![
                pb::model_infer_response::InferOutputTensor {
                    name: "J".into(),
                    datatype: "INT32".into(),
                    shape: vec![2],
                    ..Default::default()
                },
                pb::model_infer_response::InferOutputTensor {
                    name: "B".into(),
                    datatype: "INT32".into(),
                    shape: vec![1],
                    ..Default::default()
                },
            ],
            raw_output_contents: vec![
                Bytes::from_static(&[1, 0, 0, 0, 2, 0, 0, 0]),
                Bytes::from_static(&[9, 0, 0, 0]),
            ],
            ..Default::default()
        };
        let kinds = OutputKinds { binary: [("B".to_string(), true)].into(), ..Default::default() };
        let body = build_response(response, &kinds).expect("build");
        let head: Value = serde_json::from_slice(&body.header).expect("json");
        assert_eq!(head["id"], "req-1");
        assert_eq!(head["outputs"][0]["data"], serde_json::json!([1, 2]));
        assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], 4);
        assert_eq!(body.binary, vec![Bytes::from_static(&[9, 0, 0, 0])]);
    }
}
