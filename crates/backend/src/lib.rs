//! The seam between the server and whatever runs a model. A [`Backend`] is synchronous and
//! owned by exactly one OS thread (ONNX Runtime's `Session::run` takes `&mut self`, and a
//! blocking call must not stall the async runtime); [`Instance`] is that thread, fed by a
//! channel of jobs and answering each on a oneshot. This crate knows nothing of gRPC, queues
//! or ONNX.

pub mod batch;

use std::sync::{Arc, Mutex};
use std::thread;

use tern_core::Tensor;
use tokio::sync::{mpsc, oneshot};

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
    /// The instance thread is gone (model unloaded or the thread panicked).
    #[error("model instance '{0}' is not running")]
    Stopped(String),
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

/// Several requests run as one execution. Each request's inputs carry their own rows in the
/// first dimension when the model batches (`rows[i]`; 0 when it does not, and then there is
/// exactly one request).
pub struct BatchJob {
    pub requests: Vec<Vec<Tensor>>,
    pub rows: Vec<u32>,
    /// Outputs to compute for every request; empty means all.
    pub outputs: Vec<String>,
}

/// The result of a [`BatchJob`]: each request's outputs, in request order.
pub type BatchResult = Result<Vec<Vec<Tensor>>, BackendError>;

struct Job {
    batch: BatchJob,
    span: tracing::Span,
    reply: oneshot::Sender<(BatchResult, ExecTimings)>,
}

/// See [`Instance::finished`].
#[derive(Clone)]
pub struct Finished(tokio::sync::watch::Receiver<usize>);

impl Finished {
    /// Resolves when every instance thread has ended.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|n| *n == 0).await;
    }
}

/// The instances of one model: one dedicated OS thread per [`Backend`], all serving one FIFO
/// queue, so a job goes to whichever instance is free first. Cloning the handle is cheap; the
/// threads end when the last handle is dropped and the jobs already queued are done.
#[derive(Clone)]
pub struct Instance {
    name: String,
    count: usize,
    jobs_tx: mpsc::Sender<Job>,
    /// How many instance threads are still running.
    live_rx: tokio::sync::watch::Receiver<usize>,
}

impl Instance {
    /// Starts one thread for `backend`. `queue` bounds how many jobs may wait for it.
    pub fn spawn(name: String, backend: Box<dyn Backend>, queue: usize) -> std::io::Result<Instance> {
        Instance::spawn_group(name, vec![backend], queue)
    }

    /// Starts one thread per backend (config `instance_group.count`), all serving one queue.
    pub fn spawn_group(
        name: String,
        backends: Vec<Box<dyn Backend>>,
        queue: usize,
    ) -> std::io::Result<Instance> {
        let (jobs_tx, jobs_rx) = mpsc::channel(queue.max(1));
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let count = backends.len();
        let (live_tx, live_rx) = tokio::sync::watch::channel(count);
        let live_tx = Arc::new(live_tx);
        for (i, backend) in backends.into_iter().enumerate() {
            let jobs_rx = jobs_rx.clone();
            let live_tx = live_tx.clone();
            thread::Builder::new().name(format!("tern-{name}-{i}")).spawn(move || {
                instance_task(backend, &jobs_rx);
                // The backend (and its session) has been dropped by now.
                live_tx.send_modify(|n| *n = n.saturating_sub(1));
            })?;
        }
        Ok(Instance { name, count, jobs_tx, live_rx })
    }

    /// A signal that the instance threads have ended and dropped their backends (once the last
    /// handle is gone and the queued jobs are done). Holding it does not keep them alive.
    pub fn finished(&self) -> Finished {
        Finished(self.live_rx.clone())
    }

    /// How many instances serve the queue.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Runs one request alone and waits for its result without blocking the async runtime.
    pub async fn infer(
        &self,
        inputs: Vec<Tensor>,
        outputs: Vec<String>,
    ) -> (Result<Vec<Tensor>, BackendError>, ExecTimings) {
        let (result, timings) =
            self.run_batch(BatchJob { requests: vec![inputs], rows: vec![0], outputs }).await;
        (result.map(|mut r| r.pop().unwrap_or_default()), timings)
    }

    /// Runs several requests as one execution.
    pub async fn run_batch(&self, batch: BatchJob) -> (BatchResult, ExecTimings) {
        let (reply, reply_rx) = oneshot::channel();
        let job = Job { batch, span: tracing::Span::current(), reply };
        if self.jobs_tx.send(job).await.is_err() {
            return (Err(BackendError::Stopped(self.name.clone())), ExecTimings::default());
        }
        match reply_rx.await {
            Ok(r) => r,
            Err(_) => (Err(BackendError::Stopped(self.name.clone())), ExecTimings::default()),
        }
    }
}

