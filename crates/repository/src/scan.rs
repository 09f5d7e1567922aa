//! What is on disk: model directories, their config.pbtxt, their version directories, and
//! which versions a version policy selects.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tern_proto::inference::ModelConfig;
use tern_proto::inference::model_version_policy::PolicyChoice;

use crate::error::RepositoryError;
use crate::parse::parse_config;

/// The config file in a model directory.
pub const CONFIG_FILENAME: &str = "config.pbtxt";

/// The model file in a version directory when the config names none (Triton's ONNX default).
pub const DEFAULT_MODEL_FILENAME: &str = "model.onnx";

/// One model directory as found on disk, before auto-complete.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSource {
    /// The directory name, which is the model name.
    pub name: String,
    pub dir: PathBuf,
    /// The parsed config.pbtxt, `None` if the directory has none.
    pub config: Option<ModelConfig>,
    /// Numeric subdirectories, ascending.
    pub versions: Vec<u64>,
}

/// One model directory of a scan: found, or failed on its own (bad name, unreadable or
/// unparsable config.pbtxt, duplicate name across repositories) without failing the others.
// A scan makes a few of these once per poll; boxing the config would only cost ergonomics.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ScannedModel {
    Found(ModelSource),
    Failed { name: String, error: RepositoryError },
}

impl ScannedModel {
    pub fn name(&self) -> &str {
        match self {
            ScannedModel::Found(source) => &source.name,
            ScannedModel::Failed { name, .. } => name,
        }
    }

    pub fn as_result(&self) -> Result<&ModelSource, &RepositoryError> {
        match self {
            ScannedModel::Found(source) => Ok(source),
            ScannedModel::Failed { error, .. } => Err(error),
        }
    }

    pub fn into_result(self) -> Result<ModelSource, RepositoryError> {
        match self {
            ScannedModel::Found(source) => Ok(source),
            ScannedModel::Failed { error, .. } => Err(error),
        }
    }
}

/// Lists every model in every repository, sorted by name. Every non-hidden subdirectory of a
/// repository is a model; files beside them are ignored. Fails only when a repository itself
/// cannot be listed; a model that cannot be read is a [`ScannedModel::Failed`].
pub fn scan(repositories: &[PathBuf]) -> Result<Vec<ScannedModel>, RepositoryError> {
    let mut dirs_by_name: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for repository in repositories {
        for (name, dir) in model_dirs(repository)? {
            dirs_by_name.entry(name).or_default().push(dir);
        }
    }
    Ok(dirs_by_name
        .into_iter()
        .map(|(name, dirs)| match <[PathBuf; 1]>::try_from(dirs) {
            Ok([dir]) => match read_model(&name, dir) {
                Ok(source) => ScannedModel::Found(source),
                Err(error) => ScannedModel::Failed { name, error },
            },
            Err(dirs) => {
                let error = RepositoryError::DuplicateModel { model: name.clone(), dirs };
                ScannedModel::Failed { name, error }
            }
        })
        .collect())
}

/// One model by name: looks only at `<repository>/<name>` in each repository, as Triton's
/// explicit-mode load polls just the models named (model_repository_manager.cc,
/// `ModelRepositoryManager::Poll`), so a load of an unknown name costs one `stat` per
/// repository instead of reading every model's config. `None` when no repository holds it
/// (or the name could not be a model directory).
pub fn scan_model(repositories: &[PathBuf], name: &str) -> Option<ScannedModel> {
    crate::validate_model_name(name).ok()?;
    let dirs: Vec<PathBuf> = repositories
        .iter()
        .map(|repository| repository.join(name))
        .filter(|dir| fs::metadata(dir).is_ok_and(|meta| meta.is_dir()))
        .collect();
    match <[PathBuf; 1]>::try_from(dirs) {
        Ok([dir]) => Some(match read_model(name, dir) {
            Ok(source) => ScannedModel::Found(source),
            Err(error) => ScannedModel::Failed { name: name.to_owned(), error },
        }),
        Err(dirs) if dirs.is_empty() => None,
        Err(dirs) => Some(ScannedModel::Failed {
            name: name.to_owned(),
            error: RepositoryError::DuplicateModel { model: name.to_owned(), dirs },
        }),
    }
}

/// The names of the model directories of every repository, sorted, without reading them (what
/// the repository index lists for models never loaded).
pub fn model_names(repositories: &[PathBuf]) -> Result<Vec<String>, RepositoryError> {
    let mut names = Vec::new();
    for repository in repositories {
        names.extend(model_dirs(repository)?.into_iter().map(|(name, _)| name));
    }
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

/// The non-hidden subdirectories of one repository, by name (lossy for non-UTF-8 names,
/// which then fail name validation).
fn model_dirs(repository: &Path) -> Result<Vec<(String, PathBuf)>, RepositoryError> {
    let repository_error = |err: io::Error| RepositoryError::Repository {
        path: repository.to_path_buf(),
        message: err.to_string(),
    };
    let mut dirs = Vec::new();
    for entry in fs::read_dir(repository).map_err(repository_error)? {
        let entry = entry.map_err(repository_error)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follow symlinks: a linked model directory is a model directory.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => dirs.push((name, path)),
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "skipping unreadable entry in model repository");
            }
        }
    }
    Ok(dirs)
}

