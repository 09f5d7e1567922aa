//! Logging and tracing setup: tracing-subscriber (text or JSON) on stderr, plus OpenTelemetry
//! spans exported over OTLP when an endpoint is configured (off by default, and then no
//! OpenTelemetry layer exists at all): OTLP/gRPC for `--trace-otlp-endpoint` and the OTEL_*
//! variables, OTLP/HTTP (protobuf) for Triton's `--trace-config opentelemetry,url=`, as Triton
//! exports.
//!
//! The exporter runs on a small runtime of its own, owned by [`TracingGuard`]: it can be set up
//! before the server's runtime exists, and spans still flush after that runtime has stopped.

use std::time::Duration;

use clap::{Args, ValueEnum};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::TelemetryError;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging and tracing flags.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct TracingConfig {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Verbose logging level (0 = info, 1 = debug, 2+ = trace). RUST_LOG, when set, wins.
    #[arg(long, default_value_t = 0)]
    pub log_verbose: u32,

    /// OTLP/gRPC endpoint to export traces to (e.g. http://127.0.0.1:4317). Tracing is off
    /// unless this, `--trace-config mode=opentelemetry` or OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT
    /// is given.
    #[arg(long, value_name = "URL")]
    pub trace_otlp_endpoint: Option<String>,

    /// Triton-style trace settings, repeatable: `mode=opentelemetry`, `opentelemetry,url=URL`
    /// (OTLP over HTTP, as Triton: default localhost:4318/v1/traces),
    /// `opentelemetry,resource=KEY=VALUE`, `rate=N` (sample one request in N),
    /// `level=OFF|TIMESTAMPS`.
    #[arg(long = "trace-config", value_name = "[MODE,]KEY=VALUE")]
    pub trace_config: Vec<String>,

    /// Share of new traces to sample, 0.0 to 1.0 (requests with a sampled parent are always
    /// sampled). Default: OTEL_TRACES_SAMPLER(_ARG), else every trace.
    #[arg(long, value_name = "RATIO")]
    pub trace_sample_ratio: Option<f64>,

    /// `service.name` of exported spans; OTEL_SERVICE_NAME wins. Set by the binary.
    #[arg(skip = String::from("tern"))]
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            log_format: LogFormat::Text,
            log_verbose: 0,
            trace_otlp_endpoint: None,
            trace_config: Vec::new(),
            trace_sample_ratio: None,
            service_name: "tern".into(),
        }
    }
}

/// Where and how to export spans, when tracing is on.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// None: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT itself.
    pub endpoint: Option<String>,
    /// How spans travel to `endpoint`.
    pub protocol: OtlpProtocol,
    pub sample_ratio: Option<f64>,
    pub resource: Vec<(String, String)>,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`--trace-otlp-endpoint`, OTEL_EXPORTER_OTLP_ENDPOINT; port 4317 by custom).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies, POSTed to the full URL (Triton's `opentelemetry,url=`;
    /// port 4318, path /v1/traces).
    HttpProtobuf,
}

/// Triton's default OpenTelemetry URL (server docs/user_guide/trace.md, `url`), as an URL.
pub const TRITON_DEFAULT_OTLP_HTTP_URL: &str = "http://localhost:4318/v1/traces";

