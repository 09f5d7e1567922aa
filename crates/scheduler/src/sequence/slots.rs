//! The sequence slots of one model as plain state, no clock and no threads of its own, as
//! Triton's `SequenceBatchScheduler` keeps them (core src/sequence_batch_scheduler/
//! sequence_batch_scheduler.cc):
//!
//! - a START request for an unknown correlation ID takes the free slot with the lowest index
//!   (over all instances: slot 0 of every instance before any slot 1, Triton's
//!   `BatcherSequenceSlotCompare`), or, with none free, opens a backlog queue;
//! - every later request of the sequence follows it into its slot or backlog queue; a request
//!   without START for an ID that has neither is refused;
//! - an END request unbinds the ID when it is queued, and frees its slot when it is taken into a
//!   batch; a freed slot goes to the oldest backlog queue, whole;
//! - a sequence idle for `max_sequence_idle` loses its slot (the reaper queues a release behind
//!   its requests);
//! - a request's `timeout` bounds only its wait in the backlog: a backlog queue expires at the
//!   earliest deadline of its requests, and the whole queue is refused (the reaper's
//!   "timeout of the corresponding sequence has been expired"); in a slot, a request waits as
//!   long as its sequence needs (Triton gives the Oldest strategy's own dynamic batcher no
//!   queue policy, so no timeout there either);
//! - a cancelled request (its caller gone: a gRPC cancel or deadline, a closed stream or HTTP
//!   connection) cancels its sequence: when it reaches the head of its slot, the slot is
//!   released and every request still queued in it is cancelled; a backlog queue holding a
//!   cancelled request is cancelled whole when a slot would go to it (Triton's
//!   `ReleaseSequenceSlot`). Either way the ID is forgotten: the sequence must START again.
//!
//! Each instance has its own slots and forms its own batches ([`SlotTable::take`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use tern_core::{CorrelationId, Tensor};

use super::config::Strategy;

/// What the table asks of a queued request's payload.
pub trait Cancellable {
    /// Whether its caller has cancelled it (Triton's `InferenceRequest::IsCancelled`).
    fn is_cancelled(&self) -> bool;
}

/// A queued request of a sequence.
#[derive(Debug)]
pub struct Entry<T> {
    pub item: T,
    pub id: CorrelationId,
    pub start: bool,
    pub end: bool,
    pub enqueued: Instant,
    /// Its inputs' shapes; only requests with equal shapes share a batch.
    pub shape_key: Vec<Vec<i64>>,
    /// The request's `timeout` (never zero: zero is none), which bounds its wait in the backlog.
    pub timeout: Option<Duration>,
}

#[derive(Debug)]
enum Queued<T> {
    Request(Entry<T>),
    /// The reaper's "null request": the sequence idled out; free the slot when reached.
    Release,
}

#[derive(Debug)]
struct Slot<T> {
    queue: VecDeque<Queued<T>>,
    /// The sequence's implicit state after its last request; `None`: the initial state.
    states: Option<Vec<Tensor>>,
}

/// One row of a batch.
#[derive(Debug)]
pub enum Row<T> {
    Request {
        entry: Entry<T>,
        slot: usize,
        /// The state to feed; `None`: the initial state (a START request, or a sequence's first).
        states: Option<Vec<Tensor>>,
    },
    /// An empty slot below a busy one (Direct): dummy inputs, READY false, CORRID 0.
    Null { slot: usize },
}

/// What an instance should do.
#[derive(Debug)]
pub struct Take<T> {
    /// Rows to run now, in slot order (Direct) or oldest first (Oldest); empty: nothing.
    pub rows: Vec<Row<T>>,
    /// When to look again if nothing arrives.
    pub wake_at: Option<Instant>,
    /// The requests of cancelled sequences, to be answered as cancelled (Triton's
    /// `MarkRequestsCancelled`).
    pub dropped: Vec<Entry<T>>,
}

/// What the reaper found.
#[derive(Debug)]
pub struct Reaped<T> {
    /// Instances to wake: an idle sequence's slot is to be released.
    pub wake: Vec<usize>,
    /// When to look again.
    pub next: Option<Instant>,
    /// The requests of backlog queues whose timeout passed, to be refused.
    pub expired: Vec<Entry<T>>,
}

/// A sequence waiting for a slot.
#[derive(Debug)]
struct Backlog<T> {
    queue: VecDeque<Entry<T>>,
    /// The earliest deadline of its requests' timeouts (Triton's `expiration_timestamp_`).
    expires: Option<Instant>,
}

