//! Conversions between the protocol's two payload forms and Tern's raw buffers:
//! typed `InferTensorContents` -> raw little-endian bytes, and the BYTES framing (each element
//! a 4-byte little-endian length, then the bytes).

use bytes::{BufMut, Bytes, BytesMut};
use tern_proto::inference::InferTensorContents;

use crate::DataType;

/// Why a payload could not be read; the caller adds model and tensor names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("BYTES element {index} claims {len} bytes but only {left} remain")]
    TruncatedBytes { index: usize, len: usize, left: usize },
    #[error("BYTES data ends inside the 4-byte length prefix of element {index}")]
    TruncatedLength { index: usize },
    #[error("typed contents for datatype {datatype} must be given in '{expected}'{found}")]
    WrongContentsField { datatype: DataType, expected: &'static str, found: String },
    #[error("datatype {0} has no typed contents field; send it in raw_input_contents")]
    NoTypedField(DataType),
    #[error("value {value} in {field} is out of range for {datatype}")]
    OutOfRange { value: i64, field: &'static str, datatype: DataType },
}

/// Checks BYTES framing and returns the number of elements.
pub fn count_bytes_elements(data: &[u8]) -> Result<usize, CodecError> {
    let mut count = 0;
    let mut rest = data;
    while !rest.is_empty() {
        let (len, tail) = split_len(rest, count)?;
        if tail.len() < len {
            return Err(CodecError::TruncatedBytes { index: count, len, left: tail.len() });
        }
        rest = &tail[len..];
        count += 1;
    }
    Ok(count)
}

/// Iterates the elements of a BYTES buffer as slices of it. Stops at the first framing error,
/// which it reports; call [`count_bytes_elements`] first to validate.
pub fn bytes_elements(data: &[u8]) -> impl Iterator<Item = Result<&[u8], CodecError>> {
    let mut rest = data;
    let mut index = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let item = split_len(rest, index).and_then(|(len, tail)| {
            if tail.len() < len {
                Err(CodecError::TruncatedBytes { index, len, left: tail.len() })
            } else {
                Ok((&tail[..len], &tail[len..]))
            }
        });
        index += 1;
        match item {
            Ok((elem, tail)) => {
                rest = tail;
                Some(Ok(elem))
            }
            Err(e) => {
                rest = &[];
                Some(Err(e))
            }
        }
    })
}

fn split_len(data: &[u8], index: usize) -> Result<(usize, &[u8]), CodecError> {
    match data.split_first_chunk::<4>() {
        Some((len, tail)) => Ok((u32::from_le_bytes(*len) as usize, tail)),
        None => Err(CodecError::TruncatedLength { index }),
    }
}

/// Frames elements as BYTES.
pub fn encode_bytes_elements<I, E>(elements: I) -> Bytes
where
    I: IntoIterator<Item = E>,
    E: AsRef<[u8]>,
{
    let mut out = BytesMut::new();
    for e in elements {
        let e = e.as_ref();
        out.reserve(4 + e.len());
        out.put_u32_le(e.len() as u32);
        out.put_slice(e);
    }
    out.freeze()
}

/// The name of the typed field that carries `datatype`.
pub fn typed_field(datatype: DataType) -> Option<&'static str> {
    Some(match datatype {
        DataType::Bool => "bool_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => "uint_contents",
        DataType::Uint64 => "uint64_contents",
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
        DataType::Fp16 | DataType::Bf16 => return None,
    })
}

