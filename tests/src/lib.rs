//! Test harness: runs a real tern-node (the same `run` the binary calls) on 127.0.0.1:0 inside
//! the test process, with a real ONNX Runtime, and hands out gRPC clients to it.
//!
//! Models come from the example repository that `make examples` builds
//! (`examples/model_repository`, or `TERN_EXAMPLES_REPO`); tests copy the models they need into
//! a temporary repository so each test controls exactly what the node sees.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tern_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use tern_proto::inference::{self as pb, model_infer_request::InferInputTensor};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The example repository; fails (never skips) with the command to run when it is missing.
pub fn examples_repo() -> anyhow::Result<PathBuf> {
    let repo = std::env::var_os("TERN_EXAMPLES_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("examples/model_repository"));
    if !repo.join("tiny_add").is_dir() {
        bail!("example model repository not found at {} — run `make examples`", repo.display());
    }
    Ok(repo)
}

/// Loads ONNX Runtime once for the test process (ORT_DYLIB_PATH or the project-local copy).
pub fn init_onnxruntime() -> anyhow::Result<()> {
    static INIT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INIT.get_or_init(|| {
        let path = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join(".tern/onnxruntime/libonnxruntime.so.1.31.1"));
        tern_backend_ort::init_runtime(Some(&path)).map(|_| ()).map_err(|e| e.to_string())
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// A temporary model repository holding copies of chosen example models.
pub struct TempRepo {
    pub dir: tempfile::TempDir,
}

impl TempRepo {
    pub fn new() -> anyhow::Result<TempRepo> {
        Ok(TempRepo { dir: tempfile::tempdir()? })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies `model` from the example repository.
    pub fn with_example(self, model: &str) -> anyhow::Result<TempRepo> {
        let src = examples_repo()?.join(model);
        copy_dir(&src, &self.path().join(model)).with_context(|| format!("copying {}", src.display()))?;
        Ok(self)
    }

    /// Writes a file (creating directories) relative to the repository root.
    pub fn with_file(self, rel: &str, contents: &[u8]) -> anyhow::Result<TempRepo> {
        let path = self.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, contents)?;
        Ok(self)
    }
}

fn copy_dir(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), to)?;
        }
    }
    Ok(())
}

/// A running node.
pub struct TestNode {
    pub addr: SocketAddr,
    stop_tx: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestNode {
    /// Starts a node on `repo` with extra flags, and waits (bounded) until it answers.
    pub async fn start(repo: &Path, extra_flags: &[&str]) -> anyhow::Result<TestNode> {
        init_onnxruntime()?;
        let mut args: Vec<String> = vec!["tern-node".into(), "--model-repository".into()];
        args.push(repo.display().to_string());
        args.extend(
            [
                "--grpc-address",
                "127.0.0.1",
                "--grpc-port",
                "0",
                "--metrics-address",
                "127.0.0.1",
                "--metrics-port",
                "0",
                "--http-address",
                "127.0.0.1",
                "--exit-timeout-secs",
                "10",
            ]
            .map(String::from),
        );
        // HTTP on a free port unless the test names one (clap takes each flag once).
        if !extra_flags.contains(&"--http-port") {
            args.extend(["--http-port", "0"].map(String::from));
        }
        args.extend(extra_flags.iter().map(|s| s.to_string()));
        let config = tern_node::Config::try_parse_from(args)?;
        config.validate().map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind(config.grpc_addr()).await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(tern_node::run(config, listener, async {
            let _ = stop_rx.await;
        }));
        let mut node = TestNode { addr, stop_tx: Some(stop_tx), task };
        node.wait_live(Duration::from_secs(120)).await?;
        Ok(node)
    }

    async fn wait_live(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(mut c) = self.client().await
                && c.server_live(tern_proto::inference::ServerLiveRequest {}).await.is_ok()
            {
                return Ok(());
            }
            if self.task.is_finished() {
                let result = (&mut self.task).await;
                bail!("tern-node exited before answering: {result:?}");
            }
            if Instant::now() > deadline {
                bail!("tern-node did not answer within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", self.addr))?.connect().await?)
    }

