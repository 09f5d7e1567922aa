//! Bounded randomized robustness ("fuzz-style", on stable Rust): random and mutated
//! `ModelInferRequest` bytes through prost decoding, the size limits and request validation,
//! and random bytes through the BYTES codec and typed-contents conversion. Nothing a client
//! sends may panic. Seeds are the files in tests/fuzz-corpus/; the generator is seeded, so a
//! failure reproduces. `TERN_FUZZ_ITERATIONS` (default 20000) sets how many inputs to try.
//! With a nightly toolchain, `fuzz/` holds the same targets for cargo-fuzz.

use std::path::PathBuf;

use prost::Message;
use tern_core::shape_limits::{RequestLimits, check_request};
use tern_core::{DataType, IoSpec, ModelIo, codec, validate_request};
use tern_proto::inference::{InferTensorContents, ModelInferRequest};

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Values that tend to find edges: lengths and varints at type boundaries.
const INTERESTING: &[&[u8]] = &[
    &[0x00],
    &[0xff],
    &[0x7f],
    &[0x80, 0x80, 0x80, 0x80, 0x10],
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
    &[0x01, 0x00, 0x00, 0x00],
    &[0xff, 0xff, 0xff, 0x7f],
];

fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.next() as u8;
            }
            2 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                data.splice(at..at, v.iter().copied());
            }
            3 if at < data.len() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at..end);
            }
            4 => data.truncate(at),
            5 if !others.is_empty() => {
                let other = &others[rng.below(others.len())];
                let from = rng.below(other.len() + 1);
                let to = (from + rng.below(64)).min(other.len());
                data.splice(at..at, other[from..to].iter().copied());
            }
            _ => {
                let n = rng.below(32);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, bytes);
            }
        }
    }
    data
}

/// Dimensions at the edges: zero, -1, powers of two up to and past what fits.
const DIMS: &[i64] = &[0, 1, 2, 3, 4, 16, -1, -2, 1 << 31, 1 << 32, 1 << 40, 1 << 62, i64::MAX, i64::MIN];
const DATATYPES: &[&str] = &[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16", "FP32",
    "FP64", "BYTES", "", "NOPE",
];
const NAMES: &[&str] = &["INPUT0", "INPUT1", "OUTPUT0", "", "x"];

