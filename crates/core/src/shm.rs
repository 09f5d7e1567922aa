//! Client system shared memory, Triton's shared-memory extension (docs/protocol/
//! extension_shared_memory.md): regions a client registers by the name of a POSIX shared-memory
//! object in /dev/shm, inference inputs read from them and outputs written into them.
//!
//! The registry ([`SystemShm`]) mirrors Triton's `SharedMemoryManager` (server
//! src/shared_memory_manager.cc) with its 2025 hardening: the key names an object directly in
//! /dev/shm (as glibc's `shm_open` resolves it: leading '/' dropped, no other '/', not "." or
//! ".."; symbolic links refused), Triton's reserved prefix is refused, offset + byte size must lie
//! inside the object, a name is registered once. Each region is mapped once (shared, read and
//! write, as Triton maps it) and held in an `Arc`: a request keeps the regions it uses alive, so
//! unregistering one while a request reads or writes it only drops the registry's reference
//! (Triton's `awaiting_unregister_`). The number of regions is bounded ([`MAX_REGIONS`]).
//!
//! [`SystemShm::resolve`] turns a request's shared-memory inputs into raw contents that are views
//! of the mapping (no copy) and takes its shared-memory outputs aside; [`ShmOutputs::write`]
//! copies the response's outputs into their regions and leaves them without data, as Triton
//! answers (gRPC: an empty `raw_output_contents` entry; src/grpc/infer_handler.cc
//! `ResponseAllocatorHelper`).
//!
//! The mapping is memory another process writes: Tern reads and writes it as Triton does, with
//! no synchronisation beyond the request (the client must not touch a region while a request that
//! uses it is in flight). This is the one module of the crate with `unsafe`: mapping a file and
//! viewing the mapping as bytes.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};
use tern_proto::inference as pb;
use tern_proto::inference::InferParameter;
use tern_proto::inference::infer_parameter::ParameterChoice;
use tonic::Status;

use crate::{DataType, RequestError, codec};

/// Triton's refusal of shared-memory registration while `--allow-client-shm` is false (its
/// default since server PR #8721): src/common.h `kClientShmDisabledErrorStr`, raised as
/// TRITONSERVER_ERROR_UNSUPPORTED (gRPC UNIMPLEMENTED, HTTP 501).
pub const CLIENT_SHM_DISABLED: &str =
    "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable.";

/// The most regions one server holds at once (Triton has no bound; each region is a mapping
/// and a file descriptor's worth of kernel state).
pub const MAX_REGIONS: usize = 1024;

/// Keys with this prefix are Triton's own (the Python backend's); Triton refuses them (src/
/// common.h `kTritonSharedMemoryRegionPrefix`, `ValidateSharedMemoryKey` in src/common.cc).
const RESERVED_PREFIX: &str = "triton_python_backend_shm_region_";

/// Where POSIX shared-memory objects live on Linux (glibc's `shm_open` opens `/dev/shm/NAME`).
const SHM_DIR: &str = "/dev/shm";

/// The tensor parameters that place a tensor in a region (Triton's names).
const REGION: &str = "shared_memory_region";
const OFFSET: &str = "shared_memory_offset";
const BYTE_SIZE: &str = "shared_memory_byte_size";

/// One registered region: `byte_size` bytes of object `key` from `offset`, mapped.
pub struct Region {
    name: String,
    key: String,
    offset: u64,
    byte_size: u64,
    map: MmapRaw,
}

impl Region {
    /// `len` bytes at `start` of the region, after [`Region::check`].
    fn view(self: &Arc<Self>, start: usize, len: usize) -> Bytes {
        Bytes::from_owner(RegionView { region: self.clone(), start, len })
    }

    /// Triton's bounds check of a tensor in a region (`SharedMemoryManager::GetMemoryInfo`).
    fn check(&self, offset: u64, byte_size: u64) -> Result<(usize, usize), RequestError> {
        let name = &self.name;
        if offset >= self.byte_size {
            return Err(RequestError::InvalidArgument(format!(
                "Invalid offset for shared memory region: '{name}'"
            )));
        }
        match offset.checked_add(byte_size) {
            Some(end) if end <= self.byte_size => Ok((offset as usize, byte_size as usize)),
            _ => Err(RequestError::InvalidArgument(format!(
                "Invalid offset + byte size for shared memory region: '{name}'"
            ))),
        }
    }
}

