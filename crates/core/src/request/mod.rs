//! Validation of a `ModelInferRequest` against what the model accepts, producing tensors that
//! share the request's buffers. Every refusal names the model, the tensor and what was wrong,
//! in Triton's wording where Triton clients depend on it.

use std::sync::Arc;

use bytes::Bytes;
use tern_proto::inference::{ModelInferRequest, infer_parameter::ParameterChoice};

use crate::codec::{self, CodecError};
use crate::{DataType, RequestError, Tensor};

/// One input or output of a loaded model, as its (completed) config describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct IoSpec {
    pub name: String,
    pub datatype: DataType,
    /// Shape without the batch dimension when the model batches; -1 matches any size.
    pub dims: Vec<i64>,
    /// The shape the model itself takes instead of `dims` (config `reshape`).
    pub reshape: Option<Vec<i64>>,
    /// An input the request may leave out.
    pub optional: bool,
    /// Class labels for the classification extension (outputs only).
    pub labels: Option<Arc<Vec<String>>>,
}

/// What a loaded model accepts and produces.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelIo {
    pub model: String,
    /// 0 when the model does not batch.
    pub max_batch_size: u32,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
}

/// An output the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    /// Triton's classification extension: return the top `k` classes instead of the tensor.
    pub class_count: Option<usize>,
}

/// A request that passed validation.
#[derive(Debug, Clone)]
pub struct ValidatedRequest {
    pub id: String,
    /// Rows in the request; 0 when the model does not batch.
    pub batch_size: u32,
    /// Inputs in the model's shape (after `reshape`), payloads shared with the request.
    pub inputs: Vec<Tensor>,
    /// Requested outputs in the order asked; when the request names none, every output the
    /// config lists, in the config's order. Never an output the config leaves out.
    pub outputs: Vec<RequestedOutput>,
    /// Triton's `priority` request parameter; 0 when absent (the model's default level).
    pub priority: u64,
    /// Triton's `timeout` request parameter (microseconds in the protocol).
    pub timeout: Option<std::time::Duration>,
}

fn shape_str(shape: &[i64]) -> String {
    let parts: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", parts.join(","))
}

fn id_prefix(id: &str) -> String {
    if id.is_empty() { "[request id: <id_unknown>] ".to_string() } else { format!("[request id: {id}] ") }
}

fn dims_match(expected: &[i64], got: &[i64]) -> bool {
    expected.len() == got.len() && expected.iter().zip(got).all(|(&e, &g)| e == -1 || e == g)
}

/// Element count of a client-given shape; `None` on a negative dimension or overflow.
pub fn element_count(shape: &[i64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &d| u64::try_from(d).ok().and_then(|d| acc.checked_mul(d)))
}

