//! tern-client against a real node: health and metadata, inference with typed, BYTES and
//! ndarray tensors, the server's errors as `ClientError` with their gRPC code, load with a
//! config override and unload, statistics, ModelStreamInfer with an in-band error, generation
//! on the example language model, and a bearer token.

use futures::StreamExt;
use tern_client::{
    Client, ClientError, ConnectOptions, DataType, GenerateEvent, GenerateParams, InferRequest, InputTensor,
};
use tern_tests::{TempRepo, TestNode};
use tonic::Code;

async fn connect(node: &TestNode) -> anyhow::Result<Client> {
    Ok(Client::connect(&node.addr.to_string(), ConnectOptions::new()).await?)
}

fn tiny_add(rows: usize) -> anyhow::Result<(InferRequest, Vec<f32>)> {
    let a: Vec<f32> = (0..rows * 16).map(|i| i as f32 / 3.0).collect();
    let b: Vec<f32> = (0..rows * 16).map(|i| 0.25 - i as f32).collect();
    let sum = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    let shape = [rows as i64, 16];
    let request = InferRequest::new("tiny_add")
        .id("c1")
        .input(InputTensor::new("INPUT0", &shape, &a)?)
        .input(InputTensor::new("INPUT1", &shape, &b)?);
    Ok((request, sum))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_infers_typed_and_bytes_tensors_and_reports_server_errors() -> anyhow::Result<()> {
    let repo = TempRepo::new()?.with_example("tiny_add")?.with_example("string_identity")?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let client = connect(&node).await?;

    assert!(client.server_live().await? && client.server_ready().await?);
    assert!(client.server_metadata().await?.extensions.iter().any(|e| e == "model_repository"));
    assert!(client.model_ready("tiny_add", "").await?);
    let metadata = client.model_metadata("tiny_add", "").await?;
    assert_eq!((metadata.inputs[0].datatype.as_str(), &metadata.inputs[0].shape), ("FP32", &vec![-1, 16]));
    assert_eq!(client.model_config("tiny_add", "").await?.max_batch_size, 64);

    let (request, want) = tiny_add(3)?;
    let result = client.infer(request).await?;
    assert_eq!((result.id.as_str(), result.model_version.as_str()), ("c1", "1"));
    let out = result.output("OUTPUT0")?;
    assert_eq!((out.datatype(), out.shape()), (DataType::Fp32, &[3i64, 16][..]));
    assert_eq!(out.to_vec::<f32>()?, want);
    // The same through ndarray.
    let array = out.to_array::<f32>()?;
    assert_eq!(array.shape(), &[3, 16]);
    let a = ndarray::Array2::<f32>::from_elem((1, 16), 2.0);
    let result = client
        .infer(
            InferRequest::new("tiny_add")
                .input(InputTensor::from_array("INPUT0", &a)?)
                .input(InputTensor::from_array("INPUT1", &a.view())?),
        )
        .await?;
    assert_eq!(result.output("OUTPUT0")?.to_array::<f32>()?, (&a + &a).into_dyn());

    // BYTES, arbitrary bytes included, framed by the client and read back as slices.
    let words: Vec<&[u8]> = vec![b"hello", b"", b"\xff\x00bin", "h\u{e9}".as_bytes()];
    let result = client
        .infer(InferRequest::new("string_identity").input(InputTensor::bytes("INPUT0", &[4], &words)?))
        .await?;
    let back = result.output("OUTPUT0")?.to_bytes()?;
    assert_eq!(back.iter().map(|b| b.as_ref()).collect::<Vec<_>>(), words);
    let text = client
        .infer(InferRequest::new("string_identity").input(InputTensor::bytes("INPUT0", &[2], &["a", "bc"])?))
        .await?;
    assert_eq!(text.output("OUTPUT0")?.to_strings()?, ["a", "bc"]);

    // The server's errors keep their code and message.
    let e = client.infer(InferRequest::new("no_such_model")).await.expect_err("unknown model");
    assert_eq!(e.code(), Some(Code::NotFound));
    assert_eq!(e.to_string(), "NOT_FOUND: Request for unknown model: 'no_such_model' is not found");
    let nope = InferRequest::new("tiny_add").input(InputTensor::new("NOPE", &[1, 16], &[0f32; 16])?);
    let e = client.infer(nope).await.expect_err("unknown input");
    assert_eq!(e.to_string(), "INVALID_ARGUMENT: unexpected inference input 'NOPE' for model 'tiny_add'");
    let e = client.statistics("no_such_model", "").await.expect_err("unknown model");
    assert_eq!(e.code(), Some(Code::InvalidArgument));

    let stats = client.statistics("tiny_add", "").await?;
    assert_eq!(stats.iter().map(|s| s.inference_count).sum::<u64>(), 4);
    let index = client.repository_index(false).await?;
    assert!(index.iter().any(|m| m.name == "string_identity" && m.state == "READY"), "{index:?}");

    // ModelStreamInfer: an in-band error for one request, the others answered.
    let (good, _) = tiny_add(1)?;
    let bad = InferRequest::new("tiny_add").id("bad").input(InputTensor::new("NOPE", &[1, 16], &[0f32; 16])?);
    let mut responses = client.stream(futures::stream::iter(vec![good.clone(), bad, good])).await?;
    let mut got = Vec::new();
    while let Some(r) = responses.next().await {
        got.push(r);
    }
    assert_eq!(got.len(), 3);
    assert!(got[0].as_ref().is_ok_and(|r| r.is_final()));
    match &got[1] {
        Err(ClientError::InBand { request_id, message }) => {
            assert_eq!(
                (request_id.as_str(), message.as_str()),
                ("bad", "unexpected inference input 'NOPE' for model 'tiny_add'")
            )
        }
        other => anyhow::bail!("expected an in-band error, got {other:?}"),
    }
    assert!(got[2].is_ok());

    // Nothing reaches a closed port: a connection error, not a server answer.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let e = Client::connect(&closed.to_string(), ConnectOptions::new()).await.expect_err("nothing listens");
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_loads_with_a_config_override_and_unloads() -> anyhow::Result<()> {
    let repo = TempRepo::new()?.with_example("versioned_scale")?;
    let node = TestNode::start(repo.path(), &["--model-control-mode", "explicit"]).await?;
    let client = connect(&node).await?;
    let scale = |version: &str| {
        let request = InferRequest::new("versioned_scale").version(version);
        InputTensor::new("INPUT0", &[1, 4], &[1f32, 2.0, 3.0, 4.0]).map(|t| request.input(t))
    };

    assert!(!client.model_ready("versioned_scale", "").await?);
    client.load("versioned_scale", None).await?;
    let r = client.infer(scale("")?).await?;
    assert_eq!(
        (r.model_version.as_str(), r.output("OUTPUT0")?.to_vec::<f32>()?),
        ("3", vec![3.0, 6.0, 9.0, 12.0])
    );

    // Triton's load parameter `config`: only version 2.
    let config = r#"{"name": "versioned_scale", "backend": "onnxruntime", "max_batch_size": 8,
        "version_policy": {"specific": {"versions": [2]}},
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}]}"#;
    client.load("versioned_scale", Some(config)).await?;
    let r = client.infer(scale("")?).await?;
    assert_eq!(
        (r.model_version.as_str(), r.output("OUTPUT0")?.to_vec::<f32>()?),
        ("2", vec![2.0, 4.0, 6.0, 8.0])
    );
    let e = client.load("versioned_scale", Some("{ not json")).await.expect_err("bad config");
    assert_eq!(e.code(), Some(Code::Internal), "Triton's poll failure: {e}");

    client.unload("versioned_scale").await?;
    assert!(!client.model_ready("versioned_scale", "").await?);
    let index = client.repository_index(false).await?;
    assert!(index.iter().all(|m| m.state == "UNAVAILABLE" && m.reason == "unloaded"), "{index:?}");
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_generates_text_streamed_and_whole() -> anyhow::Result<()> {
    let repo = TempRepo::new()?.with_example("tiny_llm")?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let client = connect(&node).await?;

    let params = GenerateParams { max_tokens: Some(8), id: Some("g".into()), ..Default::default() };
    let mut generation = client.generate("tiny_llm", "Once upon a time", &params).await?;
    let mut pieces = Vec::new();
    let mut summary = None;
    while let Some(event) = generation.next().await {
        match event? {
            GenerateEvent::Text(piece) => pieces.push(piece),
            GenerateEvent::Done(done) => summary = Some(done),
        }
    }
    let summary = summary.ok_or_else(|| anyhow::anyhow!("no final event"))?;
    assert_eq!(pieces.len(), 8, "one piece per token: {pieces:?}");
    assert_eq!(summary.text, pieces.concat());
    assert_eq!(summary.finish_reason.as_deref(), Some("length"));
    assert_eq!(summary.completion_tokens, Some(8));
    assert!(summary.prompt_tokens.is_some_and(|n| n > 0), "{summary:?}");
    assert_eq!(summary.response.id, "g");

    // stream: false, one response: the same greedy text.
    let whole = GenerateParams { stream: Some(false), ..params.clone() };
    let again = client.generate_text("tiny_llm", "Once upon a time", &whole).await?;
    assert_eq!((again.text.as_str(), again.completion_tokens), (summary.text.as_str(), Some(8)));

    // An error ends the generation with the server's message.
    let bad = GenerateParams { max_tokens: Some(-1), ..Default::default() };
    let e = client.generate_text("tiny_llm", "x", &bad).await.expect_err("negative max_tokens");
    assert!(e.server_message().is_some_and(|m| m.contains("max_tokens")), "{e}");
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_presents_a_bearer_token() -> anyhow::Result<()> {
    let token = tern_edge::new_token().map_err(anyhow::Error::msg)?;
    let line = format!("tester {} groups=* models=*\n", tern_edge::hash_token(&token));
    let repo = TempRepo::new()?.with_example("tiny_add")?.with_file("tokens", line.as_bytes())?;
    let tokens = repo.path().join("tokens").display().to_string();
    let node = TestNode::start(repo.path(), &["--auth-token-file", &tokens]).await?;

    let anonymous = connect(&node).await?;
    assert!(anonymous.server_live().await?, "health is public");
    let e = anonymous.repository_index(false).await.expect_err("no token");
    assert_eq!(e.code(), Some(Code::Unauthenticated));
    let client = Client::connect(&node.addr.to_string(), ConnectOptions::new().token(token)).await?;
    let (request, want) = tiny_add(1)?;
    assert_eq!(client.infer(request).await?.output("OUTPUT0")?.to_vec::<f32>()?, want);
    node.stop().await
}