fn read_model(name: &str, dir: PathBuf) -> Result<ModelSource, RepositoryError> {
    crate::validate_model_name(name)?;
    let config = read_config(name, &dir)?;
    let versions = read_versions(&dir)?;
    Ok(ModelSource { name: name.to_owned(), dir, config, versions })
}

fn read_config(name: &str, dir: &Path) -> Result<Option<ModelConfig>, RepositoryError> {
    let path = dir.join(CONFIG_FILENAME);
    let file_error =
        |message: String| RepositoryError::ConfigFile { model: name.to_owned(), path: path.clone(), message };
    match fs::read_to_string(&path) {
        Ok(text) => parse_config(&text).map(Some).map_err(|err| file_error(err.to_string())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(file_error(err.to_string())),
    }
}

/// Version directories: names that are a canonical decimal number (no sign, no leading
/// zeros), so that `<dir>/<version>` names the directory again.
fn read_versions(dir: &Path) -> Result<Vec<u64>, RepositoryError> {
    let dir_error =
        |err: io::Error| RepositoryError::Repository { path: dir.to_path_buf(), message: err.to_string() };
    let mut versions = Vec::new();
    for entry in fs::read_dir(dir).map_err(dir_error)? {
        let entry = entry.map_err(dir_error)?;
        let Some(version) = entry.file_name().to_str().and_then(parse_version) else {
            continue;
        };
        if fs::metadata(entry.path()).is_ok_and(|meta| meta.is_dir()) {
            versions.push(version);
        }
    }
    versions.sort_unstable();
    Ok(versions)
}

fn parse_version(name: &str) -> Option<u64> {
    let canonical = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_digit())
        && (name == "0" || !name.starts_with('0'));
    canonical.then(|| name.parse().ok()).flatten()
}

