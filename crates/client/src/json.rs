//! Tensors written as JSON, the way people type them: a nested array (`[[1, 2], [3, 4]]`, its
//! shape from the nesting) or `{"shape": [2, 2], "data": [1, 2, 3, 4]}` (data flat or nested),
//! converted to a given datatype with every value checked against its range.

use half::{bf16, f16};
use serde_json::Value;
use tern_core::DataType;

use crate::{ClientError, InputTensor};

impl InputTensor {
    /// A tensor of `datatype` from JSON (see the module docs); BYTES elements are strings.
    pub fn from_json(name: impl Into<String>, datatype: DataType, json: &Value) -> Result<Self, ClientError> {
        let name = name.into();
        let invalid = |msg: String| ClientError::Invalid(format!("input '{name}': {msg}"));
        let (shape, leaves) = match json {
            Value::Object(fields) => {
                let shape = fields
                    .get("shape")
                    .and_then(Value::as_array)
                    .ok_or_else(|| invalid("an object needs \"shape\" (an array) and \"data\"".into()))?
                    .iter()
                    .map(|d| d.as_i64().filter(|d| *d >= 0))
                    .collect::<Option<Vec<i64>>>()
                    .ok_or_else(|| invalid("\"shape\" must hold non-negative integers".into()))?;
                let data = fields.get("data").ok_or_else(|| invalid("an object needs \"data\"".into()))?;
                let mut leaves = Vec::new();
                flatten(data, &mut leaves);
                (shape, leaves)
            }
            Value::Array(_) => {
                let shape = nested_shape(json).map_err(invalid)?;
                let mut leaves = Vec::new();
                flatten(json, &mut leaves);
                (shape, leaves)
            }
            _ => {
                return Err(invalid(
                    "give an array (nested as the shape) or {\"shape\": .., \"data\": ..}".into(),
                ));
            }
        };
        let values = Leaves { leaves: &leaves, name: &name };
        match datatype {
            DataType::Bool => {
                InputTensor::new(name.clone(), &shape, &values.map(|v| v.as_bool(), "true or false")?)
            }
            DataType::Uint8 => InputTensor::new(name.clone(), &shape, &values.ints::<u8>(datatype)?),
            DataType::Uint16 => InputTensor::new(name.clone(), &shape, &values.ints::<u16>(datatype)?),
            DataType::Uint32 => InputTensor::new(name.clone(), &shape, &values.ints::<u32>(datatype)?),
            DataType::Uint64 => InputTensor::new(
                name.clone(),
                &shape,
                &values.map(Value::as_u64, "an integer in UINT64's range")?,
            ),
            DataType::Int8 => InputTensor::new(name.clone(), &shape, &values.ints::<i8>(datatype)?),
            DataType::Int16 => InputTensor::new(name.clone(), &shape, &values.ints::<i16>(datatype)?),
            DataType::Int32 => InputTensor::new(name.clone(), &shape, &values.ints::<i32>(datatype)?),
            DataType::Int64 => InputTensor::new(
                name.clone(),
                &shape,
                &values.map(Value::as_i64, "an integer in INT64's range")?,
            ),
            // Floats narrow as numpy's astype does (nearest value; beyond the range, infinity).
            DataType::Fp16 => InputTensor::new(name.clone(), &shape, &values.floats(f16::from_f64)?),
            DataType::Bf16 => InputTensor::new(name.clone(), &shape, &values.floats(bf16::from_f64)?),
            DataType::Fp32 => InputTensor::new(name.clone(), &shape, &values.floats(|v| v as f32)?),
            DataType::Fp64 => InputTensor::new(name.clone(), &shape, &values.floats(|v| v)?),
            DataType::Bytes => {
                let strings = values.map(|v| v.as_str().map(str::to_owned), "a string")?;
                InputTensor::bytes(name.clone(), &shape, &strings)
            }
        }
    }
}

/// The datatype JSON values suggest when the model does not say: BOOL for booleans, BYTES for
/// strings, INT64 for integers, FP32 for any other number (as tritonclient's numpy defaults
/// would be after `astype` to the usual model types).
pub fn json_datatype(json: &Value) -> DataType {
    let data = match json {
        Value::Object(fields) => fields.get("data").unwrap_or(&Value::Null),
        other => other,
    };
    let mut leaves = Vec::new();
    flatten(data, &mut leaves);
    if leaves.iter().all(|v| v.is_boolean()) && !leaves.is_empty() {
        DataType::Bool
    } else if leaves.iter().any(|v| v.is_string()) {
        DataType::Bytes
    } else if leaves.iter().all(|v| v.is_i64() || v.is_u64()) {
        DataType::Int64
    } else {
        DataType::Fp32
    }
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        leaf => out.push(leaf),
    }
}

