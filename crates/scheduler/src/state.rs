//! Batch formation as plain state, with no async and no clock of its own, so every rule is
//! unit-tested directly: per-priority FIFO queues, queue limits and timeouts, cancellation, and
//! Triton's dynamic batcher decisions (preferred sizes, max batch size, max queue delay, no
//! mixing of requests whose non-batch dims differ).

use std::collections::VecDeque;
use std::time::Instant;

use crate::policy::{OnTimeout, SchedulerConfig};
use crate::stats::FailureReason;

/// A queued request and what batching needs to know of it.
#[derive(Debug)]
pub struct Pending<T> {
    pub item: T,
    /// Rows it brings to a batch (its batch dimension; 0 when the model does not batch).
    pub rows: u32,
    /// Its inputs' non-batch dims; only requests with equal keys share a batch.
    pub shape_key: Vec<Vec<i64>>,
    pub level: u32,
    pub enqueued: Instant,
    /// When its queue timeout passes.
    pub deadline: Option<Instant>,
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

/// The queues of one model.
#[derive(Debug)]
pub struct BatchState<T> {
    config: SchedulerConfig,
    /// One FIFO per priority level, level 1 first.
    queues: Vec<VecDeque<Pending<T>>>,
    /// Requests whose timeout passed under `OnTimeout::Delay`: served after all others.
    delayed: VecDeque<Pending<T>>,
}

impl<T> BatchState<T> {
    pub fn new(config: SchedulerConfig) -> BatchState<T> {
        let queues = (0..config.priority_levels).map(|_| VecDeque::new()).collect();
        BatchState { config, queues, delayed: VecDeque::new() }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum::<usize>() + self.delayed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a request, or hands it back when its level's queue is full.
    pub fn push(&mut self, p: Pending<T>) -> Result<(), Pending<T>> {
        let level = p.level.clamp(1, self.config.priority_levels);
        let max = self.config.policy(level).max_queue_size;
        let queue = &mut self.queues[(level - 1) as usize];
        if queue.len() >= max {
            return Err(p);
        }
        queue.push_back(p);
        Ok(())
    }

    /// Removes requests that were cancelled or timed out, then decides whether a batch runs now
    /// (only when `can_run`: an instance is free).
    pub fn next(&mut self, now: Instant, can_run: bool, cancelled: impl Fn(&T) -> bool) -> Next<T> {
        let mut dropped = Vec::new();
        self.purge(now, &cancelled, &mut dropped);
        let (count, full) = self.gather();
        let mut next = Next { run: Vec::new(), wake_at: None, dropped };
        if count == 0 {
            return next;
        }
        if !can_run {
            // Nothing can run: wake only to expire queue timeouts.
            next.wake_at = self.candidates().filter_map(|p| p.deadline).min();
            return next;
        }
        let take = if !self.config.dynamic { Some(1) } else { self.decide(now, count, full) };
        match take {
            Some(n) => next.run = self.pop(n),
            None => {
                let seed_wait = self
                    .candidates()
                    .next()
                    .and_then(|p| p.enqueued.checked_add(self.config.max_queue_delay));
                let deadline = self.candidates().filter_map(|p| p.deadline).min();
                next.wake_at = [seed_wait, deadline].into_iter().flatten().min();
            }
        }
        next
    }

    /// How many leading candidates may share one batch, and whether the batch is closed (max
    /// rows reached, or the next request cannot join it).
    fn gather(&self) -> (usize, bool) {
        let mut it = self.candidates();
        let Some(seed) = it.next() else { return (0, false) };
        if !self.config.dynamic {
            return (1, true);
        }
        let max = self.config.max_batch_size.max(1);
        let mut rows = seed.rows;
        let mut count = 1;
        for p in it {
            if p.shape_key != seed.shape_key || rows + p.rows > max {
                return (count, true);
            }
            rows += p.rows;
            count += 1;
        }
        (count, rows >= max)
    }

    /// Triton's dynamic batcher: how many of the `count` gathered requests to send now.
    fn decide(&self, now: Instant, count: usize, closed: bool) -> Option<usize> {
        if closed || self.config.max_queue_delay.is_zero() {
            return Some(count);
        }
        let preferred = &self.config.preferred_batch_sizes;
        // Rows so far, and the longest prefix whose rows are a preferred size.
        let mut total = 0u32;
        let mut preferred_prefix = None;
        let mut oldest: Option<Instant> = None;
        for (i, p) in self.candidates().take(count).enumerate() {
            total += p.rows;
            if preferred.contains(&total) {
                preferred_prefix = Some(i + 1);
            }
            oldest = Some(oldest.map_or(p.enqueued, |o| o.min(p.enqueued)));
        }
        if preferred.contains(&total) {
            return Some(count);
        }
        // Past the largest preferred size nothing larger is worth waiting for: send the longest
        // prefix that is a preferred size, if there is one.
        if preferred.last().is_some_and(|&largest| total > largest) && preferred_prefix.is_some() {
            return preferred_prefix;
        }
        (now.duration_since(oldest?) >= self.config.max_queue_delay).then_some(count)
    }

    /// Whether a free instance would run a batch at `now`, without changing anything: lets a
    /// new arrival wake an idle instance only when that changes what it would do. Cancelled and
    /// timed-out requests still count here; [`BatchState::next`] removes them.
    pub fn ready(&self, now: Instant) -> bool {
        let (count, full) = self.gather();
        count > 0 && (!self.config.dynamic || self.decide(now, count, full).is_some())
    }

    /// Queue order: level 1 first, FIFO within a level, delayed requests last.
    fn candidates(&self) -> impl Iterator<Item = &Pending<T>> {
        self.queues.iter().flatten().chain(self.delayed.iter())
    }

    fn pop(&mut self, mut n: usize) -> Vec<Pending<T>> {
        let mut out = Vec::with_capacity(n);
        for q in self.queues.iter_mut().chain(std::iter::once(&mut self.delayed)) {
            while n > 0 {
                match q.pop_front() {
                    Some(p) => {
                        out.push(p);
                        n -= 1;
                    }
                    None => break,
                }
            }
        }
        out
    }

    fn purge(
        &mut self,
        now: Instant,
        cancelled: &impl Fn(&T) -> bool,
        dropped: &mut Vec<(Pending<T>, FailureReason)>,
    ) {
        for level in 0..self.queues.len() {
            let on_timeout = self.config.policy(level as u32 + 1).on_timeout;
            let queue = std::mem::take(&mut self.queues[level]);
            for p in queue {
                if cancelled(&p.item) {
                    dropped.push((p, FailureReason::Canceled));
                } else if p.deadline.is_some_and(|d| d <= now) {
                    match on_timeout {
                        OnTimeout::Reject => dropped.push((p, FailureReason::Rejected)),
                        OnTimeout::Delay => self.delayed.push_back(Pending { deadline: None, ..p }),
                    }
                } else {
                    self.queues[level].push_back(p);
                }
            }
        }
        let delayed = std::mem::take(&mut self.delayed);
        for p in delayed {
            if cancelled(&p.item) {
                dropped.push((p, FailureReason::Canceled));
            } else {
                self.delayed.push_back(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::QueuePolicy;
    use std::time::Duration;

    fn config(max: u32, preferred: &[u32], delay_us: u64) -> SchedulerConfig {
        SchedulerConfig {
            max_batch_size: max,
            dynamic: true,
            preferred_batch_sizes: preferred.to_vec(),
            max_queue_delay: Duration::from_micros(delay_us),
            preserve_ordering: false,
            priority_levels: 1,
            default_priority: 1,
            policies: vec![QueuePolicy::default()],
        }
    }

    fn pending(id: u32, rows: u32, at: Instant) -> Pending<u32> {
        Pending { item: id, rows, shape_key: vec![vec![16]], level: 1, enqueued: at, deadline: None }
    }

    fn ids(v: &[Pending<u32>]) -> Vec<u32> {
        v.iter().map(|p| p.item).collect()
    }

    #[test]
    fn sends_at_a_preferred_size_at_once() {
        let t0 = Instant::now();
        let mut s = BatchState::new(config(8, &[4, 8], 10_000));
        for i in 0..3 {
            s.push(pending(i, 1, t0)).expect("room");
        }
        let n = s.next(t0, true, |_| false);
        assert!(n.run.is_empty(), "3 rows: wait for a preferred size");
        assert_eq!(n.wake_at, Some(t0 + Duration::from_millis(10)));
        s.push(pending(3, 1, t0)).expect("room");
        assert_eq!(ids(&s.next(t0, true, |_| false).run), vec![0, 1, 2, 3]);
        assert!(s.is_empty());
    }

    #[test]
    fn ready_agrees_with_next_and_changes_nothing() {
        let t0 = Instant::now();
        let mut s = BatchState::new(config(8, &[4], 100));
        assert!(!s.ready(t0), "empty");
        for i in 0..3 {
            s.push(pending(i, 1, t0)).expect("room");
        }
        assert!(!s.ready(t0), "3 rows, delay not over");
        assert!(s.ready(t0 + Duration::from_micros(100)), "the oldest waited max_queue_delay");
        s.push(pending(3, 1, t0)).expect("room");
        assert!(s.ready(t0), "a preferred size");
        assert_eq!(s.len(), 4);
        assert_eq!(ids(&s.next(t0, true, |_| false).run), vec![0, 1, 2, 3]);
        let mut s = BatchState::new(SchedulerConfig { dynamic: false, ..config(8, &[], 1_000) });
        s.push(pending(0, 1, t0)).expect("room");
        assert!(s.ready(t0), "the default scheduler runs any request at once");
    }

    #[test]
    fn sends_what_it_has_when_the_oldest_waited_max_queue_delay() {
        let t0 = Instant::now();
        let mut s = BatchState::new(config(8, &[4, 8], 100));
        s.push(pending(0, 1, t0)).expect("room");
        s.push(pending(1, 2, t0 + Duration::from_micros(50))).expect("room");
        assert!(s.next(t0 + Duration::from_micros(99), true, |_| false).run.is_empty());
        let n = s.next(t0 + Duration::from_micros(100), true, |_| false);
        assert_eq!(ids(&n.run), vec![0, 1]);
    }

    #[test]
    fn never_exceeds_max_batch_size_and_counts_rows() {
        let t0 = Instant::now();
        let mut s = BatchState::new(config(8, &[], 1_000_000));
        s.push(pending(0, 5, t0)).expect("room");
        s.push(pending(1, 3, t0)).expect("room");
        s.push(pending(2, 2, t0)).expect("room");
        assert_eq!(ids(&s.next(t0, true, |_| false).run), vec![0, 1], "5 + 3 = max");
        let n = s.next(t0, true, |_| false);
        assert!(n.run.is_empty(), "2 rows wait for more");
        s.push(pending(3, 7, t0)).expect("room");
        assert_eq!(ids(&s.next(t0, true, |_| false).run), vec![2], "2 + 7 > 8: the batch is closed");
    }

    #[test]
    fn different_shapes_are_not_batched_together() {
        let t0 = Instant::now();
        let mut s = BatchState::new(config(8, &[], 1_000_000));
        s.push(pending(0, 1, t0)).expect("room");
        s.push(Pending { shape_key: vec![vec![32]], ..pending(1, 1, t0) }).expect("room");
        s.push(pending(2, 1, t0)).expect("room");
        assert_eq!(ids(&s.next(t0, true, |_| false).run), vec![0]);
    }

    #[test]
    fn past_the_largest_preferred_size_sends_a_preferred_prefix() {
        let t0 = Instant::now();
        let mut s = BatchState::new(config(8, &[4], 1_000_000));
        for i in 0..5 {
            s.push(pending(i, 1, t0)).expect("room");
        }
        assert_eq!(ids(&s.next(t0, true, |_| false).run), vec![0, 1, 2, 3]);
    }

    #[test]
    fn zero_delay_sends_immediately_and_default_scheduler_sends_one() {
        let t0 = Instant::now();
        let mut s = BatchState::new(config(8, &[8], 0));
        s.push(pending(0, 1, t0)).expect("room");
        s.push(pending(1, 1, t0)).expect("room");
        assert_eq!(ids(&s.next(t0, true, |_| false).run), vec![0, 1]);
        let mut s = BatchState::new(SchedulerConfig { dynamic: false, ..config(8, &[], 0) });
        s.push(pending(0, 2, t0)).expect("room");
        s.push(pending(1, 2, t0)).expect("room");
        assert_eq!(ids(&s.next(t0, true, |_| false).run), vec![0]);
        assert_eq!(ids(&s.next(t0, true, |_| false).run), vec![1]);
    }

    #[test]
    fn higher_priority_goes_first_and_queues_are_bounded() {
        let t0 = Instant::now();
        let mut c = config(8, &[], 0);
        c.priority_levels = 2;
        c.policies =
            vec![QueuePolicy { max_queue_size: 1, ..QueuePolicy::default() }, QueuePolicy::default()];
        c.dynamic = false;
        let mut s = BatchState::new(c);
        s.push(Pending { level: 2, ..pending(0, 1, t0) }).expect("room");
        s.push(Pending { level: 1, ..pending(1, 1, t0) }).expect("room");
        let full = s.push(Pending { level: 1, ..pending(2, 1, t0) });
        assert_eq!(full.map_err(|p| p.item), Err(2));
        assert_eq!(ids(&s.next(t0, true, |_| false).run), vec![1]);
        assert_eq!(ids(&s.next(t0, true, |_| false).run), vec![0]);
    }

    #[test]
    fn cancelled_and_timed_out_requests_are_removed_with_a_reason() {
        let t0 = Instant::now();
        let mut s = BatchState::new(config(8, &[8], 1_000_000));
        s.push(pending(0, 1, t0)).expect("room");
        s.push(Pending { deadline: Some(t0 + Duration::from_millis(1)), ..pending(1, 1, t0) }).expect("room");
        s.push(pending(2, 1, t0)).expect("room");
        let n = s.next(t0, true, |id| *id == 2);
        assert_eq!(
            n.dropped.iter().map(|(p, r)| (p.item, *r)).collect::<Vec<_>>(),
            vec![(2, FailureReason::Canceled)]
        );
        assert_eq!(n.wake_at, Some(t0 + Duration::from_millis(1)), "wakes for the timeout");
        let n = s.next(t0 + Duration::from_millis(1), false, |_| false);
        assert!(n.run.is_empty(), "no instance free: nothing runs");
        assert_eq!(
            n.dropped.iter().map(|(p, r)| (p.item, *r)).collect::<Vec<_>>(),
            vec![(1, FailureReason::Rejected)]
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn delayed_requests_run_after_the_others() {
        let t0 = Instant::now();
        let mut c = config(8, &[], 0);
        c.dynamic = false;
        c.policies = vec![QueuePolicy { on_timeout: OnTimeout::Delay, ..QueuePolicy::default() }];
        let mut s = BatchState::new(c);
        s.push(Pending { deadline: Some(t0), ..pending(0, 1, t0) }).expect("room");
        s.push(pending(1, 1, t0)).expect("room");
        let n = s.next(t0, true, |_| false);
        assert!(n.dropped.is_empty());
        assert_eq!(ids(&n.run), vec![1]);
        assert_eq!(ids(&s.next(t0, true, |_| false).run), vec![0]);
    }
}
