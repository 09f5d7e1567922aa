use super::*;
use crate::policy::QueuePolicy;
use std::time::Duration;

fn config(max: u32, preferred: &[u32], delay_us: u64) -> SchedulerConfig {
    SchedulerConfig {
        max_batch_size: max,
        dynamic: true,
        preferred_batch_sizes: preferred.to_vec(),
        max_queue_delay: Duration::from_micros(delay_us),
        auto_delay_budget: None,
        preserve_ordering: false,
        priority_levels: 1,
        default_priority: 1,
        policies: vec![QueuePolicy::default()],
        sequence: None,
    }
}

fn pending(id: u32, batch_size: u32, at: Instant) -> Pending<u32> {
    Pending { item: id, batch_size, shape_key: vec![1, 16], level: 1, enqueued: at, deadline: None }
}

fn timed(id: u32, at: Instant, after_ms: u64) -> Pending<u32> {
    Pending { deadline: Some(at + Duration::from_millis(after_ms)), ..pending(id, 1, at) }
}

fn ids(v: &[Pending<u32>]) -> Vec<u32> {
    v.iter().map(|p| p.item).collect()
}

fn dropped(n: &Next<u32>) -> Vec<(u32, FailureReason)> {
    n.dropped.iter().map(|(p, r)| (p.item, *r)).collect()
}

#[test]
fn sends_at_a_preferred_size_at_once() {
    let t0 = Instant::now();
    let mut s = BatchState::new(config(8, &[4, 8], 10_000));
    for i in 0..3 {
        s.push(pending(i, 1, t0)).expect("room");
    }
    let n = s.next(t0, true);
    assert!(n.run.is_empty(), "3 rows: wait for a preferred size");
    assert_eq!(n.wake_at, Some(t0 + Duration::from_millis(10)));
    s.push(pending(3, 1, t0)).expect("room");
    assert_eq!(ids(&s.next(t0, true).run), vec![0, 1, 2, 3]);
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
    assert_eq!(ids(&s.next(t0, true).run), vec![0, 1, 2, 3]);
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
    assert!(s.next(t0 + Duration::from_micros(99), true).run.is_empty());
    let n = s.next(t0 + Duration::from_micros(100), true);
    assert_eq!(ids(&n.run), vec![0, 1]);
}

#[test]
fn never_exceeds_max_batch_size_and_counts_rows() {
    let t0 = Instant::now();
    let mut s = BatchState::new(config(8, &[], 1_000_000));
    s.push(pending(0, 5, t0)).expect("room");
    s.push(pending(1, 3, t0)).expect("room");
    s.push(pending(2, 2, t0)).expect("room");
    assert_eq!(ids(&s.next(t0, true).run), vec![0, 1], "5 + 3 = max");
    let n = s.next(t0, true);
    assert!(n.run.is_empty(), "2 rows wait for more");
    s.push(pending(3, 7, t0)).expect("room");
    assert_eq!(ids(&s.next(t0, true).run), vec![2], "2 + 7 > 8: the batch is closed");
}

#[test]
fn different_shapes_are_not_batched_together() {
    let t0 = Instant::now();
    let mut s = BatchState::new(config(8, &[], 1_000_000));
    s.push(pending(0, 1, t0)).expect("room");
    s.push(Pending { shape_key: vec![1, 32], ..pending(1, 1, t0) }).expect("room");
    s.push(pending(2, 1, t0)).expect("room");
    assert_eq!(ids(&s.next(t0, true).run), vec![0]);
}

#[test]
fn past_the_largest_preferred_size_sends_a_preferred_prefix() {
    let t0 = Instant::now();
    let mut s = BatchState::new(config(8, &[4], 1_000_000));
    for i in 0..5 {
        s.push(pending(i, 1, t0)).expect("room");
    }
    assert_eq!(ids(&s.next(t0, true).run), vec![0, 1, 2, 3]);
}

#[test]
fn zero_delay_sends_immediately_and_default_scheduler_sends_one() {
    let t0 = Instant::now();
    let mut s = BatchState::new(config(8, &[8], 0));
    s.push(pending(0, 1, t0)).expect("room");
    s.push(pending(1, 1, t0)).expect("room");
    assert_eq!(ids(&s.next(t0, true).run), vec![0, 1]);
    let mut s = BatchState::new(SchedulerConfig { dynamic: false, ..config(8, &[], 0) });
    s.push(pending(0, 2, t0)).expect("room");
    s.push(pending(1, 2, t0)).expect("room");
    assert_eq!(ids(&s.next(t0, true).run), vec![0]);
    assert_eq!(ids(&s.next(t0, true).run), vec![1]);
}

#[test]
fn higher_priority_goes_first_and_queues_are_bounded() {
    let t0 = Instant::now();
    let mut c = config(8, &[], 0);
    c.priority_levels = 2;
    c.policies = vec![QueuePolicy { max_queue_size: 1, ..QueuePolicy::default() }, QueuePolicy::default()];
    c.dynamic = false;
    let mut s = BatchState::new(c);
    s.push(Pending { level: 2, ..pending(0, 1, t0) }).expect("room");
    s.push(Pending { level: 1, ..pending(1, 1, t0) }).expect("room");
    let full = s.push(Pending { level: 1, ..pending(2, 1, t0) });
    assert_eq!(full.map_err(|p| p.item), Err(2));
    assert_eq!(ids(&s.next(t0, true).run), vec![1]);
    assert_eq!(ids(&s.next(t0, true).run), vec![0]);
}

