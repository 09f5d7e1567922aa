//! The errors of the lifecycle's public calls that other crates make: the model key, and a
//! version's model file. Loading errors inside the crate are still text (see
//! `docs/architecture.md`).

use std::path::PathBuf;

use tern_crypto::CryptoError;

/// Why a model key or an encrypted model file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The key in the file `--model-key-file` names cannot be used.
    #[error("--model-key-file: {0}")]
    KeyFile(CryptoError),
    /// The key in the environment cannot be used.
    #[error(transparent)]
    KeyEnv(CryptoError),
    /// A version's model file cannot be opened (`detail` says why and what to do).
    #[error("model '{model}' version {version}: {}: {detail}", path.display())]
    ModelFile { model: String, version: u64, path: PathBuf, detail: String },
}

/// For callers whose errors are still text (the loader, configuration checks).
impl From<LifecycleError> for String {
    fn from(e: LifecycleError) -> String {
        e.to_string()
    }
}
