//! Per-model scheduling between the gRPC service and a model's instances, with Triton's
//! semantics: the default scheduler (FIFO, one request per execution) and the dynamic batcher
//! (preferred sizes, max batch size, max queue delay), priority levels, queue policies (bounded
//! queues, timeouts with REJECT or DELAY), cancellation, and per-model statistics.
//!
//! Layout: [`policy`] reads the config, [`state`] decides batches (plain, unit-tested),
//! [`stats`] counts, and [`Scheduler`] is the handle plus the batching task that drives them.
//! This crate knows nothing of gRPC servers or ONNX: it moves `Tensor`s to an `Instance`.

pub mod policy;
pub mod state;
pub mod stats;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tern_backend::{BackendError, BatchJob, Instance, batch::select_outputs};
use tern_core::{RequestError, Tensor};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::Instrument;

pub use policy::SchedulerConfig;
use state::{BatchState, Pending};
pub use stats::{FailureReason, ModelStats, StatsSnapshot};

/// One request for the scheduler: inputs already validated against the model.
#[derive(Debug, Clone)]
pub struct InferJob {
    pub inputs: Vec<Tensor>,
    /// Rows in the request's batch dimension; 0 when the model does not batch.
    pub rows: u32,
    /// Outputs wanted, in order; empty means all.
    pub outputs: Vec<String>,
    /// Triton's `priority` request parameter (0 = the model's default level).
    pub priority: u64,
    /// Triton's `timeout` request parameter, honoured when the queue policy allows it.
    pub timeout: Option<Duration>,
}

type Reply = oneshot::Sender<Result<Vec<Tensor>, RequestError>>;

struct Item {
    /// Arrival order, for `preserve_ordering`.
    seq: u64,
    /// The request's span, and its `queue` child, closed when the request is dispatched.
    span: tracing::Span,
    queue_span: tracing::Span,
    inputs: Vec<Tensor>,
    outputs: Vec<String>,
    reply: Reply,
}

/// Responses held back until every earlier request has its answer (`preserve_ordering`).
#[derive(Default)]
struct Reorder {
    next_seq: u64,
    next_release: u64,
    done: std::collections::BTreeMap<u64, (Reply, Result<Vec<Tensor>, RequestError>)>,
}

struct Shared {
    model: String,
    state: Mutex<BatchState<Item>>,
    notify: Notify,
    stats: Arc<ModelStats>,
    closed: AtomicBool,
    preserve_ordering: bool,
    order: Mutex<Reorder>,
}

impl Shared {
    /// Answers one request: at once, or in arrival order with `preserve_ordering`.
    fn respond(&self, seq: u64, reply: Reply, result: Result<Vec<Tensor>, RequestError>) {
        if !self.preserve_ordering {
            let _ = reply.send(result);
            return;
        }
        let Ok(mut order) = self.order.lock() else { return };
        order.done.insert(seq, (reply, result));
        loop {
            let next = order.next_release;
            let Some((reply, result)) = order.done.remove(&next) else { break };
            order.next_release += 1;
            // A cancelled caller is gone; its turn passes all the same.
            let _ = reply.send(result);
        }
    }
}

/// The scheduler of one model version. Dropping it lets the queued requests finish, then ends
/// its batching task.
pub struct Scheduler {
    shared: Arc<Shared>,
    config: SchedulerConfig,
    instance_finished: tern_backend::Finished,
}

impl Scheduler {
    /// Starts the batching task on `runtime`, feeding `instance`.
    pub fn start(
        model: String,
        config: SchedulerConfig,
        instance: Instance,
        runtime: &tokio::runtime::Handle,
    ) -> Scheduler {
        let shared = Arc::new(Shared {
            model,
            state: Mutex::new(BatchState::new(config.clone())),
            notify: Notify::new(),
            stats: Arc::new(ModelStats::new(config.max_batch_size)),
            closed: AtomicBool::new(false),
            preserve_ordering: config.preserve_ordering,
            order: Mutex::new(Reorder::default()),
        });
        let instance_finished = instance.finished();
        runtime.spawn(batch_task(shared.clone(), instance, config.max_batch_size > 0));
        Scheduler { shared, config, instance_finished }
    }

    /// Resolves when this model's instances have ended (after the scheduler is dropped and
    /// its queued requests are done): its sessions are freed by then.
    pub fn finished(&self) -> tern_backend::Finished {
        self.instance_finished.clone()
    }

