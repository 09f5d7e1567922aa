//! The router's GRPCInferenceService: inference is forwarded as bytes ([`InferenceRoutes`]
//! intercepts ModelInfer and ModelStreamInfer before tonic's generated server would decode
//! them); everything else is answered from the cluster: health from membership, metadata and
//! config from a replica, statistics and the repository index merged across nodes, and
//! repository loads and unloads through placement.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use prost::Message;
use tern_core::ModelState;
use tern_proto::inference::{self as pb, grpc_inference_service_server::GrpcInferenceService};
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::aggregate::{merge_index, merge_statistics};
use crate::error::ClientError;
use crate::forward::{Forwarder, INFER_PATH, STREAM_INFER_PATH};
use crate::nodes::{Cluster, Node};
use crate::placement::Placement;
use crate::raw::{InferHead, RawCodec, RawMessage};
use crate::relay::{Relayed, StreamRelay, stream_one_item};
use crate::retry::{Route, record_outcome, route_span};
use tern_edge::{authorize_model, may_see_model, principal};

/// Shared state of the router's services.
pub struct RouterState {
    pub server_name: String,
    pub cluster: Arc<Cluster>,
    pub placement: Arc<Placement>,
    pub forwarder: Arc<Forwarder>,
    /// Client shared-memory regions registered with this router ([`crate::shm`]).
    pub shm: Arc<tern_edge::triton::SystemShm>,
}

impl RouterState {
    /// Calls `f` on a node for `model` (placed lazily if `caller` may load models), under the
    /// request's `route` span; a node that could not answer is retried once on another (reads
    /// may run twice).
    async fn on_model<T, F, Fut>(
        &self,
        model: &str,
        version: &str,
        metadata: &tonic::metadata::MetadataMap,
        caller: Option<&tern_edge::Principal>,
        f: F,
    ) -> Result<T, Status>
    where
        F: Fn(Arc<Node>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let span = route_span(model, version, metadata);
        let route = Route {
            model,
            version,
            sequence: None,
            sequence_start: false,
            caller,
            retries: 1,
            inference: false,
        };
        let result = self.forwarder.forward(&route, f).instrument(span.clone()).await.map(|(reply, _)| reply);
        record_outcome(&span, &result);
        Ok(result?)
    }

    /// ModelMetadata and ModelConfig: `ask` one replica of the model `key` names (name,
    /// version), once the caller may see it, through [`RouterState::on_model`].
    async fn ask_replica<R, T, F, Fut>(
        &self,
        req: Request<R>,
        key: fn(&R) -> (&String, &String),
        ask: F,
    ) -> Result<Response<T>, Status>
    where
        R: Clone,
        F: Fn(Arc<Node>, R) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let caller = principal(&req).cloned();
        authorize_model(caller.as_ref(), key(req.get_ref()).0)?;
        let (metadata, _, req) = req.into_parts();
        let (name, version) = key(&req);
        let reply =
            self.on_model(name, version, &metadata, caller.as_ref(), |node| ask(node, req.clone())).await?;
        Ok(Response::new(reply))
    }
}

#[derive(Clone)]
pub struct RouterService {
    state: Arc<RouterState>,
}

impl RouterService {
    pub fn new(state: Arc<RouterState>) -> RouterService {
        RouterService { state }
    }
}

/// UNIMPLEMENTED for what the router does not implement.
const UNIMPLEMENTED_BY: &str = "the Tern router";

