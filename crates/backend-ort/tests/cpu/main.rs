//! ONNX Runtime backend tests that share one runtime, in one test binary (fewer links in CI).
//! `gpu_device.rs` stays alone (scripts/test_gpu.sh runs it by name on GPU machines), and so
//! does `init_runtime.rs` (it tests the process-wide ONNX Runtime initialisation itself).

#[path = "../common/mod.rs"]
mod common;

mod accelerator_policy;
mod buckets_and_cache;
mod gpu_placement;
mod io_binding;
mod ort_backend;

use bytes::Bytes;
use tern_core::{DataType, Tensor};

/// `n` rows of the `mlp` test model's input (`INPUT0`, FP32 `[n, 4]`), different for each seed.
fn rows(n: usize, seed: f32) -> Tensor {
    let values: Vec<f32> = (0..n * 4).map(|i| ((i as f32 + seed) * 0.37).sin()).collect();
    Tensor {
        name: "INPUT0".into(),
        datatype: DataType::Fp32,
        shape: vec![n as i64, 4],
        data: Bytes::from(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()),
    }
}
