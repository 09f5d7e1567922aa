//! Replica selection and retries, one loop for every request the router forwards to a replica
//! (inference, model metadata, model config): pick a replica (least outstanding requests, power
//! of two choices; sticky for sequences; a lazy load when none serves the model), send, and on
//! a failure that says nothing about the request ([`ClientError::retryable`]) mark a node that
//! could not be reached as suspect and try another replica. A sequence request is re-sent only
//! when the node did not run it ([`ClientError::not_run`]).
//!
//! Each forwarded request has the router's `route` span (see [`route_span`]): model, version,
//! the node chosen, the attempts, the outcome. It continues the client's trace, and the node's
//! span is its child ([`crate::client::NodeClient`] sends the span's context).

use std::future::Future;
use std::sync::Arc;

use tonic::Code;
use tonic::metadata::MetadataMap;
use tracing::field::Empty;

use crate::error::ClientError;
use crate::forward::Forwarder;
use crate::nodes::Node;
use crate::raw::SequenceId;

/// What is forwarded, for choosing and retrying.
pub struct Route<'a> {
    pub model: &'a str,
    /// "" for any version.
    pub version: &'a str,
    /// An inference request's sequence: sticky to its node, and never re-sent after the node
    /// may have run it.
    pub sequence: Option<&'a (String, SequenceId)>,
    /// The request starts its sequence (`sequence_start`): it may go to any replica.
    pub sequence_start: bool,
    /// The authenticated client: a lazy load needs the model-repository group.
    pub caller: Option<&'a tern_edge::Principal>,
    /// Further attempts on another replica.
    pub retries: usize,
    /// Retries count in tern_router_retries_total (inference requests).
    pub inference: bool,
}

/// Where a request goes next.
enum Target {
    /// A replica of the model.
    Replica(Arc<Node>),
    /// No replica serves it and none will be placed: a node answers for the cluster (Triton's
    /// own error for an unknown model or version).
    Authority(Arc<Node>),
}

/// The router's span of one forwarded request, a child of the client's span when the request
/// carries a `traceparent`. [`Forwarder::forward`] records the node and the attempts,
/// [`record_outcome`] the outcome.
pub fn route_span(model: &str, version: &str, metadata: &MetadataMap) -> tracing::Span {
    let span = tracing::info_span!(
        "route",
        model,
        version,
        node = Empty,
        attempts = Empty,
        outcome = Empty,
        trace_id = Empty
    );
    tern_telemetry::set_parent_from_metadata(&span, metadata);
    span
}

/// Records how the request ended (gRPC code name) on its span.
pub fn record_outcome<T>(span: &tracing::Span, result: &Result<T, ClientError>) {
    let code = result.as_ref().map_or_else(ClientError::code, |_| Code::Ok);
    span.record("outcome", crate::metrics::code_name(code));
}

/// Records the last node tried and the attempts on the current span once the request is done
/// (each field once: a span keeps every value recorded).
struct Attempts {
    node: Option<Arc<Node>>,
    count: u64,
}

