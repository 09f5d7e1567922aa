//! Moving tensors between Tern's byte buffers and ORT values, with as few copies as the bytes
//! allow.
//!
//! In: a fixed-size payload whose address is aligned for its element type is lent to ORT as
//! is (`TensorRef` over the request's `Bytes`); a misaligned one is copied once into a `Vec`
//! of the element type (a protobuf `raw_input_contents` field can start at any offset). BOOL
//! bytes other than 0/1 are normalized (nonzero = true) in a copy, since a Rust `bool` must
//! be 0 or 1. BYTES elements are copied into an ORT string tensor element by element with
//! explicit lengths, so embedded NULs and non-UTF-8 bytes survive.
//!
//! Out: a fixed-size output becomes a `Bytes` that owns the ORT value (and a handle on the
//! session), so its data is never copied; if ORT made the output an alias of an input buffer
//! we lent it (Identity-like kernels may), the output is that input's `Bytes`, sliced. A
//! string output is framed into a new buffer, one copy from ORT's `std::string`s.

#[cfg(target_endian = "big")]
compile_error!("tern-backend-ort passes little-endian tensor bytes to ORT as they are");

use std::fmt::Debug;
use std::sync::Arc;

use bytemuck::Pod;
use bytes::Bytes;
use half::{bf16, f16};
use ort::session::{SessionInputValue, SharedSessionInner};
use ort::value::{
    DynTensor, DynValue, PrimitiveTensorElementType, TensorElementType, TensorRef, TensorValueTypeMarker,
    Value, ValueType,
};
use tern_backend::BackendError;
use tern_core::{DataType, Tensor};

use crate::ffi;

/// The Tern datatype of an ORT element type; `None` for those Tern cannot carry.
pub(crate) fn datatype_of(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

/// The ORT element type of a Tern datatype (the inverse of [`datatype_of`]).
pub(crate) fn element_type_of(datatype: DataType) -> Option<TensorElementType> {
    Some(match datatype {
        DataType::Bool => TensorElementType::Bool,
        DataType::Uint8 => TensorElementType::Uint8,
        DataType::Uint16 => TensorElementType::Uint16,
        DataType::Uint32 => TensorElementType::Uint32,
        DataType::Uint64 => TensorElementType::Uint64,
        DataType::Int8 => TensorElementType::Int8,
        DataType::Int16 => TensorElementType::Int16,
        DataType::Int32 => TensorElementType::Int32,
        DataType::Int64 => TensorElementType::Int64,
        DataType::Fp16 => TensorElementType::Float16,
        DataType::Bf16 => TensorElementType::Bfloat16,
        DataType::Fp32 => TensorElementType::Float32,
        DataType::Fp64 => TensorElementType::Float64,
        DataType::Bytes => return None,
    })
}

/// An input validated against the model and ready to lend to ORT.
pub(crate) struct PreparedInput {
    pub(crate) name: String,
    shape: Vec<i64>,
    payload: Payload,
}

enum Payload {
    /// Fixed-size elements, aligned for their type (and 0/1 for BOOL).
    Fixed { datatype: DataType, data: Bytes },
    /// BYTES, already copied into an ORT string tensor.
    Strings(DynTensor),
}

impl PreparedInput {
    /// Checks `tensor`'s shape and byte length (its name and datatype were checked against
    /// the model by the caller) and puts its payload in a form ORT can read.
    pub(crate) fn new(tensor: Tensor) -> Result<PreparedInput, BackendError> {
        let Tensor { name, datatype, shape, data } = tensor;
        let count = element_count(&name, &shape)?;
        let payload = match datatype.element_size() {
            Some(size) => {
                let expected = count.checked_mul(size).filter(|&n| n == data.len());
                if expected.is_none() {
                    return Err(BackendError::InvalidInput(format!(
                        "unexpected total byte size {} for input '{name}', expecting {} ({count} elements of {datatype})",
                        data.len(),
                        count.saturating_mul(size),
                    )));
                }
                Payload::Fixed { datatype, data: aligned(datatype, data) }
            }
            None => Payload::Strings(string_tensor(&name, &shape, count, &data)?),
        };
        Ok(PreparedInput { name, shape, payload })
    }

    /// The input's shape, as the request gave it.
    pub(crate) fn shape(&self) -> &[i64] {
        &self.shape
    }

    /// The buffer ORT reads in place, if any (outputs may alias it).
    pub(crate) fn lent(&self) -> Option<&Bytes> {
        match &self.payload {
            Payload::Fixed { data, .. } => Some(data),
            Payload::Strings(_) => None,
        }
    }

    /// A view ORT can take as a run input, borrowing this input's buffer.
    pub(crate) fn value(&self) -> Result<SessionInputValue<'_>, BackendError> {
        let shape = self.shape.as_slice();
        match &self.payload {
            Payload::Strings(tensor) => Ok(SessionInputValue::from(tensor)),
            Payload::Fixed { datatype, data } => match datatype {
                DataType::Bool => {
                    let values: &[bool] = bytemuck::checked::try_cast_slice(data).map_err(internal)?;
                    view(shape, values)
                }
                DataType::Uint8 => view::<u8>(shape, data),
                DataType::Uint16 => view(shape, cast::<u16>(data)?),
                DataType::Uint32 => view(shape, cast::<u32>(data)?),
                DataType::Uint64 => view(shape, cast::<u64>(data)?),
                DataType::Int8 => view(shape, cast::<i8>(data)?),
                DataType::Int16 => view(shape, cast::<i16>(data)?),
                DataType::Int32 => view(shape, cast::<i32>(data)?),
                DataType::Int64 => view(shape, cast::<i64>(data)?),
                DataType::Fp16 => view(shape, cast::<f16>(data)?),
                DataType::Bf16 => view(shape, cast::<bf16>(data)?),
                DataType::Fp32 => view(shape, cast::<f32>(data)?),
                DataType::Fp64 => view(shape, cast::<f64>(data)?),
                DataType::Bytes => Err(internal("BYTES input prepared as fixed-size")),
            },
        }
    }
}