/// Rejects names that could not be a model directory in a repository: empty, hidden
/// (leading '.', which also covers "." and ".."), with a path separator, or with characters
/// outside `[A-Za-z0-9_.-]`. Used for names that come from clients (load / unload requests).
pub fn validate_model_name(name: &str) -> Result<(), RepositoryError> {
    let invalid = |reason: String| Err(RepositoryError::InvalidName { name: name.to_owned(), reason });
    if name.is_empty() {
        return invalid("the name is empty".to_owned());
    }
    if name.contains(['/', '\\']) {
        return invalid("it contains a path separator".to_owned());
    }
    if name.starts_with('.') {
        return invalid("it starts with '.'".to_owned());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return invalid(format!(
            "it contains {c:?}; names may use only ASCII letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

/// `<dir>/<version>/<default_model_filename>`, "model.onnx" when the config names no file.
pub fn model_file_path(source: &ModelSource, config: &ModelConfig, version: u64) -> PathBuf {
    let file = if config.default_model_filename.is_empty() {
        DEFAULT_MODEL_FILENAME
    } else {
        &config.default_model_filename
    };
    source.dir.join(version.to_string()).join(file)
}

/// The highest version whose model file exists (a file, or a directory as ONNX Runtime's
/// external-data layout allows, or the encrypted `.enc` file).
pub fn highest_version(source: &ModelSource, config: &ModelConfig) -> Option<u64> {
    source
        .versions
        .iter()
        .rev()
        .copied()
        .find(|&version| crate::find_model_file(source, config, version).is_ok_and(|f| f.is_some()))
}

/// The versions the config's version policy selects among the version directories, ascending,
/// as Triton does: `latest { num_versions: N }` the N highest (1 when the policy is absent),
/// `all` every one, `specific` those listed that exist (a listed version with no directory is
/// logged and skipped). Whether a selected version's model file loads is the loader's concern.
pub fn select_versions(source: &ModelSource, config: &ModelConfig) -> Vec<u64> {
    let policy = config.version_policy.as_ref().and_then(|p| p.policy_choice.as_ref());
    match policy {
        None => latest(&source.versions, 1),
        Some(PolicyChoice::Latest(l)) => latest(&source.versions, l.num_versions as usize),
        Some(PolicyChoice::All(_)) => source.versions.clone(),
        Some(PolicyChoice::Specific(s)) => {
            let mut chosen = Vec::new();
            for &wanted in &s.versions {
                match u64::try_from(wanted) {
                    Ok(v) if source.versions.contains(&v) => chosen.push(v),
                    _ => tracing::error!(
                        model = %source.name,
                        version = wanted,
                        "version is listed in the version policy, but its directory is not present"
                    ),
                }
            }
            chosen.sort_unstable();
            chosen.dedup();
            chosen
        }
    }
}

fn latest(versions: &[u64], n: usize) -> Vec<u64> {
    versions[versions.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::inference::ModelVersionPolicy;
    use tern_proto::inference::model_version_policy::{All, Latest, Specific};

    #[test]
    fn model_names() {
        assert_eq!(validate_model_name("ok_name-1.2"), Ok(()));
        assert_eq!(validate_model_name("ResNet50"), Ok(()));
        for bad in ["", "../x", "a/b", "a\\b", "..", ".", ".hidden", "a b", "é", "a:b"] {
            let err = validate_model_name(bad).expect_err(bad);
            assert!(matches!(&err, RepositoryError::InvalidName { name, .. } if name == bad), "{err:?}");
        }
        assert_eq!(
            validate_model_name("../x").map_err(|e| e.to_string()),
            Err("invalid model name '../x': it contains a path separator".to_owned())
        );
        assert_eq!(
            validate_model_name("").map_err(|e| e.to_string()),
            Err("invalid model name '': the name is empty".to_owned())
        );
    }

    #[test]
    fn one_model_by_name() -> Result<(), Box<dyn std::error::Error>> {
        let a = tempfile::tempdir()?;
        let b = tempfile::tempdir()?;
        let repos = [a.path().to_path_buf(), b.path().to_path_buf()];
        fs::create_dir_all(a.path().join("m/1"))?;
        fs::write(a.path().join("m/config.pbtxt"), "name: \"m\"")?;
        fs::create_dir_all(a.path().join("twice"))?;
        fs::create_dir_all(b.path().join("twice"))?;
        fs::create_dir_all(b.path().join(".hidden"))?;
        fs::write(b.path().join("file_not_dir"), "x")?;

        let found = scan_model(&repos, "m").ok_or("m not found")?;
        let listed = scan(&repos)?.into_iter().find(|s| s.name() == "m").ok_or("m not listed")?;
        assert_eq!(found, listed, "the same as a full scan finds");
        assert!(matches!(
            scan_model(&repos, "twice"),
            Some(ScannedModel::Failed { error: RepositoryError::DuplicateModel { .. }, .. })
        ));
        for absent in ["nope", ".hidden", "file_not_dir", "../m", ""] {
            assert_eq!(scan_model(&repos, absent), None, "{absent}");
        }
        assert_eq!(super::model_names(&repos)?, vec!["m".to_owned(), "twice".to_owned()]);
        Ok(())
    }

    #[test]
    fn version_names() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("0"), Some(0));
        assert_eq!(parse_version("20240101"), Some(20240101));
        for bad in ["", "01", "-1", "+1", "1a", "v1", " 1", "99999999999999999999999"] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }

    fn source(versions: Vec<u64>) -> ModelSource {
        ModelSource { name: "m".to_owned(), dir: PathBuf::from("/repo/m"), config: None, versions }
    }

    fn with_policy(choice: PolicyChoice) -> ModelConfig {
        ModelConfig {
            version_policy: Some(ModelVersionPolicy { policy_choice: Some(choice) }),
            ..Default::default()
        }
    }

    #[test]
    fn version_policies() {
        let s = source(vec![1, 2, 5]);
        assert_eq!(select_versions(&s, &ModelConfig::default()), vec![5]);
        let latest2 = with_policy(PolicyChoice::Latest(Latest { num_versions: 2 }));
        assert_eq!(select_versions(&s, &latest2), vec![2, 5]);
        let latest9 = with_policy(PolicyChoice::Latest(Latest { num_versions: 9 }));
        assert_eq!(select_versions(&s, &latest9), vec![1, 2, 5]);
        let all = with_policy(PolicyChoice::All(All {}));
        assert_eq!(select_versions(&s, &all), vec![1, 2, 5]);
        let specific = with_policy(PolicyChoice::Specific(Specific { versions: vec![5, 3, 1, -1, 1] }));
        assert_eq!(select_versions(&s, &specific), vec![1, 5]);
        assert!(select_versions(&source(vec![]), &ModelConfig::default()).is_empty());
    }

    #[test]
    fn model_file_path_uses_default_model_filename() {
        let s = source(vec![1]);
        assert_eq!(model_file_path(&s, &ModelConfig::default(), 3), PathBuf::from("/repo/m/3/model.onnx"));
        let config = ModelConfig { default_model_filename: "resnet.onnx".to_owned(), ..Default::default() };
        assert_eq!(model_file_path(&s, &config, 12), PathBuf::from("/repo/m/12/resnet.onnx"));
    }
}