impl Drop for Attempts {
    fn drop(&mut self) {
        let span = tracing::Span::current();
        if let Some(node) = &self.node {
            span.record("node", node.addr.as_str());
        }
        span.record("attempts", self.count);
    }
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

impl Forwarder {
    /// Sends `route`'s request with `call` to a replica, retrying on another as the rules allow;
    /// returns the reply and the node that answered. Call inside the request's [`route_span`].
    pub async fn forward<T, F, Fut>(
        &self,
        route: &Route<'_>,
        mut call: F,
    ) -> Result<(T, Arc<Node>), ClientError>
    where
        F: FnMut(Arc<Node>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let model = route.model;
        let mut tried: Vec<Arc<Node>> = Vec::new();
        let mut last_error: Option<ClientError> = None;
        let mut attempts = Attempts { node: None, count: 0 };
        for _ in 0..=route.retries {
            if let Some(lost) = self.lost_sequence(route, &tried, last_error.as_ref()) {
                return Err(lost);
            }
            let target = match self.pick(route, &tried).await {
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
            attempts.node = Some(node.clone());
            attempts.count += 1;
            let e = match call(node.clone()).await {
                Ok(reply) => return Ok((reply, node)),
                Err(e) => e,
            };
            if replica && e.code() == Code::NotFound {
                // The view said this node serves the model, the node says it does not (an
                // unload or restart the view has not caught up with): refresh, then route again.
                let _ = crate::discovery::refresh(&self.cluster, &node).await;
                let view = self.cluster.view();
                if view.candidates(model, route.version).iter().any(|n| Arc::ptr_eq(n, &node)) {
                    return Err(e);
                }
                tracing::debug!(model, node = %node.addr, "stale routing view; routing again");
                last_error = Some(e);
                continue;
            }
            if !e.retryable() {
                return Err(e);
            }
            if e.transport() {
                self.cluster.mark_suspect(&node, e.message());
            }
            if route.sequence.is_some() && !e.not_run() {
                tracing::warn!(model, node = %node.addr, error = %e.message(), "node failed during a sequence request; not re-sent");
                return Err(ClientError::unavailable(format!(
                    "model '{model}': node {} failed during a sequence request and may have run it, so it was not re-sent to another replica: {}",
                    node.id(),
                    e.message()
                )));
            }
            tracing::debug!(model, node = %node.addr, error = %e.message(), "retrying on another replica");
            if route.inference {
                self.metrics.retry(model);
            }
            tried.push(node);
            last_error = Some(e);
        }
        Err(last_error.unwrap_or_else(|| {
            ClientError::unavailable(format!("model '{model}': no replica could serve the request"))
        }))
    }

    /// The error for a request that continues a sequence whose node no longer serves the model
    /// (it left the cluster, or could not be reached just now). The sequence's state (Triton's
    /// implicit state, the model's accumulators) lives on that node: another replica would
    /// refuse the request without START anyway, or, for a model without a sequence batcher,
    /// answer without the state. A START may go anywhere.
    fn lost_sequence(
        &self,
        route: &Route<'_>,
        tried: &[Arc<Node>],
        last_error: Option<&ClientError>,
    ) -> Option<ClientError> {
        let key = route.sequence.filter(|_| !route.sequence_start)?;
        let pinned = self.pinned(key)?;
        let view = self.cluster.view();
        let serving = view.candidates(route.model, route.version).iter().any(|n| Arc::ptr_eq(n, &pinned))
            && !tried.iter().any(|t| Arc::ptr_eq(t, &pinned));
        if serving {
            return None;
        }
        let why = last_error.map(|e| format!(" ({})", e.message())).unwrap_or_default();
        Some(ClientError::unavailable(format!(
            "model '{}': sequence {} was served by node {}, which no longer serves the model{why}; \
             its state is lost: restart the sequence with sequence_start",
            route.model, key.1, pinned.addr
        )))
    }

    /// The next node for `route`, not one of `tried`: a replica (the sequence's own when it
    /// has one), one placed lazily when allowed, or a node answering for the cluster.
    async fn pick(&self, route: &Route<'_>, tried: &[Arc<Node>]) -> Result<Target, ClientError> {
        let model = route.model;
        let untried = |n: &Arc<Node>| !tried.iter().any(|t| Arc::ptr_eq(t, n));
        let mut lazily_loaded = false;
        loop {
            let view = self.cluster.view();
            // No allocation on the common path (first attempt): the view's own slice.
            let all = view.candidates(model, route.version);
            let untried_only: Vec<Arc<Node>>;
            let candidates: &[Arc<Node>] = if tried.is_empty() {
                all
            } else {
                untried_only = all.iter().filter(|n| untried(n)).cloned().collect();
                &untried_only
            };
            if let Some(pinned) = route
                .sequence
                .and_then(|key| self.pinned(key))
                .filter(|p| candidates.iter().any(|c| Arc::ptr_eq(c, p)))
            {
                return Ok(Target::Replica(pinned));
            }
            if let Some(node) = power_of_two(candidates) {
                return Ok(Target::Replica(node));
            }
            if !tried.is_empty() {
                return Err(ClientError::unavailable(format!(
                    "model '{model}': every replica failed the request"
                )));
            }
            // The model is served, but not at this version: a holder answers (Triton's error).
            if let Some(node) = view.models.get(model).and_then(|r| power_of_two(&r.ready)) {
                return Ok(Target::Authority(node));
            }
            let authority = || {
                power_of_two(&view.healthy).map(Target::Authority).ok_or_else(|| {
                    ClientError::unavailable(format!("model '{model}': no node of the cluster is healthy"))
                })
            };
            if model.is_empty() || lazily_loaded || self.placement.lazy_refusal(model).is_some() {
                return authority();
            }
            // A lazy load is a model load: only for callers that may load models.
            if let Some(tern_edge::Principal(grant)) =
                route.caller.filter(|p| !p.0.groups.contains(tern_edge::Group::ModelRepository))
            {
                return Err(ClientError::unavailable(format!(
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
}