fn element_count(name: &str, shape: &[i64]) -> Result<usize, BackendError> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| usize::try_from(d).ok().and_then(|d| n.checked_mul(d)))
        .ok_or_else(|| BackendError::InvalidInput(format!("input '{name}' has invalid shape {shape:?}")))
}

fn view<'a, T: PrimitiveTensorElementType + Debug + Clone + 'static>(
    shape: &'a [i64],
    values: &'a [T],
) -> Result<SessionInputValue<'a>, BackendError> {
    TensorRef::from_array_view((shape, values)).map(SessionInputValue::from).map_err(invalid_input)
}

/// Reinterprets bytes already aligned by [`aligned`]; failing here is a bug.
fn cast<T: Pod>(data: &[u8]) -> Result<&[T], BackendError> {
    bytemuck::try_cast_slice(data).map_err(internal)
}

/// `data` itself when its address suits `datatype`, else one aligned copy.
fn aligned(datatype: DataType, data: Bytes) -> Bytes {
    match datatype {
        DataType::Bool if data.iter().any(|&b| b > 1) => {
            data.iter().map(|&b| u8::from(b != 0)).collect::<Vec<u8>>().into()
        }
        DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => realign::<u16>(data),
        DataType::Uint32 | DataType::Int32 | DataType::Fp32 => realign::<u32>(data),
        DataType::Uint64 | DataType::Int64 => realign::<u64>(data),
        DataType::Fp64 => realign::<f64>(data),
        _ => data,
    }
}

/// Owns an aligned copy of a payload, seen as bytes.
struct AlignedBuf<T>(Vec<T>);

impl<T: Pod> AsRef<[u8]> for AlignedBuf<T> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

fn realign<T: Pod + Send>(data: Bytes) -> Bytes {
    if (data.as_ptr() as usize).is_multiple_of(align_of::<T>()) {
        return data;
    }
    Bytes::from_owner(AlignedBuf(bytemuck::pod_collect_to_vec::<u8, T>(&data)))
}

/// Parses the BYTES framing (4-byte LE length, then the bytes, per element) and copies the
/// elements into a new ORT string tensor.
fn string_tensor(name: &str, shape: &[i64], count: usize, data: &[u8]) -> Result<DynTensor, BackendError> {
    let elements =
        split_bytes_elements(data).map_err(|e| BackendError::InvalidInput(format!("input '{name}': {e}")))?;
    if elements.len() != count {
        return Err(BackendError::InvalidInput(format!(
            "input '{name}' has {} BYTES elements, but its shape {shape:?} needs {count}",
            elements.len()
        )));
    }
    let allocator = ort::memory::Allocator::default();
    let mut tensor =
        DynTensor::new(&allocator, TensorElementType::String, shape.to_vec()).map_err(invalid_input)?;
    for (i, element) in elements.into_iter().enumerate() {
        ffi::set_string_element(&mut tensor, i, element).map_err(execution)?;
    }
    Ok(tensor)
}

/// Splits a BYTES payload into its elements.
pub(crate) fn split_bytes_elements(mut data: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut elements = Vec::new();
    while !data.is_empty() {
        let Some((len, rest)) = data.split_first_chunk::<4>() else {
            return Err(format!("BYTES element {} has a truncated length prefix", elements.len()));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(format!(
                "BYTES element {} claims {len} bytes but only {} remain",
                elements.len(),
                rest.len()
            ));
        }
        let (element, rest) = rest.split_at(len);
        elements.push(element);
        data = rest;
    }
    Ok(elements)
}

