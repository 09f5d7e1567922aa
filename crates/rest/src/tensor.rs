//! Tensors in JSON (the `data` field) to and from the raw little-endian bytes the gRPC service
//! takes, converted once. As Triton (server src/http_server.cc, `ReadDataFromJson` and
//! `WriteDataToJson`): `data` may be flat or nested arrays (row-major), BOOL is true/false,
//! BYTES are strings, and FP16/BF16 are refused in JSON (binary data only).

use serde_json::Value;

/// Deepest nesting of `data` arrays accepted (a tensor has at most this many dimensions here).
const MAX_DEPTH: usize = 64;

/// A tensor datatype of the KServe v2 protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
    Bytes,
}

impl DType {
    pub fn parse(name: &str) -> Option<DType> {
        Some(match name {
            "BOOL" => DType::Bool,
            "UINT8" => DType::U8,
            "UINT16" => DType::U16,
            "UINT32" => DType::U32,
            "UINT64" => DType::U64,
            "INT8" => DType::I8,
            "INT16" => DType::I16,
            "INT32" => DType::I32,
            "INT64" => DType::I64,
            "FP16" => DType::F16,
            "BF16" => DType::BF16,
            "FP32" => DType::F32,
            "FP64" => DType::F64,
            "BYTES" => DType::Bytes,
            _ => return None,
        })
    }

    /// Bytes per element; `None` for BYTES (variable length).
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
            DType::Bytes => return None,
        })
    }
}

/// Converts `data` of input `name` to raw bytes: exactly `elements` elements, at most `limit`
/// bytes. The error names the input and the element at fault.
pub fn json_to_raw(
    name: &str,
    dtype: DType,
    data: &Value,
    elements: usize,
    limit: usize,
) -> Result<Vec<u8>, String> {
    match dtype {
        DType::F16 | DType::BF16 => {
            let t = if dtype == DType::F16 { "FP16" } else { "BF16" };
            return Err(format!(
                "receiving {t} data via JSON is not supported. Please use the binary data format for input {name}"
            ));
        }
        _ => {}
    }
    let capacity = dtype.size().map_or(elements.saturating_mul(8), |s| elements.saturating_mul(s));
    let mut out = Vec::with_capacity(capacity.min(limit));
    let mut count = 0usize;
    // Depth-first over nested arrays with an explicit stack (no recursion on client input).
    let mut stack: Vec<std::slice::Iter<'_, Value>> = Vec::new();
    match data {
        Value::Array(items) => stack.push(items.iter()),
        scalar => {
            push(name, dtype, scalar, 0, &mut out)?;
            count = 1;
        }
    }
    while let Some(top) = stack.last_mut() {
        let Some(item) = top.next() else {
            stack.pop();
            continue;
        };
        if let Value::Array(items) = item {
            if stack.len() >= MAX_DEPTH {
                return Err(format!("input '{name}': 'data' is nested deeper than {MAX_DEPTH} arrays"));
            }
            stack.push(items.iter());
            continue;
        }
        if count >= elements {
            return Err(too_many(name, elements));
        }
        push(name, dtype, item, count, &mut out)?;
        count += 1;
        if out.len() > limit {
            return Err(format!("input '{name}': 'data' is over the server's limit of {limit} bytes"));
        }
    }
    if count != elements {
        return Err(format!("input '{name}': 'data' has {count} elements but its shape needs {elements}"));
    }
    Ok(out)
}

fn too_many(name: &str, elements: usize) -> String {
    format!("input '{name}': 'data' has more elements than its shape's {elements}")
}

