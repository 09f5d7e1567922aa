//! Tensors as they travel: [`InputTensor`] built from typed slices (or BYTES elements) into the
//! little-endian raw form the protocol carries in `raw_input_contents`, and [`OutputTensor`]
//! read back from `raw_output_contents` as typed values, BYTES elements or strings.

use bytes::Bytes;
use half::{bf16, f16};
use tern_core::DataType;
use tern_core::codec;

use crate::ClientError;

mod sealed {
    pub trait Sealed {}
}

/// A Rust type that is one KServe v2 datatype with a fixed size: `f32` is FP32, `i64` INT64,
/// `bool` BOOL, [`half::f16`] FP16, [`half::bf16`] BF16, ... (BYTES goes through
/// [`InputTensor::bytes`] and [`OutputTensor::to_bytes`]).
pub trait Element: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The datatype on the wire.
    const DATATYPE: DataType;
    /// Bytes per element.
    const SIZE: usize;
    /// Appends `values` in little-endian order.
    fn put_le(values: &[Self], out: &mut Vec<u8>);
    /// One element from exactly [`Self::SIZE`] little-endian bytes.
    fn from_le(bytes: &[u8]) -> Self;
}

macro_rules! element {
    ($($t:ty => $datatype:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DATATYPE: DataType = DataType::$datatype;
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put_le(values: &[Self], out: &mut Vec<u8>) {
                out.reserve(values.len() * Self::SIZE);
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            fn from_le(bytes: &[u8]) -> Self {
                let mut le = [0u8; std::mem::size_of::<$t>()];
                le.copy_from_slice(bytes);
                <$t>::from_le_bytes(le)
            }
        }
    )*};
}

element! {
    u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64,
    i8 => Int8, i16 => Int16, i32 => Int32, i64 => Int64,
    f16 => Fp16, bf16 => Bf16, f32 => Fp32, f64 => Fp64,
}

impl sealed::Sealed for bool {}
impl Element for bool {
    const DATATYPE: DataType = DataType::Bool;
    const SIZE: usize = 1;
    fn put_le(values: &[Self], out: &mut Vec<u8>) {
        out.extend(values.iter().map(|&b| u8::from(b)));
    }
    fn from_le(bytes: &[u8]) -> Self {
        bytes.first().is_some_and(|&b| b != 0)
    }
}

/// The number of elements `shape` holds; every dimension must be known (>= 0) and the product
/// must fit in memory.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
}

fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(","))
}

/// One input of a request: name, datatype, shape, and its data in the protocol's raw form.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    name: String,
    datatype: DataType,
    shape: Vec<i64>,
    data: Bytes,
}

impl InputTensor {
    /// A tensor of `T`'s datatype from values in row-major order; `values` must hold exactly
    /// the number of elements `shape` describes.
    pub fn new<T: Element>(
        name: impl Into<String>,
        shape: &[i64],
        values: &[T],
    ) -> Result<Self, ClientError> {
        let name = name.into();
        check_count(&name, shape, values.len())?;
        let mut data = Vec::with_capacity(values.len() * T::SIZE);
        T::put_le(values, &mut data);
        Ok(InputTensor { name, datatype: T::DATATYPE, shape: shape.to_vec(), data: Bytes::from(data) })
    }

    /// A BYTES tensor: each element is arbitrary bytes (`&str`, `String`, `Vec<u8>`, `&[u8]`),
    /// framed as Triton frames them (a 4-byte little-endian length, then the bytes).
    pub fn bytes<E: AsRef<[u8]>>(
        name: impl Into<String>,
        shape: &[i64],
        elements: &[E],
    ) -> Result<Self, ClientError> {
        let name = name.into();
        check_count(&name, shape, elements.len())?;
        if let Some(i) = elements.iter().position(|e| u32::try_from(e.as_ref().len()).is_err()) {
            return Err(ClientError::Invalid(format!(
                "input '{name}': BYTES element {i} is longer than the 4 GiB a length prefix can say"
            )));
        }
        let data = codec::encode_bytes_elements(elements);
        Ok(InputTensor { name, datatype: DataType::Bytes, shape: shape.to_vec(), data })
    }

