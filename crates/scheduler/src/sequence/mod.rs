//! Triton's sequence batcher, for stateful models (`sequence_batching` in the config): the
//! requests of one sequence (one correlation ID, `sequence_id`) go to the same instance, one at a
//! time and in order, each with the control tensors the config names (START, END, READY,
//! CORRID) and the sequence's implicit state (`state`), which the model's state output updates
//! after every run.
//!
//! [`config`] reads the settings, [`slots`] keeps the slots and backlog as plain state (unit
//! tested), [`tensors`] builds the control, state and null-row tensors, and [`Sequencer`] runs
//! them: one thread per instance forming that instance's batches, and a reaper task that frees
//! the slots of idle sequences. Like the rest of the scheduler it knows nothing of ONNX: the
//! control and state tensors are plain inputs to the [`Backend`].

pub mod config;
pub mod slots;
mod tensors;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tern_backend::{Backend, BatchJob, batch::select_outputs};
use tern_core::{CorrelationId, DataType, FailureReason, RequestError, Tensor};
use tokio::sync::{Notify, oneshot};

use crate::instance::backend_error;
use crate::{Answer, Answers, InferJob, ModelStats};
use config::ControlKind;
pub use config::SequenceConfig;
use slots::{Cancellable, Entry, Row, SlotTable};
pub use tensors::warmup_inputs;

/// A request waiting in a slot or backlog.
pub(crate) struct Item {
    span: tracing::Span,
    inputs: Vec<Tensor>,
    outputs: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Tensor>, RequestError>>,
}

impl Cancellable for Item {
    /// The caller's future was dropped: its client cancelled the call, its deadline passed, or
    /// its stream or HTTP connection closed (Triton's frontends cancel the request on each).
    fn is_cancelled(&self) -> bool {
        self.reply.is_closed()
    }
}

struct Table {
    slots: SlotTable<Item>,
    closed: bool,
}

/// The sequence batcher of one model version.
pub(crate) struct Sequencer {
    model: String,
    config: SequenceConfig,
    batching: bool,
    table: Mutex<Table>,
    /// One per instance: its slots may have work, or the model is closing.
    work: Vec<Condvar>,
    reaper: Notify,
    stats: Arc<ModelStats>,
}