/// Mutations that keep the message well-formed protobuf, so they reach the limits and the
/// validation rather than stopping in the decoder.
fn mutate_fields(rng: &mut Rng, mut req: ModelInferRequest) -> ModelInferRequest {
    use tern_proto::inference::InferParameter;
    use tern_proto::inference::infer_parameter::ParameterChoice;
    use tern_proto::inference::model_infer_request::InferRequestedOutputTensor;
    for _ in 0..=rng.below(3) {
        let n = req.inputs.len();
        match rng.below(9) {
            0 if n > 0 => {
                let shape = &mut req.inputs[rng.below(n)].shape;
                match rng.below(3) {
                    0 => shape.push(DIMS[rng.below(DIMS.len())]),
                    1 => {
                        shape.pop();
                    }
                    _ if !shape.is_empty() => {
                        let i = rng.below(shape.len());
                        shape[i] = DIMS[rng.below(DIMS.len())];
                    }
                    _ => {}
                }
            }
            1 if n > 0 => req.inputs[rng.below(n)].datatype = DATATYPES[rng.below(DATATYPES.len())].into(),
            2 if n > 0 => req.inputs[rng.below(n)].name = NAMES[rng.below(NAMES.len())].into(),
            3 => match rng.below(3) {
                0 if n > 0 => {
                    let i = rng.below(n);
                    req.inputs.push(req.inputs[i].clone());
                }
                1 if n > 0 => {
                    req.inputs.remove(rng.below(n));
                }
                _ => {
                    req.raw_input_contents.pop();
                }
            },
            4 => {
                let len = [0, 1, 3, 4, 16, 63, 64, 65, 128][rng.below(9)];
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let k = req.raw_input_contents.len();
                if k > 0 && rng.below(2) == 0 {
                    req.raw_input_contents[rng.below(k)] = data.into();
                } else {
                    req.raw_input_contents.push(data.into());
                }
            }
            5 if n > 0 => {
                let c = req.inputs[rng.below(n)].contents.get_or_insert_with(Default::default);
                let len = rng.below(20);
                match rng.below(5) {
                    0 => c.fp32_contents = (0..len).map(|i| i as f32).collect(),
                    1 => c.int_contents = (0..len).map(|_| rng.next() as i32).collect(),
                    2 => c.uint_contents = (0..len).map(|_| rng.next() as u32).collect(),
                    3 => c.bool_contents = (0..len).map(|i| i % 2 == 0).collect(),
                    _ => c.bytes_contents = (0..len).map(|i| vec![i as u8; i].into()).collect(),
                }
            }
            6 => {
                let choice = match rng.below(5) {
                    0 => ParameterChoice::Int64Param(DIMS[rng.below(DIMS.len())]),
                    1 => ParameterChoice::Uint64Param(rng.next()),
                    2 => ParameterChoice::BoolParam(true),
                    3 => ParameterChoice::StringParam("x".into()),
                    _ => ParameterChoice::DoubleParam(-1.5),
                };
                let param = InferParameter { parameter_choice: Some(choice) };
                match rng.below(3) {
                    0 => req.parameters.insert("priority".into(), param),
                    1 => req.parameters.insert("timeout".into(), param),
                    _ => {
                        let mut out = InferRequestedOutputTensor {
                            name: NAMES[rng.below(NAMES.len())].into(),
                            ..Default::default()
                        };
                        out.parameters.insert("classification".into(), param);
                        req.outputs.push(out);
                        None
                    }
                };
            }
            7 => req.model_name = ["tiny_add", "string_identity", "narrow"][rng.below(3)].into(),
            _ => {}
        }
    }
    req
}

fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz-corpus").join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().filter_map(|f| std::fs::read(f).ok()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

