//! Encrypted models at rest: the key flags, and reading a version's model file as a runtime
//! will take it: a path for a plain file, or bytes decrypted in memory for `model.onnx.enc`
//! (never written to disk in the clear). The format and the cipher are tern-crypto's.

use std::path::PathBuf;
use std::sync::Arc;

use tern_crypto::{ModelKey, Zeroizing};
use tern_repository::ModelFile;

use crate::LifecycleError;

/// Where the key for encrypted models comes from.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ModelKeyConfig {
    /// File holding the key for encrypted models (`model.onnx.enc`): 32 bytes as 64 hex digits
    /// or base64, as `tern crypt keygen` writes it (a Kubernetes Secret mount). Without it the
    /// key is read from the TERN_MODEL_KEY environment variable, if set.
    #[arg(long, value_name = "PATH")]
    pub model_key_file: Option<PathBuf>,
}

impl ModelKeyConfig {
    /// Reads the key (the file, else `TERN_MODEL_KEY`); a key that is given but unreadable or
    /// malformed is a configuration error, found before the node binds.
    pub fn load(&self) -> Result<Option<Arc<ModelKey>>, LifecycleError> {
        ModelKey::from_file_or_env(self.model_key_file.as_deref()).map(|key| key.map(Arc::new)).map_err(|e| {
            match &self.model_key_file {
                Some(_) => LifecycleError::KeyFile(e),
                None => LifecycleError::KeyEnv(e),
            }
        })
    }
}

/// A model as a runtime will read it.
pub enum ModelBytes {
    /// The runtime reads the file itself (and any external data beside it).
    File(PathBuf),
    /// Decrypted in memory; cleared when dropped.
    Memory(Zeroizing<Vec<u8>>),
}

impl ModelBytes {
    /// Lent to the runtime's factory for one call.
    pub fn bytes(&self) -> tern_backend::ModelBytes<'_> {
        match self {
            ModelBytes::File(path) => tern_backend::ModelBytes::File(path),
            ModelBytes::Memory(clear) => tern_backend::ModelBytes::Memory(clear),
        }
    }
}

/// Opens `file` of `model` version `version`: decrypts an encrypted file with `key`. Every
/// failure names the model, the version and the file, and says what to do.
pub fn open_model(
    file: &ModelFile,
    key: Option<&ModelKey>,
    model: &str,
    version: u64,
) -> Result<ModelBytes, LifecycleError> {
    let path = match file {
        ModelFile::Plain(path) => return Ok(ModelBytes::File(path.clone())),
        ModelFile::Encrypted(path) => path,
    };
    let fail = |detail: String| LifecycleError::ModelFile {
        model: model.to_owned(),
        version,
        path: path.clone(),
        detail,
    };
    let Some(key) = key else {
        return Err(fail(format!(
            "the model is encrypted but no key is configured (set {} or --model-key-file)",
            tern_crypto::KEY_ENV
        )));
    };
    let data = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let clear = tern_crypto::decrypt(key, &data).map_err(|e| fail(e.to_string()))?;
    tracing::info!(model, version, file = %path.display(), bytes = clear.len(), "decrypted model in memory");
    Ok(ModelBytes::Memory(clear))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_model_version_and_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("model.onnx.enc");
        let key = ModelKey::from_bytes([1; 32]);
        std::fs::write(&path, tern_crypto::encrypt(&key, b"onnx")?)?;
        let file = ModelFile::Encrypted(path.clone());

        let Ok(ModelBytes::Memory(clear)) = open_model(&file, Some(&key), "m", 3) else {
            return Err("the right key decrypts".into());
        };
        assert_eq!(clear.as_slice(), b"onnx");

        let errors = [
            open_model(&file, None, "m", 3).err().map(|e| e.to_string()),
            open_model(&file, Some(&ModelKey::from_bytes([2; 32])), "m", 3).err().map(|e| e.to_string()),
        ];
        for (err, says) in errors.iter().zip(["no key is configured", "wrong key"]) {
            let err = err.as_deref().unwrap_or_default();
            assert!(err.starts_with("model 'm' version 3: "), "{err}");
            assert!(err.contains(&path.display().to_string()) && err.contains(says), "{err}");
        }
        let plain = ModelFile::Plain(dir.path().join("model.onnx"));
        assert!(matches!(open_model(&plain, None, "m", 1), Ok(ModelBytes::File(_))));
        Ok(())
    }
}
