use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

fn direct() -> Strategy {
    Strategy::Direct { max_queue_delay: Duration::ZERO, min_ready: 0 }
}

/// A request: its sequence, and a flag its "caller" sets to cancel it.
#[derive(Debug)]
struct Req {
    id: u64,
    cancelled: Arc<AtomicBool>,
}

impl Cancellable for Req {
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

fn entry(id: u64, start: bool, end: bool, at: Instant) -> Entry<Req> {
    Entry {
        item: Req { id, cancelled: Arc::default() },
        id: CorrelationId::Uint(id),
        start,
        end,
        enqueued: at,
        shape_key: vec![vec![1]],
        timeout: None,
    }
}

/// A request and the flag that cancels it.
fn cancellable(id: u64, start: bool, end: bool, at: Instant) -> (Entry<Req>, Arc<AtomicBool>) {
    let e = entry(id, start, end, at);
    let flag = e.item.cancelled.clone();
    (e, flag)
}

fn with_timeout(mut e: Entry<Req>, timeout: Duration) -> Entry<Req> {
    e.timeout = Some(timeout);
    e
}

/// Which (slot, sequence) each row carries; `None` for a null row.
fn rows(take: &Take<Req>) -> Vec<(usize, Option<u64>)> {
    take.rows
        .iter()
        .map(|r| match r {
            Row::Request { entry, slot, .. } => (*slot, Some(entry.item.id)),
            Row::Null { slot } => (*slot, None),
        })
        .collect()
}

fn ids(entries: &[Entry<Req>]) -> Vec<u64> {
    entries.iter().map(|e| e.item.id).collect()
}

#[test]
fn starts_take_the_lowest_slot_over_all_instances_then_the_backlog() {
    let now = Instant::now();
    let mut t = SlotTable::new(direct(), 2, 2, Duration::from_secs(1), 2);
    let placed: Vec<Placed> =
        (1..=5).map(|id| t.enqueue(entry(id, true, false, now), now).expect("start")).collect();
    // Slot 0 of both instances before any slot 1 (Triton's BatcherSequenceSlotCompare).
    assert_eq!(placed, [Placed::Slot(0), Placed::Slot(1), Placed::Slot(0), Placed::Slot(1), Placed::Backlog]);
    assert_eq!(rows(&t.take(0, now)), [(0, Some(1)), (1, Some(3))]);
    assert_eq!(rows(&t.take(1, now)), [(0, Some(2)), (1, Some(4))]);
    // Sequence 5 waits: a later request follows it into the backlog.
    assert_eq!(t.enqueue(entry(5, false, false, now), now).expect("queued"), Placed::Backlog);
    assert_eq!(t.len(), 2);
}

#[test]
fn a_request_without_start_for_an_unknown_id_is_refused() {
    let now = Instant::now();
    let mut t = SlotTable::new(direct(), 1, 1, Duration::from_secs(1), 1);
    assert!(t.enqueue(entry(7, false, false, now), now).is_err());
    t.enqueue(entry(7, true, false, now), now).expect("start");
    t.enqueue(entry(7, false, true, now), now).expect("end");
    // The END unbinds the ID at once: a further request needs START again.
    assert!(t.enqueue(entry(7, false, false, now), now).is_err());
}

#[test]
fn direct_keeps_each_sequence_in_its_row_with_null_rows_below() {
    let now = Instant::now();
    let mut t = SlotTable::new(direct(), 3, 3, Duration::from_secs(1), 1);
    for id in 1..=3 {
        t.enqueue(entry(id, true, false, now), now).expect("start");
    }
    assert_eq!(rows(&t.take(0, now)), [(0, Some(1)), (1, Some(2)), (2, Some(3))]);
    // Only sequence 2 sends its next request: slot 0 runs as a null row, slot 2 not at all.
    t.enqueue(entry(2, false, false, now), now).expect("next");
    assert_eq!(rows(&t.take(0, now)), [(0, None), (1, Some(2))]);
    assert!(t.take(0, now).rows.is_empty());
}

#[test]
fn an_end_hands_the_slot_to_the_oldest_backlog_sequence() {
    let now = Instant::now();
    let mut t = SlotTable::new(direct(), 1, 1, Duration::from_secs(1), 1);
    t.enqueue(entry(1, true, false, now), now).expect("start 1");
    t.enqueue(entry(2, true, false, now), now).expect("start 2 waits");
    t.enqueue(entry(3, true, false, now), now).expect("start 3 waits");
    t.enqueue(entry(2, false, false, now), now).expect("2 continues in its backlog");
    assert_eq!(rows(&t.take(0, now)), [(0, Some(1))]);
    t.enqueue(entry(1, false, true, now), now).expect("end 1");
    assert_eq!(rows(&t.take(0, now)), [(0, Some(1))]);
    // Sequence 2 now holds the slot: both its requests run, one per batch.
    assert_eq!(rows(&t.take(0, now)), [(0, Some(2))]);
    assert_eq!(t.enqueue(entry(2, false, false, now), now).expect("slot"), Placed::Slot(0));
    assert_eq!(rows(&t.take(0, now)), [(0, Some(2))]);
    assert_eq!(rows(&t.take(0, now)), [(0, Some(2))]);
}

#[test]
fn an_idle_sequence_loses_its_slot_and_its_state() {
    let now = Instant::now();
    let idle = Duration::from_millis(100);
    let mut t = SlotTable::new(direct(), 1, 1, idle, 1);
    t.enqueue(entry(1, true, false, now), now).expect("start");
    let Row::Request { states, .. } = t.take(0, now).rows.pop().expect("row") else { panic!("null") };
    assert!(states.is_none(), "a START gets the initial state");
    t.store_states(0, 0, vec![]);
    let early = t.reap(now + idle / 2);
    assert_eq!((early.wake, early.next), (vec![], Some(now + idle)));
    t.enqueue(entry(2, true, false, now), now).expect("2 waits");
    assert_eq!(t.reap(now + idle).wake, vec![0]);
    // The release frees the slot for the backlog; sequence 1 must START again.
    assert_eq!(rows(&t.take(0, now + idle)), [(0, Some(2))]);
    assert!(t.enqueue(entry(1, false, false, now + idle), now + idle).is_err());
}

#[test]
fn oldest_batches_one_request_per_sequence_oldest_first() {
    let now = Instant::now();
    let ms = Duration::from_millis;
    let oldest = Strategy::Oldest { preferred_batch_sizes: vec![], max_queue_delay: Duration::ZERO };
    let mut t = SlotTable::new(oldest, 4, 2, Duration::from_secs(1), 1);
    t.enqueue(entry(1, true, false, now + ms(3)), now).expect("1");
    t.enqueue(entry(2, true, false, now + ms(1)), now).expect("2");
    t.enqueue(entry(2, false, false, now + ms(2)), now).expect("2 again");
    t.enqueue(entry(3, true, false, now), now).expect("3");
    // Max 2 rows: the two oldest heads (3, then 2), never two requests of one sequence.
    assert_eq!(rows(&t.take(0, now)), [(2, Some(3)), (1, Some(2))]);
    assert_eq!(rows(&t.take(0, now)), [(1, Some(2)), (0, Some(1))]);
}

#[test]
fn oldest_waits_for_a_preferred_size_until_the_delay() {
    let now = Instant::now();
    let delay = Duration::from_millis(10);
    let oldest = Strategy::Oldest { preferred_batch_sizes: vec![2], max_queue_delay: delay };
    let mut t = SlotTable::new(oldest, 4, 4, Duration::from_secs(1), 1);
    t.enqueue(entry(1, true, false, now), now).expect("1");
    let waiting = t.take(0, now);
    assert!(waiting.rows.is_empty());
    assert_eq!(waiting.wake_at, Some(now + delay));
    t.enqueue(entry(2, true, false, now), now).expect("2");
    assert_eq!(rows(&t.take(0, now)).len(), 2, "a preferred size runs at once");
    t.enqueue(entry(1, false, false, now), now).expect("1 again");
    assert_eq!(rows(&t.take(0, now + delay)).len(), 1, "the delay has passed");
}

#[test]
fn a_backlog_queue_expires_at_its_earliest_timeout_and_is_refused_whole() {
    let now = Instant::now();
    let ms = Duration::from_millis;
    let mut t = SlotTable::new(direct(), 1, 1, Duration::from_secs(60), 1);
    t.enqueue(entry(1, true, false, now), now).expect("1 holds the slot");
    t.enqueue(with_timeout(entry(2, true, false, now), ms(100)), now).expect("2 waits");
    // A later request with a shorter timeout brings the whole queue's deadline forward
    // (Triton: expiration = min(expiration, now + timeout)).
    t.enqueue(with_timeout(entry(2, false, false, now + ms(10)), ms(30)), now + ms(10)).expect("2 again");
    t.enqueue(entry(3, true, false, now), now).expect("3 waits, no timeout");
    let reaped = t.reap(now + ms(20));
    assert!(reaped.expired.is_empty());
    assert_eq!(reaped.next, Some(now + ms(40)));
    let reaped = t.reap(now + ms(40));
    assert_eq!(ids(&reaped.expired), [2, 2]);
    assert_eq!(t.len(), 2);
    // Sequence 2 is forgotten; 3 still waits, and gets the slot when 1 ends.
    assert!(t.enqueue(entry(2, false, false, now + ms(41)), now + ms(41)).is_err());
    t.enqueue(entry(1, false, true, now), now).expect("end 1");
    assert_eq!(rows(&t.take(0, now + ms(41))), [(0, Some(1))]);
    assert_eq!(rows(&t.take(0, now + ms(41))), [(0, Some(1))]);
    assert_eq!(rows(&t.take(0, now + ms(41))), [(0, Some(3))]);
}

#[test]
fn a_timeout_does_not_bound_a_wait_in_a_slot() {
    let now = Instant::now();
    let mut t = SlotTable::new(direct(), 1, 1, Duration::from_secs(60), 1);
    t.enqueue(with_timeout(entry(1, true, false, now), Duration::from_millis(1)), now).expect("slot");
    let reaped = t.reap(now + Duration::from_secs(1));
    assert!(reaped.expired.is_empty());
    assert_eq!(rows(&t.take(0, now + Duration::from_secs(1))), [(0, Some(1))]);
}

#[test]
fn a_cancelled_request_at_the_head_of_its_slot_cancels_its_sequence() {
    let now = Instant::now();
    let mut t = SlotTable::new(direct(), 1, 1, Duration::from_secs(60), 1);
    t.enqueue(entry(1, true, false, now), now).expect("start");
    assert_eq!(rows(&t.take(0, now)), [(0, Some(1))]);
    let (second, cancel) = cancellable(1, false, false, now);
    t.enqueue(second, now).expect("second");
    t.enqueue(entry(1, false, false, now), now).expect("third");
    t.enqueue(entry(2, true, false, now), now).expect("2 waits in the backlog");
    cancel.store(true, Ordering::Relaxed);
    let take = t.take(0, now);
    // Both queued requests of sequence 1 are cancelled; the slot goes to sequence 2.
    assert_eq!(ids(&take.dropped), [1, 1]);
    assert_eq!(rows(&take), [(0, Some(2))]);
    assert_eq!(t.len(), 0);
    // Sequence 1 is forgotten (Triton erases its slot mapping): it must START again.
    assert!(t.enqueue(entry(1, false, false, now), now).is_err());
}

#[test]
fn a_cancelled_backlog_sequence_is_passed_over_when_a_slot_frees() {
    let now = Instant::now();
    let mut t = SlotTable::new(direct(), 1, 1, Duration::from_secs(60), 1);
    t.enqueue(entry(1, true, false, now), now).expect("1 holds the slot");
    let (start, cancel) = cancellable(2, true, false, now);
    t.enqueue(start, now).expect("2 waits");
    // While it waits, the cancelled sequence still collects its own requests (Triton notices
    // the cancellation only when a slot frees).
    assert_eq!(t.enqueue(entry(2, false, false, now), now).expect("2 again"), Placed::Backlog);
    t.enqueue(entry(3, true, false, now), now).expect("3 waits");
    cancel.store(true, Ordering::Relaxed);
    assert_eq!(rows(&t.take(0, now)), [(0, Some(1))]);
    t.enqueue(entry(1, false, true, now), now).expect("end 1");
    let take = t.take(0, now);
    assert_eq!(rows(&take), [(0, Some(1))]);
    assert_eq!(ids(&take.dropped), [2, 2], "sequence 2 is cancelled whole");
    assert_eq!(rows(&t.take(0, now)), [(0, Some(3))]);
    assert!(t.enqueue(entry(2, false, false, now), now).is_err(), "2 must START again");
}

#[test]
fn oldest_cancels_like_direct() {
    let now = Instant::now();
    let oldest = Strategy::Oldest { preferred_batch_sizes: vec![], max_queue_delay: Duration::ZERO };
    let mut t = SlotTable::new(oldest, 2, 2, Duration::from_secs(60), 1);
    let (start, cancel) = cancellable(1, true, false, now);
    t.enqueue(start, now).expect("1");
    t.enqueue(entry(2, true, false, now), now).expect("2");
    cancel.store(true, Ordering::Relaxed);
    let take = t.take(0, now);
    assert_eq!(ids(&take.dropped), [1]);
    assert_eq!(rows(&take), [(1, Some(2))]);
    // The freed slot takes the next sequence.
    assert_eq!(t.enqueue(entry(3, true, false, now), now).expect("3"), Placed::Slot(0));
}
