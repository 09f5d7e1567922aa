//! Which file of a version directory is the model: `model.onnx` (or the config's
//! `default_model_filename`), or its encrypted form `model.onnx.enc` (see tern-crypto for the
//! format). The repository only finds the file; the node decrypts it in memory.
//!
//! Also the checks that keep names a client sends in a config (RepositoryModelLoad's `config`
//! parameter) inside the model directory, run before any path is built from them.

use std::path::{Component, Path, PathBuf};

use tern_proto::inference::ModelConfig;
use tern_proto::inference::model_warmup::input::InputDataType;

use crate::error::RepositoryError;
use crate::scan::{ModelSource, model_file_path};

/// What an encrypted model file's name adds to the model file's name.
pub const ENCRYPTED_SUFFIX: &str = ".enc";

/// A version's model file as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFile {
    /// ONNX Runtime reads it (a file, or a directory in the external-data layout).
    Plain(PathBuf),
    /// Encrypted at rest: decrypt in memory, then load from the bytes.
    Encrypted(PathBuf),
}

impl ModelFile {
    pub fn path(&self) -> &Path {
        match self {
            ModelFile::Plain(p) | ModelFile::Encrypted(p) => p,
        }
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self, ModelFile::Encrypted(_))
    }
}

/// The model file of `version`: `<dir>/<version>/<default_model_filename>` when it exists (a
/// name ending in `.enc` is encrypted), else the same name plus `.enc`. `Ok(None)` when neither
/// exists. Refuses a `default_model_filename` that is not a plain file name before touching
/// the filesystem, so a config cannot point outside the version directory.
pub fn find_model_file(
    source: &ModelSource,
    config: &ModelConfig,
    version: u64,
) -> Result<Option<ModelFile>, RepositoryError> {
    crate::validate::check_model_filename(&source.name, &config.default_model_filename)?;
    let path = model_file_path(source, config, version);
    let named_encrypted = path.as_os_str().to_string_lossy().ends_with(ENCRYPTED_SUFFIX);
    if named_encrypted {
        return Ok(path.is_file().then_some(ModelFile::Encrypted(path)));
    }
    if path.exists() {
        return Ok(Some(ModelFile::Plain(path)));
    }
    let mut encrypted = path.into_os_string();
    encrypted.push(ENCRYPTED_SUFFIX);
    let encrypted = PathBuf::from(encrypted);
    Ok(encrypted.is_file().then_some(ModelFile::Encrypted(encrypted)))
}

/// Checks every file name a config gives (`default_model_filename`, outputs'
/// `label_filename`, warmup `input_data_file`) stays inside the model directory. For configs
/// that come from clients; the load repeats these checks where it uses the names.
pub fn check_file_names(model: &str, config: &ModelConfig) -> Result<(), RepositoryError> {
    crate::validate::check_model_filename(model, &config.default_model_filename)?;
    for output in &config.output {
        let file = output.label_filename.as_str();
        let inside =
            Path::new(file).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !inside || file.starts_with('/') {
            return Err(RepositoryError::invalid(
                model,
                format!(
                    "output '{}': label_filename '{file}' must be a path inside the model directory, without '..'",
                    output.name
                ),
            ));
        }
    }
    for warmup in &config.model_warmup {
        for (input, data) in &warmup.inputs {
            if let Some(InputDataType::InputDataFile(file)) = &data.input_data_type
                && crate::scan::validate_model_name(file).is_err()
            {
                return Err(RepositoryError::invalid(
                    model,
                    format!(
                        "warmup '{}': input '{input}': input_data_file '{file}' must be a plain file name",
                        warmup.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn source(dir: &Path) -> ModelSource {
        ModelSource { name: "m".into(), dir: dir.to_path_buf(), config: None, versions: vec![1, 2, 3] }
    }

    #[test]
    fn plain_encrypted_or_none() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let s = source(tmp.path());
        let c = ModelConfig::default();
        for v in ["1", "2", "3"] {
            std::fs::create_dir_all(tmp.path().join(v))?;
        }
        std::fs::write(tmp.path().join("1/model.onnx"), b"x")?;
        std::fs::write(tmp.path().join("2/model.onnx.enc"), b"x")?;
        assert_eq!(find_model_file(&s, &c, 1)?, Some(ModelFile::Plain(tmp.path().join("1/model.onnx"))));
        assert_eq!(
            find_model_file(&s, &c, 2)?,
            Some(ModelFile::Encrypted(tmp.path().join("2/model.onnx.enc")))
        );
        assert_eq!(find_model_file(&s, &c, 3)?, None);
        // A config may name the encrypted file itself.
        let named = ModelConfig { default_model_filename: "model.onnx.enc".into(), ..Default::default() };
        assert!(find_model_file(&s, &named, 2)?.is_some_and(|f| f.is_encrypted()));
        assert_eq!(find_model_file(&s, &named, 1)?, None);
        Ok(())
    }

    #[test]
    fn file_names_cannot_leave_the_model_directory() {
        let tmp = std::env::temp_dir();
        for bad in ["../other/1/model.onnx", "/etc/passwd", "..", "a/b.onnx", "..\\x"] {
            let c = ModelConfig { default_model_filename: bad.into(), ..Default::default() };
            assert!(find_model_file(&source(&tmp), &c, 1).is_err(), "{bad}");
            assert!(check_file_names("m", &c).is_err(), "{bad}");
        }
        let labels = ModelConfig {
            output: vec![tern_proto::inference::ModelOutput {
                name: "y".into(),
                label_filename: "../../secret".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = check_file_names("m", &labels).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("label_filename '../../secret'"), "{err}");
        assert!(check_file_names("m", &ModelConfig::default()).is_ok());
    }
}
