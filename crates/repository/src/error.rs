//! The one error type of this crate. Every message names the model, and where it applies the
//! tensor and the config field, so that it can be shown to the user as it is (load failures
//! reach clients through the gRPC status message, as Triton's do).

use std::fmt;
use std::path::PathBuf;

/// A 1-based line and column (in characters) in a config text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextPosition {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for TextPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Which side of the model a tensor is on, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    Input,
    Output,
}

impl fmt::Display for TensorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TensorKind::Input => "input",
            TensorKind::Output => "output",
        })
    }
}

/// Everything that can go wrong between a repository directory and a validated config.
/// `Clone` so that one load failure can be reported to every waiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepositoryError {
    /// config.pbtxt text that is not valid protobuf text format for `inference.ModelConfig`:
    /// a syntax error, an unknown field, a wrong enum value.
    #[error("invalid model config text{}: {message}", at(.position))]
    ConfigText { position: Option<TextPosition>, message: String },

    /// A JSON model config (the load API's `config` parameter) that does not parse.
    #[error("invalid JSON model config: {message}")]
    ConfigJson { message: String },

    /// A model's config.pbtxt that cannot be read or parsed; `message` is the cause.
    #[error("model '{model}': {}: {message}", .path.display())]
    ConfigFile { model: String, path: PathBuf, message: String },

    /// A repository path (or a model directory inside it) that cannot be listed.
    #[error("model repository {}: {message}", .path.display())]
    Repository { path: PathBuf, message: String },

    /// The same model directory name in more than one repository (Triton refuses these too).
    #[error(
        "model '{model}' is in more than one model repository ({}); model names must be unique \
         across repositories",
        join_paths(.dirs)
    )]
    DuplicateModel { model: String, dirs: Vec<PathBuf> },

    #[error("invalid model name '{name}': {reason}")]
    InvalidName { name: String, reason: String },

    #[error("model '{model}': config.pbtxt is required with --strict-model-config=true")]
    ConfigRequired { model: String },

    #[error(
        "model '{model}': config.pbtxt gives name '{config_name}' but the model directory is \
         '{model}'; the name must equal the directory name"
    )]
    NameMismatch { model: String, config_name: String },

    #[error(
        "model '{model}': platform '{platform}' / backend '{backend}' is not supported; Tern \
         serves ONNX models (platform 'onnxruntime_onnx', backend 'onnxruntime')"
    )]
    UnsupportedBackend { model: String, platform: String, backend: String },

    #[error(
        "model '{model}': {kind} '{tensor}': data_type {config} in config.pbtxt does not match \
         {model_file} in the model file"
    )]
    DataTypeMismatch { model: String, kind: TensorKind, tensor: String, config: String, model_file: String },

    /// Any other inconsistency in a config, or between a config and its model file.
    #[error("model '{model}': {message}")]
    Invalid { model: String, message: String },

    /// An output's `label_filename` that cannot be read.
    #[error("model '{model}': output '{output}': label_filename '{file}': {message}")]
    Labels { model: String, output: String, file: String, message: String },
}

impl RepositoryError {
    /// The model the error is about, where there is one.
    pub fn model(&self) -> Option<&str> {
        match self {
            RepositoryError::ConfigFile { model, .. }
            | RepositoryError::DuplicateModel { model, .. }
            | RepositoryError::ConfigRequired { model }
            | RepositoryError::NameMismatch { model, .. }
            | RepositoryError::UnsupportedBackend { model, .. }
            | RepositoryError::DataTypeMismatch { model, .. }
            | RepositoryError::Invalid { model, .. }
            | RepositoryError::Labels { model, .. } => Some(model),
            RepositoryError::InvalidName { name, .. } => Some(name),
            RepositoryError::ConfigText { .. }
            | RepositoryError::ConfigJson { .. }
            | RepositoryError::Repository { .. } => None,
        }
    }

    pub(crate) fn invalid(model: &str, message: impl Into<String>) -> Self {
        RepositoryError::Invalid { model: model.to_owned(), message: message.into() }
    }
}

fn at(position: &Option<TextPosition>) -> String {
    position.map(|p| format!(" at {p}")).unwrap_or_default()
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
}
