//! Trace and log settings changed at run time, Triton's trace and logging extensions
//! (docs/protocol/extension_trace.md, extension_logging.md; server src/grpc/grpc_server.cc
//! `RegisterTrace`, `RegisterLogging`, src/tracer.cc). Both are process-wide, as in Triton: in
//! `tern serve` the router and the node share them.
//!
//! Trace settings (global, and per model over them) decide which requests are traced: the
//! exporter's sampler ([`SettingsSampler`]) asks them for every span that starts a trace in this
//! process (a root span, or one continuing a client's or a router's `traceparent`): `trace_level`
//! OFF traces nothing, `trace_rate` N traces one request in N, `trace_count` bounds how many
//! more are traced (-1: no bound). Spans under a local parent follow it. Tern traces in
//! OpenTelemetry mode only: `trace_file` is refused as Triton refuses it, `log_frequency` does
//! not apply (Triton omits both in that mode).
//!
//! Log settings change the log filter ([`init_log_control`]): `log_verbose_level` 0 is info,
//! 1 debug, 2 or more trace; `log_info`, `log_warning`, `log_error` turn those severities on or
//! off. RUST_LOG, when set, keeps deciding the levels.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, ShouldSample};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::reload;

// === trace settings ===

/// One model's (or the global) trace settings; `None` in a model's falls back to the global.
#[derive(Debug, Clone, Default, PartialEq)]
struct TraceValues {
    /// False: OFF.
    level_on: Option<bool>,
    rate: Option<u32>,
    /// Traces left; -1 without bound.
    count: Option<i32>,
}

#[derive(Debug)]
struct TraceState {
    startup: TraceValues,
    global: TraceValues,
    models: HashMap<String, TraceValues>,
    /// Requests seen per setting owner ("" global), for `trace_rate`.
    seen: HashMap<String, u64>,
}

/// The most models with settings of their own (each entry is a few bytes; a bound all the same).
const MAX_MODEL_SETTINGS: usize = 4096;

fn trace_state() -> &'static Mutex<TraceState> {
    static STATE: OnceLock<Mutex<TraceState>> = OnceLock::new();
    STATE.get_or_init(|| {
        let startup = TraceValues { level_on: Some(false), rate: Some(1), count: Some(-1) };
        Mutex::new(TraceState {
            global: startup.clone(),
            startup,
            models: HashMap::new(),
            seen: HashMap::new(),
        })
    })
}

fn lock_trace() -> std::sync::MutexGuard<'static, TraceState> {
    trace_state().lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets the startup trace settings (from the flags): traced or not, one request in `rate`.
pub fn init_trace_settings(tracing_on: bool, rate: u32) {
    let mut s = lock_trace();
    s.startup = TraceValues { level_on: Some(tracing_on), rate: Some(rate.max(1)), count: Some(-1) };
    s.global = s.startup.clone();
}

/// A change to trace settings; each field: None leaves it, Some(None) clears it (a model's falls
/// back to the global; the global returns to its startup value), Some(Some(v)) sets it.
#[derive(Debug, Clone, Default)]
pub struct TraceUpdate {
    pub level_on: Option<Option<bool>>,
    pub rate: Option<Option<u32>>,
    pub count: Option<Option<i32>>,
}

/// The effective trace settings of `model` ("" for the global ones), as TraceSetting answers.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSnapshot {
    pub level_on: bool,
    pub rate: u32,
    pub count: i32,
}

/// Applies `update` to `model`'s settings ("" the global ones) and answers the effective ones.
pub fn update_trace_settings(model: &str, update: TraceUpdate) -> Result<TraceSnapshot, String> {
    let mut s = lock_trace();
    if !model.is_empty() && !s.models.contains_key(model) && s.models.len() >= MAX_MODEL_SETTINGS {
        return Err(format!("trace settings are kept for at most {MAX_MODEL_SETTINGS} models"));
    }
    let startup = s.startup.clone();
    let values =
        if model.is_empty() { &mut s.global } else { s.models.entry(model.to_string()).or_default() };
    let global = model.is_empty();
    fn apply<T: Clone>(field: &mut Option<T>, change: Option<Option<T>>, startup: &Option<T>, global: bool) {
        match change {
            None => {}
            Some(Some(v)) => *field = Some(v),
            Some(None) => *field = if global { startup.clone() } else { None },
        }
    }
    apply(&mut values.level_on, update.level_on, &startup.level_on, global);
    apply(&mut values.rate, update.rate, &startup.rate, global);
    apply(&mut values.count, update.count, &startup.count, global);
    if update.rate.is_some() {
        s.seen.remove(model);
    }
    Ok(effective(&s, model).0)
}

