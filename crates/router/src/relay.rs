//! ModelStreamInfer through the router, and [`StreamOne`](tern_edge::triton::StreamOne) for the
//! HTTP generate routes.
//!
//! Each request of a client's stream goes to a node on its own, by its model's transaction
//! policy (Triton's `model_transaction_policy`, learned from a replica's ModelConfig and kept
//! for [`POLICY_TTL_MS`]):
//! - a plain model: forwarded as a unary ModelInfer ([`Forwarder::infer_parsed`]), so it keeps
//!   the unary path's retries (a node's NOT_FOUND from a stale view re-routes, its UNAVAILABLE
//!   fails over), which an answer inside a stream cannot carry: a node words a failed stream
//!   request as `error_message` text, without a code. One response per request either way;
//! - a decoupled model (zero, one or many responses per request): forwarded as a one-request
//!   ModelStreamInfer ([`Forwarder::stream_parsed`]) whose responses are relayed as the node's
//!   bytes until the node ends that stream. ModelInfer cannot serve such a model.
//!
//! Order, as Triton's stream handler (server src/grpc/stream_infer_handler.cc): responses of
//! plain requests leave in the order the requests came; a decoupled request's responses leave
//! as they come (in their own order), never held behind another request nor holding one back.
//! A client that drops its stream drops every upstream call with it (the node cancels them).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::stream::{self, BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use prost::Message;
use tern_proto::inference as pb;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status, Streaming};
use tracing::Instrument;

use crate::error::ClientError;
use crate::forward::Forwarder;
use crate::nodes::Outstanding;
use crate::raw::{InferHead, RawMessage, stream_error, stream_response};
use crate::retry::{Route, record_outcome, route_span};

/// Requests of one client stream in flight at once (long generations included); further
/// requests wait in the client's stream (HTTP/2 flow control pushes back).
pub const STREAM_CONCURRENCY: usize = 64;

/// How long a model's transaction policy is trusted before it is asked again (a reload may
/// change it).
pub const POLICY_TTL_MS: u64 = 10_000;

/// (model, version) policies kept at most; past this the table starts over (versions are
/// strings clients choose).
const MAX_POLICIES: usize = 4096;

/// What a forwarded stream request yields.
pub enum Relayed {
    /// An encoded ModelStreamInferResponse from the node, as received.
    Upstream(Bytes),
    /// The request failed at the router or on the way to the node.
    Failed(ClientError),
}

/// A stream call to a node that has answered its first message (or ended without one).
struct Opened {
    first: Option<Bytes>,
    upstream: Streaming<Bytes>,
    /// Counts the call against the node's outstanding requests until the stream is done.
    outstanding: Outstanding,
}

impl Forwarder {
    /// True when `head`'s model is decoupled, from a cached ModelConfig of one of its replicas.
    /// A model that cannot be asked (unknown, not allowed) counts as plain: the request itself
    /// then fails with the node's (or the router's) answer.
    pub async fn is_decoupled(&self, head: &InferHead, caller: Option<&tern_edge::Principal>) -> bool {
        let key = (head.model_name.clone(), head.model_version.clone());
        let now = self.cluster.now_ms();
        if let Some(entry) = self.policies.get(&key)
            && now.saturating_sub(entry.1) < POLICY_TTL_MS
        {
            return entry.0;
        }
        if tern_edge::authorize_model(caller, &head.model_name).is_err() {
            return false;
        }
        let route = Route {
            model: &head.model_name,
            version: &head.model_version,
            sequence: None,
            sequence_start: false,
            caller,
            retries: 1,
            inference: false,
        };
        let request = pb::ModelConfigRequest { name: key.0.clone(), version: key.1.clone() };
        let span = tracing::debug_span!("transaction_policy", model = %key.0, version = %key.1);
        let asked = self
            .forward(&route, |node| {
                let request = request.clone();
                async move { node.client().model_config(request).await }
            })
            .instrument(span)
            .await;
        match asked {
            Ok((reply, _)) => {
                let decoupled =
                    reply.config.and_then(|c| c.model_transaction_policy).is_some_and(|p| p.decoupled);
                if self.policies.len() >= MAX_POLICIES {
                    self.policies.clear();
                }
                self.policies.insert(key, (decoupled, now));
                decoupled
            }
            Err(_) => false,
        }
    }

