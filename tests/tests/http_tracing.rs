//! An HTTP/REST request's span continues the client's W3C `traceparent` header, as a gRPC
//! request's does from its metadata: a real node exports to an OTLP collector (a tonic
//! TraceService server) on loopback, and the request arrives as raw HTTP/1.1 on its HTTP port.
//!
//! Its own test binary: tracing is set up once per process.

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::Span;
use tern_tests::{Collector, TempRepo, TestNode, hex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_continues_the_clients_trace() -> anyhow::Result<()> {
    let mut collector = Collector::start().await?;
    let cfg = collector.tracing_config("tern-node");
    let guard = tern_telemetry::init_tracing(&cfg)?;

    // A free port for HTTP (TestNode reports only the gRPC address).
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let repo = TempRepo::new()?.with_example("tiny_add")?;
    let node = TestNode::start(repo.path(), &["--http-port", &http_port.to_string()]).await?;
    let ones = "[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]";
    let body = format!(
        r#"{{"inputs":[{{"name":"INPUT0","shape":[1,16],"datatype":"FP32","data":{ones}}},{{"name":"INPUT1","shape":[1,16],"datatype":"FP32","data":{ones}}}]}}"#
    );
    let request = format!(
        "POST /v2/models/tiny_add/infer HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         traceparent: 00-{CLIENT_TRACE}-{CLIENT_SPAN}-01\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", http_port)).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_string(&mut reply)).await??;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"data\":[2.0,2.0"), "{reply}");
    node.stop().await?;
    // Dropping the guard flushes the exporter (blocking: off the async workers).
    tokio::task::spawn_blocking(move || drop(guard)).await?;

    let mut spans: Vec<Span> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !spans.iter().any(|s| s.name == "infer") {
        let Ok(Some(batch)) = tokio::time::timeout_at(deadline, collector.exports.recv()).await else {
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            anyhow::bail!("collector got only {names:?}");
        };
        for rs in batch.resource_spans {
            spans.extend(rs.scope_spans.into_iter().flat_map(|ss| ss.spans));
        }
    }
    let infer = spans.iter().find(|s| s.name == "infer").expect("infer span");
    assert_eq!(hex(&infer.trace_id), CLIENT_TRACE, "the HTTP request continues the client's trace");
    assert_eq!(hex(&infer.parent_span_id), CLIENT_SPAN);
    Ok(())
}
