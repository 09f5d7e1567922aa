//! Streaming inference: ModelStreamInfer, and [`StreamOne`] (one request's responses without a
//! gRPC stream around them, for the HTTP generate routes).
//!
//! As in Triton (server `src/grpc/stream_infer_handler.cc`): the responses of a model that is
//! not decoupled leave in the order their requests came (Triton queues them on the stream's
//! context, `EnqueueForResponse`); a decoupled model's responses are written as they are ready,
//! so one long generation never holds up the stream's other requests, while the responses of
//! one request stay in order. Every response carries the parameter `triton_final_response`
//! (`StreamInferResponseComplete`: true on the last response of its request), a failed request
//! is reported in the stream's `error_message` with its id, model name and version, and the
//! stream goes on.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::{BoxStream, FuturesOrdered, SelectAll};
use futures::{FutureExt, Stream, StreamExt};
use tern_edge::triton::{InferResponses, StreamOne};
use tern_edge::{Principal, authorize_model};
use tern_proto::inference as pb;
use tonic::Status;
use tracing::Instrument;

use crate::service::{NodeService, request_span};

/// How many requests of one stream run at once.
pub(crate) const STREAM_CONCURRENCY: usize = 64;

/// The response parameter that marks the last response of a request.
pub const FINAL_RESPONSE: &str = "triton_final_response";

/// The response parameter (INT64) carrying the gRPC code of a failed request's error response
/// on a stream: Triton's stream has only `error_message`, so without it a relay (the router)
/// would answer every in-stream failure as UNKNOWN (HTTP 400) instead of, say,
/// RESOURCE_EXHAUSTED (429).
pub const ERROR_CODE: &str = "tern_error_code";

/// `parameters` with `triton_final_response` set to `last`.
pub(crate) fn mark_final(parameters: &mut HashMap<String, pb::InferParameter>, last: bool) {
    parameters.insert(
        FINAL_RESPONSE.to_string(),
        pb::InferParameter { parameter_choice: Some(pb::infer_parameter::ParameterChoice::BoolParam(last)) },
    );
}

/// How a request's responses leave a stream.
enum Order {
    /// In request order among the stream's other such requests (a model that is not decoupled,
    /// or a request refused before it reached a model).
    Ordered(futures::future::BoxFuture<'static, Result<pb::ModelInferResponse, Status>>),
    /// As they come (a decoupled model), in order within the request.
    AsReady(InferResponses),
}

impl NodeService {
    /// One request's responses and how they leave a stream. `caller` is authorized here for
    /// the model, as ModelInfer authorizes it.
    fn one_request(
        &self,
        req: pb::ModelInferRequest,
        metadata: &tonic::metadata::MetadataMap,
        caller: Option<&Principal>,
    ) -> Order {
        let span = request_span(&req);
        tern_telemetry::set_parent_from_metadata(&span, metadata);
        if let Err(denied) = authorize_model(caller, &req.model_name) {
            return Order::Ordered(futures::future::ready(Err(denied)).boxed());
        }
        if let Ok(model) = self.state().models.get(&req.model_name, &req.model_version)
            && model.decoupled()
        {
            return Order::AsReady(self.generate(model, req, span));
        }
        let service = self.clone();
        Order::Ordered(
            async move {
                let mut response = service.infer(req).await?;
                mark_final(&mut response.parameters, true);
                Ok(response)
            }
            .instrument(span)
            .boxed(),
        )
    }

