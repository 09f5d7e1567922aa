//! Per-model inference metrics, read from their owner at scrape time.
//!
//! The scheduler keeps per model/version statistics (the numbers the statistics extension
//! reports); a [`ModelSampler`] hands a snapshot of them to [`ModelCollector`] on each scrape,
//! which renders Triton's families. So `/metrics` and `ModelStatistics` agree by construction,
//! and the request path pays nothing for metrics beyond the statistics it keeps anyway.

use std::sync::{Arc, PoisonError, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use tern_core::{FailureReason, ModelState};

use crate::names::{self, Family, LABEL_MODEL, LABEL_REASON, LABEL_STATE, LABEL_VERSION};

// === ModelSample ===

/// A snapshot of one model version's cumulative statistics. Durations are nanoseconds, as the
/// statistics extension keeps them; the exporter renders microseconds (`ns / 1000`) as Triton.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelSample {
    pub model: String,
    pub version: String,
    /// Successful requests and their cumulative end-to-end duration.
    pub success_count: u64,
    pub success_ns: u64,
    /// Failed requests by reason (a reason may repeat; counts add up).
    pub failures: Vec<(FailureReason, u64)>,
    /// Cumulative duration of failed requests (Triton's request duration counts successes only,
    /// so this goes to `tern_inference_request_failure_duration_us`).
    pub fail_ns: u64,
    /// Cumulative durations of successful requests' phases.
    pub queue_ns: u64,
    pub compute_input_ns: u64,
    pub compute_infer_ns: u64,
    pub compute_output_ns: u64,
    /// Inferences (sum of batch sizes) and model executions.
    pub inference_count: u64,
    pub execution_count: u64,
    /// Requests waiting for execution now.
    pub pending: u64,
    /// Executions per batch size, `(batch_size, executions)`, as the statistics extension's
    /// `batch_stats`; rendered as the `tern_inference_batch_size` histogram. Empty: no histogram.
    pub batch_executions: Vec<(u64, u64)>,
    /// With `queue_delay: auto`: the queue delay chosen for the last batch, in microseconds;
    /// `None` (a fixed delay): no series.
    pub queue_delay_us: Option<f64>,
    /// Response-cache counters of a model version whose config enables the cache; `None`: no
    /// cache series.
    pub cache: Option<CacheSample>,
    /// Latency summaries (`--metrics-config summary_latencies=true`); empty when off.
    pub summaries: Vec<SummarySample>,
}

/// Which of Triton's latency summaries a [`SummarySample`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryFamily {
    Request,
    Queue,
    ComputeInput,
    ComputeInfer,
    ComputeOutput,
    CacheHit,
    CacheMiss,
}

impl SummaryFamily {
    fn family(self) -> &'static Family {
        match self {
            SummaryFamily::Request => &names::INFERENCE_REQUEST_SUMMARY_US,
            SummaryFamily::Queue => &names::INFERENCE_QUEUE_SUMMARY_US,
            SummaryFamily::ComputeInput => &names::INFERENCE_COMPUTE_INPUT_SUMMARY_US,
            SummaryFamily::ComputeInfer => &names::INFERENCE_COMPUTE_INFER_SUMMARY_US,
            SummaryFamily::ComputeOutput => &names::INFERENCE_COMPUTE_OUTPUT_SUMMARY_US,
            SummaryFamily::CacheHit => &names::CACHE_HIT_SUMMARY_PER_MODEL,
            SummaryFamily::CacheMiss => &names::CACHE_MISS_SUMMARY_PER_MODEL,
        }
    }

    const ALL: [SummaryFamily; 7] = [
        SummaryFamily::Request,
        SummaryFamily::Queue,
        SummaryFamily::ComputeInput,
        SummaryFamily::ComputeInfer,
        SummaryFamily::ComputeOutput,
        SummaryFamily::CacheHit,
        SummaryFamily::CacheMiss,
    ];
}

/// One latency summary of one model version: cumulative count and sum (µs), and `(quantile,
/// µs)` over the recent window (NaN when the window is empty).
#[derive(Debug, Clone, PartialEq)]
pub struct SummarySample {
    pub family: SummaryFamily,
    pub count: u64,
    pub sum_us: u64,
    pub quantiles: Vec<(f64, f64)>,
}

/// One model version's response-cache hits and misses; durations in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheSample {
    pub hits: u64,
    pub hit_ns: u64,
    pub misses: u64,
    pub miss_ns: u64,
}

impl ModelSample {
    /// Failures for one reason, summing repeated entries.
    pub fn failures_for(&self, reason: FailureReason) -> u64 {
        self.failures.iter().filter(|(r, _)| *r == reason).map(|(_, n)| n).sum()
    }
}

