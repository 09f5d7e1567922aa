//! The inference path: authorize, open the request's `route` span, forward the request's
//! bytes with its metadata (deadline, trace context) through [`Forwarder::forward`] (replica
//! choice and retries, see [`crate::retry`]), and keep sequences sticky to their node.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use tonic::metadata::MetadataMap;
use tonic::{Code, Response};
use tracing::Instrument;

use crate::error::ClientError;
use crate::metrics::RouterMetrics;
use crate::nodes::{Cluster, Node};
use crate::placement::Placement;
use crate::raw::{InferHead, RawMessage, SequenceId};
use crate::retry::{Route, record_outcome, route_span};

/// Sequences the router keeps sticky at once (model, sequence id); a new sequence beyond this,
/// after idle ones expire, is refused with RESOURCE_EXHAUSTED rather than routed unpinned.
pub const MAX_SEQUENCES: usize = 1 << 18;

pub use crate::client::{INFER_PATH, STREAM_INFER_PATH};

/// Headers that describe this hop, not the request: the router forwards the decompressed
/// message, so the node must not be told it is compressed; and the client's credentials are
/// for the router only (nodes see the router's own token, `--node-token-file`).
const HOP_HEADERS: &[&str] =
    &["grpc-encoding", "grpc-accept-encoding", "content-length", "user-agent", "authorization"];

/// Metadata to send upstream (or back downstream): everything but [`HOP_HEADERS`].
pub fn forwardable(mut metadata: MetadataMap) -> MetadataMap {
    for h in HOP_HEADERS {
        metadata.remove(*h);
    }
    metadata
}

/// Forwards inference requests.
pub struct Forwarder {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) placement: Arc<Placement>,
    pub(crate) metrics: Arc<RouterMetrics>,
    /// (model, sequence) -> the node serving it and when it was last used (ms).
    sequences: DashMap<(String, SequenceId), (Arc<Node>, u64)>,
    /// (model, version) -> decoupled, and when it was learned (ms); see [`crate::relay`].
    pub(crate) policies: DashMap<(String, String), (bool, u64)>,
}

impl Forwarder {
    pub fn new(cluster: Arc<Cluster>, placement: Arc<Placement>, metrics: Arc<RouterMetrics>) -> Forwarder {
        Forwarder { cluster, placement, metrics, sequences: DashMap::new(), policies: DashMap::new() }
    }

    /// Forwards one encoded ModelInferRequest; the reply is the node's, bytes untouched.
    /// `caller`: the authenticated client, whose token must allow the model.
    pub async fn infer(
        &self,
        metadata: MetadataMap,
        body: Bytes,
        caller: Option<&tern_edge::Principal>,
    ) -> Result<Response<Bytes>, ClientError> {
        let head = InferHead::parse(&body)?;
        self.infer_parsed(&head, metadata, body, caller).await
    }

    /// [`Self::infer`] for a request whose head the caller has read already.
    pub async fn infer_parsed(
        &self,
        head: &InferHead,
        metadata: MetadataMap,
        body: Bytes,
        caller: Option<&tern_edge::Principal>,
    ) -> Result<Response<Bytes>, ClientError> {
        let span = route_span(&head.model_name, &head.model_version, &metadata);
        let result = async {
            let model = head.model_name.as_str();
            let response = self
                .forward_inference(head, metadata, body, caller, |node, metadata, body| async move {
                    let started = Instant::now();
                    let outstanding = node.begin(model);
                    let result = node.client().infer_raw(metadata, body).await;
                    drop(outstanding);
                    self.metrics.upstream(&node.addr, started.elapsed());
                    result
                })
                .await?;
            let (meta, reply, ext) = response.into_parts();
            Ok(Response::from_parts(forwardable(meta), reply, ext))
        }
        .instrument(span.clone())
        .await;
        record_outcome(&span, &result);
        let code = result.as_ref().map_or_else(ClientError::code, |_| Code::Ok);
        self.metrics.request(self.cluster.metric_label(&head.model_name), code);
        result
    }

    /// The inference route of a request (ModelInfer, and the opening of a ModelStreamInfer
    /// call): authorizes `caller` for the model `head` names, picks a replica (sticky for a
    /// sequence) and runs `call` on it with the forwardable metadata and the request's bytes,
    /// retrying on another replica as [`Forwarder::forward`] allows; a sequence is then kept
    /// on the replica that answered.
    pub(crate) async fn forward_inference<T, F, Fut>(
        &self,
        head: &InferHead,
        metadata: MetadataMap,
        body: Bytes,
        caller: Option<&tern_edge::Principal>,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Arc<Node>, MetadataMap, RawMessage) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        tern_edge::authorize_model(caller, &head.model_name)
            .map_err(|denied| ClientError::router(denied.code(), denied.message()))?;
        let metadata = forwardable(metadata);
        let model = head.model_name.as_str();
        let sequence = head.sequence().map(|s| (model.to_string(), s));
        if let Some(key) = &sequence {
            self.admit_sequence(key)?;
        }
        let route = Route {
            model,
            version: &head.model_version,
            sequence: sequence.as_ref(),
            sequence_start: head.sequence_start(),
            caller,
            retries: self.placement.settings().max_retries,
            inference: true,
        };
        let (answer, node) =
            self.forward(&route, |node| call(node, metadata.clone(), RawMessage::from(body.clone()))).await?;
        if let Some(key) = sequence {
            self.pin_sequence(key, node, head.sequence_end());
        }
        Ok(answer)
    }

    /// Keeps a sequence on the node that served its request, or forgets it at its end.
    pub(crate) fn pin_sequence(&self, key: (String, SequenceId), node: Arc<Node>, end: bool) {
        if end {
            self.sequences.remove(&key);
        } else {
            self.sequences.insert(key, (node, self.cluster.now_ms()));
        }
    }

    /// Refuses a new sequence when the sequence table is full even after expiring idle ones.
    pub(crate) fn admit_sequence(&self, key: &(String, SequenceId)) -> Result<(), ClientError> {
        if self.sequences.len() < MAX_SEQUENCES || self.sequences.contains_key(key) {
            return Ok(());
        }
        self.expire_sequences();
        if self.sequences.len() < MAX_SEQUENCES {
            return Ok(());
        }
        Err(ClientError::router(
            Code::ResourceExhausted,
            format!(
                "model '{}': the router already keeps {MAX_SEQUENCES} sequences; end sequences (sequence_end) or wait for idle ones to expire (--sequence-idle-secs)",
                key.0
            ),
        ))
    }

    /// The node a sequence is pinned to, if any.
    pub(crate) fn pinned(&self, key: &(String, SequenceId)) -> Option<Arc<Node>> {
        self.sequences.get(key).map(|e| e.0.clone())
    }

    /// Forgets sequences idle for longer than the sequence idle time.
    pub fn expire_sequences(&self) {
        let now = self.cluster.now_ms();
        let idle = self.placement.settings().sequence_idle.as_millis() as u64;
        self.sequences.retain(|_, (_, last)| now.saturating_sub(*last) < idle);
    }
}
