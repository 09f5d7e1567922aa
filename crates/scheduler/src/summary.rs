//! Latency summaries over a sliding window, for `--metrics-config summary_latencies=true`.
//!
//! Triton's summaries are prometheus-cpp `Summary` objects with the default window: quantiles over
//! the last 60 s, kept as 5 age buckets (core src/metric_model_reporter.cc creates them with the
//! configured quantiles only). This keeps the same window: every observation goes into all five
//! age buckets, the oldest is cleared and becomes the newest every 12 s, and quantiles are read
//! from the oldest, which has seen between 48 and 60 s of observations. Each bucket is an HDR
//! histogram with two significant digits (values within 1%), up to one hour; longer latencies
//! count as one hour in the quantiles (the sum keeps them exactly). Count and sum are cumulative,
//! as a Prometheus summary's are. Memory per summary is fixed (5 histograms of ~13 KiB).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// How far back quantiles look (prometheus-cpp's default `max_age`).
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Age buckets in the window (prometheus-cpp's default `age_buckets`).
const AGE_BUCKETS: usize = 5;
/// Largest latency the quantiles tell apart, in microseconds (one hour).
const HIGHEST_US: u64 = 3_600_000_000;

/// Which of Triton's latency summaries a [`SummarySnapshot`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SummaryKind {
    /// `nv_inference_request_summary_us`; absent for a model with the response cache on (Triton
    /// leaves it out then: a miss's insert time lands after the request's observation).
    Request,
    Queue,
    ComputeInput,
    ComputeInfer,
    ComputeOutput,
    /// `nv_cache_hit_summary_per_model` and `nv_cache_miss_summary_per_model`: only for a model
    /// with the response cache on.
    CacheHit,
    CacheMiss,
}

/// One summary as a scrape reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct SummarySnapshot {
    pub kind: SummaryKind,
    /// Observations since the load (cumulative).
    pub count: u64,
    /// Their sum in microseconds (cumulative).
    pub sum_us: u64,
    /// `(quantile, value in µs)` over the window; NaN values when the window saw nothing (as a
    /// Prometheus summary reports an empty window).
    pub quantiles: Vec<(f64, f64)>,
}

/// One latency summary.
struct Summary {
    kind: SummaryKind,
    count: AtomicU64,
    sum_us: AtomicU64,
    window: Mutex<Window>,
}

struct Window {
    buckets: Vec<Histogram<u32>>,
    /// Index of the oldest bucket, the one quantiles are read from.
    head: usize,
    /// When `head` was last rotated.
    rotated: Instant,
}

impl Window {
    fn new(now: Instant) -> Window {
        let bucket = Histogram::new_with_bounds(1, HIGHEST_US, 2).expect("fixed, valid HDR bounds");
        Window { buckets: vec![bucket; AGE_BUCKETS], head: 0, rotated: now }
    }

    /// Clears the buckets whose age ran out since the last call.
    fn rotate(&mut self, now: Instant) {
        let step = MAX_AGE / AGE_BUCKETS as u32;
        let mut elapsed = now.saturating_duration_since(self.rotated);
        let mut turns = 0;
        while elapsed >= step && turns < AGE_BUCKETS {
            self.buckets[self.head].reset();
            self.head = (self.head + 1) % AGE_BUCKETS;
            self.rotated += step;
            elapsed -= step;
            turns += 1;
        }
        if elapsed >= step {
            // Idle for longer than the whole window: everything was cleared above.
            self.rotated = now;
        }
    }
}

impl Summary {
    fn new(kind: SummaryKind, now: Instant) -> Summary {
        Summary {
            kind,
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            window: Mutex::new(Window::new(now)),
        }
    }

    fn observe(&self, us: u64, now: Instant) {
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        w.rotate(now);
        for b in &mut w.buckets {
            b.saturating_record(us);
        }
    }

    fn snapshot(&self, quantiles: &[f64], now: Instant) -> SummarySnapshot {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        w.rotate(now);
        let head = &w.buckets[w.head];
        let quantiles = quantiles
            .iter()
            .map(|&q| (q, if head.is_empty() { f64::NAN } else { head.value_at_quantile(q) as f64 }))
            .collect();
        drop(w);
        SummarySnapshot {
            kind: self.kind,
            count: self.count.load(Relaxed),
            sum_us: self.sum_us.load(Relaxed),
            quantiles,
        }
    }
}

