//! The routes of Triton's HTTP front end (server src/http_server.cc, `HTTPAPIServer::Handle`),
//! each a translation to one method of the gRPC service.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Map, Value};
use tern_proto::inference::{self as pb, grpc_inference_service_server::GrpcInferenceService};

use crate::body::{self, Chunks};
use crate::error::RestError;
use crate::generate::{self, InputSpec};
use crate::infer;
use crate::protojson::to_json;
use tern_edge::triton::StreamOne;

/// ModelInfer's refusal of a decoupled model (Triton's gRPC words), and the infer route's.
const DECOUPLED_GRPC: &str = "ModelInfer RPC doesn't support models with decoupled transaction policy";
const DECOUPLED_HTTP: &str = "HTTP end point doesn't support models with decoupled transaction policy";

/// Triton's header giving the length of the JSON part of a body with binary tensor data.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

pub(crate) struct Shared<T> {
    pub(crate) service: Arc<T>,
    pub(crate) auth: Option<Arc<tern_edge::Authenticator>>,
    pub(crate) max_body: usize,
    /// The OpenAI routes' cache of model facts (chat template, embedding shape).
    pub(crate) openai: crate::openai::FactsCache,
    /// Unix seconds the app started: `/v1/models`' `created`.
    pub(crate) created: u64,
}

/// What the HTTP routes call: the gRPC service, and [`StreamOne`] for the generate extension.
pub trait Service: GrpcInferenceService + StreamOne {}

impl<T: GrpcInferenceService + StreamOne> Service for T {}

/// The HTTP application serving `service`.
pub fn app<T: Service>(
    service: Arc<T>,
    auth: Option<Arc<tern_edge::Authenticator>>,
    max_body: usize,
) -> axum::Router {
    let created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let shared = Arc::new(Shared { service, auth, max_body, openai: Default::default(), created });
    axum::Router::new().fallback(move |req: axum::extract::Request| {
        let shared = shared.clone();
        async move {
            let (parts, body) = req.into_parts();
            match route(&shared, &parts.method, parts.uri.path(), &parts.headers, body).await {
                Ok(response) => response,
                Err(e) => e.into_response(),
            }
        }
    })
}

/// `%XX` escapes of a path segment decoded (a model name may hold any character).
pub(crate) fn decode_segment(s: &str) -> Result<String, RestError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            let byte = hex
                .ok_or_else(|| RestError::bad_request(format!("malformed %-escape in path segment '{s}'")))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| RestError::bad_request(format!("path segment '{s}' is not UTF-8")))
}

fn want(method: &Method, allowed: &Method) -> Result<(), RestError> {
    if method == allowed { Ok(()) } else { Err(RestError::method_not_allowed()) }
}