    /// ModelStreamInfer's responses for a stream of requests.
    pub(crate) fn stream_responses(
        &self,
        requests: tonic::Streaming<pb::ModelInferRequest>,
        metadata: tonic::metadata::MetadataMap,
        caller: Option<Principal>,
    ) -> tern_edge::triton::StreamInferStream {
        Box::pin(StreamResponses {
            service: self.clone(),
            metadata,
            caller,
            requests: Some(requests),
            ordered: FuturesOrdered::new(),
            as_ready: SelectAll::new(),
            ordered_first: true,
        })
    }
}

/// Counts one generation in [`crate::service::NodeState::in_flight`] while alive.
struct InFlightGeneration(std::sync::Arc<crate::service::NodeState>);

impl InFlightGeneration {
    fn enter(state: std::sync::Arc<crate::service::NodeState>) -> Self {
        state.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlightGeneration(state)
    }
}

impl Drop for InFlightGeneration {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl NodeService {
    /// One request to a decoupled (generative) model: its responses, the last one final. The
    /// stream holds the model version (an unload or reload waits for it) and the generation
    /// (dropping the stream, as a client's disconnect does, cancels the sequence).
    fn generate(
        &self,
        model: std::sync::Arc<tern_lifecycle::LoadedModel>,
        req: pb::ModelInferRequest,
        request_span: tracing::Span,
    ) -> InferResponses {
        let arrived = std::time::Instant::now();
        let span = tracing::info_span!(
            parent: &request_span,
            "generate",
            model = %model.name,
            version = %model.version_str,
            prompt_tokens = tracing::field::Empty,
            generated_tokens = tracing::field::Empty,
            finish_reason = tracing::field::Empty,
        );
        let in_flight = InFlightGeneration::enter(self.state().clone());
        let started = self.start_generation(&model, req, arrived, span.clone());
        let running = match started {
            Ok(running) => running,
            Err((status, reason)) => {
                model.scheduler.stats().record_failure(reason, arrived.elapsed());
                span.record("finish_reason", "error");
                tracing::debug!(parent: &span, error = %status.message(), "generation refused");
                return Box::pin(futures::stream::once(futures::future::ready(Err(status))));
            }
        };
        let responses =
            futures::stream::unfold((running, in_flight), |(mut running, in_flight)| async move {
                let span = running.span.clone();
                let next = running.next().instrument(span).await;
                next.map(|item| (item, (running, in_flight)))
            });
        Box::pin(responses)
    }

    /// Checks the request, turns it into a generation request and submits it to the engine.
    fn start_generation(
        &self,
        model: &std::sync::Arc<tern_lifecycle::LoadedModel>,
        req: pb::ModelInferRequest,
        arrived: std::time::Instant,
        span: tracing::Span,
    ) -> Result<crate::generate::Running, (Status, tern_core::FailureReason)> {
        use tern_core::FailureReason;
        let other = |e: tern_core::RequestError| (Status::from(e), FailureReason::Other);
        tern_core::shape_limits::check_request(&req, &self.state().limits.request).map_err(other)?;
        let parameters = req.parameters.clone();
        let validated = tern_core::validate_request(&model.io, req).map_err(other)?;
        let engine = crate::generate::engine_of(model).ok_or_else(|| {
            (
                Status::internal(format!("model '{}' has no generation engine", model.name)),
                FailureReason::Other,
            )
        })?;
        let parsed = crate::generate::parse_request(
            &model.name,
            &validated,
            &parameters,
            engine.search_defaults(),
            arrived,
        )
        .map_err(other)?;
        let generation = engine.submit(parsed.request).map_err(|e| {
            let reason = crate::generate::gen_failure(&e);
            (crate::generate::gen_status(&model.name, e), reason)
        })?;
        let metrics = model
            .generation_metrics
            .get_or_init(|| self.state().metrics.generation(&model.name, &model.version_str))
            .clone();
        Ok(crate::generate::Running {
            generation,
            builder: crate::generate::ResponseBuilder {
                model: model.clone(),
                id: validated.id,
                outputs: parsed.outputs,
            },
            stream: parsed.stream,
            progress: crate::generate::Progress { arrived, last_token: None, metrics },
            text: String::new(),
            ids: Vec::new(),
            done: false,
            span,
        })
    }
}

impl StreamOne for NodeService {
    fn stream_one(
        &self,
        request: pb::ModelInferRequest,
        metadata: tonic::metadata::MetadataMap,
        caller: Option<Principal>,
    ) -> InferResponses {
        match self.one_request(request, &metadata, caller.as_ref()) {
            Order::Ordered(response) => Box::pin(response.into_stream()),
            Order::AsReady(responses) => responses,
        }
    }
}

/// What the stream says about one response: the response itself, or the failure reported in
/// `error_message` with the request's id, model name and version (Triton clears the rest and
/// sets these, `StreamInferResponseComplete`), marked as the request's last response.
fn stream_response(
    result: Result<pb::ModelInferResponse, Status>,
    request: &RequestHead,
) -> pb::ModelStreamInferResponse {
    match result {
        Ok(response) => {
            pb::ModelStreamInferResponse { error_message: String::new(), infer_response: Some(response) }
        }
        Err(status) => {
            let mut response = pb::ModelInferResponse {
                model_name: request.model_name.clone(),
                model_version: request.model_version.clone(),
                id: request.id.clone(),
                ..Default::default()
            };
            mark_final(&mut response.parameters, true);
            response.parameters.insert(
                ERROR_CODE.to_string(),
                pb::InferParameter {
                    parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(
                        status.code() as i64
                    )),
                },
            );
            pb::ModelStreamInferResponse {
                error_message: status.message().to_owned(),
                infer_response: Some(response),
            }
        }
    }
}

/// The fields of a request its error response repeats.
#[derive(Clone)]
struct RequestHead {
    model_name: String,
    model_version: String,
    id: String,
}

impl RequestHead {
    fn of(req: &pb::ModelInferRequest) -> RequestHead {
        RequestHead {
            model_name: req.model_name.clone(),
            model_version: req.model_version.clone(),
            id: req.id.clone(),
        }
    }
}

type Answer = Result<pb::ModelStreamInferResponse, Status>;

/// The responses of one ModelStreamInfer call: reads up to [`STREAM_CONCURRENCY`] requests
/// ahead; responses of plain models leave in request order, those of decoupled models as ready.
struct StreamResponses {
    service: NodeService,
    metadata: tonic::metadata::MetadataMap,
    caller: Option<Principal>,
    /// `None` once the client half-closed (or the stream failed).
    requests: Option<tonic::Streaming<pb::ModelInferRequest>>,
    ordered: FuturesOrdered<futures::future::BoxFuture<'static, Answer>>,
    as_ready: SelectAll<BoxStream<'static, Answer>>,
    /// Which of the two is polled first next time (so neither starves the other).
    ordered_first: bool,
}

impl StreamResponses {
    fn running(&self) -> usize {
        self.ordered.len() + self.as_ready.len()
    }