#[tonic::async_trait]
impl GrpcInferenceService for RouterService {
    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.state.cluster.ready() }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        tern_edge::triton::model_ready(req, |name, version| {
            !self.state.cluster.view().candidates(name, version).is_empty()
        })
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let ask = |node: Arc<Node>, req| async move { node.client().model_metadata(req).await };
        self.state.ask_replica(req, |r| (&r.name, &r.version), ask).await
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        // Not reached: InferenceRoutes forwards ModelInfer as bytes. Kept correct regardless.
        let (metadata, extensions, message) = req.into_parts();
        let caller = extensions.get::<tern_edge::Principal>();
        let body = Bytes::from(message.encode_to_vec());
        let reply = crate::shm::infer(&self.state.forwarder, &self.state.shm, metadata, body, caller).await?;
        let (metadata, bytes, extensions) = reply.into_parts();
        let decoded = pb::ModelInferResponse::decode(bytes)
            .map_err(|e| Status::internal(format!("malformed ModelInferResponse from a node: {e}")))?;
        Ok(Response::from_parts(metadata, decoded, extensions))
    }

    type ModelStreamInferStream = tern_edge::triton::StreamInferStream;

    async fn model_stream_infer(
        &self,
        _: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        // Not reached: InferenceRoutes serves ModelStreamInfer as bytes.
        tern_edge::triton::unimplemented("ModelStreamInfer with decoded messages", UNIMPLEMENTED_BY)
    }

    async fn model_config(
        &self,
        req: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let ask = |node: Arc<Node>, req| async move { node.client().model_config(req).await };
        self.state.ask_replica(req, |r| (&r.name, &r.version), ask).await
    }

    async fn model_statistics(
        &self,
        req: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let caller = principal(&req).cloned();
        if !req.get_ref().name.is_empty() {
            authorize_model(caller.as_ref(), &req.get_ref().name)?;
        }
        let req = req.into_inner();
        let view = self.state.cluster.view();
        if view.healthy.is_empty() {
            return Err(Status::unavailable("no node of the cluster is healthy"));
        }
        let calls = view.healthy.iter().map(|node| {
            let req = req.clone();
            async move { node.client().model_statistics(req).await.map(|r| r.model_stats) }
        });
        let results = futures::future::join_all(calls).await;
        let mut first_error = None;
        let mut per_node = Vec::new();
        for r in results {
            match r {
                Ok(stats) => per_node.push(stats),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let mut merged = merge_statistics(per_node);
        merged.retain(|m| may_see_model(caller.as_ref(), &m.name));
        // A named model nobody serves: the nodes' error (NOT_FOUND), as a single server's.
        if let Some(e) = first_error.filter(|_| merged.is_empty() && !req.name.is_empty()) {
            return Err(e.into());
        }
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats: merged }))
    }

    async fn repository_index(
        &self,
        req: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let caller = principal(&req).cloned();
        let req = req.into_inner();
        let view = self.state.cluster.view();
        let calls = view.healthy.iter().map(|node| {
            let req = pb::RepositoryIndexRequest { ready: false, ..req.clone() };
            async move { (node.id(), node.client().repository_index(req, None).await.map(|r| r.models)) }
        });
        let mut per_node = Vec::new();
        for (id, result) in futures::future::join_all(calls).await {
            match result {
                Ok(rows) => per_node.push((id, rows)),
                Err(e) => tracing::debug!(node = %id, error = %e.message(), "repository index failed"),
            }
        }
        let holders = self.state.placement.settings().index_holders;
        let models = merge_index(per_node, holders)
            .into_iter()
            .filter(|m| !req.ready || m.state == ModelState::Ready.as_str())
            .filter(|m| may_see_model(caller.as_ref(), &m.name))
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        authorize_model(principal(&req), &req.get_ref().model_name)?;
        let req = req.into_inner();
        self.state.placement.load_explicit(&req.model_name, req.parameters).await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        authorize_model(principal(&req), &req.get_ref().model_name)?;
        let req = req.into_inner();
        // Checked here, before the unload is recorded; the nodes then act on it.
        let dependents = tern_edge::triton::unload_dependents(&req.parameters)?;
        self.state.placement.unload_explicit(&req.model_name, dependents).await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn trace_setting(
        &self,
        req: Request<pb::TraceSettingRequest>,
    ) -> Result<Response<pb::TraceSettingResponse>, Status> {
        // The settings are this process's (its spans); a model is known once a node serves it.
        tern_edge::triton::trace_setting(req.into_inner(), |model| {
            !self.state.cluster.view().candidates(model, "").is_empty()
        })
    }

    tern_edge::triton_common_rpcs!(UNIMPLEMENTED_BY, server_name: state.server_name, shm: state.shm);
}

/// GRPCInferenceService as served: ModelInfer and ModelStreamInfer as raw bytes, every other
/// method by tonic's generated server over [`RouterService`].
#[derive(Clone)]
pub struct InferenceRoutes {
    state: Arc<RouterState>,
    generated: pb::grpc_inference_service_server::GrpcInferenceServiceServer<RouterService>,
    /// `--grpc-max-message-size`: the largest message clients may send or be sent.
    max_message_size: usize,
}

