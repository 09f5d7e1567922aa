//! Batch formation as plain state, with no async and no clock of its own, so every rule is
//! unit-tested directly: per-priority FIFO queues, queue limits and timeouts, cancellation, and
//! Triton's dynamic batcher decisions (preferred sizes, max batch size, max queue delay, no
//! mixing of requests whose non-batch dims differ).
//!
//! Every operation costs in proportion to what it touches, never to the queue's length: the
//! instance threads and the janitor take this state's lock for each decision, and async workers
//! wait on the same lock to queue a request. A batch looks at its own requests only; timeouts
//! expire from a deadline-ordered heap (so per-request overrides, which break arrival order,
//! expire on time too); a cancelled request is removed by its [`Ticket`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Instant;

use crate::auto_delay::DelayController;
use crate::policy::{OnTimeout, SchedulerConfig};
use tern_core::FailureReason;

/// A queued request and what batching needs to know of it.
#[derive(Debug)]
pub struct Pending<T> {
    pub item: T,
    /// The batch size it brings to a batch (its first dimension; 0 when the model does not batch).
    pub batch_size: u32,
    /// Its inputs' non-batch dims (flattened, each input's preceded by their count); only
    /// requests with equal keys share a batch.
    pub shape_key: Vec<i64>,
    pub level: u32,
    pub enqueued: Instant,
    /// When its queue timeout passes.
    pub deadline: Option<Instant>,
}

/// Names a queued request, to take it out again ([`BatchState::cancel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    level: usize,
    key: u64,
}

/// What the batching task should do next.
#[derive(Debug)]
pub struct Next<T> {
    /// Requests to run now as one execution, in queue order.
    pub run: Vec<Pending<T>>,
    /// When to look again if nothing arrives (`None`: only on an arrival).
    pub wake_at: Option<Instant>,
    /// Requests removed without running, and why.
    pub dropped: Vec<(Pending<T>, FailureReason)>,
}

/// One priority level, as Triton's `PriorityQueue::PolicyQueue` (core src/scheduler_utils.cc):
/// its requests in arrival order, then those whose timeout passed under `OnTimeout::Delay`.
#[derive(Debug)]
struct Level<T> {
    /// By key, which grows with every push: arrival order, and removal by key in O(log n).
    queue: BTreeMap<u64, Pending<T>>,
    /// Timed out under DELAY: served after this level's other requests, in arrival order.
    delayed: BTreeMap<u64, Pending<T>>,
}

impl<T> Level<T> {
    fn len(&self) -> usize {
        self.queue.len() + self.delayed.len()
    }

    fn in_order(&self) -> impl Iterator<Item = &Pending<T>> {
        self.queue.values().chain(self.delayed.values())
    }
}

/// The queues of one model.
#[derive(Debug)]
pub struct BatchState<T> {
    config: SchedulerConfig,
    /// One per priority level, level 1 first.
    levels: Vec<Level<T>>,
    /// The queue timeouts of queued requests, earliest first: (deadline, key, level index). A
    /// request that leaves the queue otherwise leaves its entry behind, skipped when it comes
    /// up; [`BatchState::compact`] bounds how many such entries there are.
    deadlines: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    /// Requests in the levels' `queue`s that have a deadline: the live entries of `deadlines`.
    timed: usize,
    len: usize,
    next_key: u64,
    /// With `queue_delay: auto`: the estimates that choose each batch's delay, and when the
    /// batch now forming is to run (decided once, when a free instance first looks at it).
    auto_delay: Option<DelayController>,
    hold_until: Option<Instant>,
}

impl<T> BatchState<T> {
    pub fn new(config: SchedulerConfig) -> BatchState<T> {
        let levels = (0..config.priority_levels)
            .map(|_| Level { queue: BTreeMap::new(), delayed: BTreeMap::new() })
            .collect();
        let auto_delay = config.auto_delay_budget.filter(|_| config.dynamic).map(DelayController::new);
        BatchState {
            config,
            levels,
            deadlines: BinaryHeap::new(),
            timed: 0,
            len: 0,
            next_key: 0,
            auto_delay,
            hold_until: None,
        }
    }

    /// The automatic queue delay's estimates, with `queue_delay: auto`.
    pub fn auto_delay(&self) -> Option<&DelayController> {
        self.auto_delay.as_ref()
    }