    pub fn stats(&self) -> &Arc<ModelStats> {
        &self.shared.stats
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues the request and waits for its outputs. Dropping the future cancels it: a request
    /// still queued is then removed and never executed.
    pub async fn infer(&self, job: InferJob) -> Result<Vec<Tensor>, RequestError> {
        let enqueued = Instant::now();
        let level = self.config.level(job.priority);
        let policy = self.config.policy(level);
        let timeout = match job.timeout {
            Some(t) if policy.allow_timeout_override => Some(t),
            _ => policy.default_timeout,
        };
        let mut named: Vec<&Tensor> = job.inputs.iter().collect();
        named.sort_by(|a, b| a.name.cmp(&b.name));
        let batching = self.config.max_batch_size > 0;
        let shape_key = named
            .iter()
            .map(|t| if batching { t.shape.get(1..).unwrap_or(&[]).to_vec() } else { t.shape.clone() })
            .collect();
        let (reply, reply_rx) = oneshot::channel();
        let mut pending = Pending {
            item: Item {
                seq: 0,
                span: tracing::Span::current(),
                queue_span: tracing::info_span!("queue"),
                inputs: job.inputs,
                outputs: job.outputs,
                reply,
            },
            rows: job.rows,
            shape_key,
            level,
            enqueued,
            deadline: timeout.map(|t| enqueued + t),
        };
        let pushed = match self.shared.state.lock() {
            Ok(mut state) => {
                // Numbered under the queue lock, so the numbers follow arrival order; a
                // rejected request takes no number.
                let mut order = self.shared.order.lock().unwrap_or_else(|e| e.into_inner());
                pending.item.seq = order.next_seq;
                let ok = state.push(pending).is_ok();
                if ok {
                    order.next_seq += 1;
                }
                ok
            }
            Err(_) => false,
        };
        if !pushed {
            self.shared.stats.record_failure(FailureReason::Rejected, enqueued.elapsed());
            return Err(RequestError::Unavailable(format!(
                "Exceeds maximum queue size for model '{}'",
                self.shared.model
            )));
        }
        self.shared.stats.pending.fetch_add(1, Relaxed);
        self.shared.notify.notify_one();
        reply_rx.await.unwrap_or_else(|_| {
            Err(RequestError::Unavailable(format!(
                "model '{}' stopped before running the request",
                self.shared.model
            )))
        })
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.closed.store(true, Relaxed);
        self.shared.notify.notify_one();
    }
}

/// A pending precise sleep (see [`sleep_until_precise`]).
type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Forms batches whenever an instance is free: while all are busy, requests keep queueing and
/// the next batch grows, so it is sealed at the moment an instance can take it. Busy or not,
/// cancelled and timed-out requests leave the queue as soon as that happens.
async fn batch_task(shared: Arc<Shared>, instance: Instance, batching: bool) {
    let idle = Arc::new(Semaphore::new(instance.count().max(1)));
    let mut permit: Option<OwnedSemaphorePermit> = None;
    // The pending wake-up, kept across iterations while its instant stays the same: every
    // arrival wakes this loop, and starting a new precise sleep each time would put one
    // blocking-pool thread to sleep per request instead of one per batch.
    let mut timer: Option<(Instant, Sleep)> = None;
    loop {
        if permit.is_none() {
            permit = idle.clone().try_acquire_owned().ok();
        }
        let notified = shared.notify.notified();
        let (next, empty) = match shared.state.lock() {
            Ok(mut state) => {
                let next = state.next(Instant::now(), permit.is_some(), |item: &Item| item.reply.is_closed());
                (next, state.is_empty())
            }
            Err(_) => return,
        };
        let removed = (next.dropped.len() + next.run.len()) as u64;
        shared.stats.pending.fetch_sub(removed, Relaxed);
        for (p, reason) in next.dropped {
            shared.stats.record_failure(reason, p.enqueued.elapsed());
            let message = match reason {
                FailureReason::Rejected => format!("Request timeout expired for model '{}'", shared.model),
                _ => format!("request for model '{}' was cancelled", shared.model),
            };
            shared.respond(p.item.seq, p.item.reply, Err(RequestError::Unavailable(message)));
        }
        if !next.run.is_empty()
            && let Some(p) = permit.take()
        {
            tokio::spawn(execute(shared.clone(), instance.clone(), next.run, batching, p));
            continue;
        }
        if empty && shared.closed.load(Relaxed) {
            return;
        }
        match next.wake_at {
            Some(at) if timer.as_ref().map(|(t, _)| *t) != Some(at) => {
                timer = Some((at, Box::pin(sleep_until_precise(at))));
            }
            Some(_) => {}
            None => timer = None,
        }
        let wake = async {
            match timer.as_mut() {
                Some((_, sleep)) => sleep.as_mut().await,
                None => std::future::pending().await,
            }
        };
        let free = async {
            match permit {
                Some(_) => std::future::pending().await,
                None => idle.clone().acquire_owned().await.ok(),
            }
        };
        let mut fired = false;
        tokio::select! {
            _ = notified => {}
            _ = wake => fired = true,
            p = free => permit = p,
        }
        if fired {
            timer = None;
        }
    }
}

/// Tokio's timer has a 1 ms resolution, which would turn a 100 µs `max_queue_delay` into a
/// millisecond of added latency. Waits shorter than that sleep on a blocking-pool thread
/// instead (precise to tens of microseconds on Linux); longer ones use the timer.
async fn sleep_until_precise(at: Instant) {
    let left = at.saturating_duration_since(Instant::now());
    if left >= Duration::from_millis(2) {
        tokio::time::sleep_until(at.into()).await;
    } else if !left.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(left)).await;
    }
}

