//! Trace export end to end: an OTLP collector (a tonic TraceService server from the
//! opentelemetry-proto definitions) on 127.0.0.1:0, `init_tracing` pointed at it, one request
//! span continuing a client's `traceparent` with a child span, then the exported span tree.
//!
//! Its own test binary: `init_tracing` installs the process-global subscriber.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tern_telemetry::{TracingConfig, init_tracing, set_parent_from_metadata};
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataMap;

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_span_tree_reaches_an_otlp_collector_under_the_clients_trace() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stop_rx.await;
            }),
    );

    let cfg = TracingConfig {
        trace_otlp_endpoint: Some(format!("http://{addr}")),
        service_name: "tern-test".into(),
        ..TracingConfig::default()
    };
    let guard = init_tracing(&cfg).expect("tracing");
    assert!(guard.exporting());
    // What neither the logs nor the export want is off at its callsite, not made and checked on
    // every hit (h2 has trace spans on every HTTP/2 frame; benches/RESULTS.md, "Router
    // overhead: where the CPU goes").
    assert!(tracing::trace_span!(target: "h2", "reclaim_frame").is_disabled(), "h2's trace spans are off");
    assert!(!tracing::enabled!(target: "hyper", tracing::Level::DEBUG), "hyper's debug events are off");

    let mut md = MetadataMap::new();
    md.insert("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01").parse().expect("ascii"));
    {
        let request = tracing::info_span!("infer", model = "tiny_add", trace_id = tracing::field::Empty);
        let trace_id = set_parent_from_metadata(&request, &md);
        assert_eq!(trace_id.as_deref(), Some(CLIENT_TRACE));
        let _in_request = request.enter();
        let queue = tracing::info_span!("queue");
        let _in_queue = queue.enter();
        tracing::info!("queued");
        // The scheduler's debug spans are exported; other crates' debug spans are not.
        drop(tracing::debug_span!(target: "tern_scheduler", "execute").entered());
        drop(tracing::debug_span!("chatter").entered());
    }
    // Dropping the guard flushes the batch (blocking: off the async workers).
    tokio::task::spawn_blocking(move || drop(guard)).await.expect("flush");

    let mut spans = Vec::new();
    let mut service_name = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while spans.len() < 3 {
        let req = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("the collector got the spans within 20 s")
            .expect("collector alive");
        for rs in req.resource_spans {
            for attr in rs.resource.iter().flat_map(|r| r.attributes.iter()) {
                if attr.key == "service.name"
                    && let Some(Value::StringValue(s)) = attr.value.as_ref().and_then(|v| v.value.clone())
                {
                    service_name = Some(s);
                }
            }
            spans.extend(rs.scope_spans.into_iter().flat_map(|ss| ss.spans));
        }
    }
    assert_eq!(service_name.as_deref(), Some("tern-test"));
    let infer = spans.iter().find(|s| s.name == "infer").expect("infer span");
    let queue = spans.iter().find(|s| s.name == "queue").expect("queue span");
    assert_eq!(hex(&infer.trace_id), CLIENT_TRACE, "request continues the client's trace");
    assert_eq!(hex(&infer.parent_span_id), CLIENT_SPAN, "request's parent is the client's span");
    assert_eq!(queue.trace_id, infer.trace_id);
    assert_eq!(queue.parent_span_id, infer.span_id, "queue is a child of the request");
    let execute = spans.iter().find(|s| s.name == "execute").expect("the scheduler's debug span");
    assert_eq!(execute.parent_span_id, queue.span_id);
    assert!(
        spans.iter().all(|s| s.name != "chatter"),
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );

    let _ = stop_tx.send(());
    let _ = collector.await;
}
