//! The KServe v2 / Triton gRPC service of a node: health, metadata, config, inference (unary
//! and streaming). RPCs not implemented yet answer UNIMPLEMENTED saying so.

use std::sync::Arc;

use tern_core::{DataType, FailureReason, ModelState, RequestError, Tensor, classify, validate_request};
use tern_proto::inference::{self as pb, grpc_inference_service_server::GrpcInferenceService};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use tern_edge::{authorize_model, may_see_model, principal};
use tern_scheduler::{InferJob, StatsSnapshot};

use tern_lifecycle::{ControlMode, ModelManager};

/// Shared state behind the service; cloning the service is cheap.
pub struct NodeState {
    pub server_name: String,
    pub models: Arc<ModelManager>,
    pub strict_readiness: bool,
    pub control_mode: ControlMode,
    pub metrics: Arc<tern_telemetry::Metrics>,
    /// Inference requests being served now (reported to routers in heartbeats).
    pub in_flight: std::sync::atomic::AtomicU64,
    /// Size limits on requests and responses (`--max-tensor-bytes`, ...).
    pub limits: crate::request_limits::Limits,
    /// Bytes of requests held now, against `--max-pending-request-bytes`.
    pub pending: crate::request_limits::PendingBytes,
    /// Client shared-memory regions (`--allow-client-shm`); empty and closed when off.
    pub shm: Arc<tern_edge::triton::SystemShm>,
}

/// Counts one request in [`NodeState::in_flight`] while alive (also when the request is
/// cancelled and its future dropped).
struct InFlight<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a std::sync::atomic::AtomicU64) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub struct NodeService {
    state: Arc<NodeState>,
}

impl NodeService {
    pub fn new(state: Arc<NodeState>) -> NodeService {
        NodeService { state }
    }

    pub(crate) fn state(&self) -> &Arc<NodeState> {
        &self.state
    }

    /// The repository API changes models only in explicit mode, as in Triton.
    fn explicit_mode_only(&self) -> Result<(), Status> {
        match self.state.control_mode {
            ControlMode::Explicit => Ok(()),
            ControlMode::Poll => {
                Err(Status::unavailable("explicit model load / unload is not allowed if polling is enabled"))
            }
            ControlMode::None => Err(Status::unavailable(
                "explicit model load / unload is not allowed with --model-control-mode=none; use explicit",
            )),
        }
    }

    /// One inference, from request to response; shared by the unary and streaming RPCs.
    /// Inputs in client shared memory are read from their regions, outputs asked there are
    /// written into them (`tern_core::shm`).
    pub(crate) async fn infer(
        &self,
        mut req: pb::ModelInferRequest,
    ) -> Result<pb::ModelInferResponse, RequestError> {
        let shm_outputs = self.state.shm.resolve(&mut req)?;
        let mut response = self.infer_plain(req).await?;
        if let Some(outputs) = shm_outputs {
            outputs.write(&mut response)?;
        }
        Ok(response)
    }

    async fn infer_plain(&self, req: pb::ModelInferRequest) -> Result<pb::ModelInferResponse, RequestError> {
        let started = std::time::Instant::now();
        let _in_flight = InFlight::enter(&self.state.in_flight);
        let model = self.state.models.get(&req.model_name, &req.model_version)?;
        if model.decoupled() {
            // Triton's answer (server src/grpc/infer_handler.cc, ModelInferHandler::Execute):
            // UNSUPPORTED, which its GrpcStatusUtil maps to UNIMPLEMENTED.
            return Err(RequestError::Unimplemented(
                "ModelInfer RPC doesn't support models with decoupled transaction policy".into(),
            ));
        }
        let result = self.infer_on(&model, req, started).await;
        model
            .latency
            .get_or_init(|| self.state.metrics.request_latency(&model.name, &model.version_str))
            .observe(started.elapsed());
        result
    }

