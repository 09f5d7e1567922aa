//! Triton's shared-memory extension over HTTP: `/v2/systemsharedmemory[/region/{name}]/{action}`
//! and `/v2/cudasharedmemory[/region/{name}]/{action}` (server src/http_server.cc, the
//! `systemsharedmemory_regex_` / `cudasharedmemory_regex_` routes, `HandleSystemSharedMemory`,
//! `HandleCudaSharedMemory`). Each calls the gRPC method, so the answers (an empty status list;
//! registration refused while client shared memory is off) are the gRPC path's.

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;
use tern_proto::inference as pb;

use super::{Service, Shared, call, json, want};
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
            let request = pb::SystemSharedMemoryRegisterRequest { name, ..Default::default() };
            call(s, "SystemSharedMemoryRegister", headers, request, |svc, req| async move {
                svc.system_shared_memory_register(req).await
            })
            .await
            .map(|_| StatusCode::OK.into_response())
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

/// A status response's `regions` map as Triton's HTTP answer, a JSON array of the regions
/// (`name`, `key`, `offset`, `byte_size` for system; `name`, `device_id`, `byte_size` for CUDA).
fn status_list(status: Value) -> Result<Response, RestError> {
    let regions = match status.get("regions") {
        Some(Value::Object(regions)) => regions.values().cloned().collect(),
        _ => Vec::new(),
    };
    json(Value::Array(regions))
}