    /// A tensor from data already in the raw form (little-endian values, or framed BYTES),
    /// checked against `datatype` and `shape`.
    pub fn raw(
        name: impl Into<String>,
        datatype: DataType,
        shape: &[i64],
        data: Bytes,
    ) -> Result<Self, ClientError> {
        let name = name.into();
        let count = match datatype.element_size() {
            Some(size) if data.len().is_multiple_of(size) => data.len() / size,
            Some(size) => {
                return Err(ClientError::Invalid(format!(
                    "input '{name}': {} bytes is not a whole number of {datatype} elements ({size} bytes each)",
                    data.len()
                )));
            }
            None => codec::count_bytes_elements(&data)
                .map_err(|e| ClientError::Invalid(format!("input '{name}': {e}")))?,
        };
        check_count(&name, shape, count)?;
        Ok(InputTensor { name, datatype, shape: shape.to_vec(), data })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn datatype(&self) -> DataType {
        self.datatype
    }

    pub fn shape(&self) -> &[i64] {
        &self.shape
    }

    /// The raw form sent in `raw_input_contents`.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    pub(crate) fn into_parts(self) -> (String, DataType, Vec<i64>, Bytes) {
        (self.name, self.datatype, self.shape, self.data)
    }
}

fn check_count(name: &str, shape: &[i64], count: usize) -> Result<(), ClientError> {
    match element_count(shape) {
        Some(n) if n == count => Ok(()),
        Some(n) => Err(ClientError::Invalid(format!(
            "input '{name}': shape {} holds {n} elements but {count} were given",
            shape_text(shape)
        ))),
        None => Err(ClientError::Invalid(format!(
            "input '{name}': shape {} must have known, non-negative dimensions",
            shape_text(shape)
        ))),
    }
}

/// One output of a response, its data as the server sent it (a slice of the response message,
/// not a copy).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    name: String,
    datatype: DataType,
    shape: Vec<i64>,
    data: Bytes,
}

impl OutputTensor {
    /// An output from its parts; the data is checked against the datatype and shape.
    pub fn new(name: String, datatype: DataType, shape: Vec<i64>, data: Bytes) -> Result<Self, ClientError> {
        let count = element_count(&shape).ok_or_else(|| {
            ClientError::Response(format!("output '{name}' has shape {}", shape_text(&shape)))
        })?;
        let got = match datatype.element_size() {
            Some(size) if data.len().is_multiple_of(size) => Some(data.len() / size),
            Some(_) => None,
            None => codec::count_bytes_elements(&data).ok(),
        };
        if got != Some(count) {
            return Err(ClientError::Response(format!(
                "output '{name}' ({datatype} {}) holds {} bytes, which is not {count} elements",
                shape_text(&shape),
                data.len()
            )));
        }
        Ok(OutputTensor { name, datatype, shape, data })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn datatype(&self) -> DataType {
        self.datatype
    }

    pub fn shape(&self) -> &[i64] {
        &self.shape
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        element_count(&self.shape).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw form: little-endian values, or framed BYTES elements.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The values as `T`, which must be the output's datatype (FP32 as `f32`, ...).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, ClientError> {
        if T::DATATYPE != self.datatype {
            return Err(ClientError::Invalid(format!(
                "output '{}' is {}, not {}",
                self.name,
                self.datatype,
                T::DATATYPE
            )));
        }
        Ok(self.data.chunks_exact(T::SIZE).map(T::from_le).collect())
    }

    /// The elements of a BYTES output, each a slice of the response (no copy).
    pub fn to_bytes(&self) -> Result<Vec<Bytes>, ClientError> {
        if self.datatype != DataType::Bytes {
            return Err(ClientError::Invalid(format!(
                "output '{}' is {}, not BYTES",
                self.name, self.datatype
            )));
        }
        let mut out = Vec::with_capacity(self.len());
        for element in codec::bytes_elements(&self.data) {
            let element =
                element.map_err(|e| ClientError::Response(format!("output '{}': {e}", self.name)))?;
            out.push(self.data.slice_ref(element));
        }
        Ok(out)
    }

    /// The elements of a BYTES output as UTF-8 text.
    pub fn to_strings(&self) -> Result<Vec<String>, ClientError> {
        self.to_bytes()?
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                String::from_utf8(b.to_vec()).map_err(|_| {
                    ClientError::Response(format!("output '{}': element {i} is not UTF-8 text", self.name))
                })
            })
            .collect()
    }
}

