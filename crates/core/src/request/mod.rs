//! Validation of a `ModelInferRequest` against what the model accepts, producing tensors that
//! share the request's buffers. Every refusal names the model, the tensor and what was wrong,
//! in Triton's wording where Triton clients depend on it.

use std::sync::Arc;

use bytes::Bytes;
use tern_proto::inference::{ModelInferRequest, infer_parameter::ParameterChoice};

use crate::codec::{self, CodecError};
use crate::{DataType, RequestError, Tensor};

mod classify;
pub use classify::{ClassifyError, classify};

/// One input or output of a loaded model, as its (completed) config describes it (Triton's
/// `ModelInput`/`ModelOutput`). Not a [`TensorSpec`](crate::TensorSpec), which is what the
/// model file declares: `dims` here leave out the batch dimension and may be reshaped.
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
    /// BYTES elements must be UTF-8 (from the model's [`TensorSpec`](crate::TensorSpec)):
    /// checked per request here, so one bad request never fails the batch it would join.
    pub utf8: bool,
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
    /// Triton's `sequence_id`, `sequence_start` and `sequence_end` request parameters.
    pub sequence: SequenceParams,
}

/// A sequence's correlation ID (Triton's `InferenceRequest::SequenceId`): an unsigned integer
/// or a string; 0 and "" mean "none".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CorrelationId {
    Uint(u64),
    Str(String),
}

impl CorrelationId {
    /// Whether the request names a sequence (Triton's `SequenceId::InSequence`).
    pub fn in_sequence(&self) -> bool {
        match self {
            CorrelationId::Uint(v) => *v != 0,
            CorrelationId::Str(s) => !s.is_empty(),
        }
    }
}

impl Default for CorrelationId {
    fn default() -> CorrelationId {
        CorrelationId::Uint(0)
    }
}

impl std::fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorrelationId::Uint(v) => write!(f, "{v}"),
            CorrelationId::Str(s) => f.write_str(s),
        }
    }
}

/// The sequence parameters of one request; all default when it sends none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SequenceParams {
    pub id: CorrelationId,
    pub start: bool,
    pub end: bool,
}

/// Reads `sequence_id` (int64, uint64 or string, as Triton's gRPC and HTTP front ends accept
/// it), `sequence_start` and `sequence_end` (bool).
fn sequence_params(
    params: &std::collections::HashMap<String, tern_proto::inference::InferParameter>,
    model: &str,
    id: &str,
) -> Result<SequenceParams, RequestError> {
    let choice = |key: &str| params.get(key).and_then(|p| p.parameter_choice.as_ref());
    let invalid = |key: &str, expected: &str| {
        RequestError::InvalidArgument(format!(
            "{}invalid value type for '{key}' parameter for model '{model}', expected {expected}",
            id_prefix(id)
        ))
    };
    let sequence_id = match choice("sequence_id") {
        None => CorrelationId::default(),
        // A negative int64 is its two's-complement uint64, as Triton stores it.
        Some(ParameterChoice::Int64Param(v)) => CorrelationId::Uint(*v as u64),
        Some(ParameterChoice::Uint64Param(v)) => CorrelationId::Uint(*v),
        Some(ParameterChoice::StringParam(s)) => CorrelationId::Str(s.clone()),
        Some(_) => return Err(invalid("sequence_id", "int64_param or string_param")),
    };
    let flag = |key: &str| match choice(key) {
        None => Ok(false),
        Some(ParameterChoice::BoolParam(b)) => Ok(*b),
        Some(_) => Err(invalid(key, "bool_param")),
    };
    Ok(SequenceParams { id: sequence_id, start: flag("sequence_start")?, end: flag("sequence_end")? })
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

/// The first BYTES element of `data` that is not UTF-8, with its index. `data` was already
/// counted, so its framing is sound.
fn check_utf8(data: &[u8]) -> Result<(), (usize, std::str::Utf8Error)> {
    for (index, element) in codec::bytes_elements(data).enumerate() {
        let Ok(element) = element else { return Ok(()) };
        std::str::from_utf8(element).map_err(|e| (index, e))?;
    }
    Ok(())
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
    let sequence = sequence_params(&req.parameters, model, &id)?;
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
        let shape_error = || {
            let expected: Vec<i64> = if batching {
                std::iter::once(-1).chain(spec.dims.iter().copied()).collect()
            } else {
                spec.dims.clone()
            };
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
        // The batch dimension (any size when batching) is checked below.
        let dims = if batching { shape.get(1..) } else { Some(&shape[..]) };
        if shape.iter().any(|&d| d < 0) || !dims.is_some_and(|dims| dims_match(&spec.dims, dims)) {
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
                if spec.utf8 {
                    check_utf8(&data).map_err(|(index, e)| {
                        invalid(format!(
                            "{}input '{}' element {index} for model '{model}' is not valid UTF-8: {e}",
                            id_prefix(&id),
                            input.name
                        ))
                    })?;
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

    Ok(ValidatedRequest {
        id,
        batch_size: batch_size.unwrap_or(0),
        inputs,
        outputs,
        priority,
        timeout,
        sequence,
    })
}

#[cfg(test)]
mod tests;