/// One model version's readiness, for `tern_model_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelStateSample {
    pub model: String,
    pub version: String,
    pub state: ModelState,
}

/// A generative model version's engine, now (`Engine::stats` at scrape time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerativeSample {
    pub model: String,
    pub version: String,
    /// Sequences in the running batch.
    pub running: u64,
    /// Requests waiting for admission.
    pub waiting: u64,
    pub kv_cache_bytes_in_use: u64,
    pub kv_cache_budget_bytes: u64,
}

/// The owner of per-model statistics, asked on every scrape. Must be cheap (atomic loads).
///
/// A closure `Fn() -> Vec<ModelSample>` is a sampler too.
pub trait ModelSampler: Send + Sync {
    /// Statistics of every model version that has any (loaded, or unloaded but still reported).
    fn samples(&self) -> Vec<ModelSample>;

    /// Readiness of every model version the node knows, including ones that failed to load.
    fn model_states(&self) -> Vec<ModelStateSample> {
        Vec::new()
    }

    /// The engines of every loaded generative model version.
    fn generative(&self) -> Vec<GenerativeSample> {
        Vec::new()
    }
}

impl<F> ModelSampler for F
where
    F: Fn() -> Vec<ModelSample> + Send + Sync,
{
    fn samples(&self) -> Vec<ModelSample> {
        self()
    }
}

// === ModelCollector ===

/// Where the sampler is plugged in; set after the registry exists (the model manager is built
/// after the metrics, and records load metrics into them).
pub(crate) type SamplerSlot = Arc<RwLock<Option<Arc<dyn ModelSampler>>>>;

/// Bucket upper bounds of `tern_inference_batch_size`.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A prometheus [`Collector`] that renders Triton's per-model families from a [`ModelSampler`].
pub struct ModelCollector {
    slot: SamplerSlot,
    descs: Vec<Desc>,
    counter_latencies: bool,
}

/// The families this collector renders, in output order.
const FAMILIES: &[Family] = &[
    names::INFERENCE_REQUEST_SUCCESS,
    names::INFERENCE_REQUEST_FAILURE,
    names::INFERENCE_COUNT,
    names::INFERENCE_EXEC_COUNT,
    names::INFERENCE_REQUEST_DURATION_US,
    names::INFERENCE_QUEUE_DURATION_US,
    names::INFERENCE_COMPUTE_INPUT_DURATION_US,
    names::INFERENCE_COMPUTE_INFER_DURATION_US,
    names::INFERENCE_COMPUTE_OUTPUT_DURATION_US,
    names::INFERENCE_PENDING_REQUEST_COUNT,
    names::REQUEST_FAILURE_DURATION_US,
    names::BATCH_SIZE,
    names::BATCH_QUEUE_DELAY_US,
    names::CACHE_NUM_HITS_PER_MODEL,
    names::CACHE_HIT_DURATION_PER_MODEL,
    names::CACHE_NUM_MISSES_PER_MODEL,
    names::CACHE_MISS_DURATION_PER_MODEL,
    names::INFERENCE_REQUEST_SUMMARY_US,
    names::INFERENCE_QUEUE_SUMMARY_US,
    names::INFERENCE_COMPUTE_INPUT_SUMMARY_US,
    names::INFERENCE_COMPUTE_INFER_SUMMARY_US,
    names::INFERENCE_COMPUTE_OUTPUT_SUMMARY_US,
    names::CACHE_HIT_SUMMARY_PER_MODEL,
    names::CACHE_MISS_SUMMARY_PER_MODEL,
    names::MODEL_STATE,
    names::LLM_NUM_REQUESTS_RUNNING,
    names::LLM_NUM_REQUESTS_WAITING,
    names::LLM_KV_CACHE_USAGE_BYTES,
    names::LLM_KV_CACHE_BUDGET_BYTES,
];

