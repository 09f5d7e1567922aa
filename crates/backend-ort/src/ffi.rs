//! The few ORT C API calls that `ort`'s safe API does not offer, and the only `unsafe` in
//! Tern. Each function is small, takes safe types, and checks what the C side returns.
//!
//! - String elements with explicit lengths: `ort`'s `Tensor::from_string_array` goes through
//!   `FillStringTensor`, whose C strings end at the first NUL, and its extraction insists on
//!   UTF-8. BYTES elements are arbitrary bytes, so both directions use the per-element calls
//!   that take a length (`GetResizedStringTensorElementBuffer`, `GetStringTensorElement`).
//! - The CPU memory arena switch (`enable_mem_arena`), absent from `SessionBuilder`.
//! - The library's version string, which `ort` reads but does not expose.
//! - The number of CUDA devices, from the CUDA runtime library (`cudaGetDeviceCount`).
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::Path;
use std::ptr;

use ort::AsPointer;
use ort::session::builder::SessionBuilder;
use ort::value::{DynTensor, DynValue, TensorElementType};

/// Sets string element `index` of `tensor` to `bytes`, verbatim (NULs and all).
pub(crate) fn set_string_element(tensor: &mut DynTensor, index: usize, bytes: &[u8]) -> ort::Result<()> {
    if *tensor.data_type() != TensorElementType::String {
        return Err(ort::Error::new("set_string_element on a non-string tensor"));
    }
    let mut buffer: *mut c_char = ptr::null_mut();
    // SAFETY: `tensor` is a live string OrtValue we own exclusively (`&mut`). ORT checks
    // `index` against the element count and returns an error status if it is out of range;
    // on success it resizes that element's std::string to `bytes.len()` and stores a pointer
    // to its buffer in `buffer`.
    let status = unsafe {
        (ort::api().GetResizedStringTensorElementBuffer)(tensor.ptr_mut(), index, bytes.len(), &mut buffer)
    };
    // SAFETY: `status` was just returned by an ORT API call; this takes ownership of it.
    unsafe { ort::Error::result_from_status(status) }?;
    if bytes.is_empty() {
        return Ok(());
    }
    if buffer.is_null() {
        return Err(ort::Error::new("ORT returned no buffer for a string element"));
    }
    // SAFETY: `buffer` points to `bytes.len()` writable bytes owned by the element's
    // std::string, which nothing else touches while we hold `&mut tensor`; `bytes` is a
    // separate Rust allocation, so the ranges cannot overlap.
    unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.cast::<u8>(), bytes.len()) };
    Ok(())
}

/// Total bytes in all elements of a string tensor.
pub(crate) fn string_data_len(value: &DynValue) -> ort::Result<usize> {
    let mut len = 0usize;
    // SAFETY: `value` is a live OrtValue; ORT checks that it is a string tensor and writes
    // one `usize` through the valid pointer `&mut len`.
    let status = unsafe { (ort::api().GetStringTensorDataLength)(value.ptr(), &mut len) };
    // SAFETY: `status` was just returned by an ORT API call; this takes ownership of it.
    unsafe { ort::Error::result_from_status(status) }?;
    Ok(len)
}

/// Appends string element `index` of `value` to `out`, verbatim.
pub(crate) fn append_string_element(value: &DynValue, index: usize, out: &mut Vec<u8>) -> ort::Result<()> {
    let mut len = 0usize;
    // SAFETY: as in `string_data_len`; ORT also range-checks `index`.
    let status = unsafe { (ort::api().GetStringTensorElementLength)(value.ptr(), index, &mut len) };
    // SAFETY: `status` was just returned by an ORT API call; this takes ownership of it.
    unsafe { ort::Error::result_from_status(status) }?;
    if len == 0 {
        return Ok(());
    }
    let start = out.len();
    out.resize(start + len, 0);
    let dst = out[start..].as_mut_ptr().cast::<c_void>();
    // SAFETY: `dst` points to exactly `len` initialized, writable bytes of `out`; ORT copies
    // element `index` (whose length it just reported as `len`) there and fails with a status
    // if `len` is too small. `value` is not mutated concurrently (we hold `&value`).
    let status = unsafe { (ort::api().GetStringTensorElement)(value.ptr(), len, index, dst) };
    // SAFETY: `status` was just returned by an ORT API call; this takes ownership of it.
    unsafe { ort::Error::result_from_status(status) }
}

/// Turns ORT's CPU memory arena on or off for sessions built from `builder`.
pub(crate) fn set_cpu_mem_arena(builder: &mut SessionBuilder, enable: bool) -> ort::Result<()> {
    let options = builder.ptr_mut();
    let api = ort::api();
    // SAFETY: `options` is the builder's live OrtSessionOptions, exclusively borrowed.
    let status =
        unsafe { if enable { (api.EnableCpuMemArena)(options) } else { (api.DisableCpuMemArena)(options) } };
    // SAFETY: `status` was just returned by an ORT API call; this takes ownership of it.
    unsafe { ort::Error::result_from_status(status) }
}

