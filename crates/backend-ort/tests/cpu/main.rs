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