/// Turns one run output into a [`Tensor`]; see the module docs for the copies.
pub(crate) fn output_tensor(
    name: &str,
    value: DynValue,
    lent: &[&Bytes],
    session: &Arc<SharedSessionInner>,
) -> Result<Tensor, BackendError> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return Err(BackendError::Execution(format!("output '{name}' is a {}, not a tensor", value.dtype())));
    };
    let datatype = datatype_of(*ty)
        .ok_or_else(|| BackendError::Execution(format!("output '{name}' has unsupported type {ty}")))?;
    let shape = shape.to_vec();
    let count = element_count(name, &shape).map_err(|_| {
        BackendError::Execution(format!("ORT returned output '{name}' with invalid shape {shape:?}"))
    })?;

    let data = match datatype.element_size() {
        None => strings_to_bytes(&value, count).map_err(execution)?,
        Some(size) => {
            let raw = fixed_bytes(&value, datatype).map_err(execution)?;
            if Some(raw.len()) != count.checked_mul(size) {
                return Err(BackendError::Execution(format!(
                    "ORT returned {} bytes for output '{name}' of shape {shape:?}",
                    raw.len()
                )));
            }
            if raw.is_empty() {
                Bytes::new()
            } else if let Some(input) = lent.iter().find(|b| contains(b, raw)) {
                // The output aliases an input we lent: that buffer dies with the request, so
                // share the input's `Bytes` rather than the ORT value pointing into it.
                let start = raw.as_ptr() as usize - input.as_ptr() as usize;
                input.slice(start..start + raw.len())
            } else {
                Bytes::from_owner(OutputBuf { value, datatype, _session: Arc::clone(session) })
            }
        }
    };
    Ok(Tensor { name: name.to_string(), datatype, shape, data })
}

fn contains(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}

/// An ORT output owned by a `Bytes`. The session handle keeps anything the value might point
/// into (initializers, the arena) alive until the last `Bytes` clone is gone, even if the
/// model is unloaded first.
struct OutputBuf {
    value: DynValue,
    datatype: DataType,
    _session: Arc<SharedSessionInner>,
}

impl AsRef<[u8]> for OutputBuf {
    fn as_ref(&self) -> &[u8] {
        // Called once by `Bytes::from_owner`, after `output_tensor` saw this succeed.
        fixed_bytes(&self.value, self.datatype).unwrap_or(&[])
    }
}

/// The raw little-endian bytes of a fixed-size tensor in host memory.
pub(crate) fn fixed_bytes<V: TensorValueTypeMarker + ?Sized>(
    value: &Value<V>,
    datatype: DataType,
) -> ort::Result<&[u8]> {
    fn raw<T: PrimitiveTensorElementType + bytemuck::NoUninit, V: TensorValueTypeMarker + ?Sized>(
        value: &Value<V>,
    ) -> ort::Result<&[u8]> {
        value.try_extract_tensor::<T>().map(|(_, data)| bytemuck::cast_slice(data))
    }
    match datatype {
        DataType::Bool => raw::<bool, V>(value),
        DataType::Uint8 => raw::<u8, V>(value),
        DataType::Uint16 => raw::<u16, V>(value),
        DataType::Uint32 => raw::<u32, V>(value),
        DataType::Uint64 => raw::<u64, V>(value),
        DataType::Int8 => raw::<i8, V>(value),
        DataType::Int16 => raw::<i16, V>(value),
        DataType::Int32 => raw::<i32, V>(value),
        DataType::Int64 => raw::<i64, V>(value),
        DataType::Fp16 => raw::<f16, V>(value),
        DataType::Bf16 => raw::<bf16, V>(value),
        DataType::Fp32 => raw::<f32, V>(value),
        DataType::Fp64 => raw::<f64, V>(value),
        DataType::Bytes => Err(ort::Error::new("BYTES output read as fixed-size")),
    }
}

