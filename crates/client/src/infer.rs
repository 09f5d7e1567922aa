//! A request ([`InferRequest`]) and its answer ([`InferResult`]) in the protocol's terms, and
//! their conversion to and from the generated messages.

use std::collections::HashMap;

use bytes::Bytes;
use tern_core::DataType;
use tern_core::codec;
use tern_proto::inference::infer_parameter::ParameterChoice;
use tern_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use tern_proto::inference::{self as pb, InferParameter};

use crate::{ClientError, InputTensor, OutputTensor};

/// One inference request: model, optional version and id, inputs, the outputs wanted (all when
/// none are named) and request parameters.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    model: String,
    version: String,
    id: String,
    inputs: Vec<InputTensor>,
    outputs: Vec<String>,
    parameters: HashMap<String, InferParameter>,
}

impl InferRequest {
    pub fn new(model: impl Into<String>) -> Self {
        InferRequest { model: model.into(), ..Default::default() }
    }

    /// A version of the model (the server's version policy picks when none is given).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// An id the response echoes (and a stream's responses are matched by).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    pub fn input(mut self, tensor: InputTensor) -> Self {
        self.inputs.push(tensor);
        self
    }

    /// Asks for this output (once any is named, only the named ones come back).
    pub fn output(mut self, name: impl Into<String>) -> Self {
        self.outputs.push(name.into());
        self
    }

    /// A request parameter (`priority`, `timeout`, a sampling parameter, ...).
    pub fn parameter(mut self, name: impl Into<String>, value: ParameterChoice) -> Self {
        self.parameters.insert(name.into(), InferParameter { parameter_choice: Some(value) });
        self
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn inputs(&self) -> &[InputTensor] {
        &self.inputs
    }

    /// The message sent: every input's data in `raw_input_contents` (as Triton's clients send
    /// it; no copy of the tensor bytes).
    pub fn into_proto(self) -> pb::ModelInferRequest {
        let mut inputs = Vec::with_capacity(self.inputs.len());
        let mut raw = Vec::with_capacity(self.inputs.len());
        for tensor in self.inputs {
            let (name, datatype, shape, data) = tensor.into_parts();
            inputs.push(InferInputTensor {
                name,
                datatype: datatype.wire_name().to_owned(),
                shape,
                ..Default::default()
            });
            raw.push(data);
        }
        pb::ModelInferRequest {
            model_name: self.model,
            model_version: self.version,
            id: self.id,
            parameters: self.parameters,
            inputs,
            outputs: self
                .outputs
                .into_iter()
                .map(|name| InferRequestedOutputTensor { name, ..Default::default() })
                .collect(),
            raw_input_contents: raw,
        }
    }
}

/// The answer to one request.
#[derive(Debug, Clone, Default)]
pub struct InferResult {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<OutputTensor>,
    pub parameters: HashMap<String, InferParameter>,
}

impl InferResult {
    /// The output called `name`.
    pub fn output(&self, name: &str) -> Result<&OutputTensor, ClientError> {
        self.outputs.iter().find(|o| o.name() == name).ok_or_else(|| {
            ClientError::Response(format!(
                "no output '{name}' in the response of model '{}'",
                self.model_name
            ))
        })
    }

    /// A response parameter.
    pub fn parameter(&self, name: &str) -> Option<&ParameterChoice> {
        self.parameters.get(name).and_then(|p| p.parameter_choice.as_ref())
    }

