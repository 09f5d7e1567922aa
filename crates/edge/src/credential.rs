//! The credentials a Tern server presents upstream (router -> node, node -> router, and
//! `tern serve`'s in-memory token), and the file watching that token files and credential
//! files share: re-read when they change (checked every second, on a blocking thread), so
//! tokens can be rotated without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tonic::metadata::{Ascii, MetadataValue};

use crate::EdgeError;
use crate::tokens::{Grant, Groups};

/// How often token and credential files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A random token that lives only in one process's memory, allowed everything.
#[derive(Clone)]
pub struct InternalToken(String);

impl std::fmt::Debug for InternalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalToken(..)")
    }
}

impl InternalToken {
    pub fn generate() -> Result<InternalToken, EdgeError> {
        crate::tokens::new_token().map(InternalToken)
    }

    /// The credential that presents this token.
    pub fn credential(&self) -> Result<Credential, EdgeError> {
        Credential::token(&self.0)
    }

    pub(crate) fn entry(&self) -> (String, Grant) {
        let grant =
            Grant { name: "internal".into(), groups: Groups::all(), models: crate::tokens::Models::All };
        (self.0.clone(), grant)
    }
}

/// A file re-read when it changes: its path and the modification time and size last seen.
#[derive(Debug)]
pub(crate) struct WatchedFile {
    pub(crate) path: PathBuf,
    seen: Mutex<Option<(SystemTime, u64)>>,
}

impl WatchedFile {
    /// Notes the file's state now (before its first read, so no change is missed).
    pub(crate) fn new(path: &Path) -> WatchedFile {
        WatchedFile { path: path.to_path_buf(), seen: Mutex::new(Self::stamp(path)) }
    }

    fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
        std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())))
    }

    /// True once per change of the file since the last call.
    pub(crate) fn changed(&self) -> bool {
        let now = Self::stamp(&self.path);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *seen, now) != now
    }

    pub(crate) fn read(&self) -> Result<String, EdgeError> {
        std::fs::read_to_string(&self.path)
            .map_err(|source| EdgeError::Read { path: self.path.clone(), source })
    }

    /// Whether the file is gone (deleted, not merely unreadable or half-written).
    pub(crate) fn deleted(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What follows a [`WatchedFile`].
pub(crate) trait Reload: Send + Sync + 'static {
    fn reload_if_changed(&self);
}

/// Calls `target.reload_if_changed()` every [`RELOAD_CHECK`] on a blocking thread, until
/// `target` is dropped (nothing outside a Tokio runtime).
pub(crate) fn watch<T: Reload>(target: &Arc<T>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let target = Arc::downgrade(target);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RELOAD_CHECK).await;
            let Some(target) = target.upgrade() else { return };
            let _ = tokio::task::spawn_blocking(move || target.reload_if_changed()).await;
        }
    });
}

/// The token a server presents upstream (router -> node, node -> router), as a tonic
/// interceptor; empty when none is configured.
#[derive(Clone, Default)]
pub struct Credential(Option<Arc<CredentialCell>>);

/// The header value, and the file it comes from (none for an in-memory token).
struct CredentialCell {
    value: ArcSwapOption<MetadataValue<Ascii>>,
    file: Option<WatchedFile>,
}

impl CredentialCell {
    fn read(file: &WatchedFile) -> Result<MetadataValue<Ascii>, EdgeError> {
        header_value(&file.read()?).map_err(|e| EdgeError::Token(format!("{}: {e}", file.path.display())))
    }
}

impl Reload for CredentialCell {
    fn reload_if_changed(&self) {
        let Some(file) = self.file.as_ref().filter(|f| f.changed()) else { return };
        match Self::read(file) {
            Ok(value) => {
                self.value.store(Some(Arc::new(value)));
                tracing::info!(file = %file.path.display(), "credential reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "credential file changed but cannot be used; keeping the previous token")
            }
        }
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Credential(set)" } else { "Credential(none)" })
    }
}

fn header_value(token: &str) -> Result<MetadataValue<Ascii>, EdgeError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(EdgeError::Token("the token is empty".into()));
    }
    let mut value = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| EdgeError::Token("the token holds characters a header cannot".into()))?;
    // Kept out of debug output (HTTP/2 also never indexes it in HPACK tables).
    value.set_sensitive(true);
    Ok(value)
}

impl Credential {
    pub fn none() -> Credential {
        Credential(None)
    }

    /// A fixed token (in memory only).
    pub fn token(token: &str) -> Result<Credential, EdgeError> {
        let value = ArcSwapOption::from_pointee(header_value(token)?);
        Ok(Credential(Some(Arc::new(CredentialCell { value, file: None }))))
    }

    /// The token in `path` (for example a mounted Secret), re-read when the file changes.
    pub fn from_file(path: &Path) -> Result<Credential, EdgeError> {
        let file = WatchedFile::new(path);
        let value = ArcSwapOption::from_pointee(CredentialCell::read(&file)?);
        let cell = Arc::new(CredentialCell { value, file: Some(file) });
        watch(&cell);
        Ok(Credential(Some(cell)))
    }

    /// Sets (or replaces) the authorization header of an outgoing request.
    pub fn apply(&self, metadata: &mut tonic::metadata::MetadataMap) {
        if let Some(value) = self.0.as_ref().and_then(|cell| cell.value.load_full()) {
            metadata.insert("authorization", value.as_ref().clone());
        }
    }
}

impl tonic::service::Interceptor for Credential {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.apply(request.metadata_mut());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credentials_set_the_header_and_follow_their_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap_or_else(|e| panic!("write: {e}"));
        let credential = Credential::from_file(&path).unwrap_or_default();
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("authorization", MetadataValue::from_static("Bearer client"));
        credential.apply(&mut metadata);
        assert_eq!(metadata.get("authorization").and_then(|v| v.to_str().ok()), Some("Bearer first"));
        assert_eq!(metadata.get_all("authorization").iter().count(), 1);
        std::fs::write(&path, "second-token-longer\n").unwrap_or_else(|e| panic!("write: {e}"));
        let mut seen = String::new();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            credential.apply(&mut metadata);
            seen = metadata.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            if seen == "Bearer second-token-longer" {
                break;
            }
        }
        assert_eq!(seen, "Bearer second-token-longer");
        assert!(Credential::from_file(&dir.path().join("missing")).is_err());
        std::fs::write(&path, "  \n").unwrap_or_else(|e| panic!("write: {e}"));
        assert!(Credential::from_file(&path).is_err());
    }
}
