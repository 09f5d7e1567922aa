//! The instance threads (each takes the next batch from its model's queue, runs it on its
//! backend and answers the batch's requests from the same thread) and the janitor that answers
//! queue timeouts while every instance is busy.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tern_backend::{Backend, BackendError, BatchJob, batch::select_outputs};
use tern_core::{FailureReason, RequestError};

use crate::state::Pending;
use crate::{Answer, Answers, Item, Shared};

/// One instance: whenever it is free it takes the next batch from the queue, runs it and answers
/// its requests. While it runs, requests keep queueing, so the next batch is sealed the moment
/// the instance can take it. With nothing to run it sleeps until the state's next decision time
/// (the oldest request's max queue delay, or a queue timeout) or until an arrival wakes it.
pub(crate) fn instance_thread(
    shared: &Shared,
    mut backend: Box<dyn Backend>,
    batching: bool,
    answers: &Answers,
) {
    let mut queue = shared.lock();
    // With `queue_delay: auto`: the batch just run (rows, taken at), to time it from taking it to
    // being back here, free, with the lock held anyway (no extra lock, no extra clock read).
    let auto = queue.batch.auto_delay().is_some();
    let mut busy: Option<(u32, Instant)> = None;
    loop {
        let now = Instant::now();
        if let Some((rows, since)) = busy.take() {
            queue.batch.executed(rows, now.saturating_duration_since(since));
        }
        let next = queue.batch.next(now, true);
        if auto && !next.run.is_empty() {
            let chosen = queue.batch.auto_delay().map_or(Duration::ZERO, |c| c.last_delay());
            shared.stats.set_queue_delay(chosen);
        }
        if !next.run.is_empty() || !next.dropped.is_empty() {
            drop(queue);
            shared.answer_dropped(next.dropped);
            if !next.run.is_empty() {
                shared.stats.pending.fetch_sub(next.run.len() as u64, Relaxed);
                if auto {
                    busy = Some((next.run.iter().map(|p| p.batch_size.max(1)).sum(), now));
                }
                answers.deliver(execute(shared, backend.as_mut(), next.run, batching));
            }
            queue = shared.lock();
            continue;
        }
        if queue.closed && queue.batch.is_empty() {
            // The janitor ends too once it sees the queue closed and empty.
            drop(queue);
            shared.janitor.notify_one();
            return;
        }
        queue.idle += 1;
        // std's condvar waits on a futex with the kernel's high-resolution timers, precise to
        // tens of microseconds: tokio's 1 ms timer would stretch a 100 µs max_queue_delay.
        queue = match next.wake_at {
            Some(at) => match shared.work.wait_timeout(queue, at.saturating_duration_since(now)) {
                Ok((q, _)) => q,
                Err(e) => e.into_inner().0,
            },
            None => shared.work.wait(queue).unwrap_or_else(|e| e.into_inner()),
        };
        queue.idle -= 1;
        // Woken or timed out, this instance looks at the queue now: a pending wake-up is spent.
        queue.wakes_pending = queue.wakes_pending.saturating_sub(1);
    }
}

/// Answers queue timeouts while every instance is busy (an idle instance would find them itself
/// only when it next looks). Sleeps until the earliest queue timeout or until woken by an
/// arrival with a timeout or the queue's closing.
pub(crate) async fn janitor(shared: Arc<Shared>) {
    loop {
        let notified = shared.janitor.notified();
        let (dropped, wake_at, done) = {
            let mut queue = shared.lock();
            let next = queue.batch.next(Instant::now(), false);
            (next.dropped, next.wake_at, queue.closed && queue.batch.is_empty())
        };
        shared.answer_dropped(dropped);
        if done {
            return;
        }
        match wake_at {
            Some(at) => {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => notified.await,
        }
    }
}

/// Runs one batch on the calling instance thread and returns the answers to its requests.
fn execute(
    shared: &Shared,
    backend: &mut dyn Backend,
    batch: Vec<Pending<Item>>,
    batching: bool,
) -> Vec<Answer> {
    let outputs = batch_outputs(&batch);
    let batch_sizes: Vec<u32> = batch.iter().map(|p| p.batch_size).collect();
    let batch_size = if batching { batch_sizes.iter().sum() } else { 1 };
    let mut waiting = Vec::with_capacity(batch.len());
    let mut requests = Vec::with_capacity(batch.len());
    // The execution's span follows from every request it serves; their queue spans end here.
    let batch_span = tracing::debug_span!("execute", model = %shared.model, batch_size);
    for p in &batch {
        batch_span.follows_from(&p.item.span);
    }
    for p in batch {
        drop(p.item.queue_span);
        requests.push(p.item.inputs);
        waiting.push((p.enqueued, p.item.seq, p.item.outputs, p.item.reply));
    }
    let (result, t) = batch_span.in_scope(|| {
        tern_backend::run(backend, BatchJob { requests, batch_sizes, outputs: outputs.clone() })
    });
    // Closed before the answers go out: a client that has its answer may count on the
    // execution's span being complete (exported traces).
    drop(batch_span);
    let stats = &shared.stats;
    let mut out = Vec::with_capacity(waiting.len());
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
                        shared.respond(seq, reply, Ok(outs), &mut out);
                    }
                    Err(e) => {
                        stats.record_failure(FailureReason::Backend, enqueued.elapsed());
                        shared.respond(seq, reply, Err(backend_error(&shared.model, e).1), &mut out);
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
                shared.respond(seq, reply, Err(error.clone()), &mut out);
            }
        }
    }
    out
}

/// One output list for a whole execution: the common one, or, when the requests asked for
/// different ones, the union in first-asked order (each request then keeps its own). Never
/// "all of the model's outputs" on behalf of requests that named some: a model output no config
/// lists may have no batch dimension, and must be neither computed nor split across requests.
/// Triton's ONNX Runtime backend likewise binds only the config's outputs for every batch
/// (onnxruntime_backend src/onnxruntime.cc, ModelInstanceState::ProcessRequests over
/// ModelState::ModelOutputs, which is read from the config's `output` list).
fn batch_outputs(batch: &[Pending<Item>]) -> Vec<String> {
    let common = batch.first().map(|p| p.item.outputs.as_slice()).unwrap_or_default();
    if batch.iter().all(|p| p.item.outputs == common) {
        return common.to_vec();
    }
    // A request asking for nothing asks for everything (only library callers do: the node
    // names the config's outputs for such a request).
    if batch.iter().any(|p| p.item.outputs.is_empty()) {
        return Vec::new();
    }
    let mut union: Vec<String> = Vec::new();
    for name in batch.iter().flat_map(|p| &p.item.outputs) {
        if !union.contains(name) {
            union.push(name.clone());
        }
    }
    union
}

pub(crate) fn backend_error(model: &str, e: BackendError) -> (FailureReason, RequestError) {
    match e {
        BackendError::InvalidInput(m) => {
            (FailureReason::Other, RequestError::InvalidArgument(format!("model '{model}': {m}")))
        }
        BackendError::Load(m) | BackendError::Execution(m) => {
            (FailureReason::Backend, RequestError::Internal(format!("model '{model}': {m}")))
        }
    }
}
