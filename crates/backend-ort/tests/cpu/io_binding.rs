//! IO binding for bucketed batches (issue 25) on real ONNX Runtime CPU sessions: the same path a
//! GPU instance takes, minus the device copies. Bound runs must answer exactly what unbound runs
//! answer, reuse their buffers, and never overwrite an output a response still holds.

use std::collections::HashSet;

use bytes::Bytes;
use tern_backend::{Backend, BackendFactory, BatchJob, LoadTarget, ModelBytes};
use tern_backend_ort::{OrtBackend, OrtFactory, SessionSettings};
use tern_core::{DataType, Tensor};
use tern_proto::inference::model_instance_group::Kind;
use tern_proto::inference::model_optimization_policy::Cuda;
use tern_proto::inference::{ModelConfig, ModelInstanceGroup, ModelOptimizationPolicy, ModelParameter};

use crate::common::{model, runtime};
use crate::rows;

const BUCKETS: [u32; 4] = [1, 2, 4, 8];

fn mlp(binding: bool) -> OrtBackend {
    runtime();
    let settings = SessionSettings { intra_op_threads: Some(1), ..Default::default() };
    let backend = OrtBackend::load(&model("mlp"), &settings).expect("load mlp");
    backend.with_batch_buckets(BUCKETS.to_vec()).with_io_binding(binding)
}

fn run(backend: &mut dyn Backend, input: Tensor) -> Tensor {
    let mut out = backend.infer(vec![input], &[]).expect("infer");
    assert_eq!(out.len(), 1);
    out.remove(0)
}

#[test]
fn bound_runs_answer_exactly_what_unbound_runs_answer() {
    let (mut bound, mut plain) = (mlp(true), mlp(false));
    assert!(bound.io_binding() && !plain.io_binding());
    // Every bucket, twice each with different rows (the second run reuses the first's buffers),
    // and sizes that are no bucket (run unbound).
    for (i, n) in [1, 2, 4, 8, 8, 4, 2, 1, 3, 5].into_iter().enumerate() {
        let input = rows(n, i as f32 * 7.0);
        let (a, b) = (run(&mut bound, input.clone()), run(&mut plain, input));
        assert_eq!((&a.shape, a.datatype), (&vec![n as i64, 3], DataType::Fp32));
        assert_eq!(a.shape, b.shape);
        assert_eq!(a.data, b.data, "{n} rows: bound and unbound outputs differ");
    }
    // Outputs named twice, or by name: as without the binding.
    let names = vec!["OUTPUT0".to_string(), "OUTPUT0".to_string()];
    let twice = bound.infer(vec![rows(4, 1.0)], &names).expect("named twice");
    assert_eq!(twice.len(), 2);
    assert_eq!(twice[0].data, twice[1].data);
    assert_eq!(twice[0].data, run(&mut plain, rows(4, 1.0)).data);
    let unknown = bound.infer(vec![rows(4, 1.0)], &["NOPE".to_string()]).err().map(|e| e.to_string());
    assert!(unknown.is_some_and(|e| e.contains("NOPE")));
}

#[test]
fn bound_buffers_are_reused_and_a_held_response_is_never_overwritten() {
    let mut bound = mlp(true);
    let mut plain = mlp(false);
    // Dropped before the next run: the next run of that bucket writes the same buffer.
    let first = run(&mut bound, rows(4, 1.0));
    let address = first.data.as_ptr();
    drop(first);
    let second = run(&mut bound, rows(4, 2.0));
    assert_eq!(second.data.as_ptr(), address, "the bucket's output buffer is reused");
    // Held: the next run goes elsewhere, and what the response holds stays as it was.
    let expected_second = run(&mut plain, rows(4, 2.0)).data;
    let third = run(&mut bound, rows(4, 3.0));
    assert_ne!(third.data.as_ptr(), second.data.as_ptr(), "a held output is not run into");
    assert_eq!(second.data, expected_second);
    assert_eq!(third.data, run(&mut plain, rows(4, 3.0)).data);
    drop((second, third));

    // Many responses held at once (a slow client): each run gets its own buffer, correct.
    let held: Vec<(Tensor, Bytes)> = (0..7)
        .map(|i| {
            let input = rows(4, 10.0 + i as f32);
            (run(&mut bound, input.clone()), run(&mut plain, input).data)
        })
        .collect();
    let addresses: HashSet<usize> = held.iter().map(|(t, _)| t.data.as_ptr() as usize).collect();
    assert_eq!(addresses.len(), held.len(), "no two held responses share a buffer");
    for (answer, expected) in &held {
        assert_eq!(&answer.data, expected);
    }
    drop(held);

    // Many runs of mixed sizes, each response dropped: no more buffers than the pool, per
    // bucket (no growth).
    let mut seen: Vec<HashSet<usize>> = vec![HashSet::new(); BUCKETS.len()];
    for i in 0..400 {
        let bucket = i % BUCKETS.len();
        let n = BUCKETS[bucket] as usize;
        let answer = run(&mut bound, rows(n, i as f32));
        seen[bucket].insert(answer.data.as_ptr() as usize);
        if i % 97 == 0 {
            assert_eq!(answer.data, run(&mut plain, rows(n, i as f32)).data);
        }
    }
    for (bucket, addresses) in BUCKETS.iter().zip(&seen) {
        assert_eq!(
            addresses.len(),
            1,
            "bucket {bucket}: one buffer for responses dropped before the next run"
        );
    }
}

