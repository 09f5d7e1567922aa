//! Batch assembly and split, done on the instance thread: the inputs of several requests become
//! one contiguous buffer per input, and each output of the run goes back to each request as a
//! slice of one buffer (`Bytes::slice`, no copy).

#[cfg(test)]
use bytes::Bytes;
use bytes::BytesMut;
use tern_core::{DataType, Tensor, codec};

use crate::BackendError;

/// Concatenates the requests' inputs along the batch dimension. Every request must have the
/// same inputs with the same non-batch dims (the scheduler only batches such requests).
pub fn concat_inputs(requests: &[Vec<Tensor>]) -> Result<Vec<Tensor>, BackendError> {
    concat_inputs_padded(requests, None)
}

/// [`concat_inputs`], then, with `pad_to`, rows appended up to `pad_to` rows in the same buffer
/// (allocated once at the padded size): copies of the batch's first row, never read back
/// ([`trim_rows`] cuts them). A copy of a real row rather than zeros, because it is an input the
/// model is known to accept: zeros can send data-dependent operators (a division by a norm, a
/// log, an index, a string a tokenizer must parse, a NonZero) into NaNs, errors or other paths.
pub fn concat_inputs_padded(
    requests: &[Vec<Tensor>],
    pad_to: Option<u32>,
) -> Result<Vec<Tensor>, BackendError> {
    let Some(first) = requests.first() else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(first.len());
    for proto in first {
        let mut rows = 0i64;
        let mut bytes = 0usize;
        let mut parts = Vec::with_capacity(requests.len());
        for req in requests {
            let t = req.iter().find(|t| t.name == proto.name).ok_or_else(|| {
                BackendError::InvalidInput(format!("input '{}' missing from a batched request", proto.name))
            })?;
            if t.datatype != proto.datatype || t.shape.get(1..) != proto.shape.get(1..) {
                return Err(BackendError::InvalidInput(format!(
                    "input '{}' differs in datatype or shape within one batch",
                    proto.name
                )));
            }
            rows += t.shape.first().copied().unwrap_or(1);
            bytes += t.data.len();
            parts.push(&t.data);
        }
        let pad = pad_to.map_or(0, i64::from).saturating_sub(rows).max(0);
        let first_row = if pad > 0 { first_row(proto)? } else { &[][..] };
        let pad_bytes = usize::try_from(pad).unwrap_or(0) * first_row.len();
        // BYTES framing concatenates: each element carries its own length.
        let mut buf = BytesMut::with_capacity(bytes + pad_bytes);
        for p in parts {
            buf.extend_from_slice(p);
        }
        for _ in 0..pad {
            buf.extend_from_slice(first_row);
        }
        rows += pad;
        let mut shape = proto.shape.clone();
        if let Some(d) = shape.first_mut() {
            *d = rows;
        }
        out.push(Tensor { name: proto.name.clone(), datatype: proto.datatype, shape, data: buf.freeze() });
    }
    Ok(out)
}

/// The bytes of `t`'s first row (fixed-size elements, or whole BYTES elements).
fn first_row(t: &Tensor) -> Result<&[u8], BackendError> {
    let row_elems: usize = t.shape.get(1..).unwrap_or(&[]).iter().map(|&d| d.max(0) as usize).product();
    let len = match t.datatype.element_size() {
        Some(size) => row_elems * size,
        None => {
            let mut at = 0usize;
            for e in codec::bytes_elements(&t.data).take(row_elems) {
                let e = e.map_err(|e| BackendError::InvalidInput(format!("input '{}': {e}", t.name)))?;
                at += 4 + e.len();
            }
            at
        }
    };
    t.data
        .get(..len)
        .ok_or_else(|| BackendError::InvalidInput(format!("input '{}' has fewer bytes than one row", t.name)))
}

/// The smallest bucket that holds `rows`; `None` when no bucket does (or there are none).
/// `buckets` ascend.
pub fn bucket_for(buckets: &[u32], rows: u32) -> Option<u32> {
    buckets.iter().copied().find(|&b| b >= rows)
}

