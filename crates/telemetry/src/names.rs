//! Every metric family Tern exports: name, help text and labels, in one place.
//!
//! `nv_*` families carry Triton's names, help texts and labels (taken from a real Triton 2.51's
//! `/metrics`), so Triton dashboards and alerts work unchanged. Triton does not follow
//! Prometheus naming conventions (no `_total` on counters, `_us` units): that is deliberate.
//! Everything Triton lacks is prefixed `tern_`.

/// Label: model name.
pub const LABEL_MODEL: &str = "model";
/// Label: model version, as a decimal string ("1").
pub const LABEL_VERSION: &str = "version";
/// Label: failure reason (see [`tern_core::FailureReason`]).
pub const LABEL_REASON: &str = "reason";
/// Label: NVML's GPU UUID ("GPU-8b0c...").
pub const LABEL_GPU_UUID: &str = "gpu_uuid";
/// Label: model readiness state (see [`tern_core::ModelState`]).
pub const LABEL_STATE: &str = "state";

/// One exported family: what a dashboard or alert rule can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
}

/// Prometheus metric type of a [`Family`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

const MV: &[&str] = &[LABEL_MODEL, LABEL_VERSION];
const MRV: &[&str] = &[LABEL_MODEL, LABEL_REASON, LABEL_VERSION];
const GPU: &[&str] = &[LABEL_GPU_UUID];
const NONE: &[&str] = &[];