/// A tensor's bytes inside a region; keeps the region mapped while a `Bytes` views it.
struct RegionView {
    region: Arc<Region>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for RegionView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `start + len <= byte_size` (checked by `Region::check`), the mapping is
        // `byte_size` bytes long and lives as long as `self.region`. Another process may write
        // the bytes meanwhile, as with Triton; the client owns that race.
        unsafe { std::slice::from_raw_parts(self.region.map.as_ptr().add(self.start), self.len) }
    }
}

/// The server's system shared-memory regions. Disabled (Triton's `--allow-client-shm=false`),
/// registration is refused and no request can name a region.
pub struct SystemShm {
    enabled: bool,
    regions: Mutex<HashMap<String, Arc<Region>>>,
}

impl std::fmt::Debug for SystemShm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemShm").field("enabled", &self.enabled).finish_non_exhaustive()
    }
}

fn disabled() -> Status {
    Status::unimplemented(CLIENT_SHM_DISABLED)
}

impl SystemShm {
    pub fn new(enabled: bool) -> SystemShm {
        SystemShm { enabled, regions: Mutex::new(HashMap::new()) }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn regions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Region>>> {
        // A panic while holding the lock leaves the map whole (every change is one call).
        self.regions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// True while no region is registered (the router then forwards requests untouched).
    pub fn is_empty(&self) -> bool {
        self.regions().is_empty()
    }

    /// SystemSharedMemoryRegister (Triton's `RegisterSystemSharedMemory`).
    pub fn register(&self, name: &str, key: &str, offset: u64, byte_size: u64) -> Result<(), Status> {
        if !self.enabled {
            return Err(disabled());
        }
        let object = object_name(name, key)?;
        if self.regions().contains_key(name) {
            return Err(already_registered(name));
        }
        // Opened and mapped outside the lock; the name is checked again before inserting.
        let region = map_region(name, key, object, offset, byte_size)?;
        let mut regions = self.regions();
        if regions.contains_key(name) {
            return Err(already_registered(name));
        }
        if regions.len() >= MAX_REGIONS {
            return Err(Status::resource_exhausted(format!(
                "failed to register shared memory region '{name}': {MAX_REGIONS} regions are registered, \
                 the most this server holds; unregister some first"
            )));
        }
        regions.insert(name.to_string(), Arc::new(region));
        Ok(())
    }

    /// SystemSharedMemoryUnregister: one region, or every region for an empty name. A name
    /// not registered is no error (Triton's `UnregisterHelper`). Requests using the region keep
    /// its mapping until they finish.
    pub fn unregister(&self, name: &str) -> Result<(), Status> {
        if !self.enabled {
            return Err(disabled());
        }
        let mut regions = self.regions();
        if name.is_empty() {
            regions.clear();
        } else {
            regions.remove(name);
        }
        Ok(())
    }

    /// SystemSharedMemoryStatus (Triton's `GetStatus`, which `--allow-client-shm` does not
    /// guard): every region for an empty name, else the one named or NOT_FOUND.
    pub fn status(&self, name: &str) -> Result<pb::SystemSharedMemoryStatusResponse, Status> {
        let regions = self.regions();
        let status = |r: &Region| pb::system_shared_memory_status_response::RegionStatus {
            name: r.name.clone(),
            key: r.key.clone(),
            offset: r.offset,
            byte_size: r.byte_size,
        };
        let regions = if name.is_empty() {
            regions.iter().map(|(k, r)| (k.clone(), status(r))).collect()
        } else {
            let r = regions.get(name).ok_or_else(|| {
                Status::not_found(format!("Unable to find system shared memory region: '{name}'"))
            })?;
            HashMap::from([(name.to_string(), status(r))])
        };
        Ok(pb::SystemSharedMemoryStatusResponse { regions })
    }

    /// CudaSharedMemoryStatus: Tern holds no CUDA region. A name registered as system shared
    /// memory gets Triton's wording for the wrong kind.
    pub fn cuda_status(&self, name: &str) -> Result<pb::CudaSharedMemoryStatusResponse, Status> {
        if name.is_empty() {
            return Ok(Default::default());
        }
        if self.regions().contains_key(name) {
            return Err(Status::not_found(format!(
                "The region named '{name}' is registered as system shared memory, not CUDA shared memory"
            )));
        }
        Err(Status::not_found(format!("Unable to find cuda shared memory region: '{name}'")))
    }

    /// CudaSharedMemoryRegister: refused. Disabled, with Triton's disabled message (its GPU
    /// build's answer); enabled, as Triton's build without GPU support answers (src/grpc/
    /// grpc_server.cc, `RegisterCudaSharedMemoryRegister` without TRITON_ENABLE_GPU).
    pub fn cuda_register(&self, name: &str) -> Result<(), Status> {
        if !self.enabled {
            return Err(disabled());
        }
        Err(Status::invalid_argument(format!(
            "failed to register CUDA shared memory region: '{name}', GPUs not supported"
        )))
    }

    /// CudaSharedMemoryUnregister: nothing to unregister, so it succeeds once client shared
    /// memory is on (Triton's examples call it first, to start clean).
    pub fn cuda_unregister(&self) -> Result<(), Status> {
        if !self.enabled {
            return Err(disabled());
        }
        Ok(())
    }

    /// Moves a request's shared-memory inputs into `raw_input_contents` (views of the regions,
    /// no copy) and takes its shared-memory outputs aside for [`ShmOutputs::write`]. `None` when
    /// the request names no region (it is left as it came). Typed `contents` of other inputs
    /// become raw too, since raw contents then cover every input. The shared-memory parameters
    /// are removed, so a node behind a router does not resolve them again.
    pub fn resolve(&self, req: &mut pb::ModelInferRequest) -> Result<Option<ShmOutputs>, RequestError> {
        let names_region =
            |p: &HashMap<String, InferParameter>| p.keys().any(|k| k.starts_with("shared_memory_"));
        if !req.inputs.iter().any(|i| names_region(&i.parameters))
            && !req.outputs.iter().any(|o| names_region(&o.parameters))
        {
            return Ok(None);
        }
        let model = req.model_name.clone();
        let given_raw = std::mem::take(&mut req.raw_input_contents);
        let raw_count = given_raw.len();
        let use_raw = raw_count > 0;
        let mut given_raw = given_raw.into_iter();
        let mut raw = Vec::with_capacity(req.inputs.len());
        for input in &mut req.inputs {
            let tensor = Tensor { model: &model, kind: "input", name: &input.name };
            let contents_given = input.contents.as_ref().is_some_and(|c| c != &Default::default());
            if let Some(at) = shm_params(&mut input.parameters, &tensor)? {
                // src/grpc/infer_handler.cc `InferGRPCToInput`.
                if contents_given {
                    return Err(RequestError::InvalidArgument(format!(
                        "unexpected 'content' provided when using shared memory for input tensor '{}' for model '{model}'",
                        input.name
                    )));
                }
                let region = self.lookup(&at.region, &tensor)?;
                let (start, len) = region.check(at.offset, at.byte_size).map_err(|e| tensor.name_in(e))?;
                input.contents = None;
                raw.push(region.view(start, len));
            } else if contents_given {
                if use_raw {
                    return Err(RequestError::InvalidArgument(format!(
                        "contents field must not be specified when using raw_input_contents for '{}' for model '{model}'",
                        input.name
                    )));
                }
                let datatype = DataType::from_wire_name(&input.datatype).ok_or_else(|| {
                    RequestError::InvalidArgument(format!(
                        "inference input '{}' has unknown datatype '{}' for model '{model}'",
                        input.name, input.datatype
                    ))
                })?;
                let contents = input.contents.take().unwrap_or_default();
                let (data, _) = codec::typed_to_raw(datatype, &contents).map_err(|e| {
                    RequestError::InvalidArgument(format!("input '{}' for model '{model}': {e}", input.name))
                })?;
                raw.push(data);
            } else {
                // Raw contents count only the inputs sent in them, as in Triton.
                let data = given_raw.next().ok_or_else(|| {
                    RequestError::InvalidArgument(format!(
                        "unable to find data for input tensor '{}' for model '{model}' in request.",
                        input.name
                    ))
                })?;
                raw.push(data);
            }
        }
        if given_raw.next().is_some() {
            return Err(RequestError::InvalidArgument(format!(
                "request has {raw_count} raw input contents for model '{model}', more than the inputs not in shared memory"
            )));
        }
        req.raw_input_contents = raw;

        let mut targets = Vec::new();
        for output in &mut req.outputs {
            let tensor = Tensor { model: &model, kind: "output", name: &output.name };
            let Some(at) = shm_params(&mut output.parameters, &tensor)? else { continue };
            // src/grpc/infer_handler.h `InferAllocatorPayload`.
            if output.parameters.contains_key("classification") {
                return Err(RequestError::InvalidArgument(format!(
                    "output can't set both 'shared_memory_region' and 'classification' (output '{}' of model '{model}')",
                    output.name
                )));
            }
            let region = self.lookup(&at.region, &tensor)?;
            let (start, len) = region.check(at.offset, at.byte_size).map_err(|e| tensor.name_in(e))?;
            targets.push(OutputTarget { output: output.name.clone(), region, start, len });
        }
        Ok(Some(ShmOutputs { model, targets }))
    }

    fn lookup(&self, name: &str, tensor: &Tensor<'_>) -> Result<Arc<Region>, RequestError> {
        self.regions().get(name).cloned().ok_or_else(|| {
            tensor.name_in(RequestError::NotFound(format!("Unable to find shared memory region: '{name}'")))
        })
    }
}

/// Which tensor an error is about, appended to Triton's wording.
struct Tensor<'a> {
    model: &'a str,
    kind: &'static str,
    name: &'a str,
}

impl Tensor<'_> {
    fn name_in(&self, e: RequestError) -> RequestError {
        let at = format!(" ({} '{}' of model '{}')", self.kind, self.name, self.model);
        match e {
            RequestError::InvalidArgument(m) => RequestError::InvalidArgument(m + &at),
            RequestError::NotFound(m) => RequestError::NotFound(m + &at),
            other => other,
        }
    }
}