/// The version string of the ONNX Runtime library at `path` ("1.31.1").
pub(crate) fn library_version(path: &Path) -> Result<String, String> {
    // SAFETY: `path` is the library `ort::init_from` has just loaded and checked, so it is
    // already mapped: this only takes another reference to it and runs no initializers.
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: every ONNX Runtime exports `OrtGetApiBase` with this signature
    // (onnxruntime_c_api.h); `ort` already resolved and called it from this library.
    let get_api_base = unsafe { library.get::<GetApiBase>(b"OrtGetApiBase") }.map_err(|e| e.to_string())?;
    // SAFETY: the symbol has the declared signature (above); it returns a pointer to a static.
    let base = unsafe { get_api_base() };
    if base.is_null() {
        return Err("OrtGetApiBase returned null".to_string());
    }
    // SAFETY: `base` is non-null and points to the library's static OrtApiBase, which stays
    // valid while the library is loaded (`ort` keeps it loaded for the process's life).
    let version = unsafe { ((*base).GetVersionString)() };
    if version.is_null() {
        return Err("GetVersionString returned null".to_string());
    }
    // SAFETY: non-null, and ORT documents it as a static NUL-terminated string.
    Ok(unsafe { CStr::from_ptr(version) }.to_string_lossy().into_owned())
}

/// The CUDA runtime libraries tried, newest first (ORT 1.31's CUDA provider links CUDA 13).
const CUDART_NAMES: [&str; 3] = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"];

/// The number of CUDA devices this process can see (`CUDA_VISIBLE_DEVICES` applies), or why
/// it cannot tell. Loads the CUDA runtime and keeps it loaded: CUDA state must not outlive
/// the library that made it.
pub(crate) fn cuda_device_count() -> Result<u32, String> {
    let mut errors = Vec::new();
    for name in CUDART_NAMES {
        // SAFETY: loading the CUDA runtime runs its initializers, which are made to run in any
        // process; it is the same library the CUDA execution provider loads.
        match unsafe { libloading::Library::new(name) } {
            Ok(library) => {
                let result = device_count(&library);
                // Never unloaded (see above).
                std::mem::forget(library);
                return result.map_err(|e| format!("{name}: {e}"));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(format!("cannot load the CUDA runtime ({})", errors.join("; ")))
}

fn device_count(library: &libloading::Library) -> Result<u32, String> {
    type GetDeviceCount = unsafe extern "C" fn(*mut c_int) -> c_int;
    type GetErrorString = unsafe extern "C" fn(c_int) -> *const c_char;
    // SAFETY: `cudaGetDeviceCount(int*) -> cudaError_t` and `cudaGetErrorString(cudaError_t)
    // -> const char*` have these C signatures in every CUDA runtime (cuda_runtime_api.h;
    // cudaError_t is a C enum, int-sized).
    let get_count =
        unsafe { library.get::<GetDeviceCount>(b"cudaGetDeviceCount") }.map_err(|e| e.to_string())?;
    let mut count: c_int = 0;
    // SAFETY: `count` is a valid, writable int for the duration of the call.
    let status = unsafe { get_count(&mut count) };
    if status == 0 {
        return Ok(u32::try_from(count).unwrap_or(0));
    }
    // SAFETY: as above.
    let message = match unsafe { library.get::<GetErrorString>(b"cudaGetErrorString") } {
        // SAFETY: returns a pointer to a static NUL-terminated string (or null) for any code.
        Ok(f) => match unsafe { f(status) } {
            p if p.is_null() => String::new(),
            // SAFETY: non-null, static and NUL-terminated (cuda_runtime_api.h).
            p => unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned(),
        },
        Err(_) => String::new(),
    };
    Err(format!("cudaGetDeviceCount failed with error {status} ({message})"))
}

/// Hands memory that freed sessions left in the C allocator back to the OS (glibc's
/// `malloc_trim`; a no-op where the C library has none). ONNX Runtime frees a session's
/// weights and arenas with `free`, but glibc keeps those pages mapped in its per-thread arenas,
/// so without this an unloaded model's memory stays in the RSS and load/unload cycles ratchet
/// it up. Returns whether memory was released.
pub fn release_freed_memory() -> bool {
    #[cfg(unix)]
    {
        let this = libloading::os::unix::Library::this();
        // SAFETY: `malloc_trim` is glibc's `int malloc_trim(size_t pad)`; it takes no pointers and
        // is safe to call from any thread at any time.
        let trim = unsafe { this.get::<unsafe extern "C" fn(usize) -> i32>(b"malloc_trim\0") };
        if let Ok(trim) = trim {
            // SAFETY: see above.
            return unsafe { trim(0) } == 1;
        }
    }
    false
}
