//! The model table's rows: each model's versions and where each stands, and what the
//! repository index shows of them. Pure data; [`crate::ModelManager`] changes it.

use std::collections::BTreeMap;
use std::sync::Arc;

use tern_core::ModelState;

use crate::loader::LoadedModel;

/// Triton's `VersionState` reason for a version unloaded on purpose.
pub(crate) const UNLOADED: &str = "unloaded";

/// Where one version of a model stands.
#[derive(Clone)]
pub enum VersionState {
    Ready(Arc<LoadedModel>),
    /// Failed to load, or unloaded; the reason is logged and shown by RepositoryIndex.
    Unavailable(String),
}

/// One model: its versions, and why the model as a whole is not serving when that is so.
#[derive(Clone, Default)]
pub struct ModelEntry {
    pub versions: BTreeMap<u64, VersionState>,
    /// A failure not tied to one version (bad config, no version, failed reload).
    pub reason: Option<String>,
    /// What the model directory looked like when it was loaded (poll mode compares).
    pub(crate) fingerprint: u64,
}

impl ModelEntry {
    pub(crate) fn failed(reason: String) -> ModelEntry {
        ModelEntry { reason: Some(reason), ..ModelEntry::default() }
    }

    pub(crate) fn ready(&self) -> impl DoubleEndedIterator<Item = &Arc<LoadedModel>> {
        self.versions.values().filter_map(|s| match s {
            VersionState::Ready(m) => Some(m),
            VersionState::Unavailable(_) => None,
        })
    }

    /// Whether this model lets a strict-readiness server be ready, as Triton's
    /// `InferenceServer::IsReady` (server.cc) decides: a model with no version is not; every
    /// version must be READY or unavailable because it was unloaded ("unloaded"). A failed
    /// reload that kept its previous load serving keeps that version READY, so it is ready,
    /// as in Triton. Where Triton keeps a never-loaded version's failure after an unload,
    /// Tern's unload replaces it with "unloaded" (issue 17: a failed load makes the node not
    /// ready only until that model is loaded, unloaded or removed).
    pub(crate) fn lets_server_be_ready(&self) -> bool {
        !self.versions.is_empty()
            && self.versions.values().all(|s| match s {
                VersionState::Ready(_) => true,
                VersionState::Unavailable(reason) => reason == UNLOADED,
            })
    }
}

/// One row of the repository index.
pub struct IndexRow {
    pub name: String,
    pub version: String,
    /// `None` for a model listed by name only (never loaded), whose state Triton leaves empty.
    pub state: Option<ModelState>,
    pub reason: String,
}

/// Ready versions of `old` that `new` no longer serves.
pub(crate) fn retired(old: &ModelEntry, new: &ModelEntry) -> BTreeMap<u64, VersionState> {
    old.versions
        .iter()
        .filter(|(v, state)| match (state, new.versions.get(v)) {
            (VersionState::Ready(o), Some(VersionState::Ready(n))) => !Arc::ptr_eq(o, n),
            (VersionState::Ready(_), _) => true,
            _ => false,
        })
        .map(|(v, s)| (*v, s.clone()))
        .collect()
}
