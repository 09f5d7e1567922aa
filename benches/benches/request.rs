//! The node's request path before the queue: prost decode of a `ModelInferRequest`, then the
//! size limits and validation the node's service applies (`tern_core::shape_limits::check_request`,
//! `tern_core::validate_request`), for a tiny model and a resnet-sized input; and the BYTES
//! codec (framing, validation, element iteration) at two sizes.
//!
//! `cargo bench -p tern-benches --bench request`; see benches/README.md.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use tern_core::shape_limits::{RequestLimits, check_request};
use tern_core::{DataType, IoSpec, ModelIo, codec, validate_request};
use tern_proto::inference::ModelInferRequest;
use tern_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

/// A batching model with one FP32 input and one FP32 output, as the loader builds it from
/// config.pbtxt (`max_batch_size: 8`, the input's dims without the batch dimension).
fn model(name: &str, input_dims: &[i64], output_dims: &[i64]) -> ModelIo {
    let spec = |name: &str, dims: &[i64]| IoSpec {
        name: name.into(),
        datatype: DataType::Fp32,
        dims: dims.to_vec(),
        reshape: None,
        optional: false,
        labels: None,
        utf8: false,
    };
    ModelIo {
        model: name.into(),
        max_batch_size: 8,
        inputs: vec![spec("input", input_dims)],
        outputs: vec![spec("output", output_dims)],
    }
}

/// What tritonclient sends for one row: the input in `raw_input_contents`, one requested output.
fn encoded_request(io: &ModelIo) -> Bytes {
    let dims = &io.inputs[0].dims;
    let shape: Vec<i64> = std::iter::once(1).chain(dims.iter().copied()).collect();
    let elements: i64 = dims.iter().product();
    // Distinct values, so nothing about the payload is special-cased.
    let raw: Vec<u8> = (0..elements).flat_map(|i| (i as f32 / elements as f32).to_le_bytes()).collect();
    let req = ModelInferRequest {
        model_name: io.model.clone(),
        model_version: String::new(),
        id: "bench-42".into(),
        parameters: Default::default(),
        inputs: vec![InferInputTensor {
            name: io.inputs[0].name.clone(),
            datatype: "FP32".into(),
            shape,
            parameters: Default::default(),
            contents: None,
        }],
        outputs: vec![InferRequestedOutputTensor {
            name: io.outputs[0].name.clone(),
            parameters: Default::default(),
        }],
        raw_input_contents: vec![Bytes::from(raw)],
    };
    Bytes::from(req.encode_to_vec())
}

fn decode_and_validate(c: &mut Criterion) {
    let limits = RequestLimits::default();
    let cases = [
        ("tiny_fp32x16", model("tiny", &[16], &[16])),
        ("resnet_1x3x224x224", model("resnet", &[3, 224, 224], &[1000])),
    ];
    for (label, io) in cases {
        let wire = encoded_request(&io);
        let decoded = ModelInferRequest::decode(wire.clone()).expect("the request encodes and decodes");
        validate_request(&io, decoded.clone()).expect("the bench request is valid for its model");

        let mut group = c.benchmark_group(format!("request/{label}"));
        group.throughput(Throughput::Bytes(wire.len() as u64));
        // From `Bytes`: raw contents become slices of it, as they do from tonic's decode buffer.
        group.bench_function("decode", |b| {
            b.iter(|| ModelInferRequest::decode(black_box(wire.clone())).expect("decodes"))
        });
        // From a plain slice: every raw payload is copied. The difference is what zero-copy saves.
        group.bench_function("decode_from_slice", |b| {
            b.iter(|| ModelInferRequest::decode(black_box(&wire[..])).expect("decodes"))
        });
        // Validation touches the shapes, not the payload: per request, not per byte.
        group.throughput(Throughput::Elements(1));
        group.bench_function("validate", |b| {
            b.iter_batched(
                || decoded.clone(),
                |req| {
                    check_request(&req, &limits).expect("within limits");
                    validate_request(&io, req).expect("valid")
                },
                BatchSize::SmallInput,
            )
        });
        // What the service does per request before the scheduler sees it.
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function("decode_validate", |b| {
            b.iter(|| {
                let req = ModelInferRequest::decode(black_box(wire.clone())).expect("decodes");
                check_request(&req, &limits).expect("within limits");
                validate_request(&io, req).expect("valid")
            })
        });
        group.finish();
    }
}

fn bytes_codec(c: &mut Criterion) {
    for (count, len) in [(64usize, 16usize), (1024, 256)] {
        let elements: Vec<Vec<u8>> =
            (0..count).map(|i| (0..len).map(|j| (i * 31 + j) as u8).collect()).collect();
        let framed = codec::encode_bytes_elements(&elements);

        let mut group = c.benchmark_group(format!("bytes_codec/{count}x{len}B"));
        group.throughput(Throughput::Bytes(framed.len() as u64));
        // Framing, as typed `bytes_contents` and classification results are framed.
        group.bench_function("encode", |b| b.iter(|| codec::encode_bytes_elements(black_box(&elements))));
        // The framing check validate_request runs on every BYTES input; it walks the lengths,
        // not the bytes, so its cost goes with the element count.
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function("count", |b| {
            b.iter(|| codec::count_bytes_elements(black_box(&framed)).expect("well framed"))
        });
        // Walking the elements as slices, as the batch split does for BYTES outputs.
        group.bench_function("iterate", |b| {
            b.iter(|| {
                codec::bytes_elements(black_box(&framed))
                    .map(|e| e.expect("well framed").len())
                    .sum::<usize>()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, decode_and_validate, bytes_codec);
criterion_main!(benches);
