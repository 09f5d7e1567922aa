//! [`BackendFactory`]: how the model lifecycle gets the backends of a model version without
//! knowing which runtime makes them. The lifecycle reads the repository, decrypts, completes
//! the config, warms up and swaps versions; the factory checks the config's runtime fields,
//! reads the model's signature, places the instances (devices, threads) and opens them.
//!
//! One version's load runs on one blocking thread, in this order: [`BackendFactory::begin`]
//! (before the model file is read or decrypted), [`VersionLoader::signature`],
//! [`VersionLoader::plan`] with the completed config, then [`VersionLoader::instance`] for each
//! planned instance. Errors are the runtime's own words; the lifecycle adds the model and
//! version.

use std::path::{Path, PathBuf};

use tern_core::ModelSignature;
use tern_proto::inference::{ModelConfig, ModelInstanceGroup};

use crate::{Backend, BackendError};

/// A model version's bytes as the lifecycle hands them to a factory.
#[derive(Debug, Clone, Copy)]
pub enum ModelBytes<'a> {
    /// The runtime reads the file itself (and any external data beside it).
    File(&'a Path),
    /// Decrypted in memory (an encrypted model): never to be written to disk.
    Memory(&'a [u8]),
}

/// The model version being loaded, as far as a runtime needs to know it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadTarget {
    pub model: String,
    pub version: u64,
    /// The model's directory when the operator controls it (it lies in a configured model
    /// repository); `None` for a model a client uploaded with its load.
    pub trusted_dir: Option<PathBuf>,
    /// The model is encrypted at rest: nothing may write its weights to disk.
    pub encrypted: bool,
}

/// Where a version's instances were put.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    /// The config's instance groups as placed (what ModelConfig reports, as Triton does).
    pub instance_groups: Vec<ModelInstanceGroup>,
    /// One per instance to open, in order.
    pub instances: Vec<PlacedInstance>,
}

/// One instance of a [`Placement`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacedInstance {
    /// For logs: "CPU", "GPU 0 (TensorRT FP16)", "CPU (fallback from GPU 0)".
    pub label: String,
    /// It runs on less than the config asked for, because the node allows falling back.
    pub fallback: bool,
}

/// Makes backends for model versions (one per runtime, shared by every load).
pub trait BackendFactory: Send + Sync + 'static {
    /// Starts loading `target` with `config` as given (config.pbtxt or a client's override,
    /// before auto-complete): checks what the config asks of this runtime before the model
    /// file is read or decrypted.
    fn begin(
        &self,
        target: &LoadTarget,
        config: &ModelConfig,
    ) -> Result<Box<dyn VersionLoader>, BackendError>;

    /// Called once unloaded versions' instances are gone: hand the memory they freed back to
    /// the OS where the runtime's allocator keeps it. Does nothing by default.
    fn release_freed_memory(&self) {}
}

/// One version's load in progress (see the module docs for the order of calls).
pub trait VersionLoader: Send {
    /// Opens the model to read its inputs and outputs (for auto-complete and validation). An
    /// implementation may keep what it opened as an instance for [`Self::instance`].
    fn signature(&mut self, model: ModelBytes<'_>) -> Result<ModelSignature, BackendError>;

    /// Places the instances the completed `config` asks for.
    fn plan(&mut self, config: &ModelConfig) -> Result<Placement, BackendError>;

    /// Opens instance `index` of the placement.
    fn instance(&mut self, index: usize, model: ModelBytes<'_>) -> Result<Box<dyn Backend>, BackendError>;

    /// Opens instances `0..count` of the placement, in order. One after the other by default;
    /// a runtime whose sessions can be created concurrently opens them in parallel.
    fn instances(
        &mut self,
        count: usize,
        model: ModelBytes<'_>,
    ) -> Result<Vec<Box<dyn Backend>>, BackendError> {
        (0..count).map(|index| self.instance(index, model)).collect()
    }
}