/// Validates `req` against `io`. Consumes the request so raw payloads move into the tensors
/// without copying.
pub fn validate_request(io: &ModelIo, req: ModelInferRequest) -> Result<ValidatedRequest, RequestError> {
    let model = &io.model;
    let id = req.id;
    let invalid = |m: String| RequestError::InvalidArgument(m);
    let uint_param = |key: &str| -> Result<Option<u64>, RequestError> {
        match req.parameters.get(key).and_then(|p| p.parameter_choice.as_ref()) {
            None => Ok(None),
            Some(ParameterChoice::Int64Param(v)) if *v >= 0 => Ok(Some(*v as u64)),
            Some(ParameterChoice::Uint64Param(v)) => Ok(Some(*v)),
            Some(other) => Err(invalid(format!(
                "{}request parameter '{key}' for model '{model}' must be a non-negative integer, got {other:?}",
                id_prefix(&id)
            ))),
        }
    };
    let priority = uint_param("priority")?.unwrap_or(0);
    let timeout = uint_param("timeout")?.map(std::time::Duration::from_micros);
    let mut raw = req.raw_input_contents;
    if raw.len() > req.inputs.len() {
        return Err(invalid(format!(
            "{}request has {} raw input contents but only {} inputs for model '{model}'; send one raw entry per input",
            id_prefix(&id),
            raw.len(),
            req.inputs.len()
        )));
    }
    let use_raw = !raw.is_empty();

    let batching = io.max_batch_size > 0;
    let mut batch_size: Option<u32> = None;
    let mut inputs: Vec<Tensor> = Vec::with_capacity(req.inputs.len());
    for (i, input) in req.inputs.into_iter().enumerate() {
        let Some(spec) = io.inputs.iter().find(|s| s.name == input.name) else {
            return Err(invalid(format!("unexpected inference input '{}' for model '{model}'", input.name)));
        };
        if inputs.iter().any(|t| t.name == input.name) {
            return Err(invalid(format!(
                "{}input '{}' was given more than once for model '{model}'",
                id_prefix(&id),
                input.name
            )));
        }
        let datatype = DataType::from_wire_name(&input.datatype).ok_or_else(|| {
            invalid(format!(
                "{}inference input '{}' has unknown datatype '{}' for model '{model}'",
                id_prefix(&id),
                input.name,
                input.datatype
            ))
        })?;
        if datatype != spec.datatype {
            return Err(invalid(format!(
                "{}inference input '{}' data-type is '{}', but model '{model}' expects '{}'",
                id_prefix(&id),
                input.name,
                datatype,
                spec.datatype
            )));
        }

        // Shape: [batch] + dims when batching.
        let shape = input.shape;
        let expected: Vec<i64> = if batching {
            std::iter::once(-1).chain(spec.dims.iter().copied()).collect()
        } else {
            spec.dims.clone()
        };
        let shape_error = || {
            let note = if batching {
                " NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be prepended to each input shape. If you want to specify the full shape including the batch dim in your input dims config, try setting max_batch_size to zero. See the model configuration docs for more info on max_batch_size."
            } else {
                ""
            };
            invalid(format!(
                "{}unexpected shape for input '{}' for model '{model}'. Expected {}, got {}.{note}",
                id_prefix(&id),
                input.name,
                shape_str(&expected),
                shape_str(&shape)
            ))
        };
        if shape.iter().any(|&d| d < 0) || !dims_match(&expected, &shape) {
            return Err(shape_error());
        }
        if batching {
            let rows = shape[0];
            if rows < 1 || rows > i64::from(io.max_batch_size) {
                return Err(invalid(format!(
                    "{}inference request batch-size must be <= {} for '{model}'",
                    id_prefix(&id),
                    io.max_batch_size
                )));
            }
            let rows = rows as u32;
            match batch_size {
                None => batch_size = Some(rows),
                Some(b) if b != rows => {
                    return Err(invalid(format!(
                        "{}input '{}' batch size {rows} does not match other inputs' batch size {b} for model '{model}'",
                        id_prefix(&id),
                        input.name
                    )));
                }
                Some(_) => {}
            }
        }
        let elements = element_count(&shape).ok_or_else(shape_error)?;

        // Payload: raw bytes, or typed contents converted to raw.
        let contents_given = input.contents.as_ref().is_some_and(|c| c != &Default::default());
        let data: Bytes = if use_raw {
            if contents_given {
                return Err(invalid(format!(
                    "{}contents field must not be specified when using raw_input_contents for '{}' for model '{model}'",
                    id_prefix(&id),
                    input.name
                )));
            }
            match raw.get_mut(i) {
                Some(data) => std::mem::take(data),
                None => {
                    return Err(invalid(format!(
                        "{}unable to find data for input tensor '{}' for model '{model}' in request.",
                        id_prefix(&id),
                        input.name
                    )));
                }
            }
        } else {
            let contents = input.contents.unwrap_or_default();
            let (data, n) = codec::typed_to_raw(datatype, &contents).map_err(|e| {
                invalid(format!("{}input '{}' for model '{model}': {e}", id_prefix(&id), input.name))
            })?;
            if n as u64 != elements {
                return Err(invalid(format!(
                    "{}unexpected number of elements for input '{}' for model '{model}': shape {} needs {elements}, contents has {n}",
                    id_prefix(&id),
                    input.name,
                    shape_str(&shape)
                )));
            }
            data
        };
        match datatype.element_size() {
            Some(size) => {
                let want = elements.checked_mul(size as u64);
                if want != Some(data.len() as u64) {
                    return Err(invalid(format!(
                        "{}input byte size mismatch for input '{}' for model '{model}'. Expected {}, got {}",
                        id_prefix(&id),
                        input.name,
                        want.map_or_else(|| "more than 2^64".to_string(), |w| w.to_string()),
                        data.len()
                    )));
                }
            }
            None => {
                let n = codec::count_bytes_elements(&data).map_err(|e: CodecError| {
                    invalid(format!("{}input '{}' for model '{model}': {e}", id_prefix(&id), input.name))
                })?;
                if n as u64 != elements {
                    return Err(invalid(format!(
                        "{}expected {elements} string elements for inference input '{}' for model '{model}', got {n}",
                        id_prefix(&id),
                        input.name
                    )));
                }
            }
        }

        // What the model itself sees: reshape replaces the non-batch dims.
        let model_shape = match &spec.reshape {
            Some(r) if batching => std::iter::once(shape[0]).chain(r.iter().copied()).collect(),
            Some(r) => r.clone(),
            None => shape,
        };
        inputs.push(Tensor { name: input.name, datatype, shape: model_shape, data });
    }

    let missing: Vec<&str> = io
        .inputs
        .iter()
        .filter(|s| !s.optional && !inputs.iter().any(|t| t.name == s.name))
        .map(|s| s.name.as_str())
        .collect();
    if !missing.is_empty() {
        let got: Vec<String> = inputs.iter().map(|t| format!("'{}'", t.name)).collect();
        let missing: Vec<String> = missing.iter().map(|n| format!("'{n}'")).collect();
        return Err(invalid(format!(
            "{}expected {} inputs but got {} inputs for model '{model}'. Got input(s) [{}], but missing required input(s) [{}]. Please provide all required input(s).",
            id_prefix(&id),
            io.inputs.iter().filter(|s| !s.optional).count(),
            inputs.len(),
            got.join(","),
            missing.join(",")
        )));
    }

    let mut outputs: Vec<RequestedOutput> = Vec::with_capacity(req.outputs.len());
    for out in req.outputs {
        let Some(spec) = io.outputs.iter().find(|s| s.name == out.name) else {
            return Err(invalid(format!("unexpected inference output '{}' for model '{model}'", out.name)));
        };
        if outputs.iter().any(|o| o.name == out.name) {
            return Err(invalid(format!(
                "{}output '{}' was requested more than once for model '{model}'",
                id_prefix(&id),
                out.name
            )));
        }
        let class_count = match out.parameters.get("classification").and_then(|p| p.parameter_choice.as_ref())
        {
            None => None,
            Some(ParameterChoice::Int64Param(k)) if *k > 0 => Some(*k as usize),
            Some(ParameterChoice::Uint64Param(k)) if *k > 0 => Some(*k as usize),
            Some(other) => {
                return Err(invalid(format!(
                    "{}output '{}' for model '{model}': parameter 'classification' must be a positive integer, got {other:?}",
                    id_prefix(&id),
                    out.name
                )));
            }
        };
        if class_count.is_some() && spec.datatype == DataType::Bytes {
            return Err(invalid(format!(
                "{}output '{}' for model '{model}' is BYTES and cannot be classified",
                id_prefix(&id),
                out.name
            )));
        }
        outputs.push(RequestedOutput { name: out.name, class_count });
    }
    if outputs.is_empty() {
        // As Triton (core src/infer_request.cc, InferenceRequest::Normalize): no requested
        // output means every output of the model *config*. Outputs the model has but the config
        // leaves out are never computed nor returned.
        outputs =
            io.outputs.iter().map(|s| RequestedOutput { name: s.name.clone(), class_count: None }).collect();
    }

    Ok(ValidatedRequest { id, batch_size: batch_size.unwrap_or(0), inputs, outputs, priority, timeout })
}