impl InferenceRoutes {
    pub fn new(state: Arc<RouterState>, max_message_size: usize) -> InferenceRoutes {
        let generated = pb::grpc_inference_service_server::GrpcInferenceServiceServer::new(
            RouterService::new(state.clone()),
        )
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate)
        .max_decoding_message_size(max_message_size)
        .max_encoding_message_size(max_message_size);
        InferenceRoutes { state, generated, max_message_size }
    }
}

impl NamedService for InferenceRoutes {
    const NAME: &'static str = "inference.GRPCInferenceService";
}

fn raw_server(max_message_size: usize) -> tonic::server::Grpc<RawCodec> {
    tonic::server::Grpc::new(RawCodec)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate)
        .max_decoding_message_size(max_message_size)
        .max_encoding_message_size(max_message_size)
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<B> tower::Service<http::Request<B>> for InferenceRoutes
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let limit = self.max_message_size;
        match req.uri().path() {
            INFER_PATH => {
                let service = UnaryInfer(self.state.clone());
                Box::pin(async move { Ok(raw_server(limit).unary(service, req).await) })
            }
            STREAM_INFER_PATH => {
                let service = StreamInfer(self.state.forwarder.clone());
                Box::pin(async move { Ok(raw_server(limit).streaming(service, req).await) })
            }
            _ => {
                let mut generated = self.generated.clone();
                Box::pin(async move { tower::Service::call(&mut generated, req).await })
            }
        }
    }
}

struct UnaryInfer(Arc<RouterState>);

impl tonic::server::UnaryService<Bytes> for UnaryInfer {
    type Response = RawMessage;
    type Future = BoxFuture<Result<Response<RawMessage>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let (metadata, extensions, body) = request.into_parts();
            let caller = extensions.get::<tern_edge::Principal>();
            let reply = crate::shm::infer(&state.forwarder, &state.shm, metadata, body, caller).await?;
            Ok(reply.map(RawMessage::from))
        })
    }
}

struct StreamInfer(Arc<Forwarder>);

type RawStream = Pin<Box<dyn Stream<Item = Result<RawMessage, Status>> + Send>>;

impl tonic::server::StreamingService<Bytes> for StreamInfer {
    type Response = RawMessage;
    type ResponseStream = RawStream;
    type Future = BoxFuture<Result<Response<RawStream>, Status>>;

    /// Each request of the stream is forwarded on its own (balanced, retried; see
    /// [`crate::relay`]); a failed one gets a response carrying `error_message` and the
    /// request's `id` (and model), and the stream goes on, as on a node.
    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let forwarder = self.0.clone();
        Box::pin(async move {
            let (metadata, extensions, messages) = request.into_parts();
            let caller = extensions.get::<tern_edge::Principal>().cloned();
            let relay = StreamRelay::new(forwarder, metadata, caller, messages);
            Ok(Response::new(Box::pin(relay) as RawStream))
        })
    }
}

/// One request as a stream of its responses (the HTTP generate routes): a decoupled model's
/// through a one-request ModelStreamInfer to a node, a plain model's through ModelInfer, as
/// ModelStreamInfer forwards them ([`crate::relay`]).
impl tern_edge::triton::StreamOne for RouterService {
    fn stream_one(
        &self,
        request: pb::ModelInferRequest,
        metadata: tonic::metadata::MetadataMap,
        caller: Option<tern_edge::Principal>,
    ) -> tern_edge::triton::InferResponses {
        let forwarder = self.state.forwarder.clone();
        let head = InferHead {
            model_name: request.model_name.clone(),
            model_version: request.model_version.clone(),
            id: request.id.clone(),
            parameters: request.parameters.clone(),
        };
        let body = Bytes::from(request.encode_to_vec());
        let responses = futures::stream::once(async move {
            if forwarder.is_decoupled(&head, caller.as_ref()).await {
                forwarder
                    .stream_parsed(head, metadata, body, caller)
                    .map(|relayed| match relayed {
                        Relayed::Upstream(bytes) => stream_one_item(bytes),
                        Relayed::Failed(e) => Err(Status::from(e)),
                    })
                    .boxed()
            } else {
                futures::stream::once(async move {
                    let reply = forwarder.infer_parsed(&head, metadata, body, caller.as_ref()).await?;
                    pb::ModelInferResponse::decode(reply.into_inner()).map_err(|e| {
                        Status::internal(format!("malformed ModelInferResponse from a node: {e}"))
                    })
                })
                .boxed()
            }
        })
        .flatten();
        Box::pin(responses)
    }
}