fn iterations() -> usize {
    std::env::var("TERN_FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

fn spec(name: &str, datatype: DataType, dims: &[i64], reshape: Option<&[i64]>) -> IoSpec {
    IoSpec {
        name: name.into(),
        datatype,
        dims: dims.to_vec(),
        reshape: reshape.map(<[i64]>::to_vec),
        optional: false,
        labels: None,
        utf8: false,
    }
}

/// Models of several kinds, named as the seeds name them.
fn models() -> Vec<ModelIo> {
    vec![
        ModelIo {
            model: "tiny_add".into(),
            max_batch_size: 64,
            inputs: vec![
                spec("INPUT0", DataType::Fp32, &[16], None),
                spec("INPUT1", DataType::Fp32, &[16], None),
            ],
            outputs: vec![spec("OUTPUT0", DataType::Fp32, &[16], None)],
        },
        ModelIo {
            model: "string_identity".into(),
            max_batch_size: 0,
            inputs: vec![spec("INPUT0", DataType::Bytes, &[-1], None)],
            outputs: vec![spec("OUTPUT0", DataType::Bytes, &[-1], None)],
        },
        ModelIo {
            model: "narrow".into(),
            max_batch_size: 4,
            inputs: vec![
                spec("INPUT0", DataType::Int8, &[-1], Some(&[2, 2])),
                spec("INPUT1", DataType::Uint16, &[4], None),
            ],
            outputs: vec![spec("OUTPUT0", DataType::Fp16, &[-1], None)],
        },
    ]
}

/// How far inputs got: decoded, passed the limits, validated for some model.
#[derive(Debug, Default)]
struct Reached {
    decoded: usize,
    within_limits: usize,
    validated: usize,
}

fn exercise_request(bytes: &[u8], models: &[ModelIo], reached: &mut Reached) {
    let Ok(req) = ModelInferRequest::decode(bytes) else { return };
    reached.decoded += 1;
    let tight = RequestLimits { max_tensor_bytes: 64, max_request_bytes: 96 };
    let _ = check_request(&req, &tight);
    if check_request(&req, &RequestLimits::default()).is_err() {
        return;
    }
    reached.within_limits += 1;
    for io in models {
        let Ok(valid) = validate_request(io, req.clone()) else { continue };
        reached.validated += 1;
        // What validation accepts is consistent: every tensor's bytes match its shape.
        for t in &valid.inputs {
            let elements = tern_core::request::element_count(&t.shape).unwrap_or(u64::MAX);
            match t.datatype.element_size() {
                Some(size) => assert_eq!(t.data.len() as u64, elements * size as u64, "{t:?}"),
                None => {
                    let n = codec::count_bytes_elements(&t.data).ok().map(|n| n as u64);
                    assert_eq!(n, Some(elements), "{t:?}");
                }
            }
            if t.datatype != DataType::Bytes {
                let _ = tern_core::classify(t, 3, io.max_batch_size > 0, None);
            }
        }
    }
}

const ALL_TYPES: [DataType; 14] = [
    DataType::Bool,
    DataType::Int8,
    DataType::Int16,
    DataType::Int32,
    DataType::Int64,
    DataType::Uint8,
    DataType::Uint16,
    DataType::Uint32,
    DataType::Uint64,
    DataType::Fp16,
    DataType::Bf16,
    DataType::Fp32,
    DataType::Fp64,
    DataType::Bytes,
];

fn exercise_bytes(data: &[u8]) {
    let counted = codec::count_bytes_elements(data);
    let iterated: Result<Vec<&[u8]>, _> = codec::bytes_elements(data).collect();
    assert_eq!(counted.clone().ok(), iterated.as_ref().ok().map(Vec::len), "count and iteration agree");
    if let Ok(elements) = iterated {
        assert_eq!(codec::encode_bytes_elements(&elements).as_ref(), data, "framing round-trips");
    }
    // The same bytes as typed contents of every datatype.
    if let Ok(contents) = InferTensorContents::decode(data) {
        for datatype in ALL_TYPES {
            if let Ok((raw, n)) = codec::typed_to_raw(datatype, &contents)
                && let Some(size) = datatype.element_size()
            {
                assert_eq!(raw.len(), n * size);
            }
        }
    }
}

#[test]
fn random_and_mutated_infer_requests_never_panic() {
    let seeds = corpus("infer_request");
    let models = models();
    let mut reached = Reached::default();
    for seed in &seeds {
        assert!(ModelInferRequest::decode(seed.as_slice()).is_ok(), "seeds decode");
        exercise_request(seed, &models, &mut reached);
    }
    let mut rng = Rng(0x7e57_5eed_0000_0001);
    for i in 0..iterations() {
        let seed = &seeds[rng.below(seeds.len())];
        let data = match i % 10 {
            0 => (0..rng.below(256)).map(|_| rng.next() as u8).collect(),
            1..=3 => mutate(&mut rng, seed, &seeds),
            _ => {
                let req = ModelInferRequest::decode(seed.as_slice()).unwrap_or_default();
                let fields = mutate_fields(&mut rng, req).encode_to_vec();
                if i % 10 == 9 { mutate(&mut rng, &fields, &seeds) } else { fields }
            }
        };
        exercise_request(&data, &models, &mut reached);
    }
    // The mutations must reach past the decoder, or this tests only prost.
    let n = iterations();
    eprintln!("{n} inputs: {reached:?}");
    assert!(reached.decoded > n / 2 && reached.validated > n / 20, "{reached:?}");
}

#[test]
fn random_and_mutated_bytes_payloads_never_panic() {
    let seeds = corpus("bytes");
    let mut rng = Rng(0x7e57_5eed_0000_0002);
    for seed in &seeds {
        exercise_bytes(seed);
    }
    for i in 0..iterations() {
        let data = if i % 4 == 0 {
            (0..rng.below(64)).map(|_| rng.next() as u8).collect()
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed, &seeds)
        };
        exercise_bytes(&data);
    }
}
