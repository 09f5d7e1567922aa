//! Batch assembly and split on the instance thread (`tern_backend::batch`): eight one-row
//! requests gathered into one contiguous input buffer (`concat_inputs`, a copy), and the
//! batch's output handed back as eight slices of one buffer (`split_outputs`, no copy).
//!
//! `cargo bench -p tern-benches --bench batch`; see benches/README.md.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tern_backend::batch::{concat_inputs, split_outputs};
use tern_core::{DataType, Tensor};

const BATCH: usize = 8;

fn fp32(name: &str, shape: Vec<i64>) -> Tensor {
    let elements: i64 = shape.iter().product();
    let data: Vec<u8> = (0..elements).flat_map(|i| (i as f32).to_le_bytes()).collect();
    Tensor { name: name.into(), datatype: DataType::Fp32, shape, data: Bytes::from(data) }
}

fn assemble_and_split(c: &mut Criterion) {
    // (label, one request's input dims, the model's output dims per row)
    let cases: [(&str, &[i64], &[i64]); 2] =
        [("tiny_fp32x16", &[16], &[16]), ("resnet_3x224x224", &[3, 224, 224], &[1000])];
    for (label, input_dims, output_dims) in cases {
        let one_row = |dims: &[i64]| std::iter::once(1).chain(dims.iter().copied()).collect::<Vec<_>>();
        let requests: Vec<Vec<Tensor>> =
            (0..BATCH).map(|_| vec![fp32("input", one_row(input_dims))]).collect();
        let output =
            fp32("output", std::iter::once(BATCH as i64).chain(output_dims.iter().copied()).collect());
        let rows = [1u32; BATCH];
        let input_bytes: usize = requests.iter().map(|r| r[0].data.len()).sum();

        let mut group = c.benchmark_group(format!("batch8/{label}"));
        group.throughput(Throughput::Bytes(input_bytes as u64));
        group.bench_function("concat_inputs", |b| {
            b.iter(|| concat_inputs(black_box(&requests)).expect("same shapes"))
        });
        // Slices, not copies: the cost goes with the requests, not the bytes.
        group.throughput(Throughput::Elements(BATCH as u64));
        // The tensor is moved in; cloning it (a refcount, a name, a shape) is left out of the timing.
        group.bench_function("split_outputs", |b| {
            b.iter_batched(
                || vec![output.clone()],
                |out| split_outputs(out, black_box(&rows)).expect("rows add up"),
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, assemble_and_split);
criterion_main!(benches);