fn push(name: &str, dtype: DType, v: &Value, index: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let bad = |want: &str| {
        let shown: String = v.to_string().chars().take(40).collect();
        format!("input '{name}': 'data' element {index} must be {want}, got {shown}")
    };
    macro_rules! int {
        ($t:ty, $get:ident, $want:literal) => {{
            let x = v.$get().and_then(|x| <$t>::try_from(x).ok()).ok_or_else(|| bad($want))?;
            out.extend_from_slice(&x.to_le_bytes());
        }};
    }
    match dtype {
        DType::Bool => out.push(u8::from(v.as_bool().ok_or_else(|| bad("true or false"))?)),
        DType::U8 => int!(u8, as_u64, "an integer in [0, 255] (UINT8)"),
        DType::U16 => int!(u16, as_u64, "an integer in [0, 65535] (UINT16)"),
        DType::U32 => int!(u32, as_u64, "an integer in [0, 4294967295] (UINT32)"),
        DType::U64 => int!(u64, as_u64, "a non-negative integer (UINT64)"),
        DType::I8 => int!(i8, as_i64, "an integer in [-128, 127] (INT8)"),
        DType::I16 => int!(i16, as_i64, "an integer in [-32768, 32767] (INT16)"),
        DType::I32 => int!(i32, as_i64, "an integer in the INT32 range"),
        DType::I64 => int!(i64, as_i64, "an integer in the INT64 range"),
        DType::F32 => {
            let x = v.as_f64().ok_or_else(|| bad("a number (FP32)"))?;
            out.extend_from_slice(&(x as f32).to_le_bytes());
        }
        DType::F64 => {
            let x = v.as_f64().ok_or_else(|| bad("a number (FP64)"))?;
            out.extend_from_slice(&x.to_le_bytes());
        }
        DType::Bytes => {
            let s = v.as_str().ok_or_else(|| bad("a string (BYTES)"))?;
            let len = u32::try_from(s.len()).map_err(|_| bad("a string under 4 GiB"))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        DType::F16 | DType::BF16 => return Err(bad("binary data (FP16/BF16 are not accepted in JSON)")),
    }
    Ok(())
}

/// Converts output `name`'s raw bytes to a flat JSON array of `elements` elements.
pub fn raw_to_json(name: &str, dtype: DType, raw: &[u8], elements: usize) -> Result<Vec<Value>, String> {
    let sized = |size: usize| {
        if raw.len() == elements.saturating_mul(size) {
            Ok(raw.chunks_exact(size))
        } else {
            Err(format!(
                "output '{name}' has {} bytes, which does not match its shape ({elements} elements)",
                raw.len()
            ))
        }
    };
    macro_rules! nums {
        ($t:ty) => {
            sized(size_of::<$t>())?
                .map(|c| Value::from(<$t>::from_le_bytes(c.try_into().unwrap_or_default())))
                .collect()
        };
    }
    Ok(match dtype {
        DType::Bool => sized(1)?.map(|c| Value::Bool(c[0] != 0)).collect(),
        DType::U8 => nums!(u8),
        DType::U16 => nums!(u16),
        DType::U32 => nums!(u32),
        DType::U64 => nums!(u64),
        DType::I8 => nums!(i8),
        DType::I16 => nums!(i16),
        DType::I32 => nums!(i32),
        DType::I64 => nums!(i64),
        DType::F32 => nums!(f32),
        DType::F64 => nums!(f64),
        DType::F16 | DType::BF16 => {
            let t = if dtype == DType::F16 { "FP16" } else { "BF16" };
            return Err(format!(
                "sending {t} data via JSON is not supported. Please use the binary data format for output {name}"
            ));
        }
        DType::Bytes => {
            let mut items = Vec::with_capacity(elements.min(raw.len() / 4));
            let mut rest = raw;
            while rest.len() >= 4 {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let Some(s) = rest.get(4..4 + len) else { break };
                items.push(Value::String(String::from_utf8_lossy(s).into_owned()));
                rest = &rest[4 + len..];
            }
            if !rest.is_empty() || items.len() != elements {
                return Err(format!("output '{name}': malformed BYTES tensor ({} bytes)", raw.len()));
            }
            items
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_flat_data_give_the_same_bytes() {
        let flat = json_to_raw("X", DType::I32, &json!([1, -2, 3, 4]), 4, 1 << 20).expect("flat");
        let nested = json_to_raw("X", DType::I32, &json!([[1, -2], [3, 4]]), 4, 1 << 20).expect("nested");
        assert_eq!(flat, nested);
        assert_eq!(&flat[4..8], &(-2i32).to_le_bytes());
    }

    #[test]
    fn out_of_range_and_wrong_types_name_the_input_and_element() {
        let e = json_to_raw("IN", DType::U8, &json!([1, 256]), 2, 1 << 20).expect_err("range");
        assert!(e.contains("input 'IN'") && e.contains("element 1") && e.contains("UINT8"), "{e}");
        let e = json_to_raw("IN", DType::Bool, &json!([1]), 1, 1 << 20).expect_err("type");
        assert!(e.contains("true or false"), "{e}");
        let e = json_to_raw("IN", DType::F16, &json!([1.0]), 1, 1 << 20).expect_err("fp16");
        assert!(e.contains("FP16") && e.contains("input IN"), "{e}");
    }

    #[test]
    fn element_count_must_match_the_shape() {
        let e = json_to_raw("IN", DType::F32, &json!([1.0, 2.0]), 3, 1 << 20).expect_err("short");
        assert!(e.contains("2 elements") && e.contains("3"), "{e}");
        let e = json_to_raw("IN", DType::F32, &json!([1.0, 2.0]), 1, 1 << 20).expect_err("long");
        assert!(e.contains("more elements"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let mut v = json!([1]);
        for _ in 0..100 {
            v = json!([v]);
        }
        let e = json_to_raw("IN", DType::I8, &v, 1, 1 << 20).expect_err("deep");
        assert!(e.contains("nested deeper"), "{e}");
    }

    #[test]
    fn bytes_round_trip_with_embedded_nuls() {
        let raw = json_to_raw("S", DType::Bytes, &json!(["a\u{0}b", ""]), 2, 1 << 20).expect("bytes");
        assert_eq!(raw, b"\x03\0\0\0a\0b\0\0\0\0");
        assert_eq!(raw_to_json("S", DType::Bytes, &raw, 2).expect("back"), vec![json!("a\u{0}b"), json!("")]);
    }

    #[test]
    fn raw_output_converts_per_type() {
        let raw: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(raw_to_json("O", DType::F32, &raw, 2).expect("f32"), vec![json!(1.5), json!(-2.0)]);
        assert!(raw_to_json("O", DType::F32, &raw, 3).is_err());
        assert_eq!(raw_to_json("O", DType::Bool, &[0, 1], 2).expect("bool"), vec![json!(false), json!(true)]);
    }
}