impl<T> Backlog<T> {
    fn push(&mut self, entry: Entry<T>, now: Instant) {
        if let Some(deadline) = entry.timeout.and_then(|t| now.checked_add(t)) {
            self.expires = Some(self.expires.map_or(deadline, |e| e.min(deadline)));
        }
        self.queue.push_back(entry);
    }
}

/// Where a request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Into a slot of this instance (wake it).
    Slot(usize),
    Backlog,
}

#[derive(Debug)]
pub struct SlotTable<T> {
    strategy: Strategy,
    /// Rows one execution holds at most: max_batch_size, or 1 without batching.
    max_rows: usize,
    idle: Duration,
    instances: Vec<Vec<Slot<T>>>,
    /// Free slots as (slot, instance): the lowest slot index first.
    free: BTreeSet<(usize, usize)>,
    /// Sequences that hold a slot and have not ended: (instance, slot).
    active: HashMap<CorrelationId, (usize, usize)>,
    /// Sequences waiting for a slot, oldest first, by key.
    backlog: BTreeMap<u64, Backlog<T>>,
    /// Backlog queues still collecting their sequence's requests (no END yet).
    backlog_by_id: HashMap<CorrelationId, u64>,
    next_backlog: u64,
    /// The last request of each tracked sequence, for the idle timeout.
    last_seen: HashMap<CorrelationId, Instant>,
    queued: usize,
}

impl<T: Cancellable> SlotTable<T> {
    pub fn new(
        strategy: Strategy,
        slots_per_instance: usize,
        max_rows: usize,
        idle: Duration,
        instances: usize,
    ) -> SlotTable<T> {
        let slots = slots_per_instance.max(1);
        SlotTable {
            strategy,
            max_rows: max_rows.max(1),
            idle,
            instances: (0..instances)
                .map(|_| (0..slots).map(|_| Slot { queue: VecDeque::new(), states: None }).collect())
                .collect(),
            free: (0..slots).flat_map(|s| (0..instances).map(move |i| (s, i))).collect(),
            active: HashMap::new(),
            backlog: BTreeMap::new(),
            backlog_by_id: HashMap::new(),
            next_backlog: 0,
            last_seen: HashMap::new(),
            queued: 0,
        }
    }