/// Batch sizes a model's batches are padded to: the dynamic batcher's preferred sizes below
/// `max_batch_size` when it has any, else powers of two below it, and `max_batch_size` itself
/// (every batch fits one). Ascending, no duplicates; none when the model does not batch. A
/// lone preferred size of `max_batch_size` says nothing (auto-complete writes it, as Triton's
/// does, for `dynamic_batching {}`): powers of two then.
pub fn bucket_sizes(max_batch_size: u32, preferred: &[u32]) -> Vec<u32> {
    if max_batch_size == 0 {
        return Vec::new();
    }
    let mut sizes: Vec<u32> = if preferred.iter().any(|&p| p > 0 && p < max_batch_size) {
        preferred.iter().copied().filter(|&p| p > 0 && p < max_batch_size).collect()
    } else {
        std::iter::successors(Some(1u32), |&p| p.checked_mul(2)).take_while(|&p| p < max_batch_size).collect()
    };
    sizes.push(max_batch_size);
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Cuts every output back to its first `rows` rows (the rows of the batch's requests; the rest
/// answered padding), as slices of the same buffers.
pub fn trim_rows(outputs: Vec<Tensor>, rows: u32) -> Result<Vec<Tensor>, BackendError> {
    outputs
        .into_iter()
        .map(|mut t| {
            let have = t.shape.first().copied().unwrap_or(0);
            let extra = u32::try_from(have - i64::from(rows)).map_err(|_| {
                BackendError::Execution(format!(
                    "output '{}' has shape {:?}; expected at least {rows} rows for the batch",
                    t.name, t.shape
                ))
            })?;
            if extra == 0 {
                return Ok(t);
            }
            let row_elems: usize = t.shape[1..].iter().map(|&d| d.max(0) as usize).product();
            let offsets = row_offsets(&t, row_elems, &[rows, extra])?;
            t.data = t.data.slice(..offsets[1]);
            t.shape[0] = i64::from(rows);
            Ok(t)
        })
        .collect()
}

/// Splits each output by rows: request `i` gets `batch_sizes[i]` rows, as slices of the output
/// buffer.
pub fn split_outputs(outputs: Vec<Tensor>, batch_sizes: &[u32]) -> Result<Vec<Vec<Tensor>>, BackendError> {
    let total: i64 = batch_sizes.iter().map(|&r| i64::from(r)).sum();
    let mut per_request: Vec<Vec<Tensor>> =
        batch_sizes.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for t in outputs {
        if t.shape.first() != Some(&total) {
            return Err(BackendError::Execution(format!(
                "output '{}' has shape {:?}; expected {total} rows for the batch",
                t.name, t.shape
            )));
        }
        let row_elems: usize = t.shape[1..].iter().map(|&d| d.max(0) as usize).product();
        let offsets = row_offsets(&t, row_elems, batch_sizes)?;
        for (i, &r) in batch_sizes.iter().enumerate() {
            let mut shape = t.shape.clone();
            shape[0] = i64::from(r);
            per_request[i].push(Tensor {
                name: t.name.clone(),
                datatype: t.datatype,
                shape,
                data: t.data.slice(offsets[i]..offsets[i + 1]),
            });
        }
    }
    Ok(per_request)
}

/// Byte offsets where each request's rows start (plus the end).
fn row_offsets(t: &Tensor, row_elems: usize, batch_sizes: &[u32]) -> Result<Vec<usize>, BackendError> {
    let mut offsets = Vec::with_capacity(batch_sizes.len() + 1);
    offsets.push(0);
    match t.datatype.element_size() {
        Some(size) => {
            let row_bytes = row_elems * size;
            let mut at = 0;
            for &r in batch_sizes {
                at += r as usize * row_bytes;
                offsets.push(at);
            }
            if at != t.data.len() {
                return Err(BackendError::Execution(format!(
                    "output '{}' has an unexpected byte size",
                    t.name
                )));
            }
        }
        None => {
            // BYTES: walk the framing to find element boundaries.
            debug_assert_eq!(t.datatype, DataType::Bytes);
            let mut ends = Vec::new();
            let mut at = 0usize;
            for e in codec::bytes_elements(&t.data) {
                let e = e.map_err(|e| BackendError::Execution(format!("output '{}': {e}", t.name)))?;
                at += 4 + e.len();
                ends.push(at);
            }
            let mut element = 0usize;
            for &r in batch_sizes {
                element += r as usize * row_elems;
                let end = if element == 0 { 0 } else { *ends.get(element - 1).unwrap_or(&usize::MAX) };
                if end == usize::MAX {
                    return Err(BackendError::Execution(format!("output '{}' has too few elements", t.name)));
                }
                offsets.push(end);
            }
        }
    }
    Ok(offsets)
}

/// Keeps `names` of `outputs`, in that order (all of them when `names` is empty).
pub fn select_outputs(outputs: &[Tensor], names: &[String]) -> Result<Vec<Tensor>, BackendError> {
    if names.is_empty() {
        return Ok(outputs.to_vec());
    }
    names
        .iter()
        .map(|n| {
            outputs
                .iter()
                .find(|t| &t.name == n)
                .cloned()
                .ok_or_else(|| BackendError::Execution(format!("the model produced no output '{n}'")))
        })
        .collect()
}

/// FP32 values as raw little-endian bytes, for tests.
#[cfg(test)]
pub(crate) fn f32s(values: &[f32]) -> Bytes {
    Bytes::from(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: &[i64], data: Bytes) -> Tensor {
        Tensor { name: name.into(), datatype: DataType::Fp32, shape: shape.to_vec(), data }
    }

    #[test]
    fn concat_then_split_round_trips_without_copying_outputs() {
        let a = vec![t("x", &[1, 2], f32s(&[1.0, 2.0]))];
        let b = vec![t("x", &[2, 2], f32s(&[3.0, 4.0, 5.0, 6.0]))];
        let joined = concat_inputs(&[a, b]).expect("concat");
        assert_eq!(joined[0].shape, vec![3, 2]);
        assert_eq!(joined[0].data, f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let out = joined[0].clone();
        let base = out.data.as_ptr();
        let split = split_outputs(vec![out], &[1, 2]).expect("split");
        assert_eq!(split[0][0].shape, vec![1, 2]);
        assert_eq!(split[1][0].shape, vec![2, 2]);
        assert_eq!(split[1][0].data, f32s(&[3.0, 4.0, 5.0, 6.0]));
        assert_eq!(split[1][0].data.as_ptr(), base.wrapping_add(8), "a slice, not a copy");
    }

    #[test]
    fn bytes_outputs_split_on_element_boundaries() {
        let data = codec::encode_bytes_elements(["a", "bb", "", "dddd"]);
        let out = Tensor { name: "s".into(), datatype: DataType::Bytes, shape: vec![2, 2], data };
        let split = split_outputs(vec![out], &[1, 1]).expect("split");
        let elems =
            |t: &Tensor| codec::bytes_elements(&t.data).map(|e| e.expect("ok").to_vec()).collect::<Vec<_>>();
        assert_eq!(elems(&split[0][0]), vec![b"a".to_vec(), b"bb".to_vec()]);
        assert_eq!(elems(&split[1][0]), vec![b"".to_vec(), b"dddd".to_vec()]);
    }

    #[test]
    fn buckets_are_preferred_sizes_else_powers_of_two() {
        assert_eq!(bucket_sizes(32, &[]), vec![1, 2, 4, 8, 16, 32]);
        assert_eq!(bucket_sizes(12, &[]), vec![1, 2, 4, 8, 12]);
        assert_eq!(bucket_sizes(1, &[]), vec![1]);
        assert_eq!(bucket_sizes(0, &[4]), Vec::<u32>::new());
        // The largest batch the batcher forms must fit a bucket.
        assert_eq!(bucket_sizes(32, &[16, 8, 8]), vec![8, 16, 32]);
        // Sizes over max_batch_size (or 0) are not buckets.
        assert_eq!(bucket_sizes(8, &[0, 4, 64]), vec![4, 8]);
        assert_eq!(bucket_sizes(8, &[64]), vec![1, 2, 4, 8]);
        assert_eq!(bucket_sizes(8, &[8]), vec![1, 2, 4, 8], "auto-complete's lone preferred size");
        assert_eq!(bucket_sizes(u32::MAX, &[]).len(), 33);
        let b = bucket_sizes(32, &[]);
        assert_eq!(bucket_for(&b, 1), Some(1));
        assert_eq!(bucket_for(&b, 3), Some(4));
        assert_eq!(bucket_for(&b, 17), Some(32));
        assert_eq!(bucket_for(&b, 33), None);
        assert_eq!(bucket_for(&[], 3), None);
    }

    #[test]
    fn padding_extends_one_buffer_with_copies_of_the_first_row_and_trim_cuts_them() {
        let a = vec![t("x", &[1, 2], f32s(&[1.0, 2.0]))];
        let b = vec![t("x", &[2, 2], f32s(&[3.0, 4.0, 5.0, 6.0]))];
        let joined = concat_inputs_padded(&[a, b], Some(4)).expect("concat");
        assert_eq!(joined[0].shape, vec![4, 2]);
        assert_eq!(joined[0].data, f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1.0, 2.0]));
        let out = joined[0].clone();
        let base = out.data.as_ptr();
        let trimmed = trim_rows(vec![out], 3).expect("trim");
        assert_eq!(trimmed[0].shape, vec![3, 2]);
        assert_eq!(trimmed[0].data, f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        assert_eq!(trimmed[0].data.as_ptr(), base, "a slice, not a copy");
        let split = split_outputs(trimmed, &[1, 2]).expect("split");
        assert_eq!(split[1][0].data, f32s(&[3.0, 4.0, 5.0, 6.0]));
        // Already at the bucket: nothing added; fewer rows than asked: an error.
        let one = vec![t("x", &[2, 2], f32s(&[3.0, 4.0, 5.0, 6.0]))];
        assert_eq!(concat_inputs_padded(&[one], Some(2)).expect("concat")[0].shape, vec![2, 2]);
        assert!(trim_rows(vec![t("y", &[2, 1], f32s(&[1.0, 2.0]))], 3).is_err());
    }

    #[test]
    fn bytes_inputs_pad_with_the_first_rows_elements() {
        let x = |elems: &[&str], rows| Tensor {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![rows, 2],
            data: codec::encode_bytes_elements(elems.iter().copied()),
        };
        let joined = concat_inputs_padded(&[vec![x(&["a", "bb", "c", ""], 2)]], Some(4)).expect("concat");
        assert_eq!(joined[0].shape, vec![4, 2]);
        let elems: Vec<Vec<u8>> =
            codec::bytes_elements(&joined[0].data).map(|e| e.expect("ok").to_vec()).collect();
        let want: Vec<Vec<u8>> =
            ["a", "bb", "c", "", "a", "bb", "a", "bb"].iter().map(|s| s.as_bytes().to_vec()).collect();
        assert_eq!(elems, want);
        let trimmed = trim_rows(joined, 2).expect("trim");
        assert_eq!(trimmed[0].data, codec::encode_bytes_elements(["a", "bb", "c", ""]));
    }

    #[test]
    fn mismatches_are_errors() {
        let a = vec![t("x", &[1, 2], f32s(&[1.0, 2.0]))];
        let b = vec![t("x", &[1, 3], f32s(&[3.0, 4.0, 5.0]))];
        assert!(concat_inputs(&[a, b]).is_err());
        let out = t("y", &[2, 1], f32s(&[1.0, 2.0]));
        assert!(split_outputs(vec![out], &[1, 2]).is_err());
        assert!(select_outputs(&[t("y", &[1], f32s(&[1.0]))], &["z".into()]).is_err());
    }
}
