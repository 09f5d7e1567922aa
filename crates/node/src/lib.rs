//! tern-node: loads a Triton-layout model repository and serves it over Triton's gRPC
//! protocol (KServe v2), with the standard gRPC health and reflection services beside it.
//!
//! Layout: [`config`] (flags, validated before binding), [`generate`] (generative models: the
//! engine factory, requests and responses), `tern_lifecycle` (the model table and
//! loading, through the ONNX Runtime factory), [`service`] (the gRPC service), [`stream`] (ModelStreamInfer and `StreamOne`), and [`run`] which
//! composes them. The node owns no protocol types (tern-proto), no codec (tern-core), no config
//! parsing (tern-repository), no model lifecycle (tern-lifecycle) and no ONNX Runtime code
//! (tern-backend-ort).

pub mod cluster;
pub mod config;
mod ensemble;
pub mod generate;
pub mod request_limits;
pub mod service;
pub mod stream;
pub mod triton_flags;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tern_core::ModelState;
use tern_lifecycle::{ControlMode, LoadOptions, ModelManager};
use tern_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;

pub use config::Config;
use service::{NodeService, NodeState};

/// Loads the models, then serves on `listener` until `shutdown` resolves; in-flight requests
/// then get up to `config.exit_timeout_secs` to finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(tern_telemetry::Metrics::new(&config.metrics)?);
    run_with(config, listener, shutdown, metrics, Announce::Public).await
}

/// tern-node's process: [`tern_edge::main!`] with ONNX Runtime loaded before the runtime starts.
impl tern_edge::Server for Config {
    const NAME: &'static str = "tern-node";
    const RUNTIME: tern_edge::Runtime = tern_edge::Runtime::Batching;

    fn tracing(&mut self) -> &mut tern_telemetry::TracingConfig {
        &mut self.tracing
    }

    fn validate(&self) -> Result<(), String> {
        Config::validate(self)
    }

    fn prepare(&self) -> Result<(), String> {
        load_onnxruntime(self)
    }

    fn grpc_addr(&self) -> std::net::SocketAddr {
        Config::grpc_addr(self)
    }

    async fn serve(
        self,
        listener: TcpListener,
        shutdown: tern_edge::process::Shutdown,
    ) -> anyhow::Result<()> {
        run(self, listener, shutdown).await
    }
}

/// Loads ONNX Runtime (`--onnxruntime-lib`, or ORT_DYLIB_PATH) and logs its version.
pub fn load_onnxruntime(config: &Config) -> Result<(), String> {
    let info =
        tern_backend_ort::init_runtime(config.onnxruntime_lib.as_deref()).map_err(|e| e.to_string())?;
    tracing::info!(onnxruntime = ?info, "ONNX Runtime loaded");
    Ok(())
}

/// How the node announces itself once serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// `tern-node ready grpc=ADDR http=ADDR|off metrics=ADDR`: the line scripts and tests wait for.
    Public,
    /// A node inside another server (`tern serve`): a quieter line without `grpc=`.
    Embedded,
}

