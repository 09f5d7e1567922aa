//! Per-model scheduling between the gRPC service and a model's instances, with Triton's
//! semantics: the default scheduler (FIFO, one request per execution) and the dynamic batcher
//! (preferred sizes, max batch size, max queue delay), priority levels, queue policies (bounded
//! queues, timeouts with REJECT or DELAY), cancellation, per-model statistics, and Triton's
//! response cache, which answers a repeated request before it is queued.
//!
//! Layout: [`policy`] reads the config, [`state`] decides batches (plain, unit-tested),
//! [`auto_delay`] chooses each batch's queue delay under Tern's `queue_delay: auto`,
//! [`stats`] counts, [`cache`] keeps responses, [`Scheduler`] is the handle, and `instance`
//! the threads that run the batches.
//!
//! Batches are formed on the instance threads themselves: a free instance takes the queue's
//! lock, asks the state for a batch, runs it and answers each request from the same thread. A
//! request thus costs one hand-off to an instance and one back, and nothing wakes while all
//! instances are busy (the next batch just keeps filling). A small async janitor answers queue
//! timeouts while the instances are busy; a caller that gives up takes its request out of the
//! queue itself. This crate knows nothing of gRPC
//! servers or ONNX: it moves `Tensor`s to a `Backend`.

pub mod auto_delay;
pub mod cache;
mod instance;
pub mod policy;
pub mod sequence;
pub mod state;
pub mod stats;
pub mod summary;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tern_backend::Backend;
use tern_core::{FailureReason, RequestError, Tensor};
use tokio::sync::{Notify, oneshot};

pub use cache::ResponseCache;
pub use policy::SchedulerConfig;
use state::{BatchState, Pending, Ticket};
pub use stats::{ModelStats, StatsSnapshot};
pub use summary::{LatencySummaries, SummaryKind, SummarySnapshot};

/// One request for the scheduler: inputs already validated against the model.
#[derive(Debug, Clone)]
pub struct InferJob {
    pub inputs: Vec<Tensor>,
    /// The request's batch size (its first dimension); 0 when the model does not batch.
    pub batch_size: u32,
    /// Outputs wanted, in order; empty means all.
    pub outputs: Vec<String>,
    /// Triton's `priority` request parameter (0 = the model's default level).
    pub priority: u64,
    /// Triton's `timeout` request parameter, honoured when the queue policy allows it.
    pub timeout: Option<Duration>,
    /// Triton's sequence parameters; used only by a model with `sequence_batching`.
    pub sequence: tern_core::SequenceParams,
}

type Reply = oneshot::Sender<Result<Vec<Tensor>, RequestError>>;

/// An answer ready to go out: the caller's reply channel and its result.
type Answer = (Reply, Result<Vec<Tensor>, RequestError>);

/// Hands answers to the callers. A batch's answers go to the runtime in one wake-up: the relay
/// task then sends them from a worker thread, where each caller's task is queued locally
/// behind the others. The callers' tasks thus all write their responses before their
/// connections' tasks flush, so the responses of one batch that share a connection leave in one
/// write. Sent one by one from the instance thread instead, each answer would go through the
/// runtime's global queue, and the first connection task to run would flush one response alone.
#[derive(Clone)]
struct Answers(tokio::sync::mpsc::UnboundedSender<Vec<Answer>>);

impl Answers {
    /// Starts the relay task, which ends once every instance thread (every sender) has ended.
    fn start(runtime: &tokio::runtime::Handle) -> Answers {
        // Unbounded, yet bounded by the queue: every answer is for a request admitted to it.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Answer>>();
        runtime.spawn(async move {
            while let Some(answers) = rx.recv().await {
                send_all(answers);
            }
        });
        Answers(tx)
    }

    fn deliver(&self, answers: Vec<Answer>) {
        // A single answer gains nothing from the relay but a hop. Should the relay be gone (the
        // runtime is shutting down), the answers go out directly.
        if answers.len() > 1 {
            if let Err(back) = self.0.send(answers) {
                send_all(back.0);
            }
        } else {
            send_all(answers);
        }
    }
}