    /// Forwards one encoded request as a one-request ModelStreamInfer to a replica and yields
    /// the node's responses as they come. Retries (another replica) only before the first
    /// response; afterwards a broken call ends with [`Relayed::Failed`]. Dropping the stream
    /// cancels the call.
    pub fn stream_parsed(
        self: &Arc<Self>,
        head: InferHead,
        metadata: MetadataMap,
        body: Bytes,
        caller: Option<tern_edge::Principal>,
    ) -> BoxStream<'static, Relayed> {
        let this = self.clone();
        let open = async move {
            let span = route_span(&head.model_name, &head.model_version, &metadata);
            let opened =
                this.open_stream(&head, metadata, body, caller.as_ref()).instrument(span.clone()).await;
            record_outcome(&span, &opened);
            let code = opened.as_ref().map_or_else(ClientError::code, |_| Code::Ok);
            this.metrics.request(this.cluster.metric_label(&head.model_name), code);
            opened
        };
        stream::once(open)
            .flat_map(|opened| match opened {
                Err(e) => stream::iter([Relayed::Failed(e)]).boxed(),
                // The node ended the stream without a response (a decoupled model may).
                Ok(Opened { first: None, .. }) => stream::empty().boxed(),
                Ok(Opened { first: Some(first), upstream, outstanding }) => {
                    let rest = stream::unfold(Some((upstream, outstanding)), |state| async move {
                        let (mut upstream, outstanding) = state?;
                        match upstream.message().await {
                            Ok(Some(bytes)) => {
                                Some((Relayed::Upstream(bytes), Some((upstream, outstanding))))
                            }
                            Ok(None) => None,
                            Err(status) => Some((Relayed::Failed(ClientError::from(status)), None)),
                        }
                    });
                    stream::iter([Relayed::Upstream(first)]).chain(rest).boxed()
                }
            })
            .boxed()
    }

    /// Authorizes, picks a replica (sticky for a sequence), opens the stream call and waits
    /// for its first message, retrying on another replica as [`Forwarder::forward`] allows.
    async fn open_stream(
        &self,
        head: &InferHead,
        metadata: MetadataMap,
        body: Bytes,
        caller: Option<&tern_edge::Principal>,
    ) -> Result<Opened, ClientError> {
        let model = head.model_name.as_str();
        self.forward_inference(head, metadata, body, caller, |node, metadata, body| async move {
            let started = Instant::now();
            let outstanding = node.begin(model);
            let mut upstream = node.client().stream_raw(metadata, body).await?;
            let first = upstream.message().await.map_err(ClientError::from)?;
            // The upstream latency of a stream call: until its first response.
            self.metrics.upstream(&node.addr, started.elapsed());
            Ok(Opened { first, upstream, outstanding })
        })
        .await
    }
}

/// What one request of a client stream reports to [`StreamRelay`].
enum Event {
    /// Whether its model is decoupled (its responses are not ordered with the others').
    Policy(bool),
    Response(RawMessage),
    /// No more responses.
    End,
}

/// One request of a client stream that has not finished.
struct Slot {
    index: u64,
    /// `None` until known: ordered until then.
    decoupled: Option<bool>,
    /// Responses held for order (plain requests).
    held: Vec<RawMessage>,
    done: bool,
}

/// The response stream of one client's ModelStreamInfer: reads the client's requests, runs up
/// to [`STREAM_CONCURRENCY`] of them at once, and merges their responses (see the module
/// documentation for the order).
pub struct StreamRelay {
    forwarder: Arc<Forwarder>,
    metadata: MetadataMap,
    caller: Option<tern_edge::Principal>,
    /// The client's requests; `None` once they ended (or failed).
    incoming: Option<Streaming<Bytes>>,
    /// The client's stream failed: sent once every request before it is answered.
    failed: Option<Status>,
    next_index: u64,
    running: SelectAll<BoxStream<'static, (u64, Event)>>,
    slots: VecDeque<Slot>,
    ready: VecDeque<RawMessage>,
}