impl ModelCollector {
    /// `counter_latencies`: Triton's `--metrics-config counter_latencies` (the cumulative
    /// latency counters, cache durations included).
    pub(crate) fn new(slot: SamplerSlot, counter_latencies: bool) -> prometheus::Result<Self> {
        let descs = FAMILIES
            .iter()
            .map(|f| {
                let labels = f.labels.iter().map(|l| l.to_string()).collect();
                Desc::new(f.name.to_string(), f.help.to_string(), labels, Default::default())
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(ModelCollector { slot, descs, counter_latencies })
    }

    fn sampler(&self) -> Option<Arc<dyn ModelSampler>> {
        self.slot.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Collector for ModelCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        match self.sampler() {
            Some(sampler) => {
                let options = RenderOptions { counter_latencies: self.counter_latencies };
                let mut families = render_with(&sampler.samples(), &sampler.model_states(), options);
                families.extend(render_generative(&sampler.generative()));
                families
            }
            None => Vec::new(),
        }
    }
}

/// What [`render_with`] leaves out.
#[derive(Debug, Clone, Copy)]
pub struct RenderOptions {
    /// Triton's latency counters (`counter_latencies`, on by default).
    pub counter_latencies: bool,
}

/// Renders samples into metric families with Triton's defaults (empty families are pruned by
/// the registry).
pub fn render(samples: &[ModelSample], states: &[ModelStateSample]) -> Vec<MetricFamily> {
    render_with(samples, states, RenderOptions { counter_latencies: true })
}

/// Renders samples into metric families (empty families are pruned by the registry).
pub fn render_with(
    samples: &[ModelSample],
    states: &[ModelStateSample],
    options: RenderOptions,
) -> Vec<MetricFamily> {
    let us = |ns: u64| (ns / 1000) as f64;
    let mut out = Vec::with_capacity(FAMILIES.len());
    let mut per_model = |family: &Family, value: &dyn Fn(&ModelSample) -> f64| {
        let metrics = samples
            .iter()
            .map(|s| {
                let labels = labels(&[(LABEL_MODEL, &s.model), (LABEL_VERSION, &s.version)]);
                scalar(family.kind, labels, value(s))
            })
            .collect();
        out.push(family_of(family, metrics));
    };
    per_model(&names::INFERENCE_REQUEST_SUCCESS, &|s| s.success_count as f64);
    per_model(&names::INFERENCE_COUNT, &|s| s.inference_count as f64);
    per_model(&names::INFERENCE_EXEC_COUNT, &|s| s.execution_count as f64);
    // Triton's `counter_latencies=false` drops the latency counters (core
    // src/metric_model_reporter.cc, `InitializeCounters`).
    if options.counter_latencies {
        per_model(&names::INFERENCE_REQUEST_DURATION_US, &|s| us(s.success_ns));
        per_model(&names::INFERENCE_QUEUE_DURATION_US, &|s| us(s.queue_ns));
        per_model(&names::INFERENCE_COMPUTE_INPUT_DURATION_US, &|s| us(s.compute_input_ns));
        per_model(&names::INFERENCE_COMPUTE_INFER_DURATION_US, &|s| us(s.compute_infer_ns));
        per_model(&names::INFERENCE_COMPUTE_OUTPUT_DURATION_US, &|s| us(s.compute_output_ns));
    }
    per_model(&names::INFERENCE_PENDING_REQUEST_COUNT, &|s| s.pending as f64);
    per_model(&names::REQUEST_FAILURE_DURATION_US, &|s| us(s.fail_ns));

    let mut cached = |family: &Family, value: &dyn Fn(&CacheSample) -> f64| {
        let metrics = samples
            .iter()
            .filter_map(|s| {
                let labels = labels(&[(LABEL_MODEL, &s.model), (LABEL_VERSION, &s.version)]);
                Some(scalar(family.kind, labels, value(s.cache.as_ref()?)))
            })
            .collect();
        out.push(family_of(family, metrics));
    };
    // The cache counters sit with the latency counters in Triton's reporter.
    if options.counter_latencies {
        cached(&names::CACHE_NUM_HITS_PER_MODEL, &|c| c.hits as f64);
        cached(&names::CACHE_HIT_DURATION_PER_MODEL, &|c| us(c.hit_ns));
        cached(&names::CACHE_NUM_MISSES_PER_MODEL, &|c| c.misses as f64);
        cached(&names::CACHE_MISS_DURATION_PER_MODEL, &|c| us(c.miss_ns));
    }

    for kind in SummaryFamily::ALL {
        let metrics = samples
            .iter()
            .flat_map(|s| s.summaries.iter().filter(move |x| x.family == kind).map(move |x| (s, x)))
            .map(|(s, x)| {
                let mut m = proto::Metric::from_label(labels(&[
                    (LABEL_MODEL, &s.model),
                    (LABEL_VERSION, &s.version),
                ]));
                m.set_summary(summary(x));
                m
            })
            .collect();
        out.push(family_of(kind.family(), metrics));
    }

    let failures = samples
        .iter()
        .flat_map(|s| {
            FailureReason::ALL.iter().map(move |&reason| {
                let labels = labels(&[
                    (LABEL_MODEL, &s.model),
                    (LABEL_REASON, reason.as_str()),
                    (LABEL_VERSION, &s.version),
                ]);
                scalar(names::Kind::Counter, labels, s.failures_for(reason) as f64)
            })
        })
        .collect();
    out.push(family_of(&names::INFERENCE_REQUEST_FAILURE, failures));

    let batches = samples
        .iter()
        .filter(|s| !s.batch_executions.is_empty())
        .map(|s| {
            let mut m =
                proto::Metric::from_label(labels(&[(LABEL_MODEL, &s.model), (LABEL_VERSION, &s.version)]));
            m.set_histogram(batch_histogram(&s.batch_executions));
            m
        })
        .collect();
    out.push(family_of(&names::BATCH_SIZE, batches));

    let delays = samples
        .iter()
        .filter_map(|s| {
            let labels = labels(&[(LABEL_MODEL, &s.model), (LABEL_VERSION, &s.version)]);
            Some(scalar(names::Kind::Gauge, labels, s.queue_delay_us?))
        })
        .collect();
    out.push(family_of(&names::BATCH_QUEUE_DELAY_US, delays));

    let states = states
        .iter()
        .flat_map(|s| {
            ModelState::ALL.iter().map(move |&state| {
                let labels = labels(&[
                    (LABEL_MODEL, &s.model),
                    (LABEL_STATE, state.as_str()),
                    (LABEL_VERSION, &s.version),
                ]);
                scalar(names::Kind::Gauge, labels, if state == s.state { 1.0 } else { 0.0 })
            })
        })
        .collect();
    out.push(family_of(&names::MODEL_STATE, states));
    out
}

/// Renders the engines' gauges (empty families are pruned by the registry).
pub fn render_generative(samples: &[GenerativeSample]) -> Vec<MetricFamily> {
    let gauge = |family: &Family, value: &dyn Fn(&GenerativeSample) -> u64| {
        let metrics = samples
            .iter()
            .map(|s| {
                let labels = labels(&[(LABEL_MODEL, &s.model), (LABEL_VERSION, &s.version)]);
                scalar(names::Kind::Gauge, labels, value(s) as f64)
            })
            .collect();
        family_of(family, metrics)
    };
    vec![
        gauge(&names::LLM_NUM_REQUESTS_RUNNING, &|s| s.running),
        gauge(&names::LLM_NUM_REQUESTS_WAITING, &|s| s.waiting),
        gauge(&names::LLM_KV_CACHE_USAGE_BYTES, &|s| s.kv_cache_bytes_in_use),
        gauge(&names::LLM_KV_CACHE_BUDGET_BYTES, &|s| s.kv_cache_budget_bytes),
    ]
}

fn summary(x: &SummarySample) -> proto::Summary {
    let mut s = proto::Summary::default();
    s.set_sample_count(x.count);
    s.set_sample_sum(x.sum_us as f64);
    let quantiles = x
        .quantiles
        .iter()
        .map(|&(q, v)| {
            let mut pq = proto::Quantile::default();
            pq.set_quantile(q);
            pq.set_value(v);
            pq
        })
        .collect();
    s.set_quantile(quantiles);
    s
}

/// A histogram with exact counts: each execution's batch size is known, so buckets are exact.
fn batch_histogram(batches: &[(u64, u64)]) -> proto::Histogram {
    let mut h = proto::Histogram::default();
    let count: u64 = batches.iter().map(|(_, n)| n).sum();
    let sum: f64 = batches.iter().map(|(size, n)| (*size as f64) * (*n as f64)).sum();
    let buckets = BATCH_SIZE_BUCKETS
        .iter()
        .map(|&bound| {
            let mut b = proto::Bucket::default();
            b.set_upper_bound(bound);
            b.set_cumulative_count(
                batches.iter().filter(|(size, _)| (*size as f64) <= bound).map(|(_, n)| n).sum(),
            );
            b
        })
        .collect();
    h.set_sample_count(count);
    h.set_sample_sum(sum);
    h.set_bucket(buckets);
    h
}

/// Label pairs, given in name order (the text format prints them as given).
fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut lp = LabelPair::default();
            lp.set_name(name.to_string());
            lp.set_value(value.to_string());
            lp
        })
        .collect()
}

fn scalar(kind: names::Kind, labels: Vec<LabelPair>, value: f64) -> proto::Metric {
    let mut m = proto::Metric::from_label(labels);
    if kind == names::Kind::Gauge {
        let mut g = proto::Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    } else {
        let mut c = proto::Counter::default();
        c.set_value(value);
        m.set_counter(c);
    }
    m
}

fn family_of(family: &Family, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(family.name.to_string());
    mf.set_help(family.help.to_string());
    mf.set_field_type(match family.kind {
        names::Kind::Counter => MetricType::COUNTER,
        names::Kind::Gauge => MetricType::GAUGE,
        names::Kind::Histogram => MetricType::HISTOGRAM,
        names::Kind::Summary => MetricType::SUMMARY,
    });
    mf.set_metric(metrics);
    mf
}