/// Copies `src` (the little-endian bytes of `datatype` elements, BOOL as 0/1) into `tensor`, a
/// host tensor of exactly that many bytes.
pub(crate) fn fill_fixed(tensor: &mut DynTensor, datatype: DataType, src: &[u8]) -> ort::Result<()> {
    fn copy<T: PrimitiveTensorElementType + Pod>(tensor: &mut DynTensor, src: &[u8]) -> ort::Result<()> {
        let (_, dst) = tensor.try_extract_tensor_mut::<T>()?;
        let dst: &mut [u8] = bytemuck::cast_slice_mut(dst);
        if dst.len() != src.len() {
            return Err(ort::Error::new(format!("{} bytes for a tensor of {}", src.len(), dst.len())));
        }
        dst.copy_from_slice(src);
        Ok(())
    }
    match datatype {
        DataType::Bool => {
            let (_, dst) = tensor.try_extract_tensor_mut::<bool>()?;
            if dst.len() != src.len() {
                return Err(ort::Error::new(format!("{} bytes for a tensor of {}", src.len(), dst.len())));
            }
            for (d, s) in dst.iter_mut().zip(src) {
                *d = *s != 0;
            }
            Ok(())
        }
        DataType::Uint8 => copy::<u8>(tensor, src),
        DataType::Uint16 => copy::<u16>(tensor, src),
        DataType::Uint32 => copy::<u32>(tensor, src),
        DataType::Uint64 => copy::<u64>(tensor, src),
        DataType::Int8 => copy::<i8>(tensor, src),
        DataType::Int16 => copy::<i16>(tensor, src),
        DataType::Int32 => copy::<i32>(tensor, src),
        DataType::Int64 => copy::<i64>(tensor, src),
        DataType::Fp16 => copy::<f16>(tensor, src),
        DataType::Bf16 => copy::<bf16>(tensor, src),
        DataType::Fp32 => copy::<f32>(tensor, src),
        DataType::Fp64 => copy::<f64>(tensor, src),
        DataType::Bytes => Err(ort::Error::new("BYTES input staged as fixed-size")),
    }
}

/// Frames a string tensor's elements as BYTES.
fn strings_to_bytes(value: &DynValue, count: usize) -> ort::Result<Bytes> {
    let total = ffi::string_data_len(value)?;
    let mut out = Vec::with_capacity(total.saturating_add(count.saturating_mul(4)));
    for i in 0..count {
        let prefix = out.len();
        out.extend_from_slice(&[0; 4]);
        ffi::append_string_element(value, i, &mut out)?;
        let len = u32::try_from(out.len() - prefix - 4)
            .map_err(|_| ort::Error::new(format!("string element {i} is longer than 4 GiB")))?;
        out[prefix..prefix + 4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(out.into())
}

/// ORT's verdict on a run: its invalid-argument errors (wrong rank or dims, ...) are the
/// caller's fault, anything else is an execution failure.
pub(crate) fn run_error(e: ort::Error) -> BackendError {
    match e.code() {
        ort::ErrorCode::InvalidArgument => BackendError::InvalidInput(e.to_string()),
        _ => BackendError::Execution(e.to_string()),
    }
}

fn invalid_input(e: ort::Error) -> BackendError {
    BackendError::InvalidInput(e.to_string())
}

fn execution(e: ort::Error) -> BackendError {
    BackendError::Execution(e.to_string())
}

fn internal(e: impl std::fmt::Display) -> BackendError {
    BackendError::Execution(format!("internal error in the ONNX Runtime backend (this is a bug): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(elements: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in elements {
            out.extend_from_slice(&(e.len() as u32).to_le_bytes());
            out.extend_from_slice(e);
        }
        out
    }

    #[test]
    fn bytes_framing_splits() {
        let data = frame(&[b"", b"a\0b", "é".as_bytes()]);
        assert_eq!(split_bytes_elements(&data), Ok(vec![&b""[..], b"a\0b", "é".as_bytes()]));
        assert_eq!(split_bytes_elements(&[]), Ok(vec![]));
    }

    #[test]
    fn bytes_framing_rejects_truncation() {
        assert!(split_bytes_elements(&[1, 0, 0]).is_err());
        assert!(split_bytes_elements(&[5, 0, 0, 0, b'a']).is_err());
    }

    #[test]
    fn element_count_rejects_negative_and_overflow() {
        assert_eq!(element_count("x", &[2, 3]).ok(), Some(6));
        assert_eq!(element_count("x", &[]).ok(), Some(1));
        assert_eq!(element_count("x", &[0, 7]).ok(), Some(0));
        assert!(element_count("x", &[-1, 3]).is_err());
        assert!(element_count("x", &[i64::MAX, i64::MAX]).is_err());
    }

    #[test]
    fn misaligned_payloads_are_copied_once_and_aligned() {
        let backing = Bytes::from(vec![0u8; 17]);
        let misaligned = backing.slice(1..17);
        let out = aligned(DataType::Fp32, misaligned.clone());
        assert!((out.as_ptr() as usize).is_multiple_of(4));
        assert_eq!(out, misaligned);
        // Already aligned: the same buffer.
        let aligned_src = Bytes::from_owner(AlignedBuf(vec![1.5f64, 2.5]));
        let out = aligned(DataType::Fp64, aligned_src.clone());
        assert_eq!(out.as_ptr(), aligned_src.as_ptr());
    }

    #[test]
    fn bool_bytes_are_normalized() {
        let out = aligned(DataType::Bool, Bytes::from_static(&[0, 1, 2, 255]));
        assert_eq!(&out[..], &[0, 1, 1, 1]);
        let ok = Bytes::from_static(&[0, 1]);
        assert_eq!(aligned(DataType::Bool, ok.clone()).as_ptr(), ok.as_ptr());
    }
}
