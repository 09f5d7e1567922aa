//! Per model-version statistics with Triton's fields, kept in atomics so recording never takes a
//! lock on the request path. ModelStatistics and the metrics exporter read snapshots.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tern_core::FailureReason;

use crate::summary::{LatencySummaries, SummarySnapshot};

/// Where a reason's counter sits, in [`FailureReason::ALL`] order.
fn reason_index(reason: FailureReason) -> usize {
    match reason {
        FailureReason::Other => 0,
        FailureReason::Backend => 1,
        FailureReason::Canceled => 2,
        FailureReason::Rejected => 3,
    }
}

#[derive(Default)]
struct Counter {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Counter {
    fn add(&self, d: Duration) {
        self.count.fetch_add(1, Relaxed);
        self.ns.fetch_add(d.as_nanos().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    fn snapshot(&self) -> DurationStat {
        DurationStat { count: self.count.load(Relaxed), ns: self.ns.load(Relaxed) }
    }
}

#[derive(Default)]
struct BatchCounters {
    compute_input: Counter,
    compute_infer: Counter,
    compute_output: Counter,
}

/// A count and a total duration in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DurationStat {
    pub count: u64,
    pub ns: u64,
}

/// Statistics for executions of one batch size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStat {
    pub batch_size: u64,
    pub compute_input: DurationStat,
    pub compute_infer: DurationStat,
    pub compute_output: DurationStat,
}

/// A consistent-enough copy of the counters (each field is read atomically).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Milliseconds since the epoch of the last completed inference; 0 if none.
    pub last_inference_ms: u64,
    /// Inferences: the sum of the batch sizes executed.
    pub inference_count: u64,
    /// Executions (batches) run.
    pub execution_count: u64,
    pub success: DurationStat,
    pub fail: DurationStat,
    pub queue: DurationStat,
    pub compute_input: DurationStat,
    pub compute_infer: DurationStat,
    pub compute_output: DurationStat,
    /// Response-cache hits (count, lookup time) and misses (count, lookup plus insert time).
    pub cache_hit: DurationStat,
    pub cache_miss: DurationStat,
    /// Failures by reason, in [`FailureReason::ALL`] order.
    pub failures: [(FailureReason, u64); 4],
    /// Per batch size, ascending, only sizes that ran.
    pub batches: Vec<BatchStat>,
    /// Requests waiting in the queue now.
    pub pending: u64,
    /// With `queue_delay: auto`: the queue delay chosen for the last batch (from its oldest
    /// request's arrival); `None` when the delay is fixed.
    pub queue_delay: Option<Duration>,
}

/// The counters of one model version.
#[derive(Default)]
pub struct ModelStats {
    success: Counter,
    fail: Counter,
    queue: Counter,
    compute_input: Counter,
    compute_infer: Counter,
    compute_output: Counter,
    cache_hit: Counter,
    cache_miss: Counter,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    last_inference_ms: AtomicU64,
    failures: [AtomicU64; 4],
    /// By batch size, only sizes that ran: a size is added on its first execution (under the
    /// write lock, once), later executions only read-lock. Never sized by `max_batch_size`.
    batches: RwLock<BTreeMap<u32, Arc<BatchCounters>>>,
    pub(crate) pending: AtomicU64,
    /// With `queue_delay: auto`: the delay chosen for the last batch, in ns, plus 1 (0: the delay
    /// is fixed, none is chosen).
    queue_delay: AtomicU64,
    /// Latency summaries, when `--metrics-config summary_latencies=true` (set once, at load).
    summaries: OnceLock<LatencySummaries>,
}

impl ModelStats {
    /// Zeroed counters. Per-batch-size counters grow with the sizes that run, never with the
    /// config's `max_batch_size` (which once sized a vector of ~100 GB near 2^31).
    pub fn new() -> ModelStats {
        ModelStats::default()
    }

    /// Turns on the latency summaries of `--metrics-config summary_latencies=true` for this
    /// model version; `response_cache` as the model's config says. Only the first call counts.
    pub fn enable_summaries(&self, quantiles: Vec<f64>, response_cache: bool) {
        let _ = self.summaries.set(LatencySummaries::new(quantiles, response_cache));
    }

    /// The latency summaries now; empty when they are off.
    pub fn summaries(&self) -> Vec<SummarySnapshot> {
        self.summaries.get().map(LatencySummaries::snapshot).unwrap_or_default()
    }

    /// The queue delay `queue_delay: auto` chose for the last batch.
    pub(crate) fn set_queue_delay(&self, delay: Duration) {
        let ns = delay.as_nanos().min(u128::from(u64::MAX - 1)) as u64;
        self.queue_delay.store(ns + 1, Relaxed);
    }

    /// A request that failed, with its duration so far.
    pub fn record_failure(&self, reason: FailureReason, duration: Duration) {
        self.fail.add(duration);
        self.failures[reason_index(reason)].fetch_add(1, Relaxed);
    }

    /// One request a model served outside the scheduler's instances (a generative model's
    /// engine, which runs many steps for many sequences): a success of `total`, counted as one
    /// inference and one execution, as Triton counts a decoupled model's request.
    pub fn record_request(&self, total: Duration) {
        self.success.add(total);
        self.execution_count.fetch_add(1, Relaxed);
        self.inference_count.fetch_add(1, Relaxed);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_inference_ms.store(now_ms, Relaxed);
    }

