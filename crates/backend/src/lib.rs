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
    if requests.len() == 1 {
        // One request: its buffers go to the backend as they are.
        let t = std::time::Instant::now();
        let out = tracing::debug_span!("compute_infer")
            .in_scope(|| backend.infer(requests.pop().unwrap_or_default(), &outputs))?;
        timings.compute_infer = t.elapsed();
        return Ok(vec![out]);
    }
    let t = std::time::Instant::now();
    let inputs = tracing::debug_span!("compute_input").in_scope(|| batch::concat_inputs(&requests))?;
    drop(requests);
    timings.compute_input = t.elapsed();
    let t = std::time::Instant::now();
    let out = tracing::debug_span!("compute_infer").in_scope(|| backend.infer(inputs, &outputs))?;
    timings.compute_infer = t.elapsed();
    let t = std::time::Instant::now();
    let split =
        tracing::debug_span!("compute_output").in_scope(|| batch::split_outputs(out, &batch_sizes))?;
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