#[test]
fn cancelled_and_timed_out_requests_are_removed_with_a_reason() {
    let t0 = Instant::now();
    let mut s = BatchState::new(config(8, &[8], 1_000_000));
    s.push(pending(0, 1, t0)).expect("room");
    s.push(timed(1, t0, 1)).expect("room");
    let two = s.push(pending(2, 1, t0)).expect("room");
    assert_eq!(s.cancel(two).map(|p| p.item), Some(2));
    assert!(s.cancel(two).is_none(), "cancelled once");
    assert_eq!(s.len(), 2);
    let n = s.next(t0, true);
    assert!(n.dropped.is_empty() && n.run.is_empty());
    assert_eq!(n.wake_at, Some(t0 + Duration::from_millis(1)), "wakes for the timeout");
    let n = s.next(t0 + Duration::from_millis(1), false);
    assert!(n.run.is_empty(), "no instance free: nothing runs");
    assert_eq!(dropped(&n), vec![(1, FailureReason::Rejected)]);
    assert_eq!(s.len(), 1);
}

#[test]
fn timeouts_expire_in_deadline_order_whatever_the_arrival_order() {
    // Per-request overrides make deadlines out of arrival order: 0 expires last, 1 first.
    let t0 = Instant::now();
    let mut s = BatchState::new(config(8, &[], 1_000_000));
    s.push(timed(0, t0, 30)).expect("room");
    s.push(timed(1, t0, 10)).expect("room");
    s.push(pending(2, 1, t0)).expect("room");
    s.push(timed(3, t0, 20)).expect("room");
    let at = |ms| t0 + Duration::from_millis(ms);
    let n = s.next(at(5), false);
    assert!(n.dropped.is_empty());
    assert_eq!(n.wake_at, Some(at(10)));
    let n = s.next(at(15), false);
    assert_eq!(dropped(&n), vec![(1, FailureReason::Rejected)]);
    assert_eq!(n.wake_at, Some(at(20)));
    let n = s.next(at(30), false);
    assert_eq!(dropped(&n), vec![(3, FailureReason::Rejected), (0, FailureReason::Rejected)]);
    assert_eq!(n.wake_at, None, "2 has no timeout");
    assert_eq!(s.len(), 1);
    // A deadline exactly now has passed.
    s.push(timed(4, at(30), 0)).expect("room");
    assert_eq!(dropped(&s.next(at(30), false)), vec![(4, FailureReason::Rejected)]);
}

#[test]
fn requests_that_left_never_expire_and_leave_no_deadline_behind() {
    let t0 = Instant::now();
    let mut s = BatchState::new(config(2, &[], 0));
    let a = s.push(timed(0, t0, 10)).expect("room");
    s.push(timed(1, t0, 20)).expect("room");
    s.push(timed(2, t0, 30)).expect("room");
    assert!(s.cancel(a).is_some());
    assert_eq!(ids(&s.next(t0, true).run), vec![1, 2], "they ran before their timeouts");
    assert!(s.cancel(a).is_none());
    let n = s.next(t0 + Duration::from_millis(40), false);
    assert!(n.dropped.is_empty(), "nothing left to expire");
    assert_eq!(n.wake_at, None);
    assert!(s.deadlines.is_empty(), "entries of requests gone are dropped when they come up");
}

#[test]
fn the_deadline_heap_stays_proportional_to_what_is_queued() {
    // Requests with long timeouts that all run in time: their heap entries must not pile up.
    let t0 = Instant::now();
    let mut s = BatchState::new(config(8, &[], 0));
    for round in 0..1_000u32 {
        for i in 0..8 {
            s.push(timed(round * 8 + i, t0, 3_600_000)).expect("room");
        }
        assert_eq!(s.next(t0, true).run.len(), 8);
        assert!(s.deadlines.len() <= 2 * s.timed + 64, "{} entries for {}", s.deadlines.len(), s.timed);
    }
    assert!(s.is_empty());
    assert_eq!(s.timed, 0);
}

#[test]
fn delayed_requests_run_after_the_others_of_their_level() {
    let t0 = Instant::now();
    let mut c = config(8, &[], 0);
    c.dynamic = false;
    c.policies = vec![QueuePolicy { on_timeout: OnTimeout::Delay, ..QueuePolicy::default() }];
    let mut s = BatchState::new(c);
    s.push(Pending { deadline: Some(t0), ..pending(0, 1, t0) }).expect("room");
    s.push(pending(1, 1, t0)).expect("room");
    let n = s.next(t0, true);
    assert!(n.dropped.is_empty());
    assert_eq!(ids(&n.run), vec![1]);
    assert_eq!(ids(&s.next(t0, true).run), vec![0]);
}