    fn start(&mut self, msg: Result<pb::ModelInferRequest, Status>) {
        let req = match msg {
            Ok(req) => req,
            Err(status) => {
                // A broken request stream ends the call, after the responses before it.
                let status = crate::request_limits::message_status(status);
                self.ordered.push_back(futures::future::ready(Err(status)).boxed());
                return;
            }
        };
        let head = RequestHead::of(&req);
        match self.service.one_request(req, &self.metadata, self.caller.as_ref()) {
            Order::Ordered(response) => {
                self.ordered.push_back(response.map(move |r| Ok(stream_response(r, &head))).boxed());
            }
            Order::AsReady(responses) => {
                self.as_ready.push(responses.map(move |r| Ok(stream_response(r, &head))).boxed());
            }
        }
    }

    fn poll_ordered(&mut self, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        if self.ordered.is_empty() {
            return Poll::Pending;
        }
        self.ordered.poll_next_unpin(cx)
    }

    fn poll_as_ready(&mut self, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        if self.as_ready.is_empty() {
            return Poll::Pending;
        }
        self.as_ready.poll_next_unpin(cx)
    }
}

impl Stream for StreamResponses {
    type Item = Answer;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        let this = &mut *self;
        loop {
            // Take new requests while there is room.
            while this.running() < STREAM_CONCURRENCY {
                let Some(requests) = this.requests.as_mut() else { break };
                match requests.poll_next_unpin(cx) {
                    Poll::Ready(Some(msg)) => {
                        let failed = msg.is_err();
                        this.start(msg);
                        if failed {
                            this.requests = None;
                        }
                    }
                    Poll::Ready(None) => this.requests = None,
                    Poll::Pending => break,
                }
            }
            this.ordered_first = !this.ordered_first;
            let mut emptied = false;
            for ordered in [this.ordered_first, !this.ordered_first] {
                let polled = if ordered { this.poll_ordered(cx) } else { this.poll_as_ready(cx) };
                match polled {
                    Poll::Ready(Some(Err(status))) => {
                        // The call ends here (a broken request stream): nothing more is read.
                        this.requests = None;
                        this.ordered = FuturesOrdered::new();
                        this.as_ready = SelectAll::new();
                        return Poll::Ready(Some(Err(status)));
                    }
                    Poll::Ready(Some(answer)) => {
                        // A finished request made room: more requests may be waiting.
                        if this.requests.is_some() && this.running() < STREAM_CONCURRENCY {
                            cx.waker().wake_by_ref();
                        }
                        return Poll::Ready(Some(answer));
                    }
                    // The last of its requests ended (it is empty now, and skipped).
                    Poll::Ready(None) => emptied = true,
                    Poll::Pending => {}
                }
            }
            if this.requests.is_none() && this.running() == 0 {
                return Poll::Ready(None);
            }
            if !emptied {
                return Poll::Pending;
            }
        }
    }
}
