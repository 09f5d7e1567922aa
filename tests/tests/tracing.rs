//! A request's span tree, exported by a real node to an OTLP collector (a tonic TraceService
//! server from the opentelemetry-proto definitions) on loopback: the request span continues
//! the client's `traceparent`, `queue` is its child, the batch's `execute` span links to it,
//! and `compute_infer` runs under `execute`. TraceSetting's `trace_level` OFF stops export.
//!
//! Its own test binary: tracing is set up once per process.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::trace::v1::Span;
use tern_proto::inference::{self as pb, model_infer_request::InferInputTensor};
use tern_tests::{Collector, TempRepo, TestNode, hex};

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";
/// The trace of a request sent after TraceSetting turned tracing off.
const UNTRACED: &str = "1af7651916cd43dd8448eb211c80319c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_exports_its_span_tree_under_the_clients_trace() -> anyhow::Result<()> {
    let mut collector = Collector::start().await?;
    let cfg = collector.tracing_config("tern-node");
    let guard = tern_telemetry::init_tracing(&cfg)?;

    let repo = TempRepo::new()?.with_example("tiny_add")?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let mut c = node.client().await?;
    let row = Bytes::from([1.0f32; 16].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    let input = |name: &str| InferInputTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape: vec![1, 16],
        ..Default::default()
    };
    let mut req = tonic::Request::new(pb::ModelInferRequest {
        model_name: "tiny_add".into(),
        inputs: vec![input("INPUT0"), input("INPUT1")],
        raw_input_contents: vec![row.clone(), row],
        ..Default::default()
    });
    req.metadata_mut().insert("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01").parse()?);
    let again = tonic::Request::new(req.get_ref().clone());
    c.model_infer(req).await?;

    // Triton's TraceSetting: level OFF, then a request whose client asks for tracing.
    let off = pb::TraceSettingRequest {
        settings: [(
            "trace_level".to_string(),
            pb::trace_setting_request::SettingValue { value: vec!["OFF".into()] },
        )]
        .into(),
        model_name: String::new(),
    };
    let now = c.trace_setting(off).await?.into_inner().settings;
    assert_eq!(now["trace_level"].value, ["OFF"]);
    assert_eq!(now["trace_mode"].value, ["opentelemetry"]);
    let mut again = again;
    again.metadata_mut().insert("traceparent", format!("00-{UNTRACED}-{CLIENT_SPAN}-01").parse()?);
    c.model_infer(again).await?;
    node.stop().await?;
    // Dropping the guard flushes the exporter (blocking: off the async workers).
    tokio::task::spawn_blocking(move || drop(guard)).await?;

    let mut spans: Vec<Span> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let wanted = ["infer", "queue", "execute", "compute_infer"];
    while !wanted.iter().all(|w| spans.iter().any(|s| s.name == *w)) {
        let Ok(Some(batch)) = tokio::time::timeout_at(deadline, collector.exports.recv()).await else {
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            anyhow::bail!("collector got only {names:?}");
        };
        for rs in batch.resource_spans {
            spans.extend(rs.scope_spans.into_iter().flat_map(|ss| ss.spans));
        }
    }
    // The flush above sent everything: no span of the untraced request arrived.
    while let Ok(batch) = collector.exports.try_recv() {
        for rs in batch.resource_spans {
            spans.extend(rs.scope_spans.into_iter().flat_map(|ss| ss.spans));
        }
    }
    assert!(spans.iter().all(|s| hex(&s.trace_id) != UNTRACED), "trace_level OFF exported a span");
    let find = |name: &str| spans.iter().find(|s| s.name == name).cloned().expect("span present");
    let (infer, queue, execute, compute) =
        (find("infer"), find("queue"), find("execute"), find("compute_infer"));
    assert_eq!(hex(&infer.trace_id), CLIENT_TRACE, "the request continues the client's trace");
    assert_eq!(hex(&infer.parent_span_id), CLIENT_SPAN);
    assert_eq!(queue.parent_span_id, infer.span_id, "queue is a child of the request");
    assert!(
        execute.links.iter().any(|l| l.span_id == infer.span_id && l.trace_id == infer.trace_id),
        "the batch span links to the request span"
    );
    assert_eq!(compute.parent_span_id, execute.span_id, "compute_infer runs under execute");
    Ok(())
}
