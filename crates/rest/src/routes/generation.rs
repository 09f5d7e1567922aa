//! Triton's generate extension routes (`/generate`, `/generate_stream`).

use std::convert::Infallible;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, header};
use serde_json::Value;
use tern_proto::inference as pb;

use super::{Service, Shared, authorize, compressed_json, grpc_request, trace_metadata};
use crate::body;
use crate::error::RestError;
use crate::generate::{self, InputSpec};

/// `/generate` and `/generate_stream` (Triton's generate extension, see [`generate`]): the
/// model's inputs from its metadata, the request through [`StreamOne`](tern_edge::triton::StreamOne) (authorized as
/// ModelStreamInfer), and its responses as one JSON object or as Server-Sent Events.
pub(super) async fn generate_route<T: Service>(
    s: &Shared<T>,
    headers: &HeaderMap,
    name: &str,
    version: &str,
    body: Body,
    streaming: bool,
) -> Result<Response, RestError> {
    let caller = authorize(s, "ModelStreamInfer", headers)?;
    // The inputs' names, datatypes and shapes, read with the same principal: a token that may
    // run the model may read its inputs for this (Triton reads them under the inference
    // restriction too, `ModelInputMetadata`).
    let request = pb::ModelMetadataRequest { name: name.to_string(), version: version.to_string() };
    let metadata =
        s.service.model_metadata(grpc_request(request, headers, caller.clone())).await?.into_inner();
    let body = body::read(headers, body, s.max_body).await?;
    let request = generate::parse_request(
        name,
        version,
        &body,
        &InputSpec::from_metadata(&metadata),
        streaming,
        s.max_body,
    )?;
    drop(body);
    let mut responses = s.service.stream_one(request, trace_metadata(headers), caller);
    if !streaming {
        // One response, or Triton's error. Triton sets the status with the first response
        // (`InferResponseComplete`: 200 when it succeeded, or a final flags-only one) and, at
        // the end, answers anything but exactly one response with its error as the body
        // (`SendChunkResponse`); a failed first response is its own error with its status. A
        // second response stops the generation here (dropping the stream cancels it).
        let not_one = || RestError::new(http::StatusCode::OK, generate::NOT_ONE_RESPONSE);
        let mut one = None;
        while let Some(response) = responses.next().await {
            let response = match response {
                Ok(response) => response,
                Err(_) if one.is_some() => return Err(not_one()),
                Err(status) => return Err(status.into()),
            };
            if generate::is_flags_only(&response) {
                continue;
            }
            if one.is_some() {
                return Err(not_one());
            }
            one = Some(response);
        }
        let response = one.ok_or_else(not_one)?;
        let json = serde_json::to_vec(&Value::Object(generate::response_json(&response)?))
            .map_err(|e| RestError::internal(e.to_string()))?;
        return compressed_json(headers, Bytes::from(json)).await;
    }
    // A request refused before inference begins is a plain JSON error with its status (Triton:
    // `HandleGenerate` answers a failed `InferAsync` so). A failed first response from the
    // model is the stream's first event, sent with the error's status (Triton's
    // `InferResponseComplete` takes the status from the first response, `AddErrorJson` writes
    // it as an SSE event). After that, an error event ends the stream.
    let first = match responses.next().await {
        Some(Err(status)) if !generate::failed_in_inference(status.code()) => return Err(status.into()),
        Some(Err(status)) => {
            let mut response = Response::new(Body::from(generate::error_event(status.message())));
            *response.status_mut() = crate::error::http_status(status.code());
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
            return Ok(response);
        }
        first => first,
    };
    let events = futures::stream::unfold((first, Some(responses)), |(mut pending, rest)| async move {
        let mut rest = rest?;
        loop {
            let item = match pending.take() {
                Some(item) => item,
                None => rest.next().await?,
            };
            match item {
                Ok(r) if generate::is_flags_only(&r) => continue,
                Ok(r) => {
                    return Some((Ok::<_, Infallible>(generate::response_event(&r)), (None, Some(rest))));
                }
                // Nothing follows an error: the stream (and the generation) ends.
                Err(status) => return Some((Ok(generate::error_event(status.message())), (None, None))),
            }
        }
    });
    // The body owns the response stream: a client that goes away drops the body, and with it
    // the stream, which cancels the request where it runs.
    let mut response = Response::new(Body::from_stream(events));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    Ok(response)
}
