//! The tensors the sequence batcher adds to each row: control inputs (Triton's
//! `SequenceBatch::SetControlTensors`), the implicit state's input, and the dummy inputs of a
//! null row (Triton's `InferenceRequest::CopyAsNull`: the same shapes, zero data).

use bytes::Bytes;
use tern_core::{CorrelationId, DataType, Tensor};

use super::config::{ControlKind, SequenceConfig};

/// One row's shape for `dims`: `[1, dims..]` when the model batches, `dims` otherwise.
fn row_shape(dims: &[i64], batching: bool) -> Vec<i64> {
    if batching { std::iter::once(1).chain(dims.iter().copied()).collect() } else { dims.to_vec() }
}

/// Zeros for `shape`: for BYTES, that many empty elements (each a zero length prefix).
pub(crate) fn zeros(datatype: DataType, shape: &[i64]) -> Bytes {
    let elements: usize = shape.iter().map(|&d| usize::try_from(d).unwrap_or(0)).product();
    let size = datatype.element_size().unwrap_or(4);
    Bytes::from(vec![0u8; elements * size])
}

/// The control tensors of one row. A null row has READY false and CORRID 0 ("the model can't
/// assume that any other inputs are meaningful, including CORRID", Triton).
pub(crate) fn controls(
    config: &SequenceConfig,
    batching: bool,
    start: bool,
    end: bool,
    ready: bool,
    id: &CorrelationId,
) -> Vec<Tensor> {
    config
        .controls
        .iter()
        .map(|c| {
            let flag = |on: bool| if on { c.true_value.clone() } else { c.false_value.clone() };
            let data = match c.kind {
                ControlKind::Start => flag(start),
                ControlKind::End => flag(end),
                ControlKind::Ready => flag(ready),
                ControlKind::CorrId => corrid(c.datatype, if ready { id } else { &CorrelationId::Uint(0) }),
            };
            Tensor { name: c.name.clone(), datatype: c.datatype, shape: row_shape(&[1], batching), data }
        })
        .collect()
}

/// A correlation ID as the CORRID tensor's element. Validation has checked that a string ID
/// goes only to a STRING control and an integer one only to an integer control; an integer is
/// cast as Triton casts it.
fn corrid(datatype: DataType, id: &CorrelationId) -> Bytes {
    let value = match id {
        CorrelationId::Uint(v) => *v,
        CorrelationId::Str(s) => {
            return tern_core::codec::encode_bytes_elements([s.as_str()]);
        }
    };
    match datatype {
        DataType::Int32 | DataType::Uint32 => Bytes::copy_from_slice(&(value as u32).to_le_bytes()),
        DataType::Bytes => tern_core::codec::encode_bytes_elements([value.to_string().as_str()]),
        _ => Bytes::copy_from_slice(&value.to_le_bytes()),
    }
}

/// The initial state of every state tensor: zeros (Triton's `initial_state { zero_data: true }`;
/// without an initial_state Triton leaves the buffer unset, and zeros are what it holds then in
/// practice).
pub(crate) fn initial_states(config: &SequenceConfig, batching: bool) -> Vec<Tensor> {
    config
        .states
        .iter()
        .map(|s| {
            let shape = row_shape(&s.dims, batching);
            Tensor {
                name: s.input_name.clone(),
                datatype: s.datatype,
                data: zeros(s.datatype, &shape),
                shape,
            }
        })
        .collect()
}

/// The control and state inputs of `rows` rows of a sequence of one request (START, END and
/// READY true, CORRID 1, the initial state), for a warmup sample that leaves them out. Triton
/// runs warmup samples on the instance as they are, past the sequence batcher, so its samples
/// for a sequence model name the control tensors themselves (server qa/L0_warmup); one that
/// does not fails there on an ONNX model (a missing input). A CORRID of 1 rather than 0: a
/// STRING CORRID then reads as a number to a model that parses it.
pub fn warmup_inputs(config: &SequenceConfig, batching: bool, rows: usize) -> Vec<Tensor> {
    let one = controls(config, batching, true, true, true, &CorrelationId::Uint(1));
    let rows = if batching { rows.max(1) } else { 1 };
    one.into_iter()
        .chain(initial_states(config, batching))
        .map(|mut t| {
            if rows > 1 {
                t.data = Bytes::from(t.data.repeat(rows));
                t.shape[0] = rows as i64;
            }
            t
        })
        .collect()
}

