//! Metrics flags, named as Triton's, as a clap `Args` struct to `#[command(flatten)]` into a
//! binary's config.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{ArgAction, Args};

use crate::TelemetryError;

/// Default bucket upper bounds of `tern_inference_request_latency_us`, in microseconds.
pub const DEFAULT_LATENCY_BUCKETS_US: &[f64] = &[
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    25_000.0,
    50_000.0,
    100_000.0,
    250_000.0,
    500_000.0,
    1_000_000.0,
    2_500_000.0,
    5_000_000.0,
    10_000_000.0,
];

/// Triton's default summary quantiles with their allowed rank errors (core
/// src/metric_model_reporter.h, `MetricReporterConfig::quantiles_`).
pub const DEFAULT_SUMMARY_QUANTILES: &[(f64, f64)] =
    &[(0.5, 0.05), (0.9, 0.01), (0.95, 0.001), (0.99, 0.001), (0.999, 0.001)];

/// Prometheus metrics endpoint and collectors.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics on --metrics-port.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub allow_metrics: bool,

    /// Export GPU metrics (NVML; absent without an NVIDIA driver).
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub allow_gpu_metrics: bool,

    /// Export CPU utilization and host memory metrics.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub allow_cpu_metrics: bool,

    /// Address the metrics endpoint binds.
    #[arg(long, default_value = "0.0.0.0")]
    pub metrics_address: IpAddr,

    /// Prometheus metrics port (HTTP GET /metrics). 0 picks a free port, logged at start.
    #[arg(long, default_value_t = 8002)]
    pub metrics_port: u16,

    /// How often CPU, memory and GPU metrics are refreshed, in milliseconds.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub metrics_interval_ms: u64,

    /// Metric settings, repeatable: `histogram_latencies=BOOL` (per-request latency histogram
    /// tern_inference_request_latency_us, on by default), `latency_buckets_us=B1,B2,...`,
    /// Triton's `counter_latencies=BOOL` (the nv_*_duration_us counters, on by default),
    /// `summary_latencies=BOOL` (the nv_*_summary_us summaries, off by default) and
    /// `summary_quantiles=Q:E,Q:E,...`.
    #[arg(long = "metrics-config", value_name = "KEY=VALUE")]
    pub metrics_config: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            allow_metrics: true,
            allow_gpu_metrics: true,
            allow_cpu_metrics: true,
            metrics_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            metrics_port: 8002,
            metrics_interval_ms: 2000,
            metrics_config: Vec::new(),
        }
    }
}

/// [`MetricsConfig`] checked and decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSettings {
    /// Per-request latency histogram on.
    pub histogram_latencies: bool,
    pub latency_buckets_us: Vec<f64>,
    /// Triton's cumulative latency counters (`nv_inference_*_duration_us`, cache durations).
    pub counter_latencies: bool,
    /// Triton's latency summaries (`nv_inference_*_summary_us`, cache summaries).
    pub summary_latencies: bool,
    /// `(quantile, allowed error)` the summaries report.
    pub summary_quantiles: Vec<(f64, f64)>,
    /// Resource refresh interval.
    pub interval: Duration,
    /// CPU and host memory collectors on (off with the endpoint off).
    pub cpu: bool,
    /// NVML collectors on (off with the endpoint off).
    pub gpu: bool,
}

impl MetricsConfig {
    /// The address to bind the metrics endpoint on.
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::new(self.metrics_address, self.metrics_port)
    }

    /// Checks the flags and decodes `--metrics-config`; call before binding anything.
    pub fn settings(&self) -> Result<MetricsSettings, TelemetryError> {
        let bad = |msg: String| TelemetryError::Config(msg);
        if self.metrics_interval_ms == 0 {
            return Err(bad("--metrics-interval-ms must be at least 1".into()));
        }
        let mut settings = MetricsSettings {
            histogram_latencies: true,
            latency_buckets_us: DEFAULT_LATENCY_BUCKETS_US.to_vec(),
            counter_latencies: true,
            summary_latencies: false,
            summary_quantiles: DEFAULT_SUMMARY_QUANTILES.to_vec(),
            interval: Duration::from_millis(self.metrics_interval_ms),
            // With the endpoint off nobody reads them: do not even load NVML.
            cpu: self.allow_metrics && self.allow_cpu_metrics,
            gpu: self.allow_metrics && self.allow_gpu_metrics,
        };
        for item in &self.metrics_config {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("--metrics-config {item:?}: expected KEY=VALUE")))?;
            let boolean = || {
                parse_bool(value)
                    .ok_or_else(|| bad(format!("--metrics-config {item:?}: expected true or false")))
            };
            match key.trim() {
                "histogram_latencies" => settings.histogram_latencies = boolean()?,
                "counter_latencies" => settings.counter_latencies = boolean()?,
                "summary_latencies" => settings.summary_latencies = boolean()?,
                "summary_quantiles" => {
                    settings.summary_quantiles = parse_quantiles(value).ok_or_else(|| {
                        bad(format!(
                            "--metrics-config {item:?}: expected QUANTILE:ERROR pairs separated by commas, \
                             each between 0 and 1 (Triton's format, e.g. 0.5:0.05,0.9:0.01)"
                        ))
                    })?;
                }
                "latency_buckets_us" => {
                    settings.latency_buckets_us = parse_buckets(value)
                        .ok_or_else(|| bad(format!(
                            "--metrics-config {item:?}: expected increasing positive numbers separated by commas"
                        )))?;
                }
                other => {
                    return Err(bad(format!(
                        "--metrics-config: unknown setting {other:?} (known: histogram_latencies, latency_buckets_us, counter_latencies, summary_latencies, summary_quantiles)"
                    )));
                }
            }
        }
        Ok(settings)
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Some(true),
        "false" | "0" | "off" | "no" => Some(false),
        _ => None,
    }
}

