//! The model table and the model lifecycle: which versions of which models are loaded, loading
//! and unloading them (at start, through the repository API, or by polling the repositories),
//! and hot reload without dropping requests.
//!
//! Requests read the table without locking (`ArcSwap`) and hold an `Arc` of the version they
//! run on, so a reload swaps the table atomically while requests already queued or running on
//! the old version finish there; the old sessions are dropped with the last of them. Loads and
//! unloads of one model are serialized (a per-model async mutex); different models load in
//! parallel, at most `--model-load-thread-count` at a time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tern_core::{ModelState, RequestError};
use tern_proto::inference::ModelConfig;
use tern_repository::ScannedModel;

pub use crate::loader::{LoadOptions, LoadedModel};
use crate::locks::ModelLocks;
use crate::table::UNLOADED;
pub use crate::table::{IndexRow, ModelEntry, VersionState};

mod ensemble;
mod reload;

/// Triton's `--model-control-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ControlMode {
    /// Load everything at start; no changes afterwards.
    None,
    /// Load everything at start, then follow the repositories' changes.
    Poll,
    /// Load only `--load-model` at start; the repository API loads and unloads.
    Explicit,
}

/// Every model the node knows, by name.
pub struct ModelManager {
    table: ArcSwap<HashMap<String, ModelEntry>>,
    /// Load durations, failures, memory estimates and unloads are reported here.
    metrics: Arc<tern_telemetry::Metrics>,
    repositories: Vec<PathBuf>,
    options: LoadOptions,
    runtime: tokio::runtime::Handle,
    load_limit: Arc<tokio::sync::Semaphore>,
    /// One load or unload at a time per model; names are forgotten when unused.
    model_locks: ModelLocks,
    /// Repository loads running now, which a load of the same model joins.
    flights: crate::flight::Flights,
    /// Models loaded from `file:` parameters live in temporary repositories owned here.
    uploads: Mutex<HashMap<String, tempfile::TempDir>>,
    /// How long an unload waits for the requests in flight.
    drain_timeout: Duration,
    /// Set on SIGTERM: not ready, and no more loads or unloads (Triton's SERVER_EXITING).
    draining: AtomicBool,
    /// Full scans of the repositories (reading every model directory) since start: only at
    /// start and in poll mode; never for a request (checked by tests).
    full_scans: AtomicU64,
    /// Models loaded by name (a load request, `--load-model`, or every model at start in the
    /// other modes), as against composing models loaded only for an ensemble: Triton's
    /// `explicitly_load_` (model_repository_manager.cc, `PollModels`), which decides what an
    /// unload with `unload_dependents` takes down with the ensemble.
    explicit: Mutex<std::collections::HashSet<String>>,
}