/// Dummy inputs shaped as `like` (a real row of the same batch), zero data.
pub(crate) fn null_inputs(like: &[Tensor]) -> Vec<Tensor> {
    like.iter()
        .map(|t| Tensor {
            name: t.name.clone(),
            datatype: t.datatype,
            shape: t.shape.clone(),
            data: zeros(t.datatype, &t.shape),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequence::config::{ControlInput, Strategy};
    use std::time::Duration;

    fn config() -> SequenceConfig {
        let i32s = |v: i32| Bytes::copy_from_slice(&v.to_le_bytes());
        let flag = |name: &str, kind| ControlInput {
            name: name.into(),
            kind,
            datatype: DataType::Int32,
            false_value: i32s(0),
            true_value: i32s(1),
        };
        SequenceConfig {
            strategy: Strategy::Direct { max_queue_delay: Duration::ZERO, min_ready: 0 },
            slots_per_instance: 2,
            max_sequence_idle: Duration::from_secs(1),
            controls: vec![
                flag("START", ControlKind::Start),
                flag("END", ControlKind::End),
                flag("READY", ControlKind::Ready),
                ControlInput {
                    name: "CORRID".into(),
                    kind: ControlKind::CorrId,
                    datatype: DataType::Int64,
                    false_value: Bytes::new(),
                    true_value: Bytes::new(),
                },
            ],
            states: vec![],
        }
    }

    fn values(tensors: &[Tensor]) -> Vec<(String, Vec<i64>, Vec<u8>)> {
        tensors.iter().map(|t| (t.name.clone(), t.shape.clone(), t.data.to_vec())).collect()
    }

    #[test]
    fn control_values_per_row() {
        let c = config();
        let got = values(&controls(&c, true, true, false, true, &CorrelationId::Uint(42)));
        assert_eq!(
            got,
            [
                ("START".into(), vec![1, 1], vec![1, 0, 0, 0]),
                ("END".into(), vec![1, 1], vec![0; 4]),
                ("READY".into(), vec![1, 1], vec![1, 0, 0, 0]),
                ("CORRID".into(), vec![1, 1], 42u64.to_le_bytes().to_vec()),
            ]
        );
        // A null row: not ready, CORRID 0, every flag false.
        let null = values(&controls(&c, false, false, false, false, &CorrelationId::Uint(42)));
        assert!(null.iter().all(|(_, shape, data)| shape == &vec![1] && data.iter().all(|&b| b == 0)));
    }

    #[test]
    fn warmup_inputs_are_a_one_request_sequence_per_row() {
        let mut c = config();
        c.states.push(crate::sequence::config::StateSpec {
            input_name: "STATE".into(),
            output_name: "STATE_OUT".into(),
            datatype: DataType::Int32,
            dims: vec![2],
        });
        let got = values(&warmup_inputs(&c, true, 3));
        let one = 1i32.to_le_bytes();
        assert_eq!(got[0], ("START".into(), vec![3, 1], one.repeat(3)));
        assert_eq!(got[1], ("END".into(), vec![3, 1], one.repeat(3)));
        assert_eq!(got[3], ("CORRID".into(), vec![3, 1], 1u64.to_le_bytes().repeat(3)));
        assert_eq!(got[4], ("STATE".into(), vec![3, 2], vec![0; 24]));
        // Without batching: one row, no batch dimension.
        let got = values(&warmup_inputs(&c, false, 3));
        assert_eq!(got[0], ("START".into(), vec![1], one.to_vec()));
        assert_eq!(got[4].1, vec![2]);
    }

    #[test]
    fn string_ids_and_null_inputs() {
        assert_eq!(
            corrid(DataType::Bytes, &CorrelationId::Str("ab".into())).to_vec(),
            [2, 0, 0, 0, b'a', b'b']
        );
        assert_eq!(corrid(DataType::Int32, &CorrelationId::Uint(7)).to_vec(), [7, 0, 0, 0]);
        let like = Tensor {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![1, 2],
            data: tern_core::codec::encode_bytes_elements(["x", "y"]),
        };
        let null = null_inputs(&[like]);
        let elements: Vec<Vec<u8>> =
            tern_core::codec::bytes_elements(&null[0].data).map(|e| e.expect("framed").to_vec()).collect();
        assert_eq!(elements, vec![Vec::<u8>::new(), Vec::new()]);
    }
}
