//! Text generation on a decoupled language model over ModelStreamInfer with the inputs of
//! Triton's generate extension (`text_input`, `max_tokens`, `temperature`, ...): text pieces
//! as they are produced, then a summary with `finish_reason` and the token counts the final
//! response carries.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{Client, ClientError, InferRequest, InferResult, InferStream, InputTensor};

/// Sampling and stopping; `None` leaves the model's default.
#[derive(Debug, Clone, Default)]
pub struct GenerateParams {
    pub max_tokens: Option<i32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub ignore_eos: Option<bool>,
    /// `Some(false)`: one response with all the text instead of one per token.
    pub stream: Option<bool>,
    /// The request id responses echo.
    pub id: Option<String>,
}

impl GenerateParams {
    /// The request for `prompt` on `model`.
    pub fn request(&self, model: &str, prompt: &str) -> Result<InferRequest, ClientError> {
        let mut request = InferRequest::new(model).input(InputTensor::bytes("text_input", &[1], &[prompt])?);
        if let Some(id) = &self.id {
            request = request.id(id.clone());
        }
        if let Some(v) = self.max_tokens {
            request = request.input(InputTensor::new("max_tokens", &[1], &[v])?);
        }
        if let Some(v) = self.temperature {
            request = request.input(InputTensor::new("temperature", &[1], &[v])?);
        }
        if let Some(v) = self.top_p {
            request = request.input(InputTensor::new("top_p", &[1], &[v])?);
        }
        if let Some(v) = self.top_k {
            request = request.input(InputTensor::new("top_k", &[1], &[v])?);
        }
        if let Some(v) = self.seed {
            request = request.input(InputTensor::new("seed", &[1], &[v])?);
        }
        if !self.stop.is_empty() {
            request = request.input(InputTensor::bytes("stop", &[self.stop.len() as i64], &self.stop)?);
        }
        if let Some(v) = self.ignore_eos {
            request = request.input(InputTensor::new("ignore_eos", &[1], &[v])?);
        }
        if let Some(v) = self.stream {
            request = request.input(InputTensor::new("stream", &[1], &[v])?);
        }
        Ok(request)
    }
}

/// What a generation yields.
#[derive(Debug, Clone)]
pub enum GenerateEvent {
    /// New text (one response's `text_output`).
    Text(String),
    /// The end: always the last event.
    Done(GenerateSummary),
}

/// How a generation ended.
#[derive(Debug, Clone)]
pub struct GenerateSummary {
    /// All the text, the pieces joined.
    pub text: String,
    /// `stop`, `length`, ... (the final response's `finish_reason`).
    pub finish_reason: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    /// The final response itself.
    pub response: InferResult,
}

/// A running generation: a stream of [`GenerateEvent`]s. Dropping it cancels the generation
/// (the server sees the client go away).
pub struct Generation {
    responses: InferStream,
    /// Holds the request stream open until the final response (so the call is never
    /// half-closed early through a router).
    requests: Option<mpsc::Sender<InferRequest>>,
    text: String,
    pending: VecDeque<Result<GenerateEvent, ClientError>>,
    done: bool,
}

impl Client {
    /// Generates text for `prompt` on the decoupled language model `model`.
    pub async fn generate(
        &self,
        model: &str,
        prompt: &str,
        params: &GenerateParams,
    ) -> Result<Generation, ClientError> {
        let request = params.request(model, prompt)?;
        let (requests_tx, requests_rx) = mpsc::channel(1);
        requests_tx
            .try_send(request)
            .map_err(|_| ClientError::Invalid("request channel full; this is a bug".into()))?;
        let responses = self.stream(ReceiverStream::new(requests_rx)).await?;
        Ok(Generation {
            responses,
            requests: Some(requests_tx),
            text: String::new(),
            pending: VecDeque::new(),
            done: false,
        })
    }

    /// Generates text and waits for the end.
    pub async fn generate_text(
        &self,
        model: &str,
        prompt: &str,
        params: &GenerateParams,
    ) -> Result<GenerateSummary, ClientError> {
        use futures::StreamExt;
        let mut generation = self.generate(model, prompt, params).await?;
        while let Some(event) = generation.next().await {
            if let GenerateEvent::Done(summary) = event? {
                return Ok(summary);
            }
        }
        Err(ClientError::Response("the generation ended without a final response".into()))
    }
}

impl Generation {
    fn take(&mut self, response: InferResult) -> Result<(), ClientError> {
        let piece = match response.output("text_output") {
            Ok(output) => output.to_strings()?.concat(),
            Err(_) => String::new(),
        };
        if !piece.is_empty() {
            self.text.push_str(&piece);
            self.pending.push_back(Ok(GenerateEvent::Text(piece)));
        }
        if response.is_final() {
            let finish_reason = match response.output("finish_reason") {
                Ok(output) => output.to_strings()?.into_iter().next(),
                Err(_) => None,
            };
            let summary = GenerateSummary {
                text: std::mem::take(&mut self.text),
                finish_reason,
                prompt_tokens: response.int_parameter("prompt_tokens"),
                completion_tokens: response.int_parameter("completion_tokens"),
                response,
            };
            self.pending.push_back(Ok(GenerateEvent::Done(summary)));
            self.done = true;
            self.requests = None;
        }
        Ok(())
    }
}

impl Stream for Generation {
    type Item = Result<GenerateEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Poll::Ready(Some(event));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match self.responses.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(response))) => {
                    if let Err(e) = self.take(response) {
                        self.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    // An error ends a single-request generation.
                    self.done = true;
                    self.requests = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(ClientError::Response(
                        "the stream ended before the final response".into(),
                    ))));
                }
            }
        }
    }
}