    /// Requests queued in slots and backlogs.
    pub fn len(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Whether `instance`'s slots hold nothing to run.
    pub fn instance_idle(&self, instance: usize) -> bool {
        self.instances[instance].iter().all(|s| s.queue.is_empty())
    }

    /// Queues a request, or hands it back when it does not start a sequence and its ID has
    /// neither a slot nor a backlog queue (Triton: "must specify the START flag").
    pub fn enqueue(&mut self, entry: Entry<T>, now: Instant) -> Result<Placed, Entry<T>> {
        let id = entry.id.clone();
        let in_slot = self.active.get(&id).copied();
        let in_backlog = self.backlog_by_id.get(&id).copied();
        if !entry.start && in_slot.is_none() && in_backlog.is_none() {
            return Err(entry);
        }
        // A START for an ID still in progress continues in the same slot or backlog queue
        // (Triton logs a conflict; the earlier sequence's requests run first).
        let end = entry.end;
        self.queued += 1;
        if end {
            self.last_seen.remove(&id);
        } else {
            self.last_seen.insert(id.clone(), now);
        }
        let (instance, slot) = if let Some(at) = in_slot {
            at
        } else if let Some(key) = in_backlog {
            if let Some(backlog) = self.backlog.get_mut(&key) {
                backlog.push(entry, now);
            }
            if end {
                self.backlog_by_id.remove(&id);
            }
            return Ok(Placed::Backlog);
        } else if let Some((slot, instance)) = self.free.pop_first() {
            self.instances[instance][slot].states = None;
            (instance, slot)
        } else {
            let key = self.next_backlog;
            self.next_backlog += 1;
            let mut backlog = Backlog { queue: VecDeque::new(), expires: None };
            backlog.push(entry, now);
            self.backlog.insert(key, backlog);
            if !end {
                self.backlog_by_id.insert(id, key);
            }
            return Ok(Placed::Backlog);
        };
        if end {
            self.active.remove(&id);
        } else {
            self.active.insert(id, (instance, slot));
        }
        self.instances[instance][slot].queue.push_back(Queued::Request(entry));
        Ok(Placed::Slot(instance))
    }

    /// Releases the slots of sequences idle for `max_sequence_idle`, and takes out the backlog
    /// queues whose timeout has passed (Triton's reaper thread).
    pub fn reap(&mut self, now: Instant) -> Reaped<T> {
        let mut wake = Vec::new();
        let mut next: Option<Instant> = None;
        let idle = self.idle;
        let idled: Vec<CorrelationId> = self
            .last_seen
            .iter()
            .filter_map(|(id, &seen)| {
                let due = seen.checked_add(idle).unwrap_or(seen);
                if due <= now {
                    Some(id.clone())
                } else {
                    next = Some(next.map_or(due, |n| n.min(due)));
                    None
                }
            })
            .collect();
        for id in idled {
            if let Some((instance, slot)) = self.active.remove(&id) {
                tracing::debug!(correlation_id = %id, "sequence idle past max_sequence_idle_microseconds: slot released");
                self.last_seen.remove(&id);
                self.instances[instance][slot].queue.push_back(Queued::Release);
                wake.push(instance);
            } else if self.backlog_by_id.contains_key(&id) {
                // Still waiting for a slot: look again later (Triton checks again in 50 ms).
                let again = now + Duration::from_millis(50);
                next = Some(next.map_or(again, |n| n.min(again)));
            } else {
                self.last_seen.remove(&id);
            }
        }
        let mut expired = Vec::new();
        let due: Vec<u64> = self
            .backlog
            .iter()
            .filter_map(|(&key, b)| {
                let at = b.expires?;
                if at <= now {
                    return Some(key);
                }
                next = Some(next.map_or(at, |n| n.min(at)));
                None
            })
            .collect();
        for key in due {
            let Some(backlog) = self.backlog.remove(&key) else { continue };
            // The ID may already be collecting a newer backlog queue: forget only this one.
            if let Some(id) = backlog.queue.front().map(|e| e.id.clone())
                && self.backlog_by_id.get(&id) == Some(&key)
            {
                self.backlog_by_id.remove(&id);
            }
            self.queued -= backlog.queue.len();
            expired.extend(backlog.queue);
        }
        Reaped { wake, next, expired }
    }

    /// Stores a sequence's state after its request in `slot` ran (not after its END).
    pub fn store_states(&mut self, instance: usize, slot: usize, states: Vec<Tensor>) {
        if let Some(s) = self.instances.get_mut(instance).and_then(|i| i.get_mut(slot)) {
            s.states = Some(states);
        }
    }

    /// Takes every backlog request out (the model is unloading).
    pub fn drain_backlog(&mut self) -> Vec<Entry<T>> {
        self.backlog_by_id.clear();
        let out: Vec<Entry<T>> =
            std::mem::take(&mut self.backlog).into_values().flat_map(|b| b.queue).collect();
        self.queued -= out.len();
        out
    }

    /// The next batch of `instance` at `now`, if one runs now.
    pub fn take(&mut self, instance: usize, now: Instant) -> Take<T> {
        let mut take = Take { rows: Vec::new(), wake_at: None, dropped: Vec::new() };
        for slot in 0..self.instances[instance].len() {
            match self.instances[instance][slot].queue.front() {
                Some(Queued::Release) => {
                    self.instances[instance][slot].queue.pop_front();
                    self.release(instance, slot, &mut take.dropped);
                }
                Some(Queued::Request(head)) if head.item.is_cancelled() => {
                    // The sequence is cancelled: this request and every one behind it (Triton's
                    // Direct batcher and Oldest's CompleteAndNext check the head alike).
                    let id = head.id.clone();
                    tracing::debug!(correlation_id = %id, "sequence cancelled: slot released");
                    if self.active.get(&id) == Some(&(instance, slot)) {
                        self.active.remove(&id);
                        self.last_seen.remove(&id);
                    }
                    self.release(instance, slot, &mut take.dropped);
                }
                _ => {}
            }
        }
        // Ready slots: (oldest request, slot).
        let ready: Vec<(Instant, usize)> = self.instances[instance]
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.queue.front() {
                Some(Queued::Request(e)) => Some((e.enqueued, i)),
                _ => None,
            })
            .collect();
        let Some(oldest) = ready.iter().map(|r| r.0).min() else { return take };
        let chosen: Vec<usize> = match &self.strategy {
            Strategy::Direct { max_queue_delay, min_ready } => {
                if !max_queue_delay.is_zero()
                    && *min_ready > 0
                    && ready.len() < *min_ready
                    && now.saturating_duration_since(oldest) <= *max_queue_delay
                {
                    take.wake_at = oldest.checked_add(*max_queue_delay);
                    return take;
                }
                ready.iter().map(|r| r.1).collect()
            }
            Strategy::Oldest { preferred_batch_sizes, max_queue_delay } => {
                let mut by_age = ready.clone();
                by_age.sort_unstable();
                let seed_shape = self.front_shape(instance, by_age[0].1);
                let same: Vec<usize> = by_age
                    .iter()
                    .map(|r| r.1)
                    .filter(|&s| self.front_shape(instance, s) == seed_shape)
                    .take(self.max_rows)
                    .collect();
                let closed = same.len() >= self.max_rows || same.len() < by_age.len();
                let count = same.len() as u32;
                let run = closed
                    || max_queue_delay.is_zero()
                    || preferred_batch_sizes.contains(&count)
                    || now.saturating_duration_since(oldest) >= *max_queue_delay;
                if !run {
                    take.wake_at = oldest.checked_add(*max_queue_delay);
                    return take;
                }
                same
            }
        };
        take.rows = self.collect(instance, &chosen, &mut take.dropped);
        take
    }

