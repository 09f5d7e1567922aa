//! The queue delay Tern's `queue_delay: auto` chooses per batch, from two estimates the batcher
//! keeps as it goes: how fast rows arrive, and how long an instance is busy with a batch of each
//! size. Plain state with no clock of its own (the caller passes instants and durations), kept
//! behind the queue's lock the batcher already takes: an arrival costs a few float operations, a
//! decision a few dozen.
//!
//! The rule: a free instance with `rows` gathered waits only when waiting for `k` more rows (the
//! time the arrival rate says they take) and then running `rows + k` gives a higher rate of rows
//! per unit of the instance's time than running `rows` now, by a margin, and only while the
//! oldest request's wait stays within the budget. The instance's time is what a batch costs
//! when it is the bottleneck, which is exactly when waiting can pay: below saturation the rows
//! expected within a wait are too few for it to, so a lone request (concurrency 1) never waits.
//! Without evidence (no arrivals yet, or no execution of a size near the one waited for) it does
//! not wait either: execution times are extrapolated at most to twice the largest size seen.

use std::time::{Duration, Instant};

/// Batch-size classes: rows 1, 2, 3-4, 5-8, ... up to 2^16 (max_batch_size's bound).
const CLASSES: usize = 17;
/// Weight of a new sample in the moving averages.
const ARRIVAL_WEIGHT: f64 = 1.0 / 8.0;
const EXECUTION_WEIGHT: f64 = 1.0 / 4.0;
/// An idle spell counts as this gap at most, so one quiet minute does not hide the next burst.
const MAX_GAP_NS: f64 = 1e9;
/// Waiting must raise the rate by this much: estimates are noisy and a wait always costs latency.
const MARGIN: f64 = 1.10;

/// The moving average execution of one batch-size class.
#[derive(Debug, Clone, Copy, Default)]
struct Execution {
    rows: f64,
    ns: f64,
    /// 0: no batch of this class ran yet.
    samples: u32,
}

/// The estimates of one model version and the decisions made from them.
#[derive(Debug, Clone)]
pub struct DelayController {
    budget: Duration,
    last_arrival: Option<Instant>,
    /// Moving averages of the gap between arrivals (ns; 0 until two arrived) and of the rows
    /// per arrival.
    gap_ns: f64,
    rows_per_arrival: f64,
    executions: [Execution; CLASSES],
    /// The last delay chosen for a batch (from its oldest request's arrival), for statistics.
    last_delay: Duration,
}