/// Triton's `summary_quantiles` value. Triton logs and skips a malformed pair; a flag that
/// silently loses a quantile misleads, so a bad pair is refused here.
fn parse_quantiles(s: &str) -> Option<Vec<(f64, f64)>> {
    let s = s.trim().trim_matches('"');
    let pairs: Vec<(f64, f64)> = s
        .split(',')
        .map(|pair| {
            let (q, e) = pair.split_once(':')?;
            let (q, e): (f64, f64) = (q.trim().parse().ok()?, e.trim().parse().ok()?);
            ((0.0..=1.0).contains(&q) && (0.0..=1.0).contains(&e)).then_some((q, e))
        })
        .collect::<Option<_>>()?;
    (!pairs.is_empty() && pairs.len() <= 32).then_some(pairs)
}

fn parse_buckets(s: &str) -> Option<Vec<f64>> {
    let buckets: Vec<f64> = s.split(',').map(|b| b.trim().parse().ok()).collect::<Option<_>>()?;
    let increasing = buckets.windows(2).all(|w| w[0] < w[1]);
    (!buckets.is_empty() && increasing && buckets.iter().all(|b| b.is_finite() && *b > 0.0))
        .then_some(buckets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        metrics: MetricsConfig,
    }

    fn parse(args: &[&str]) -> MetricsConfig {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).expect("parses").metrics
    }

    #[test]
    fn defaults_match_triton_and_default_impl() {
        let c = parse(&[]);
        assert_eq!(c, MetricsConfig::default());
        assert_eq!(c.metrics_addr(), "0.0.0.0:8002".parse().expect("addr"));
        let s = c.settings().expect("valid");
        assert!(s.histogram_latencies && s.cpu && s.gpu);
        assert_eq!(s.interval, Duration::from_secs(2));
        assert_eq!(s.latency_buckets_us, DEFAULT_LATENCY_BUCKETS_US);
        assert!(s.counter_latencies && !s.summary_latencies, "Triton's defaults");
        assert_eq!(s.summary_quantiles, DEFAULT_SUMMARY_QUANTILES);
    }

    #[test]
    fn triton_latency_settings() {
        let c = parse(&[
            "--metrics-config",
            "summary_latencies=true",
            "--metrics-config",
            "counter_latencies=false",
            "--metrics-config",
            "summary_quantiles=0.5:0.05, 0.99:0.001",
        ]);
        let s = c.settings().expect("valid");
        assert!(s.summary_latencies && !s.counter_latencies);
        assert_eq!(s.summary_quantiles, vec![(0.5, 0.05), (0.99, 0.001)]);
        // Triton's docs quote the value; a shell may leave the quotes in.
        let s = parse(&["--metrics-config", "summary_quantiles=\"0.9:0.01\""]).settings().expect("valid");
        assert_eq!(s.summary_quantiles, vec![(0.9, 0.01)]);
    }

    #[test]
    fn triton_flags_and_metrics_config() {
        let c = parse(&[
            "--allow-metrics",
            "false",
            "--allow-gpu-metrics=false",
            "--metrics-port",
            "0",
            "--metrics-interval-ms",
            "500",
            "--metrics-config",
            "histogram_latencies=false",
            "--metrics-config",
            "latency_buckets_us=10, 100,1000",
        ]);
        assert!(!c.allow_metrics && !c.allow_gpu_metrics && c.allow_cpu_metrics);
        let s = c.settings().expect("valid");
        assert!(!s.histogram_latencies && !s.gpu && !s.cpu, "no collectors without the endpoint");
        let s = MetricsConfig { allow_metrics: true, ..c }.settings().expect("valid");
        assert!(s.cpu && !s.gpu);
        assert_eq!(s.latency_buckets_us, vec![10.0, 100.0, 1000.0]);
        assert_eq!(s.interval, Duration::from_millis(500));
    }

    #[test]
    fn bad_settings_are_errors_before_binding() {
        for bad in [
            "histogram_latencies",
            "histogram_latencies=maybe",
            "latency_buckets_us=10,5",
            "latency_buckets_us=",
            "latency_buckets_us=-1,2",
            "summary_latencies=sometimes",
            "summary_quantiles=",
            "summary_quantiles=0.5",
            "summary_quantiles=0.5:0.05,1.5:0.01",
            "summary_quantiles=0.5:x",
            "summary_latencies_typo=true",
        ] {
            let c = parse(&["--metrics-config", bad]);
            assert!(c.settings().is_err(), "{bad} accepted");
        }
        assert!(parse(&["--metrics-interval-ms", "0"]).settings().is_err());
    }
}
