//! The request path: pick a replica (least outstanding requests, power of two choices; sticky
//! for sequences), forward the request's bytes with its metadata (deadline, trace context),
//! and retry on another replica when that cannot run a request twice:
//!
//! - the node answered UNAVAILABLE itself (it did not run the request: queue full, model not
//!   ready, shutting down), or the request never reached it (the connection could not be made):
//!   always retried;
//! - the connection broke after the request was sent (a node killed mid-request): the node may
//!   have run it. Retried only when running it twice changes nothing, a request without a
//!   sequence (stateless inference); a sequence request (`sequence_id`) gets UNAVAILABLE, since
//!   another node has not the sequence's state and the step may have been applied already.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use crate::metrics::RouterMetrics;
use crate::nodes::{Cluster, Node};
use crate::placement::Placement;
use crate::raw::{InferHead, RawMessage, SequenceId};

/// Sequences the router keeps sticky at once (model, sequence id); a new sequence beyond this,
/// after idle ones expire, is refused with RESOURCE_EXHAUSTED rather than routed unpinned.
pub const MAX_SEQUENCES: usize = 1 << 18;

pub const INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";
pub const STREAM_INFER_PATH: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

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

/// True when the failure says nothing about the request, only about the node or the path to
/// it: safe to retry elsewhere for a request that may run twice (metadata, stateless inference).
/// Statuses a node sent carry no source; ones tonic made from a broken connection do.
pub fn retryable(status: &Status) -> bool {
    status.code() == Code::Unavailable || transport_failure(status)
}

/// True when the node did not run the request: it answered UNAVAILABLE itself (tern-node's
/// UNAVAILABLE answers all come before execution), or the connection to it could not be made
/// (tonic's `ConnectError`), so nothing was sent. Safe to retry any request.
pub fn not_run(status: &Status) -> bool {
    match std::error::Error::source(status) {
        None => status.code() == Code::Unavailable,
        Some(_) => in_source_chain::<tonic::ConnectError>(status),
    }
}

fn in_source_chain<E: std::error::Error + 'static>(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<E>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The node could not be reached or the connection broke (not an answer from the node).
pub fn transport_failure(status: &Status) -> bool {
    match status.code() {
        // The request's own deadline passed: another node would not beat it.
        Code::DeadlineExceeded => false,
        // tonic turns hyper's "canceled" (the connection to the node closed, or was not ready,
        // before the answer: a node killed mid-request) into CANCELLED. Other CANCELLED
        // statuses are the node's own word and are passed on.
        Code::Cancelled => connection_canceled(status),
        _ => std::error::Error::source(status).is_some(),
    }
}

/// True when hyper's "canceled" error is in the status's source chain.
fn connection_canceled(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled) {
            return true;
        }
        source = e.source();
    }
    false
}

/// Least outstanding requests of two random candidates (one when there is one).
pub fn power_of_two(candidates: &[Arc<Node>]) -> Option<Arc<Node>> {
    use std::sync::atomic::Ordering::Relaxed;
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0].clone()),
        n => {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (x, y) = (&candidates[a], &candidates[b]);
            Some(if y.outstanding.load(Relaxed) < x.outstanding.load(Relaxed) {
                y.clone()
            } else {
                x.clone()
            })
        }
    }
}

/// Forwards inference requests.
pub struct Forwarder {
    cluster: Arc<Cluster>,
    placement: Arc<Placement>,
    metrics: Arc<RouterMetrics>,
    /// (model, sequence) -> the node serving it and when it was last used (ms).
    sequences: DashMap<(String, SequenceId), (Arc<Node>, u64)>,
}

/// Where a request goes next.
enum Target {
    /// A replica of the model.
    Replica(Arc<Node>),
    /// No replica serves it and none will be placed: a node answers for the cluster (Triton's
    /// own error for an unknown model or version).
    Authority(Arc<Node>),
}

impl Forwarder {
    pub fn new(cluster: Arc<Cluster>, placement: Arc<Placement>, metrics: Arc<RouterMetrics>) -> Forwarder {
        Forwarder { cluster, placement, metrics, sequences: DashMap::new() }
    }

