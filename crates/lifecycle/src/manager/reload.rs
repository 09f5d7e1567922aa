//! Version switching: a (re)load opens the new versions beside those serving, then swaps the
//! model's entry in whole, so requests see the old versions or the new ones, never none; the
//! versions no longer served drain (their requests in flight finish) and are freed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_core::RequestError;
use tern_proto::inference::ModelConfig;
use tern_repository::ScannedModel;

use super::ModelManager;
use crate::loader::LoadedModel;
use crate::table::{ModelEntry, VersionState, retired};

impl ModelManager {
    /// Replaces (or removes) one model's entry; readers see the old or the new table, whole.
    pub(super) fn store(&self, name: &str, entry: Option<ModelEntry>) {
        self.table.rcu(|table| {
            let mut table = HashMap::clone(table);
            match &entry {
                Some(e) => table.insert(name.to_string(), e.clone()),
                None => table.remove(name),
            };
            table
        });
    }

    /// The one model directory `name` (Triton polls only the model a load names): a `stat`
    /// per repository, on a blocking thread; never a scan of every model.
    pub(super) async fn scan_one(&self, name: &str) -> Result<ScannedModel, RequestError> {
        let repositories = self.repositories.clone();
        let owned = name.to_string();
        let found = tokio::task::spawn_blocking(move || tern_repository::scan_model(&repositories, &owned))
            .await
            .map_err(|e| RequestError::Internal(format!("model '{name}': repository lookup failed: {e}")))?;
        // Triton's status and wording for a model no repository holds.
        found.ok_or_else(|| {
            RequestError::Internal(format!("failed to load '{name}', failed to poll from model repository"))
        })
    }

    /// Writes `file:` parameters into a temporary repository (on a blocking thread); the
    /// override config decides the rest.
    pub(super) async fn write_upload(
        &self,
        name: &str,
        files: Vec<(String, Vec<u8>)>,
    ) -> Result<ScannedModel, RequestError> {
        let owned = name.to_string();
        let (dir, item) =
            tokio::task::spawn_blocking(move || crate::files::write_upload(&owned, files)).await.map_err(
                |e| RequestError::Internal(format!("model '{name}': writing its files failed: {e}")),
            )??;
        if let Ok(mut uploads) = self.uploads.lock() {
            uploads.insert(name.to_string(), dir);
        }
        Ok(item)
    }