/// What requests must share to share a batch: each input's non-batch dims, in name order, each
/// list preceded by its length. One allocation; the inputs are sorted only when the request sent
/// them out of name order.
fn shape_key(inputs: &[Tensor], batching: bool) -> Vec<i64> {
    fn dims(t: &Tensor, batching: bool) -> &[i64] {
        if batching { t.shape.get(1..).unwrap_or(&[]) } else { &t.shape }
    }
    let mut key = Vec::with_capacity(inputs.iter().map(|t| dims(t, batching).len() + 1).sum());
    let mut push = |t: &Tensor| {
        key.push(dims(t, batching).len() as i64);
        key.extend_from_slice(dims(t, batching));
    };
    if inputs.windows(2).all(|w| w[0].name <= w[1].name) {
        inputs.iter().for_each(&mut push);
    } else {
        let mut named: Vec<&Tensor> = inputs.iter().collect();
        named.sort_by(|a, b| a.name.cmp(&b.name));
        named.into_iter().for_each(push);
    }
    key
}

fn send_all(answers: Vec<Answer>) {
    for (reply, result) in answers {
        // A caller that gave up has dropped its receiver; nothing is owed to it.
        let _ = reply.send(result);
    }
}

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
    done: std::collections::BTreeMap<u64, Answer>,
}

/// Everything behind the queue's lock.
struct Queue {
    batch: BatchState<Item>,
    /// Instance threads waiting on `Shared::work`.
    idle: usize,
    /// Wake-ups sent to idle instances that they have not taken yet. std's condvar makes a
    /// syscall on every notify, waiter or not, so arrivals notify only when an idle instance is
    /// not already on its way (say the oldest request's delay has passed: without this, every
    /// arrival until the instance has the lock would notify again).
    wakes_pending: usize,
    /// Set when the scheduler is dropped: the instances finish the queue, then end.
    closed: bool,
}

struct Shared {
    model: String,
    queue: Mutex<Queue>,
    /// Wakes idle instance threads: a batch may be ready, or the queue was closed.
    work: Condvar,
    /// Wakes the janitor: a request with a queue timeout arrived, or the queue closed.
    janitor: Notify,
    stats: Arc<ModelStats>,
    preserve_ordering: bool,
    order: Mutex<Reorder>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock; should it happen, the queue is still sound.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Readies one request's answer in `out`; with `preserve_ordering`, answers it, and every
    /// later one that was waiting on it, right away instead. Those are sent under the order lock,
    /// so the answers leave in arrival order even when two instances finish at once.
    fn respond(
        &self,
        seq: u64,
        reply: Reply,
        result: Result<Vec<Tensor>, RequestError>,
        out: &mut Vec<Answer>,
    ) {
        if !self.preserve_ordering {
            out.push((reply, result));
            return;
        }
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        order.done.insert(seq, (reply, result));
        loop {
            let next = order.next_release;
            let Some((reply, result)) = order.done.remove(&next) else { break };
            order.next_release += 1;
            // A cancelled caller is gone; its turn passes all the same.
            let _ = reply.send(result);
        }
    }

    /// Answers the requests the state removed without running: timed out or cancelled.
    fn answer_dropped(&self, dropped: Vec<(Pending<Item>, FailureReason)>) {
        if dropped.is_empty() {
            return;
        }
        self.stats.pending.fetch_sub(dropped.len() as u64, Relaxed);
        let mut out = Vec::with_capacity(dropped.len());
        for (p, reason) in dropped {
            self.stats.record_failure(reason, p.enqueued.elapsed());
            let message = match reason {
                FailureReason::Rejected => format!("Request timeout expired for model '{}'", self.model),
                _ => format!("request for model '{}' was cancelled", self.model),
            };
            self.respond(p.item.seq, p.item.reply, Err(RequestError::Unavailable(message)), &mut out);
        }
        // Few, and rare (timeouts, cancellations): sent from here, without the relay.
        send_all(out);
    }
}

/// Resolves when a model's instance threads have ended; see [`Scheduler::finished`].
#[derive(Clone)]
pub struct Finished(tokio::sync::watch::Receiver<usize>);

impl Finished {
    /// Resolves when every instance thread has ended and dropped its backend.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|n| *n == 0).await;
    }
}

/// The scheduler of one model version. Dropping it lets the queued requests finish, then ends
/// its instance threads.
pub struct Scheduler {
    shared: Arc<Shared>,
    config: SchedulerConfig,
    finished: Finished,
    caching: Option<Caching>,
    /// The sequence batcher, for a model with `sequence_batching` (then the queue stays empty).
    sequencer: Option<Arc<sequence::Sequencer>>,
}

/// This load's use of the node's response cache.
struct Caching {
    cache: Arc<ResponseCache>,
    model: Arc<str>,
    version: u64,
    /// Unique to this load: a reload's scheduler never reads this one's entries. An
    /// ensemble's changes when one of its steps reloads ([`Scheduler::invalidate_response_cache`]).
    generation: std::sync::atomic::AtomicU64,
}