async fn route<T: Service>(
    s: &Shared<T>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, RestError> {
    // The OpenAI-compatible API answers in its own shape (errors included).
    if path == "/v1" || path.starts_with("/v1/") {
        return Ok(crate::openai::route(s, method, path, headers, body).await);
    }
    let not_found = || RestError::not_found(format!("Not Found: no route for {method} {path}"));
    let rest = path.strip_prefix("/v2").ok_or_else(not_found)?;
    let segments: Vec<String> =
        rest.split('/').skip(1).filter(|p| !p.is_empty()).map(decode_segment).collect::<Result<_, _>>()?;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        [] => {
            want(method, &Method::GET)?;
            let r = call(s, "ServerMetadata", headers, pb::ServerMetadataRequest {}, |svc, req| async move {
                svc.server_metadata(req).await
            })
            .await?;
            json(to_json(&r, "inference.ServerMetadataResponse", false)?)
        }
        ["health", kind @ ("live" | "ready")] => {
            want(method, &Method::GET)?;
            let ok = if *kind == "live" {
                call(s, "ServerLive", headers, pb::ServerLiveRequest {}, |svc, req| async move {
                    svc.server_live(req).await
                })
                .await?
                .live
            } else {
                call(s, "ServerReady", headers, pb::ServerReadyRequest {}, |svc, req| async move {
                    svc.server_ready(req).await
                })
                .await?
                .ready
            };
            // Triton answers 400 when not live or not ready (`HandleServerHealth`).
            Ok(if ok { StatusCode::OK } else { StatusCode::BAD_REQUEST }.into_response())
        }
        ["models", "stats"] => stats(s, method, headers, "", "").await,
        ["models", name, "versions", version, tail @ ..] => {
            model_route(s, method, headers, name, version, tail, body).await
        }
        ["models", name, tail @ ..] => model_route(s, method, headers, name, "", tail, body).await,
        ["repository", "index"] => {
            want(method, &Method::POST)?;
            let options = read_json_object(headers, body, s.max_body).await?;
            let ready = match options.get("ready") {
                None => false,
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| RestError::bad_request("Unable to parse 'ready': want true or false"))?,
            };
            let request = pb::RepositoryIndexRequest { repository_name: String::new(), ready };
            let r = call(s, "RepositoryIndex", headers, request, |svc, req| async move {
                svc.repository_index(req).await
            })
            .await?;
            let index = to_json(&r, "inference.RepositoryIndexResponse", true)?;
            json(index.get("models").cloned().unwrap_or(Value::Array(Vec::new())))
        }
        ["repository", "models", name, action @ ("load" | "unload")] => {
            want(method, &Method::POST)?;
            let options = read_json_object(headers, body, s.max_body).await?;
            let parameters = repository_parameters(name, &options)?;
            let model_name = name.to_string();
            if *action == "load" {
                let request =
                    pb::RepositoryModelLoadRequest { repository_name: String::new(), model_name, parameters };
                call(s, "RepositoryModelLoad", headers, request, |svc, req| async move {
                    svc.repository_model_load(req).await
                })
                .await?;
            } else {
                let request = pb::RepositoryModelUnloadRequest {
                    repository_name: String::new(),
                    model_name,
                    parameters,
                };
                call(s, "RepositoryModelUnload", headers, request, |svc, req| async move {
                    svc.repository_model_unload(req).await
                })
                .await?;
            }
            Ok(StatusCode::OK.into_response())
        }
        ["trace", "setting"] => trace_setting(s, method, headers, "", body).await,
        ["logging"] => log_settings(s, method, headers, body).await,
        _ => Err(not_found()),
    }
}

async fn model_route<T: Service>(
    s: &Shared<T>,
    method: &Method,
    headers: &HeaderMap,
    name: &str,
    version: &str,
    tail: &[&str],
    body: Body,
) -> Result<Response, RestError> {
    let (name_s, version_s) = (name.to_string(), version.to_string());
    match tail {
        [] => {
            want(method, &Method::GET)?;
            let request = pb::ModelMetadataRequest { name: name_s, version: version_s };
            let r = call(s, "ModelMetadata", headers, request, |svc, req| async move {
                svc.model_metadata(req).await
            })
            .await?;
            json(to_json(&r, "inference.ModelMetadataResponse", false)?)
        }
        ["ready"] => {
            want(method, &Method::GET)?;
            let request = pb::ModelReadyRequest { name: name_s, version: version_s };
            let r =
                call(s, "ModelReady", headers, request, |svc, req| async move { svc.model_ready(req).await })
                    .await?;
            if r.ready {
                Ok(StatusCode::OK.into_response())
            } else {
                // Triton's `HandleModelReady`.
                Err(RestError::bad_request("Model version not ready"))
            }
        }
        ["config"] => {
            want(method, &Method::GET)?;
            let request = pb::ModelConfigRequest { name: name_s, version: version_s };
            let r =
                call(
                    s,
                    "ModelConfig",
                    headers,
                    request,
                    |svc, req| async move { svc.model_config(req).await },
                )
                .await?;
            json(to_json(&r.config.unwrap_or_default(), "inference.ModelConfig", false)?)
        }
        ["stats"] => stats(s, method, headers, name, version).await,
        [kind @ ("generate" | "generate_stream")] => {
            want(method, &Method::POST)?;
            generate_route(s, headers, name, version, body, *kind == "generate_stream").await
        }
        ["infer"] => {
            want(method, &Method::POST)?;
            infer_route(s, headers, name, version, body).await
        }
        ["trace", "setting"] => trace_setting(s, method, headers, name, body).await,
        _ => Err(RestError::not_found(format!("Not Found: no model route '{}'", tail.join("/")))),
    }
}