    /// An integer response parameter (`prompt_tokens`, `completion_tokens`, ...).
    pub fn int_parameter(&self, name: &str) -> Option<i64> {
        match self.parameter(name)? {
            ParameterChoice::Int64Param(v) => Some(*v),
            ParameterChoice::Uint64Param(v) => i64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// Whether this is the last response to its request: Triton's `triton_final_response`
    /// parameter on streamed responses (decoupled models send several), true when absent.
    pub fn is_final(&self) -> bool {
        !matches!(self.parameter("triton_final_response"), Some(ParameterChoice::BoolParam(false)))
    }

    /// From the message: outputs in `raw_output_contents` (one per output, in order), or in
    /// typed `contents` from servers that send those.
    pub fn from_proto(response: pb::ModelInferResponse) -> Result<Self, ClientError> {
        let pb::ModelInferResponse {
            model_name,
            model_version,
            id,
            parameters,
            outputs,
            raw_output_contents,
        } = response;
        if !raw_output_contents.is_empty() && raw_output_contents.len() != outputs.len() {
            return Err(ClientError::Response(format!(
                "{} outputs but {} raw_output_contents",
                outputs.len(),
                raw_output_contents.len()
            )));
        }
        let mut raw = raw_output_contents.into_iter();
        let mut tensors = Vec::with_capacity(outputs.len());
        for output in outputs {
            let datatype = DataType::from_wire_name(&output.datatype).ok_or_else(|| {
                ClientError::Response(format!("output '{}' has datatype '{}'", output.name, output.datatype))
            })?;
            let data = match (raw.next(), &output.contents) {
                (Some(data), _) => data,
                (None, Some(contents)) => {
                    codec::typed_to_raw(datatype, contents)
                        .map_err(|e| ClientError::Response(format!("output '{}': {e}", output.name)))?
                        .0
                }
                (None, None) => Bytes::new(),
            };
            tensors.push(OutputTensor::new(output.name, datatype, output.shape, data)?);
        }
        Ok(InferResult { model_name, model_version, id, outputs: tensors, parameters })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::inference::model_infer_response::InferOutputTensor;

    #[test]
    fn requests_carry_every_input_in_raw_contents_in_order() {
        let a = InputTensor::new("A", &[2], &[1.0f32, 2.0]).unwrap_or_else(|e| panic!("{e}"));
        let s = InputTensor::bytes("S", &[1], &["hi"]).unwrap_or_else(|e| panic!("{e}"));
        let req = InferRequest::new("m")
            .version("2")
            .id("r1")
            .input(a.clone())
            .input(s.clone())
            .output("OUT")
            .parameter("priority", ParameterChoice::Int64Param(1))
            .into_proto();
        assert_eq!((req.model_name.as_str(), req.model_version.as_str(), req.id.as_str()), ("m", "2", "r1"));
        assert_eq!(req.inputs.iter().map(|i| i.datatype.as_str()).collect::<Vec<_>>(), ["FP32", "BYTES"]);
        assert_eq!(req.raw_input_contents, vec![a.data().clone(), s.data().clone()]);
        assert!(req.inputs.iter().all(|i| i.contents.is_none()));
        assert_eq!(req.outputs[0].name, "OUT");
        assert!(req.parameters.contains_key("priority"));
    }

    #[test]
    fn responses_read_raw_or_typed_contents() {
        let out = |name: &str, contents| InferOutputTensor {
            name: name.into(),
            datatype: "INT32".into(),
            shape: vec![2],
            contents,
            ..Default::default()
        };
        let raw = pb::ModelInferResponse {
            model_name: "m".into(),
            outputs: vec![out("Y", None)],
            raw_output_contents: vec![Bytes::from(vec![1, 0, 0, 0, 2, 0, 0, 0])],
            ..Default::default()
        };
        let r = InferResult::from_proto(raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.output("Y").and_then(|o| o.to_vec::<i32>()).ok(), Some(vec![1, 2]));
        assert!(r.is_final());
        let e = r.output("Z").expect_err("no Z");
        assert_eq!(e.to_string(), "unexpected response: no output 'Z' in the response of model 'm'");

        let typed = pb::ModelInferResponse {
            outputs: vec![out(
                "Y",
                Some(pb::InferTensorContents { int_contents: vec![3, 4], ..Default::default() }),
            )],
            ..Default::default()
        };
        let r = InferResult::from_proto(typed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.outputs[0].to_vec::<i32>().ok(), Some(vec![3, 4]));

        let mismatched = pb::ModelInferResponse {
            outputs: vec![out("Y", None), out("Z", None)],
            raw_output_contents: vec![Bytes::new()],
            ..Default::default()
        };
        assert!(InferResult::from_proto(mismatched).is_err());
    }
}