/// What [`Scheduler::cache_probe`] found.
pub enum CacheProbe {
    /// The cached outputs; the hit is already counted.
    Hit(Vec<Tensor>),
    /// Not cached: run the request, then hand its outputs to [`Scheduler::cache_offer`].
    Miss(CacheMiss),
}

/// A lookup that found nothing, kept to insert the response under the same key.
pub struct CacheMiss {
    key: cache::CacheKey,
    lookup: Duration,
}

/// Numbers the loads that use the response cache.
static NEXT_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Scheduler {
    /// Starts one OS thread per backend (config `instance_group.count`), named
    /// `tern-{label}-{i}`, all serving this model's queue, and the janitor task on `runtime`.
    pub fn start(
        model: String,
        label: &str,
        config: SchedulerConfig,
        backends: Vec<Box<dyn Backend>>,
        runtime: &tokio::runtime::Handle,
    ) -> std::io::Result<Scheduler> {
        let shared = Arc::new(Shared {
            model,
            queue: Mutex::new(Queue {
                batch: BatchState::new(config.clone()),
                idle: 0,
                wakes_pending: 0,
                closed: false,
            }),
            work: Condvar::new(),
            janitor: Notify::new(),
            stats: Arc::new(ModelStats::new()),
            preserve_ordering: config.preserve_ordering,
            order: Mutex::new(Reorder::default()),
        });
        let (live_tx, live_rx) = tokio::sync::watch::channel(backends.len());
        let live_tx = Arc::new(live_tx);
        let batching = config.max_batch_size > 0;
        let answers = Answers::start(runtime);
        let sequencer = config.sequence.clone().map(|sequence| {
            Arc::new(sequence::Sequencer::new(
                shared.model.clone(),
                sequence,
                config.max_batch_size,
                backends.len(),
                shared.stats.clone(),
            ))
        });
        if let Some(sequencer) = &sequencer {
            return Self::start_sequence(
                shared,
                config,
                backends,
                sequencer.clone(),
                answers,
                label,
                runtime,
            );
        }
        for (i, backend) in backends.into_iter().enumerate() {
            let mine = shared.clone();
            let answers = answers.clone();
            let live_tx = live_tx.clone();
            let spawned = std::thread::Builder::new().name(format!("tern-{label}-{i}")).spawn(move || {
                instance::instance_thread(&mine, backend, batching, &answers);
                // The backend (and its session) has been dropped by now.
                live_tx.send_modify(|n| *n = n.saturating_sub(1));
            });
            if let Err(e) = spawned {
                // The threads already started end once they see the queue closed.
                shared.lock().closed = true;
                shared.work.notify_all();
                return Err(e);
            }
        }
        runtime.spawn(instance::janitor(shared.clone()));
        Ok(Scheduler { shared, config, finished: Finished(live_rx), caching: None, sequencer: None })
    }

    /// The instance threads and reaper of a model with `sequence_batching`.
    fn start_sequence(
        shared: Arc<Shared>,
        config: SchedulerConfig,
        backends: Vec<Box<dyn Backend>>,
        sequencer: Arc<sequence::Sequencer>,
        answers: Answers,
        label: &str,
        runtime: &tokio::runtime::Handle,
    ) -> std::io::Result<Scheduler> {
        let (live_tx, live_rx) = tokio::sync::watch::channel(backends.len());
        let live_tx = Arc::new(live_tx);
        for (i, backend) in backends.into_iter().enumerate() {
            let mine = sequencer.clone();
            let answers = answers.clone();
            let live_tx = live_tx.clone();
            let spawned = std::thread::Builder::new().name(format!("tern-{label}-{i}")).spawn(move || {
                mine.instance_thread(i, backend, &answers);
                live_tx.send_modify(|n| *n = n.saturating_sub(1));
            });
            if let Err(e) = spawned {
                sequencer.close();
                return Err(e);
            }
        }
        runtime.spawn(sequencer.clone().reaper_task());
        Ok(Scheduler {
            shared,
            config,
            finished: Finished(live_rx),
            caching: None,
            sequencer: Some(sequencer),
        })
    }

    /// Answers identical requests to this load of version `version` from `cache` (the model's
    /// `response_cache { enable: true }` with the node's `--cache-config`). Its entries are
    /// dropped when this scheduler is (unload, reload).
    pub fn with_response_cache(mut self, cache: Arc<ResponseCache>, version: u64) -> Scheduler {
        self.caching = Some(Caching {
            cache,
            model: self.shared.model.as_str().into(),
            version,
            generation: std::sync::atomic::AtomicU64::new(NEXT_GENERATION.fetch_add(1, Relaxed)),
        });
        self
    }

    /// Whether this load answers from the response cache.
    pub fn response_cache_enabled(&self) -> bool {
        self.caching.is_some()
    }

    /// Resolves when this model's instances have ended (after the scheduler is dropped and
    /// its queued requests are done): its sessions are freed by then.
    pub fn finished(&self) -> Finished {
        self.finished.clone()
    }

    pub fn stats(&self) -> &Arc<ModelStats> {
        &self.shared.stats
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The request's outputs: from the response cache when it holds them (the queue and the
    /// instances are skipped), otherwise queued and run, then offered to the cache. Dropping
    /// the future cancels it: a request still queued is then removed and never executed.
    pub async fn infer(&self, job: InferJob) -> Result<Vec<Tensor>, RequestError> {
        // Triton looks up where the scheduler enqueues (core src/dynamic_batch_scheduler.cc,
        // `Enqueue` -> `CacheLookUp`); only successful responses are inserted.
        let miss = match self.cache_probe(&job.inputs, &job.outputs) {
            None => return self.enqueue(job).await,
            // A hit answers at once. Triton delegates a hit's response behind earlier ones under
            // `preserve_ordering`; here each caller has its own reply, and a stream's responses
            // already leave in request order (the node's stream.rs).
            Some(CacheProbe::Hit(outputs)) => return Ok(outputs),
            Some(CacheProbe::Miss(miss)) => miss,
        };
        let outputs = self.enqueue(job).await?;
        self.cache_offer(miss, &outputs);
        Ok(outputs)
    }

    /// Looks a request (`inputs`, the `outputs` it asks for) up in the response cache; `None`
    /// when this load does not use the cache. A hit is counted (Triton's
    /// `UpdateSuccessCacheHit`: a success with its queue and lookup time, no execution). Used
    /// by [`Self::infer`], and by the node for an ensemble, whose scheduler runs nothing.
    pub fn cache_probe(&self, inputs: &[Tensor], outputs: &[String]) -> Option<CacheProbe> {
        let caching = self.caching.as_ref()?;
        let arrived = Instant::now();
        let generation = caching.generation.load(Relaxed);
        let key = caching.cache.key(caching.model.clone(), caching.version, generation, inputs, outputs);
        let lookup_started = Instant::now();
        let found = caching.cache.lookup(&key);
        let lookup = lookup_started.elapsed();
        Some(match found {
            Some(outputs) => {
                self.shared.stats.record_cache_hit(lookup_started - arrived, lookup, arrived.elapsed());
                CacheProbe::Hit(outputs)
            }
            None => CacheProbe::Miss(CacheMiss { key, lookup }),
        })
    }

    /// Offers a successful response to the cache after a [`CacheProbe::Miss`], and counts the
    /// miss as Triton does (core src/dynamic_batch_scheduler.cc, `DelegateResponse`; for an
    /// ensemble, ensemble_scheduler.cc, `CacheEnsembleTopLevelRequest`). A response computed
    /// before [`Self::invalidate_response_cache`] is not stored.
    pub fn cache_offer(&self, miss: CacheMiss, outputs: &[Tensor]) {
        let Some(caching) = &self.caching else { return };
        let insert_started = Instant::now();
        if miss.key.generation() != caching.generation.load(Relaxed) {
            return;
        }
        if caching.cache.insert(miss.key, outputs) != cache::Inserted::AlreadyExists {
            self.shared.stats.record_cache_miss(miss.lookup + insert_started.elapsed());
        }
    }

    /// Forgets this load's cached responses and answers from a fresh part of the cache from now
    /// on: for an ensemble whose step reloaded, whose earlier answers may no longer be what it
    /// computes.
    pub fn invalidate_response_cache(&self) {
        if let Some(c) = &self.caching {
            let old = c.generation.swap(NEXT_GENERATION.fetch_add(1, Relaxed), Relaxed);
            c.cache.purge(&c.model, old);
        }
    }

    async fn enqueue(&self, job: InferJob) -> Result<Vec<Tensor>, RequestError> {
        if let Some(sequencer) = &self.sequencer {
            return sequencer.infer(job).await;
        }
        let enqueued = Instant::now();
        let level = self.config.level(job.priority);
        let timeout = self.config.policy(level).timeout(job.timeout);
        let shape_key = shape_key(&job.inputs, self.config.max_batch_size > 0);
        let (reply, reply_rx) = oneshot::channel();
        let mut pending = Pending {
            item: Item {
                seq: 0,
                span: tracing::Span::current(),
                queue_span: tracing::debug_span!("queue"),
                inputs: job.inputs,
                outputs: job.outputs,
                reply,
            },
            batch_size: job.batch_size,
            shape_key,
            level,
            enqueued,
            // A timeout no Instant can hold is no timeout (never panic on a client's number).
            deadline: timeout.and_then(|t| enqueued.checked_add(t)),
        };
        let (pushed, wake) = {
            let mut queue = self.shared.lock();
            // With `preserve_ordering`, numbered under the queue lock, so the numbers follow
            // arrival order; a rejected request takes no number. Without it the number is unused.
            let mut order = self
                .shared
                .preserve_ordering
                .then(|| self.shared.order.lock().unwrap_or_else(|e| e.into_inner()));
            if let Some(order) = &order {
                pending.item.seq = order.next_seq;
            }
            let was_empty = queue.batch.is_empty();
            let pushed = queue.batch.push(pending).ok();
            if pushed.is_some()
                && let Some(order) = &mut order
            {
                order.next_seq += 1;
            }
            // An idle instance needs waking only when this arrival changes what it would do:
            // it starts the delay of a new batch, or the batch is now ready. Otherwise the
            // instance is already waiting for the right moment (or busy, and will look when
            // done).
            let wake = pushed.is_some()
                && queue.idle > queue.wakes_pending
                && (was_empty || queue.batch.ready(enqueued));
            if wake {
                queue.wakes_pending += 1;
            }
            (pushed, wake)
        };
        let Some(ticket) = pushed else {
            self.shared.stats.record_failure(FailureReason::Rejected, enqueued.elapsed());
            return Err(RequestError::Unavailable(format!(
                "Exceeds maximum queue size for model '{}'",
                self.shared.model
            )));
        };
        self.shared.stats.pending.fetch_add(1, Relaxed);
        if wake {
            self.shared.work.notify_one();
        }
        if timeout.is_some() {
            self.shared.janitor.notify_one();
        }
        let mut waiting = Waiting { reply: reply_rx, answered: false, ticket, shared: &self.shared };
        let result = (&mut waiting.reply).await;
        waiting.answered = true;
        result.unwrap_or_else(|_| {
            Err(RequestError::Unavailable(format!(
                "model '{}' stopped before running the request",
                self.shared.model
            )))
        })
    }
}

/// A caller waiting for its answer. Dropped before the answer came (the client cancelled, or
/// its deadline passed), it takes its request out of the queue now (by its ticket, without
/// looking at the rest of the queue) and answers it as cancelled.
struct Waiting<'a> {
    reply: oneshot::Receiver<Result<Vec<Tensor>, RequestError>>,
    answered: bool,
    ticket: Ticket,
    shared: &'a Shared,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        // Closed first: should the request be running already, its answer has nowhere to go.
        self.reply.close();
        let removed = self.shared.lock().batch.cancel(self.ticket);
        if let Some(p) = removed {
            self.shared.answer_dropped(vec![(p, FailureReason::Canceled)]);
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if let Some(c) = &self.caching {
            c.cache.purge(&c.model, c.generation.load(Relaxed));
        }
        if let Some(sequencer) = &self.sequencer {
            sequencer.close();
        }
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
        self.shared.janitor.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, shape: &[i64]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: tern_core::DataType::Fp32,
            shape: shape.to_vec(),
            data: Default::default(),
        }
    }

    #[test]
    fn shape_key_follows_names_not_the_order_sent() {
        let sorted = [tensor("a", &[4, 2, 3]), tensor("b", &[4, 5])];
        let reversed = [tensor("b", &[4, 5]), tensor("a", &[4, 2, 3])];
        assert_eq!(shape_key(&sorted, true), shape_key(&reversed, true));
        assert_eq!(shape_key(&sorted, true), vec![2, 2, 3, 1, 5], "the batch dimension is left out");
        assert_eq!(shape_key(&reversed, false), vec![3, 4, 2, 3, 2, 4, 5]);
        // The same dims split differently between the inputs are another shape.
        let other = [tensor("a", &[4, 2]), tensor("b", &[4, 3, 5])];
        assert_ne!(shape_key(&sorted, true), shape_key(&other, true));
    }
}