impl TracingConfig {
    /// Checks the flags; `Ok(None)` means tracing is off. Call before binding anything.
    pub fn otlp(&self) -> Result<Option<OtlpSettings>, TelemetryError> {
        self.otlp_with_env(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    fn otlp_with_env(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OtlpSettings>, TelemetryError> {
        let bad = |msg: String| TelemetryError::Config(msg);
        let mut on = self.trace_otlp_endpoint.is_some()
            || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let mut off = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let mut settings = OtlpSettings {
            endpoint: self.trace_otlp_endpoint.clone(),
            protocol: OtlpProtocol::Grpc,
            sample_ratio: self.trace_sample_ratio,
            resource: Vec::new(),
        };
        for item in &self.trace_config {
            // Triton's form: `[mode,]setting=value`; only the opentelemetry mode exists here.
            let (mode, setting) = match item.split_once(',') {
                Some((mode, rest)) if !mode.contains('=') => (Some(mode.trim()), rest),
                _ => (None, item.as_str()),
            };
            if let Some(mode) = mode.filter(|m| *m != "opentelemetry") {
                return Err(bad(format!(
                    "--trace-config {item:?}: unsupported mode {mode:?} (only opentelemetry)"
                )));
            }
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| bad(format!("--trace-config {item:?}: expected [MODE,]KEY=VALUE")))?;
            let value = value.trim();
            match key.trim() {
                "mode" if value == "opentelemetry" => on = true,
                "mode" => {
                    return Err(bad(format!(
                        "--trace-config {item:?}: only mode=opentelemetry is supported"
                    )));
                }
                "url" => {
                    on = true;
                    settings.endpoint = Some(value.to_string());
                    settings.protocol = OtlpProtocol::HttpProtobuf;
                }
                "resource" => {
                    let (k, v) = value.split_once('=').ok_or_else(|| {
                        bad(format!("--trace-config {item:?}: expected resource=KEY=VALUE"))
                    })?;
                    settings.resource.push((k.trim().to_string(), v.trim().to_string()));
                }
                "rate" => {
                    // One request in N, counted (the trace settings' `trace_rate`).
                    let _: u32 = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        bad(format!("--trace-config {item:?}: rate must be a positive integer"))
                    })?;
                }
                "level" => match value.to_ascii_uppercase().as_str() {
                    "OFF" => off = true,
                    "TIMESTAMPS" | "TENSORS" => on = true,
                    _ => {
                        return Err(bad(format!(
                            "--trace-config {item:?}: level is OFF, TIMESTAMPS or TENSORS"
                        )));
                    }
                },
                other => {
                    return Err(bad(format!(
                        "--trace-config {item:?}: unknown setting {other:?} (known: mode, url, resource, rate, level)"
                    )));
                }
            }
        }
        if let Some(r) = settings.sample_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(bad(format!("--trace-sample-ratio {r}: must be between 0.0 and 1.0")));
        }
        // `mode=opentelemetry` alone exports where Triton would: OTLP/HTTP to localhost:4318,
        // unless an endpoint comes from Tern's flag or the OTEL variables.
        let env_endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        if settings.endpoint.is_none() && !env_endpoint && !self.trace_config.is_empty() {
            settings.endpoint = Some(TRITON_DEFAULT_OTLP_HTTP_URL.to_string());
            settings.protocol = OtlpProtocol::HttpProtobuf;
        }
        // Triton's urls carry no scheme; both exporters need one.
        if let Some(url) = settings.endpoint.as_mut()
            && !url.contains("://")
        {
            *url = format!("http://{url}");
        }
        // The HTTP exporter posts to the URL as given: a bare host:port gets OTLP's traces path.
        if settings.protocol == OtlpProtocol::HttpProtobuf
            && let Some(url) = settings.endpoint.as_mut()
            && url.split_once("://").is_some_and(|(_, rest)| !rest.contains('/'))
        {
            url.push_str("/v1/traces");
        }
        Ok((on && !off).then_some(settings))
    }

    /// The log filter: RUST_LOG when set, else the verbosity with noisy dependencies at warn
    /// (ONNX Runtime forwards hundreds of lines at info through the `ort` target).
    pub fn env_filter(&self) -> EnvFilter {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| crate::settings::verbose_filter(self.log_verbose))
    }

    /// `--trace-config rate=N` (the last one), else 1: trace one request in N.
    pub fn trace_rate(&self) -> u32 {
        self.trace_config
            .iter()
            .filter_map(|item| item.rsplit(',').next()?.split_once('='))
            .filter(|(k, _)| k.trim() == "rate")
            .filter_map(|(_, v)| v.trim().parse().ok())
            .next_back()
            .unwrap_or(1)
    }
}

/// Keeps the exporter alive; dropping it flushes pending spans (bounded) and stops it. Hold it
/// in `main` for the life of the process.
#[must_use = "dropping the guard stops trace export"]
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for TracingGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracingGuard").field("exporting", &self.provider.is_some()).finish()
    }
}

