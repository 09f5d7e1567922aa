//! tern-telemetry: what Tern shows operators — Prometheus metrics under Triton's names, resource
//! collectors, logs, and OpenTelemetry traces carried across gRPC hops.
//!
//! Layout:
//! - [`names`]: every metric family (name, help, labels) in one place. `nv_*` families are
//!   Triton's, so Triton dashboards and alerts work; Tern's own are prefixed `tern_`.
//! - [`Metrics`] (module `metrics`): the registry and the handles a server records into —
//!   per-request latency histogram, model load duration, failures and memory.
//! - [`ModelSampler`] / [`ModelSample`] (module `model`): per-model inference counters are *read*
//!   at scrape time from their owner (the scheduler's statistics), never double-counted here, so
//!   `/metrics` agrees with the statistics extension.
//! - `resource`: CPU and memory from `/proc`, process RSS, GPUs through NVML loaded at run time
//!   (absent NVML: no GPU families, one info line).
//! - [`serve_metrics`]: the HTTP endpoint (`GET /metrics`, health hooks) and the resource poller.
//! - [`MetricsConfig`], [`TracingConfig`]: clap `Args` to flatten into a binary's config.
//! - [`init_tracing`]: tracing-subscriber (text or JSON) plus OTLP/gRPC export when configured;
//!   [`extract_context`] / [`set_parent_from_metadata`] / [`inject_span_context`]: W3C trace
//!   context over gRPC metadata.
//!
//! This crate owns no statistics, no model state and no gRPC service: it renders what its
//! callers own. Of Tern's crates it depends only on `tern-core`, for the vocabulary it labels
//! with ([`tern_core::FailureReason`], [`tern_core::ModelState`]).
//!
//! Wiring, in a binary:
//! ```no_run
//! # use std::sync::Arc;
//! # async fn wire(metrics_cfg: tern_telemetry::MetricsConfig, tracing_cfg: tern_telemetry::TracingConfig) -> Result<(), Box<dyn std::error::Error>> {
//! let _guard = tern_telemetry::init_tracing(&tracing_cfg)?; // first thing in main
//! let metrics = Arc::new(tern_telemetry::Metrics::new(&metrics_cfg)?);
//! metrics.set_model_sampler(Arc::new(|| Vec::<tern_telemetry::ModelSample>::new()));
//! let listener = tokio::net::TcpListener::bind(metrics_cfg.metrics_addr()).await?;
//! let routes = tern_telemetry::router(metrics.clone());
//! tokio::spawn(tern_telemetry::serve_metrics(listener, metrics.clone(), routes, std::future::pending()));
//! metrics.observe_request("tiny_add", "1", std::time::Duration::from_micros(250));
//! # Ok(()) }
//! ```

pub mod config;
mod metrics;
mod model;
pub mod names;
mod propagation;
mod resource;
mod server;
pub mod settings;
mod trace;

pub use config::{DEFAULT_LATENCY_BUCKETS_US, DEFAULT_SUMMARY_QUANTILES, MetricsConfig, MetricsSettings};
pub use metrics::{
    GenerationMetrics, HealthCheck, ITL_BUCKETS_S, MODEL_LOAD_BUCKETS_S, Metrics, RequestLatency,
    TTFT_BUCKETS_S, process_resident_memory_bytes,
};
pub use model::{
    BATCH_SIZE_BUCKETS, CacheSample, GenerativeSample, ModelCollector, ModelSample, ModelSampler,
    ModelStateSample, RenderOptions, SummaryFamily, SummarySample, render as render_model_families,
    render_generative, render_with as render_model_families_with,
};
pub use propagation::{
    TRACE_ID_FIELD, extract_context, inject_context, inject_span_context, set_parent_from_metadata,
};
pub use server::{first_resource_reading, resource_task, router, serve_metrics};
pub use trace::{
    LogFormat, OtlpProtocol, OtlpSettings, TRITON_DEFAULT_OTLP_HTTP_URL, TracingConfig, TracingGuard,
    build_provider, init_tracing,
};