impl DelayController {
    pub fn new(budget: Duration) -> DelayController {
        DelayController {
            budget,
            last_arrival: None,
            gap_ns: 0.0,
            rows_per_arrival: 1.0,
            executions: [Execution::default(); CLASSES],
            last_delay: Duration::ZERO,
        }
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The delay chosen for the last batch that waited or ran, from its oldest request's arrival.
    pub fn last_delay(&self) -> Duration {
        self.last_delay
    }

    /// A request of `rows` rows (0 for a model that does not batch: counted as 1) arrived at `at`.
    pub fn arrival(&mut self, at: Instant, rows: u32) {
        let rows = f64::from(rows.max(1));
        if let Some(last) = self.last_arrival {
            // Arrivals may be stamped out of order across threads: such a gap counts as 0.
            let gap = (at.saturating_duration_since(last).as_nanos() as f64).min(MAX_GAP_NS);
            self.gap_ns =
                if self.gap_ns == 0.0 { gap.max(1.0) } else { ewma(self.gap_ns, gap, ARRIVAL_WEIGHT) };
        }
        self.rows_per_arrival = ewma(self.rows_per_arrival, rows, ARRIVAL_WEIGHT);
        self.last_arrival = Some(self.last_arrival.map_or(at, |last| last.max(at)));
    }

    /// An instance was busy `took` with a batch of `rows` rows (from taking it to being free
    /// again: the execution and the answers).
    pub fn executed(&mut self, rows: u32, took: Duration) {
        let rows = rows.max(1);
        let e = &mut self.executions[class(rows)];
        let ns = took.as_nanos().min(u128::from(u64::MAX)) as f64;
        if e.samples == 0 {
            *e = Execution { rows: f64::from(rows), ns, samples: 1 };
        } else {
            e.rows = ewma(e.rows, f64::from(rows), EXECUTION_WEIGHT);
            e.ns = ewma(e.ns, ns, EXECUTION_WEIGHT);
            e.samples = e.samples.saturating_add(1);
        }
    }

    /// How much longer a free instance should wait before running the `rows` rows gathered,
    /// whose oldest request has waited `waited`, when a batch holds at most `max_rows`.
    /// `Duration::ZERO`: run now.
    pub fn delay(&self, waited: Duration, rows: u32, max_rows: u32) -> Duration {
        let rows = rows.max(1);
        let Some(room) = self.budget.checked_sub(waited).filter(|r| !r.is_zero()) else {
            return Duration::ZERO;
        };
        let room_ns = room.as_nanos() as f64;
        if self.gap_ns <= 0.0 || rows >= max_rows {
            return Duration::ZERO;
        }
        let Some(now_ns) = self.execution_ns(rows) else { return Duration::ZERO };
        let ns_per_row = self.gap_ns / self.rows_per_arrival.max(1.0);
        let mut best_rate = f64::from(rows) / now_ns * MARGIN;
        let mut best_wait = 0.0;
        let mut consider = |more: u32| -> bool {
            let wait = f64::from(more) * ns_per_row;
            if wait > room_ns {
                return false;
            }
            let Some(run_ns) = self.execution_ns(rows + more) else { return false };
            let rate = f64::from(rows + more) / (wait + run_ns);
            if rate > best_rate {
                best_rate = rate;
                best_wait = wait;
            }
            true
        };
        // Waits for 1, 2, 4, ... more rows, then for a full batch: at most 18 candidates.
        let mut more = 1u32;
        while rows + more < max_rows && consider(more) {
            more = more.saturating_mul(2);
        }
        consider(max_rows - rows);
        Duration::from_nanos(best_wait as u64)
    }

    /// Remembers the delay a batch got, counted from its oldest request's arrival.
    pub(crate) fn chose(&mut self, delay: Duration) {
        self.last_delay = delay;
    }

    /// The expected busy time of a batch of `rows`: interpolated between the classes seen
    /// around it, extrapolated from the two largest up to twice the largest seen, scaled in
    /// proportion below the smallest. `None` without evidence.
    fn execution_ns(&self, rows: u32) -> Option<f64> {
        let r = f64::from(rows);
        let seen = || self.executions.iter().filter(|e| e.samples > 0);
        let below = seen().rfind(|e| e.rows <= r);
        let above = seen().find(|e| e.rows >= r);
        match (below, above) {
            (Some(b), Some(a)) if a.rows > b.rows => {
                Some(b.ns + (a.ns - b.ns) * (r - b.rows) / (a.rows - b.rows))
            }
            (Some(b), Some(_)) => Some(b.ns),
            (None, Some(a)) => Some(a.ns * r / a.rows),
            (Some(b), None) => {
                if r > 2.0 * b.rows {
                    return None;
                }
                let smaller = seen().rfind(|e| e.rows < b.rows);
                let slope = match smaller {
                    Some(s) => ((b.ns - s.ns) / (b.rows - s.rows)).max(0.0),
                    // One size seen: no sign of a fixed cost per batch, so none is assumed.
                    None => b.ns / b.rows,
                };
                Some(b.ns + slope * (r - b.rows))
            }
            (None, None) => None,
        }
    }
}

fn ewma(average: f64, sample: f64, weight: f64) -> f64 {
    average + weight * (sample - average)
}

/// The class of a batch of `rows` (>= 1): ceil(log2(rows)), capped.
fn class(rows: u32) -> usize {
    ((u32::BITS - (rows - 1).leading_zeros()) as usize).min(CLASSES - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    /// A controller that saw `arrivals` arrivals of one row `gap` apart, and batches of each
    /// `(rows, busy)`.
    fn trained(budget: Duration, gap: Duration, arrivals: u32, runs: &[(u32, Duration)]) -> DelayController {
        let mut c = DelayController::new(budget);
        let t0 = Instant::now();
        for i in 0..arrivals {
            c.arrival(t0 + gap * i, 1);
        }
        for _ in 0..8 {
            for &(rows, took) in runs {
                c.executed(rows, took);
            }
        }
        c
    }

    #[test]
    fn classes_cover_every_size() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9, 65_536, u32::MAX].map(class), [0, 1, 2, 2, 3, 3, 4, 16, 16]);
    }

    #[test]
    fn a_lone_request_never_waits() {
        // Concurrency 1: the next request comes only after this one's answer, one round trip
        // (400 µs) later; a batch of one takes 30 µs and a fixed cost makes larger ones cheaper
        // per row. Waiting 400 µs for a second row would cut the rate, so it runs now.
        let c = trained(5000 * US, 400 * US, 100, &[(1, 30 * US), (2, 32 * US), (8, 40 * US)]);
        assert_eq!(c.delay(Duration::ZERO, 1, 64), Duration::ZERO);
        // A slow model (35 ms a row, batches barely cheaper per row) at concurrency 1: no wait.
        let ms = Duration::from_millis(1);
        let slow = trained(5000 * US, 45 * ms, 100, &[(1, 35 * ms), (2, 60 * ms), (4, 110 * ms)]);
        assert_eq!(slow.delay(Duration::ZERO, 1, 8), Duration::ZERO);
    }

    #[test]
    fn under_saturation_it_waits_for_rows_that_raise_the_rate() {
        // A row every 10 µs, a batch costs 100 µs plus 1 µs a row: running 4 rows now gives
        // 4/104 rows per µs; waiting 120 µs for 12 more gives 16/236. Worth it.
        let runs = [(1, 101 * US), (4, 104 * US), (16, 116 * US), (64, 164 * US)];
        let c = trained(5000 * US, 10 * US, 100, &runs);
        let wait = c.delay(Duration::ZERO, 4, 64);
        assert!(wait > Duration::ZERO, "waits");
        // The best wait found is for a full batch: 60 rows, 600 µs.
        assert_eq!(wait, 600 * US);
        // Never past the budget: the oldest waited 4.8 ms of 5; at most 200 µs (20 rows) more.
        let late = c.delay(4800 * US, 4, 64);
        assert!(late <= 200 * US && late > Duration::ZERO, "{late:?}");
        assert_eq!(c.delay(5000 * US, 4, 64), Duration::ZERO, "budget spent");
        assert_eq!(c.delay(Duration::ZERO, 64, 64), Duration::ZERO, "full");
    }

    #[test]
    fn no_evidence_no_wait() {
        let c = DelayController::new(5000 * US);
        assert_eq!(c.delay(Duration::ZERO, 1, 64), Duration::ZERO, "nothing known");
        // Arrivals fast, but only batches of one ever ran: nothing says a larger batch is
        // cheaper per row, so no wait.
        let c = trained(5000 * US, US, 100, &[(1, 100 * US)]);
        assert_eq!(c.delay(Duration::ZERO, 1, 64), Duration::ZERO);
        // Linear cost with no fixed part: batching gains nothing.
        let c = trained(5000 * US, US, 100, &[(1, 10 * US), (2, 20 * US), (4, 40 * US)]);
        assert_eq!(c.delay(Duration::ZERO, 2, 64), Duration::ZERO);
    }

    #[test]
    fn execution_times_are_extrapolated_only_to_twice_the_largest_seen() {
        let c = trained(5000 * US, 10 * US, 10, &[(2, 20 * US), (4, 24 * US)]);
        assert_eq!(c.execution_ns(3), Some(22_000.0));
        assert_eq!(c.execution_ns(1), Some(10_000.0), "in proportion below the smallest");
        assert_eq!(c.execution_ns(8), Some(32_000.0));
        assert_eq!(c.execution_ns(9), None);
    }

    #[test]
    fn the_estimates_follow_the_traffic() {
        // Traffic at saturation, then a lull of one request every 2 ms: the arrival estimate
        // moves with it, and the controller stops waiting.
        let runs = [(1, 101 * US), (4, 104 * US), (16, 116 * US), (64, 164 * US)];
        let mut c = trained(5000 * US, 10 * US, 100, &runs);
        assert!(c.delay(Duration::ZERO, 4, 64) > Duration::ZERO);
        let t = Instant::now() + Duration::from_secs(1);
        for i in 0..40 {
            c.arrival(t + 2000 * US * i, 1);
        }
        assert_eq!(c.delay(Duration::ZERO, 1, 64), Duration::ZERO);
        // Arrivals stamped out of order or a long idle spell keep the estimates finite.
        c.arrival(t, 1);
        c.arrival(t + Duration::from_secs(3600), 1);
        assert!(c.gap_ns.is_finite() && c.gap_ns <= MAX_GAP_NS);
    }
}
