//! [`Metrics`]: the registry and every handle a server records into.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus::{CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, Opts, Registry};

use crate::TelemetryError;
use crate::config::{MetricsConfig, MetricsSettings};
use crate::model::{ModelCollector, ModelSampler, SamplerSlot};
use crate::names::{self, Family};
use crate::resource::{self, ResourceMonitor};

/// Bucket upper bounds of `tern_model_load_duration_seconds`.
pub const MODEL_LOAD_BUCKETS_S: &[f64] =
    &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Bucket upper bounds of `tern_llm_time_to_first_token_seconds` (vLLM's).
pub const TTFT_BUCKETS_S: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0,
];
/// Bucket upper bounds of `tern_llm_inter_token_latency_seconds` (vLLM's).
pub const ITL_BUCKETS_S: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

/// A health check for `/v2/health/live` and `/v2/health/ready`.
pub type HealthCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// Everything a server exports: Triton's families and Tern's. Share it as `Arc<Metrics>`.
///
/// Per-model inference counters come from a [`ModelSampler`] at scrape time
/// ([`Metrics::set_model_sampler`]); per-request latency, model loads and memory are recorded
/// here directly; CPU, memory and GPU are polled by [`crate::serve_metrics`].
pub struct Metrics {
    registry: Registry,
    settings: MetricsSettings,
    sampler: SamplerSlot,
    request_latency: Option<HistogramVec>,
    model_load_duration: HistogramVec,
    model_load_failures: CounterVec,
    model_memory: GaugeVec,
    llm: LlmFamilies,
    resources: ResourceMonitor,
    pub(crate) live: RwLock<Option<HealthCheck>>,
    pub(crate) ready: RwLock<Option<HealthCheck>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("settings", &self.settings).finish_non_exhaustive()
    }
}

fn histogram_vec(
    registry: &Registry,
    family: &Family,
    buckets: Vec<f64>,
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(HistogramOpts::new(family.name, family.help).buckets(buckets), family.labels)?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// Validates `config` and registers every family (GPU ones only when NVML loads).
    pub fn new(config: &MetricsConfig) -> Result<Self, TelemetryError> {
        let settings = config.settings()?;
        let registry = Registry::new();
        let sampler: SamplerSlot = Arc::default();
        registry.register(Box::new(ModelCollector::new(sampler.clone(), settings.counter_latencies)?))?;
        let request_latency = if settings.histogram_latencies {
            Some(histogram_vec(&registry, &names::REQUEST_LATENCY_US, settings.latency_buckets_us.clone())?)
        } else {
            None
        };
        let model_load_duration =
            histogram_vec(&registry, &names::MODEL_LOAD_DURATION_SECONDS, MODEL_LOAD_BUCKETS_S.to_vec())?;
        let family = &names::MODEL_LOAD_FAILURES_TOTAL;
        let model_load_failures = CounterVec::new(Opts::new(family.name, family.help), family.labels)?;
        registry.register(Box::new(model_load_failures.clone()))?;
        let family = &names::MODEL_MEMORY_BYTES;
        let model_memory = GaugeVec::new(Opts::new(family.name, family.help), family.labels)?;
        registry.register(Box::new(model_memory.clone()))?;
        let family = &names::BUILD_INFO;
        let build_info = GaugeVec::new(Opts::new(family.name, family.help), family.labels)?;
        registry.register(Box::new(build_info.clone()))?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1.0);
        let llm = LlmFamilies::new(&registry)?;
        let resources = ResourceMonitor::new(&registry, settings.cpu, settings.gpu)?;
        Ok(Metrics {
            registry,
            settings,
            sampler,
            request_latency,
            model_load_duration,
            model_load_failures,
            model_memory,
            llm,
            resources,
            live: RwLock::new(None),
            ready: RwLock::new(None),
        })
    }

    /// The decoded settings.
    pub fn settings(&self) -> &MetricsSettings {
        &self.settings
    }

    /// The registry, for a binary that adds families of its own (names in [`crate::names`]).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Plugs in the owner of per-model statistics (replaces any previous one).
    pub fn set_model_sampler(&self, sampler: Arc<dyn ModelSampler>) {
        *self.sampler.write().unwrap_or_else(PoisonError::into_inner) = Some(sampler);
    }

    /// `/v2/health/live` answers 200 when `check` is true, 503 otherwise (200 without a check).
    pub fn set_liveness(&self, check: HealthCheck) {
        *self.live.write().unwrap_or_else(PoisonError::into_inner) = Some(check);
    }

    /// `/v2/health/ready` answers 200 when `check` is true, 503 otherwise (404 without a check).
    pub fn set_readiness(&self, check: HealthCheck) {
        *self.ready.write().unwrap_or_else(PoisonError::into_inner) = Some(check);
    }

    // --- per request ---

    /// The quantiles of Triton's latency summaries when `summary_latencies=true`; `None` when
    /// they are off. The scheduler keeps the summaries with each model's statistics.
    pub fn summary_quantiles(&self) -> Option<Vec<f64>> {
        let s = &self.settings;
        s.summary_latencies.then(|| s.summary_quantiles.iter().map(|(q, _)| *q).collect())
    }

    /// A cached handle to one model version's latency histogram: take it at load, observe per
    /// request without a label lookup. A no-op handle when histogram latencies are off.
    pub fn request_latency(&self, model: &str, version: &str) -> RequestLatency {
        RequestLatency(self.request_latency.as_ref().map(|h| h.with_label_values(&[model, version])))
    }

    /// Records one request's latency (arrival to response, success or failure).
    pub fn observe_request(&self, model: &str, version: &str, duration: Duration) {
        self.request_latency(model, version).observe(duration);
    }

    /// Cached handles to one generative model version's series: take them once per version,
    /// record per token without a label lookup.
    pub fn generation(&self, model: &str, version: &str) -> GenerationMetrics {
        let l = &self.llm;
        GenerationMetrics {
            ttft: l.ttft.with_label_values(&[model, version]),
            itl: l.itl.with_label_values(&[model, version]),
            prompt_tokens: l.prompt_tokens.with_label_values(&[model, version]),
            generation_tokens: l.generation_tokens.with_label_values(&[model, version]),
            finished: l.finished.clone(),
            model: model.to_owned(),
            version: version.to_owned(),
        }
    }

    // --- model lifecycle ---

    /// A model version loaded in `duration`; `memory_bytes` is its estimated footprint.
    pub fn model_loaded(&self, model: &str, version: &str, duration: Duration, memory_bytes: Option<u64>) {
        self.model_load_duration.with_label_values(&[model, version]).observe(duration.as_secs_f64());
        // Create the failure series at 0 so `increase()` sees the first failure.
        self.model_load_failures.with_label_values(&[model, version]);
        if let Some(bytes) = memory_bytes {
            self.model_memory.with_label_values(&[model, version]).set(bytes as f64);
        }
    }

    /// A model version failed to load.
    pub fn model_load_failed(&self, model: &str, version: &str) {
        self.model_load_failures.with_label_values(&[model, version]).inc();
    }

    /// A model version was unloaded: its memory gauge and latency series go away. (Load
    /// history stays: counters must not reset while the process lives.)
    pub fn model_unloaded(&self, model: &str, version: &str) {
        let _ = self.model_memory.remove_label_values(&[model, version]);
        if let Some(h) = &self.request_latency {
            let _ = h.remove_label_values(&[model, version]);
        }
        let _ = self.llm.ttft.remove_label_values(&[model, version]);
        let _ = self.llm.itl.remove_label_values(&[model, version]);
    }

    // --- resources and exposition ---

    /// Number of GPUs reported through NVML (0 without NVML or with GPU metrics off).
    pub fn gpu_count(&self) -> usize {
        self.resources.gpu_count()
    }

    /// Refreshes CPU, memory and GPU readings once. Blocking: call from a blocking thread.
    pub fn refresh_resources(&self) {
        self.resources.refresh();
    }

    /// The exposition in Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!("metrics encoding failed: {e}");
        }
        String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// One model version's latency histogram (see [`Metrics::request_latency`]).