async fn execute(
    shared: Arc<Shared>,
    instance: Instance,
    batch: Vec<Pending<Item>>,
    batching: bool,
    permit: OwnedSemaphorePermit,
) {
    // One output list for the whole execution: the common one, or all outputs when the
    // requests asked for different ones (each then keeps its own).
    let common = batch.first().map(|p| p.item.outputs.clone()).unwrap_or_default();
    let outputs = if batch.iter().all(|p| p.item.outputs == common) { common } else { Vec::new() };
    let rows: Vec<u32> = batch.iter().map(|p| p.rows).collect();
    let batch_size = if batching { rows.iter().sum() } else { 1 };
    let mut waiting = Vec::with_capacity(batch.len());
    let mut requests = Vec::with_capacity(batch.len());
    // The execution's span follows from every request it serves; their queue spans end here.
    let batch_span = tracing::info_span!("execute", model = %shared.model, batch_size);
    for p in &batch {
        batch_span.follows_from(&p.item.span);
    }
    for p in batch {
        drop(p.item.queue_span);
        requests.push(p.item.inputs);
        waiting.push((p.enqueued, p.item.seq, p.item.outputs, p.item.reply));
    }
    let (result, t) = instance
        .run_batch(BatchJob { requests, rows, outputs: outputs.clone() })
        .instrument(batch_span)
        .await;
    drop(permit);
    let stats = &shared.stats;
    match result {
        Ok(per_request) => {
            stats.record_execution(batch_size, t.compute_input, t.compute_infer, t.compute_output);
            for ((enqueued, seq, wanted, reply), outs) in waiting.into_iter().zip(per_request) {
                let outs = if wanted == outputs { Ok(outs) } else { select_outputs(&outs, &wanted) };
                let queue = t.started.map_or(Duration::ZERO, |s| s.saturating_duration_since(enqueued));
                match outs {
                    Ok(outs) => {
                        stats.record_success(
                            queue,
                            t.compute_input,
                            t.compute_infer,
                            t.compute_output,
                            enqueued.elapsed(),
                        );
                        shared.respond(seq, reply, Ok(outs));
                    }
                    Err(e) => {
                        stats.record_failure(FailureReason::Backend, enqueued.elapsed());
                        shared.respond(seq, reply, Err(backend_error(&shared.model, e).1));
                    }
                }
            }
        }
        Err(e) => {
            let (reason, error) = backend_error(&shared.model, e);
            if reason == FailureReason::Backend {
                tracing::error!(model = %shared.model, error = %error, "execution failed");
            }
            for (enqueued, seq, _, reply) in waiting {
                stats.record_failure(reason, enqueued.elapsed());
                shared.respond(seq, reply, Err(error.clone()));
            }
        }
    }
}

fn backend_error(model: &str, e: BackendError) -> (FailureReason, RequestError) {
    match e {
        BackendError::InvalidInput(m) => {
            (FailureReason::Other, RequestError::InvalidArgument(format!("model '{model}': {m}")))
        }
        BackendError::Stopped(m) => (FailureReason::Other, RequestError::Unavailable(m)),
        BackendError::Load(m) | BackendError::Execution(m) => {
            (FailureReason::Backend, RequestError::Internal(format!("model '{model}': {m}")))
        }
    }
}