    /// [`crate::files::fingerprint`] on a blocking thread.
    pub(super) async fn fingerprint(&self, name: &str) -> u64 {
        let repositories = self.repositories.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || crate::files::fingerprint(&repositories, &name))
            .await
            .unwrap_or(0)
    }

    /// Loads the versions the policy selects beside whatever serves now, then swaps the entry
    /// in whole. A version that fails to load keeps its old ready instance if it had one.
    pub(super) async fn apply(
        &self,
        name: &str,
        item: ScannedModel,
        override_config: Option<ModelConfig>,
    ) -> Result<ModelEntry, RequestError> {
        let ensemble = match &item {
            ScannedModel::Found(source) => override_config
                .as_ref()
                .or(source.config.as_ref())
                .filter(|c| tern_repository::is_ensemble(c))
                .cloned(),
            ScannedModel::Failed { .. } => None,
        };
        // An ensemble's composing models load first, outside its lock and load permit (their
        // loads need permits of their own).
        let dependencies = match &ensemble {
            Some(config) => self.ensure_steps(name, config).await,
            None => Ok(()),
        };
        let _guard = self.model_locks.lock(name).await;
        let _permit = self.load_limit.acquire().await.map_err(|e| RequestError::Internal(e.to_string()))?;
        let started = Instant::now();
        let fp = self.fingerprint(name).await;
        let source = match dependencies.and_then(|()| item.into_result().map_err(|e| e.to_string())) {
            Ok(source) => source,
            Err(reason) => {
                tracing::error!(model = %name, %reason, "model failed to load");
                let entry = self.merge_failure(name, reason, fp);
                return Ok(entry);
            }
        };
        let options = self.options.clone();
        let runtime = self.runtime.clone();
        // Memory estimate: the RSS growth over the load (approximate when loads overlap).
        let rss_before = tern_telemetry::process_resident_memory_bytes();
        let loaded = match ensemble {
            // Opens nothing: checked against the composing models in the table now.
            Some(config) => crate::ensemble::load_ensemble_versions(
                &source,
                config,
                &self.table.load(),
                &runtime,
                self.options.response_cache.as_ref(),
            ),
            None => tokio::task::spawn_blocking(move || {
                crate::loader::load_versions(&source, override_config, &options, &runtime)
            })
            .await
            .map_err(|e| RequestError::Internal(format!("model '{name}': loading panicked: {e}")))?,
        };
        let old = self.table.load().get(name).cloned().unwrap_or_default();
        let mut entry = ModelEntry { versions: BTreeMap::new(), reason: None, fingerprint: fp };
        match loaded {
            Err(reason) => {
                tracing::error!(model = %name, %reason, "model failed to load");
                self.metrics.model_load_failed(name, "");
                entry = self.merge_failure(name, reason, fp);
            }
            Ok(versions) => {
                for (v, result) in versions {
                    let state = match result {
                        Ok(model) => VersionState::Ready(Arc::new(model)),
                        Err(reason) => {
                            tracing::error!(model = %name, version = v, %reason, "version failed to load");
                            match old.versions.get(&v) {
                                Some(VersionState::Ready(m)) => {
                                    entry.reason =
                                        Some(format!("reload failed, serving the previous load: {reason}"));
                                    VersionState::Ready(m.clone())
                                }
                                _ => VersionState::Unavailable(reason),
                            }
                        }
                    };
                    entry.versions.insert(v, state);
                }
                if entry.versions.is_empty() {
                    entry.reason =
                        Some(format!("model '{name}': the version policy selects no version directory"));
                }
                let ready =
                    entry.versions.values().filter(|s| matches!(s, VersionState::Ready(_))).count().max(1);
                let grown = rss_before
                    .zip(tern_telemetry::process_resident_memory_bytes())
                    .map(|(before, after)| after.saturating_sub(before) / ready as u64);
                for (v, state) in &entry.versions {
                    match state {
                        VersionState::Ready(_) => {
                            self.metrics.model_loaded(name, &v.to_string(), started.elapsed(), grown);
                            tracing::info!(model = %name, version = v, elapsed_ms = started.elapsed().as_millis() as u64, "model ready");
                        }
                        VersionState::Unavailable(_) => self.metrics.model_load_failed(name, &v.to_string()),
                    }
                }
                self.store(name, Some(entry.clone()));
            }
        }
        // Versions no longer served wait for their requests in flight (our own handles on them
        // must go first, or the wait would count them).
        let retired = ModelEntry { versions: retired(&old, &entry), ..ModelEntry::default() };
        drop(old);
        if entry.ready().next().is_some() {
            self.revalidate_dependents(name).await;
        }
        self.drain(retired).await;
        Ok(entry)
    }

    /// A failed (re)load: the old ready versions keep serving, with the reason attached.
    pub(super) fn merge_failure(&self, name: &str, reason: String, fp: u64) -> ModelEntry {
        let old = self.table.load().get(name).cloned();
        let entry = match old {
            Some(old) if old.ready().next().is_some() => ModelEntry {
                reason: Some(format!("reload failed, serving the previous load: {reason}")),
                fingerprint: fp,
                ..old
            },
            _ => ModelEntry { reason: Some(reason), fingerprint: fp, ..ModelEntry::default() },
        };
        self.store(name, Some(entry.clone()));
        entry
    }

    /// Waits (bounded) until no request holds the versions of `old`, lets them drop, waits for
    /// their instance threads to free the sessions, and hands the freed memory back to the OS.
    pub(super) async fn drain(&self, old: ModelEntry) {
        let models: Vec<Arc<LoadedModel>> = old.ready().cloned().collect();
        drop(old);
        if models.is_empty() {
            return;
        }
        let deadline = Instant::now() + self.drain_timeout;
        for m in &models {
            while Arc::strong_count(m) > 1 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if models.iter().any(|m| Arc::strong_count(m) > 1) {
            tracing::warn!("drain timeout: requests still hold an unloaded model; it is freed when they end");
        }
        let finished: Vec<_> = models.iter().map(|m| m.scheduler.finished()).collect();
        drop(models);
        let all = futures::future::join_all(finished.into_iter().map(|f| f.wait()));
        if tokio::time::timeout_at(deadline.into(), all).await.is_ok() {
            let backend = self.options.backend.clone();
            let _ = tokio::task::spawn_blocking(move || backend.release_freed_memory()).await;
        }
    }
}