impl ModelManager {
    pub fn new(
        metrics: Arc<tern_telemetry::Metrics>,
        repositories: Vec<PathBuf>,
        options: LoadOptions,
        parallel: usize,
        drain_timeout: Duration,
    ) -> ModelManager {
        ModelManager {
            table: ArcSwap::from_pointee(HashMap::new()),
            metrics,
            repositories,
            options,
            runtime: tokio::runtime::Handle::current(),
            load_limit: Arc::new(tokio::sync::Semaphore::new(parallel.max(1))),
            model_locks: ModelLocks::default(),
            flights: crate::flight::Flights::default(),
            uploads: Mutex::new(HashMap::new()),
            drain_timeout,
            draining: AtomicBool::new(false),
            full_scans: AtomicU64::new(0),
            explicit: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Every model of the repositories, read on a blocking thread.
    async fn scan_all(&self) -> Result<Vec<ScannedModel>, String> {
        self.full_scans.fetch_add(1, Ordering::Relaxed);
        let repositories = self.repositories.clone();
        tokio::task::spawn_blocking(move || tern_repository::scan(&repositories).map_err(|e| e.to_string()))
            .await
            .map_err(|e| format!("repository scan failed: {e}"))?
    }

    /// How many full scans of the repositories have run.
    pub fn full_scans(&self) -> u64 {
        self.full_scans.load(Ordering::Relaxed)
    }

    /// Names with a per-model lock now (held or waited for).
    pub fn model_locks_in_use(&self) -> usize {
        self.model_locks.len()
    }

    /// Names with a repository load running now.
    pub fn loads_in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Callers waiting now for a repository load another caller of the same model runs.
    pub fn loads_joined(&self) -> usize {
        self.flights.joined()
    }

    /// The node is shutting down: from now on it reports not ready and refuses loads and
    /// unloads, as Triton once exiting (server.cc: IsReady answers "Server exiting"; LoadModel
    /// and UnloadModel "Server not ready"). Requests keep being served until the node closes.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// ServerReady: not while draining; with strict readiness, only when every model lets it
    /// be ([`ModelEntry::lets_server_be_ready`]).
    pub fn server_ready(&self, strict: bool) -> bool {
        !self.draining() && (!strict || self.all_ready())
    }

    fn refuse_while_draining(&self) -> Result<(), RequestError> {
        if self.draining() {
            return Err(RequestError::Unavailable("Server not ready: the node is shutting down".into()));
        }
        Ok(())
    }

    /// Loads every model of the repositories (`only`: just those names). A model that fails is
    /// recorded with its reason; it never fails the node.
    pub async fn load_startup(self: &Arc<Self>, only: Option<&[String]>) -> Result<(), String> {
        let scanned = self.scan_all().await?;
        // Ensembles after the models they run (Triton loads by dependency:
        // model_repository_manager.cc, `LoadModelByDependency`), one at a time: they open
        // nothing, and a nested ensemble then finds its steps loaded.
        let (ensembles, scanned): (Vec<_>, Vec<_>) = scanned.into_iter().partition(|item| {
            item.as_result().is_ok_and(|s| s.config.as_ref().is_some_and(tern_repository::is_ensemble))
        });
        let mut tasks = Vec::new();
        for item in scanned {
            if only.is_some_and(|names| !names.iter().any(|n| n == item.name())) {
                continue;
            }
            self.mark_explicit(item.name());
            let this = self.clone();
            tasks.push(tokio::spawn(async move {
                let name = item.name().to_string();
                let _ = this.apply(&name, item, None).await;
            }));
        }
        for task in tasks {
            task.await.map_err(|e| format!("model load task failed: {e}"))?;
        }
        for item in ensembles {
            if only.is_some_and(|names| !names.iter().any(|n| n == item.name())) {
                continue;
            }
            let name = item.name().to_string();
            self.mark_explicit(&name);
            let _ = self.apply(&name, item, None).await;
        }
        if let Some(names) = only {
            for name in names {
                if !self.table.load().contains_key(name) {
                    tracing::error!(model = %name, "--load-model names a model no repository holds");
                    self.store(
                        name,
                        Some(ModelEntry::failed(format!("model '{name}' is not in any model repository"))),
                    );
                }
            }
        }
        Ok(())
    }

    /// RepositoryModelLoad: loads or reloads `name` from the repositories, or from uploaded
    /// `files` (`<version>/<file name>` -> bytes) with `config_json`.
    pub async fn load(
        &self,
        name: &str,
        config_json: Option<&str>,
        files: Vec<(String, Vec<u8>)>,
    ) -> Result<(), RequestError> {
        tern_repository::validate_model_name(name)
            .map_err(|e| RequestError::InvalidArgument(e.to_string()))?;
        self.refuse_while_draining()?;
        self.mark_explicit(name);
        let override_config = match config_json {
            // Triton fails the repository poll on a config it cannot read, and says so in these
            // words (core src/model_repository_manager/model_repository_manager.cc,
            // LoadUnloadModel; Triton's client example simple_grpc_model_control.py checks them);
            // the reason follows.
            Some(json) => Some(tern_repository::config_override_from_json(json).map_err(|e| {
                RequestError::Internal(format!("{}: 'config' parameter: {e}", poll_failure(name)))
            })?),
            None => None,
        };
        // Names in a client's config must not lead out of the model directory.
        // Nor may its numbers size memory or threads past the limits: refused before anything
        // loads, and the model's current state (and the node's readiness) is left as it is.
        if let Some(config) = &override_config {
            tern_repository::check_file_names(name, config)
                .map_err(|e| RequestError::InvalidArgument(format!("'config' parameter: {e}")))?;
            tern_repository::check_bounds(name, config)
                .map_err(|e| RequestError::InvalidArgument(format!("'config' parameter: {e}")))?;
            tern_repository::check_override_loads_no_native_code(name, config)
                .map_err(|e| RequestError::InvalidArgument(format!("'config' parameter: {e}")))?;
        }
        if override_config.is_none() && files.is_empty() {
            // The same load from the repositories, asked for while one runs, joins it.
            return self.flights.join(name, || self.load_from(name, None, Vec::new())).await;
        }
        self.load_from(name, override_config, files).await
    }

    /// [`Self::load`] once its arguments are checked.
    async fn load_from(
        &self,
        name: &str,
        override_config: Option<ModelConfig>,
        files: Vec<(String, Vec<u8>)>,
    ) -> Result<(), RequestError> {
        let item = if files.is_empty() {
            self.scan_one(name).await?
        } else {
            if override_config.is_none() {
                return Err(RequestError::InvalidArgument(format!(
                    "model '{name}': 'file:' parameters need a 'config' parameter with the model's config"
                )));
            }
            self.write_upload(name, files).await?
        };
        let entry = self.apply(name, item, override_config).await?;
        if let Some(reason) = &entry.reason {
            // Some version failed; the previous load may still serve (the index says so).
            Err(RequestError::Internal(format!("failed to load '{name}': {reason}")))
        } else if entry.ready().next().is_some() {
            Ok(())
        } else {
            let reason = entry.reason.clone().or_else(|| {
                entry.versions.values().find_map(|s| match s {
                    VersionState::Unavailable(r) => Some(r.clone()),
                    VersionState::Ready(_) => None,
                })
            });
            Err(RequestError::Internal(format!(
                "failed to load '{name}': {}",
                reason.unwrap_or_else(|| "no version could be loaded".into())
            )))
        }
    }

    /// RepositoryModelUnload: the model stops taking requests at once; the call returns when
    /// its requests in flight are done (bounded by the drain timeout).
    pub async fn unload(&self, name: &str) -> Result<(), RequestError> {
        self.unload_with(name, false).await
    }

    /// RepositoryModelUnload with its `unload_dependents` parameter: when `name` is an
    /// ensemble, its composing models go with it, as in Triton
    /// (`TRITONSERVER_ServerUnloadModelAndDependents`; model_repository_manager.cc,
    /// `DependencyGraph::RemoveNodes` with cascading removal): each composing model that was
    /// not loaded by name and that no other ensemble still runs is unloaded too, and so on down
    /// nested ensembles. A composing model loaded by name, or still run by another ensemble,
    /// stays.
    pub fn unload_with<'a>(
        &'a self,
        name: &'a str,
        dependents: bool,
    ) -> futures::future::BoxFuture<'a, Result<(), RequestError>> {
        Box::pin(async move {
            let steps = self.unload_one(name).await?;
            if dependents {
                for step in steps {
                    if self.explicitly_loaded(&step) || self.run_by_an_ensemble(&step) {
                        continue;
                    }
                    tracing::info!(model = %step, ensemble = %name, "unloading a composing model of the unloaded ensemble");
                    self.unload_with(&step, true).await?;
                }
            }
            Ok(())
        })
    }