macro_rules! family {
    ($(#[$doc:meta])* $id:ident, $name:literal, $kind:ident, $labels:expr, $help:literal) => {
        $(#[$doc])*
        pub const $id: Family = Family { name: $name, help: $help, kind: Kind::$kind, labels: $labels };
    };
}

// === Triton: inference (per model and version, fed at scrape time) ===

family!(
    INFERENCE_REQUEST_SUCCESS,
    "nv_inference_request_success",
    Counter,
    MV,
    "Number of successful inference requests, all batch sizes"
);
family!(
    INFERENCE_REQUEST_FAILURE,
    "nv_inference_request_failure",
    Counter,
    MRV,
    "Number of failed inference requests, all batch sizes"
);
family!(
    INFERENCE_COUNT,
    "nv_inference_count",
    Counter,
    MV,
    "Number of inferences performed (does not include cached requests)"
);
family!(
    INFERENCE_EXEC_COUNT,
    "nv_inference_exec_count",
    Counter,
    MV,
    "Number of model executions performed (does not include cached requests)"
);
family!(
    INFERENCE_REQUEST_DURATION_US,
    "nv_inference_request_duration_us",
    Counter,
    MV,
    "Cumulative inference request duration in microseconds (includes cached requests)"
);
family!(
    INFERENCE_QUEUE_DURATION_US,
    "nv_inference_queue_duration_us",
    Counter,
    MV,
    "Cumulative inference queuing duration in microseconds (includes cached requests)"
);
family!(
    INFERENCE_COMPUTE_INPUT_DURATION_US,
    "nv_inference_compute_input_duration_us",
    Counter,
    MV,
    "Cumulative compute input duration in microseconds (does not include cached requests)"
);
family!(
    INFERENCE_COMPUTE_INFER_DURATION_US,
    "nv_inference_compute_infer_duration_us",
    Counter,
    MV,
    "Cumulative compute inference duration in microseconds (does not include cached requests)"
);
family!(
    INFERENCE_COMPUTE_OUTPUT_DURATION_US,
    "nv_inference_compute_output_duration_us",
    Counter,
    MV,
    "Cumulative inference compute output duration in microseconds (does not include cached requests)"
);
family!(
    INFERENCE_PENDING_REQUEST_COUNT,
    "nv_inference_pending_request_count",
    Gauge,
    MV,
    "Instantaneous number of pending requests awaiting execution per-model."
);

// === Triton: response cache (per model and version, only for models that use the cache) ===
// Names and help texts from core src/metrics.cc; Triton exports no server-level cache family.

family!(
    CACHE_NUM_HITS_PER_MODEL,
    "nv_cache_num_hits_per_model",
    Counter,
    MV,
    "Number of cache hits per model"
);
family!(
    CACHE_HIT_DURATION_PER_MODEL,
    "nv_cache_hit_duration_per_model",
    Counter,
    MV,
    "Total cache hit duration per model, in microseconds"
);
family!(
    CACHE_NUM_MISSES_PER_MODEL,
    "nv_cache_num_misses_per_model",
    Counter,
    MV,
    "Number of cache misses per model"
);
family!(
    CACHE_MISS_DURATION_PER_MODEL,
    "nv_cache_miss_duration_per_model",
    Counter,
    MV,
    "Total cache miss (insert+lookup) duration per model, in microseconds"
);

// Triton's latency summaries (`--metrics-config summary_latencies=true`). Names and help texts are
// Triton's (core src/metrics.cc), whose compute summaries reuse the counters' help.
family!(
    INFERENCE_REQUEST_SUMMARY_US,
    "nv_inference_request_summary_us",
    Summary,
    MV,
    "Summary of inference request duration in microseconds (includes cached requests)"
);
family!(
    INFERENCE_QUEUE_SUMMARY_US,
    "nv_inference_queue_summary_us",
    Summary,
    MV,
    "Summary of inference queuing duration in microseconds (includes cached requests)"
);
family!(
    INFERENCE_COMPUTE_INPUT_SUMMARY_US,
    "nv_inference_compute_input_summary_us",
    Summary,
    MV,
    "Cumulative compute input duration in microseconds (does not include cached requests)"
);
family!(
    INFERENCE_COMPUTE_INFER_SUMMARY_US,
    "nv_inference_compute_infer_summary_us",
    Summary,
    MV,
    "Cumulative compute inference duration in microseconds (does not include cached requests)"
);
family!(
    INFERENCE_COMPUTE_OUTPUT_SUMMARY_US,
    "nv_inference_compute_output_summary_us",
    Summary,
    MV,
    "Cumulative inference compute output duration in microseconds (does not include cached requests)"
);
family!(
    CACHE_HIT_SUMMARY_PER_MODEL,
    "nv_cache_hit_summary_per_model",
    Summary,
    MV,
    "Summary of cache hit counts/durations per model, in microseconds."
);
family!(
    CACHE_MISS_SUMMARY_PER_MODEL,
    "nv_cache_miss_summary_per_model",
    Summary,
    MV,
    "Summary of cache miss counts/durations per model, in microseconds."
);

// === Triton: memory pools, CPU and GPU (polled every --metrics-interval-ms) ===

family!(
    /// Tern has no pinned memory pool; exported as 0 like a Triton without one, for dashboards.
    PINNED_MEMORY_POOL_TOTAL_BYTES, "nv_pinned_memory_pool_total_bytes", Gauge, NONE,
    "Pinned memory pool total memory size, in bytes");
family!(
    PINNED_MEMORY_POOL_USED_BYTES,
    "nv_pinned_memory_pool_used_bytes",
    Gauge,
    NONE,
    "Pinned memory pool used memory size, in bytes"
);
family!(CPU_UTILIZATION, "nv_cpu_utilization", Gauge, NONE, "CPU utilization rate [0.0 - 1.0]");
family!(CPU_MEMORY_TOTAL_BYTES, "nv_cpu_memory_total_bytes", Gauge, NONE, "CPU total memory (RAM), in bytes");
family!(CPU_MEMORY_USED_BYTES, "nv_cpu_memory_used_bytes", Gauge, NONE, "CPU used memory (RAM), in bytes");
family!(GPU_UTILIZATION, "nv_gpu_utilization", Gauge, GPU, "GPU utilization rate [0.0 - 1.0)");
family!(GPU_MEMORY_TOTAL_BYTES, "nv_gpu_memory_total_bytes", Gauge, GPU, "GPU total memory, in bytes");
family!(GPU_MEMORY_USED_BYTES, "nv_gpu_memory_used_bytes", Gauge, GPU, "GPU used memory, in bytes");
family!(GPU_POWER_USAGE, "nv_gpu_power_usage", Gauge, GPU, "GPU power usage in watts");
family!(GPU_POWER_LIMIT, "nv_gpu_power_limit", Gauge, GPU, "GPU power management limit in watts");
family!(
    ENERGY_CONSUMPTION,
    "nv_energy_consumption",
    Counter,
    GPU,
    "GPU energy consumption in joules since the server started"
);

// === Tern-only ===

family!(
    REQUEST_LATENCY_US,
    "tern_inference_request_latency_us",
    Histogram,
    MV,
    "Inference request latency in microseconds, from arrival to response, successful and failed requests"
);
family!(BATCH_SIZE, "tern_inference_batch_size", Histogram, MV, "Batch size of model executions");
family!(
    BATCH_QUEUE_DELAY_US,
    "tern_batch_queue_delay_us",
    Gauge,
    MV,
    "Queue delay in microseconds the dynamic batcher chose for the last batch (models with queue_delay auto)"
);
family!(
    REQUEST_FAILURE_DURATION_US,
    "tern_inference_request_failure_duration_us",
    Counter,
    MV,
    "Cumulative duration of failed inference requests in microseconds"
);
family!(
    MODEL_STATE,
    "tern_model_state",
    Gauge,
    &[LABEL_MODEL, LABEL_STATE, LABEL_VERSION],
    "Model readiness: 1 for the state the model version is in, 0 for the others"
);
family!(
    MODEL_LOAD_DURATION_SECONDS,
    "tern_model_load_duration_seconds",
    Histogram,
    MV,
    "Time to load a model version (successful loads), in seconds"
);
family!(
    MODEL_LOAD_FAILURES_TOTAL,
    "tern_model_load_failures_total",
    Counter,
    MV,
    "Number of failed model version loads"
);
family!(
    MODEL_MEMORY_BYTES,
    "tern_model_memory_bytes",
    Gauge,
    MV,
    "Estimated memory used by a loaded model version (resident memory growth during its load), in bytes"
);
family!(
    PROCESS_RESIDENT_MEMORY_BYTES,
    "tern_process_resident_memory_bytes",
    Gauge,
    NONE,
    "Resident memory of the server process, in bytes"
);

// === Tern-only: generative language models (per model and version) ===
// Named after vLLM's families (`vllm:time_to_first_token_seconds`, ...), which LLM dashboards
// expect, under Tern's prefix.

family!(
    LLM_TIME_TO_FIRST_TOKEN_SECONDS,
    "tern_llm_time_to_first_token_seconds",
    Histogram,
    MV,
    "Time from a generation request's arrival to its first generated token, in seconds"
);
family!(
    LLM_INTER_TOKEN_LATENCY_SECONDS,
    "tern_llm_inter_token_latency_seconds",
    Histogram,
    MV,
    "Time between consecutive generated tokens of one sequence, in seconds"
);
family!(
    LLM_PROMPT_TOKENS_TOTAL,
    "tern_llm_prompt_tokens_total",
    Counter,
    MV,
    "Number of prompt tokens of finished generations (prefill)"
);
family!(
    LLM_GENERATION_TOKENS_TOTAL,
    "tern_llm_generation_tokens_total",
    Counter,
    MV,
    "Number of generated tokens"
);
family!(
    LLM_REQUEST_FINISHED_TOTAL,
    "tern_llm_request_finished_total",
    Counter,
    MRV,
    "Number of finished generations by finish reason (stop, length, cancelled, deadline, error)"
);
family!(
    LLM_NUM_REQUESTS_RUNNING,
    "tern_llm_num_requests_running",
    Gauge,
    MV,
    "Sequences in the engine's running batch now"
);
family!(
    LLM_NUM_REQUESTS_WAITING,
    "tern_llm_num_requests_waiting",
    Gauge,
    MV,
    "Generation requests waiting for admission (a batch slot and KV-cache room) now"
);
family!(
    LLM_KV_CACHE_USAGE_BYTES,
    "tern_llm_kv_cache_usage_bytes",
    Gauge,
    MV,
    "KV-cache bytes the engine holds now (padding included)"
);
family!(
    LLM_KV_CACHE_BUDGET_BYTES,
    "tern_llm_kv_cache_budget_bytes",
    Gauge,
    MV,
    "KV-cache bytes the engine may hold at once (config parameter kv_cache_bytes)"
);

family!(BUILD_INFO, "tern_build_info", Gauge, &["version"], "Always 1; the label carries the Tern version");

/// Every family, Triton's first. Some are absent from a scrape: GPU families without NVML, model
/// families before any model, the latency histogram when turned off.
pub const ALL: &[Family] = &[
    INFERENCE_REQUEST_SUCCESS,
    INFERENCE_REQUEST_FAILURE,
    INFERENCE_COUNT,
    INFERENCE_EXEC_COUNT,
    INFERENCE_REQUEST_DURATION_US,
    INFERENCE_QUEUE_DURATION_US,
    INFERENCE_COMPUTE_INPUT_DURATION_US,
    INFERENCE_COMPUTE_INFER_DURATION_US,
    INFERENCE_COMPUTE_OUTPUT_DURATION_US,
    INFERENCE_PENDING_REQUEST_COUNT,
    PINNED_MEMORY_POOL_TOTAL_BYTES,
    PINNED_MEMORY_POOL_USED_BYTES,
    CPU_UTILIZATION,
    CPU_MEMORY_TOTAL_BYTES,
    CPU_MEMORY_USED_BYTES,
    GPU_UTILIZATION,
    GPU_MEMORY_TOTAL_BYTES,
    GPU_MEMORY_USED_BYTES,
    GPU_POWER_USAGE,
    GPU_POWER_LIMIT,
    ENERGY_CONSUMPTION,
    REQUEST_LATENCY_US,
    BATCH_SIZE,
    BATCH_QUEUE_DELAY_US,
    REQUEST_FAILURE_DURATION_US,
    CACHE_NUM_HITS_PER_MODEL,
    CACHE_HIT_DURATION_PER_MODEL,
    CACHE_NUM_MISSES_PER_MODEL,
    CACHE_MISS_DURATION_PER_MODEL,
    INFERENCE_REQUEST_SUMMARY_US,
    INFERENCE_QUEUE_SUMMARY_US,
    INFERENCE_COMPUTE_INPUT_SUMMARY_US,
    INFERENCE_COMPUTE_INFER_SUMMARY_US,
    INFERENCE_COMPUTE_OUTPUT_SUMMARY_US,
    CACHE_HIT_SUMMARY_PER_MODEL,
    CACHE_MISS_SUMMARY_PER_MODEL,
    MODEL_STATE,
    MODEL_LOAD_DURATION_SECONDS,
    MODEL_LOAD_FAILURES_TOTAL,
    MODEL_MEMORY_BYTES,
    PROCESS_RESIDENT_MEMORY_BYTES,
    LLM_TIME_TO_FIRST_TOKEN_SECONDS,
    LLM_INTER_TOKEN_LATENCY_SECONDS,
    LLM_PROMPT_TOKENS_TOTAL,
    LLM_GENERATION_TOKENS_TOTAL,
    LLM_REQUEST_FINISHED_TOTAL,
    LLM_NUM_REQUESTS_RUNNING,
    LLM_NUM_REQUESTS_WAITING,
    LLM_KV_CACHE_USAGE_BYTES,
    LLM_KV_CACHE_BUDGET_BYTES,
    BUILD_INFO,
];

/// The family a series name belongs to, allowing a histogram's `_bucket`, `_sum` and `_count`
/// and a summary's `_sum` and `_count`.
pub fn family_of(series: &str) -> Option<&'static Family> {
    ALL.iter().find(|f| {
        let rest = series.strip_prefix(f.name);
        f.name == series
            || (f.kind == Kind::Histogram && rest.is_some_and(|r| matches!(r, "_bucket" | "_sum" | "_count")))
            || (f.kind == Kind::Summary && rest.is_some_and(|r| matches!(r, "_sum" | "_count")))
    })
}