    /// One ensemble request that succeeded, as Triton counts it (core
    /// src/ensemble_scheduler/ensemble_scheduler.cc, `RequestTracker::DecrementCounter`:
    /// `ReportStatisticsWithDuration`, then `UpdateInferBatchStatsWithDuration`): a success of
    /// `total` with `max(1, batch_size)` inferences, one execution of that batch size, and no
    /// queue time; `steps` stands for the compute durations, which Triton sums from the
    /// composing models' requests: here the time the steps took (counted as compute_infer).
    pub fn record_ensemble_request(&self, batch_size: u32, steps: Duration, total: Duration) {
        let batch_size = batch_size.max(1);
        self.success.add(total);
        self.queue.add(Duration::ZERO);
        self.compute_input.add(Duration::ZERO);
        self.compute_infer.add(steps);
        self.compute_output.add(Duration::ZERO);
        self.record_execution(batch_size, Duration::ZERO, steps, Duration::ZERO);
    }

    /// One execution of `batch_size` rows.
    pub(crate) fn record_execution(
        &self,
        batch_size: u32,
        input: Duration,
        infer: Duration,
        output: Duration,
    ) {
        self.execution_count.fetch_add(1, Relaxed);
        self.inference_count.fetch_add(u64::from(batch_size), Relaxed);
        let b = self.batch_counters(batch_size);
        b.compute_input.add(input);
        b.compute_infer.add(infer);
        b.compute_output.add(output);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_inference_ms.store(now_ms, Relaxed);
    }

    fn batch_counters(&self, batch_size: u32) -> Arc<BatchCounters> {
        let known = self.batches.read().unwrap_or_else(PoisonError::into_inner).get(&batch_size).cloned();
        known.unwrap_or_else(|| {
            let mut batches = self.batches.write().unwrap_or_else(PoisonError::into_inner);
            batches.entry(batch_size).or_default().clone()
        })
    }

    /// One request of a successful execution: its queue time, the execution's compute times,
    /// and its whole duration.
    pub(crate) fn record_success(
        &self,
        queue: Duration,
        input: Duration,
        infer: Duration,
        output: Duration,
        total: Duration,
    ) {
        self.queue.add(queue);
        self.compute_input.add(input);
        self.compute_infer.add(infer);
        self.compute_output.add(output);
        self.success.add(total);
        if let Some(s) = self.summaries.get() {
            s.success(queue, input, infer, output, total);
        }
    }

    /// A request answered from the response cache, as Triton counts it (core src/infer_stats.cc,
    /// `UpdateSuccessCacheHit`): a success with its whole duration and its (near zero) queue
    /// time, and a cache hit with the lookup's duration; no inference, no execution, no compute
    /// times (`nv_inference_count` and `nv_inference_exec_count` do not include cached requests).
    pub fn record_cache_hit(&self, queue: Duration, lookup: Duration, total: Duration) {
        self.success.add(total);
        self.queue.add(queue);
        self.cache_hit.add(lookup);
        if let Some(s) = self.summaries.get() {
            s.cache_hit(queue, lookup);
        }
    }

    /// A request the cache did not answer whose response was then offered to it (core
    /// src/infer_stats.cc, `UpdateSuccessCacheMiss`): a miss with the lookup and insert time,
    /// which is also added to the request's duration (its success was already counted).
    pub fn record_cache_miss(&self, lookup_and_insert: Duration) {
        self.cache_miss.add(lookup_and_insert);
        self.success.ns.fetch_add(lookup_and_insert.as_nanos().min(u128::from(u64::MAX)) as u64, Relaxed);
        if let Some(s) = self.summaries.get() {
            s.cache_miss(lookup_and_insert);
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            last_inference_ms: self.last_inference_ms.load(Relaxed),
            inference_count: self.inference_count.load(Relaxed),
            execution_count: self.execution_count.load(Relaxed),
            success: self.success.snapshot(),
            fail: self.fail.snapshot(),
            queue: self.queue.snapshot(),
            compute_input: self.compute_input.snapshot(),
            compute_infer: self.compute_infer.snapshot(),
            compute_output: self.compute_output.snapshot(),
            cache_hit: self.cache_hit.snapshot(),
            cache_miss: self.cache_miss.snapshot(),
            failures: FailureReason::ALL.map(|r| (r, self.failures[reason_index(r)].load(Relaxed))),
            batches: self
                .batches
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter(|(_, b)| b.compute_infer.count.load(Relaxed) > 0)
                .map(|(&size, b)| BatchStat {
                    batch_size: u64::from(size),
                    compute_input: b.compute_input.snapshot(),
                    compute_infer: b.compute_infer.snapshot(),
                    compute_output: b.compute_output.snapshot(),
                })
                .collect(),
            pending: self.pending.load(Relaxed),
            queue_delay: match self.queue_delay.load(Relaxed) {
                0 => None,
                n => Some(Duration::from_nanos(n - 1)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_statistics_grow_with_what_runs_not_with_max_batch_size() {
        // Sizes far apart (as a max_batch_size near 2^31 allows) take one entry each.
        let stats = ModelStats::new();
        let ms = Duration::from_millis(1);
        stats.record_execution(3, ms, ms, ms);
        stats.record_execution(3, ms, ms, ms);
        stats.record_execution(1_000_000, ms, ms, ms);
        let snapshot = stats.snapshot();
        let sizes: Vec<(u64, u64)> =
            snapshot.batches.iter().map(|b| (b.batch_size, b.compute_infer.count)).collect();
        assert_eq!(sizes, vec![(3, 2), (1_000_000, 1)]);
        assert_eq!(snapshot.execution_count, 3);
        assert_eq!(snapshot.inference_count, 1_000_006);
        assert_eq!(stats.batches.read().map(|b| b.len()).unwrap_or(0), 2, "one entry per size that ran");
    }
}
