//! Tern's vocabulary, shared by every other crate: datatypes, tensors, the codec between the
//! wire's raw and typed contents and raw little-endian buffers, BYTES framing, and what a
//! model file declares (its signature). No servers, no backends, no queues here.

pub mod codec;
mod datatype;
mod error;
mod failure;
mod model_state;
pub mod request;
pub mod shape_limits;
pub mod shm;
pub mod signature;
mod tensor;

pub use datatype::DataType;
pub use error::RequestError;
pub use failure::FailureReason;
pub use model_state::{ModelState, UnknownModelState};
pub use request::{
    ClassifyError, CorrelationId, IoSpec, ModelIo, RequestedOutput, SequenceParams, ValidatedRequest,
    classify, validate_request,
};
pub use signature::{ModelSignature, TensorSpec};
pub use tensor::Tensor;