    async fn infer_on(
        &self,
        model: &tern_lifecycle::LoadedModel,
        mut req: pb::ModelInferRequest,
        started: std::time::Instant,
    ) -> Result<pb::ModelInferResponse, RequestError> {
        let checked = tern_core::shape_limits::check_request(&req, &self.state.limits.request);
        // The model was found under these strings: the response names it with them when they are
        // the model's own (they always are for the name), instead of copying the model's.
        let model_name = std::mem::take(&mut req.model_name);
        let model_version = std::mem::take(&mut req.model_version);
        let request = checked.and_then(|()| validate_request(&model.io, req)).inspect_err(|_| {
            model.scheduler.stats().record_failure(FailureReason::Other, started.elapsed());
        })?;
        // Held until the response is built: the inputs live that long (queued, then running).
        let bytes = request.inputs.iter().map(|t| t.data.len() as u64).sum();
        let _pending = self.state.pending.admit(&model.name, bytes).inspect_err(|_| {
            model.scheduler.stats().record_failure(FailureReason::Rejected, started.elapsed());
        })?;
        // Classification asked per output, in order; `None` (no allocation) when none is.
        let class_counts: Option<Vec<Option<usize>>> = request
            .outputs
            .iter()
            .any(|o| o.class_count.is_some())
            .then(|| request.outputs.iter().map(|o| o.class_count).collect());
        let job = InferJob {
            inputs: request.inputs,
            batch_size: request.batch_size,
            outputs: request.outputs.into_iter().map(|o| o.name).collect(),
            priority: request.priority,
            timeout: request.timeout,
            sequence: request.sequence,
        };
        let outputs = if model.ensemble.is_some() {
            let ensemble = crate::ensemble::Request {
                models: &self.state.models,
                priority: job.priority,
                timeout: job.timeout,
                sequence: &job.sequence,
            };
            crate::ensemble::run(ensemble, model, job.batch_size, job.inputs, &job.outputs).await?
        } else {
            model.scheduler.infer(job).await?
        };
        let mut response = pb::ModelInferResponse {
            model_name: if model_name == model.name { model_name } else { model.name.clone() },
            model_version: if model_version == model.version_str {
                model_version
            } else {
                model.version_str.clone()
            },
            id: request.id,
            parameters: Default::default(),
            outputs: Vec::with_capacity(outputs.len()),
            raw_output_contents: Vec::with_capacity(outputs.len()),
        };
        for (i, mut tensor) in outputs.into_iter().enumerate() {
            let spec = model.io.outputs.iter().find(|s| s.name == tensor.name);
            if let Some(spec) = spec {
                restore_config_shape(
                    &mut tensor,
                    &spec.dims,
                    spec.reshape.is_some(),
                    model.io.max_batch_size > 0,
                );
            }
            let class_count = class_counts.as_ref().and_then(|c| c.get(i).copied().flatten());
            if let Some(k) = class_count {
                let labels = spec.and_then(|s| s.labels.as_deref()).map(Vec::as_slice);
                tensor = classify(&tensor, k, model.io.max_batch_size > 0, labels)
                    .map_err(|m| RequestError::InvalidArgument(format!("model '{}': {m}", model.name)))?;
            }
            response.outputs.push(pb::model_infer_response::InferOutputTensor {
                name: tensor.name,
                datatype: tensor.datatype.wire_name().to_string(),
                shape: tensor.shape,
                parameters: Default::default(),
                contents: None,
            });
            response.raw_output_contents.push(tensor.data);
        }
        self.state.limits.check_response(&model.name, prost::Message::encoded_len(&response))?;
        Ok(response)
    }
}

/// With `reshape`, the model's output shape is mapped back to the config's `dims`.
pub(crate) fn restore_config_shape(tensor: &mut Tensor, dims: &[i64], reshaped: bool, batching: bool) {
    if !reshaped || dims.iter().any(|&d| d < 0) {
        return;
    }
    tensor.shape = if batching {
        let rows = tensor.shape.first().copied().unwrap_or(1);
        std::iter::once(rows).chain(dims.iter().copied()).collect()
    } else {
        dims.to_vec()
    };
}

fn tensor_metadata(
    name: &str,
    datatype: i32,
    dims: &[i64],
    batching: bool,
) -> pb::model_metadata_response::TensorMetadata {
    let datatype = DataType::from_config(datatype).map_or("INVALID", |d| d.wire_name()).to_string();
    let shape =
        if batching { std::iter::once(-1).chain(dims.iter().copied()).collect() } else { dims.to_vec() };
    pb::model_metadata_response::TensorMetadata { name: name.to_string(), datatype, shape }
}

fn statistics_proto(name: &str, version: &str, s: &StatsSnapshot) -> pb::ModelStatistics {
    let d = |d: tern_scheduler::stats::DurationStat| Some(pb::StatisticDuration { count: d.count, ns: d.ns });
    pb::ModelStatistics {
        name: name.to_string(),
        version: version.to_string(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: d(s.success),
            fail: d(s.fail),
            queue: d(s.queue),
            compute_input: d(s.compute_input),
            compute_infer: d(s.compute_infer),
            compute_output: d(s.compute_output),
            cache_hit: d(s.cache_hit),
            cache_miss: d(s.cache_miss),
        }),
        batch_stats: s
            .batches
            .iter()
            .map(|b| pb::InferBatchStatistics {
                batch_size: b.batch_size,
                compute_input: d(b.compute_input),
                compute_infer: d(b.compute_infer),
                compute_output: d(b.compute_output),
            })
            .collect(),
        memory_usage: Vec::new(),
        response_stats: Default::default(),
    }
}

/// One span per request; the scheduler hangs its queue span under it and links the batch
/// span to it, and `trace_id` shows in the request's log lines once set.
pub(crate) fn request_span(req: &pb::ModelInferRequest) -> tracing::Span {
    tracing::info_span!(
        "infer",
        model = %req.model_name,
        version = %req.model_version,
        id = %req.id,
        trace_id = tracing::field::Empty
    )
}