/// The latency summaries of one model version, as Triton chooses them for its config.
pub struct LatencySummaries {
    quantiles: Vec<f64>,
    /// `None` where Triton has no such summary for this model.
    request: Option<Summary>,
    queue: Summary,
    compute_input: Summary,
    compute_infer: Summary,
    compute_output: Summary,
    cache_hit: Option<Summary>,
    cache_miss: Option<Summary>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl LatencySummaries {
    /// Summaries reporting `quantiles`; the request summary is left out and the cache ones added
    /// when the model's config enables the response cache (core src/metric_model_reporter.cc,
    /// `InitializeSummaries`).
    pub fn new(quantiles: Vec<f64>, response_cache: bool) -> LatencySummaries {
        let now = Instant::now();
        let s = |kind| Summary::new(kind, now);
        LatencySummaries {
            quantiles,
            request: (!response_cache).then(|| s(SummaryKind::Request)),
            queue: s(SummaryKind::Queue),
            compute_input: s(SummaryKind::ComputeInput),
            compute_infer: s(SummaryKind::ComputeInfer),
            compute_output: s(SummaryKind::ComputeOutput),
            cache_hit: response_cache.then(|| s(SummaryKind::CacheHit)),
            cache_miss: response_cache.then(|| s(SummaryKind::CacheMiss)),
        }
    }

    /// A request an instance ran (core src/infer_stats.cc, `UpdateSuccessWithDuration`).
    pub(crate) fn success(
        &self,
        queue: Duration,
        input: Duration,
        infer: Duration,
        output: Duration,
        total: Duration,
    ) {
        let now = Instant::now();
        if let Some(r) = &self.request {
            r.observe(micros(total), now);
        }
        self.queue.observe(micros(queue), now);
        self.compute_input.observe(micros(input), now);
        self.compute_infer.observe(micros(infer), now);
        self.compute_output.observe(micros(output), now);
    }

    /// A request the cache answered (`UpdateSuccessCacheHit`: queue and hit time only).
    pub(crate) fn cache_hit(&self, queue: Duration, lookup: Duration) {
        let now = Instant::now();
        self.queue.observe(micros(queue), now);
        if let Some(h) = &self.cache_hit {
            h.observe(micros(lookup), now);
        }
    }

    /// A miss's lookup and insert time (`UpdateSuccessCacheMiss`).
    pub(crate) fn cache_miss(&self, lookup_and_insert: Duration) {
        if let Some(m) = &self.cache_miss {
            m.observe(micros(lookup_and_insert), Instant::now());
        }
    }

    pub fn snapshot(&self) -> Vec<SummarySnapshot> {
        let now = Instant::now();
        [
            self.request.as_ref(),
            Some(&self.queue),
            Some(&self.compute_input),
            Some(&self.compute_infer),
            Some(&self.compute_output),
            self.cache_hit.as_ref(),
            self.cache_miss.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|s| s.snapshot(&self.quantiles, now))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn quantiles_count_and_sum_follow_the_observations() {
        let s = LatencySummaries::new(vec![0.5, 0.9, 0.99], false);
        for i in 1..=100 {
            s.success(us(i), us(1), us(10 * i), us(1), us(20 * i));
        }
        let snap = s.snapshot();
        let kinds: Vec<SummaryKind> = snap.iter().map(|s| s.kind).collect();
        use SummaryKind::*;
        assert_eq!(kinds, [Request, Queue, ComputeInput, ComputeInfer, ComputeOutput]);
        let infer = &snap[3];
        assert_eq!(infer.count, 100);
        assert_eq!(infer.sum_us, 10 * 5050);
        // Two significant digits: within 1% of the exact quantile.
        for (q, want) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0)] {
            let got = infer.quantiles.iter().find(|(k, _)| *k == q).map(|(_, v)| *v).expect("quantile");
            assert!((got - want).abs() <= want * 0.01, "q{q}: {got} vs {want}");
        }
    }

    #[test]
    fn the_cache_swaps_the_request_summary_for_hit_and_miss() {
        let s = LatencySummaries::new(vec![0.5], true);
        s.cache_hit(us(3), us(7));
        s.cache_miss(us(11));
        let snap = s.snapshot();
        let kinds: Vec<SummaryKind> = snap.iter().map(|s| s.kind).collect();
        use SummaryKind::*;
        assert_eq!(kinds, [Queue, ComputeInput, ComputeInfer, ComputeOutput, CacheHit, CacheMiss]);
        assert_eq!((snap[0].count, snap[0].sum_us), (1, 3), "a hit counts its queue time");
        assert_eq!(snap[1].count, 0, "a hit has no compute times");
        assert!(snap[1].quantiles[0].1.is_nan(), "an empty window reports NaN");
        assert_eq!((snap[4].count, snap[4].sum_us), (1, 7));
        assert_eq!((snap[5].count, snap[5].sum_us), (1, 11));
    }

    #[test]
    fn old_observations_leave_the_window_but_stay_in_count_and_sum() {
        let start = Instant::now();
        let s = Summary::new(SummaryKind::Queue, start);
        s.observe(1_000, start);
        // 30 s later: still in the window (the oldest bucket has seen it).
        let snap = s.snapshot(&[0.5], start + Duration::from_secs(30));
        assert!((snap.quantiles[0].1 - 1_000.0).abs() <= 10.0, "{snap:?}");
        // A new, smaller latency 50 s in; at 61 s the first one has aged out of every bucket.
        s.observe(10, start + Duration::from_secs(50));
        let snap = s.snapshot(&[0.5], start + Duration::from_secs(61));
        assert_eq!(snap.quantiles[0].1, 10.0, "{snap:?}");
        assert_eq!((snap.count, snap.sum_us), (2, 1_010));
        // Idle far past the window: empty, and rotation does not loop for the whole gap.
        let snap = s.snapshot(&[0.5], start + Duration::from_secs(100_000));
        assert!(snap.quantiles[0].1.is_nan());
        assert_eq!(snap.count, 2);
    }

    #[test]
    fn latencies_beyond_an_hour_are_clamped_in_quantiles_but_summed_exactly() {
        let start = Instant::now();
        let s = Summary::new(SummaryKind::Request, start);
        s.observe(u64::MAX / 4, start);
        let snap = s.snapshot(&[0.5], start);
        assert!(snap.quantiles[0].1 <= 2.0 * HIGHEST_US as f64, "{snap:?}");
        assert_eq!(snap.sum_us, u64::MAX / 4);
    }
}