impl TracingGuard {
    /// Whether spans are exported (tracing is on).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            eprintln!("trace export shutdown: {e}");
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Installs the global subscriber: logs on stderr in the configured format, and OpenTelemetry
/// export when configured. Also installs the W3C trace-context propagator globally. Call once,
/// first thing in `main` (it does not need a Tokio runtime).
pub fn init_tracing(cfg: &TracingConfig) -> Result<TracingGuard, TelemetryError> {
    let otlp = cfg.otlp()?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let fmt = match cfg.log_format {
        LogFormat::Text => {
            tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    let mut guard = TracingGuard { provider: None, runtime: None };
    let otel = match otlp {
        Some(settings) => {
            let (provider, runtime) = build_provider(&settings, &cfg.service_name)?;
            let tracer = provider.tracer("tern");
            guard = TracingGuard { provider: Some(provider), runtime: Some(runtime) };
            // What is exported: info spans (the request's `infer`) and the scheduler's and
            // backend's debug spans (`queue`, `execute`, `compute_*`), which exist only when
            // something consumes them, so a node that does not export does not pay for them.
            // The exporter's own transport must not be traced (each export would make spans).
            let exported = Targets::new()
                .with_default(LevelFilter::INFO)
                .with_target("tern_scheduler", LevelFilter::DEBUG)
                .with_target("tern_backend", LevelFilter::DEBUG)
                .with_target("ort", LevelFilter::WARN)
                .with_target("h2", LevelFilter::OFF)
                .with_target("hyper", LevelFilter::OFF)
                .with_target("hyper_util", LevelFilter::OFF)
                .with_target("tonic", LevelFilter::OFF)
                .with_target("tower", LevelFilter::OFF)
                .with_target("opentelemetry", LevelFilter::OFF)
                .with_target("opentelemetry_sdk", LevelFilter::OFF)
                .with_target("opentelemetry_otlp", LevelFilter::OFF);
            Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(exported))
        }
        None => None,
    };
    // Each layer filters for itself: the log filter must not decide what is exported. The log
    // filter reloads when LogSettings changes the verbose level; severities are checked per
    // event (crate::settings).
    //
    // One filter, the two joined with `and`, not one `with_filter` inside another: nested
    // per-layer filters are counted apart, so a callsite the verbosity turns off (h2's trace
    // spans and events, several per HTTP/2 frame) would stay "sometimes" enabled and be checked
    // on every hit. Joined, the verbosity turns such callsites off once (with the `match`
    // below: 21 % of tern-router's CPU at concurrency 1; benches/RESULTS.md, "Router overhead:
    // where the CPU goes").
    let (log_filter, handle) = tracing_subscriber::reload::Layer::new(cfg.env_filter());
    let severities =
        tracing_subscriber::filter::filter_fn(|meta| crate::settings::severity_enabled(meta.level()));
    let log_filter = log_filter.and(severities);
    crate::settings::init_log_control(
        handle,
        cfg.log_verbose,
        cfg.log_format == LogFormat::Json,
        std::env::var_os("RUST_LOG").is_some(),
    );
    crate::settings::init_trace_settings(guard.provider.is_some(), cfg.trace_rate());
    // No `.with(otel)` of a `None`: an absent layer counts as one that wants every span and
    // event, which would undo the filter above.
    let logs = tracing_subscriber::registry().with(fmt.with_filter(log_filter));
    match otel {
        Some(otel) => logs.with(otel).try_init(),
        None => logs.try_init(),
    }
    .map_err(|e| TelemetryError::Tracing(format!("cannot install the tracing subscriber: {e}")))?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if let Some(provider) = &guard.provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    Ok(guard)
}

/// Builds the OTLP/gRPC exporter and tracer provider on a dedicated one-thread runtime.
pub fn build_provider(
    settings: &OtlpSettings,
    service_name: &str,
) -> Result<(SdkTracerProvider, tokio::runtime::Runtime), TelemetryError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| TelemetryError::Tracing(format!("cannot start the trace export runtime: {e}")))?;
    // tonic's channel spawns its connection task on the current runtime.
    let _enter = runtime.enter();
    let exporter = match settings.protocol {
        OtlpProtocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(endpoint) = &settings.endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            builder.build()
        }
        OtlpProtocol::HttpProtobuf => {
            use opentelemetry_otlp::WithHttpConfig;
            let client = OnRuntime {
                client: std::sync::Arc::new(opentelemetry_http::hyper::HyperClient::with_default_connector(
                    Duration::from_secs(10),
                    None,
                )),
                runtime: runtime.handle().clone(),
            };
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(client);
            if let Some(endpoint) = &settings.endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            builder.build()
        }
    }
    .map_err(|e| TelemetryError::Tracing(format!("cannot build the OTLP exporter: {e}")))?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name.to_string());
    }
    let resource = resource
        .with_attributes(settings.resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
        .build();
    // The trace settings (TraceSetting) decide first; the configured ratio after them.
    let inner = match settings.sample_ratio {
        Some(ratio) => Sampler::TraceIdRatioBased(ratio),
        None => sampler_from_env(),
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .with_sampler(crate::settings::SettingsSampler { inner });
    drop(_enter);
    Ok((provider.build(), runtime))
}

/// The OTLP/HTTP client, run on the export runtime: the batch processor polls exports on a
/// thread of its own, without a Tokio reactor, which hyper's connections need.
#[derive(Debug)]
struct OnRuntime {
    client: std::sync::Arc<opentelemetry_http::hyper::HyperClient>,
    runtime: tokio::runtime::Handle,
}

#[tonic::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        self.runtime.spawn(async move { client.send_bytes(request).await }).await?
    }
}