    fn front_shape(&self, instance: usize, slot: usize) -> Option<&Vec<Vec<i64>>> {
        match self.instances[instance][slot].queue.front() {
            Some(Queued::Request(e)) => Some(&e.shape_key),
            _ => None,
        }
    }

    /// The rows for `chosen` slots: Direct fills every slot up to the highest chosen one (empty
    /// or differently shaped ones as null rows, so each sequence keeps its row); Oldest takes
    /// just the chosen, oldest first.
    fn collect(&mut self, instance: usize, chosen: &[usize], dropped: &mut Vec<Entry<T>>) -> Vec<Row<T>> {
        let direct = matches!(self.strategy, Strategy::Direct { .. });
        let order: Vec<usize> = if direct {
            let highest = chosen.iter().copied().max().unwrap_or(0);
            (0..=highest).collect()
        } else {
            chosen.to_vec()
        };
        let seed_shape = chosen.first().and_then(|&s| self.front_shape(instance, s)).cloned();
        let mut rows = Vec::with_capacity(order.len());
        for slot in order {
            let fits = self.front_shape(instance, slot).is_some_and(|s| Some(s) == seed_shape.as_ref());
            if !fits {
                rows.push(Row::Null { slot });
                continue;
            }
            let s = &mut self.instances[instance][slot];
            let Some(Queued::Request(entry)) = s.queue.pop_front() else { continue };
            self.queued -= 1;
            if entry.start {
                s.states = None;
            }
            let states = s.states.clone();
            let end = entry.end;
            rows.push(Row::Request { entry, slot, states });
            // Nothing is left behind an END (later requests of the ID went elsewhere); what the
            // release drops are backlogged sequences that were cancelled.
            if end {
                self.release(instance, slot, dropped);
            }
        }
        rows
    }

    /// Frees a slot, or hands it to the oldest backlog queue that is not cancelled (Triton's
    /// `ReleaseSequenceSlot`). Requests still in the slot are cancelled.
    fn release(&mut self, instance: usize, slot: usize, dropped: &mut Vec<Entry<T>>) {
        let s = &mut self.instances[instance][slot];
        s.states = None;
        for q in s.queue.drain(..) {
            if let Queued::Request(e) = q {
                self.queued -= 1;
                dropped.push(e);
            }
        }
        while let Some((key, backlog)) = self.backlog.pop_first() {
            let Some(last) = backlog.queue.back() else { continue };
            let id = last.id.clone();
            if !last.end && self.backlog_by_id.get(&id) == Some(&key) {
                self.backlog_by_id.remove(&id);
            }
            if backlog.queue.iter().any(|e| e.item.is_cancelled()) {
                tracing::debug!(correlation_id = %id, "backlogged sequence cancelled");
                self.queued -= backlog.queue.len();
                dropped.extend(backlog.queue);
                continue;
            }
            if !last.end {
                self.active.insert(id, (instance, slot));
            }
            let s = &mut self.instances[instance][slot];
            s.queue.extend(backlog.queue.into_iter().map(Queued::Request));
            return;
        }
        self.free.insert((slot, instance));
    }
}

#[cfg(test)]
#[path = "slots_tests.rs"]
mod tests;
