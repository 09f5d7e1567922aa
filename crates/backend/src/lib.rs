//! The seam between the server and whatever runs a model. A [`Backend`] is synchronous and
//! driven by exactly one OS thread (ONNX Runtime's `Session::run` takes `&mut self`, and a
//! blocking call must not stall the async runtime); [`run`] executes one [`BatchJob`] on it:
//! batch assembly, the model, the split back per request, with Triton's timings. The threads
//! themselves belong to the scheduler, which forms batches on them. [`BackendFactory`] is how
//! the model lifecycle gets backends without knowing the runtime, and [`GenerativeFactory`] how it
//! gets a generative model's engine. This crate knows nothing of
//! gRPC, queues or ONNX.

pub mod batch;
pub mod factory;
pub mod generative;

pub use factory::{BackendFactory, LoadTarget, ModelBytes, PlacedInstance, Placement, VersionLoader};
pub use generative::{GenerativeFactory, GenerativeLoad, GenerativeModel};

use tern_core::Tensor;

/// Why a backend could not load or run. `Clone` because one failed batch answers every
/// request in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The model could not be loaded (missing or corrupt file, unsupported operator, ...).
    #[error("{0}")]
    Load(String),
    /// The inputs were refused by the runtime (shape or type the model cannot take).
    #[error("{0}")]
    InvalidInput(String),
    /// The runtime failed while executing.
    #[error("{0}")]
    Execution(String),
}

/// Runs one model. Implementations are driven from a single thread.
pub trait Backend: Send + 'static {
    /// Runs the model once on `inputs` (named as the model's inputs, in any order) and returns
    /// the outputs named in `outputs`, in that order; all of the model's outputs in the model's
    /// order when `outputs` is empty.
    fn infer(&mut self, inputs: Vec<Tensor>, outputs: &[String]) -> Result<Vec<Tensor>, BackendError>;

    /// Batch sizes this instance runs at, ascending (see [`batch::bucket_sizes`]): [`run`]
    /// pads each batch up to the smallest that holds it and cuts the padding off the outputs
    /// before they are split. A runtime that plans per input shape (ONNX Runtime's CUDA
    /// provider picks convolution algorithms per shape) then sees a few shapes, each planned at
    /// warmup. None (the default): batches run at their own size.
    fn batch_buckets(&self) -> &[u32] {
        &[]
    }
}

/// Timings of one execution, in the phases Triton reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecTimings {
    /// When an instance thread picked the job up (the end of queueing).
    pub started: Option<std::time::Instant>,
    /// Assembling the batch's inputs into one buffer per input.
    pub compute_input: std::time::Duration,
    /// Inside `Backend::infer`.
    pub compute_infer: std::time::Duration,
    /// Splitting the outputs back per request.
    pub compute_output: std::time::Duration,
}

/// Several requests run as one execution. Each request's inputs carry their own batch size in
/// the first dimension when the model batches (`batch_sizes[i]`; 0 when it does not, and then
/// there is exactly one request).
pub struct BatchJob {
    pub requests: Vec<Vec<Tensor>>,
    pub batch_sizes: Vec<u32>,
    /// Outputs to compute for every request; empty means all.
    pub outputs: Vec<String>,
}

/// The result of a [`BatchJob`]: each request's outputs, in request order.
pub type BatchResult = Result<Vec<Vec<Tensor>>, BackendError>;

/// Executes `job` on `backend` on the calling thread. A panic inside the backend is caught and
/// reported as an execution error: it must not take the server down, and the thread goes on
/// serving.
pub fn run(backend: &mut dyn Backend, job: BatchJob) -> (BatchResult, ExecTimings) {
    let mut timings = ExecTimings { started: Some(std::time::Instant::now()), ..Default::default() };
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(backend, job, &mut timings)))
            .unwrap_or_else(|_| Err(BackendError::Execution("backend panicked while executing".into())));
    (result, timings)
}