/// The effective settings of `model` and which entry owns each counter ("" the global).
fn effective(s: &TraceState, model: &str) -> (TraceSnapshot, String, String) {
    let own = s.models.get(model);
    let pick = |f: fn(&TraceValues) -> Option<i64>| -> (i64, String) {
        match own.and_then(f) {
            Some(v) => (v, model.to_string()),
            None => (f(&s.global).unwrap_or_default(), String::new()),
        }
    };
    let (level, _) = pick(|v| v.level_on.map(i64::from));
    let (rate, rate_owner) = pick(|v| v.rate.map(i64::from));
    let (count, count_owner) = pick(|v| v.count.map(i64::from));
    let snapshot = TraceSnapshot { level_on: level != 0, rate: rate.max(1) as u32, count: count as i32 };
    (snapshot, rate_owner, count_owner)
}

/// Whether a new trace for a request to `model` is traced; counts it against `trace_rate` and
/// `trace_count` when it is.
fn admit_trace(model: &str) -> bool {
    let mut s = lock_trace();
    let (now, rate_owner, count_owner) = effective(&s, model);
    if !now.level_on || now.count == 0 {
        return false;
    }
    let seen = s.seen.entry(rate_owner).or_default();
    *seen += 1;
    // Triton traces the first request of every `rate` (src/tracer.cc `SampleTrace`).
    if !(*seen - 1).is_multiple_of(u64::from(now.rate)) {
        return false;
    }
    if now.count > 0 {
        let values =
            if count_owner.is_empty() { &mut s.global } else { s.models.entry(count_owner).or_default() };
        values.count = Some(now.count - 1);
    }
    true
}

/// The exporter's sampler: trace settings decide for spans that start a trace in this process,
/// `inner` (the configured ratio, or always) after them; spans under a local parent follow it.
#[derive(Debug, Clone)]
pub struct SettingsSampler<S> {
    pub inner: S,
}

impl<S: ShouldSample + Clone + 'static> ShouldSample for SettingsSampler<S> {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let parent = parent_context.map(|c| c.span().span_context().clone()).filter(|p| p.is_valid());
        let drop = || SamplingResult {
            decision: SamplingDecision::Drop,
            attributes: Vec::new(),
            trace_state: parent.as_ref().map(|p| p.trace_state().clone()).unwrap_or_default(),
        };
        if let Some(p) = parent.as_ref().filter(|p| !p.is_remote()) {
            let decision =
                if p.is_sampled() { SamplingDecision::RecordAndSample } else { SamplingDecision::Drop };
            return SamplingResult { decision, attributes: Vec::new(), trace_state: p.trace_state().clone() };
        }
        let model = attributes.iter().find(|kv| kv.key.as_str() == "model").map(|kv| kv.value.as_str());
        if !admit_trace(model.as_deref().unwrap_or("")) {
            return drop();
        }
        if let Some(p) = parent.as_ref() {
            // A client's or router's sampled trace is continued; an unsampled one is not.
            let decision =
                if p.is_sampled() { SamplingDecision::RecordAndSample } else { SamplingDecision::Drop };
            return SamplingResult { decision, attributes: Vec::new(), trace_state: p.trace_state().clone() };
        }
        self.inner.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

// === log settings ===

const INFO: u8 = 1;
const WARNING: u8 = 2;
const ERROR: u8 = 4;

/// Which of info, warning, error are logged (Triton's `--log-info` ... all on by default).
static SEVERITIES: AtomicU8 = AtomicU8::new(INFO | WARNING | ERROR);

/// Whether events of `level` are logged under the severities in force; debug and trace follow
/// the verbose level (the reloadable filter).
pub fn severity_enabled(level: &tracing::Level) -> bool {
    let bit = match *level {
        tracing::Level::ERROR => ERROR,
        tracing::Level::WARN => WARNING,
        tracing::Level::INFO => INFO,
        _ => return true,
    };
    SEVERITIES.load(Ordering::Relaxed) & bit != 0
}

type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

struct LogControl {
    handle: Option<FilterHandle>,
    verbose: u32,
    /// "default" (text lines) or "json" (--log-format json), reported as set at start.
    format: &'static str,
    /// RUST_LOG was set: it keeps deciding levels.
    from_env: bool,
}

fn log_control() -> &'static Mutex<LogControl> {
    static CONTROL: OnceLock<Mutex<LogControl>> = OnceLock::new();
    CONTROL.get_or_init(|| {
        Mutex::new(LogControl { handle: None, verbose: 0, format: "default", from_env: false })
    })
}

/// The log filter of verbose level `verbose`, noisy dependencies at warn (ONNX Runtime forwards
/// hundreds of lines at info through the `ort` target).
pub(crate) fn verbose_filter(verbose: u32) -> EnvFilter {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    EnvFilter::new(format!("{level},ort=warn,h2=warn,tower=warn,hyper=warn,opentelemetry=warn"))
}