/// The shape of a nested array; every level must be rectangular.
fn nested_shape(value: &Value) -> Result<Vec<i64>, String> {
    let Value::Array(items) = value else { return Ok(Vec::new()) };
    let mut shape = vec![items.len() as i64];
    let Some(first) = items.first() else { return Ok(shape) };
    let inner = nested_shape(first)?;
    for item in &items[1..] {
        if nested_shape(item)? != inner {
            return Err("the nested arrays are not rectangular (rows of different lengths)".into());
        }
    }
    shape.extend(inner);
    Ok(shape)
}

struct Leaves<'a> {
    leaves: &'a [&'a Value],
    name: &'a str,
}

impl Leaves<'_> {
    fn map<T>(&self, convert: impl Fn(&Value) -> Option<T>, want: &str) -> Result<Vec<T>, ClientError> {
        self.leaves
            .iter()
            .enumerate()
            .map(|(i, v)| {
                convert(v).ok_or_else(|| {
                    ClientError::Invalid(format!("input '{}': element {i} is {v}, not {want}", self.name))
                })
            })
            .collect()
    }

    fn ints<T: TryFrom<i64>>(&self, datatype: DataType) -> Result<Vec<T>, ClientError> {
        let want = format!("an integer in {datatype}'s range");
        self.map(|v| v.as_i64().and_then(|i| T::try_from(i).ok()), &want)
    }

    fn floats<T>(&self, narrow: impl Fn(f64) -> T) -> Result<Vec<T>, ClientError> {
        self.map(|v| v.as_f64().map(&narrow), "a number")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok<T>(r: Result<T, ClientError>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn nested_arrays_give_the_shape() {
        let t = ok(InputTensor::from_json("X", DataType::Fp32, &json!([[1, 2.5], [3, 4]])));
        assert_eq!(t.shape(), &[2, 2]);
        assert_eq!(t, ok(InputTensor::new("X", &[2, 2], &[1.0f32, 2.5, 3.0, 4.0])));
        let e = InputTensor::from_json("X", DataType::Fp32, &json!([[1, 2], [3]])).expect_err("ragged");
        assert!(e.to_string().contains("not rectangular"), "{e}");
        let t = ok(InputTensor::from_json("E", DataType::Int32, &json!([])));
        assert_eq!(t.shape(), &[0]);
    }

    #[test]
    fn shape_and_data_objects_take_flat_or_nested_data() {
        let flat =
            ok(InputTensor::from_json("X", DataType::Int64, &json!({"shape": [2, 2], "data": [1, 2, 3, 4]})));
        let nested = ok(InputTensor::from_json(
            "X",
            DataType::Int64,
            &json!({"shape": [2, 2], "data": [[1, 2], [3, 4]]}),
        ));
        assert_eq!(flat, nested);
        assert_eq!(flat, ok(InputTensor::new("X", &[2, 2], &[1i64, 2, 3, 4])));
        let e = InputTensor::from_json("X", DataType::Int64, &json!({"shape": [3], "data": [1, 2]}))
            .expect_err("2 for 3");
        assert!(e.to_string().contains("holds 3 elements but 2"), "{e}");
        assert!(InputTensor::from_json("X", DataType::Int64, &json!({"data": [1]})).is_err());
        assert!(InputTensor::from_json("X", DataType::Int64, &json!({"shape": [-1], "data": [1]})).is_err());
    }

    #[test]
    fn values_are_checked_against_the_datatype() {
        let e = InputTensor::from_json("INPUT0", DataType::Uint8, &json!([1, 256])).expect_err("256 in u8");
        assert_eq!(e.to_string(), "input 'INPUT0': element 1 is 256, not an integer in UINT8's range");
        assert!(InputTensor::from_json("X", DataType::Int32, &json!([1.5])).is_err());
        assert!(InputTensor::from_json("X", DataType::Fp32, &json!(["a"])).is_err());
        let b = ok(InputTensor::from_json("B", DataType::Bool, &json!([true, false])));
        assert_eq!(b.data().as_ref(), &[1, 0]);
        let s = ok(InputTensor::from_json("S", DataType::Bytes, &json!([["hi", ""]])));
        assert_eq!(
            (s.shape(), s.data().as_ref()),
            (&[1i64, 2][..], &[2, 0, 0, 0, b'h', b'i', 0, 0, 0, 0][..])
        );
        let h = ok(InputTensor::from_json("H", DataType::Fp16, &json!([0.5])));
        assert_eq!(h.data().as_ref(), &f16::from_f32(0.5).to_le_bytes());
        assert!(InputTensor::from_json("X", DataType::Fp32, &json!(3)).is_err(), "a scalar is not a tensor");
    }

    #[test]
    fn datatypes_guessed_from_values() {
        assert_eq!(json_datatype(&json!([1, 2])), DataType::Int64);
        assert_eq!(json_datatype(&json!([1, 2.5])), DataType::Fp32);
        assert_eq!(json_datatype(&json!([[true]])), DataType::Bool);
        assert_eq!(json_datatype(&json!({"shape": [1], "data": ["x"]})), DataType::Bytes);
    }
}
