//! The model repository: from directories on disk to a validated Triton `ModelConfig`.
//!
//! Owns, in the order a load uses them:
//! - [`scan`]: every model directory of every repository, its parsed config.pbtxt and its
//!   numeric version directories; one bad model never fails the scan ([`ScannedModel`]);
//! - [`parse_config`] / [`config_override_from_json`]: config.pbtxt (protobuf text format) and
//!   the load API's JSON config, both against Triton's `inference.ModelConfig` schema;
//! - [`model_file_path`], [`find_model_file`] (plain or encrypted `.enc`), [`highest_version`],
//!   [`select_versions`]: where a version's model file is, and which versions the policy selects;
//! - [`auto_complete`]: the config Triton with its ONNX Runtime backend would serve, from the
//!   config and the model file's [`ModelSignature`](tern_core::ModelSignature) (`--strict-model-config` included);
//! - [`validate_ensemble`] / [`check_ensemble_steps`]: an ensemble's config (no model file) on its
//!   own and against its composing models' configs;
//! - [`validate`]: the config on its own and against the model file, with [`check_bounds`]
//!   on every number that sizes memory, threads or work;
//! - [`auto_queue_delay_budget`]: Tern's `queue_delay: auto` for the dynamic batcher;
//! - [`load_labels`]: classification labels of outputs;
//! - generative language models (ONNX Runtime GenAI folders): [`is_generative`],
//!   [`auto_complete_generative`] and the engine settings [`generative_parameters`].
//!
//! Does not own: reading ONNX files (the backend produces the signature), model lifecycle,
//! polling and hot reload (the node), nor anything on the request path. Everything here is
//! synchronous and does blocking file I/O: call it off the async runtime's worker threads.

mod bounds;
mod complete;
mod error;
mod generative;
mod labels;
mod model_file;
mod parse;
mod queue_delay;
mod scan;
mod validate;

pub use bounds::{
    MAX_BATCH_SIZE, MAX_INSTANCES, MAX_PRIORITY_LEVELS, MAX_QUEUE_DELAY_MICROSECONDS, MAX_QUEUE_SIZE,
    MAX_QUEUE_TIMEOUT_MICROSECONDS, MAX_WARMUP_COUNT, MAX_WARMUP_SAMPLES, check_bounds,
};
pub use complete::{
    DEFAULT_CPU_INSTANCE_COUNT, DEFAULT_MAX_BATCH_SIZE, ONNX_BACKEND, ONNX_PLATFORM, auto_complete,
};
pub use error::{RepositoryError, TensorKind, TextPosition};
pub use generative::{
    DEFAULT_GEN_MAX_BATCH, DEFAULT_GEN_MAX_QUEUE, DEFAULT_KV_CACHE_BYTES, GENAI_BACKEND,
    GENAI_CONFIG_FILENAME, GenerativeParameters, KV_CACHE_BYTES_KEY, MAX_BATCH_KEY, MAX_GEN_BATCH,
    MAX_GEN_QUEUE, MAX_KV_CACHE_BYTES, MAX_QUEUE_KEY, MIN_KV_CACHE_BYTES, auto_complete_generative,
    complete_chat_parameters, generative_input_names, generative_parameters, is_generative,
    is_generative_config, is_generative_version,
};
pub use labels::load_labels;
pub use model_file::{ENCRYPTED_SUFFIX, ModelFile, check_file_names, find_model_file};
pub use parse::{config_override_from_json, parse_config};
pub use queue_delay::{
    DEFAULT_QUEUE_DELAY_BUDGET_MICROSECONDS, QUEUE_DELAY_BUDGET_KEY, QUEUE_DELAY_KEY, auto_queue_delay_budget,
};
pub use scan::{
    CONFIG_FILENAME, DEFAULT_MODEL_FILENAME, ModelSource, ScannedModel, highest_version, model_file_path,
    model_names, scan, scan_model, select_versions, validate_model_name,
};
pub use tern_proto::inference::ModelConfig;
pub use validate::{
    ENSEMBLE_PLATFORM, EnsembleGraph, EnsembleStep, MAX_ENSEMBLE_STEPS, MAX_OP_LIBRARIES,
    check_ensemble_steps, check_model_operations, check_override_loads_no_native_code, check_response_cache,
    is_ensemble, sequence_tensor_names, validate, validate_ensemble,
};
