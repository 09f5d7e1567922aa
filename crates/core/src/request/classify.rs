//! Triton's classification extension (`class_count` on a requested output).

use crate::{DataType, Tensor, codec};

/// Why an output cannot be classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// Only numeric tensors have scores to rank.
    #[error("output '{output}' is BYTES and cannot be classified")]
    NotNumeric { output: String },
}

/// Triton's classification extension: replaces `tensor` by its top `k` entries per batch row
/// (per tensor when not batched) as BYTES `"score:index"` or `"score:index:label"`.
pub fn classify(
    tensor: &Tensor,
    k: usize,
    batched: bool,
    labels: Option<&[String]>,
) -> Result<Tensor, ClassifyError> {
    let values = to_f64(tensor)?;
    let rows = if batched { tensor.shape.first().copied().unwrap_or(1).max(1) as usize } else { 1 };
    let per_row = values.len().checked_div(rows).unwrap_or(0);
    let k = k.min(per_row);
    let mut strings = Vec::with_capacity(rows * k);
    for row in values.chunks(per_row.max(1)).take(rows) {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        // Highest score first; equal scores keep index order.
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &i in idx.iter().take(k) {
            let score = if tensor.datatype == DataType::Fp64 {
                row[i].to_string()
            } else {
                (row[i] as f32).to_string()
            };
            strings.push(match labels.and_then(|l| l.get(i)) {
                Some(label) => format!("{score}:{i}:{label}"),
                None => format!("{score}:{i}"),
            });
        }
    }
    let shape = if batched { vec![rows as i64, k as i64] } else { vec![k as i64] };
    Ok(Tensor {
        name: tensor.name.clone(),
        datatype: DataType::Bytes,
        shape,
        data: codec::encode_bytes_elements(&strings),
    })
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>, ClassifyError> {
    let d = t.data.as_ref();
    macro_rules! conv {
        ($ty:ty, $n:expr) => {
            d.chunks_exact($n).map(|c| <$ty>::from_le_bytes(c.try_into().unwrap_or([0; $n])) as f64).collect()
        };
    }
    Ok(match t.datatype {
        DataType::Bool | DataType::Uint8 => d.iter().map(|&b| f64::from(b)).collect(),
        DataType::Int8 => d.iter().map(|&b| f64::from(b as i8)).collect(),
        DataType::Uint16 => conv!(u16, 2),
        DataType::Int16 => conv!(i16, 2),
        DataType::Uint32 => conv!(u32, 4),
        DataType::Int32 => conv!(i32, 4),
        DataType::Uint64 => conv!(u64, 8),
        DataType::Int64 => conv!(i64, 8),
        DataType::Fp32 => conv!(f32, 4),
        DataType::Fp64 => conv!(f64, 8),
        DataType::Fp16 => {
            d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()).collect()
        }
        DataType::Bf16 => {
            d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect()
        }
        DataType::Bytes => return Err(ClassifyError::NotNumeric { output: t.name.clone() }),
    })
}