fn instance_task(mut backend: Box<dyn Backend>, jobs_rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // The lock is held only while this thread waits for the next job: the other instances
        // wait on the lock meanwhile, so each job goes to exactly one free instance.
        let job = {
            let Ok(mut rx) = jobs_rx.lock() else { return };
            rx.blocking_recv()
        };
        let Some(job) = job else { return };
        let _enter = job.span.enter();
        let mut timings = ExecTimings { started: Some(std::time::Instant::now()), ..Default::default() };
        // A panic inside a backend must not take the server down: report it to the callers and
        // keep the thread serving.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            execute(backend.as_mut(), job.batch, &mut timings)
        }))
        .unwrap_or_else(|_| Err(BackendError::Execution("backend panicked while executing".into())));
        // The callers may have gone away (cancelled); nothing to do then.
        let _ = job.reply.send((result, timings));
    }
}

fn execute(backend: &mut dyn Backend, job: BatchJob, timings: &mut ExecTimings) -> BatchResult {
    let BatchJob { mut requests, rows, outputs } = job;
    if requests.len() == 1 {
        // One request: its buffers go to the backend as they are.
        let t = std::time::Instant::now();
        let out = tracing::info_span!("compute_infer")
            .in_scope(|| backend.infer(requests.pop().unwrap_or_default(), &outputs))?;
        timings.compute_infer = t.elapsed();
        return Ok(vec![out]);
    }
    let t = std::time::Instant::now();
    let inputs = tracing::info_span!("compute_input").in_scope(|| batch::concat_inputs(&requests))?;
    drop(requests);
    timings.compute_input = t.elapsed();
    let t = std::time::Instant::now();
    let out = tracing::info_span!("compute_infer").in_scope(|| backend.infer(inputs, &outputs))?;
    timings.compute_infer = t.elapsed();
    let t = std::time::Instant::now();
    let split = tracing::info_span!("compute_output").in_scope(|| batch::split_outputs(out, &rows))?;
    timings.compute_output = t.elapsed();
    Ok(split)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tern_core::DataType;

    /// Echoes its inputs back, renamed; a stand-in for a real model in thread-plumbing tests.
    struct EchoBackend;
    impl Backend for EchoBackend {
        fn infer(&mut self, inputs: Vec<Tensor>, _outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
            if inputs.is_empty() {
                panic!("no inputs");
            }
            Ok(inputs.into_iter().map(|t| Tensor { name: format!("out_{}", t.name), ..t }).collect())
        }
    }

    #[tokio::test]
    async fn instance_runs_jobs_and_survives_a_panic() {
        let inst = Instance::spawn("echo".into(), Box::new(EchoBackend), 4).expect("spawn");
        let t = Tensor {
            name: "x".into(),
            datatype: DataType::Uint8,
            shape: vec![2],
            data: Bytes::from_static(&[1, 2]),
        };
        let (r, timings) = inst.infer(vec![t.clone()], vec![]).await;
        let out = r.expect("echo");
        assert_eq!(out[0].name, "out_x");
        assert_eq!(out[0].data, t.data);
        assert!(timings.started.is_some());
        let (r, _) = inst.infer(vec![], vec![]).await;
        assert!(matches!(r, Err(BackendError::Execution(_))));
        let (r, _) = inst.infer(vec![t], vec![]).await;
        assert!(r.is_ok(), "thread keeps serving after a panic");
    }

    /// Blocks until released; shows that a group runs jobs on several instances at once.
    struct GateBackend(Arc<std::sync::Barrier>);
    impl Backend for GateBackend {
        fn infer(&mut self, inputs: Vec<Tensor>, _: &[String]) -> Result<Vec<Tensor>, BackendError> {
            self.0.wait();
            Ok(inputs)
        }
    }

    #[tokio::test]
    async fn a_group_runs_jobs_in_parallel() {
        // Both jobs must be inside `infer` at the same time for the barrier to open.
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let backends: Vec<Box<dyn Backend>> =
            vec![Box::new(GateBackend(barrier.clone())), Box::new(GateBackend(barrier))];
        let group = Instance::spawn_group("gate".into(), backends, 4).expect("spawn");
        let both = async { tokio::join!(group.infer(vec![], vec![]), group.infer(vec![], vec![])) };
        let (a, b) = tokio::time::timeout(std::time::Duration::from_secs(10), both)
            .await
            .expect("two instances ran at once");
        assert!(a.0.is_ok() && b.0.is_ok());
    }
}
