//! A tensor as Tern moves it between the protocol and the backends: a name, a datatype, a
//! shape and one buffer of bytes that is shared, never copied, on the way through.

use bytes::Bytes;

use crate::DataType;

/// A named tensor. `data` holds the elements in row-major order: little-endian values of
/// `datatype`'s size for fixed-size types; for BYTES, each element as a 4-byte little-endian
/// length followed by that many bytes (the protocol's raw framing).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub data: Bytes,
}