    pub async fn client(&self) -> anyhow::Result<GrpcInferenceServiceClient<Channel>> {
        Ok(GrpcInferenceServiceClient::new(self.channel().await?).max_decoding_message_size(64 << 20))
    }

    /// Sends the shutdown signal and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task).await.context("node did not stop")??
    }
}

/// `values` as FP32 tensor bytes (little-endian).
pub fn floats(values: &[f32]) -> Bytes {
    Bytes::from(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
}

/// A ModelInfer request for a model shaped as the `tiny_add` example (inputs `INPUT0` and
/// `INPUT1`, FP32 [1, 16]), the rows filled with `input0` and `input1`.
pub fn tiny_add_request(model: &str, input0: f32, input1: f32) -> pb::ModelInferRequest {
    let input = |name: &str| InferInputTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape: vec![1, 16],
        ..Default::default()
    };
    pb::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![input("INPUT0"), input("INPUT1")],
        raw_input_contents: vec![floats(&[input0; 16]), floats(&[input1; 16])],
        ..Default::default()
    }
}

/// A free loopback port (for a flag that takes a port and not a listener).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A tern-router in this process in front of one [`TestNode`], on free loopback ports (HTTP
/// too, unless the test names `--http-port`).
pub struct TestRouter {
    pub addr: SocketAddr,
    stop_tx: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestRouter {
    /// Starts a router in front of `node` with extra flags, and waits (bounded) until it
    /// reports each of `models` ready.
    pub async fn start(node: &TestNode, extra_flags: &[&str], models: &[&str]) -> anyhow::Result<TestRouter> {
        let node_addr = node.addr.to_string();
        let mut args: Vec<String> = [
            "tern-router",
            "--grpc-address",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--http-address",
            "127.0.0.1",
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            "0",
            "--health-interval-ms",
            "100",
            "--exit-timeout-secs",
            "5",
            "--node",
            &node_addr,
        ]
        .map(String::from)
        .into();
        if !extra_flags.contains(&"--http-port") {
            args.extend(["--http-port", "0"].map(String::from));
        }
        args.extend(extra_flags.iter().map(|s| s.to_string()));
        let config = tern_router::Config::try_parse_from(args)?;
        config.validate().map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(tern_router::run(config, listener, async {
            let _ = stop_rx.await;
        }));
        let router = TestRouter { addr, stop_tx: Some(stop_tx), task };
        let mut client = router.client().await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        for model in models {
            loop {
                let ready = client
                    .model_ready(pb::ModelReadyRequest { name: model.to_string(), version: String::new() })
                    .await
                    .is_ok_and(|r| r.into_inner().ready);
                if ready {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the router never saw {model} ready");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(router)
    }

    pub async fn client(&self) -> anyhow::Result<GrpcInferenceServiceClient<Channel>> {
        Ok(GrpcInferenceServiceClient::new(
            Channel::from_shared(format!("http://{}", self.addr))?.connect().await?,
        ))
    }

    /// Sends the shutdown signal and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .context("router did not stop")??
    }
}

/// An OTLP trace collector on a free loopback port (a real tonic `TraceService`): every export
/// it receives comes out of [`Collector::exports`], in order. Aborted when dropped.
pub struct Collector {
    /// The address to give as the OTLP endpoint (`http://{addr}`).
    pub addr: SocketAddr,
    pub exports: tokio::sync::mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

struct Exports(tokio::sync::mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Exports {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    pub async fn start() -> anyhow::Result<Collector> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, exports) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Exports(tx)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        Ok(Collector { addr, exports, task })
    }

    /// Tracing settings that export to this collector as `service`.
    pub fn tracing_config(&self, service: &str) -> tern_telemetry::TracingConfig {
        tern_telemetry::TracingConfig {
            trace_otlp_endpoint: Some(format!("http://{}", self.addr)),
            service_name: service.into(),
            ..Default::default()
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Lowercase hex of trace and span ids, as W3C traceparent writes them.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