/// Where a tensor lies: `byte_size` bytes from `offset` of region `region`.
struct ShmAt {
    region: String,
    offset: u64,
    byte_size: u64,
}

/// Takes a tensor's shared-memory parameters out of `params`, with Triton's checks (src/grpc/
/// grpc_utils.cc `ParseSharedMemoryParams`).
fn shm_params(
    params: &mut HashMap<String, InferParameter>,
    tensor: &Tensor<'_>,
) -> Result<Option<ShmAt>, RequestError> {
    let name = tensor.name;
    let bad = |m: String| tensor.name_in(RequestError::InvalidArgument(m));
    let region = params.remove(REGION);
    let offset = params.remove(OFFSET);
    let byte_size = params.remove(BYTE_SIZE);
    let Some(region) = region else {
        for (key, given) in [(OFFSET, &offset), (BYTE_SIZE, &byte_size)] {
            if given.is_some() {
                return Err(bad(format!(
                    "'{key}' can not be specified without 'shared_memory_region' parameter for tensor '{name}'"
                )));
            }
        }
        return Ok(None);
    };
    let Some(ParameterChoice::StringParam(region)) = region.parameter_choice else {
        return Err(bad(format!(
            "invalid value type for 'shared_memory_region' parameter for tensor '{name}', expected string_param."
        )));
    };
    let int = |key: &str, p: Option<InferParameter>| -> Result<Option<i64>, RequestError> {
        match p.map(|p| p.parameter_choice) {
            None => Ok(None),
            Some(Some(ParameterChoice::Int64Param(v))) => Ok(Some(v)),
            Some(_) => Err(bad(format!(
                "invalid value type for '{key}' parameter for tensor '{name}', expected int64_param."
            ))),
        }
    };
    let offset = int(OFFSET, offset)?.unwrap_or(0);
    let byte_size = int(BYTE_SIZE, byte_size)?.ok_or_else(|| {
        bad(format!(
            "'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for tensor '{name}'"
        ))
    })?;
    // Triton reads both as size_t: a negative value is out of any region's bounds.
    let offset = u64::try_from(offset).unwrap_or(u64::MAX);
    let byte_size = u64::try_from(byte_size).unwrap_or(u64::MAX);
    Ok(Some(ShmAt { region, offset, byte_size }))
}