/// [`run`] with a given metrics registry (shared with a router in the same process).
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    metrics: Arc<tern_telemetry::Metrics>,
    announce: Announce,
) -> anyhow::Result<()> {
    let front = tern_edge::FrontDoor {
        tls: config.tls.server().map_err(anyhow::Error::msg)?,
        auth: tern_edge::AuthLayer { auth: config.auth.authenticator().map_err(anyhow::Error::msg)? },
        limits: config.limits.transport.clone(),
    };
    let router_credential = match &config.router_token_file {
        Some(path) => {
            tern_edge::Credential::from_file(path).map_err(|e| anyhow::anyhow!("--router-token-file: {e}"))?
        }
        None => tern_edge::Credential::none(),
    };
    let router_tls = config.router_tls().map_err(anyhow::Error::msg)?;
    let (cache_bytes, cache_warnings) = config.response_cache().map_err(anyhow::Error::msg)?;
    let flag_warnings = config.triton.check().map_err(anyhow::Error::msg)?;
    for warning in cache_warnings.into_iter().chain(flag_warnings) {
        tracing::warn!("{warning}");
    }
    let response_cache = cache_bytes.map(|bytes| {
        tracing::info!(bytes, "response cache 'local' enabled");
        Arc::new(tern_scheduler::ResponseCache::new(bytes))
    });
    let model_cache = config.model_cache_dir.clone().map(tern_backend_ort::ModelCache::new);
    let models = Arc::new(ModelManager::new(
        metrics.clone(),
        config.model_repositories.clone(),
        LoadOptions {
            strict_model_config: config.strict_model_config(),
            // Embedding models get tokenization and pooling around their ORT sessions.
            backend: Arc::new(tern_embed::EmbeddingFactory::new(tern_backend_ort::OrtFactory {
                allow_cpu_fallback: config.allow_cpu_fallback,
                accelerator_cache_dir: config.accelerator_cache_dir.clone(),
                model_cache: model_cache.clone(),
            })),
            model_repositories: config.model_repositories.clone(),
            model_key: config.model_key.load().map_err(anyhow::Error::msg)?,
            generative: Some(Arc::new(generate::EngineFactory { model_cache })),
            response_cache,
            summary_quantiles: metrics.summary_quantiles(),
        },
        config.model_load_thread_count,
        Duration::from_secs(config.exit_timeout_secs),
    ));
    let only = match config.model_control_mode {
        ControlMode::Explicit if !config.load_models.iter().any(|m| m == "*") => {
            Some(config.load_models.as_slice())
        }
        _ => None,
    };
    models.load_startup(only).await.map_err(anyhow::Error::msg)?;
    if config.triton.exit_on_error {
        // Triton's --exit-on-error: a model that failed to load at start ends the server.
        let failed: Vec<String> = models
            .index()
            .into_iter()
            .filter(|row| row.state == Some(ModelState::Unavailable))
            .map(|row| format!("{} (version {}): {}", row.name, row.version, row.reason))
            .collect();
        if !failed.is_empty() {
            anyhow::bail!("failed to load all models (--exit-on-error): {}", failed.join("; "));
        }
    }
    // Poll mode: follow the repositories until shutdown (the task ends with the runtime).
    let poll_task = (config.model_control_mode == ControlMode::Poll).then(|| {
        let models = models.clone();
        let every = Duration::from_secs(config.repository_poll_secs);
        tokio::spawn(async move {
            let mut seen = std::collections::HashMap::new();
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                models.poll_once(&mut seen).await;
            }
        })
    });
    let state = Arc::new(NodeState {
        server_name: config.server_name.clone(),
        models,
        strict_readiness: config.strict_readiness,
        control_mode: config.model_control_mode,
        metrics: metrics.clone(),
        in_flight: Default::default(),
        limits: config.limits.limits(),
        pending: request_limits::PendingBytes::new(config.limits.max_pending_request_bytes),
        shm: config.client_shm.registry(),
    });
    metrics.set_model_sampler(Arc::new(NodeSampler(state.clone())));
    let ready_state = state.clone();
    metrics.set_readiness(Arc::new(move || ready_state.models.server_ready(ready_state.strict_readiness)));
    let metrics_endpoint = tern_edge::metrics_endpoint::MetricsEndpoint::start(
        &config.metrics,
        metrics.clone(),
        front.auth.clone(),
        &config.tls,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let metrics_addr = metrics_endpoint.addr.clone();

    // HTTP/REST (Triton's port 8000): the same service behind the same TLS, tokens and limits.
    let http = tern_rest::HttpEndpoint::start(&config.http, NodeService::new(state.clone()), (&front).into())
        .await
        .map_err(anyhow::Error::msg)?;
    let http_addr = http.addr.clone();

    let inference = GrpcInferenceServiceServer::new(NodeService::new(state.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate)
        .max_decoding_message_size(config.limits.transport.grpc_max_message_size)
        .max_encoding_message_size(config.limits.transport.grpc_max_message_size);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<GrpcInferenceServiceServer<NodeService>>().await;
    let reflection = tern_edge::grpc::reflection()?;
    let reflection_v1alpha = tern_edge::grpc::reflection_v1alpha()?;

    let addr = listener.local_addr()?;
    let identity = cluster::ClusterIdentity {
        node_id: config.node_id.clone(),
        advertise: config.advertise_address.clone(),
        bound: addr,
        memory_budget_bytes: config.model_memory_budget_mb.saturating_mul(1 << 20),
        sessions: Default::default(),
    };
    let node_control =
        tern_proto::cluster::node_control_server::NodeControlServer::new(cluster::NodeControlService {
            state: state.clone(),
            identity: identity.clone(),
        });
    let agents: Vec<_> = config
        .router_addresses
        .iter()
        .map(|router| {
            tokio::spawn(cluster::heartbeat_agent(
                router.clone(),
                state.clone(),
                identity.clone(),
                Duration::from_millis(config.heartbeat_interval_ms),
                router_credential.clone(),
                router_tls.clone(),
            ))
        })
        .collect();
    let ready_models = state.models.all_ready_models().len();
    match announce {
        Announce::Public => {
            tracing::info!(
                models = ready_models,
                "tern-node ready grpc={addr} http={http_addr} metrics={metrics_addr}"
            )
        }
        Announce::Embedded => {
            tracing::info!(models = ready_models, address = %addr, http = %http_addr, metrics = %metrics_addr, "embedded node serving")
        }
    }

    // On the shutdown signal, drain as Triton does (server.cc, InferenceServer::Stop): not
    // ready at once (ServerReady, /v2/health/ready, gRPC health, and routers' status, which
    // then shows every model UNLOADING), still serving while requests are in flight, so routers
    // and Kubernetes stop sending before the listener closes; then stop accepting. The exit
    // timeout bounds both together.
    let drain_state = state.clone();
    let before_close = move |deadline: tokio::time::Instant| async move {
        drain_state.models.begin_drain();
        health_reporter.set_not_serving::<GrpcInferenceServiceServer<NodeService>>().await;
        health_reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        let in_flight = || drain_state.in_flight.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(in_flight = in_flight(), "shutting down: not ready; finishing in-flight requests");
        while in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!("no request in flight: closing, no new connections");
    };
    let routes = front
        .server()
        .add_service(inference)
        .add_service(node_control)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha);
    let exit_timeout = Duration::from_secs(config.exit_timeout_secs);
    tern_edge::grpc::serve(routes, listener, front.tls, shutdown, exit_timeout, before_close).await?;
    if let Some(task) = poll_task {
        task.abort();
    }
    for agent in agents {
        agent.abort();
    }
    http.stop().await;
    metrics_endpoint.stop().await;
    state.models.clear();
    tracing::info!("tern-node stopped");
    Ok(())
}