#[test]
fn a_delayed_request_stays_ahead_of_lower_priority_levels_and_can_be_cancelled() {
    // Triton's PriorityQueue: each level's delayed requests follow that level's queue, before
    // the next level (core src/scheduler_utils.cc, PolicyQueue::At).
    let t0 = Instant::now();
    let mut c = config(8, &[], 0);
    c.dynamic = false;
    c.priority_levels = 2;
    c.policies = vec![
        QueuePolicy { on_timeout: OnTimeout::Delay, max_queue_size: 2, ..QueuePolicy::default() },
        QueuePolicy::default(),
    ];
    let mut s = BatchState::new(c);
    s.push(Pending { level: 2, ..pending(0, 1, t0) }).expect("room");
    let late = s.push(Pending { level: 1, ..timed(1, t0, 1) }).expect("room");
    s.push(Pending { level: 1, ..timed(2, t0, 1) }).expect("room");
    let n = s.next(t0 + Duration::from_millis(1), false);
    assert!(n.dropped.is_empty(), "delayed, not rejected");
    // Delayed requests still count towards their level's bound.
    assert!(s.push(Pending { level: 1, ..pending(3, 1, t0) }).is_err());
    assert_eq!(s.cancel(late).map(|p| p.item), Some(1), "a delayed request can be cancelled");
    assert_eq!(ids(&s.next(t0, true).run), vec![2]);
    assert_eq!(ids(&s.next(t0, true).run), vec![0]);
    assert!(s.is_empty());
}

/// `queue_delay: auto` with a budget of `budget_us`.
fn auto(max: u32, preferred: &[u32], budget_us: u64) -> SchedulerConfig {
    SchedulerConfig { auto_delay_budget: Some(Duration::from_micros(budget_us)), ..config(max, preferred, 0) }
}

/// Runs one request at a time through `s` as a closed loop of one client would: each arrives
/// `gap` after the last one ran, and each batch keeps the instance busy `busy`.
fn lone_client(s: &mut BatchState<u32>, t: &mut Instant, rounds: u32, gap: Duration, busy: Duration) {
    for i in 0..rounds {
        *t += gap;
        s.push(pending(i, 1, *t)).expect("room");
        let n = s.next(*t, true);
        assert_eq!(ids(&n.run), vec![i], "round {i}: a lone request runs at once");
        *t += busy;
        s.executed(1, busy);
    }
}

#[test]
fn auto_delay_never_holds_a_lone_request() {
    let mut t = Instant::now();
    let mut s = BatchState::new(auto(64, &[], 5_000));
    lone_client(&mut s, &mut t, 200, Duration::from_micros(300), Duration::from_micros(30));
    assert_eq!(s.auto_delay().map(|c| c.last_delay()), Some(Duration::ZERO));
}

#[test]
fn auto_delay_waits_under_saturation_holds_its_decision_and_keeps_the_budget() {
    let us = Duration::from_micros;
    let t0 = Instant::now();
    let mut s = BatchState::new(auto(64, &[], 2_000));
    // Teach it: a row every 10 µs, and batches that cost 100 µs plus 1 µs a row.
    for i in 0..100 {
        s.push(pending(i, 1, t0 + us(10) * i)).expect("room");
    }
    let late = t0 + Duration::from_secs(1);
    while !s.is_empty() {
        assert!(!s.next(late, true).run.is_empty(), "past the budget everything runs");
    }
    for rows in [1u32, 4, 16, 64] {
        for _ in 0..4 {
            s.executed(rows, us(100 + u64::from(rows)));
        }
    }
    // Arrivals continue at the same pace; 4 rows gathered when the instance is free.
    let t = t0 + us(1000);
    for i in 0..4 {
        s.push(pending(100 + i, 1, t + us(10) * i)).expect("room");
    }
    let now = t + us(30);
    let n = s.next(now, true);
    assert!(n.run.is_empty(), "waiting for more rows pays");
    let hold = n.wake_at.expect("a time to run");
    assert!(hold > now && hold <= t + us(2_000), "within the budget of the oldest: {:?}", hold - t);
    assert!(!s.ready(now + us(1)), "an arrival does not wake the instance before then");
    // More rows arrive, not a full batch: the decision holds (it is not re-made, which would
    // restart the wait), and the batch runs at the chosen time with everything gathered.
    for i in 4..10 {
        s.push(pending(100 + i, 1, t + us(10) * i)).expect("room");
    }
    let n = s.next(now + us(100), true);
    assert!(n.run.is_empty());
    assert_eq!(n.wake_at, Some(hold));
    assert!(s.ready(hold));
    assert_eq!(ids(&s.next(hold, true).run), (100..110).collect::<Vec<_>>());
    assert_eq!(s.auto_delay().map(|c| c.last_delay()), Some(hold - t));
    // A full batch never waits, a preferred size neither.
    for i in 0..64 {
        s.push(pending(200 + i, 1, hold)).expect("room");
    }
    assert_eq!(s.next(hold, true).run.len(), 64);
    let mut p = BatchState::new(auto(64, &[4], 2_000));
    for i in 0..4 {
        p.push(pending(i, 1, t0)).expect("room");
    }
    assert_eq!(p.next(t0, true).run.len(), 4);
}