/// A request's outputs that go into regions, with the regions held until written.
pub struct ShmOutputs {
    model: String,
    targets: Vec<OutputTarget>,
}

struct OutputTarget {
    output: String,
    region: Arc<Region>,
    start: usize,
    len: usize,
}

impl ShmOutputs {
    /// Copies each shared-memory output of `response` into its region and leaves its entry
    /// without data (an empty raw content keeps the entries aligned, as Triton's).
    pub fn write(self, response: &mut pb::ModelInferResponse) -> Result<(), RequestError> {
        for target in &self.targets {
            let Some(i) = response.outputs.iter().position(|o| o.name == target.output) else { continue };
            let Some(data) = response.raw_output_contents.get_mut(i) else { continue };
            if data.len() > target.len {
                // src/grpc/infer_handler.cc `ResponseAllocatorHelper`: INTERNAL.
                return Err(RequestError::Internal(format!(
                    "shared memory size specified with the request for output '{}' ({} bytes) should be at least {} bytes to hold the results (model '{}', region '{}')",
                    target.output,
                    target.len,
                    data.len(),
                    self.model,
                    target.region.name
                )));
            }
            // SAFETY: `start + data.len() <= start + len <= byte_size`, the mapping's length,
            // alive while `target.region` is; the source is our own buffer, so they do not
            // overlap. Writable: mapped read-write and shared, as Triton maps it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    target.region.map.as_mut_ptr().add(target.start),
                    data.len(),
                );
            }
            *data = Bytes::new();
        }
        Ok(())
    }
}

