//! The scheduler's queue state (`tern_scheduler::state::BatchState`) with 16,384 requests queued
//! (Triton's and Tern's default queue bound) and with 8: what one decision costs while every
//! instance thread and the janitor take the queue's lock for it.
//!
//! - `take_batch`: a free instance takes a batch of 8 and 8 new requests arrive (the queue stays
//!   as full); no timeouts.
//! - `take_batch_with_timeouts`: the same with a uniform queue timeout (none expires).
//! - `janitor_look`: no instance free; the janitor looks for expired requests.
//!
//! `cargo bench -p tern-benches --bench queue`; see benches/README.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tern_scheduler::SchedulerConfig;
use tern_scheduler::policy::{DEFAULT_MAX_QUEUE_SIZE, QueuePolicy};
use tern_scheduler::state::{BatchState, Pending};

const BATCH: u32 = 8;

fn config(timeout: Option<Duration>) -> SchedulerConfig {
    SchedulerConfig {
        max_batch_size: BATCH,
        dynamic: true,
        preferred_batch_sizes: vec![BATCH],
        max_queue_delay: Duration::ZERO,
        auto_delay_budget: None,
        preserve_ordering: false,
        priority_levels: 1,
        default_priority: 1,
        policies: vec![QueuePolicy { default_timeout: timeout, ..QueuePolicy::default() }],
        sequence: None,
    }
}

fn pending(id: u64, at: Instant, timeout: Option<Duration>) -> Pending<u64> {
    Pending {
        item: id,
        batch_size: 1,
        shape_key: vec![1, 16],
        level: 1,
        enqueued: at,
        deadline: timeout.map(|t| at + t),
    }
}

fn filled(timeout: Option<Duration>, len: usize) -> (BatchState<u64>, u64) {
    let at = Instant::now();
    let mut s = BatchState::new(config(timeout));
    let mut id = 0;
    while s.len() < len {
        let _ = s.push(pending(id, at, timeout));
        id += 1;
    }
    (s, id)
}

fn queue(c: &mut Criterion) {
    for len in [DEFAULT_MAX_QUEUE_SIZE, BATCH as usize] {
        one_length(c, len);
    }
}

fn one_length(c: &mut Criterion, len: usize) {
    let mut group = c.benchmark_group(format!("queue_{len}"));
    for (name, timeout) in
        [("take_batch", None), ("take_batch_with_timeouts", Some(Duration::from_secs(3600)))]
    {
        let (mut s, mut id) = filled(timeout, len);
        group.bench_function(name, |b| {
            b.iter(|| {
                let now = Instant::now();
                let next = s.next(now, true);
                assert_eq!(next.run.len(), BATCH as usize);
                for _ in 0..BATCH {
                    let _ = s.push(pending(id, now, timeout));
                    id += 1;
                }
                black_box(next.run.len())
            })
        });
    }
    let (mut s, _) = filled(Some(Duration::from_secs(3600)), len);
    group.bench_function("janitor_look", |b| b.iter(|| black_box(s.next(Instant::now(), false).wake_at)));
    group.finish();
}

criterion_group!(benches, queue);
criterion_main!(benches);