    fn mark_explicit(&self, name: &str) {
        self.explicit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.to_owned());
    }

    fn explicitly_loaded(&self, name: &str) -> bool {
        self.explicit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(name)
    }

    /// Unloads `name`; answers the composing models it ran, when it was an ensemble.
    async fn unload_one(&self, name: &str) -> Result<Vec<String>, RequestError> {
        tern_repository::validate_model_name(name)
            .map_err(|e| RequestError::InvalidArgument(e.to_string()))?;
        self.refuse_while_draining()?;
        let _guard = self.model_locks.lock(name).await;
        self.explicit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
        let Some(old) = self.table.load().get(name).cloned() else {
            // Triton answers success for a model it does not have.
            return Ok(Vec::new());
        };
        let mut steps: Vec<String> = Vec::new();
        for model in old.ready() {
            for step in model.ensemble.iter().flat_map(|g| g.models()) {
                if !steps.iter().any(|s| s == step) {
                    steps.push(step.to_owned());
                }
            }
        }
        if old.versions.is_empty() {
            // Failed before any version (unreadable config, no version directory): nothing
            // was ever served, so nothing is left to show; the index lists it by name again.
            self.store(name, None);
        } else {
            let versions =
                old.versions.keys().map(|v| (*v, VersionState::Unavailable(UNLOADED.into()))).collect();
            self.store(name, Some(ModelEntry { versions, reason: None, fingerprint: 0 }));
        }
        if let Ok(mut uploads) = self.uploads.lock() {
            uploads.remove(name);
        }
        for v in old.versions.keys() {
            self.metrics.model_unloaded(name, &v.to_string());
        }
        // Still under this model's lock: locks are taken composing model first, ensemble after.
        self.unload_dependents(name).await;
        tracing::info!(model = %name, "unloaded; waiting for requests in flight");
        self.drain(old).await;
        Ok(steps)
    }

    /// Poll mode: one pass over the repositories. A model directory that changed is reloaded
    /// once it looks the same on two passes in a row (so a file still being written is not
    /// loaded half-written); one that disappeared is unloaded.
    pub async fn poll_once(self: &Arc<Self>, seen: &mut HashMap<String, u64>) {
        let scanned = match self.scan_all().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "repository poll failed");
                return;
            }
        };
        let mut present = Vec::new();
        for item in scanned {
            let name = item.name().to_string();
            present.push(name.clone());
            let fp = self.fingerprint(&name).await;
            let stable = seen.insert(name.clone(), fp) == Some(fp);
            let loaded = self.table.load().get(&name).map(|e| e.fingerprint);
            if stable && loaded != Some(fp) {
                tracing::info!(model = %name, "model directory changed: reloading");
                let _ = self.apply(&name, item, None).await;
            }
        }
        let gone: Vec<String> = self.table.load().keys().filter(|n| !present.contains(n)).cloned().collect();
        for name in gone {
            if self.uploads.lock().is_ok_and(|u| u.contains_key(&name)) {
                continue;
            }
            tracing::info!(model = %name, "model directory removed: unloading");
            let _ = self.unload(&name).await;
            self.store(&name, None);
            seen.remove(&name);
        }
    }

    /// The version to serve for `name` and `version` ("" = the highest ready one).
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<LoadedModel>, RequestError> {
        let wanted = if version.is_empty() {
            None
        } else {
            match version.parse::<u64>() {
                Ok(v) if v > 0 => Some(v),
                _ => {
                    return Err(RequestError::InvalidArgument(format!(
                        "failed to get model version from specified version string '{version}', version should be an integral value > 0"
                    )));
                }
            }
        };
        let table = self.table.load();
        let Some(entry) = table.get(name) else {
            return Err(RequestError::NotFound(format!("Request for unknown model: '{name}' is not found")));
        };
        match wanted {
            None => entry.ready().next_back().cloned().ok_or_else(|| {
                RequestError::NotFound(format!(
                    "Request for unknown model: '{name}' has no available versions"
                ))
            }),
            Some(v) => match entry.versions.get(&v) {
                Some(VersionState::Ready(m)) => Ok(m.clone()),
                Some(VersionState::Unavailable(reason)) => Err(RequestError::Unavailable(format!(
                    "Request for model '{name}' version {v}: the version is not ready ({reason})"
                ))),
                None => Err(RequestError::NotFound(format!(
                    "Request for unknown model: '{name}' version {v} is not found"
                ))),
            },
        }
    }

    /// Every ready version of `name`, ascending (ModelMetadata's `versions`).
    pub fn ready_versions(&self, name: &str) -> Vec<String> {
        self.table
            .load()
            .get(name)
            .map(|e| e.ready().map(|m| m.version_str.clone()).collect())
            .unwrap_or_default()
    }

    /// Every ready version of every model.
    pub fn all_ready_models(&self) -> Vec<Arc<LoadedModel>> {
        let table = self.table.load();
        let mut names: Vec<&String> = table.keys().collect();
        names.sort();
        names.into_iter().flat_map(|n| table[n].ready().cloned().collect::<Vec<_>>()).collect()
    }

    /// Triton's strict readiness over every model ([`ModelEntry::lets_server_be_ready`]).
    pub fn all_ready(&self) -> bool {
        self.table.load().values().all(ModelEntry::lets_server_be_ready)
    }

    /// RepositoryIndex rows, sorted by name and version.
    pub fn index(&self) -> Vec<IndexRow> {
        let table = self.table.load();
        let mut names: Vec<&String> = table.keys().collect();
        names.sort();
        let mut rows = Vec::new();
        for name in names {
            let entry = &table[name];
            if entry.versions.is_empty() {
                rows.push(IndexRow {
                    name: name.clone(),
                    version: String::new(),
                    state: Some(ModelState::Unavailable),
                    reason: entry.reason.clone().unwrap_or_default(),
                });
            }
            for (v, state) in &entry.versions {
                let (state, reason) = match state {
                    VersionState::Ready(_) => {
                        (Some(ModelState::Ready), entry.reason.clone().unwrap_or_default())
                    }
                    VersionState::Unavailable(r) => (Some(ModelState::Unavailable), r.clone()),
                };
                rows.push(IndexRow { name: name.clone(), version: v.to_string(), state, reason });
            }
        }
        rows
    }

    /// [`Self::index`] plus the models in the repositories that were never loaded (explicit
    /// mode), listed by name only as Triton does, so a client (or a router) sees what it may
    /// load. Lists the repositories' directories (names only) on a blocking thread.
    pub async fn repository_index(&self) -> Vec<IndexRow> {
        let repositories = self.repositories.clone();
        let names = tokio::task::spawn_blocking(move || tern_repository::model_names(&repositories)).await;
        let mut rows = self.index();
        let table = self.table.load();
        if let Ok(Ok(names)) = names {
            for name in names.into_iter().filter(|n| !table.contains_key(n)) {
                rows.push(IndexRow { name, version: String::new(), state: None, reason: String::new() });
            }
            rows.sort_by(|a, b| a.name.cmp(&b.name));
        }
        rows
    }

    /// Drops every model: their instance threads finish queued work and end.
    pub fn clear(&self) {
        self.table.store(Arc::new(HashMap::new()));
    }
}

/// Triton's words for a load whose repository poll failed (an unknown model, an unreadable
/// config override, bad uploaded file names): INTERNAL "failed to load '<name>', failed to poll
/// from model repository".
pub fn poll_failure(name: &str) -> String {
    format!("failed to load '{name}', failed to poll from model repository")
}
