//! Any bytes as a ModelInferRequest: decode, size limits, validation against a batching FP32
//! model and a BYTES model. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tern_core::shape_limits::{RequestLimits, check_request};
use tern_core::{DataType, IoSpec, ModelIo, validate_request};
use tern_proto::inference::ModelInferRequest;

fn spec(name: &str, datatype: DataType, dims: &[i64]) -> IoSpec {
    IoSpec {
        name: name.into(),
        datatype,
        dims: dims.to_vec(),
        reshape: None,
        optional: false,
        labels: None,
        utf8: false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = ModelInferRequest::decode(data) else { return };
    if check_request(&req, &RequestLimits::default()).is_err() {
        return;
    }
    let models = [
        ModelIo {
            model: "tiny_add".into(),
            max_batch_size: 64,
            inputs: vec![spec("INPUT0", DataType::Fp32, &[16]), spec("INPUT1", DataType::Fp32, &[16])],
            outputs: vec![spec("OUTPUT0", DataType::Fp32, &[16])],
        },
        ModelIo {
            model: "string_identity".into(),
            max_batch_size: 0,
            inputs: vec![spec("INPUT0", DataType::Bytes, &[-1])],
            outputs: vec![spec("OUTPUT0", DataType::Bytes, &[-1])],
        },
        ModelIo {
            model: "embedder".into(),
            max_batch_size: 64,
            inputs: vec![IoSpec { utf8: true, ..spec("text", DataType::Bytes, &[1]) }],
            outputs: vec![spec("embedding", DataType::Fp32, &[384])],
        },
    ];
    for io in &models {
        let _ = validate_request(io, req.clone());
    }
});