impl Sequencer {
    pub(crate) fn new(
        model: String,
        config: SequenceConfig,
        max_batch_size: u32,
        instances: usize,
        stats: Arc<ModelStats>,
    ) -> Sequencer {
        let rows = max_batch_size.max(1) as usize;
        let slots = SlotTable::new(
            config.strategy.clone(),
            config.slots_per_instance,
            rows,
            config.max_sequence_idle,
            instances,
        );
        Sequencer {
            model,
            batching: max_batch_size > 0,
            table: Mutex::new(Table { slots, closed: false }),
            work: (0..instances).map(|_| Condvar::new()).collect(),
            reaper: Notify::new(),
            stats,
            config,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn invalid(&self, message: String) -> RequestError {
        self.stats.record_failure(FailureReason::Other, Duration::ZERO);
        RequestError::InvalidArgument(message)
    }

    /// Queues one request of a sequence and waits for its outputs. Triton's checks come first
    /// (core src/sequence_batch_scheduler/sequence_batch_scheduler.cc `Enqueue`,
    /// sequence_utils.h, infer_request.cc `ValidateCorrelationId`), in its words.
    ///
    /// The request's `priority` is accepted and has no effect, as in Triton: a model without
    /// `dynamic_batching` has no priority levels, so `InferenceRequest::SetPriority` turns every
    /// priority into the default (core src/model.cc, infer_request.cc), and the Oldest
    /// strategy's own dynamic batcher is made with none (`DynamicBatchScheduler::Create`).
    /// Its `timeout` bounds only a wait in the backlog ([`slots`]).
    pub(crate) async fn infer(&self, job: InferJob) -> Result<Vec<Tensor>, RequestError> {
        let enqueued = Instant::now();
        let model = &self.model;
        if job.batch_size > 1 {
            return Err(self.invalid(format!(
                "inference request to model '{model}' must specify batch-size 1 due to requirements \
                 of sequence batcher"
            )));
        }
        let sequence = job.sequence;
        if !sequence.id.in_sequence() {
            return Err(self.invalid(format!(
                "inference request to model '{model}' must specify a non-zero or non-empty correlation ID"
            )));
        }
        if let Some(c) = self.config.control(ControlKind::CorrId) {
            let given = match sequence.id {
                CorrelationId::Str(_) if c.datatype != DataType::Bytes => Some("BYTES"),
                CorrelationId::Uint(_) if c.datatype == DataType::Bytes => Some("UINT64"),
                _ => None,
            };
            if let Some(given) = given {
                return Err(self.invalid(format!(
                    "sequence batching control '{}' data-type is '{given}', but model '{model}' \
                     expects '{}'",
                    c.name, c.datatype
                )));
            }
        }
        let shape_key = {
            let mut named: Vec<&Tensor> = job.inputs.iter().collect();
            named.sort_by(|a, b| a.name.cmp(&b.name));
            named.iter().map(|t| t.shape.clone()).collect()
        };
        let (reply, reply_rx) = oneshot::channel();
        let id = sequence.id.clone();
        // Triton: a timeout of 0 is none.
        let timeout = job.timeout.filter(|t| !t.is_zero());
        let entry = Entry {
            item: Item { span: tracing::Span::current(), inputs: job.inputs, outputs: job.outputs, reply },
            id: sequence.id,
            start: sequence.start,
            end: sequence.end,
            enqueued,
            shape_key,
            timeout,
        };
        let placed = {
            let mut table = self.lock();
            if table.closed { None } else { Some(table.slots.enqueue(entry, enqueued)) }
        };
        match placed {
            None => {
                return Err(RequestError::Unavailable(format!(
                    "Server is stopping, scheduler for model '{model}' has stopped accepting new inference requests"
                )));
            }
            Some(Err(_)) => {
                return Err(self.invalid(format!(
                    "inference request for sequence {id} to model '{model}' must specify the START \
                     flag on the first request of the sequence"
                )));
            }
            Some(Ok(placed)) => {
                self.stats.pending.fetch_add(1, Relaxed);
                if let slots::Placed::Slot(instance) = placed {
                    self.work[instance].notify_one();
                }
                // The reaper learns of a new sequence's idle deadline and of a backlog deadline.
                if sequence.start || (placed == slots::Placed::Backlog && timeout.is_some()) {
                    self.reaper.notify_one();
                }
            }
        }
        // A caller that gives up (this future dropped) leaves a closed reply behind: its request,
        // once at the head of its slot, cancels the sequence ([`slots`]).
        reply_rx.await.unwrap_or_else(|_| {
            Err(RequestError::Unavailable(format!("model '{model}' stopped before running the request")))
        })
    }

    /// Stops taking new requests; the backlog (which may never get a slot) is answered now.
    pub(crate) fn close(&self) {
        let drained = {
            let mut table = self.lock();
            table.closed = true;
            table.slots.drain_backlog()
        };
        self.stats.pending.fetch_sub(drained.len() as u64, Relaxed);
        for e in drained {
            let _ = e.item.reply.send(Err(RequestError::Unavailable(format!(
                "model '{}' stopped before running the request",
                self.model
            ))));
        }
        for c in &self.work {
            c.notify_all();
        }
        self.reaper.notify_one();
    }

    /// One instance: runs the batches of its own slots until the model closes and its slots
    /// are empty.
    pub(crate) fn instance_thread(&self, instance: usize, mut backend: Box<dyn Backend>, answers: &Answers) {
        let mut table = self.lock();
        loop {
            let now = Instant::now();
            let take = table.slots.take(instance, now);
            if !take.rows.is_empty() || !take.dropped.is_empty() {
                drop(table);
                self.answer_cancelled(take.dropped);
                if !take.rows.is_empty() {
                    let real = take.rows.iter().filter(|r| matches!(r, Row::Request { .. })).count();
                    self.stats.pending.fetch_sub(real as u64, Relaxed);
                    answers.deliver(self.execute(instance, backend.as_mut(), take.rows));
                }
                table = self.lock();
                continue;
            }
            if table.closed && table.slots.instance_idle(instance) {
                return;
            }
            table = match take.wake_at {
                Some(at) => {
                    match self.work[instance].wait_timeout(table, at.saturating_duration_since(now)) {
                        Ok((t, _)) => t,
                        Err(e) => e.into_inner().0,
                    }
                }
                None => self.work[instance].wait(table).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    /// Answers the requests of cancelled sequences: CANCELLED (Triton's `CancelRequests`, which
    /// gives no message; this one says which sequence).
    fn answer_cancelled(&self, dropped: Vec<Entry<Item>>) {
        self.stats.pending.fetch_sub(dropped.len() as u64, Relaxed);
        for e in dropped {
            self.stats.record_failure(FailureReason::Canceled, e.enqueued.elapsed());
            let _ = e.item.reply.send(Err(RequestError::Cancelled(format!(
                "sequence {} to model '{}' was cancelled",
                e.id, self.model
            ))));
        }
    }

    /// Refuses the requests of backlog queues whose timeout passed, in the reaper's words
    /// (UNAVAILABLE, counted as REJECTED).
    fn answer_expired(&self, expired: Vec<Entry<Item>>) {
        self.stats.pending.fetch_sub(expired.len() as u64, Relaxed);
        for e in expired {
            self.stats.record_failure(FailureReason::Rejected, e.enqueued.elapsed());
            let _ = e.item.reply.send(Err(RequestError::Unavailable(
                "timeout of the corresponding sequence has been expired".into(),
            )));
        }
    }

    /// Frees the slots of idle sequences and refuses expired backlog queues (Triton's reaper
    /// thread) until the model closes.
    pub(crate) async fn reaper_task(self: Arc<Sequencer>) {
        loop {
            let notified = self.reaper.notified();
            let (reaped, closed) = {
                let mut table = self.lock();
                (table.slots.reap(Instant::now()), table.closed)
            };
            let slots::Reaped { wake, next, expired } = reaped;
            self.answer_expired(expired);
            for instance in wake {
                self.work[instance].notify_one();
            }
            if closed {
                return;
            }
            match next {
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

    /// Runs one batch: each row's inputs with its controls and state; a null row with zeros.
    /// Stores each sequence's state output back in its slot and answers the real rows.
    fn execute(&self, instance: usize, backend: &mut dyn Backend, rows: Vec<Row<Item>>) -> Vec<Answer> {
        let batching = self.batching;
        let config = &self.config;
        let like: Vec<Tensor> = rows
            .iter()
            .find_map(|r| match r {
                Row::Request { entry, .. } => Some(entry.item.inputs.clone()),
                Row::Null { .. } => None,
            })
            .unwrap_or_default();
        let state_outputs: Vec<String> = config.states.iter().map(|s| s.output_name.clone()).collect();
        let outputs = batch_outputs(&rows, &state_outputs);
        let batch_span = tracing::debug_span!("execute", model = %self.model, batch_size = rows.len());
        let mut requests = Vec::with_capacity(rows.len());
        let mut waiting = Vec::with_capacity(rows.len());
        for row in rows {
            match row {
                Row::Request { entry, slot, states } => {
                    batch_span.follows_from(&entry.item.span);
                    let mut inputs = entry.item.inputs;
                    inputs.extend(tensors::controls(
                        config,
                        batching,
                        entry.start,
                        entry.end,
                        true,
                        &entry.id,
                    ));
                    inputs.extend(states.unwrap_or_else(|| tensors::initial_states(config, batching)));
                    requests.push(inputs);
                    waiting.push(Some((
                        entry.enqueued,
                        slot,
                        entry.end,
                        entry.item.outputs,
                        entry.item.reply,
                    )));
                }
                Row::Null { .. } => {
                    let mut inputs = tensors::null_inputs(&like);
                    inputs.extend(tensors::controls(
                        config,
                        batching,
                        false,
                        false,
                        false,
                        &CorrelationId::Uint(0),
                    ));
                    inputs.extend(tensors::initial_states(config, batching));
                    requests.push(inputs);
                    waiting.push(None);
                }
            }
        }
        let batch_sizes = vec![u32::from(batching); requests.len()];
        let real = waiting.iter().flatten().count() as u32;
        let (result, t) =
            batch_span.in_scope(|| tern_backend::run(backend, BatchJob { requests, batch_sizes, outputs }));
        drop(batch_span);
        let stats = &self.stats;
        let mut out = Vec::with_capacity(waiting.len());
        match result {
            Ok(per_row) => {
                stats.record_execution(real, t.compute_input, t.compute_infer, t.compute_output);
                let mut new_states = Vec::new();
                for (row, outs) in waiting.into_iter().zip(per_row) {
                    let Some((enqueued, slot, end, wanted, reply)) = row else { continue };
                    if !end && !state_outputs.is_empty() {
                        new_states.push((slot, next_states(config, &outs)));
                    }
                    let queue = t.started.map_or(Duration::ZERO, |s| s.saturating_duration_since(enqueued));
                    match select_outputs(&outs, &wanted) {
                        Ok(outs) => {
                            stats.record_success(
                                queue,
                                t.compute_input,
                                t.compute_infer,
                                t.compute_output,
                                enqueued.elapsed(),
                            );
                            out.push((reply, Ok(outs)));
                        }
                        Err(e) => {
                            stats.record_failure(FailureReason::Backend, enqueued.elapsed());
                            out.push((reply, Err(backend_error(&self.model, e).1)));
                        }
                    }
                }
                if !new_states.is_empty() {
                    let mut table = self.lock();
                    for (slot, states) in new_states {
                        table.slots.store_states(instance, slot, states);
                    }
                }
            }
            Err(e) => {
                let (reason, error) = backend_error(&self.model, e);
                tracing::error!(model = %self.model, error = %error, "sequence batch failed");
                for (enqueued, _, _, _, reply) in waiting.into_iter().flatten() {
                    stats.record_failure(reason, enqueued.elapsed());
                    out.push((reply, Err(error.clone())));
                }
            }
        }
        out
    }
}

/// The state outputs of one row, renamed as the state inputs they become.
fn next_states(config: &SequenceConfig, outs: &[Tensor]) -> Vec<Tensor> {
    config
        .states
        .iter()
        .filter_map(|s| {
            outs.iter()
                .find(|t| t.name == s.output_name)
                .map(|t| Tensor { name: s.input_name.clone(), ..t.clone() })
        })
        .collect()
}

/// The outputs one execution computes: what the real rows asked for (the union, in first-asked
/// order) and every state output. Empty (all of them) when a row asked for all.
fn batch_outputs(rows: &[Row<Item>], state_outputs: &[String]) -> Vec<String> {
    let mut union: Vec<String> = Vec::new();
    for row in rows {
        if let Row::Request { entry, .. } = row {
            if entry.item.outputs.is_empty() {
                return Vec::new();
            }
            for name in &entry.item.outputs {
                if !union.contains(name) {
                    union.push(name.clone());
                }
            }
        }
    }
    for name in state_outputs {
        if !union.contains(name) {
            union.push(name.clone());
        }
    }
    union
}
