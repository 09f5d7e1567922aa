//! [`GenerativeFactory`]: how the model lifecycle gets the engine of a generative model version
//! (a decoder-only language model in ONNX Runtime GenAI's folder layout) without knowing the
//! runtime or the engine. The lifecycle reads the repository, completes and checks the config
//! and swaps versions; the factory opens the folder and starts the engine. What the engine
//! serves (requests, token streams) is between it and the node, which made the factory and
//! knows the engine's type ([`GenerativeModel::as_any`]).

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use crate::{BackendError, LoadTarget};

/// One generative model version to load, with its engine settings (config `parameters`,
/// already bounded by the repository's checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerativeLoad {
    pub target: LoadTarget,
    /// The version directory (`genai_config.json`, `model.onnx`, tokenizer files).
    pub dir: PathBuf,
    /// Most sequences decoded together in one step; 1 turns continuous batching off.
    pub max_batch: usize,
    /// Most KV-cache bytes the engine may hold at once.
    pub kv_cache_bytes: u64,
    /// Most requests waiting for admission.
    pub max_queue: usize,
    /// ONNX Runtime intra-op threads (0: the runtime's default).
    pub intra_op_threads: usize,
    /// Whether idle intra-op threads spin (`None`: the runtime's default).
    pub intra_op_spinning: Option<bool>,
    /// The GPU to run on (`KIND_GPU`); `None` for the CPU.
    pub gpu: Option<i32>,
}

/// Starts generative engines (one per runtime, shared by every load).
pub trait GenerativeFactory: Send + Sync + 'static {
    /// Opens the folder and starts its engine; runs on a blocking thread.
    fn load(&self, load: &GenerativeLoad) -> Result<Arc<dyn GenerativeModel>, BackendError>;
}

/// A loaded generative model version. Dropping the last handle lets the sequences it admitted
/// end, then stops its engine.
pub trait GenerativeModel: Send + Sync + 'static {
    /// The engine, for the node that made the factory (it downcasts to its own type).
    fn as_any(&self) -> &dyn Any;

    /// Memory estimate for placement: weights and the KV-cache budget.
    fn memory_bytes(&self) -> u64;
}