fn already_registered(name: &str) -> Status {
    Status::already_exists(format!("shared memory region '{name}' already in manager"))
}

/// The object `key` names in /dev/shm, resolved as glibc's `shm_open` resolves it, with Triton's
/// `ValidateSharedMemoryKey` checks first.
fn object_name<'k>(name: &str, key: &'k str) -> Result<&'k str, Status> {
    let object = key.trim_start_matches('/');
    if object.is_empty() {
        return Err(Status::invalid_argument(format!(
            "cannot register shared memory region '{name}' - invalid shm key '{key}'"
        )));
    }
    if object.starts_with(RESERVED_PREFIX) {
        return Err(Status::invalid_argument(format!(
            "cannot register shared memory region '{name}' with key '{key}' as the key contains the reserved prefix '{RESERVED_PREFIX}'"
        )));
    }
    // shm_open fails with EINVAL here, which Triton reports as the open failing.
    if object.contains('/') || object == "." || object == ".." || object.contains('\0') {
        return Err(unable_to_open(key));
    }
    Ok(object)
}

fn unable_to_open(key: &str) -> Status {
    Status::internal(format!("Unable to open shared memory region: '{key}'"))
}

/// Opens and maps the region (Triton's `OpenSharedMemoryRegion`, `CheckSharedMemoryRegionSize`,
/// `MapSharedMemory`); the descriptor closes when this returns, the mapping stays.
fn map_region(name: &str, key: &str, object: &str, offset: u64, byte_size: u64) -> Result<Region, Status> {
    let path = std::path::Path::new(SHM_DIR).join(object);
    // O_NOFOLLOW as shm_open: a link in /dev/shm must not lead elsewhere.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|_| unable_to_open(key))?;
    let meta = file.metadata().map_err(|_| invalid_region(key))?;
    if !meta.is_file() {
        return Err(invalid_region(key));
    }
    let invalid_args = || {
        Status::invalid_argument(format!("failed to register shared memory region '{name}': invalid args"))
    };
    match offset.checked_add(byte_size) {
        Some(end) if end <= meta.len() => {}
        _ => return Err(invalid_args()),
    }
    // mmap refuses a zero length (Triton reports mmap's EINVAL).
    let len = usize::try_from(byte_size).ok().filter(|&n| n > 0).ok_or_else(invalid_args)?;
    let map = MmapOptions::new().offset(offset).len(len).map_raw(&file).map_err(|e| {
        Status::invalid_argument(format!(
            "failed to register shared memory region '{name}': unable to process address space {e}"
        ))
    })?;
    Ok(Region { name: name.to_string(), key: key.to_string(), offset, byte_size, map })
}

fn invalid_region(key: &str) -> Status {
    Status::internal(format!("Invalid shared memory region: '{key}'"))
}

#[cfg(test)]
mod tests;