/// OTEL_TRACES_SAMPLER(_ARG) as the SDK reads them (ratio samplers and always_off; the parent
/// part is the trace settings' sampler's), else every trace.
fn sampler_from_env() -> Sampler {
    let name = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
    if name.ends_with("always_off") {
        return Sampler::AlwaysOff;
    }
    if name.ends_with("traceidratio") {
        let ratio = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok().and_then(|v| v.trim().parse().ok());
        return Sampler::TraceIdRatioBased(ratio.filter(|r| (0.0..=1.0).contains(r)).unwrap_or(1.0));
    }
    Sampler::AlwaysOn
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        tracing: TracingConfig,
    }

    fn parse(args: &[&str]) -> TracingConfig {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).expect("parses").tracing
    }

    fn otlp(cfg: &TracingConfig, env: &[(&str, &str)]) -> Result<Option<OtlpSettings>, TelemetryError> {
        cfg.otlp_with_env(|k| env.iter().find(|(key, _)| *key == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn off_by_default_and_defaults_match() {
        let c = parse(&[]);
        assert_eq!(c, TracingConfig::default());
        assert_eq!(otlp(&c, &[]).expect("valid"), None);
    }

    #[test]
    fn on_by_flag_by_triton_trace_config_or_by_env() {
        let c = parse(&["--trace-otlp-endpoint", "http://127.0.0.1:4317", "--trace-sample-ratio", "0.5"]);
        let s = otlp(&c, &[]).expect("valid").expect("on");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert_eq!(s.sample_ratio, Some(0.5));

        let c = parse(&[
            "--trace-config",
            "mode=opentelemetry",
            "--trace-config",
            "opentelemetry,url=collector:4317",
            "--trace-config",
            "opentelemetry,resource=deployment.environment=test",
            "--trace-config",
            "rate=100",
        ]);
        let s = otlp(&c, &[]).expect("valid").expect("on");
        assert_eq!(
            s.endpoint.as_deref(),
            Some("http://collector:4317/v1/traces"),
            "Triton's url is OTLP/HTTP"
        );
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!((s.sample_ratio, c.trace_rate()), (None, 100), "rate counts requests");
        assert_eq!(s.resource, vec![("deployment.environment".into(), "test".into())]);
        let c = parse(&["--trace-config", "opentelemetry,url=http://c:4318/custom/path"]);
        assert_eq!(
            otlp(&c, &[]).expect("valid").expect("on").endpoint.as_deref(),
            Some("http://c:4318/custom/path")
        );
        // Triton's default URL when only the mode is given.
        let s = otlp(&parse(&["--trace-config", "mode=opentelemetry"]), &[]).expect("valid").expect("on");
        assert_eq!(
            (s.endpoint.as_deref(), s.protocol),
            (Some(TRITON_DEFAULT_OTLP_HTTP_URL), OtlpProtocol::HttpProtobuf)
        );
        // Tern's flag and the OTEL variables keep OTLP/gRPC.
        let c = parse(&["--trace-config", "mode=opentelemetry", "--trace-otlp-endpoint", "http://g:4317"]);
        let s = otlp(&c, &[]).expect("valid").expect("on");
        assert_eq!((s.endpoint.as_deref(), s.protocol), (Some("http://g:4317"), OtlpProtocol::Grpc));
        let s =
            otlp(&parse(&["--trace-config", "rate=2"]), &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")])
                .expect("valid")
                .expect("on");
        assert_eq!((s.endpoint, s.protocol), (None, OtlpProtocol::Grpc));

        let s = otlp(&parse(&[]), &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]).expect("valid");
        assert_eq!(s.expect("on").endpoint, None, "the exporter reads the variable itself");
        let disabled = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(otlp(&parse(&[]), &disabled).expect("valid"), None);
        let c = parse(&["--trace-otlp-endpoint", "http://c:4317", "--trace-config", "level=OFF"]);
        assert_eq!(otlp(&c, &[]).expect("valid"), None);
    }

    #[test]
    fn bad_trace_settings_are_errors() {
        for bad in [
            ["--trace-config", "mode=triton"],
            ["--trace-config", "triton,file=/tmp/x"],
            ["--trace-config", "rate=0"],
            ["--trace-config", "level=LOUD"],
            ["--trace-config", "nonsense"],
            ["--trace-config", "count=5"],
            ["--trace-sample-ratio", "1.5"],
        ] {
            assert!(otlp(&parse(&bad), &[]).is_err(), "{bad:?} accepted");
        }
    }
}