/// Called once by `init_tracing` with the reload handle of the log filter.
pub(crate) fn init_log_control(handle: FilterHandle, verbose: u32, json: bool, from_env: bool) {
    let mut c = log_control().lock().unwrap_or_else(|p| p.into_inner());
    *c =
        LogControl { handle: Some(handle), verbose, format: if json { "json" } else { "default" }, from_env };
}

/// The log settings in force, as LogSettings answers.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSnapshot {
    pub info: bool,
    pub warning: bool,
    pub error: bool,
    pub verbose_level: u32,
    pub format: &'static str,
}

/// A change to log settings (each `None` leaves it).
#[derive(Debug, Clone, Default)]
pub struct LogUpdate {
    pub info: Option<bool>,
    pub warning: Option<bool>,
    pub error: Option<bool>,
    pub verbose_level: Option<u32>,
    pub format: Option<String>,
}

/// Applies `update` (all or nothing) and answers the settings in force. The format cannot change
/// while the process runs: its own value is accepted, another refused naming the flag.
pub fn update_log_settings(update: LogUpdate) -> Result<LogSnapshot, String> {
    let mut c = log_control().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(format) = update.format.as_deref() {
        match format {
            f if f == c.format => {}
            // Triton's wording for a value it does not know (src/grpc/grpc_server.cc).
            "default" | "ISO8601" | "json" => {
                return Err(format!(
                    "log_format '{format}' can not be set while Tern runs: its lines are '{}' (start it with --log-format text or json)",
                    c.format
                ));
            }
            other => return Err(format!("invalid argument for log_format, got: {other}")),
        }
    }
    for (change, bit) in [(update.info, INFO), (update.warning, WARNING), (update.error, ERROR)] {
        match change {
            Some(true) => SEVERITIES.fetch_or(bit, Ordering::Relaxed),
            Some(false) => SEVERITIES.fetch_and(!bit, Ordering::Relaxed),
            None => 0,
        };
    }
    if let Some(verbose) = update.verbose_level
        && verbose != c.verbose
    {
        c.verbose = verbose;
        if let Some(handle) = c.handle.as_ref().filter(|_| !c.from_env) {
            handle
                .reload(verbose_filter(verbose))
                .map_err(|e| format!("cannot change the log filter: {e}"))?;
        }
    }
    let severities = SEVERITIES.load(Ordering::Relaxed);
    Ok(LogSnapshot {
        info: severities & INFO != 0,
        warning: severities & WARNING != 0,
        error: severities & ERROR != 0,
        verbose_level: c.verbose,
        format: c.format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_model_settings_fall_back_to_global_and_rate_and_count_bound_traces() {
        init_trace_settings(true, 1);
        let set = |model: &str, update| update_trace_settings(model, update).expect("update");
        let on = set("", TraceUpdate::default());
        assert_eq!(on, TraceSnapshot { level_on: true, rate: 1, count: -1 });
        // Model m: one in 3, at most 2 traces; others keep the global settings.
        let m = set("m", TraceUpdate { rate: Some(Some(3)), count: Some(Some(2)), ..Default::default() });
        assert_eq!(m, TraceSnapshot { level_on: true, rate: 3, count: 2 });
        let traced: Vec<bool> = (0..10).map(|_| admit_trace("m")).collect();
        assert_eq!(traced, [true, false, false, true, false, false, false, false, false, false]);
        assert_eq!(set("m", TraceUpdate::default()).count, 0);
        assert!(admit_trace("other"));
        // Global OFF: models without a level of their own stop; clearing returns to startup.
        set("", TraceUpdate { level_on: Some(Some(false)), ..Default::default() });
        assert!(!admit_trace("other"));
        let m = set("m", TraceUpdate { count: Some(None), rate: Some(None), ..Default::default() });
        assert_eq!(m, TraceSnapshot { level_on: false, rate: 1, count: -1 });
        let g = set("", TraceUpdate { level_on: Some(None), ..Default::default() });
        assert!(g.level_on && admit_trace("m"));
    }

    #[test]
    fn log_severities_and_format() {
        let s =
            update_log_settings(LogUpdate { warning: Some(false), ..Default::default() }).expect("update");
        assert!(s.info && !s.warning && s.error);
        assert!(!severity_enabled(&tracing::Level::WARN) && severity_enabled(&tracing::Level::DEBUG));
        let s = update_log_settings(LogUpdate {
            warning: Some(true),
            verbose_level: Some(1),
            ..Default::default()
        })
        .expect("update");
        assert_eq!((s.warning, s.verbose_level, s.format), (true, 1, "default"));
        assert!(
            update_log_settings(LogUpdate { format: Some("default".into()), ..Default::default() }).is_ok()
        );
        assert_eq!(
            update_log_settings(LogUpdate { format: Some("fancy".into()), ..Default::default() }),
            Err("invalid argument for log_format, got: fancy".into())
        );
        assert!(
            update_log_settings(LogUpdate { format: Some("ISO8601".into()), ..Default::default() }).is_err()
        );
    }
}