    /// An instance was busy `took` with a batch of `rows` rows: feeds the automatic queue delay.
    pub fn executed(&mut self, rows: u32, took: std::time::Duration) {
        if let Some(c) = &mut self.auto_delay {
            c.executed(rows, took);
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a request, or hands it back when its level's queue is full. Delayed requests
    /// count towards the bound, as in Triton (`PolicyQueue::Size`).
    pub fn push(&mut self, p: Pending<T>) -> Result<Ticket, Pending<T>> {
        let level = p.level.clamp(1, self.config.priority_levels);
        let max = self.config.policy(level).max_queue_size;
        let index = (level - 1) as usize;
        if self.levels[index].len() >= max {
            return Err(p);
        }
        let key = self.next_key;
        self.next_key += 1;
        if let Some(deadline) = p.deadline {
            self.deadlines.push(Reverse((deadline, key, index)));
            self.timed += 1;
        }
        if let Some(c) = &mut self.auto_delay {
            c.arrival(p.enqueued, p.batch_size);
        }
        self.levels[index].queue.insert(key, p);
        self.len += 1;
        Ok(Ticket { level: index, key })
    }

    /// Takes a request out of the queue (its caller gave up); `None` when it already left (it
    /// ran, timed out, or was cancelled before).
    pub fn cancel(&mut self, ticket: Ticket) -> Option<Pending<T>> {
        let level = self.levels.get_mut(ticket.level)?;
        let p = match level.queue.remove(&ticket.key) {
            Some(p) => {
                self.timed -= usize::from(p.deadline.is_some());
                p
            }
            None => level.delayed.remove(&ticket.key)?,
        };
        self.len -= 1;
        if self.len == 0 {
            self.hold_until = None;
        }
        self.compact();
        Some(p)
    }

    /// Removes requests whose queue timeout passed, then decides whether a batch runs now
    /// (only when `can_run`: an instance is free).
    pub fn next(&mut self, now: Instant, can_run: bool) -> Next<T> {
        let mut dropped = Vec::new();
        self.expire(now, &mut dropped);
        let (count, full) = self.gather();
        let mut next = Next { run: Vec::new(), wake_at: None, dropped };
        if count == 0 {
            self.hold_until = None;
            return next;
        }
        if !can_run {
            // Nothing can run: wake only to expire queue timeouts.
            next.wake_at = self.next_deadline();
            return next;
        }
        let take = if !self.config.dynamic { Ok(1) } else { self.decide(now, count, full) };
        match take {
            Ok(n) => {
                if let Some(c) = self.auto_delay.as_mut().filter(|_| self.hold_until.is_none()) {
                    c.chose(std::time::Duration::ZERO);
                }
                next.run = self.pop(n);
            }
            Err(send_at) => {
                if self.auto_delay.is_some() && self.hold_until.is_none() {
                    // The delay chosen for this batch holds until it runs: re-deciding on every
                    // look would restart the wait each time.
                    self.hold_until = send_at;
                    let oldest = self.oldest(count);
                    if let (Some(c), Some(at), Some(oldest)) = (&mut self.auto_delay, send_at, oldest) {
                        c.chose(at.saturating_duration_since(oldest));
                    }
                }
                next.wake_at = [send_at, self.next_deadline()].into_iter().flatten().min();
            }
        }
        next
    }

    /// The earliest arrival among the first `count` candidates.
    fn oldest(&self, count: usize) -> Option<Instant> {
        self.candidates().take(count).map(|p| p.enqueued).min()
    }

    /// How many leading candidates may share one batch, and whether the batch is closed (max
    /// rows reached, or the next request cannot join it). Looks at one batch's requests at most.
    fn gather(&self) -> (usize, bool) {
        let mut it = self.candidates();
        let Some(seed) = it.next() else { return (0, false) };
        if !self.config.dynamic {
            return (1, true);
        }
        let max = self.config.max_batch_size.max(1);
        let mut batch_size = seed.batch_size;
        let mut count = 1;
        for p in it {
            if p.shape_key != seed.shape_key || batch_size + p.batch_size > max || count >= max as usize {
                return (count, true);
            }
            batch_size += p.batch_size;
            count += 1;
        }
        (count, batch_size >= max)
    }

    /// Triton's dynamic batcher: how many of the `count` gathered requests to send now, or else
    /// when to send them if nothing else arrives (`None`: never on its own).
    fn decide(&self, now: Instant, count: usize, closed: bool) -> Result<usize, Option<Instant>> {
        if closed || (self.auto_delay.is_none() && self.config.max_queue_delay.is_zero()) {
            return Ok(count);
        }
        let preferred = &self.config.preferred_batch_sizes;
        // The batch size so far, and the longest prefix whose batch size is a preferred size.
        let mut total = 0u32;
        let mut preferred_prefix = None;
        let mut oldest: Option<Instant> = None;
        for (i, p) in self.candidates().take(count).enumerate() {
            total += p.batch_size;
            if preferred.contains(&total) {
                preferred_prefix = Some(i + 1);
            }
            oldest = Some(oldest.map_or(p.enqueued, |o| o.min(p.enqueued)));
        }
        if preferred.contains(&total) {
            return Ok(count);
        }
        // Past the largest preferred size nothing larger is worth waiting for: send the longest
        // prefix that is a preferred size, if there is one.
        if let Some(prefix) = preferred_prefix.filter(|_| preferred.last().is_some_and(|&l| total > l)) {
            return Ok(prefix);
        }
        let Some(oldest) = oldest else { return Ok(count) };
        let send_at = match (&self.auto_delay, self.hold_until) {
            (None, _) => {
                // Triton's fixed delay, from the batch's first request (the wake-up as before).
                if now.saturating_duration_since(oldest) >= self.config.max_queue_delay {
                    return Ok(count);
                }
                let seed = self.candidates().next().map_or(oldest, |p| p.enqueued);
                return Err(seed.checked_add(self.config.max_queue_delay));
            }
            (Some(_), Some(at)) => at,
            (Some(c), None) => {
                let waited = now.saturating_duration_since(oldest);
                now + c.delay(waited, total, self.config.max_batch_size.max(1))
            }
        };
        if now >= send_at { Ok(count) } else { Err(Some(send_at)) }
    }

    /// Whether a free instance would run a batch at `now`, without changing anything: lets a
    /// new arrival wake an idle instance only when that changes what it would do. Timed-out
    /// requests still count here; [`BatchState::next`] removes them.
    pub fn ready(&self, now: Instant) -> bool {
        let (count, full) = self.gather();
        count > 0 && (!self.config.dynamic || self.decide(now, count, full).is_ok())
    }

    /// Queue order: level 1 first; within a level, arrival order, then its delayed requests.
    fn candidates(&self) -> impl Iterator<Item = &Pending<T>> {
        self.levels.iter().flat_map(Level::in_order)
    }

    fn pop(&mut self, mut n: usize) -> Vec<Pending<T>> {
        let mut out = Vec::with_capacity(n);
        for level in &mut self.levels {
            while n > 0 {
                let Some((_, p)) = level.queue.pop_first().or_else(|| level.delayed.pop_first()) else {
                    break;
                };
                self.timed -= usize::from(p.deadline.is_some());
                out.push(p);
                n -= 1;
            }
        }
        self.len -= out.len();
        self.hold_until = None;
        self.compact();
        out
    }

    /// Rejects or delays the requests whose deadline is at or before `now`, earliest first:
    /// the cost is that of the requests that expire (and of entries left by requests gone).
    fn expire(&mut self, now: Instant, dropped: &mut Vec<(Pending<T>, FailureReason)>) {
        while let Some(&Reverse((deadline, key, index))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            let level = &mut self.levels[index];
            let Some(p) = level.queue.remove(&key) else { continue };
            self.timed -= 1;
            match self.config.policy(index as u32 + 1).on_timeout {
                OnTimeout::Reject => {
                    self.len -= 1;
                    dropped.push((p, FailureReason::Rejected));
                }
                OnTimeout::Delay => {
                    level.delayed.insert(key, Pending { deadline: None, ..p });
                }
            }
        }
    }

    /// The earliest deadline of a queued request, dropping entries of requests gone.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((deadline, key, index))) = self.deadlines.peek() {
            if self.levels[index].queue.contains_key(&key) {
                return Some(deadline);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Drops the heap entries of requests that left before their deadline once they are most
    /// of it: the heap stays within twice its live entries (plus slack), at an amortized O(1)
    /// per request.
    fn compact(&mut self) {
        if self.deadlines.len() <= 2 * self.timed + 64 {
            return;
        }
        let levels = &self.levels;
        self.deadlines.retain(|Reverse((_, key, index))| levels[*index].queue.contains_key(key));
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
