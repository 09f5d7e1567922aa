//! Generative models on a real node: the example `tiny_llm` (ONNX Runtime GenAI's folder layout,
//! built by examples/build_tiny_llm.py) served by the real engine over ModelStreamInfer with a
//! tonic client: one response per token then a final one, `stream: false`, interleaving on one
//! stream, cancellation by disconnect, ModelInfer refused as Triton refuses it, bad inputs, and
//! a reload while a stream runs. Every wait is bounded.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use tern_proto::inference::infer_parameter::ParameterChoice;
use tern_proto::inference::model_infer_request::InferInputTensor;
use tern_proto::inference::{self as pb, InferParameter};
use tern_tests::{TempRepo, TestNode};

const MODEL: &str = "tiny_llm";
/// Longest any one response may take to come (a bound for a broken test, not a timing check).
const STEP_LIMIT: Duration = Duration::from_secs(60);

fn bytes_element(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// A request builder: inputs as raw contents.
struct Request {
    req: pb::ModelInferRequest,
}

impl Request {
    fn new(id: &str, prompt: &str) -> Request {
        let req = pb::ModelInferRequest { model_name: MODEL.into(), id: id.into(), ..Default::default() };
        Request { req }.input("text_input", "BYTES", vec![1], bytes_element(prompt))
    }

    fn input(mut self, name: &str, datatype: &str, shape: Vec<i64>, data: Vec<u8>) -> Request {
        self.req.inputs.push(InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            ..Default::default()
        });
        self.req.raw_input_contents.push(data.into());
        self
    }

    fn max_tokens(self, n: i32) -> Request {
        self.input("max_tokens", "INT32", vec![1], n.to_le_bytes().to_vec())
    }

    fn flag(self, name: &str, on: bool) -> Request {
        self.input(name, "BOOL", vec![1], vec![u8::from(on)])
    }

    fn parameter(mut self, name: &str, choice: ParameterChoice) -> Request {
        self.req.parameters.insert(name.into(), InferParameter { parameter_choice: Some(choice) });
        self
    }
}

/// What one response says.
#[derive(Debug, Clone)]
struct Reply {
    id: String,
    error: String,
    text: String,
    ids: Vec<i32>,
    finish: Option<String>,
    last: bool,
}

fn output<'a>(r: &'a pb::ModelInferResponse, name: &str) -> Option<&'a [u8]> {
    let i = r.outputs.iter().position(|o| o.name == name)?;
    r.raw_output_contents.get(i).map(|b| b.as_ref())
}

fn first_string(raw: &[u8]) -> anyhow::Result<String> {
    let len = u32::from_le_bytes(raw.get(..4).context("short BYTES")?.try_into()?) as usize;
    Ok(String::from_utf8(raw.get(4..4 + len).context("short BYTES element")?.to_vec())?)
}

