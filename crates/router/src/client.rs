//! [`NodeClient`]: the router's one way to talk to a node. It holds the node's connections and
//! the router's credential, puts the router's span context on every request (`traceparent`, so
//! the node's spans are children of the router's), and returns [`ClientError`]s classified for
//! retrying.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tern_proto::cluster::{self as cpb, node_control_client::NodeControlClient};
use tern_proto::inference::{self as pb, grpc_inference_service_client::GrpcInferenceServiceClient};
use tonic::metadata::MetadataMap;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

use crate::error::ClientError;
use crate::raw::{RawCodec, RawMessage};

/// Triton accepts messages up to 2 GiB; so do nodes. (The router's own limit on what clients
/// send is --grpc-max-message-size; nodes keep theirs.)
pub const MAX_MESSAGE_SIZE: usize = i32::MAX as usize;

pub const INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";
pub const STREAM_INFER_PATH: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

/// A connection to a node that presents the router's token (`--node-token-file`), if any.
type NodeChannel = InterceptedService<Channel, tern_edge::Credential>;

/// The connections to one node and what the router asks it.
pub struct NodeClient {
    addr: String,
    channels: Vec<Channel>,
    credential: tern_edge::Credential,
    next_channel: AtomicUsize,
}

impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClient").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl NodeClient {
    /// `connections` lazy HTTP/2 connections to `addr` (TLS with `tls`), presenting `credential`.
    pub fn connect(
        addr: &str,
        connections: usize,
        tls: Option<&ClientTlsConfig>,
        credential: tern_edge::Credential,
    ) -> Result<NodeClient, String> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("node address {addr}: {e}"))?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| format!("node {addr}: TLS: {e}"))?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            // Fixed windows, not hyper's adaptive (BDP) one: its estimator sends a PING when a
            // response's data arrives and none is in flight, so small requests cost an extra
            // frame and wake-up on both ends (router -10% and node -14% CPU per request on
            // tiny_add at c=16, benches/RESULTS.md). 4 MiB a stream and 16 MiB a connection are
            // far above a LAN's bandwidth-delay product and bound what a node may send ahead.
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20));
        let channels = (0..connections.max(1)).map(|_| endpoint.connect_lazy()).collect();
        Ok(NodeClient { addr: addr.to_string(), channels, credential, next_channel: AtomicUsize::new(0) })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// One of the node's connections, in turn.
    fn channel(&self) -> NodeChannel {
        let i = self.next_channel.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        InterceptedService::new(self.channels[i].clone(), self.credential.clone())
    }

    fn inference(&self) -> GrpcInferenceServiceClient<NodeChannel> {
        GrpcInferenceServiceClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// ModelInfer with an encoded request and the metadata to forward; the reply's bytes come
    /// back untouched.
    pub async fn infer_raw(
        &self,
        metadata: MetadataMap,
        body: RawMessage,
    ) -> Result<Response<Bytes>, ClientError> {
        let request = outgoing(Request::from_parts(metadata, Default::default(), body), None);
        let mut grpc = tonic::client::Grpc::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        // A connection that is not ready has sent nothing.
        grpc.ready()
            .await
            .map_err(|e| ClientError::NotSent(Status::unavailable(format!("node {}: {e}", self.addr))))?;
        let path = http::uri::PathAndQuery::from_static(INFER_PATH);
        Ok(grpc.unary(request, path, RawCodec).await?)
    }

    /// ModelStreamInfer with one encoded request (the client side is closed after it, so the
    /// node ends the stream after that request's last response); the responses' bytes come
    /// back untouched. Dropping the returned stream cancels the call on the node.
    pub async fn stream_raw(
        &self,
        metadata: MetadataMap,
        body: RawMessage,
    ) -> Result<tonic::Streaming<Bytes>, ClientError> {
        let messages = futures::stream::once(std::future::ready(body));
        let request = outgoing(Request::from_parts(metadata, Default::default(), messages), None);
        let mut grpc = tonic::client::Grpc::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        grpc.ready()
            .await
            .map_err(|e| ClientError::NotSent(Status::unavailable(format!("node {}: {e}", self.addr))))?;
        let path = http::uri::PathAndQuery::from_static(STREAM_INFER_PATH);
        Ok(grpc.streaming(request, path, RawCodec).await?.into_inner())
    }

    pub async fn model_metadata(
        &self,
        request: pb::ModelMetadataRequest,
    ) -> Result<pb::ModelMetadataResponse, ClientError> {
        Ok(self.inference().model_metadata(outgoing(Request::new(request), None)).await?.into_inner())
    }

    pub async fn model_config(
        &self,
        request: pb::ModelConfigRequest,
    ) -> Result<pb::ModelConfigResponse, ClientError> {
        Ok(self.inference().model_config(outgoing(Request::new(request), None)).await?.into_inner())
    }

    pub async fn model_statistics(
        &self,
        request: pb::ModelStatisticsRequest,
    ) -> Result<pb::ModelStatisticsResponse, ClientError> {
        Ok(self.inference().model_statistics(outgoing(Request::new(request), None)).await?.into_inner())
    }

    pub async fn repository_index(
        &self,
        request: pb::RepositoryIndexRequest,
        timeout: Option<Duration>,
    ) -> Result<pb::RepositoryIndexResponse, ClientError> {
        Ok(self.inference().repository_index(outgoing(Request::new(request), timeout)).await?.into_inner())
    }

    pub async fn load(&self, request: pb::RepositoryModelLoadRequest) -> Result<(), ClientError> {
        self.inference().repository_model_load(outgoing(Request::new(request), None)).await?;
        Ok(())
    }

    pub async fn unload(&self, request: pb::RepositoryModelUnloadRequest) -> Result<(), ClientError> {
        self.inference().repository_model_unload(outgoing(Request::new(request), None)).await?;
        Ok(())
    }

    pub async fn server_ready(&self, timeout: Duration) -> Result<bool, ClientError> {
        let request = outgoing(Request::new(pb::ServerReadyRequest {}), Some(timeout));
        Ok(self.inference().server_ready(request).await?.into_inner().ready)
    }

    /// tern-node's NodeControl.Status (the node's models, memory, identity).
    pub async fn node_status(
        &self,
        request: cpb::NodeStatusRequest,
        timeout: Duration,
    ) -> Result<cpb::NodeStatus, ClientError> {
        let mut control = NodeControlClient::new(self.channel());
        Ok(control.status(outgoing(Request::new(request), Some(timeout))).await?.into_inner())
    }
}

/// A request as it leaves for a node: with the current span's context as `traceparent` (the
/// router's request span, when it has one; otherwise what the metadata carries stays), and a
/// deadline when given.
fn outgoing<T>(mut request: Request<T>, timeout: Option<Duration>) -> Request<T> {
    tern_telemetry::inject_span_context(&tracing::Span::current(), request.metadata_mut());
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}
