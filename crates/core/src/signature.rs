//! What a model file declares about its inputs and outputs, independent of the backend that
//! read it. Auto-complete and validation compare config.pbtxt against this.

use crate::DataType;

/// One input or output as the model file declares it. `dims` has -1 for every dimension the
/// model leaves symbolic or unknown (including the batch dimension when there is one). The
/// config's view of the same tensor is an [`IoSpec`](crate::IoSpec); the repository checks one
/// against the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub dims: Vec<i64>,
    /// BYTES elements must be UTF-8 text (a backend that reads them as strings says so);
    /// validation then refuses a request with any other bytes before it is queued.
    pub utf8: bool,
}

/// The inputs and outputs of a model file, in the file's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelSignature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}
