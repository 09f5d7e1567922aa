//! Inference messages as bytes: the router reads only the head of a ModelInferRequest (model,
//! version, id, parameters) and forwards the message it received, tensors untouched.
//!
//! tonic's codecs are typed; [`RawCodec`] is the identity codec (`Bytes` in, `Bytes` out).
//! Decoding takes the received buffer without copying (tonic's `DecodeBuf::copy_to_bytes` splits
//! its `BytesMut`); encoding copies once into tonic's send buffer, as every tonic codec does.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes};
use tern_proto::inference::InferParameter;
use tern_proto::inference::infer_parameter::ParameterChoice;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::error::ClientError;

/// The fields of ModelInferRequest (grpc_service.proto) the router routes on, with the same
/// field numbers. prost skips the other fields (inputs, outputs, raw_input_contents) without
/// decoding them: they are length-delimited, so skipping is a pointer move.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferHead {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(string, tag = "2")]
    pub model_version: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
}

/// A Triton sequence: the `sequence_id` parameter (integer or string) of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SequenceId {
    Int(u64),
    Text(String),
}

impl std::fmt::Display for SequenceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SequenceId::Int(v) => write!(f, "{v}"),
            SequenceId::Text(s) => f.write_str(s),
        }
    }
}

impl InferHead {
    /// Reads the head of an encoded ModelInferRequest.
    pub fn parse(message: &Bytes) -> Result<InferHead, ClientError> {
        <InferHead as prost::Message>::decode(message.clone()).map_err(|e| {
            ClientError::router(tonic::Code::InvalidArgument, format!("malformed ModelInferRequest: {e}"))
        })
    }

    /// The request's sequence, if it carries a non-zero `sequence_id` (0 means none in Triton).
    pub fn sequence(&self) -> Option<SequenceId> {
        match self.parameters.get("sequence_id")?.parameter_choice.as_ref()? {
            ParameterChoice::Int64Param(0) | ParameterChoice::Uint64Param(0) => None,
            ParameterChoice::Int64Param(v) => Some(SequenceId::Int(*v as u64)),
            ParameterChoice::Uint64Param(v) => Some(SequenceId::Int(*v)),
            ParameterChoice::StringParam(s) if s.is_empty() => None,
            ParameterChoice::StringParam(s) => Some(SequenceId::Text(s.clone())),
            _ => None,
        }
    }

    /// True when the request starts its sequence (`sequence_start`).
    pub fn sequence_start(&self) -> bool {
        matches!(
            self.parameters.get("sequence_start").and_then(|p| p.parameter_choice.as_ref()),
            Some(ParameterChoice::BoolParam(true))
        )
    }

    /// True when the request ends its sequence (`sequence_end`).
    pub fn sequence_end(&self) -> bool {
        matches!(
            self.parameters.get("sequence_end").and_then(|p| p.parameter_choice.as_ref()),
            Some(ParameterChoice::BoolParam(true))
        )
    }
}

/// What the router sends: a message it already holds, optionally between a few bytes of framing
/// (a ModelInferResponse becomes a ModelStreamInferResponse by prefixing field 2's key and
/// length, and gets a parameter by appending a map entry), so wrapping never copies the payload
/// twice.
#[derive(Debug, Clone, Default)]
pub struct RawMessage {
    pub prefix: Bytes,
    pub body: Bytes,
    pub suffix: Bytes,
}

impl From<Bytes> for RawMessage {
    fn from(body: Bytes) -> Self {
        RawMessage { prefix: Bytes::new(), body, suffix: Bytes::new() }
    }
}

/// Wraps an encoded ModelInferResponse as a ModelStreamInferResponse (`infer_response`, field 2)
/// marked as its request's last response: the parameter `triton_final_response` true, which
/// Triton's stream sets on every response (`StreamInferResponseComplete`), as tern-node's does.
/// Appended as one more `parameters` map entry (protobuf merges map entries; a later one wins).
pub fn stream_response(response: Bytes) -> RawMessage {
    static FINAL: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let suffix = FINAL
        .get_or_init(|| {
            let marked = tern_proto::inference::ModelInferResponse {
                parameters: [(
                    "triton_final_response".to_string(),
                    InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(true)) },
                )]
                .into(),
                ..Default::default()
            };
            Bytes::from(prost::Message::encode_to_vec(&marked))
        })
        .clone();
    let mut prefix = Vec::with_capacity(11);
    prefix.push(0x12); // field 2, wire type 2 (length-delimited)
    prost::encoding::encode_varint((response.len() + suffix.len()) as u64, &mut prefix);
    RawMessage { prefix: prefix.into(), body: response, suffix }
}

