//! tern-lifecycle: the model lifecycle of a node. It owns the model table (which versions of
//! which models serve), the repository watching of the control modes (everything at start,
//! polling the repositories, or explicit loads and unloads through the repository API),
//! loading a version (config completion, encrypted models decrypted in memory, warmup),
//! version switching (a reload opens the new version beside the one serving and switches
//! traffic when it is READY; a failed reload leaves the old one serving), and unloading once
//! the requests in flight are done.
//!
//! It works against [`tern_backend::BackendFactory`] (and, for generative language models,
//! [`tern_backend::GenerativeFactory`]) and must never depend on a runtime
//! (`tern-backend-ort`, `ort`): devices, threads and sessions are the factory's business. Nor
//! does it know gRPC servers; the node composes it with the scheduler and the service.
//!
//! Layout: [`manager`] ([`ModelManager`], the table and its operations; version switching in
//! `manager/reload.rs`), [`table`] (rows and states), [`loader`] (one version), `generative` (one version of a generative model), `ensemble` (an ensemble's version,
//! its composing models' dependencies; the manager's side in `manager/ensemble.rs`), [`warmup`],
//! [`encrypted`], `flight` (concurrent loads of one model share one), `locks` (per-model
//! locks), `files` (uploads and poll fingerprints).

pub mod encrypted;
mod ensemble;
pub mod error;
mod files;
mod flight;
mod generative;
pub mod loader;
mod locks;
pub mod manager;
pub mod table;
pub mod warmup;

pub use encrypted::ModelKeyConfig;
pub use error::LifecycleError;
pub use loader::{LoadOptions, LoadedModel};
pub use manager::{ControlMode, ModelManager};
pub use table::{IndexRow, ModelEntry, VersionState};
/// An ensemble's steps, as the node runs them.
pub use tern_repository::{EnsembleGraph, EnsembleStep};

#[cfg(test)]
mod tests;
