//! W3C trace context (`traceparent`, `tracestate`) over gRPC metadata, so a client's trace
//! continues into Tern and from a router into its nodes.
//!
//! These use the W3C propagator directly, not the global one, so extraction works (and the trace
//! id reaches the logs) even when span export is off.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::{OpenTelemetrySpanExt, SetParentError};

/// Name of the span field that [`set_parent_from_metadata`] fills with the trace id, so every
/// log line inside a request shows it. Declare it on request spans:
/// `tracing::info_span!("infer", model = %name, trace_id = tracing::field::Empty)`.
pub const TRACE_ID_FIELD: &str = "trace_id";

/// The W3C header that carries the remote span context.
const TRACEPARENT: &str = "traceparent";

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) =
            (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value.as_str()))
        {
            self.0.insert(key, value);
        }
    }
}

/// The remote context a request's metadata carries (an empty context when there is none or it
/// is malformed).
pub fn extract_context(metadata: &MetadataMap) -> Context {
    TraceContextPropagator::new().extract(&MetadataExtractor(metadata))
}

/// Writes `cx`'s span context into `metadata` as `traceparent`/`tracestate`.
pub fn inject_context(cx: &Context, metadata: &mut MetadataMap) {
    TraceContextPropagator::new().inject_context(cx, &mut MetadataInjector(metadata));
}

/// Writes the span's context into outgoing metadata (router to node, client calls).
pub fn inject_span_context(span: &tracing::Span, metadata: &mut MetadataMap) {
    inject_context(&span.context(), metadata);
}

/// Makes the request's remote context the span's parent, and records the trace id in the span's
/// [`TRACE_ID_FIELD`] field (if declared). Call right after creating the request span, before
/// entering it. Returns the trace id, if there is one (32 hex digits).
pub fn set_parent_from_metadata(span: &tracing::Span, metadata: &MetadataMap) -> Option<String> {
    // Without a `traceparent` the propagator would answer the current context: skip parsing.
    let remote =
        if metadata.contains_key(TRACEPARENT) { extract_context(metadata) } else { Context::current() };
    let remote_trace = remote.span().span_context().clone();
    // Without the OpenTelemetry layer (export off) the span has no context of its own: the trace
    // id, if any, is the remote one, and asking the span for its context would only cost.
    if let Err(SetParentError::LayerNotFound | SetParentError::SpanDisabled) = span.set_parent(remote) {
        return remote_trace.is_valid().then(|| record_trace_id(span, remote_trace.trace_id()));
    }
    // With export on, the span's own context has the (inherited or new) trace id.
    let own = span.context().span().span_context().clone();
    let trace_id = if own.is_valid() {
        Some(own.trace_id())
    } else if remote_trace.is_valid() {
        Some(remote_trace.trace_id())
    } else {
        None
    }?;
    Some(record_trace_id(span, trace_id))
}

fn record_trace_id(span: &tracing::Span, trace_id: TraceId) -> String {
    let trace_id = trace_id.to_string();
    span.record(TRACE_ID_FIELD, trace_id.as_str());
    trace_id
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn extracts_w3c_traceparent_from_grpc_metadata() {
        let mut md = MetadataMap::new();
        md.insert("traceparent", PARENT.parse().expect("ascii"));
        let cx = extract_context(&md);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn missing_or_malformed_traceparent_gives_an_empty_context() {
        assert!(!extract_context(&MetadataMap::new()).span().span_context().is_valid());
        let mut md = MetadataMap::new();
        md.insert("traceparent", "00-nothex-00f067aa0ba902b7-01".parse().expect("ascii"));
        assert!(!extract_context(&md).span().span_context().is_valid());
    }

    #[test]
    fn inject_then_extract_round_trips() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"),
            SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(sc);
        let mut md = MetadataMap::new();
        inject_context(&cx, &mut md);
        assert_eq!(md.get("traceparent").and_then(|v| v.to_str().ok()), Some(PARENT));
        assert_eq!(
            extract_context(&md).span().span_context().trace_id(),
            cx.span().span_context().trace_id()
        );
    }

    #[test]
    fn trace_id_is_recorded_even_without_export() {
        let mut md = MetadataMap::new();
        md.insert("traceparent", PARENT.parse().expect("ascii"));
        let span = tracing::info_span!("infer", trace_id = tracing::field::Empty);
        assert_eq!(set_parent_from_metadata(&span, &md).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(set_parent_from_metadata(&span, &MetadataMap::new()), None);
    }
}