/// Converts typed contents to the raw form. Exactly one field may be set: the one for
/// `datatype`. Returns the raw buffer and the number of elements it holds.
pub fn typed_to_raw(datatype: DataType, c: &InferTensorContents) -> Result<(Bytes, usize), CodecError> {
    let expected = typed_field(datatype).ok_or(CodecError::NoTypedField(datatype))?;
    let used: Vec<&'static str> = [
        ("bool_contents", !c.bool_contents.is_empty()),
        ("int_contents", !c.int_contents.is_empty()),
        ("int64_contents", !c.int64_contents.is_empty()),
        ("uint_contents", !c.uint_contents.is_empty()),
        ("uint64_contents", !c.uint64_contents.is_empty()),
        ("fp32_contents", !c.fp32_contents.is_empty()),
        ("fp64_contents", !c.fp64_contents.is_empty()),
        ("bytes_contents", !c.bytes_contents.is_empty()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if used.iter().any(|f| *f != expected) {
        return Err(CodecError::WrongContentsField {
            datatype,
            expected,
            found: format!(", found {}", used.join(", ")),
        });
    }
    fn le<T: Copy, const N: usize>(values: &[T], to: impl Fn(T) -> [u8; N]) -> Bytes {
        let mut out = Vec::with_capacity(values.len() * N);
        for v in values {
            out.extend_from_slice(&to(*v));
        }
        Bytes::from(out)
    }
    let narrow = |field: &'static str, values: &[i64], min: i64, max: i64, width: usize| {
        let mut out = Vec::with_capacity(values.len() * width);
        for &v in values {
            if v < min || v > max {
                return Err(CodecError::OutOfRange { value: v, field, datatype });
            }
            out.extend_from_slice(&v.to_le_bytes()[..width]);
        }
        Ok(Bytes::from(out))
    };
    let ints = || c.int_contents.iter().map(|&v| i64::from(v)).collect::<Vec<_>>();
    let uints = || c.uint_contents.iter().map(|&v| i64::from(v)).collect::<Vec<_>>();
    Ok(match datatype {
        DataType::Bool => (
            Bytes::from(c.bool_contents.iter().map(|&b| u8::from(b)).collect::<Vec<_>>()),
            c.bool_contents.len(),
        ),
        DataType::Int8 => {
            (narrow("int_contents", &ints(), i8::MIN.into(), i8::MAX.into(), 1)?, c.int_contents.len())
        }
        DataType::Int16 => {
            (narrow("int_contents", &ints(), i16::MIN.into(), i16::MAX.into(), 2)?, c.int_contents.len())
        }
        DataType::Int32 => (le(&c.int_contents, i32::to_le_bytes), c.int_contents.len()),
        DataType::Int64 => (le(&c.int64_contents, i64::to_le_bytes), c.int64_contents.len()),
        DataType::Uint8 => (narrow("uint_contents", &uints(), 0, u8::MAX.into(), 1)?, c.uint_contents.len()),
        DataType::Uint16 => {
            (narrow("uint_contents", &uints(), 0, u16::MAX.into(), 2)?, c.uint_contents.len())
        }
        DataType::Uint32 => (le(&c.uint_contents, u32::to_le_bytes), c.uint_contents.len()),
        DataType::Uint64 => (le(&c.uint64_contents, u64::to_le_bytes), c.uint64_contents.len()),
        DataType::Fp32 => (le(&c.fp32_contents, f32::to_le_bytes), c.fp32_contents.len()),
        DataType::Fp64 => (le(&c.fp64_contents, f64::to_le_bytes), c.fp64_contents.len()),
        DataType::Bytes => (encode_bytes_elements(&c.bytes_contents), c.bytes_contents.len()),
        DataType::Fp16 | DataType::Bf16 => return Err(CodecError::NoTypedField(datatype)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_framing_round_trips_including_empty_and_binary() {
        let elems: Vec<&[u8]> = vec![b"", b"abc", &[0, 255, 0], "h\u{e9}llo".as_bytes()];
        let framed = encode_bytes_elements(&elems);
        assert_eq!(framed.len(), 4 * 4 + 3 + 3 + 6);
        assert_eq!(count_bytes_elements(&framed), Ok(4));
        let back: Vec<&[u8]> = bytes_elements(&framed).collect::<Result<_, _>>().expect("valid");
        assert_eq!(back, elems);
        assert_eq!(count_bytes_elements(&[]), Ok(0));
    }

    #[test]
    fn truncated_bytes_are_refused() {
        assert_eq!(count_bytes_elements(&[1, 0, 0]), Err(CodecError::TruncatedLength { index: 0 }));
        assert_eq!(
            count_bytes_elements(&[5, 0, 0, 0, b'a', b'b']),
            Err(CodecError::TruncatedBytes { index: 0, len: 5, left: 2 })
        );
        let mut two = encode_bytes_elements([b"ok"]).to_vec();
        two.extend_from_slice(&[9, 0]);
        assert_eq!(count_bytes_elements(&two), Err(CodecError::TruncatedLength { index: 1 }));
        // A huge claimed length must not allocate or overflow.
        assert!(matches!(
            count_bytes_elements(&[255, 255, 255, 255]),
            Err(CodecError::TruncatedBytes { .. })
        ));
        let last = bytes_elements(&two).last().expect("two items");
        assert!(last.is_err());
    }

    fn contents() -> InferTensorContents {
        InferTensorContents::default()
    }

    #[test]
    fn typed_contents_convert_for_every_datatype_with_a_field() {
        let cases: Vec<(DataType, InferTensorContents, Vec<u8>)> = vec![
            (
                DataType::Bool,
                InferTensorContents { bool_contents: vec![true, false], ..contents() },
                vec![1, 0],
            ),
            (
                DataType::Int8,
                InferTensorContents { int_contents: vec![-1, 127], ..contents() },
                vec![255, 127],
            ),
            (
                DataType::Int16,
                InferTensorContents { int_contents: vec![-2], ..contents() },
                (-2i16).to_le_bytes().to_vec(),
            ),
            (
                DataType::Int32,
                InferTensorContents { int_contents: vec![7, -7], ..contents() },
                [7i32.to_le_bytes(), (-7i32).to_le_bytes()].concat(),
            ),
            (
                DataType::Int64,
                InferTensorContents { int64_contents: vec![1 << 40], ..contents() },
                (1i64 << 40).to_le_bytes().to_vec(),
            ),
            (DataType::Uint8, InferTensorContents { uint_contents: vec![255], ..contents() }, vec![255]),
            (
                DataType::Uint16,
                InferTensorContents { uint_contents: vec![65535], ..contents() },
                vec![255, 255],
            ),
            (
                DataType::Uint32,
                InferTensorContents { uint_contents: vec![1], ..contents() },
                1u32.to_le_bytes().to_vec(),
            ),
            (
                DataType::Uint64,
                InferTensorContents { uint64_contents: vec![u64::MAX], ..contents() },
                u64::MAX.to_le_bytes().to_vec(),
            ),
            (
                DataType::Fp32,
                InferTensorContents { fp32_contents: vec![1.5], ..contents() },
                1.5f32.to_le_bytes().to_vec(),
            ),
            (
                DataType::Fp64,
                InferTensorContents { fp64_contents: vec![-0.25], ..contents() },
                (-0.25f64).to_le_bytes().to_vec(),
            ),
            (
                DataType::Bytes,
                InferTensorContents { bytes_contents: vec![Bytes::from_static(b"hi")], ..contents() },
                vec![2, 0, 0, 0, b'h', b'i'],
            ),
        ];
        for (dt, c, want) in cases {
            let (raw, n) = typed_to_raw(dt, &c).unwrap_or_else(|e| panic!("{dt}: {e}"));
            assert_eq!(raw.as_ref(), want.as_slice(), "{dt}");
            assert!(n > 0, "{dt}");
        }
    }

    #[test]
    fn typed_contents_errors() {
        let c = InferTensorContents { fp32_contents: vec![1.0], ..contents() };
        assert!(matches!(
            typed_to_raw(DataType::Int32, &c),
            Err(CodecError::WrongContentsField { expected: "int_contents", .. })
        ));
        assert_eq!(typed_to_raw(DataType::Fp16, &c), Err(CodecError::NoTypedField(DataType::Fp16)));
        let c = InferTensorContents { int_contents: vec![128], ..contents() };
        assert!(matches!(typed_to_raw(DataType::Int8, &c), Err(CodecError::OutOfRange { value: 128, .. })));
        let c = InferTensorContents { uint_contents: vec![256], ..contents() };
        assert!(matches!(typed_to_raw(DataType::Uint8, &c), Err(CodecError::OutOfRange { .. })));
        // Empty typed contents are zero elements, not an error (the shape check decides).
        assert_eq!(typed_to_raw(DataType::Fp32, &contents()).map(|(_, n)| n), Ok(0));
    }
}