impl StreamRelay {
    pub fn new(
        forwarder: Arc<Forwarder>,
        metadata: MetadataMap,
        caller: Option<tern_edge::Principal>,
        incoming: Streaming<Bytes>,
    ) -> StreamRelay {
        StreamRelay {
            forwarder,
            metadata,
            caller,
            incoming: Some(incoming),
            failed: None,
            next_index: 0,
            running: SelectAll::new(),
            slots: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    /// Starts one request of the stream.
    fn start(&mut self, body: Bytes) {
        let index = self.next_index;
        self.next_index += 1;
        self.slots.push_back(Slot { index, decoupled: None, held: Vec::new(), done: false });
        let head = match InferHead::parse(&body) {
            Ok(head) => head,
            Err(e) => {
                let events =
                    [Event::Policy(false), Event::Response(stream_error(e.message(), "", "")), Event::End];
                self.running.push(stream::iter(events.map(move |e| (index, e))).boxed());
                return;
            }
        };
        let (forwarder, metadata, caller) =
            (self.forwarder.clone(), self.metadata.clone(), self.caller.clone());
        let request = stream::once(async move {
            let decoupled = forwarder.is_decoupled(&head, caller.as_ref()).await;
            let responses = if decoupled {
                let (model, id) = (head.model_name.clone(), head.id.clone());
                forwarder
                    .stream_parsed(head, metadata, body, caller)
                    .map(move |relayed| match relayed {
                        Relayed::Upstream(bytes) => Event::Response(RawMessage::from(bytes)),
                        Relayed::Failed(e) => Event::Response(stream_error(e.message(), &model, &id)),
                    })
                    .boxed()
            } else {
                stream::once(async move {
                    Event::Response(
                        match forwarder.infer_parsed(&head, metadata, body, caller.as_ref()).await {
                            Ok(reply) => stream_response(reply.into_inner()),
                            Err(e) => stream_error(e.message(), &head.model_name, &head.id),
                        },
                    )
                })
                .boxed()
            };
            stream::iter([Event::Policy(decoupled)]).chain(responses).chain(stream::iter([Event::End]))
        })
        .flatten()
        .map(move |event| (index, event));
        self.running.push(request.boxed());
    }

    fn on_event(&mut self, index: u64, event: Event) {
        let Some(slot) = self.slots.iter_mut().find(|s| s.index == index) else { return };
        match event {
            Event::Policy(decoupled) => slot.decoupled = Some(decoupled),
            Event::Response(message) if slot.decoupled == Some(true) => self.ready.push_back(message),
            Event::Response(message) => slot.held.push(message),
            Event::End => slot.done = true,
        }
        // Release finished requests: a plain one once every plain one before it is released.
        let mut blocked = false;
        let ready = &mut self.ready;
        self.slots.retain_mut(|slot| {
            let decoupled = slot.decoupled == Some(true);
            if slot.done && (decoupled || !blocked) {
                ready.extend(slot.held.drain(..));
                return false;
            }
            blocked |= !decoupled;
            true
        });
    }
}

impl Stream for StreamRelay {
    type Item = Result<RawMessage, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(message) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(message)));
            }
            let mut started = false;
            while this.slots.len() < STREAM_CONCURRENCY {
                let Some(incoming) = this.incoming.as_mut() else { break };
                match incoming.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(body))) => {
                        this.start(body);
                        started = true;
                    }
                    // The client's stream broke (or sent a message over the limit): no more
                    // requests; its status ends ours once the requests before it are answered.
                    Poll::Ready(Some(Err(e))) => {
                        this.failed = Some(tern_edge::transport_limits::message_status(e));
                        this.incoming = None;
                    }
                    Poll::Ready(None) => this.incoming = None,
                    Poll::Pending => break,
                }
            }
            if let Poll::Ready(Some((index, event))) = this.running.poll_next_unpin(cx) {
                this.on_event(index, event);
                continue;
            }
            if !this.ready.is_empty() || started {
                continue;
            }
            if this.incoming.is_none() && this.slots.is_empty() {
                return Poll::Ready(this.failed.take().map(Err));
            }
            return Poll::Pending;
        }
    }
}

/// A node's stream response as [`StreamOne`](tern_edge::triton::StreamOne) yields it: the
/// response, or its `error_message` as a status. The node words a failed request as text only;
/// its code is not on the wire, so the status is UNKNOWN (HTTP 400, as Triton maps UNKNOWN),
/// unless the node says INVALID_ARGUMENT etc. in the `tern_error_code` response parameter.
pub fn stream_one_item(bytes: Bytes) -> Result<pb::ModelInferResponse, Status> {
    let decoded = pb::ModelStreamInferResponse::decode(bytes)
        .map_err(|e| Status::internal(format!("malformed ModelStreamInferResponse from a node: {e}")))?;
    let response = decoded.infer_response.unwrap_or_default();
    if decoded.error_message.is_empty() {
        return Ok(response);
    }
    let code = match response.parameters.get(ERROR_CODE_PARAMETER).and_then(|p| p.parameter_choice.as_ref()) {
        Some(pb::infer_parameter::ParameterChoice::Int64Param(c)) => {
            i32::try_from(*c).map(Code::from_i32).unwrap_or(Code::Unknown)
        }
        _ => Code::Unknown,
    };
    Err(Status::new(code, decoded.error_message))
}

/// The response parameter a node may set on a failed stream request's response to carry the
/// gRPC code of the failure (Triton's stream has only the message).
pub const ERROR_CODE_PARAMETER: &str = "tern_error_code";
