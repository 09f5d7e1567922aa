//! Model lifecycle on a real node: version policies, explicit load/unload (with config
//! overrides and uploaded files), poll mode, hot reload under load with zero failed requests,
//! a failed reload that leaves the old version serving, and concurrent load/unload.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_proto::inference::{
    self as pb, grpc_inference_service_client::GrpcInferenceServiceClient,
    model_infer_request::InferInputTensor, model_repository_parameter::ParameterChoice,
};
use tern_tests::{TempRepo, TestNode, examples_repo};
use tonic::{Code, transport::Channel};

type Client = GrpcInferenceServiceClient<Channel>;

const SCALE_IO: &str = r#"
name: "versioned_scale"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"#;

fn scale_repo(policy: &str) -> anyhow::Result<TempRepo> {
    TempRepo::new()?
        .with_example("versioned_scale")?
        .with_file("versioned_scale/config.pbtxt", format!("{SCALE_IO}{policy}\n").as_bytes())
}

/// Runs versioned_scale on [1, 2, 3, 4]; returns the version that answered and the outputs.
async fn scale(c: &mut Client, version: &str) -> Result<(String, Vec<f32>), tonic::Status> {
    scale_model(c, "versioned_scale", version).await
}

async fn scale_model(
    c: &mut Client,
    model: &str,
    version: &str,
) -> Result<(String, Vec<f32>), tonic::Status> {
    let x = Bytes::from([1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    let req = pb::ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            ..Default::default()
        }],
        raw_input_contents: vec![x],
        ..Default::default()
    };
    let resp = c.model_infer(req).await?.into_inner();
    let raw = &resp.raw_output_contents[0];
    Ok((
        resp.model_version,
        raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
    ))
}

fn times(v: f32) -> Vec<f32> {
    vec![v, 2.0 * v, 3.0 * v, 4.0 * v]
}

async fn index(c: &mut Client) -> anyhow::Result<HashMap<(String, String), (String, String)>> {
    let rows = c.repository_index(pb::RepositoryIndexRequest::default()).await?.into_inner().models;
    Ok(rows.into_iter().map(|m| ((m.name, m.version), (m.state, m.reason))).collect())
}

fn load_request(name: &str, params: Vec<(&str, ParameterChoice)>) -> pb::RepositoryModelLoadRequest {
    pb::RepositoryModelLoadRequest {
        model_name: name.into(),
        parameters: params
            .into_iter()
            .map(|(k, v)| (k.to_string(), pb::ModelRepositoryParameter { parameter_choice: Some(v) }))
            .collect(),
        ..Default::default()
    }
}

