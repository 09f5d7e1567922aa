//! ModelStreamInfer through the router and Triton's generate extension over HTTP, against a
//! real tern-node and a real tern-router in this process (loopback, free ports).
//!
//! - a plain model over the router's stream: exactly one response per request, in request
//!   order, a failed request answered in its place, the stream ended after the last;
//! - `/generate` and `/generate_stream` on the node and through the router: JSON fields become
//!   the model's inputs, outputs come back as fields; one Server-Sent Event per response; errors
//!   before the stream as `{"error": ...}` with Triton's status.

use std::time::Duration;

use bytes::Bytes;
use tern_proto::inference::{self as pb, model_infer_request::InferInputTensor};
use tern_tests::{TempRepo, TestNode, TestRouter, floats, free_port, tiny_add_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tiny_add request with an id, its INPUT0 rows `value` and INPUT1 rows 1.
fn tiny_add(model: &str, id: &str, value: f32) -> pb::ModelInferRequest {
    pb::ModelInferRequest { id: id.into(), ..tiny_add_request(model, value, 1.0) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_model_streams_through_the_router_one_response_per_request_in_order() -> anyhow::Result<()> {
    let repo = TempRepo::new()?.with_example("tiny_add")?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let router = TestRouter::start(&node, &[], &["tiny_add"]).await?;
    let mut client = router.client().await?;

    let mut requests: Vec<pb::ModelInferRequest> =
        (0..24).map(|i| tiny_add("tiny_add", &i.to_string(), i as f32)).collect();
    requests.insert(10, tiny_add("no_such_model", "bad", 0.0));
    let ids: Vec<String> = requests.iter().map(|r| r.id.clone()).collect();
    let mut replies = client.model_stream_infer(tokio_stream::iter(requests)).await?.into_inner();
    let mut got = Vec::new();
    // The stream ends after the last request's response: bounded, and no response is missing.
    while let Some(reply) = tokio::time::timeout(Duration::from_secs(30), replies.message()).await?? {
        got.push(reply);
        anyhow::ensure!(got.len() <= ids.len(), "more responses than requests");
    }
    let got_ids: Vec<String> =
        got.iter().map(|r| r.infer_response.as_ref().map(|r| r.id.clone()).unwrap_or_default()).collect();
    assert_eq!(got_ids, ids, "one response per request, in request order");
    for reply in &got {
        let response = reply.infer_response.as_ref().expect("a response");
        if response.id == "bad" {
            assert!(reply.error_message.contains("no_such_model"), "{}", reply.error_message);
            continue;
        }
        assert_eq!(reply.error_message, "", "request {}", response.id);
        let last = response.parameters.get("triton_final_response").and_then(|p| p.parameter_choice.clone());
        assert_eq!(
            last,
            Some(pb::infer_parameter::ParameterChoice::BoolParam(true)),
            "request {}",
            response.id
        );
        let value: f32 = response.id.parse()?;
        let out = &response.raw_output_contents[0];
        assert_eq!(out, &floats(&[value + 1.0; 16]), "request {}", response.id);
    }

    router.stop().await?;
    node.stop().await?;
    Ok(())
}

/// One HTTP/1.1 exchange (connection closed after it): status, lower-cased headers, body
/// (de-chunked).
async fn http(port: u16, path: &str, body: &str) -> anyhow::Result<(u16, Vec<(String, String)>, String)> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut reply)).await??;
    let reply = String::from_utf8(reply)?;
    let (head, raw_body) = reply.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no head: {reply}"))?;
    let mut lines = head.lines();
    let status: u16 = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or("0").parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = raw_body;
        loop {
            let (size, after) =
                rest.split_once("\r\n").ok_or_else(|| anyhow::anyhow!("bad chunk: {rest:?}"))?;
            let size = usize::from_str_radix(size.trim(), 16)?;
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        out
    } else {
        raw_body.to_string()
    };
    Ok((status, headers, body))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The generate routes on a plain model, at `port` (a node's or a router's HTTP); `unknown`:
/// the status of a model nobody serves (the node's NOT_FOUND, the router's UNAVAILABLE when it
/// cannot place a model), as the metadata route answers it.
async fn check_generate_routes(port: u16, unknown: u16) -> anyhow::Result<()> {
    let twos = "[2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2]";
    let body = format!(r#"{{"id":"g1","INPUT0":{twos},"parameters":{{"INPUT1":{twos},"note":"x"}}}}"#);

    let (status, headers, text) = http(port, "/v2/models/tiny_add/generate", &body).await?;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_str(&text)?;
    assert_eq!(json["id"], "g1");
    assert_eq!(json["model_name"], "tiny_add");
    assert_eq!(json["model_version"], "1");
    assert_eq!(json["OUTPUT0"], serde_json::json!(vec![4.0; 16]), "{text}");

    let (status, headers, text) = http(port, "/v2/models/tiny_add/versions/1/generate_stream", &body).await?;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "content-type"), Some("text/event-stream; charset=utf-8"));
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(events.len(), 1, "one event for a plain model: {text:?}");
    let event =
        events[0].strip_prefix("data: ").ok_or_else(|| anyhow::anyhow!("not an SSE data line: {text:?}"))?;
    let json: serde_json::Value = serde_json::from_str(event)?;
    assert_eq!(json["OUTPUT0"], serde_json::json!(vec![4.0; 16]), "{text}");

    // Errors before the stream: JSON with Triton's status.
    for route in ["generate", "generate_stream"] {
        let (status, headers, text) = http(port, &format!("/v2/models/no_such_model/{route}"), &body).await?;
        assert_eq!(status, unknown, "{text}");
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        let json: serde_json::Value = serde_json::from_str(&text)?;
        assert!(json["error"].as_str().is_some_and(|e| e.contains("no_such_model")), "{text}");

        let (status, _, text) =
            http(port, &format!("/v2/models/tiny_add/{route}"), r#"{"INPUT0":[1,2,3],"INPUT1":[1]}"#).await?;
        assert_eq!(status, 400, "{text}");
        let json: serde_json::Value = serde_json::from_str(&text)?;
        assert!(json["error"].as_str().is_some_and(|e| e.contains("INPUT0")), "{text}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_routes_answer_on_the_node_and_through_the_router() -> anyhow::Result<()> {
    let repo = TempRepo::new()?.with_example("tiny_add")?;
    let node_http = free_port()?;
    let node = TestNode::start(repo.path(), &["--http-port", &node_http.to_string()]).await?;
    let router_http = free_port()?;
    let router = TestRouter::start(&node, &["--http-port", &router_http.to_string()], &["tiny_add"]).await?;

    check_generate_routes(node_http, 404).await?;
    check_generate_routes(router_http, 503).await?;

    router.stop().await?;
    node.stop().await?;
    Ok(())
}

fn bytes_element(s: &str) -> Bytes {
    let mut out = (s.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    Bytes::from(out)
}

/// A greedy generation request for the example `tiny_llm` (a decoupled model).
fn llm(id: &str, prompt: &str, max_tokens: i32) -> pb::ModelInferRequest {
    let input = |name: &str, datatype: &str| InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: vec![1],
        ..Default::default()
    };
    pb::ModelInferRequest {
        model_name: "tiny_llm".into(),
        id: id.into(),
        inputs: vec![input("text_input", "BYTES"), input("max_tokens", "INT32"), input("ignore_eos", "BOOL")],
        raw_input_contents: vec![
            bytes_element(prompt),
            Bytes::from(max_tokens.to_le_bytes().to_vec()),
            Bytes::from_static(&[1]),
        ],
        ..Default::default()
    }
}

fn is_final(response: &pb::ModelInferResponse) -> Option<bool> {
    match response.parameters.get("triton_final_response")?.parameter_choice {
        Some(pb::infer_parameter::ParameterChoice::BoolParam(b)) => Some(b),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoupled_model_streams_through_the_router_every_response_relayed() -> anyhow::Result<()> {
    let repo = TempRepo::new()?.with_example("tiny_add")?.with_example("tiny_llm")?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let router = TestRouter::start(&node, &[], &["tiny_add", "tiny_llm"]).await?;
    let mut client = router.client().await?;

    // Generations and plain requests on one stream: each request gets all of its responses, in
    // its own order, the last (and only the last) marked final.
    let requests = vec![
        llm("long", "Once upon a time", 40),
        tiny_add("tiny_add", "plain-1", 1.0),
        llm("short", "The", 3),
        tiny_add("tiny_add", "plain-2", 2.0),
        llm("bad", "", 0),
    ];
    let mut replies = client.model_stream_infer(tokio_stream::iter(requests)).await?.into_inner();
    let mut by_id: std::collections::HashMap<String, Vec<pb::ModelStreamInferResponse>> = Default::default();
    let mut total = 0;
    while let Some(reply) = tokio::time::timeout(Duration::from_secs(60), replies.message()).await?? {
        let id = reply.infer_response.as_ref().map(|r| r.id.clone()).unwrap_or_default();
        by_id.entry(id).or_default().push(reply);
        total += 1;
        anyhow::ensure!(total < 200, "more responses than the requests can give");
    }
    for (id, tokens) in [("long", 40), ("short", 3)] {
        let got = by_id.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(got.len(), tokens + 1, "{id}: one response per token, then the final one");
        for (i, reply) in got.iter().enumerate() {
            assert_eq!(reply.error_message, "", "{id}");
            let response = reply.infer_response.as_ref().expect("response");
            assert_eq!(is_final(response), Some(i == tokens), "{id}: response {i}");
        }
    }
    // The node refuses a generation with no tokens to make or no prompt; either way one answer.
    let bad = by_id.get("bad").map(Vec::as_slice).unwrap_or_default();
    assert_eq!(bad.len(), 1, "{bad:?}");
    for id in ["plain-1", "plain-2"] {
        let got = by_id.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(got.len(), 1, "{id}");
        assert_eq!(got[0].error_message, "", "{id}");
    }
    router.stop().await?;
    node.stop().await?;
    Ok(())
}

/// `/generate` and `/generate_stream` on tiny_llm at `port`: the same greedy text either way.
async fn check_generate_text(port: u16) -> anyhow::Result<()> {
    let body =
        r#"{"text_input":"Once upon a time","max_tokens":6,"parameters":{"ignore_eos":true},"id":"t1"}"#;
    let (status, _, text) = http(port, "/v2/models/tiny_llm/generate", body).await?;
    assert_eq!(status, 200, "{text}");
    let whole: serde_json::Value = serde_json::from_str(&text)?;
    assert_eq!(
        (whole["id"].as_str(), whole["model_name"].as_str()),
        (Some("t1"), Some("tiny_llm")),
        "{text}"
    );
    assert_eq!(whole["finish_reason"], "length", "{text}");
    let whole_text =
        whole["text_output"].as_str().ok_or_else(|| anyhow::anyhow!("no text_output: {text}"))?;

    let (status, headers, text) = http(port, "/v2/models/tiny_llm/generate_stream", body).await?;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "content-type"), Some("text/event-stream; charset=utf-8"));
    let events: Vec<serde_json::Value> = text
        .split_terminator("\n\n")
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap_or(e)))
        .collect::<Result<_, _>>()?;
    assert_eq!(events.len(), 7, "6 tokens then the final event: {text}");
    assert!(events.iter().all(|e| e.get("triton_final_response").is_none()), "{text}");
    assert_eq!(events[6]["finish_reason"], "length", "{text}");
    let streamed: String = events.iter().filter_map(|e| e["text_output"].as_str()).collect();
    assert_eq!(streamed, whole_text);

    // A client that asks /generate for a response per token gets Triton's error. Triton sets
    // the status with the first response (200: it succeeded) and, at the end, writes the error
    // as the body (`SendChunkResponse`).
    let body = r#"{"text_input":"Once","max_tokens":3,"stream":true,"ignore_eos":true}"#;
    let (status, headers, text) = http(port, "/v2/models/tiny_llm/generate", body).await?;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_str(&text)?;
    assert!(
        json["error"]
            .as_str()
            .is_some_and(|e| e.contains("generate expects model to produce exactly 1 response")),
        "{text}"
    );
    Ok(())
}

/// A refusal by the engine (its queue is full: RESOURCE_EXHAUSTED) at `port`: 429 on both
/// routes (Triton's `HttpCodeFromError`); on `/generate_stream` the error is the stream's first
/// event, with the status, as Triton sends a failed first response (`InferResponseComplete`).
async fn check_refusal(port: u16) -> anyhow::Result<()> {
    let body = r#"{"text_input":"Once upon a time","max_tokens":4}"#;
    let (status, headers, text) = http(port, "/v2/models/tiny_llm/generate", body).await?;
    assert_eq!(status, 429, "{text}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_str(&text)?;
    assert!(json["error"].as_str().is_some_and(|e| e.contains("queue is full")), "{text}");

    let (status, headers, text) = http(port, "/v2/models/tiny_llm/generate_stream", body).await?;
    assert_eq!(status, 429, "{text}");
    assert_eq!(header(&headers, "content-type"), Some("text/event-stream; charset=utf-8"));
    let event = text
        .strip_prefix("data: ")
        .and_then(|e| e.strip_suffix("\n\n"))
        .ok_or_else(|| anyhow::anyhow!("not one SSE event: {text:?}"))?;
    let json: serde_json::Value = serde_json::from_str(event)?;
    assert!(json["error"].as_str().is_some_and(|e| e.contains("queue is full")), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_refusal_keeps_its_code_on_the_node_and_through_the_router() -> anyhow::Result<()> {
    // max_queue 0: the engine refuses every request (RESOURCE_EXHAUSTED).
    let config = "name: \"tiny_llm\"\nbackend: \"onnxruntime_genai\"\nmax_batch_size: 0\n\
                  model_transaction_policy { decoupled: true }\n\
                  parameters { key: \"max_queue\" value { string_value: \"0\" } }\n";
    let repo =
        TempRepo::new()?.with_example("tiny_llm")?.with_file("tiny_llm/config.pbtxt", config.as_bytes())?;
    let node_http = free_port()?;
    let node = TestNode::start(repo.path(), &["--http-port", &node_http.to_string()]).await?;
    let router_http = free_port()?;
    let router = TestRouter::start(&node, &["--http-port", &router_http.to_string()], &["tiny_llm"]).await?;

    check_refusal(node_http).await?;
    check_refusal(router_http).await?;

    // Over the router's gRPC stream the node's code travels in `tern_error_code`.
    let mut client = router.client().await?;
    let mut replies =
        client.model_stream_infer(tokio_stream::iter(vec![llm("r", "Once", 4)])).await?.into_inner();
    let reply = tokio::time::timeout(Duration::from_secs(30), replies.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("no response"))?;
    assert!(reply.error_message.contains("queue is full"), "{reply:?}");
    let code = reply
        .infer_response
        .as_ref()
        .and_then(|r| r.parameters.get("tern_error_code"))
        .and_then(|p| p.parameter_choice.clone());
    assert_eq!(
        code,
        Some(pb::infer_parameter::ParameterChoice::Int64Param(tonic::Code::ResourceExhausted as i64))
    );

    router.stop().await?;
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_text_over_http_on_the_node_and_through_the_router() -> anyhow::Result<()> {
    let repo = TempRepo::new()?.with_example("tiny_add")?.with_example("tiny_llm")?;
    let node_http = free_port()?;
    let node = TestNode::start(repo.path(), &["--http-port", &node_http.to_string()]).await?;
    let router_http = free_port()?;
    let router =
        TestRouter::start(&node, &["--http-port", &router_http.to_string()], &["tiny_add", "tiny_llm"])
            .await?;

    check_generate_text(node_http).await?;
    check_generate_text(router_http).await?;

    router.stop().await?;
    node.stop().await?;
    Ok(())
}