async fn stats<T: Service>(
    s: &Shared<T>,
    method: &Method,
    headers: &HeaderMap,
    name: &str,
    version: &str,
) -> Result<Response, RestError> {
    want(method, &Method::GET)?;
    let request = pb::ModelStatisticsRequest { name: name.to_string(), version: version.to_string() };
    let r =
        call(
            s,
            "ModelStatistics",
            headers,
            request,
            |svc, req| async move { svc.model_statistics(req).await },
        )
        .await?;
    json(to_json(&r, "inference.ModelStatisticsResponse", false)?)
}

async fn infer_route<T: Service>(
    s: &Shared<T>,
    headers: &HeaderMap,
    name: &str,
    version: &str,
    body: Body,
) -> Result<Response, RestError> {
    let body = body::read(headers, body, s.max_body).await?;
    let header_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => {
            let text = v.to_str().unwrap_or("<not text>");
            let n = text.trim().parse::<usize>().map_err(|_| {
                RestError::bad_request(format!(
                    "Unable to parse Inference-Header-Content-Length, got: {text}"
                ))
            })?;
            if n > body.len() {
                return Err(RestError::bad_request(format!(
                    "Inference-Header-Content-Length {n} is over the body's {} bytes: the inference header size \
                     should be in range (0, {})",
                    body.len(),
                    body.len()
                )));
            }
            n
        }
    };
    let (request, kinds) = infer::parse_request(name, version, body, header_len, s.max_body)?;
    let response =
        call(s, "ModelInfer", headers, request, |svc, req| async move { svc.model_infer(req).await })
            .await
            .map_err(|mut e| {
            // Triton's HTTP words the refusal of a decoupled model its own way (`CheckTransactionPolicy`).
            if e.message == DECOUPLED_GRPC {
                e.message = DECOUPLED_HTTP.into();
            }
            e
        })?;
    let out = infer::build_response(response, &kinds)?;
    let has_binary = !out.binary.is_empty();
    let header_len = out.header.len();
    let mut parts = Vec::with_capacity(1 + out.binary.len());
    parts.push(Bytes::from(out.header));
    parts.extend(out.binary);
    let coding = body::accepted(headers);
    let mut response = match coding {
        Some(coding) => {
            let compressed = tokio::task::spawn_blocking(move || body::compress(coding, &parts))
                .await
                .map_err(|e| RestError::internal(format!("compression task failed: {e}")))?
                .map_err(|e| RestError::internal(format!("compression failed: {e}")))?;
            Response::new(Body::from(compressed))
        }
        None => Response::new(Body::new(Chunks::new(parts))),
    };
    let h = response.headers_mut();
    if has_binary {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        h.insert(HEADER_LENGTH, HeaderValue::from(header_len));
    } else {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some(coding) = coding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding.name()));
    }
    Ok(response)
}

/// Calls the gRPC service's `method` with `message`, authorized as the gRPC auth layer
/// authorizes that method, with the W3C trace context of the HTTP request.
async fn call<T, Req, Resp, F, Fut>(
    s: &Shared<T>,
    method: &str,
    headers: &HeaderMap,
    message: Req,
    f: F,
) -> Result<Resp, RestError>
where
    F: FnOnce(Arc<T>, tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let caller = authorize(s, method, headers)?;
    f(s.service.clone(), grpc_request(message, headers, caller))
        .await
        .map(tonic::Response::into_inner)
        .map_err(RestError::from)
}

/// The caller's principal, checked as the gRPC auth layer checks `method` (`None`: no tokens,
/// or a public group).
pub(crate) fn authorize<T>(
    s: &Shared<T>,
    method: &str,
    headers: &HeaderMap,
) -> Result<Option<tern_edge::Principal>, RestError> {
    let Some(auth) = &s.auth else { return Ok(None) };
    let path = format!("/inference.GRPCInferenceService/{method}");
    match auth.check(&path, headers) {
        Ok(grant) => Ok(grant.map(tern_edge::Principal)),
        Err(denial) => {
            tracing::debug!(path, reason = ?denial, "HTTP request refused");
            Err(denial.into())
        }
    }
}