fn reply(msg: pb::ModelStreamInferResponse) -> anyhow::Result<Reply> {
    let r = msg.infer_response.unwrap_or_default();
    let last = match r.parameters.get("triton_final_response").and_then(|p| p.parameter_choice.as_ref()) {
        Some(ParameterChoice::BoolParam(b)) => *b,
        other => bail!("no triton_final_response bool parameter: {other:?}"),
    };
    Ok(Reply {
        id: r.id.clone(),
        error: msg.error_message,
        text: output(&r, "text_output").map(first_string).transpose()?.unwrap_or_default(),
        ids: output(&r, "output_ids")
            .map(|b| b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            .unwrap_or_default(),
        finish: output(&r, "finish_reason").map(first_string).transpose()?,
        last,
    })
}

type Responses = tonic::Streaming<pb::ModelStreamInferResponse>;

async fn next(responses: &mut Responses) -> anyhow::Result<Option<Reply>> {
    match tokio::time::timeout(STEP_LIMIT, responses.message()).await.context("no response in time")?? {
        Some(msg) => Ok(Some(reply(msg)?)),
        None => Ok(None),
    }
}

/// Sends `requests` on one stream that stays open until `close` resolves.
async fn open_stream(
    node: &TestNode,
    requests: Vec<pb::ModelInferRequest>,
) -> anyhow::Result<(Responses, tokio::sync::oneshot::Sender<()>)> {
    let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
    let outbound = futures::stream::iter(requests.into_iter().map(Some))
        .chain(futures::stream::once(async move {
            let _ = close_rx.await;
            None
        }))
        .filter_map(futures::future::ready);
    let mut c = node.client().await?;
    let responses = c.model_stream_infer(outbound).await?.into_inner();
    Ok((responses, close_tx))
}

/// Every response of a single-request stream, through its final one.
async fn generate(node: &TestNode, request: Request) -> anyhow::Result<Vec<Reply>> {
    let (mut responses, _close) = open_stream(node, vec![request.req]).await?;
    let mut got = Vec::new();
    while let Some(r) = next(&mut responses).await? {
        let last = r.last;
        got.push(r);
        if last {
            return Ok(got);
        }
    }
    bail!("the stream ended before a final response: {got:?}")
}

fn repo() -> anyhow::Result<TempRepo> {
    TempRepo::new()?.with_example(MODEL)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generative_model_streams_one_response_per_token_then_a_final_one() -> anyhow::Result<()> {
    let repo = repo()?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let mut c = node.client().await?;

    // Auto-completed as a decoupled model with the generate-style I/O.
    let config = c
        .model_config(pb::ModelConfigRequest { name: MODEL.into(), version: String::new() })
        .await?
        .into_inner()
        .config
        .context("no config")?;
    assert_eq!(config.backend, "onnxruntime_genai");
    assert_eq!(config.model_transaction_policy.map(|p| p.decoupled), Some(true));
    let metadata = c
        .model_metadata(pb::ModelMetadataRequest { name: MODEL.into(), version: String::new() })
        .await?
        .into_inner();
    let inputs: Vec<(&str, &str)> =
        metadata.inputs.iter().map(|t| (t.name.as_str(), t.datatype.as_str())).collect();
    assert!(
        inputs.contains(&("text_input", "BYTES")) && inputs.contains(&("max_tokens", "INT32")),
        "{inputs:?}"
    );
    let ready = c.model_ready(pb::ModelReadyRequest { name: MODEL.into(), version: String::new() }).await?;
    assert!(ready.into_inner().ready);

    let streamed = generate(&node, Request::new("s", "Once upon a time").max_tokens(8)).await?;
    assert_eq!(streamed.len(), 9, "8 tokens then the final response: {streamed:?}");
    for r in &streamed[..8] {
        assert!(!r.last && r.error.is_empty() && r.finish.is_none(), "{r:?}");
        assert_eq!((r.ids.len(), r.id.as_str()), (1, "s"), "{r:?}");
    }
    let last = &streamed[8];
    assert!(last.last && last.ids.is_empty(), "{last:?}");
    assert_eq!(last.finish.as_deref(), Some("length"));
    let text: String = streamed.iter().map(|r| r.text.as_str()).collect();
    let ids: Vec<i32> = streamed.iter().flat_map(|r| r.ids.clone()).collect();

    // stream: false: one response with everything, the same greedy tokens.
    let whole =
        generate(&node, Request::new("w", "Once upon a time").max_tokens(8).flag("stream", false)).await?;
    assert_eq!(whole.len(), 1, "{whole:?}");
    assert_eq!((whole[0].text.as_str(), &whole[0].ids), (text.as_str(), &ids));
    assert_eq!(whole[0].finish.as_deref(), Some("length"));

    // Sampling parameters as request parameters (Triton's generate extension forwards them so).
    let by_parameter = generate(
        &node,
        Request::new("p", "Once upon a time")
            .parameter("max_tokens", ParameterChoice::Int64Param(3))
            .parameter("stream", ParameterChoice::BoolParam(false)),
    )
    .await?;
    assert_eq!(by_parameter.len(), 1);
    assert_eq!(by_parameter[0].ids, ids[..3], "greedy: the same first tokens");

    let stats = c
        .model_statistics(pb::ModelStatisticsRequest { name: MODEL.into(), version: String::new() })
        .await?
        .into_inner();
    let success =
        stats.model_stats[0].inference_stats.as_ref().and_then(|s| s.success.as_ref()).map(|d| d.count);
    assert_eq!(success, Some(3), "every generation is counted");
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_infer_on_a_decoupled_model_is_refused_as_triton_refuses_it() -> anyhow::Result<()> {
    let repo = repo()?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let mut c = node.client().await?;
    let status = c.model_infer(Request::new("x", "hi").req).await.err().context("ModelInfer answered")?;
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert_eq!(status.message(), "ModelInfer RPC doesn't support models with decoupled transaction policy");
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_reported_in_the_stream_naming_model_and_tensor() -> anyhow::Result<()> {
    let repo = repo()?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let wrong_type =
        Request::new("a", "hi").input("max_tokens", "FP32", vec![1], 8f32.to_le_bytes().to_vec());
    let negative =
        Request::new("b", "hi").input("temperature", "FP32", vec![1], (-1f32).to_le_bytes().to_vec());
    let bad_param = Request::new("c", "hi").parameter("top_p", ParameterChoice::StringParam("high".into()));
    let no_prompt = {
        let mut r = Request::new("d", "hi");
        r.req.inputs.clear();
        r.req.raw_input_contents.clear();
        r.max_tokens(2)
    };
    let good = Request::new("e", "hi").max_tokens(2);
    let requests = vec![wrong_type.req, negative.req, bad_param.req, no_prompt.req, good.req];
    let (mut responses, close) = open_stream(&node, requests).await?;
    let mut errors = HashMap::new();
    let mut good_done = false;
    while !(good_done && errors.len() == 4) {
        let r = next(&mut responses).await?.context("stream ended early")?;
        if r.id == "e" {
            assert!(r.error.is_empty(), "{r:?}");
            good_done |= r.last;
        } else {
            assert!(r.last, "an error is its request's final response: {r:?}");
            errors.insert(r.id.clone(), r.error);
        }
    }
    drop(close);
    assert!(errors["a"].contains("'max_tokens'") && errors["a"].contains("tiny_llm"), "{errors:?}");
    assert!(errors["a"].contains("data-type is 'FP32'"), "{errors:?}");
    assert!(
        errors["b"].contains("model 'tiny_llm': input 'temperature': -1 must be between 0 and"),
        "{errors:?}"
    );
    assert!(
        errors["c"].contains("model 'tiny_llm': input 'top_p': the request parameter must be a number"),
        "{errors:?}"
    );
    assert!(errors["d"].contains("missing required input(s) ['text_input']"), "{errors:?}");
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_request_is_not_held_up_by_a_long_one_on_the_same_stream() -> anyhow::Result<()> {
    let repo = repo()?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let long = Request::new("long", "Once upon a time").max_tokens(200).flag("ignore_eos", true);
    let short = Request::new("short", "Hello").max_tokens(2);
    let (mut responses, close) = open_stream(&node, vec![long.req, short.req]).await?;
    let mut finals = Vec::new();
    let mut tokens: HashMap<String, usize> = HashMap::new();
    while finals.len() < 2 {
        let r = next(&mut responses).await?.context("stream ended early")?;
        assert!(r.error.is_empty(), "{r:?}");
        if r.last {
            finals.push(r.id.clone());
        } else {
            *tokens.entry(r.id.clone()).or_default() += 1;
        }
    }
    drop(close);
    assert_eq!(finals, ["short", "long"], "the short generation ends first");
    assert_eq!((tokens["short"], tokens["long"]), (2, 200));
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_frees_the_slot_for_the_next_request() -> anyhow::Result<()> {
    // One sequence at a time: the next request runs once the first one's slot is free.
    let repo = repo()?.with_file(
        "tiny_llm/config.pbtxt",
        b"parameters { key: \"max_batch\" value { string_value: \"1\" } }\n",
    )?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let long = Request::new("long", "Once upon a time").max_tokens(400).flag("ignore_eos", true);
    let (mut responses, close) = open_stream(&node, vec![long.req]).await?;
    let first = next(&mut responses).await?.context("no first token")?;
    assert!(!first.last && first.error.is_empty(), "{first:?}");
    // The client goes away: its stream (and the generation) is dropped.
    drop(responses);
    drop(close);

    // The node dropped the generation (counted as a failed, cancelled request) ...
    let mut c = node.client().await?;
    let deadline = tokio::time::Instant::now() + STEP_LIMIT;
    loop {
        let stats = c
            .model_statistics(pb::ModelStatisticsRequest { name: MODEL.into(), version: String::new() })
            .await?
            .into_inner();
        let fail =
            stats.model_stats[0].inference_stats.as_ref().and_then(|s| s.fail.as_ref()).map(|d| d.count);
        if fail == Some(1) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the dropped stream's generation was never ended: {stats:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... and the next request gets the slot.
    let got = generate(&node, Request::new("next", "Hello").max_tokens(2)).await?;
    let last = got.last().context("no response")?;
    assert!(last.error.is_empty(), "{last:?}");
    assert_eq!(last.finish.as_deref(), Some("length"));
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_streaming_drops_no_stream() -> anyhow::Result<()> {
    let repo = repo()?;
    let node =
        TestNode::start(repo.path(), &["--model-control-mode", "explicit", "--load-model", MODEL]).await?;
    let mut c = node.client().await?;
    let long = Request::new("long", "Once upon a time").max_tokens(48).flag("ignore_eos", true);
    let (mut responses, close) = open_stream(&node, vec![long.req]).await?;
    let first = next(&mut responses).await?.context("no first token")?;
    assert!(first.error.is_empty(), "{first:?}");

    // A reload while the stream runs: the new version loads beside the old one.
    let reload = tokio::spawn({
        let mut c = c.clone();
        async move {
            c.repository_model_load(pb::RepositoryModelLoadRequest {
                model_name: MODEL.into(),
                ..Default::default()
            })
            .await
        }
    });
    let mut rest = vec![first];
    while let Some(r) = next(&mut responses).await? {
        let last = r.last;
        rest.push(r);
        if last {
            break;
        }
    }
    drop(close);
    let last = rest.last().context("no responses")?;
    assert!(last.error.is_empty() && last.last, "{last:?}");
    assert_eq!(last.finish.as_deref(), Some("length"));
    assert_eq!(rest.iter().map(|r| r.ids.len()).sum::<usize>(), 48, "every token arrived");
    tokio::time::timeout(STEP_LIMIT, reload).await???;

    let after = generate(&node, Request::new("after", "Hello").max_tokens(2)).await?;
    assert_eq!(after.last().and_then(|r| r.finish.clone()).as_deref(), Some("length"));
    let ready = c.model_ready(pb::ModelReadyRequest { name: MODEL.into(), version: String::new() }).await?;
    assert!(ready.into_inner().ready);
    node.stop().await
}