#[cfg(feature = "ndarray")]
mod arrays {
    use super::*;
    use ndarray::{ArrayBase, ArrayD, Data, Dimension, IxDyn};

    impl InputTensor {
        /// A tensor from an `ndarray` array of any layout (read in logical, row-major order).
        pub fn from_array<T, S, D>(
            name: impl Into<String>,
            array: &ArrayBase<S, D>,
        ) -> Result<Self, ClientError>
        where
            T: Element,
            S: Data<Elem = T>,
            D: Dimension,
        {
            let shape = array
                .shape()
                .iter()
                .map(|&d| i64::try_from(d))
                .collect::<Result<Vec<i64>, _>>()
                .map_err(|_| ClientError::Invalid("array dimension too large".into()))?;
            match array.as_slice() {
                Some(values) => InputTensor::new(name, &shape, values),
                None => InputTensor::new(name, &shape, &array.iter().copied().collect::<Vec<T>>()),
            }
        }
    }

    impl OutputTensor {
        /// The values as an `ndarray` array of the output's shape.
        pub fn to_array<T: Element>(&self) -> Result<ArrayD<T>, ClientError> {
            let shape: Vec<usize> = self.shape.iter().map(|&d| d as usize).collect();
            ArrayD::from_shape_vec(IxDyn(&shape), self.to_vec()?)
                .map_err(|e| ClientError::Response(format!("output '{}': {e}", self.name)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T>(r: Result<T, ClientError>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn typed_slices_become_little_endian_raw_data() {
        let t = ok(InputTensor::new("X", &[2, 2], &[1.0f32, -2.0, 0.5, 3.0]));
        assert_eq!(t.datatype(), DataType::Fp32);
        assert_eq!(t.shape(), &[2, 2]);
        assert_eq!(&t.data()[..4], &1.0f32.to_le_bytes());
        assert_eq!(t.data().len(), 16);
        let t = ok(InputTensor::new("I", &[3], &[1i64, -1, i64::MAX]));
        assert_eq!((t.datatype(), t.data().len()), (DataType::Int64, 24));
        assert_eq!(&t.data()[8..16], &(-1i64).to_le_bytes());
        let t = ok(InputTensor::new("B", &[3], &[true, false, true]));
        assert_eq!((t.datatype(), t.data().as_ref()), (DataType::Bool, &[1u8, 0, 1][..]));
        let t = ok(InputTensor::new("H", &[1], &[f16::from_f32(1.5)]));
        assert_eq!(
            (t.datatype(), t.data().as_ref()),
            (DataType::Fp16, &f16::from_f32(1.5).to_le_bytes()[..])
        );
        let t = ok(InputTensor::new("E", &[0, 4], &[] as &[u8]));
        assert!(t.data().is_empty());
    }

    #[test]
    fn a_shape_that_does_not_match_the_values_is_refused_naming_the_input() {
        let e = InputTensor::new("INPUT0", &[2, 3], &[1.0f32; 5]).expect_err("5 values for 6");
        assert_eq!(e.to_string(), "input 'INPUT0': shape [2,3] holds 6 elements but 5 were given");
        let e = InputTensor::new("INPUT0", &[-1, 3], &[1.0f32; 3]).expect_err("unknown dimension");
        assert!(e.to_string().contains("known, non-negative"), "{e}");
        assert!(InputTensor::new("X", &[i64::MAX, i64::MAX], &[0u8]).is_err(), "overflow is refused");
    }

    #[test]
    fn bytes_elements_use_tritons_length_prefixed_framing() {
        let t = ok(InputTensor::bytes("S", &[3], &["ab", "", "h\u{e9}"]));
        assert_eq!(t.datatype(), DataType::Bytes);
        let mut want = vec![2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0, 3, 0, 0, 0];
        want.extend_from_slice("h\u{e9}".as_bytes());
        assert_eq!(t.data().as_ref(), &want[..]);
        let binary: Vec<Vec<u8>> = vec![vec![0, 255, 0]];
        let t = ok(InputTensor::bytes("B", &[1, 1], &binary));
        assert_eq!(t.data().as_ref(), &[3, 0, 0, 0, 0, 255, 0]);
        assert!(InputTensor::bytes("S", &[2], &["one"]).is_err());
    }

    #[test]
    fn raw_data_is_checked_against_datatype_and_shape() {
        assert!(InputTensor::raw("X", DataType::Fp32, &[2], Bytes::from(vec![0u8; 8])).is_ok());
        let e = InputTensor::raw("X", DataType::Fp32, &[2], Bytes::from(vec![0u8; 7])).expect_err("7 bytes");
        assert!(e.to_string().contains("not a whole number of FP32"), "{e}");
        assert!(InputTensor::raw("X", DataType::Fp32, &[3], Bytes::from(vec![0u8; 8])).is_err());
        let framed = codec::encode_bytes_elements(["a", "b"]);
        assert!(InputTensor::raw("S", DataType::Bytes, &[2], framed.clone()).is_ok());
        let e = InputTensor::raw("S", DataType::Bytes, &[2], framed.slice(..6)).expect_err("truncated");
        assert!(e.to_string().starts_with("input 'S': BYTES"), "{e}");
    }

    #[test]
    fn outputs_read_back_typed_values_and_strings() {
        let data = Bytes::from([1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        let out = ok(OutputTensor::new("Y".into(), DataType::Fp32, vec![1, 2], data));
        assert_eq!(ok(out.to_vec::<f32>()), vec![1.5, -2.0]);
        assert_eq!(out.len(), 2);
        let e = out.to_vec::<i64>().expect_err("wrong type");
        assert_eq!(e.to_string(), "output 'Y' is FP32, not INT64");
        assert!(out.to_strings().is_err());

        let framed = codec::encode_bytes_elements(["x", "yz"]);
        let out = ok(OutputTensor::new("S".into(), DataType::Bytes, vec![2], framed.clone()));
        assert_eq!(ok(out.to_strings()), vec!["x".to_string(), "yz".to_string()]);
        let parts = ok(out.to_bytes());
        assert_eq!(parts[1].as_ref(), b"yz");
        // Slices of the response, not copies.
        assert_eq!(parts[1].as_ptr(), framed[9..].as_ptr());

        let short = OutputTensor::new("Y".into(), DataType::Fp32, vec![3], Bytes::from(vec![0u8; 8]));
        assert!(matches!(short, Err(ClientError::Response(_))));
        let bad =
            OutputTensor::new("S".into(), DataType::Bytes, vec![1], Bytes::from_static(&[9, 0, 0, 0, 1]));
        assert!(bad.is_err());
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn ndarray_arrays_in_any_layout_and_back() {
        let a = ndarray::Array2::from_shape_vec((2, 3), vec![0i32, 1, 2, 3, 4, 5])
            .unwrap_or_else(|e| panic!("{e}"));
        let t = ok(InputTensor::from_array("A", &a.t()));
        assert_eq!(t.shape(), &[3, 2]);
        let out = ok(OutputTensor::new("A".into(), t.datatype(), t.shape().to_vec(), t.data().clone()));
        assert_eq!(ok(out.to_vec::<i32>()), vec![0, 3, 1, 4, 2, 5]);
        assert_eq!(ok(out.to_array::<i32>()), a.t().into_dyn());
    }
}