/// Triton's classification extension: replaces `tensor` by its top `k` entries per batch row
/// (per tensor when not batched) as BYTES `"score:index"` or `"score:index:label"`.
pub fn classify(
    tensor: &Tensor,
    k: usize,
    batched: bool,
    labels: Option<&[String]>,
) -> Result<Tensor, String> {
    let values = to_f64(tensor)?;
    let rows = if batched { tensor.shape.first().copied().unwrap_or(1).max(1) as usize } else { 1 };
    let per_row = values.len().checked_div(rows).unwrap_or(0);
    let k = k.min(per_row);
    let mut strings = Vec::with_capacity(rows * k);
    for row in values.chunks(per_row.max(1)).take(rows) {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        // Highest score first; equal scores keep index order.
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &i in idx.iter().take(k) {
            let score = if tensor.datatype == DataType::Fp64 {
                row[i].to_string()
            } else {
                (row[i] as f32).to_string()
            };
            strings.push(match labels.and_then(|l| l.get(i)) {
                Some(label) => format!("{score}:{i}:{label}"),
                None => format!("{score}:{i}"),
            });
        }
    }
    let shape = if batched { vec![rows as i64, k as i64] } else { vec![k as i64] };
    Ok(Tensor {
        name: tensor.name.clone(),
        datatype: DataType::Bytes,
        shape,
        data: codec::encode_bytes_elements(&strings),
    })
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>, String> {
    let d = t.data.as_ref();
    macro_rules! conv {
        ($ty:ty, $n:expr) => {
            d.chunks_exact($n).map(|c| <$ty>::from_le_bytes(c.try_into().unwrap_or([0; $n])) as f64).collect()
        };
    }
    Ok(match t.datatype {
        DataType::Bool | DataType::Uint8 => d.iter().map(|&b| f64::from(b)).collect(),
        DataType::Int8 => d.iter().map(|&b| f64::from(b as i8)).collect(),
        DataType::Uint16 => conv!(u16, 2),
        DataType::Int16 => conv!(i16, 2),
        DataType::Uint32 => conv!(u32, 4),
        DataType::Int32 => conv!(i32, 4),
        DataType::Uint64 => conv!(u64, 8),
        DataType::Int64 => conv!(i64, 8),
        DataType::Fp32 => conv!(f32, 4),
        DataType::Fp64 => conv!(f64, 8),
        DataType::Fp16 => {
            d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()).collect()
        }
        DataType::Bf16 => {
            d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect()
        }
        DataType::Bytes => return Err(format!("output '{}' is BYTES and cannot be classified", t.name)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::inference::{
        InferParameter, InferTensorContents,
        model_infer_request::{InferInputTensor, InferRequestedOutputTensor},
    };

    fn spec(name: &str, datatype: DataType, dims: &[i64]) -> IoSpec {
        IoSpec {
            name: name.into(),
            datatype,
            dims: dims.to_vec(),
            reshape: None,
            optional: false,
            labels: None,
        }
    }

    fn tiny_add() -> ModelIo {
        ModelIo {
            model: "tiny_add".into(),
            max_batch_size: 64,
            inputs: vec![spec("INPUT0", DataType::Fp32, &[16]), spec("INPUT1", DataType::Fp32, &[16])],
            outputs: vec![spec("OUTPUT0", DataType::Fp32, &[16])],
        }
    }

    fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            ..Default::default()
        }
    }

    fn raw_request(rows: i64) -> ModelInferRequest {
        let payload = Bytes::from(vec![0u8; rows as usize * 16 * 4]);
        ModelInferRequest {
            model_name: "tiny_add".into(),
            inputs: vec![input("INPUT0", "FP32", &[rows, 16]), input("INPUT1", "FP32", &[rows, 16])],
            raw_input_contents: vec![payload.clone(), payload],
            ..Default::default()
        }
    }

    fn invalid(r: Result<ValidatedRequest, RequestError>) -> String {
        match r {
            Err(RequestError::InvalidArgument(m)) => m,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn valid_raw_request_shares_the_payload() {
        let req = raw_request(2);
        let ptr = req.raw_input_contents[0].as_ptr();
        let v = validate_request(&tiny_add(), req).expect("valid");
        assert_eq!(v.batch_size, 2);
        assert_eq!(v.inputs[0].shape, vec![2, 16]);
        assert_eq!(v.inputs[0].data.as_ptr(), ptr, "no copy of raw input");
        // None named: the config's outputs, and only those.
        let names: Vec<&str> = v.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, vec!["OUTPUT0"]);
    }

    #[test]
    fn triton_messages_for_common_mistakes() {
        let mut req = raw_request(1);
        req.inputs[0].name = "NOPE".into();
        assert_eq!(
            invalid(validate_request(&tiny_add(), req)),
            "unexpected inference input 'NOPE' for model 'tiny_add'"
        );

        let mut req = raw_request(1);
        req.inputs[0].shape = vec![2, 8];
        let m = invalid(validate_request(&tiny_add(), req));
        assert!(
            m.starts_with("[request id: <id_unknown>] unexpected shape for input 'INPUT0' for model 'tiny_add'. Expected [-1,16], got [2,8]. NOTE:"),
            "{m}"
        );

        let mut req = raw_request(65);
        req.id = "r7".into();
        assert_eq!(
            invalid(validate_request(&tiny_add(), req)),
            "[request id: r7] inference request batch-size must be <= 64 for 'tiny_add'"
        );

        let mut req = raw_request(1);
        req.inputs[1].datatype = "INT32".into();
        let m = invalid(validate_request(&tiny_add(), req));
        assert!(
            m.contains("inference input 'INPUT1' data-type is 'INT32', but model 'tiny_add' expects 'FP32'"),
            "{m}"
        );
    }

    #[test]
    fn payload_and_structure_errors() {
        let mut req = raw_request(1);
        req.raw_input_contents[1] = Bytes::from(vec![0u8; 60]);
        let m = invalid(validate_request(&tiny_add(), req));
        assert!(
            m.contains(
                "input byte size mismatch for input 'INPUT1' for model 'tiny_add'. Expected 64, got 60"
            ),
            "{m}"
        );

        let mut req = raw_request(1);
        req.inputs.pop();
        req.raw_input_contents.pop();
        let m = invalid(validate_request(&tiny_add(), req));
        assert!(m.contains("missing required input(s) ['INPUT1']"), "{m}");

        let mut req = raw_request(1);
        req.inputs[1].name = "INPUT0".into();
        assert!(invalid(validate_request(&tiny_add(), req)).contains("more than once"));

        let mut req = raw_request(1);
        req.inputs[0].contents =
            Some(InferTensorContents { fp32_contents: vec![1.0; 16], ..Default::default() });
        assert!(invalid(validate_request(&tiny_add(), req)).contains("contents field must not be specified"));

        let mut req = raw_request(1);
        req.raw_input_contents.pop();
        assert!(
            invalid(validate_request(&tiny_add(), req))
                .contains("unable to find data for input tensor 'INPUT1' for model 'tiny_add' in request.")
        );

        let mut req = raw_request(1);
        req.raw_input_contents.push(Bytes::new());
        assert!(
            invalid(validate_request(&tiny_add(), req)).contains("3 raw input contents but only 2 inputs")
        );

        let mut req = raw_request(1);
        req.outputs.push(InferRequestedOutputTensor { name: "NOPE".into(), ..Default::default() });
        assert_eq!(
            invalid(validate_request(&tiny_add(), req)),
            "unexpected inference output 'NOPE' for model 'tiny_add'"
        );

        let mut req = raw_request(1);
        req.inputs[0].shape = vec![1, -16];
        assert!(invalid(validate_request(&tiny_add(), req)).contains("unexpected shape"));

        let mut req = raw_request(1);
        req.inputs[0].datatype = "FLOAT".into();
        assert!(invalid(validate_request(&tiny_add(), req)).contains("unknown datatype 'FLOAT'"));
    }

    #[test]
    fn typed_contents_are_accepted_and_counted() {
        let mut req = raw_request(1);
        req.raw_input_contents.clear();
        for i in &mut req.inputs {
            i.contents = Some(InferTensorContents { fp32_contents: vec![2.0; 16], ..Default::default() });
        }
        let v = validate_request(&tiny_add(), req.clone()).expect("typed is valid");
        assert_eq!(v.inputs[0].data.len(), 64);
        assert_eq!(&v.inputs[0].data[..4], &2.0f32.to_le_bytes());
        req.inputs[0].contents =
            Some(InferTensorContents { fp32_contents: vec![2.0; 15], ..Default::default() });
        assert!(invalid(validate_request(&tiny_add(), req)).contains("needs 16, contents has 15"));
    }

    fn strings_model() -> ModelIo {
        ModelIo {
            model: "s".into(),
            max_batch_size: 0,
            inputs: vec![spec("IN", DataType::Bytes, &[-1])],
            outputs: vec![spec("OUT", DataType::Bytes, &[-1])],
        }
    }

    #[test]
    fn bytes_inputs_are_checked_for_framing_and_count() {
        let good = codec::encode_bytes_elements(["a", "", "ü"]);
        let req = |data: Bytes, n: i64| ModelInferRequest {
            model_name: "s".into(),
            inputs: vec![input("IN", "BYTES", &[n])],
            raw_input_contents: vec![data],
            ..Default::default()
        };
        let v = validate_request(&strings_model(), req(good.clone(), 3)).expect("valid");
        assert_eq!(v.batch_size, 0);
        assert!(
            invalid(validate_request(&strings_model(), req(good.clone(), 2)))
                .contains("expected 2 string elements")
        );
        let truncated = good.slice(..good.len() - 1);
        assert!(invalid(validate_request(&strings_model(), req(truncated, 3))).contains("claims"));
        assert!(
            invalid(validate_request(&strings_model(), req(Bytes::from_static(&[1, 0]), 1)))
                .contains("length prefix")
        );
    }

    #[test]
    fn huge_shapes_are_refused_without_allocating() {
        let mut req = raw_request(1);
        req.inputs[0].shape = vec![1, 16];
        let io = ModelIo {
            inputs: vec![spec("INPUT0", DataType::Fp32, &[-1]), spec("INPUT1", DataType::Fp32, &[16])],
            ..tiny_add()
        };
        req.inputs[0].shape = vec![1, 1 << 62];
        assert!(invalid(validate_request(&io, req)).contains("byte size mismatch"));
    }

    #[test]
    fn reshape_changes_the_shape_the_model_sees() {
        let mut io = tiny_add();
        io.inputs[0].reshape = Some(vec![4, 4]);
        let v = validate_request(&io, raw_request(3)).expect("valid");
        assert_eq!(v.inputs[0].shape, vec![3, 4, 4]);
        assert_eq!(v.inputs[1].shape, vec![3, 16]);
    }

    #[test]
    fn classification_parameter() {
        let mut req = raw_request(1);
        let mut out = InferRequestedOutputTensor { name: "OUTPUT0".into(), ..Default::default() };
        out.parameters.insert(
            "classification".into(),
            InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(3)) },
        );
        req.outputs.push(out.clone());
        let v = validate_request(&tiny_add(), req).expect("valid");
        assert_eq!(v.outputs[0].class_count, Some(3));
        let mut req = raw_request(1);
        out.parameters.insert(
            "classification".into(),
            InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(0)) },
        );
        req.outputs.push(out);
        assert!(invalid(validate_request(&tiny_add(), req)).contains("positive integer"));
    }

    #[test]
    fn classify_top_k_per_row_with_labels() {
        let values: Vec<f32> = vec![0.1, 0.7, 0.2, 0.5, 0.5, 0.0];
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t =
            Tensor { name: "p".into(), datatype: DataType::Fp32, shape: vec![2, 3], data: Bytes::from(data) };
        let labels: Vec<String> = vec!["cat".into(), "dog".into(), "eel".into()];
        let c = classify(&t, 2, true, Some(&labels)).expect("classify");
        assert_eq!(c.shape, vec![2, 2]);
        assert_eq!(c.datatype, DataType::Bytes);
        let got: Vec<String> = codec::bytes_elements(&c.data)
            .map(|e| String::from_utf8(e.expect("framed").to_vec()).expect("utf8"))
            .collect();
        assert_eq!(got, vec!["0.7:1:dog", "0.2:2:eel", "0.5:0:cat", "0.5:1:dog"]);
        let c = classify(&t, 10, false, None).expect("classify");
        assert_eq!(c.shape, vec![6]);
        let first = codec::bytes_elements(&c.data).next().expect("one").expect("framed");
        assert_eq!(first, b"0.7:1");
    }
}
