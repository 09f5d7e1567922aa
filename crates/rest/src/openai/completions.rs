//! `/v1/completions` and `/v1/chat/completions`: a generation answered whole or streamed.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, header};
use tern_edge::triton::InferResponses;
use tern_proto::inference as pb;

use super::engine::finish_reason;
use super::models::facts;
use super::{
    DONE, Framer, GENAI_BACKEND, Kind, OpenAiError, Usage, header_timeout, infer_request, json_response,
    meter_tokens, parse_generate, piece, sse,
};
use crate::body;
use crate::routes::{Service, Shared, authorize, trace_metadata};

pub(super) async fn generate<T: Service>(
    s: &Shared<T>,
    headers: &HeaderMap,
    body: Body,
    kind: Kind,
) -> Result<Response, OpenAiError> {
    let caller = authorize(s, "ModelStreamInfer", headers)?;
    let bytes = body::read(headers, body, s.max_body).await?;
    let mut r = parse_generate(kind, &bytes)?;
    drop(bytes);
    let timeout = header_timeout(headers, r.stream)?;
    let facts = facts(s, headers, &caller, &r.model).await?;
    if !facts.generative {
        return Err(OpenAiError::invalid(
            "model",
            format!(
                "model '{}' is not a generative model: the completions APIs serve models with backend \
                 '{GENAI_BACKEND}'",
                r.model
            ),
        ));
    }
    let prompt = match kind {
        Kind::Completion => r.prompt.clone(),
        Kind::Chat => {
            if facts.chat_template.is_none() {
                return Err(OpenAiError::invalid(
                    "model",
                    format!(
                        "model '{}' has no chat template (tokenizer_config.json 'chat_template', or the \
                         config parameter 'chat_template'): use /v1/completions",
                        r.model
                    ),
                ));
            }
            let (model, facts, messages) = (r.model.clone(), facts.clone(), std::mem::take(&mut r.messages));
            // Compiling (once per model) and rendering are CPU work of unbounded size: off the
            // async workers.
            tokio::task::spawn_blocking(move || {
                let template = facts.compiled_chat(&model).unwrap_or_else(|| {
                    Err(OpenAiError::internal(format!("model '{model}' has no chat template")))
                })?;
                template.render(&model, &facts.bos_token, &facts.eos_token, &messages)
            })
            .await
            .map_err(|e| OpenAiError::internal(format!("chat template task failed: {e}")))??
        }
    };
    let request = infer_request(&r, &prompt, timeout);
    let mut responses = s.service.stream_one(request, trace_metadata(headers), caller.clone());
    let mut framer = Framer::new(kind, &r.model, r.include_usage);
    if !r.stream {
        // The whole answer; a client that goes away drops this future and the stream with it.
        let (mut text, mut tokens, mut prompt_tokens, mut finish) = (String::new(), 0u64, 0u64, None);
        while let Some(response) = responses.next().await {
            let p = piece(&response?)?;
            meter_tokens(&r.model, caller.as_ref(), p.tokens)?;
            text.push_str(&p.text);
            tokens += p.tokens as u64;
            if p.last {
                prompt_tokens = p.prompt_tokens.unwrap_or(0);
                finish = Some(finish_reason(p.finish.as_deref().unwrap_or("stop"))?);
                break;
            }
        }
        let finish =
            finish.ok_or_else(|| OpenAiError::internal("the generation ended without a final response"))?;
        let usage = Usage { prompt_tokens, completion_tokens: tokens };
        return json_response(&framer.whole(&text, finish, usage));
    }
    // An error before the first piece is a plain error with its status; after it, an error
    // event ends the stream.
    let first = match responses.next().await {
        Some(Err(status)) => return Err(status.into()),
        first => first,
    };
    let mut out = VecDeque::new();
    if kind == Kind::Chat {
        // OpenAI's first chat chunk carries the role and empty content.
        out.push_back(sse(&framer.chunk("", None)));
    }
    let relay =
        Relay { model: r.model.clone(), caller, framer, responses: Some(responses), first, out, tokens: 0 };
    let events = futures::stream::unfold(relay, |mut relay| async move {
        let bytes = relay.next().await?;
        Some((Ok::<_, Infallible>(bytes), relay))
    });
    // The body owns the stream: a client that goes away drops it, which cancels the generation.
    let mut response = Response::new(Body::from_stream(events));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// Relays a generation's responses as OpenAI chunks.
struct Relay {
    model: String,
    caller: Option<tern_edge::Principal>,
    framer: Framer,
    /// `None` once the generation ended (dropped: nothing more runs).
    responses: Option<InferResponses>,
    first: Option<Result<pb::ModelInferResponse, tonic::Status>>,
    out: VecDeque<Bytes>,
    tokens: u64,
}

impl Relay {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.out.pop_front() {
                return Some(bytes);
            }
            let responses = self.responses.as_mut()?;
            let item = match self.first.take() {
                Some(item) => Some(item),
                None => responses.next().await,
            };
            match item.map(|r| r.map_err(OpenAiError::from).and_then(|r| piece(&r))) {
                Some(Ok(p)) => {
                    if let Err(e) = meter_tokens(&self.model, self.caller.as_ref(), p.tokens) {
                        self.fail(e);
                        continue;
                    }
                    self.tokens += p.tokens as u64;
                    if !p.last {
                        if !p.text.is_empty() {
                            self.out.push_back(sse(&self.framer.chunk(&p.text, None)));
                        }
                        continue;
                    }
                    self.responses = None;
                    match finish_reason(p.finish.as_deref().unwrap_or("stop")) {
                        Ok(finish) => {
                            self.out.push_back(sse(&self.framer.chunk(&p.text, Some(finish))));
                            if self.framer.include_usage {
                                let usage = Usage {
                                    prompt_tokens: p.prompt_tokens.unwrap_or(0),
                                    completion_tokens: self.tokens,
                                };
                                self.out.push_back(sse(&self.framer.usage_chunk(usage)));
                            }
                            self.out.push_back(Bytes::from_static(DONE));
                        }
                        Err(e) => self.fail(e),
                    }
                }
                Some(Err(e)) => self.fail(e),
                None => self.fail(OpenAiError::internal("the generation ended without a final response")),
            }
        }
    }

    /// An error event, then the end of the stream (the generation is dropped).
    fn fail(&mut self, e: OpenAiError) {
        self.responses = None;
        self.out.push_back(sse(&e.body()));
        self.out.push_back(Bytes::from_static(DONE));
    }
}
