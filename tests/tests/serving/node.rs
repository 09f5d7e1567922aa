//! A real tern-node on loopback, called over gRPC: health, metadata, inference, errors, failed
//! models, reflection, and graceful shutdown with a request in flight.

use bytes::Bytes;
use tern_proto::inference::{self as pb, model_infer_request::InferInputTensor};
use tern_tests::{TempRepo, TestNode};
use tonic::Code;

fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Bytes {
    Bytes::from(values.into_iter().flat_map(f32::to_le_bytes).collect::<Vec<u8>>())
}

fn tiny_add_request(rows: usize) -> pb::ModelInferRequest {
    let a: Vec<f32> = (0..rows * 16).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..rows * 16).map(|i| 0.5 * i as f32).collect();
    let input = |name: &str| InferInputTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape: vec![rows as i64, 16],
        ..Default::default()
    };
    pb::ModelInferRequest {
        model_name: "tiny_add".into(),
        id: "req-1".into(),
        inputs: vec![input("INPUT0"), input("INPUT1")],
        raw_input_contents: vec![f32_bytes(a), f32_bytes(b)],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_health_metadata_and_inference() -> anyhow::Result<()> {
    let repo = TempRepo::new()?.with_example("tiny_add")?;
    let node = TestNode::start(repo.path(), &["--server-name", "triton"]).await?;
    let mut c = node.client().await?;

    assert!(c.server_live(pb::ServerLiveRequest {}).await?.into_inner().live);
    assert!(c.server_ready(pb::ServerReadyRequest {}).await?.into_inner().ready);
    let meta = c.server_metadata(pb::ServerMetadataRequest {}).await?.into_inner();
    assert_eq!(meta.name, "triton");
    assert!(!meta.version.is_empty());
    let ready =
        c.model_ready(pb::ModelReadyRequest { name: "tiny_add".into(), version: String::new() }).await?;
    assert!(ready.into_inner().ready);

    let md = c
        .model_metadata(pb::ModelMetadataRequest { name: "tiny_add".into(), version: String::new() })
        .await?
        .into_inner();
    assert_eq!(md.platform, "onnxruntime_onnx");
    assert_eq!(md.versions, vec!["1".to_string()]);
    assert_eq!(md.inputs.len(), 2);
    assert_eq!(md.inputs[0].shape, vec![-1, 16]);
    assert_eq!(md.inputs[0].datatype, "FP32");

    let resp = c.model_infer(tiny_add_request(3)).await?.into_inner();
    assert_eq!(resp.id, "req-1");
    assert_eq!(resp.model_name, "tiny_add");
    assert_eq!(resp.model_version, "1");
    let out = resp.outputs.iter().position(|o| o.name == "OUTPUT0").expect("OUTPUT0 returned");
    assert_eq!(resp.outputs[out].shape, vec![3, 16]);
    let raw = &resp.raw_output_contents[out];
    let got: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let want: Vec<f32> = (0..48).map(|i| 1.5 * i as f32).collect();
    assert_eq!(got, want);

    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_and_the_node_keeps_serving() -> anyhow::Result<()> {
    let repo = TempRepo::new()?.with_example("tiny_add")?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let mut c = node.client().await?;

    let mut req = tiny_add_request(1);
    req.model_name = "no_such_model".into();
    let e = c.model_infer(req).await.expect_err("unknown model");
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "Request for unknown model: 'no_such_model' is not found");

    let mut req = tiny_add_request(1);
    req.model_version = "7".into();
    assert_eq!(c.model_infer(req).await.expect_err("unknown version").code(), Code::NotFound);

    let mut req = tiny_add_request(1);
    req.inputs[0].shape = vec![2, 8];
    let e = c.model_infer(req).await.expect_err("bad shape");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("Expected [-1,16], got [2,8]"), "{}", e.message());

    let mut req = tiny_add_request(1);
    req.raw_input_contents[0] = req.raw_input_contents[0].slice(..10);
    assert_eq!(c.model_infer(req).await.expect_err("short payload").code(), Code::InvalidArgument);

    let e = c
        .system_shared_memory_register(pb::SystemSharedMemoryRegisterRequest::default())
        .await
        .expect_err("client shared memory is off");
    assert_eq!((e.code(), e.message()), (Code::Unimplemented, tern_edge::triton::CLIENT_SHM_DISABLED));

    let resp = c.model_infer(tiny_add_request(2)).await?.into_inner();
    assert_eq!(resp.outputs[0].shape, vec![2, 16]);

    // The two invalid requests count as failures; the good one as 2 inferences in 1 execution.
    let stats = c
        .model_statistics(pb::ModelStatisticsRequest { name: "tiny_add".into(), version: String::new() })
        .await?
        .into_inner();
    let s = &stats.model_stats[0];
    let inference = s.inference_stats.unwrap_or_default();
    assert_eq!(inference.fail.map(|d| d.count), Some(2));
    assert_eq!(inference.success.map(|d| d.count), Some(1));
    assert_eq!((s.inference_count, s.execution_count), (2, 1));
    assert_eq!(s.batch_stats.iter().map(|b| b.batch_size).collect::<Vec<_>>(), vec![2]);
    let e = c
        .model_statistics(pb::ModelStatisticsRequest { name: "no_such_model".into(), version: String::new() })
        .await
        .expect_err("unknown model");
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "requested model 'no_such_model' is not available")
    );
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_to_load_is_reported_and_does_not_stop_the_node() -> anyhow::Result<()> {
    let repo = TempRepo::new()?
        .with_example("tiny_add")?
        .with_file("corrupt/1/model.onnx", b"this is not an onnx file")?
        .with_file("badconfig/config.pbtxt", b"max_batch_size: [[[")?
        .with_file("badconfig/1/model.onnx", b"")?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let mut c = node.client().await?;

    assert!(!c.server_ready(pb::ServerReadyRequest {}).await?.into_inner().ready, "strict readiness");
    let ready =
        c.model_ready(pb::ModelReadyRequest { name: "corrupt".into(), version: String::new() }).await?;
    assert!(!ready.into_inner().ready);
    let index = c.repository_index(pb::RepositoryIndexRequest::default()).await?.into_inner();
    let state = |name: &str| index.models.iter().find(|m| m.name == name).cloned().expect("indexed");
    assert_eq!(state("tiny_add").state, "READY");
    for bad in ["corrupt", "badconfig"] {
        let s = state(bad);
        assert_eq!(s.state, "UNAVAILABLE", "{bad}");
        assert!(s.reason.contains(bad), "reason names the model: {}", s.reason);
    }
    let ready_only =
        c.repository_index(pb::RepositoryIndexRequest { ready: true, ..Default::default() }).await?;
    assert_eq!(ready_only.into_inner().models.len(), 1);

    let e = c.model_infer(pb::ModelInferRequest { model_name: "corrupt".into(), ..Default::default() }).await;
    assert_eq!(e.expect_err("not loaded").code(), Code::NotFound);
    assert!(c.model_infer(tiny_add_request(1)).await.is_ok());
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_services_answer() -> anyhow::Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let repo = TempRepo::new()?.with_example("tiny_add")?;
    let node = TestNode::start(repo.path(), &[]).await?;

    let mut health = HealthClient::new(node.channel().await?);
    let status = health
        .check(HealthCheckRequest { service: "inference.GRPCInferenceService".into() })
        .await?
        .into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(node.channel().await?);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection.server_reflection_info(tokio_stream::iter(vec![req])).await?.into_inner();
    let resp = stream.message().await?.expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        anyhow::bail!("unexpected reflection response {:?}", resp.message_response);
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"inference.GRPCInferenceService".to_string()), "{names:?}");

    // The older v1alpha service too, as Triton serves both (grpcurl before 1.9 asks only it).
    use tonic_reflection::pb::v1alpha as alpha;
    let mut reflection = alpha::server_reflection_client::ServerReflectionClient::new(node.channel().await?);
    let req = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "inference.GRPCInferenceService".into(),
        )),
    };
    let mut stream = reflection.server_reflection_info(tokio_stream::iter(vec![req])).await?.into_inner();
    let resp = stream.message().await?.expect("one response");
    let Some(alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        resp.message_response
    else {
        anyhow::bail!("unexpected v1alpha reflection response {:?}", resp.message_response);
    };
    assert!(!files.file_descriptor_proto.is_empty(), "no descriptor for inference.GRPCInferenceService");
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_reports_errors_in_band_and_keeps_going() -> anyhow::Result<()> {
    let repo = TempRepo::new()?.with_example("tiny_add")?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let mut c = node.client().await?;
    let mut bad = tiny_add_request(1);
    bad.id = "bad".into();
    bad.inputs[0].name = "NOPE".into();
    let mut good = tiny_add_request(1);
    good.id = "good".into();
    let requests = vec![tiny_add_request(1), bad, good];
    let mut responses = c.model_stream_infer(tokio_stream::iter(requests)).await?.into_inner();
    let mut got = Vec::new();
    while let Some(r) = responses.message().await? {
        got.push(r);
    }
    assert_eq!(got.len(), 3);
    assert!(got[0].error_message.is_empty());
    assert_eq!(got[1].error_message, "unexpected inference input 'NOPE' for model 'tiny_add'");
    assert_eq!(got[1].infer_response.as_ref().map(|r| r.id.as_str()), Some("bad"));
    assert!(got[2].error_message.is_empty());
    assert_eq!(got[2].infer_response.as_ref().map(|r| r.id.as_str()), Some("good"));
    // As Triton (stream_infer_handler.cc): every stream response, a failed one too, carries
    // `triton_final_response`, true on the one response of a model that is not decoupled.
    for r in &got {
        let last = r.infer_response.as_ref().and_then(|r| r.parameters.get("triton_final_response"));
        assert_eq!(
            last.and_then(|p| p.parameter_choice.clone()),
            Some(pb::infer_parameter::ParameterChoice::BoolParam(true)),
            "{r:?}"
        );
    }
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() -> anyhow::Result<()> {
    use tern_client::{Client, ConnectOptions, InferRequest, InputTensor};
    let repo = TempRepo::new()?.with_example("light_resnet50")?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let client = Client::connect(&node.addr.to_string(), ConnectOptions::new()).await?;
    let n = 3 * 224 * 224;
    let md = client.model_metadata("light_resnet50", "").await?;
    let pixels: Vec<f32> = (0..4 * n).map(|i| (i % n) as f32 / n as f32).collect();
    let request = InferRequest::new("light_resnet50").input(InputTensor::new(
        &md.inputs[0].name,
        &[4, 3, 224, 224],
        &pixels,
    )?);
    // A batch of 4 takes a few hundred ms here: stop the node while it runs.
    let in_flight = tokio::spawn(async move { client.infer(request).await });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    node.stop().await?;
    let result = in_flight.await??;
    assert_eq!(result.outputs[0].shape(), &[4, 1000]);
    Ok(())
}