/// The W3C trace context of the HTTP request, as gRPC metadata.
pub(crate) fn trace_metadata(headers: &HeaderMap) -> tonic::metadata::MetadataMap {
    let mut metadata = tonic::metadata::MetadataMap::new();
    for key in ["traceparent", "tracestate"] {
        if let Some(v) = headers.get(key).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
            metadata.insert(key, v);
        }
    }
    metadata
}

/// A gRPC request carrying `caller` and the HTTP request's trace context.
pub(crate) fn grpc_request<M>(
    message: M,
    headers: &HeaderMap,
    caller: Option<tern_edge::Principal>,
) -> tonic::Request<M> {
    let mut request = tonic::Request::from_parts(trace_metadata(headers), Default::default(), message);
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller);
    }
    request
}

/// `/generate` and `/generate_stream` (Triton's generate extension, see [`generate`]): the
/// model's inputs from its metadata, the request through [`StreamOne`] (authorized as
/// ModelStreamInfer), and its responses as one JSON object or as Server-Sent Events.
async fn generate_route<T: Service>(
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

/// A JSON body, compressed as `Accept-Encoding` asks.
async fn compressed_json(headers: &HeaderMap, json: Bytes) -> Result<Response, RestError> {
    let coding = body::accepted(headers);
    let mut response = match coding {
        Some(coding) => {
            let compressed = tokio::task::spawn_blocking(move || body::compress(coding, &[json]))
                .await
                .map_err(|e| RestError::internal(format!("compression task failed: {e}")))?
                .map_err(|e| RestError::internal(format!("compression failed: {e}")))?;
            Response::new(Body::from(compressed))
        }
        None => Response::new(Body::from(json)),
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(coding) = coding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding.name()));
    }
    Ok(response)
}

fn json(value: Value) -> Result<Response, RestError> {
    let bytes = serde_json::to_vec(&value).map_err(|e| RestError::internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response())
}