#[tonic::async_trait]
impl GrpcInferenceService for NodeService {
    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        // Triton answers UNAVAILABLE "Server exiting" once it is (server.cc, IsReady).
        if self.state.models.draining() {
            return Err(Status::unavailable("Server exiting"));
        }
        let ready = self.state.models.server_ready(self.state.strict_readiness);
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        tern_edge::triton::model_ready(req, |name, version| self.state.models.get(name, version).is_ok())
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        authorize_model(principal(&req), &req.get_ref().name)?;
        let req = req.into_inner();
        let model = self.state.models.get(&req.name, &req.version)?;
        let c = &model.config;
        let batching = c.max_batch_size > 0;
        Ok(Response::new(pb::ModelMetadataResponse {
            name: model.name.clone(),
            versions: self.state.models.ready_versions(&model.name),
            platform: c.platform.clone(),
            inputs: c
                .input
                .iter()
                .map(|i| tensor_metadata(&i.name, i.data_type, &i.dims, batching))
                .collect(),
            outputs: c
                .output
                .iter()
                .map(|o| tensor_metadata(&o.name, o.data_type, &o.dims, batching))
                .collect(),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        authorize_model(principal(&req), &req.get_ref().model_name)?;
        let span = request_span(req.get_ref());
        tern_telemetry::set_parent_from_metadata(&span, req.metadata());
        let response = self.infer(req.into_inner()).instrument(span).await?;
        Ok(Response::new(response))
    }

    type ModelStreamInferStream = tern_edge::triton::StreamInferStream;

    async fn model_stream_infer(
        &self,
        req: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let metadata = req.metadata().clone();
        let caller = principal(&req).cloned();
        Ok(Response::new(self.stream_responses(req.into_inner(), metadata, caller)))
    }

    async fn model_config(
        &self,
        req: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        authorize_model(principal(&req), &req.get_ref().name)?;
        let req = req.into_inner();
        let model = self.state.models.get(&req.name, &req.version)?;
        Ok(Response::new(pb::ModelConfigResponse { config: Some(model.config.clone()) }))
    }

    async fn model_statistics(
        &self,
        req: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let caller = principal(&req).cloned();
        let req = req.into_inner();
        let models: Vec<_> = if req.name.is_empty() {
            let mut all = self.state.models.all_ready_models();
            all.retain(|m| may_see_model(caller.as_ref(), &m.name));
            all
        } else {
            authorize_model(caller.as_ref(), &req.name)?;
            // Triton's wording for each case.
            let model = self.state.models.get(&req.name, &req.version).map_err(|_| {
                if req.version.is_empty() || self.state.models.get(&req.name, "").is_err() {
                    Status::invalid_argument(format!("requested model '{}' is not available", req.name))
                } else {
                    Status::invalid_argument(format!(
                        "requested model version is not available for model '{}'",
                        req.name
                    ))
                }
            })?;
            vec![model]
        };
        let model_stats = models
            .iter()
            .map(|m| statistics_proto(&m.name, &m.version_str, &m.scheduler.stats().snapshot()))
            .collect();
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        req: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        // Triton refuses the index once exiting (server.cc, RepositoryIndex).
        if self.state.models.draining() {
            return Err(Status::unavailable("Server not ready: the node is shutting down"));
        }
        let caller = principal(&req).cloned();
        let ready_only = req.into_inner().ready;
        let models = self
            .state
            .models
            .repository_index()
            .await
            .into_iter()
            .filter(|row| !ready_only || row.state == Some(ModelState::Ready))
            .filter(|row| may_see_model(caller.as_ref(), &row.name))
            .map(|row| pb::repository_index_response::ModelIndex {
                name: row.name,
                version: row.version,
                state: row.state.map_or("", ModelState::as_str).into(),
                reason: row.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        authorize_model(principal(&req), &req.get_ref().model_name)?;
        self.explicit_mode_only()?;
        let req = req.into_inner();
        let mut config = None;
        let mut files = Vec::new();
        for (key, value) in req.parameters {
            use pb::model_repository_parameter::ParameterChoice as P;
            match (key.as_str(), value.parameter_choice) {
                ("config", Some(P::StringParam(json))) => config = Some(json),
                (k, Some(P::BytesParam(bytes))) if k.starts_with("file:") => {
                    files.push((k["file:".len()..].to_string(), bytes));
                }
                (k, _) => {
                    return Err(Status::invalid_argument(format!(
                        "model '{}': unexpected load parameter '{k}' (expected 'config' as a string, 'file:<version>/<name>' as bytes)",
                        req.model_name
                    )));
                }
            }
        }
        self.state.models.load(&req.model_name, config.as_deref(), files).await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        authorize_model(principal(&req), &req.get_ref().model_name)?;
        self.explicit_mode_only()?;
        let req = req.into_inner();
        let dependents = tern_edge::triton::unload_dependents(&req.parameters)?;
        self.state.models.unload_with(&req.model_name, dependents).await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn trace_setting(
        &self,
        req: Request<pb::TraceSettingRequest>,
    ) -> Result<Response<pb::TraceSettingResponse>, Status> {
        tern_edge::triton::trace_setting(req.into_inner(), |model| self.state.models.get(model, "").is_ok())
    }

    tern_edge::triton_common_rpcs!("this Tern node yet", server_name: state.server_name, shm: state.shm);
}
