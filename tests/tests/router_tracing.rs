//! A request through the router, traced end to end: a real tern-node and a real tern-router in
//! this process, both exporting to an OTLP collector (a tonic TraceService server from the
//! opentelemetry-proto definitions) on loopback. The router's `route` span continues the
//! client's `traceparent`, and the node's `infer` span is the child of the router's span (the
//! router sends its own span's context to the node, not the client's).
//!
//! Its own test binary: tracing is set up once per process.

use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tern_tests::{Collector, TempRepo, TestNode, TestRouter, hex, tiny_add_request};

const CLIENT_TRACE: &str = "5b8efff798038103d269b633813fc60c";
const CLIENT_SPAN: &str = "eee19b7ec3c1b174";

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|a| a.key == key)?.value.as_ref()?.value.clone()?;
    Some(match value {
        Value::StringValue(s) => s,
        Value::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

fn traced<T>(message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01").parse()?);
    Ok(req)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_span_is_a_child_of_the_routers_span() -> anyhow::Result<()> {
    let mut collector = Collector::start().await?;
    let cfg = collector.tracing_config("tern-cluster");
    let guard = tern_telemetry::init_tracing(&cfg)?;

    let repo = TempRepo::new()?.with_example("tiny_add")?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let node_addr = node.addr.to_string();
    let router = TestRouter::start(&node, &[], &["tiny_add"]).await?;
    let mut client = router.client().await?;

    // One unary request and one stream request, both under the client's trace.
    client.model_infer(traced(tiny_add_request("tiny_add", 1.0, 1.0))?).await?;
    let stream = tokio_stream::iter([tiny_add_request("tiny_add", 1.0, 1.0)]);
    let mut replies = client.model_stream_infer(traced(stream)?).await?.into_inner();
    let reply = replies.message().await?.expect("one stream response");
    assert_eq!(reply.error_message, "", "the stream request succeeded");

    router.stop().await?;
    node.stop().await?;
    // Dropping the guard flushes the exporter (blocking: off the async workers).
    tokio::task::spawn_blocking(move || drop(guard)).await?;

    let mut spans: Vec<Span> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let count = |spans: &[Span], name: &str| spans.iter().filter(|s| s.name == name).count();
    while count(&spans, "route") < 2 || count(&spans, "infer") < 2 {
        let Ok(Some(batch)) = tokio::time::timeout_at(deadline, collector.exports.recv()).await else {
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            anyhow::bail!("collector got only {names:?}");
        };
        for rs in batch.resource_spans {
            spans.extend(rs.scope_spans.into_iter().flat_map(|ss| ss.spans));
        }
    }
    let routes: Vec<&Span> = spans.iter().filter(|s| s.name == "route").collect();
    let infers: Vec<&Span> = spans.iter().filter(|s| s.name == "infer").collect();
    for route in &routes {
        assert_eq!(hex(&route.trace_id), CLIENT_TRACE, "the router continues the client's trace");
        assert_eq!(hex(&route.parent_span_id), CLIENT_SPAN, "the router's span is the client's child");
        assert_eq!(attribute(route, "model").as_deref(), Some("tiny_add"));
        assert_eq!(attribute(route, "node").as_deref(), Some(node_addr.as_str()));
        assert_eq!(attribute(route, "attempts").as_deref(), Some("1"));
        assert_eq!(attribute(route, "outcome").as_deref(), Some("OK"));
    }
    for infer in &infers {
        assert_eq!(hex(&infer.trace_id), CLIENT_TRACE, "the node continues the same trace");
        assert_ne!(hex(&infer.parent_span_id), CLIENT_SPAN, "the node's parent is not the client");
        assert!(
            routes.iter().any(|r| r.span_id == infer.parent_span_id),
            "the node's span is a child of a router span: parent {} among {:?}",
            hex(&infer.parent_span_id),
            routes.iter().map(|r| hex(&r.span_id)).collect::<Vec<_>>()
        );
    }
    assert_ne!(infers[0].parent_span_id, infers[1].parent_span_id, "one router span per request");
    Ok(())
}