/// An optional JSON object body (empty means `{}`).
async fn read_json_object(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Map<String, Value>, RestError> {
    let bytes = body::read(headers, body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(RestError::bad_request("the request body must be a JSON object")),
        Err(e) => Err(RestError::bad_request(format!("malformed request JSON: {e}"))),
    }
}

/// A load or unload body's `parameters`: `config` (JSON text), `file:<path>` (base64 content,
/// as Triton's HTTP), and plain values.
fn repository_parameters(
    model: &str,
    options: &Map<String, Value>,
) -> Result<HashMap<String, pb::ModelRepositoryParameter>, RestError> {
    use pb::model_repository_parameter::ParameterChoice as C;
    let mut out = HashMap::new();
    let Some(params) = options.get("parameters") else { return Ok(out) };
    let params = params.as_object().ok_or_else(|| {
        RestError::bad_request(format!("model '{model}': 'parameters' must be a JSON object"))
    })?;
    for (key, value) in params {
        let bad =
            |want: &str| RestError::bad_request(format!("model '{model}': Unable to parse '{key}': {want}"));
        let choice = if key.starts_with("file:") {
            let text = value.as_str().ok_or_else(|| bad("want base64 file content"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| bad(&format!("not base64 ({e})")))?;
            C::BytesParam(bytes)
        } else {
            match value {
                Value::String(s) => C::StringParam(s.clone()),
                Value::Bool(b) => C::BoolParam(*b),
                Value::Number(n) => C::Int64Param(n.as_i64().ok_or_else(|| bad("want an integer"))?),
                // Triton accepts `config` as a JSON object too; the gRPC side takes its text.
                Value::Object(_) if key == "config" => C::StringParam(value.to_string()),
                _ => return Err(bad("want a string, boolean or integer")),
            }
        };
        out.insert(key.clone(), pb::ModelRepositoryParameter { parameter_choice: Some(choice) });
    }
    Ok(out)
}

async fn trace_setting<T: Service>(
    s: &Shared<T>,
    method: &Method,
    headers: &HeaderMap,
    model: &str,
    body: Body,
) -> Result<Response, RestError> {
    use pb::trace_setting_request::SettingValue;
    let mut settings = HashMap::new();
    if method == Method::POST {
        for (key, value) in read_json_object(headers, body, s.max_body).await? {
            let bad = || {
                RestError::bad_request(format!("Unable to parse '{key}': want a string or a list of strings"))
            };
            let values = match value {
                Value::Null => Vec::new(),
                Value::String(v) => vec![v],
                Value::Array(items) => items
                    .into_iter()
                    .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
                    .collect::<Result<_, _>>()?,
                _ => return Err(bad()),
            };
            settings.insert(key, SettingValue { value: values });
        }
    } else {
        want(method, &Method::GET)?;
    }
    let request = pb::TraceSettingRequest { settings, model_name: model.to_string() };
    let r = call(s, "TraceSetting", headers, request, |svc, req| async move { svc.trace_setting(req).await })
        .await?;
    let out: Map<String, Value> = r
        .settings
        .into_iter()
        .map(|(k, v)| {
            let value = match v.value.as_slice() {
                [one] => Value::String(one.clone()),
                many => Value::from(many.to_vec()),
            };
            (k, value)
        })
        .collect();
    json(Value::Object(out))
}

async fn log_settings<T: Service>(
    s: &Shared<T>,
    method: &Method,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, RestError> {
    use pb::log_settings_request::{SettingValue, setting_value::ParameterChoice as C};
    let mut settings = HashMap::new();
    if method == Method::POST {
        for (key, value) in read_json_object(headers, body, s.max_body).await? {
            let choice = match value {
                Value::Bool(b) => C::BoolParam(b),
                Value::String(v) => C::StringParam(v),
                Value::Number(n) => {
                    C::Uint32Param(n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                        RestError::bad_request(format!(
                            "Unable to parse '{key}': want an unsigned 32-bit integer"
                        ))
                    })?)
                }
                _ => {
                    return Err(RestError::bad_request(format!(
                        "Unable to parse '{key}': want a bool, integer or string"
                    )));
                }
            };
            settings.insert(key, SettingValue { parameter_choice: Some(choice) });
        }
    } else {
        want(method, &Method::GET)?;
    }
    let request = pb::LogSettingsRequest { settings };
    let r = call(s, "LogSettings", headers, request, |svc, req| async move { svc.log_settings(req).await })
        .await?;
    use pb::log_settings_response::setting_value::ParameterChoice as R;
    let out: Map<String, Value> = r
        .settings
        .into_iter()
        .map(|(k, v)| {
            let value = match v.parameter_choice {
                Some(R::BoolParam(b)) => Value::Bool(b),
                Some(R::Uint32Param(n)) => Value::from(n),
                Some(R::StringParam(s)) => Value::String(s),
                None => Value::Null,
            };
            (k, value)
        })
        .collect();
    json(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(decode_segment("a%20b%2Fc").expect("decode"), "a b/c");
        assert!(decode_segment("bad%zz").is_err());
        assert!(decode_segment("cut%2").is_err());
    }

    #[test]
    fn repository_parameters_decode_files_and_config() {
        let options: Map<String, Value> = serde_json::from_str(
            r#"{"parameters":{"config":"{\"max_batch_size\":0}","file:1/model.onnx":"AAEC","unload_dependents":true}}"#,
        )
        .expect("json");
        let params = repository_parameters("m", &options).expect("params");
        use pb::model_repository_parameter::ParameterChoice as C;
        assert_eq!(params["file:1/model.onnx"].parameter_choice, Some(C::BytesParam(vec![0, 1, 2])));
        assert!(matches!(params["config"].parameter_choice, Some(C::StringParam(_))));
        let bad: Map<String, Value> =
            serde_json::from_str(r#"{"parameters":{"file:x":"!!"}}"#).expect("json");
        let e = repository_parameters("m", &bad).expect_err("base64");
        assert!(e.message.contains("'file:x'"), "{e:?}");
    }
}