/// Polls `check` until it holds (bounded).
async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("timed out waiting for: {what}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_policies_select_and_route_versions() -> anyhow::Result<()> {
    // latest 2: versions 2 and 3; "" goes to the highest.
    let repo = scale_repo("version_policy: { latest { num_versions: 2 } }")?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let mut c = node.client().await?;
    assert_eq!(scale(&mut c, "").await?, ("3".into(), times(3.0)));
    assert_eq!(scale(&mut c, "2").await?, ("2".into(), times(2.0)));
    let e = scale(&mut c, "1").await.expect_err("version 1 not selected");
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    let md = c
        .model_metadata(pb::ModelMetadataRequest { name: "versioned_scale".into(), version: String::new() })
        .await?
        .into_inner();
    assert_eq!(md.versions, vec!["2".to_string(), "3".to_string()]);
    let ready = |v: &str| pb::ModelReadyRequest { name: "versioned_scale".into(), version: v.into() };
    assert!(c.model_ready(ready("2")).await?.into_inner().ready);
    assert!(!c.model_ready(ready("1")).await?.into_inner().ready);
    node.stop().await?;

    // specific [1, 3].
    let repo = scale_repo("version_policy: { specific { versions: [ 1, 3 ] } }")?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let mut c = node.client().await?;
    assert_eq!(scale(&mut c, "1").await?, ("1".into(), times(1.0)));
    assert_eq!(scale(&mut c, "").await?, ("3".into(), times(3.0)));
    assert_eq!(scale(&mut c, "2").await.expect_err("not selected").code(), Code::NotFound);
    let e = scale(&mut c, "x").await.expect_err("not a number");
    assert_eq!(e.code(), Code::InvalidArgument);
    node.stop().await?;

    // Default: latest 1.
    let repo = scale_repo("")?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let mut c = node.client().await?;
    let rows = index(&mut c).await?;
    assert_eq!(rows.keys().filter(|(n, _)| n == "versioned_scale").count(), 1);
    assert_eq!(rows[&("versioned_scale".into(), "3".into())].0, "READY");
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_mode_loads_unloads_overrides_and_uploads() -> anyhow::Result<()> {
    let repo = scale_repo("version_policy: { all { } }")?.with_example("tiny_add")?;
    let node =
        TestNode::start(repo.path(), &["--model-control-mode", "explicit", "--load-model", "tiny_add"])
            .await?;
    let mut c = node.client().await?;
    assert_eq!(scale(&mut c, "").await.expect_err("not loaded yet").code(), Code::NotFound);

    c.repository_model_load(load_request("versioned_scale", vec![])).await?;
    assert_eq!(scale(&mut c, "").await?, ("3".into(), times(3.0)));
    assert_eq!(scale(&mut c, "1").await?, ("1".into(), times(1.0)));

    c.repository_model_unload(pb::RepositoryModelUnloadRequest {
        model_name: "versioned_scale".into(),
        ..Default::default()
    })
    .await?;
    let e = scale(&mut c, "").await.expect_err("unloaded");
    assert_eq!(e.message(), "Request for unknown model: 'versioned_scale' has no available versions");
    assert_eq!(
        index(&mut c).await?[&("versioned_scale".into(), "3".into())],
        ("UNAVAILABLE".into(), "unloaded".into())
    );

    // A config override (JSON, as tritonclient's load_model(config=...) sends it).
    let json = r#"{"name":"versioned_scale","backend":"onnxruntime","max_batch_size":8,
        "version_policy":{"specific":{"versions":["2"]}},
        "input":[{"name":"INPUT0","data_type":"TYPE_FP32","dims":["4"]}],
        "output":[{"name":"OUTPUT0","data_type":"TYPE_FP32","dims":["4"]}]}"#;
    c.repository_model_load(load_request(
        "versioned_scale",
        vec![("config", ParameterChoice::StringParam(json.into()))],
    ))
    .await?;
    assert_eq!(scale(&mut c, "").await?, ("2".into(), times(2.0)));

    // Model bytes uploaded as `file:<version>/model.onnx` under a new name.
    let v3 = std::fs::read(examples_repo()?.join("versioned_scale/3/model.onnx"))?;
    let json = json.replace("\"versioned_scale\"", "\"uploaded\"").replace("[\"2\"]", "[\"5\"]");
    c.repository_model_load(load_request(
        "uploaded",
        vec![
            ("config", ParameterChoice::StringParam(json)),
            ("file:5/model.onnx", ParameterChoice::BytesParam(v3)),
        ],
    ))
    .await?;
    assert_eq!(scale_model(&mut c, "uploaded", "").await?, ("5".into(), times(3.0)));

    // Errors: unknown model (Triton's status), unsafe names, bad override, bad file path.
    let e = c.repository_model_load(load_request("no_such_model", vec![])).await.expect_err("missing");
    assert_eq!(
        (e.code(), e.message()),
        (Code::Internal, "failed to load 'no_such_model', failed to poll from model repository")
    );
    for bad in ["../etc", "a/b", "", ".hidden"] {
        let e = c.repository_model_load(load_request(bad, vec![])).await.expect_err("unsafe name");
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {}", e.message());
    }
    let e = c
        .repository_model_load(load_request(
            "versioned_scale",
            vec![("config", ParameterChoice::StringParam("{\"max_batch_size\": \"x\"".into()))],
        ))
        .await
        .expect_err("malformed JSON");
    assert_eq!(e.code(), Code::Internal);
    assert!(
        e.message()
            .starts_with("failed to load 'versioned_scale', failed to poll from model repository: 'config'")
    );
    let e = c
        .repository_model_load(load_request(
            "up2",
            vec![
                ("config", ParameterChoice::StringParam("{}".into())),
                ("file:../../x", ParameterChoice::BytesParam(vec![1])),
            ],
        ))
        .await
        .expect_err("path traversal");
    assert_eq!(e.code(), Code::Internal, "{}", e.message());
    assert!(e.message().contains("failed to poll from model repository") && e.message().contains("file:"));
    assert_eq!(scale(&mut c, "").await?, ("2".into(), times(2.0)), "still serving");
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_api_is_refused_outside_explicit_mode() -> anyhow::Result<()> {
    let repo = scale_repo("")?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let mut c = node.client().await?;
    let e = c.repository_model_load(load_request("versioned_scale", vec![])).await.expect_err("mode none");
    assert_eq!(e.code(), Code::Unavailable);
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_follows_added_changed_and_removed_models() -> anyhow::Result<()> {
    let repo = scale_repo("")?;
    let node = TestNode::start(repo.path(), &["--model-control-mode", "poll", "--repository-poll-secs", "1"])
        .await?;
    let mut c = node.client().await?;
    assert_eq!(scale(&mut c, "").await?, ("3".into(), times(3.0)));

    // A new version directory (version 4 holds the x2 model).
    let dir = repo.path().join("versioned_scale");
    std::fs::create_dir_all(dir.join("4"))?;
    std::fs::copy(dir.join("2/model.onnx"), dir.join("4/model.onnx"))?;
    eventually("version 4 served", || {
        let mut c = c.clone();
        async move { scale(&mut c, "").await.ok() == Some(("4".into(), times(2.0))) }
    })
    .await?;

    // A changed config: every version.
    std::fs::write(dir.join("config.pbtxt"), format!("{SCALE_IO}version_policy: {{ all {{ }} }}\n"))?;
    eventually("version 1 served", || {
        let mut c = c.clone();
        async move { scale(&mut c, "1").await.is_ok() }
    })
    .await?;

    // A new model, then the first one removed.
    let tiny = examples_repo()?.join("tiny_add");
    std::fs::create_dir_all(repo.path().join("tiny_add/1"))?;
    std::fs::copy(tiny.join("config.pbtxt"), repo.path().join("tiny_add/config.pbtxt"))?;
    std::fs::copy(tiny.join("1/model.onnx"), repo.path().join("tiny_add/1/model.onnx"))?;
    eventually("tiny_add ready", || {
        let mut c = c.clone();
        async move {
            let r = c
                .model_ready(pb::ModelReadyRequest { name: "tiny_add".into(), version: String::new() })
                .await;
            r.is_ok_and(|r| r.into_inner().ready)
        }
    })
    .await?;
    std::fs::remove_dir_all(&dir)?;
    eventually("versioned_scale gone", || {
        let mut c = c.clone();
        async move { scale(&mut c, "").await.is_err_and(|e| e.code() == Code::NotFound) }
    })
    .await?;
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request() -> anyhow::Result<()> {
    let repo = scale_repo("version_policy: { specific { versions: [ 1 ] } }")?;
    let node =
        TestNode::start(repo.path(), &["--model-control-mode", "explicit", "--load-model", "*"]).await?;
    let mut c = node.client().await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut c = node.client().await?;
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            // Bounded: stops when the reloads are done, or after 20 000 requests.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && ok < 20_000 {
                match scale(&mut c, "").await {
                    Ok((v, y)) if v.parse::<f32>().is_ok_and(|f| y == times(f)) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        }));
    }
    let policy = |v: u32| {
        format!(
            r#"{{"name":"versioned_scale","backend":"onnxruntime","max_batch_size":8,
            "version_policy":{{"specific":{{"versions":["{v}"]}}}},
            "input":[{{"name":"INPUT0","data_type":"TYPE_FP32","dims":["4"]}}],
            "output":[{{"name":"OUTPUT0","data_type":"TYPE_FP32","dims":["4"]}}]}}"#
        )
    };
    for i in 0..20 {
        let v = 1 + (i % 3);
        c.repository_model_load(load_request(
            "versioned_scale",
            vec![("config", ParameterChoice::StringParam(policy(v)))],
        ))
        .await?;
        assert_eq!(scale(&mut c, "").await?.0, v.to_string(), "reload {i} switched to version {v}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        let (ok, failed) = client.await?;
        assert!(failed.is_empty(), "failed requests during reloads: {failed:?}");
        total += ok;
    }
    assert!(total > 0);
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_keeps_the_old_version_serving() -> anyhow::Result<()> {
    let repo = scale_repo("")?;
    let node =
        TestNode::start(repo.path(), &["--model-control-mode", "explicit", "--load-model", "*"]).await?;
    let mut c = node.client().await?;
    assert_eq!(scale(&mut c, "").await?, ("3".into(), times(3.0)));
    std::fs::write(repo.path().join("versioned_scale/3/model.onnx"), b"corrupt")?;
    let e = c.repository_model_load(load_request("versioned_scale", vec![])).await.expect_err("corrupt");
    assert_eq!(e.code(), Code::Internal);
    assert_eq!(scale(&mut c, "").await?, ("3".into(), times(3.0)), "old version still serves");
    let (state, reason) = index(&mut c).await?[&("versioned_scale".into(), "3".into())].clone();
    assert_eq!(state, "READY");
    assert!(reason.contains("reload failed"), "{reason}");
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_and_unloads_of_one_model_settle() -> anyhow::Result<()> {
    let repo = scale_repo("")?.with_example("tiny_add")?;
    let node =
        TestNode::start(repo.path(), &["--model-control-mode", "explicit", "--load-model", "*"]).await?;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut c = node.client().await?;
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                c.repository_model_load(load_request("versioned_scale", vec![])).await.map(|_| ())
            } else {
                c.repository_model_unload(pb::RepositoryModelUnloadRequest {
                    model_name: "versioned_scale".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ())
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut c = node.client().await?;
    // Serialized: the model ends loaded or unloaded, never half of each; a final load works.
    c.repository_model_load(load_request("versioned_scale", vec![])).await?;
    assert_eq!(scale(&mut c, "").await?, ("3".into(), times(3.0)));
    let ready =
        c.model_ready(pb::ModelReadyRequest { name: "tiny_add".into(), version: String::new() }).await?;
    assert!(ready.into_inner().ready);
    node.stop().await
}