#[test]
fn every_fixed_size_datatype_goes_through_the_binding() {
    runtime();
    for dt in [
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16",
        "FP32", "FP64",
    ] {
        let backend = OrtBackend::load(&model(&format!("identity_{dt}")), &SessionSettings::default())
            .expect("load identity");
        let mut backend = backend.with_batch_buckets(BUCKETS.to_vec()).with_io_binding(true);
        assert!(backend.io_binding(), "{dt}");
        let datatype = DataType::from_wire_name(dt).expect("datatype");
        let size = datatype.element_size().expect("fixed size");
        for n in [2usize, 4] {
            // BOOL: bytes 0/1 only; the others: any bytes.
            let data: Vec<u8> = (0..n * 2 * size)
                .map(|i| if dt == "BOOL" { (i % 2) as u8 } else { (i * 37 + n) as u8 })
                .collect();
            let input =
                Tensor { name: "INPUT0".into(), datatype, shape: vec![n as i64, 2], data: Bytes::from(data) };
            let out = run(&mut backend, input.clone());
            assert_eq!((out.datatype, &out.shape), (datatype, &input.shape), "{dt}");
            assert_eq!(out.data, input.data, "{dt}: identity through the binding");
        }
    }
    // Strings cannot be bound: the model runs as before.
    let backend = OrtBackend::load(&model("identity_BYTES"), &SessionSettings::default()).expect("load");
    assert!(!backend.with_batch_buckets(BUCKETS.to_vec()).with_io_binding(true).io_binding());
}

fn config(params: &[(&str, &str)], graphs: bool) -> ModelConfig {
    ModelConfig {
        name: "mlp".into(),
        max_batch_size: 8,
        instance_group: vec![ModelInstanceGroup { kind: Kind::Cpu as i32, count: 1, ..Default::default() }],
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), ModelParameter { string_value: v.to_string() }))
            .collect(),
        optimization: graphs.then(|| ModelOptimizationPolicy {
            cuda: Some(Cuda { graphs: true, ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn open(config: &ModelConfig) -> Box<dyn Backend> {
    runtime();
    let path = model("mlp");
    let factory = OrtFactory::default();
    let target = LoadTarget { model: "mlp".into(), version: 1, trusted_dir: None, encrypted: false };
    let mut loader = factory.begin(&target, config).expect("begin");
    loader.signature(ModelBytes::File(&path)).expect("signature");
    let placement = loader.plan(config).expect("plan");
    loader.instances(placement.instances.len(), ModelBytes::File(&path)).expect("instances").remove(0)
}

#[test]
fn batches_of_mixed_sizes_padded_to_buckets_answer_alike_with_the_binding_on_and_off() {
    // As the model lifecycle opens them from config.pbtxt; `optimization.cuda.graphs` on a CPU
    // instance is ignored with a warning (as Triton's ONNX Runtime backend ignores it), not refused.
    let mut bound = open(&config(&[("batch_buckets", "on"), ("io_binding", "on")], true));
    let mut plain = open(&config(&[("batch_buckets", "on"), ("io_binding", "off")], false));
    let batches: [&[usize]; 5] = [&[1, 2, 2], &[3], &[1], &[4, 4], &[2, 1, 1, 3]];
    for (b, sizes) in batches.iter().enumerate() {
        let requests: Vec<Tensor> =
            sizes.iter().enumerate().map(|(i, &n)| rows(n, (b * 10 + i) as f32)).collect();
        let job = || BatchJob {
            requests: requests.iter().map(|t| vec![t.clone()]).collect(),
            batch_sizes: sizes.iter().map(|&n| n as u32).collect(),
            outputs: vec![],
        };
        let (a, _) = tern_backend::run(bound.as_mut(), job());
        let (p, _) = tern_backend::run(plain.as_mut(), job());
        let (a, p) = (a.expect("bound batch"), p.expect("plain batch"));
        assert_eq!(a.len(), sizes.len());
        for ((answer, expected), &n) in a.iter().zip(&p).zip(sizes.iter()) {
            // Exactly the request's rows: the padding rows' outputs never reach it.
            assert_eq!(answer[0].shape, vec![n as i64, 3]);
            assert_eq!(answer[0].data, expected[0].data, "batch {sizes:?}");
        }
    }
}
