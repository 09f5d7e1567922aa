//! Triton's shared-memory extension over HTTP: `/v2/systemsharedmemory[/region/{name}]/{action}`
//! and `/v2/cudasharedmemory[/region/{name}]/{action}` (server src/http_server.cc, the
//! `systemsharedmemory_regex_` / `cudasharedmemory_regex_` routes, `HandleSystemSharedMemory`,
//! `HandleCudaSharedMemory`). Each calls the gRPC method, so the answers are the gRPC path's;
//! register's JSON body (`key`, `offset`, `byte_size`) is read here.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;
use tern_proto::inference as pb;

use super::{Service, Shared, call, json, read_json_object, want};
use crate::error::RestError;
use crate::protojson::to_json;

/// One shared-memory route: `cuda` picks the registry, `region` is "" for every region.
pub(super) async fn shared_memory_route<T: Service>(
    s: &Shared<T>,
    method: &Method,
    headers: &HeaderMap,
    cuda: bool,
    region: &str,
    action: &str,
    body: Body,
) -> Result<Response, RestError> {
    // Triton: status is GET, register and unregister POST; else 405 "Method Not Allowed".
    want(method, if action == "status" { &Method::GET } else { &Method::POST })?;
    let name = region.to_string();
    // Register reads no body yet: Triton refuses while client shared memory is off before
    // it parses one (`AllowClientSharedMemory()` is checked first).
    match (cuda, action) {
        (false, "status") => {
            let request = pb::SystemSharedMemoryStatusRequest { name };
            let r = call(s, "SystemSharedMemoryStatus", headers, request, |svc, req| async move {
                svc.system_shared_memory_status(req).await
            })
            .await?;
            status_list(to_json(&r, "inference.SystemSharedMemoryStatusResponse", false)?)
        }
        (true, "status") => {
            let request = pb::CudaSharedMemoryStatusRequest { name };
            let r = call(s, "CudaSharedMemoryStatus", headers, request, |svc, req| async move {
                svc.cuda_shared_memory_status(req).await
            })
            .await?;
            status_list(to_json(&r, "inference.CudaSharedMemoryStatusResponse", false)?)
        }
        (false, "register") => {
            // Triton refuses while client shared memory is off before it looks at the region
            // name or the body: a request it cannot build asks the gRPC method with nothing
            // (which refuses when off, and registers nothing) before naming what is missing.
            let parsed = match read_json_object(headers, body, s.max_body).await {
                Ok(fields) => register_request(name, &fields),
                Err(e) => Err(e),
            };
            let (request, missing) = match parsed {
                Ok(request) => (request, None),
                Err(e) => (Default::default(), Some(e)),
            };
            let answer = call(s, "SystemSharedMemoryRegister", headers, request, |svc, req| async move {
                svc.system_shared_memory_register(req).await
            })
            .await;
            match (answer, missing) {
                (Err(e), _) if e.status == StatusCode::NOT_IMPLEMENTED => Err(e),
                (_, Some(missing)) => Err(missing),
                (answer, None) => answer.map(|_| StatusCode::OK.into_response()),
            }
        }
        (true, "register") => {
            let request = pb::CudaSharedMemoryRegisterRequest { name, ..Default::default() };
            call(s, "CudaSharedMemoryRegister", headers, request, |svc, req| async move {
                svc.cuda_shared_memory_register(req).await
            })
            .await
            .map(|_| StatusCode::OK.into_response())
        }
        (false, _) => {
            let request = pb::SystemSharedMemoryUnregisterRequest { name };
            call(s, "SystemSharedMemoryUnregister", headers, request, |svc, req| async move {
                svc.system_shared_memory_unregister(req).await
            })
            .await
            .map(|_| StatusCode::OK.into_response())
        }
        (true, _) => {
            let request = pb::CudaSharedMemoryUnregisterRequest { name };
            call(s, "CudaSharedMemoryUnregister", headers, request, |svc, req| async move {
                svc.cuda_shared_memory_unregister(req).await
            })
            .await
            .map(|_| StatusCode::OK.into_response())
        }
    }
}

/// Register's body as Triton's `HandleSystemSharedMemory` reads it: `key` (a string) and
/// `byte_size` required, `offset` optional; the region name from the path is required.
fn register_request(
    name: String,
    fields: &serde_json::Map<String, Value>,
) -> Result<pb::SystemSharedMemoryRegisterRequest, RestError> {
    if name.is_empty() {
        return Err(RestError::bad_request(
            "'region name' is necessary to register system shared memory region",
        ));
    }
    let key = match fields.get("key") {
        None => return Err(RestError::bad_request("Shared memory register request has no 'key' field")),
        Some(Value::String(key)) => key.clone(),
        Some(_) => return Err(RestError::bad_request("Unable to parse 'key': want a string")),
    };
    let uint = |field: &str, value: &Value| {
        value.as_u64().ok_or_else(|| {
            RestError::bad_request(format!("Unable to parse '{field}': want an unsigned integer"))
        })
    };
    let offset = fields.get("offset").map(|v| uint("offset", v)).transpose()?.unwrap_or(0);
    let byte_size = match fields.get("byte_size") {
        None => {
            return Err(RestError::bad_request("Shared memory register request has no 'byte_size' field"));
        }
        Some(v) => uint("byte_size", v)?,
    };
    Ok(pb::SystemSharedMemoryRegisterRequest { name, key, offset, byte_size })
}

/// A status response's `regions` map as Triton's HTTP answer, a JSON array of the regions
/// (`name`, `key`, `offset`, `byte_size` for system; `name`, `device_id`, `byte_size` for CUDA).
fn status_list(status: Value) -> Result<Response, RestError> {
    let regions = match status.get("regions") {
        Some(Value::Object(regions)) => regions.values().cloned().collect(),
        _ => Vec::new(),
    };
    json(Value::Array(regions))
}