/// Encodes a ModelStreamInferResponse for a failed request: `error_message`, and an
/// `infer_response` holding only the request's `id` and model, so the client knows which request
/// failed. Triton repopulates the id the same way (server src/grpc/stream_infer_handler.cc,
/// ModelStreamInferHandler::Process); tern-node's stream adds the model name, and so does this.
pub fn stream_error(message: &str, model_name: &str, id: &str) -> RawMessage {
    let response = tern_proto::inference::ModelStreamInferResponse {
        error_message: message.to_string(),
        infer_response: Some(tern_proto::inference::ModelInferResponse {
            model_name: model_name.to_string(),
            id: id.to_string(),
            // The request's last response, as tern-node marks its failures.
            parameters: [(
                "triton_final_response".to_string(),
                InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(true)) },
            )]
            .into(),
            ..Default::default()
        }),
    };
    RawMessage::from(Bytes::from(prost::Message::encode_to_vec(&response)))
}

/// The identity codec: messages travel as the bytes they were received as.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = RawMessage;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = RawMessage;
    type Error = Status;

    fn encode(&mut self, item: RawMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.prefix.len() + item.body.len() + item.suffix.len());
        dst.put_slice(&item.prefix);
        dst.put_slice(&item.body);
        dst.put_slice(&item.suffix);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tern_proto::inference as pb;

    fn request() -> pb::ModelInferRequest {
        let mut parameters = HashMap::new();
        parameters.insert(
            "sequence_id".to_string(),
            InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(42)) },
        );
        parameters.insert(
            "sequence_end".to_string(),
            InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(true)) },
        );
        pb::ModelInferRequest {
            model_name: "tiny_add".into(),
            model_version: "3".into(),
            id: "req-1".into(),
            parameters,
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "a".into(),
                datatype: "FP32".into(),
                shape: vec![1, 4],
                ..Default::default()
            }],
            raw_input_contents: vec![Bytes::from(vec![7u8; 4096])],
            ..Default::default()
        }
    }

    #[test]
    fn head_reads_routing_fields_and_skips_tensors() {
        let bytes = Bytes::from(request().encode_to_vec());
        let head = InferHead::parse(&bytes).expect("head");
        assert_eq!(head.model_name, "tiny_add");
        assert_eq!(head.model_version, "3");
        assert_eq!(head.id, "req-1");
        assert_eq!(head.sequence(), Some(SequenceId::Int(42)));
        assert!(head.sequence_end());
    }

    #[test]
    fn zero_or_missing_sequence_id_is_no_sequence() {
        let mut r = request();
        r.parameters.insert(
            "sequence_id".into(),
            InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(0)) },
        );
        let head = InferHead::parse(&Bytes::from(r.encode_to_vec())).expect("head");
        assert_eq!(head.sequence(), None);
        r.parameters.clear();
        let head = InferHead::parse(&Bytes::from(r.encode_to_vec())).expect("head");
        assert_eq!(head.sequence(), None);
        assert!(!head.sequence_end());
    }

    #[test]
    fn garbage_is_invalid_argument() {
        let err = InferHead::parse(&Bytes::from_static(&[0x0a, 0xff, 0xff])).expect_err("malformed");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn stream_wrappers_decode_as_stream_responses() {
        let response = pb::ModelInferResponse {
            model_name: "m".into(),
            raw_output_contents: vec![Bytes::from_static(b"abc")],
            ..Default::default()
        };
        let mut with_params = response.clone();
        with_params.parameters.insert(
            "triton_final_response".into(),
            InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(false)) },
        );
        with_params.parameters.insert(
            "other".into(),
            InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(3)) },
        );
        let wrapped = stream_response(Bytes::from(with_params.encode_to_vec()));
        let mut joined = wrapped.prefix.to_vec();
        joined.extend_from_slice(&wrapped.body);
        joined.extend_from_slice(&wrapped.suffix);
        let decoded = pb::ModelStreamInferResponse::decode(joined.as_slice()).expect("decode");
        let mut marked = with_params;
        marked.parameters.insert(
            "triton_final_response".into(),
            InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(true)) },
        );
        assert_eq!(decoded.infer_response, Some(marked), "the payload kept, the response marked final");
        assert_eq!(decoded.error_message, "");

        let err = stream_error("model 'm' is not ready", "m", "req-7");
        let mut joined = err.prefix.to_vec();
        joined.extend_from_slice(&err.body);
        let decoded = pb::ModelStreamInferResponse::decode(joined.as_slice()).expect("decode");
        assert_eq!(decoded.error_message, "model 'm' is not ready");
        let response = decoded.infer_response.expect("the failed request's id comes back");
        assert_eq!((response.id.as_str(), response.model_name.as_str()), ("req-7", "m"));
        assert!(response.outputs.is_empty() && response.raw_output_contents.is_empty());
    }
}