#[derive(Clone, Debug)]
pub struct RequestLatency(Option<Histogram>);

impl RequestLatency {
    /// Records one request's latency in microseconds.
    pub fn observe(&self, duration: Duration) {
        if let Some(h) = &self.0 {
            h.observe(duration.as_secs_f64() * 1e6);
        }
    }
}

/// The families of generative models recorded per event (the gauges come from the model
/// sampler at scrape time, [`crate::GenerativeSample`]).
struct LlmFamilies {
    ttft: HistogramVec,
    itl: HistogramVec,
    prompt_tokens: CounterVec,
    generation_tokens: CounterVec,
    finished: CounterVec,
}

impl LlmFamilies {
    fn new(registry: &Registry) -> prometheus::Result<LlmFamilies> {
        let counter = |family: &Family| -> prometheus::Result<CounterVec> {
            let c = CounterVec::new(Opts::new(family.name, family.help), family.labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(LlmFamilies {
            ttft: histogram_vec(registry, &names::LLM_TIME_TO_FIRST_TOKEN_SECONDS, TTFT_BUCKETS_S.to_vec())?,
            itl: histogram_vec(registry, &names::LLM_INTER_TOKEN_LATENCY_SECONDS, ITL_BUCKETS_S.to_vec())?,
            prompt_tokens: counter(&names::LLM_PROMPT_TOKENS_TOTAL)?,
            generation_tokens: counter(&names::LLM_GENERATION_TOKENS_TOTAL)?,
            finished: counter(&names::LLM_REQUEST_FINISHED_TOTAL)?,
        })
    }
}

/// One generative model version's per-event series (see [`Metrics::generation`]).
#[derive(Clone, Debug)]
pub struct GenerationMetrics {
    ttft: Histogram,
    itl: Histogram,
    prompt_tokens: prometheus::Counter,
    generation_tokens: prometheus::Counter,
    finished: CounterVec,
    model: String,
    version: String,
}

impl GenerationMetrics {
    /// A sequence's first token, `elapsed` after its request arrived.
    pub fn first_token(&self, elapsed: Duration) {
        self.ttft.observe(elapsed.as_secs_f64());
        self.generation_tokens.inc();
    }

    /// A later token, `gap` after the sequence's previous one.
    pub fn next_token(&self, gap: Duration) {
        self.itl.observe(gap.as_secs_f64());
        self.generation_tokens.inc();
    }

    /// A generation ended (`reason`: "stop", "length", "cancelled", "deadline" or "error")
    /// after a prompt of `prompt_tokens`.
    pub fn finished(&self, reason: &str, prompt_tokens: u64) {
        self.prompt_tokens.inc_by(prompt_tokens as f64);
        self.finished.with_label_values(&[&self.model, reason, &self.version]).inc();
    }
}

/// The process's resident memory now, for a per-model memory estimate around a load.
pub fn process_resident_memory_bytes() -> Option<u64> {
    resource::process_resident_memory_bytes()
}