fn summary_sample(s: tern_scheduler::SummarySnapshot) -> tern_telemetry::SummarySample {
    use tern_scheduler::SummaryKind as K;
    use tern_telemetry::SummaryFamily as F;
    let family = match s.kind {
        K::Request => F::Request,
        K::Queue => F::Queue,
        K::ComputeInput => F::ComputeInput,
        K::ComputeInfer => F::ComputeInfer,
        K::ComputeOutput => F::ComputeOutput,
        K::CacheHit => F::CacheHit,
        K::CacheMiss => F::CacheMiss,
    };
    tern_telemetry::SummarySample { family, count: s.count, sum_us: s.sum_us, quantiles: s.quantiles }
}

/// Feeds /metrics from the schedulers' statistics at scrape time.
struct NodeSampler(Arc<NodeState>);

impl tern_telemetry::ModelSampler for NodeSampler {
    fn samples(&self) -> Vec<tern_telemetry::ModelSample> {
        self.0
            .models
            .all_ready_models()
            .into_iter()
            .map(|m| {
                let s = m.scheduler.stats().snapshot();
                tern_telemetry::ModelSample {
                    model: m.name.clone(),
                    version: m.version_str.clone(),
                    success_count: s.success.count,
                    success_ns: s.success.ns,
                    failures: s.failures.to_vec(),
                    fail_ns: s.fail.ns,
                    queue_ns: s.queue.ns,
                    compute_input_ns: s.compute_input.ns,
                    compute_infer_ns: s.compute_infer.ns,
                    compute_output_ns: s.compute_output.ns,
                    inference_count: s.inference_count,
                    execution_count: s.execution_count,
                    pending: s.pending,
                    queue_delay_us: s.queue_delay.map(|d| d.as_secs_f64() * 1e6),
                    batch_executions: s
                        .batches
                        .iter()
                        .map(|b| (b.batch_size, b.compute_infer.count))
                        .collect(),
                    // Triton creates the cache families for models whose config enables the
                    // cache, with or without a server cache (core src/model.cc creates the
                    // model's reporter with the config's flag; src/metric_model_reporter.cc).
                    // Not for an ensemble: its reporter is made with the flag off
                    // (src/ensemble_scheduler/ensemble_scheduler.cc, "Ensemble scheduler doesn't
                    // currently support response cache at top level"); its statistics count.
                    cache: (m.ensemble.is_none()
                        && m.config.response_cache.as_ref().is_some_and(|c| c.enable))
                    .then_some(tern_telemetry::CacheSample {
                        hits: s.cache_hit.count,
                        hit_ns: s.cache_hit.ns,
                        misses: s.cache_miss.count,
                        miss_ns: s.cache_miss.ns,
                    }),
                    summaries: m.scheduler.stats().summaries().into_iter().map(summary_sample).collect(),
                }
            })
            .collect()
    }

    fn generative(&self) -> Vec<tern_telemetry::GenerativeSample> {
        self.0
            .models
            .all_ready_models()
            .into_iter()
            .filter_map(|m| {
                let s = generate::engine_of(&m)?.stats();
                Some(tern_telemetry::GenerativeSample {
                    model: m.name.clone(),
                    version: m.version_str.clone(),
                    running: s.running as u64,
                    waiting: s.waiting as u64,
                    kv_cache_bytes_in_use: s.kv_bytes_in_use,
                    kv_cache_budget_bytes: s.kv_budget_bytes,
                })
            })
            .collect()
    }

    fn model_states(&self) -> Vec<tern_telemetry::ModelStateSample> {
        self.0
            .models
            .index()
            .into_iter()
            .map(|row| tern_telemetry::ModelStateSample {
                model: row.name,
                version: row.version,
                state: if row.state == Some(ModelState::Ready) {
                    ModelState::Ready
                } else {
                    ModelState::Unavailable
                },
            })
            .collect()
    }
}
