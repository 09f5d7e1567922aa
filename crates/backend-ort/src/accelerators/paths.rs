//! Where accelerator paths may point. ORT reads and writes TensorRT engine and timing caches
//! and the EP context model at the paths a config gives, creating directories as needed, so a
//! path is only accepted once it resolves (symlinks followed) inside one of:
//!
//! - this model's accelerator cache directory, `<--accelerator-cache-dir>/<model name>`: where
//!   relative paths resolve and where caches go when the config names no directory. One
//!   directory per model, so one model's config cannot read or overwrite another's engines.
//! - the model's own directory, for caches only (engines shipped with the model), and only
//!   when the operator controls that directory (a configured repository, not an upload).
//!   Never the EP context model: an ONNX file there could replace a version.
//!
//! ORT gets the resolved absolute path. What is left: someone who can write into an allowed
//! directory between this check and ORT's use could plant a symlink; only the operator and
//! ORT itself write there.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use super::keys::MAX_VALUE_LEN;

/// What a model's accelerator parameters may touch on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceleratorScope {
    /// The model's name; its cache directory is `<cache_dir>/<model>`.
    pub model: String,
    /// The model's directory when the operator controls it (it lies in a configured model
    /// repository); `None` for a model uploaded through the repository API.
    pub model_dir: Option<PathBuf>,
    /// The node's accelerator cache root (`--accelerator-cache-dir`), if it has one.
    pub cache_dir: Option<PathBuf>,
    /// The model is encrypted at rest: nothing may write its weights or engines to disk.
    pub encrypted: bool,
}

/// Which allowed directories a path may lie in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathUse {
    /// Engine or timing cache directory: the model's cache directory or its own directory.
    Cache,
    /// The EP context model file: the model's cache directory only.
    ContextModel,
}

pub(crate) const NO_CACHE_DIR: &str = "this node has no accelerator cache directory (start it with \
     --accelerator-cache-dir DIR)";

impl AcceleratorScope {
    /// `<cache_dir>/<model>`, lexically (not resolved), when the node has a cache root.
    fn model_cache_dir(&self) -> Result<Option<PathBuf>, String> {
        let Some(root) = &self.cache_dir else { return Ok(None) };
        let plain = !self.model.is_empty()
            && !self.model.contains(['/', '\\'])
            && self.model != "."
            && self.model != "..";
        if !plain {
            return Err(format!("model name {:?} cannot name a cache directory", self.model));
        }
        let root = std::fs::canonicalize(root)
            .map_err(|e| format!("the accelerator cache directory {} cannot be used: {e}", root.display()))?;
        Ok(Some(root.join(&self.model)))
    }

    /// Where caches go when the config names no directory: the model's cache directory.
    pub(crate) fn default_cache_dir(&self) -> Result<String, String> {
        match self.model_cache_dir()? {
            Some(dir) => {
                let dir = self.check_inside(&dir, PathUse::Cache)?;
                utf8(dir)
            }
            None => Err(NO_CACHE_DIR.to_string()),
        }
    }

    /// Resolves a path value: relative to the model's cache directory, symlinks followed, and
    /// inside the directories `usage` allows. The result is what ORT gets.
    pub(crate) fn resolve(&self, value: &str, usage: PathUse) -> Result<String, String> {
        if value.len() > MAX_VALUE_LEN {
            return Err(format!("longer than {MAX_VALUE_LEN} bytes"));
        }
        if value.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        let path = Path::new(value);
        if path.components().any(|c| c == Component::ParentDir) {
            return Err("must not contain '..'".into());
        }
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            match self.model_cache_dir()? {
                Some(dir) => dir.join(path),
                None => {
                    return Err(format!(
                        "a relative path resolves in this model's accelerator cache directory, but {NO_CACHE_DIR}"
                    ));
                }
            }
        };
        // `.` components dropped, so every name appended after resolving is a plain one.
        let joined: PathBuf = joined.components().filter(|c| *c != Component::CurDir).collect();
        utf8(self.check_inside(&joined, usage)?)
    }

    fn check_inside(&self, path: &Path, usage: PathUse) -> Result<PathBuf, String> {
        let real = resolve_existing(path)?;
        let cache = self.model_cache_dir()?;
        let model_dir = match usage {
            PathUse::Cache => self.model_dir.as_ref().and_then(|d| std::fs::canonicalize(d).ok()),
            PathUse::ContextModel => None,
        };
        if cache.iter().chain(model_dir.iter()).any(|root| real.starts_with(root)) {
            return Ok(real);
        }
        let mut allowed = Vec::new();
        if let Some(dir) = &cache {
            allowed.push(format!("this model's accelerator cache directory {}", dir.display()));
        }
        if let Some(dir) = &model_dir {
            allowed.push(format!("the model directory {}", dir.display()));
        }
        let allowed = if allowed.is_empty() {
            match usage {
                PathUse::Cache if self.model_dir.is_none() => {
                    format!(
                        "the allowed directories: an uploaded model's directory is not one, and {NO_CACHE_DIR}"
                    )
                }
                _ => format!("the allowed directories: {NO_CACHE_DIR}"),
            }
        } else {
            allowed.join(" and ")
        };
        Err(format!("resolves to {}, outside {allowed}", real.display()))
    }
}

/// `path` with symlinks resolved: its deepest existing ancestor canonicalized, the rest (which
/// ORT may create) appended. A dangling symlink on the way is an error, never skipped.
fn resolve_existing(path: &Path) -> Result<PathBuf, String> {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        match std::fs::symlink_metadata(existing) {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                    return Err(format!("{} cannot be resolved", path.display()));
                };
                rest.push(name);
                existing = parent;
            }
            Err(e) => return Err(format!("{} cannot be resolved: {e}", existing.display())),
        }
    }
    let mut real = std::fs::canonicalize(existing)
        .map_err(|e| format!("{} cannot be resolved: {e}", existing.display()))?;
    for name in rest.into_iter().rev() {
        real.push(name);
    }
    Ok(real)
}

fn utf8(path: PathBuf) -> Result<String, String> {
    path.into_os_string().into_string().map_err(|p| format!("{} is not UTF-8", Path::new(&p).display()))
}
