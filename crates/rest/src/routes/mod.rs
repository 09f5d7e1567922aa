//! The routes of Triton's HTTP front end (server src/http_server.cc, `HTTPAPIServer::Handle`),
//! each a translation to one method of the gRPC service.
//!
//! Layout: this file holds the dispatch, the model routes and the helpers every route uses
//! (authorization, trace context, JSON answers); `generation` the generate extension's
//! routes; `admin` repository control parameters, trace and log settings; `shared_memory` the
//! shared-memory extension.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Map, Value};
use tern_proto::inference::{self as pb, grpc_inference_service_server::GrpcInferenceService};

use crate::body::{self, Chunks};
use crate::error::RestError;
use crate::infer;
use crate::protojson::to_json;
use tern_edge::triton::StreamOne;

mod admin;
mod generation;
mod shared_memory;

use admin::{log_settings, repository_parameters, trace_setting};
use generation::generate_route;
use shared_memory::shared_memory_route;

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

pub(super) fn want(method: &Method, allowed: &Method) -> Result<(), RestError> {
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
        [
            kind @ ("systemsharedmemory" | "cudasharedmemory"),
            region @ ..,
            action @ ("status" | "register" | "unregister"),
        ] if matches!(region, [] | ["region", _]) => {
            let region = region.last().copied().unwrap_or_default();
            let cuda = *kind == "cudasharedmemory";
            shared_memory_route(s, method, headers, cuda, region, action, body).await
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
pub(super) async fn call<T, Req, Resp, F, Fut>(
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

/// A JSON body, compressed as `Accept-Encoding` asks.
pub(super) async fn compressed_json(headers: &HeaderMap, json: Bytes) -> Result<Response, RestError> {
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

pub(super) fn json(value: Value) -> Result<Response, RestError> {
    let bytes = serde_json::to_vec(&value).map_err(|e| RestError::internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response())
}

/// An optional JSON object body (empty means `{}`).
pub(super) async fn read_json_object(
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

#[cfg(test)]
mod tests;