fn execute(backend: &mut dyn Backend, job: BatchJob, timings: &mut ExecTimings) -> BatchResult {
    let BatchJob { mut requests, batch_sizes, outputs } = job;
    // Padding rows are counted nowhere: statistics take the requests' batch sizes.
    let rows: u32 = batch_sizes.iter().sum();
    let pad_to = batch::bucket_for(backend.batch_buckets(), rows).filter(|&b| rows > 0 && b > rows);
    if requests.len() == 1 && pad_to.is_none() {
        // One request: its buffers go to the backend as they are.
        let t = std::time::Instant::now();
        let out = tracing::debug_span!("compute_infer")
            .in_scope(|| backend.infer(requests.pop().unwrap_or_default(), &outputs))?;
        timings.compute_infer = t.elapsed();
        return Ok(vec![out]);
    }
    let t = std::time::Instant::now();
    let inputs =
        tracing::debug_span!("compute_input").in_scope(|| batch::concat_inputs_padded(&requests, pad_to))?;
    drop(requests);
    timings.compute_input = t.elapsed();
    let t = std::time::Instant::now();
    let out = tracing::debug_span!("compute_infer").in_scope(|| backend.infer(inputs, &outputs))?;
    timings.compute_infer = t.elapsed();
    let t = std::time::Instant::now();
    let split = tracing::debug_span!("compute_output").in_scope(|| {
        // The padding rows' outputs are cut before anything is split: no request sees them.
        let out = if pad_to.is_some() { batch::trim_rows(out, rows)? } else { out };
        batch::split_outputs(out, &batch_sizes)
    })?;
    timings.compute_output = t.elapsed();
    Ok(split)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tern_core::DataType;

    /// Echoes its inputs back, renamed; panics on none. A stand-in for a real model.
    struct EchoBackend;
    impl Backend for EchoBackend {
        fn infer(&mut self, inputs: Vec<Tensor>, _outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
            if inputs.is_empty() {
                panic!("no inputs");
            }
            Ok(inputs.into_iter().map(|t| Tensor { name: format!("out_{}", t.name), ..t }).collect())
        }
    }

    /// Echoes like [`EchoBackend`], with batch buckets, and keeps the row counts it was given.
    struct BucketEcho {
        buckets: Vec<u32>,
        seen: Vec<i64>,
    }
    impl Backend for BucketEcho {
        fn infer(&mut self, inputs: Vec<Tensor>, _outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
            self.seen.push(inputs[0].shape[0]);
            Ok(inputs.into_iter().map(|t| Tensor { name: format!("out_{}", t.name), ..t }).collect())
        }
        fn batch_buckets(&self) -> &[u32] {
            &self.buckets
        }
    }

    #[test]
    fn batches_run_padded_to_a_bucket_and_padding_never_reaches_a_request() {
        let mut backend = BucketEcho { buckets: batch::bucket_sizes(8, &[]), seen: vec![] };
        let x = |rows: i64, first: f32| Tensor {
            name: "x".into(),
            datatype: DataType::Fp32,
            shape: vec![rows, 1],
            data: batch::f32s(&(0..rows).map(|r| first + r as f32).collect::<Vec<_>>()),
        };
        let job = BatchJob {
            requests: vec![vec![x(1, 10.0)], vec![x(2, 20.0)], vec![x(2, 30.0)]],
            batch_sizes: vec![1, 2, 2],
            outputs: vec![],
        };
        let (r, _) = run(&mut backend, job);
        let out = r.expect("run");
        assert_eq!(backend.seen, vec![8], "5 rows run as the bucket of 8");
        assert_eq!(out.len(), 3);
        assert_eq!(out[0][0].shape, vec![1, 1]);
        assert_eq!(out[0][0].data, batch::f32s(&[10.0]));
        assert_eq!(out[2][0].shape, vec![2, 1]);
        assert_eq!(out[2][0].data, batch::f32s(&[30.0, 31.0]));
        // One request pads too; a batch at a bucket's size and a model that does not batch do not.
        let (r, _) = run(
            &mut backend,
            BatchJob { requests: vec![vec![x(3, 0.0)]], batch_sizes: vec![3], outputs: vec![] },
        );
        assert_eq!(r.expect("run")[0][0].data, batch::f32s(&[0.0, 1.0, 2.0]));
        let (r, _) = run(
            &mut backend,
            BatchJob { requests: vec![vec![x(4, 0.0)]], batch_sizes: vec![4], outputs: vec![] },
        );
        assert_eq!(r.expect("run")[0][0].shape, vec![4, 1]);
        let (r, _) = run(
            &mut backend,
            BatchJob { requests: vec![vec![x(3, 0.0)]], batch_sizes: vec![0], outputs: vec![] },
        );
        assert_eq!(r.expect("run")[0][0].shape, vec![3, 1]);
        assert_eq!(backend.seen, vec![8, 4, 4, 3]);
    }

    fn one(inputs: Vec<Tensor>) -> BatchJob {
        BatchJob { requests: vec![inputs], batch_sizes: vec![0], outputs: vec![] }
    }

    #[test]
    fn runs_a_job_and_survives_a_panic() {
        let mut backend = EchoBackend;
        let t = Tensor {
            name: "x".into(),
            datatype: DataType::Uint8,
            shape: vec![2],
            data: Bytes::from_static(&[1, 2]),
        };
        let (r, timings) = run(&mut backend, one(vec![t.clone()]));
        let out = r.expect("echo").pop().expect("one request");
        assert_eq!(out[0].name, "out_x");
        assert_eq!(out[0].data, t.data, "the same buffer comes back");
        assert!(timings.started.is_some());
        let (r, _) = run(&mut backend, one(vec![]));
        assert!(matches!(r, Err(BackendError::Execution(m)) if m.contains("panicked")));
        let (r, _) = run(&mut backend, one(vec![t]));
        assert!(r.is_ok(), "the backend keeps serving after a panic");
    }
}