    /// Forwards one encoded ModelInferRequest; the reply is the node's, bytes untouched.
    /// `caller`: the authenticated client, whose token must allow the model.
    pub async fn infer(
        &self,
        metadata: MetadataMap,
        body: Bytes,
        caller: Option<&tern_edge::Principal>,
    ) -> Result<Response<Bytes>, Status> {
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
    ) -> Result<Response<Bytes>, Status> {
        let result = match tern_edge::authorize_model(caller, &head.model_name) {
            Ok(()) => self.infer_head(head, forwardable(metadata), body, caller).await,
            Err(denied) => Err(denied),
        };
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.metrics.request(self.cluster.metric_label(&head.model_name), code);
        result
    }

    async fn infer_head(
        &self,
        head: &InferHead,
        metadata: MetadataMap,
        body: Bytes,
        caller: Option<&tern_edge::Principal>,
    ) -> Result<Response<Bytes>, Status> {
        let model = head.model_name.as_str();
        let sequence = head.sequence().map(|s| (model.to_string(), s));
        let max_retries = self.placement.settings().max_retries;
        let mut tried: Vec<Arc<Node>> = Vec::new();
        let mut last_error: Option<Status> = None;
        if let Some(key) = &sequence {
            self.admit_sequence(key)?;
        }
        for _attempt in 0..=max_retries {
            let target = match self.pick(head, sequence.as_ref(), &tried, caller).await {
                Ok(t) => t,
                Err(e) => return Err(last_error.unwrap_or(e)),
            };
            let (node, replica) = match target {
                Target::Replica(n) => (n, true),
                Target::Authority(n) => (n, false),
            };
            if replica {
                self.placement.touch(model);
            }
            let request =
                Request::from_parts(metadata.clone(), Default::default(), RawMessage::from(body.clone()));
            let started = Instant::now();
            let outstanding = node.begin(model);
            let result = node.unary_raw(INFER_PATH, request).await;
            drop(outstanding);
            self.metrics.upstream(&node.addr, started.elapsed());
            match result {
                Ok(response) => {
                    if let Some(key) = &sequence {
                        if head.sequence_end() {
                            self.sequences.remove(key);
                        } else {
                            self.sequences.insert(key.clone(), (node.clone(), self.cluster.now_ms()));
                        }
                    }
                    let (meta, reply, ext) = response.into_parts();
                    return Ok(Response::from_parts(forwardable(meta), reply, ext));
                }
                // The view said this node serves the model, the node says it does not (an
                // unload or restart the view has not caught up with): refresh, then route again.
                Err(status) if replica && status.code() == Code::NotFound => {
                    let _ = crate::discovery::refresh(&self.cluster, &node).await;
                    let view = self.cluster.view();
                    if view.candidates(model, &head.model_version).iter().any(|n| Arc::ptr_eq(n, &node)) {
                        return Err(status);
                    }
                    tracing::debug!(model, node = %node.addr, "stale routing view; routing again");
                    last_error = Some(status);
                }
                Err(status) if retryable(&status) => {
                    if transport_failure(&status) {
                        self.cluster.mark_suspect(&node, status.message());
                    }
                    if sequence.is_some() && !not_run(&status) {
                        tracing::warn!(model, node = %node.addr, error = %status.message(), "node failed during a sequence request; not re-sent");
                        return Err(Status::unavailable(format!(
                            "model '{model}': node {} failed during a sequence request and may have run it, so it was not re-sent to another replica: {}",
                            node.id(),
                            status.message()
                        )));
                    }
                    tracing::debug!(model, node = %node.addr, error = %status.message(), "retrying on another replica");
                    self.metrics.retry(model);
                    tried.push(node);
                    last_error = Some(status);
                }
                Err(status) => return Err(status),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            Status::unavailable(format!("model '{model}': no replica could serve the request"))
        }))
    }

    /// Refuses a new sequence when the sequence table is full even after expiring idle ones.
    fn admit_sequence(&self, key: &(String, SequenceId)) -> Result<(), Status> {
        if self.sequences.len() < MAX_SEQUENCES || self.sequences.contains_key(key) {
            return Ok(());
        }
        self.expire_sequences();
        if self.sequences.len() < MAX_SEQUENCES {
            return Ok(());
        }
        Err(Status::resource_exhausted(format!(
            "model '{}': the router already keeps {MAX_SEQUENCES} sequences; end sequences (sequence_end) or wait for idle ones to expire (--sequence-idle-secs)",
            key.0
        )))
    }

    async fn pick(
        &self,
        head: &InferHead,
        sequence: Option<&(String, SequenceId)>,
        tried: &[Arc<Node>],
        caller: Option<&tern_edge::Principal>,
    ) -> Result<Target, Status> {
        let model = head.model_name.as_str();
        let untried = |n: &Arc<Node>| !tried.iter().any(|t| Arc::ptr_eq(t, n));
        let mut lazily_loaded = false;
        loop {
            let view = self.cluster.view();
            // No allocation on the common path (first attempt): the view's own slice.
            let all = view.candidates(model, &head.model_version);
            let untried_only: Vec<Arc<Node>>;
            let candidates: &[Arc<Node>] = if tried.is_empty() {
                all
            } else {
                untried_only = all.iter().filter(|n| untried(n)).cloned().collect();
                &untried_only
            };
            let pinned = sequence.and_then(|key| self.sequences.get(key).map(|e| e.0.clone()));
            if let Some(pinned) = pinned.filter(|p| candidates.iter().any(|c| Arc::ptr_eq(c, p))) {
                return Ok(Target::Replica(pinned));
            }
            if let Some(node) = power_of_two(candidates) {
                return Ok(Target::Replica(node));
            }
            if !tried.is_empty() {
                return Err(Status::unavailable(format!(
                    "model '{model}': every replica failed the request"
                )));
            }
            // The model is served, but not at this version: a holder answers (Triton's error).
            if let Some(node) = view.models.get(model).and_then(|r| power_of_two(&r.ready)) {
                return Ok(Target::Authority(node));
            }
            let authority = || {
                power_of_two(&view.healthy).map(Target::Authority).ok_or_else(|| {
                    Status::unavailable(format!("model '{model}': no node of the cluster is healthy"))
                })
            };
            if model.is_empty() || lazily_loaded || self.placement.lazy_refusal(model).is_some() {
                return authority();
            }
            // A lazy load is a model load: only for callers that may load models.
            if let Some(tern_edge::Principal(grant)) =
                caller.filter(|p| !p.0.groups.contains(tern_edge::Group::ModelRepository))
            {
                return Err(Status::unavailable(format!(
                    "model '{model}' is not loaded on any node, and token '{}' may not load models (that needs the model-repository group); ask an operator to load it",
                    grant.name
                )));
            }
            match self.placement.lazy_load(model).await {
                Ok(()) => lazily_loaded = true,
                // Nodes refused the load itself (no such model, a broken one): a node says
                // what a client of a single server would hear.
                Err(e) if !matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded) => {
                    return authority();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A node to ask about `model` (metadata, config): a replica, placed lazily when allowed
    /// (and `caller` may load models), or a node answering for the cluster.
    pub async fn node_for(
        &self,
        model: &str,
        version: &str,
        caller: Option<&tern_edge::Principal>,
    ) -> Result<Arc<Node>, Status> {
        let head = InferHead {
            model_name: model.to_string(),
            model_version: version.to_string(),
            ..Default::default()
        };
        match self.pick(&head, None, &[], caller).await? {
            Target::Replica(node) => {
                self.placement.touch(model);
                Ok(node)
            }
            Target::Authority(node) => Ok(node),
        }
    }

    /// Forgets sequences idle for longer than the sequence idle time.
    pub fn expire_sequences(&self) {
        let now = self.cluster.now_ms();
        let idle = self.placement.settings().sequence_idle.as_millis() as u64;
        self.sequences.retain(|_, (_, last)| now.saturating_sub(*last) < idle);
    }
}
