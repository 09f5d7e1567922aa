//! Blocking file work of the model lifecycle, run on blocking threads by the manager: model
//! files uploaded with a load (`file:` parameters), and directory fingerprints for poll mode.

use std::path::{Path, PathBuf};

use tern_core::RequestError;
use tern_repository::ScannedModel;

/// Writes `file:` parameters (`<version>/<file name>` -> bytes) into a new temporary
/// repository holding model `name`; the returned directory lives as long as the model.
pub fn write_upload(
    name: &str,
    files: Vec<(String, Vec<u8>)>,
) -> Result<(tempfile::TempDir, ScannedModel), RequestError> {
    // Triton fails the poll on files it cannot lay out (see `manager::poll_failure`).
    let invalid = |m: String| {
        RequestError::Internal(format!("{}: model '{name}': {m}", crate::manager::poll_failure(name)))
    };
    let dir = tempfile::Builder::new()
        .prefix("tern-upload-")
        .tempdir()
        .map_err(|e| RequestError::Internal(format!("cannot create a directory for model '{name}': {e}")))?;
    let model_dir = dir.path().join(name);
    for (rel, bytes) in files {
        // `<version>/<file>`: plain names only, so nothing escapes the model directory.
        let parts: Vec<&str> = rel.split('/').collect();
        let safe = parts.len() == 2
            && parts[0].parse::<u64>().is_ok_and(|v| v > 0)
            && tern_repository::validate_model_name(parts[1]).is_ok();
        if !safe {
            return Err(invalid(format!("parameter 'file:{rel}' must be 'file:<version>/<file name>'")));
        }
        let path = model_dir.join(parts[0]).join(parts[1]);
        let written =
            path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&path, bytes));
        written.map_err(|e| RequestError::Internal(format!("model '{name}': cannot write {rel}: {e}")))?;
    }
    let item = tern_repository::scan_model(&[dir.path().to_path_buf()], name)
        .ok_or_else(|| invalid("no model files given".into()))?;
    Ok((dir, item))
}

/// A cheap summary of a model directory (names, sizes, modification times of its files, two
/// levels deep): poll mode reloads when it changes.
pub fn fingerprint(repositories: &[PathBuf], name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    fn walk(dir: &Path, depth: usize, hasher: &mut impl Hasher) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(meta) = e.metadata() else { continue };
            e.file_name().hash(hasher);
            if meta.is_dir() {
                if depth > 0 {
                    walk(&e.path(), depth - 1, hasher);
                }
            } else {
                meta.len().hash(hasher);
                meta.modified().ok().hash(hasher);
            }
        }
    }
    for repo in repositories {
        let dir = repo.join(name);
        if dir.is_dir() {
            dir.hash(&mut hasher);
            walk(&dir, 2, &mut hasher);
        }
    }
    hasher.finish()
}
