//! The ONNX Runtime library and environment: loaded once per process, on first use.
//!
//! ORT allows one environment per process and `ort` keeps the library handle in a global, so
//! both live in a `OnceLock` here. Loading goes through `ort::init_from` and its `Result`:
//! `ort`'s implicit loading (from `ORT_DYLIB_PATH` or a bare `libonnxruntime.so`) panics on a
//! missing or incompatible library, which a server must never do.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use crate::{OrtBackendError, ffi};

/// The environment variable naming the library when no path is given (the same one `ort`
/// reads).
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// What was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// The library's own version string, e.g. "1.31.1".
    pub version: String,
    /// The library file, canonicalized.
    pub library: PathBuf,
    /// The ORT C API version this build of Tern uses (the library's minor version must be at
    /// least this).
    pub api_version: u32,
}

struct Runtime {
    info: RuntimeInfo,
    environment: Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// Serializes first-time initialization (`OnceLock::get_or_try_init` is unstable).
static INIT: Mutex<()> = Mutex::new(());

/// Loads the ONNX Runtime shared library and creates the process's ORT environment, once.
///
/// `path` wins; without it, `ORT_DYLIB_PATH`; with neither, an error that says how to get
/// the library. Later calls return the first call's [`RuntimeInfo`], unless they name a
/// different library file, which is an error (a process can hold only one).
pub fn init_runtime(path: Option<&Path>) -> Result<RuntimeInfo, OrtBackendError> {
    if let Some(runtime) = RUNTIME.get() {
        return already_loaded(runtime, path.map(Path::to_path_buf));
    }
    // A poisoned lock only means another initializer panicked; the OnceLock is still sound.
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(runtime) = RUNTIME.get() {
        return already_loaded(runtime, path.map(Path::to_path_buf));
    }

    let requested = resolve_library_path(path, std::env::var_os(DYLIB_ENV))
        .ok_or(OrtBackendError::LibraryNotConfigured)?;
    if !requested.is_file() {
        return Err(OrtBackendError::LibraryNotFound { path: requested });
    }
    // Absolute, so that `ort` never resolves it against the executable's directory.
    let library = std::fs::canonicalize(&requested)
        .map_err(|_| OrtBackendError::LibraryNotFound { path: requested.clone() })?;
    let load_error = |message: String| OrtBackendError::LibraryLoad { path: library.clone(), message };

    let builder = ort::init_from(&library).map_err(|e| load_error(e.to_string()))?;
    let environment = builder
        .with_name("tern")
        .with_telemetry(false)
        .build()
        .map_err(|e| OrtBackendError::Environment(e.to_string()))?;
    let version = ffi::library_version(&library).map_err(load_error)?;
    let info = RuntimeInfo { version, library, api_version: ort::MINOR_VERSION };
    tracing::info!(version = %info.version, library = %info.library.display(), "loaded ONNX Runtime");

    let runtime = RUNTIME.get_or_init(|| Runtime { info, environment });
    Ok(runtime.info.clone())
}

/// The loaded library's version ("1.31.1"), if one is loaded.
pub(crate) fn version() -> Option<String> {
    RUNTIME.get().map(|r| r.info.version.clone())
}

/// "1.31.1 at /path/libonnxruntime.so.1.31.1", or "not loaded".
pub(crate) fn library_description() -> String {
    match RUNTIME.get() {
        Some(r) => format!("{} at {}", r.info.version, r.info.library.display()),
        None => "not loaded".to_string(),
    }
}

/// The environment, initializing from `ORT_DYLIB_PATH` if nothing was loaded yet (public for
/// tern-generate, which builds its own sessions).
pub fn environment() -> Result<&'static Environment, OrtBackendError> {
    if RUNTIME.get().is_none() {
        init_runtime(None)?;
    }
    RUNTIME.get().map(|r| &r.environment).ok_or(OrtBackendError::LibraryNotConfigured)
}

fn already_loaded(runtime: &Runtime, path: Option<PathBuf>) -> Result<RuntimeInfo, OrtBackendError> {
    match path {
        Some(requested) if !same_file(&requested, &runtime.info.library) => {
            Err(OrtBackendError::AlreadyInitialized { loaded: runtime.info.library.clone(), requested })
        }
        _ => Ok(runtime.info.clone()),
    }
}

fn same_file(a: &Path, canonical: &Path) -> bool {
    std::fs::canonicalize(a).is_ok_and(|a| a == canonical)
}

/// An explicit path, else a non-empty `ORT_DYLIB_PATH` value.
fn resolve_library_path(path: Option<&Path>, env: Option<OsString>) -> Option<PathBuf> {
    match path {
        Some(p) => Some(p.to_path_buf()),
        None => env.filter(|v| !v.is_empty()).map(PathBuf::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_wins_over_env() {
        let got = resolve_library_path(Some(Path::new("/a.so")), Some("/b.so".into()));
        assert_eq!(got, Some(PathBuf::from("/a.so")));
    }

    #[test]
    fn env_used_when_no_path_and_empty_env_ignored() {
        assert_eq!(resolve_library_path(None, Some("/b.so".into())), Some(PathBuf::from("/b.so")));
        assert_eq!(resolve_library_path(None, Some("".into())), None);
        assert_eq!(resolve_library_path(None, None), None);
    }

    #[test]
    fn errors_name_the_fix() {
        let msg = OrtBackendError::LibraryNotConfigured.to_string();
        assert!(msg.contains("make setup") && msg.contains("ORT_DYLIB_PATH"), "{msg}");
        let msg = OrtBackendError::LibraryNotFound { path: "/nope/libonnxruntime.so".into() }.to_string();
        assert!(msg.contains("/nope/libonnxruntime.so") && msg.contains("--onnxruntime-lib"), "{msg}");
    }
}