/// Telemetry setup errors. None of these happen while serving.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A flag or setting is invalid.
    #[error("{0}")]
    Config(String),
    /// A metric family could not be registered (a duplicate name: a bug).
    #[error("metrics registry: {0}")]
    Registry(#[from] prometheus::Error),
    /// Tracing or trace export could not be set up.
    #[error("{0}")]
    Tracing(String),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;

    fn sample(model: &str) -> ModelSample {
        ModelSample {
            model: model.into(),
            version: "1".into(),
            success_count: 853_838,
            success_ns: 1_987_547_631_999,
            failures: vec![
                (tern_core::FailureReason::Backend, 2),
                (tern_core::FailureReason::Rejected, 3),
                (tern_core::FailureReason::Backend, 1),
            ],
            fail_ns: 5_000,
            queue_ns: 894_966_972_000,
            compute_input_ns: 90_528_643_500,
            compute_infer_ns: 552_915_020_000,
            compute_output_ns: 443_327_675_000,
            inference_count: 853_838,
            execution_count: 341_688,
            pending: 7,
            batch_executions: vec![(1, 10), (3, 4), (64, 2)],
            queue_delay_us: Some(250.0),
            cache: None,
            summaries: Vec::new(),
        }
    }

    #[test]
    fn summaries_render_as_triton_and_counters_can_be_off() {
        let mut m = sample("tiny_add");
        m.summaries = vec![SummarySample {
            family: SummaryFamily::Queue,
            count: 161,
            sum_us: 11_110,
            quantiles: vec![(0.5, 55.0), (0.999, 101.0)],
        }];
        let mut idle = sample("idle");
        idle.summaries = vec![SummarySample {
            family: SummaryFamily::Queue,
            count: 0,
            sum_us: 0,
            quantiles: vec![(0.5, f64::NAN)],
        }];
        let cfg = MetricsConfig {
            allow_gpu_metrics: false,
            metrics_config: vec!["counter_latencies=false".into()],
            ..MetricsConfig::default()
        };
        let metrics = Metrics::new(&cfg).expect("metrics");
        let samples = vec![m, idle];
        metrics.set_model_sampler(std::sync::Arc::new(move || samples.clone()));
        let text = metrics.render();
        let got = lines(&text);
        for expected in [
            "# HELP nv_inference_queue_summary_us Summary of inference queuing duration in microseconds (includes cached requests)",
            "# TYPE nv_inference_queue_summary_us summary",
            r#"nv_inference_queue_summary_us{model="tiny_add",version="1",quantile="0.5"} 55"#,
            r#"nv_inference_queue_summary_us{model="tiny_add",version="1",quantile="0.999"} 101"#,
            r#"nv_inference_queue_summary_us_sum{model="tiny_add",version="1"} 11110"#,
            r#"nv_inference_queue_summary_us_count{model="tiny_add",version="1"} 161"#,
            r#"nv_inference_queue_summary_us{model="idle",version="1",quantile="0.5"} NaN"#,
            r#"nv_inference_request_success{model="tiny_add",version="1"} 853838"#,
        ] {
            assert!(got.contains(expected), "missing line {expected:?} in:\n{text}");
        }
        // counter_latencies=false: Triton's latency counters are gone, the others stay.
        assert!(!text.contains("nv_inference_queue_duration_us"), "{text}");
        assert!(!text.contains("nv_inference_request_duration_us"), "{text}");
        assert!(!text.contains("nv_inference_compute_infer_summary_us"), "only sampled summaries: {text}");
    }

    #[test]
    fn cache_families_only_for_models_that_use_the_cache() {
        let mut cached = sample("cached");
        cached.cache = Some(CacheSample { hits: 3, hit_ns: 4_000, misses: 2, miss_ns: 9_999 });
        let text = metrics_with(vec![cached, sample("plain")]).render();
        let got = lines(&text);
        for expected in [
            r#"nv_cache_num_hits_per_model{model="cached",version="1"} 3"#,
            r#"nv_cache_hit_duration_per_model{model="cached",version="1"} 4"#,
            r#"nv_cache_num_misses_per_model{model="cached",version="1"} 2"#,
            r#"nv_cache_miss_duration_per_model{model="cached",version="1"} 9"#,
            "# HELP nv_cache_miss_duration_per_model Total cache miss (insert+lookup) duration per model, in microseconds",
        ] {
            assert!(got.contains(expected), "missing line {expected:?} in:\n{text}");
        }
        assert!(!text.contains(r#"nv_cache_num_hits_per_model{model="plain""#), "{text}");
    }

    fn metrics_with(samples: Vec<ModelSample>) -> Metrics {
        let cfg = MetricsConfig { allow_gpu_metrics: false, ..MetricsConfig::default() };
        let m = Metrics::new(&cfg).expect("metrics");
        let states = samples
            .iter()
            .map(|s| ModelStateSample {
                model: s.model.clone(),
                version: s.version.clone(),
                state: tern_core::ModelState::Ready,
            })
            .collect::<Vec<_>>();
        struct Fixed(Vec<ModelSample>, Vec<ModelStateSample>);
        impl ModelSampler for Fixed {
            fn samples(&self) -> Vec<ModelSample> {
                self.0.clone()
            }
            fn model_states(&self) -> Vec<ModelStateSample> {
                self.1.clone()
            }
        }
        m.set_model_sampler(std::sync::Arc::new(Fixed(samples, states)));
        m
    }

    fn lines(text: &str) -> BTreeSet<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn renders_triton_families_with_exact_names_labels_and_values() {
        let text = metrics_with(vec![sample("tiny_add")]).render();
        let got = lines(&text);
        for expected in [
            "# HELP nv_inference_request_success Number of successful inference requests, all batch sizes",
            "# TYPE nv_inference_request_success counter",
            r#"nv_inference_request_success{model="tiny_add",version="1"} 853838"#,
            "# TYPE nv_inference_request_failure counter",
            r#"nv_inference_request_failure{model="tiny_add",reason="OTHER",version="1"} 0"#,
            r#"nv_inference_request_failure{model="tiny_add",reason="BACKEND",version="1"} 3"#,
            r#"nv_inference_request_failure{model="tiny_add",reason="CANCELED",version="1"} 0"#,
            r#"nv_inference_request_failure{model="tiny_add",reason="REJECTED",version="1"} 3"#,
            r#"nv_inference_count{model="tiny_add",version="1"} 853838"#,
            r#"nv_inference_exec_count{model="tiny_add",version="1"} 341688"#,
            // ns / 1000, truncated.
            r#"nv_inference_request_duration_us{model="tiny_add",version="1"} 1987547631"#,
            r#"nv_inference_queue_duration_us{model="tiny_add",version="1"} 894966972"#,
            r#"nv_inference_compute_input_duration_us{model="tiny_add",version="1"} 90528643"#,
            r#"nv_inference_compute_infer_duration_us{model="tiny_add",version="1"} 552915020"#,
            r#"nv_inference_compute_output_duration_us{model="tiny_add",version="1"} 443327675"#,
            "# TYPE nv_inference_pending_request_count gauge",
            r#"nv_inference_pending_request_count{model="tiny_add",version="1"} 7"#,
            r#"tern_inference_request_failure_duration_us{model="tiny_add",version="1"} 5"#,
            "# TYPE tern_inference_batch_size histogram",
            r#"tern_inference_batch_size_bucket{model="tiny_add",version="1",le="1"} 10"#,
            r#"tern_inference_batch_size_bucket{model="tiny_add",version="1",le="2"} 10"#,
            r#"tern_inference_batch_size_bucket{model="tiny_add",version="1",le="4"} 14"#,
            r#"tern_inference_batch_size_bucket{model="tiny_add",version="1",le="64"} 16"#,
            r#"tern_inference_batch_size_bucket{model="tiny_add",version="1",le="+Inf"} 16"#,
            r#"tern_inference_batch_size_sum{model="tiny_add",version="1"} 150"#,
            r#"tern_inference_batch_size_count{model="tiny_add",version="1"} 16"#,
            "# TYPE tern_batch_queue_delay_us gauge",
            r#"tern_batch_queue_delay_us{model="tiny_add",version="1"} 250"#,
            r#"tern_model_state{model="tiny_add",state="READY",version="1"} 1"#,
            r#"tern_model_state{model="tiny_add",state="LOADING",version="1"} 0"#,
            "nv_pinned_memory_pool_total_bytes 0",
            "# TYPE nv_cpu_memory_total_bytes gauge",
            r#"tern_build_info{version="0.1.0"} 1"#,
        ] {
            assert!(got.contains(expected), "missing line {expected:?} in:\n{text}");
        }
        // GPU metrics were turned off: no GPU family at all.
        assert!(!text.contains("nv_gpu_"), "{text}");
    }

    #[test]
    fn every_family_is_in_names_and_triton_families_match_the_reference() {
        let m = metrics_with(vec![sample("tiny_add"), sample("light_resnet50")]);
        m.observe_request("tiny_add", "1", Duration::from_micros(300));
        m.model_loaded("tiny_add", "1", Duration::from_millis(40), Some(1 << 20));
        m.model_load_failed("broken", "1");
        m.refresh_resources();
        let text = m.render();
        let ours = families(&text);
        for (name, (help, kind)) in &ours {
            let f = names::family_of(name).unwrap_or_else(|| panic!("{name} is not in names::ALL"));
            assert_eq!((f.help, kind_str(f.kind)), (help.as_str(), kind.as_str()), "{name}");
        }
        // Real Triton 2.51's /metrics: every family it shows, we show, with the same help and type
        // (only "Triton Server" wording in help texts may differ, and it shows none here).
        let reference = families(include_str!("../tests/data/triton_metrics.txt"));
        assert!(reference.len() >= 15, "reference parsed: {reference:?}");
        for (name, (help, kind)) in &reference {
            let (our_help, our_kind) = ours.get(name).unwrap_or_else(|| panic!("{name} not exported"));
            assert_eq!((our_help, our_kind), (help, kind), "{name}");
        }
        // Every `nv_` family we export is Triton's.
        for f in names::ALL.iter().filter(|f| f.name.starts_with("nv_")) {
            assert!(
                reference.contains_key(f.name)
                    || f.name.starts_with("nv_gpu_")
                    || f.name == "nv_energy_consumption"
                    // Triton 2.51 shows them only with a cache (names from core src/metrics.cc).
                    || f.name.starts_with("nv_cache_")
                    // Shown only with summary_latencies=true (names from core src/metrics.cc).
                    || f.kind == names::Kind::Summary,
                "{} is not a Triton family",
                f.name
            );
        }
        for f in names::ALL {
            assert!(f.name.starts_with("nv_") || f.name.starts_with("tern_"), "{}", f.name);
        }
    }

    #[test]
    fn latency_histogram_uses_configured_buckets_and_can_be_off() {
        let cfg = MetricsConfig {
            allow_gpu_metrics: false,
            metrics_config: vec!["latency_buckets_us=100,1000".into()],
            ..MetricsConfig::default()
        };
        let m = Metrics::new(&cfg).expect("metrics");
        let h = m.request_latency("m", "2");
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(500));
        m.observe_request("m", "2", Duration::from_secs(1));
        let got = lines(&m.render());
        for expected in [
            r#"tern_inference_request_latency_us_bucket{model="m",version="2",le="100"} 1"#,
            r#"tern_inference_request_latency_us_bucket{model="m",version="2",le="1000"} 2"#,
            r#"tern_inference_request_latency_us_bucket{model="m",version="2",le="+Inf"} 3"#,
            r#"tern_inference_request_latency_us_count{model="m",version="2"} 3"#,
            r#"tern_inference_request_latency_us_sum{model="m",version="2"} 1000550"#,
        ] {
            assert!(got.contains(expected), "missing {expected:?}");
        }
        m.model_unloaded("m", "2");
        assert!(!m.render().contains("tern_inference_request_latency_us_count{"));

        let off = MetricsConfig {
            allow_gpu_metrics: false,
            metrics_config: vec!["histogram_latencies=false".into()],
            ..MetricsConfig::default()
        };
        let m = Metrics::new(&off).expect("metrics");
        m.observe_request("m", "2", Duration::from_micros(5));
        assert!(!m.render().contains("tern_inference_request_latency_us"));
    }

    #[test]
    fn model_lifecycle_metrics() {
        let m = metrics_with(Vec::new());
        m.model_loaded("a", "1", Duration::from_millis(300), Some(1000));
        m.model_load_failed("b", "3");
        m.model_load_failed("b", "3");
        let got = lines(&m.render());
        for expected in [
            r#"tern_model_load_duration_seconds_bucket{model="a",version="1",le="0.25"} 0"#,
            r#"tern_model_load_duration_seconds_bucket{model="a",version="1",le="0.5"} 1"#,
            r#"tern_model_load_failures_total{model="a",version="1"} 0"#,
            r#"tern_model_load_failures_total{model="b",version="3"} 2"#,
            r#"tern_model_memory_bytes{model="a",version="1"} 1000"#,
        ] {
            assert!(got.contains(expected), "missing {expected:?}");
        }
        // No sampler samples: no per-model inference families at all (not empty ones).
        assert!(!got.iter().any(|l| l.contains("nv_inference_")));
    }

    #[test]
    fn resource_families_after_a_refresh() {
        let m = metrics_with(Vec::new());
        m.refresh_resources();
        let text = m.render();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
        };
        assert!(value("nv_cpu_memory_total_bytes") > 0.0);
        assert!(value("nv_cpu_memory_used_bytes") > 0.0);
        assert!(value("nv_cpu_memory_used_bytes") <= value("nv_cpu_memory_total_bytes"));
        assert!((0.0..=1.0).contains(&value("nv_cpu_utilization")));
        assert!(value("tern_process_resident_memory_bytes") > 1e6);
        let cpu_off =
            MetricsConfig { allow_cpu_metrics: false, allow_gpu_metrics: false, ..Default::default() };
        let m = Metrics::new(&cpu_off).expect("metrics");
        m.refresh_resources();
        assert!(!m.render().contains("nv_cpu_"));
    }

    fn kind_str(kind: names::Kind) -> &'static str {
        match kind {
            names::Kind::Counter => "counter",
            names::Kind::Gauge => "gauge",
            names::Kind::Histogram => "histogram",
            names::Kind::Summary => "summary",
        }
    }

    /// name -> (help, type) from `# HELP` / `# TYPE` lines.
    fn families(text: &str) -> std::collections::BTreeMap<String, (String, String)> {
        let mut out = std::collections::BTreeMap::<String, (String, String)>::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                out.entry(name.into()).or_default().0 = help.into();
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
                out.entry(name.into()).or_default().1 = kind.into();
            }
        }
        out
    }

    #[test]
    fn generative_model_metrics() {
        let cfg = MetricsConfig { allow_gpu_metrics: false, ..MetricsConfig::default() };
        let m = Metrics::new(&cfg).expect("metrics");
        struct Engines;
        impl ModelSampler for Engines {
            fn samples(&self) -> Vec<ModelSample> {
                Vec::new()
            }
            fn generative(&self) -> Vec<GenerativeSample> {
                vec![GenerativeSample {
                    model: "llm".into(),
                    version: "1".into(),
                    running: 3,
                    waiting: 2,
                    kv_cache_bytes_in_use: 4096,
                    kv_cache_budget_bytes: 1 << 20,
                }]
            }
        }
        m.set_model_sampler(std::sync::Arc::new(Engines));
        let g = m.generation("llm", "1");
        g.first_token(Duration::from_millis(30));
        g.next_token(Duration::from_millis(4));
        g.next_token(Duration::from_millis(6));
        g.finished("length", 7);
        let text = m.render();
        let got = lines(&text);
        for expected in [
            r#"tern_llm_time_to_first_token_seconds_bucket{model="llm",version="1",le="0.02"} 0"#,
            r#"tern_llm_time_to_first_token_seconds_bucket{model="llm",version="1",le="0.04"} 1"#,
            r#"tern_llm_time_to_first_token_seconds_count{model="llm",version="1"} 1"#,
            r#"tern_llm_inter_token_latency_seconds_bucket{model="llm",version="1",le="0.005"} 1"#,
            r#"tern_llm_inter_token_latency_seconds_count{model="llm",version="1"} 2"#,
            r#"tern_llm_generation_tokens_total{model="llm",version="1"} 3"#,
            r#"tern_llm_prompt_tokens_total{model="llm",version="1"} 7"#,
            r#"tern_llm_request_finished_total{model="llm",reason="length",version="1"} 1"#,
            r#"tern_llm_num_requests_running{model="llm",version="1"} 3"#,
            r#"tern_llm_num_requests_waiting{model="llm",version="1"} 2"#,
            r#"tern_llm_kv_cache_usage_bytes{model="llm",version="1"} 4096"#,
            r#"tern_llm_kv_cache_budget_bytes{model="llm",version="1"} 1048576"#,
            "# TYPE tern_llm_num_requests_running gauge",
            "# TYPE tern_llm_prompt_tokens_total counter",
        ] {
            assert!(got.contains(expected), "missing line {expected:?} in:\n{text}");
        }
        for (name, (help, kind)) in &families(&text) {
            let f = names::family_of(name).unwrap_or_else(|| panic!("{name} is not in names::ALL"));
            assert_eq!((f.help, kind_str(f.kind)), (help.as_str(), kind.as_str()), "{name}");
        }
        m.model_unloaded("llm", "1");
        assert!(!m.render().contains("tern_llm_time_to_first_token_seconds_count{"));
    }
}
