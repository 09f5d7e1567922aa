//! The sequence batcher's settings, read from a (validated) config's `sequence_batching`.

use std::time::Duration;

use bytes::Bytes;
use tern_core::DataType;
use tern_proto::inference::model_sequence_batching::StrategyChoice;
use tern_proto::inference::model_sequence_batching::control::Kind;
use tern_proto::inference::{ModelConfig, ModelSequenceBatching, model_config::SchedulingChoice};

/// Triton's default `max_sequence_idle_microseconds` (1 s), should a config reach the scheduler
/// without auto-complete's default.
const DEFAULT_IDLE: Duration = Duration::from_secs(1);

/// How batches are formed from the sequences that hold slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Each sequence keeps one batch row (its slot) until it ends; empty rows below the highest
    /// busy one run as "null" requests with READY false.
    Direct {
        /// With `min_ready` too: wait up to this long for that many busy slots.
        max_queue_delay: Duration,
        /// Busy slots that run at once (Triton's `minimum_slot_utilization` × slots); 0: never
        /// wait.
        min_ready: usize,
    },
    /// The oldest requests of up to `max_candidate_sequences` sequences per instance, at most one
    /// per sequence, batched as the dynamic batcher would.
    Oldest { preferred_batch_sizes: Vec<u32>, max_queue_delay: Duration },
}

/// What a control tensor carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    Start,
    End,
    Ready,
    CorrId,
}

/// One control input: its name and the element it takes for false and true (for CORRID only
/// its datatype counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlInput {
    pub name: String,
    pub kind: ControlKind,
    pub datatype: DataType,
    /// Little-endian element bytes.
    pub false_value: Bytes,
    pub true_value: Bytes,
}

/// One implicit state: fed as `input_name`, read back from `output_name` after each run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSpec {
    pub input_name: String,
    pub output_name: String,
    pub datatype: DataType,
    /// Without the batch dimension; wildcards are 1 for a sequence's first request (Triton's
    /// `SequenceStates::Initialize`).
    pub dims: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceConfig {
    pub strategy: Strategy,
    /// Slots per instance: max_batch_size (1 without batching) for Direct,
    /// max_candidate_sequences for Oldest.
    pub slots_per_instance: usize,
    pub max_sequence_idle: Duration,
    pub controls: Vec<ControlInput>,
    pub states: Vec<StateSpec>,
}

impl SequenceConfig {
    /// The sequence batcher's settings, when the config has `sequence_batching`.
    pub fn from_model_config(config: &ModelConfig) -> Option<SequenceConfig> {
        let Some(SchedulingChoice::SequenceBatching(sb)) = &config.scheduling_choice else { return None };
        let max_batch_size = usize::try_from(config.max_batch_size).unwrap_or(0);
        let rows = max_batch_size.max(1);
        let (strategy, slots_per_instance) = match &sb.strategy_choice {
            Some(StrategyChoice::Oldest(o)) => {
                let mut preferred: Vec<u32> = o
                    .preferred_batch_size
                    .iter()
                    .filter_map(|&p| u32::try_from(p).ok())
                    .filter(|&p| p > 0)
                    .collect();
                preferred.sort_unstable();
                preferred.dedup();
                // Triton takes 0 (unset) as max(1, max_batch_size) (sequence_batch_scheduler.cc,
                // `Create`: seq_slot_cnt_).
                let candidates = match usize::try_from(o.max_candidate_sequences) {
                    Ok(n) if n > 0 => n.min(4096),
                    _ => rows,
                };
                (
                    Strategy::Oldest {
                        preferred_batch_sizes: preferred,
                        max_queue_delay: Duration::from_micros(o.max_queue_delay_microseconds),
                    },
                    candidates,
                )
            }
            Some(StrategyChoice::Direct(d)) => {
                let utilization = f64::from(d.minimum_slot_utilization).clamp(0.0, 1.0);
                let min_ready = (utilization * rows as f64).ceil() as usize;
                (
                    Strategy::Direct {
                        max_queue_delay: Duration::from_micros(d.max_queue_delay_microseconds),
                        min_ready,
                    },
                    rows,
                )
            }
            None => (Strategy::Direct { max_queue_delay: Duration::ZERO, min_ready: 0 }, rows),
        };
        let idle = if sb.max_sequence_idle_microseconds == 0 {
            DEFAULT_IDLE
        } else {
            Duration::from_micros(sb.max_sequence_idle_microseconds)
        };
        Some(SequenceConfig {
            strategy,
            slots_per_instance,
            max_sequence_idle: idle,
            controls: controls(sb),
            states: sb
                .state
                .iter()
                .filter_map(|s| {
                    Some(StateSpec {
                        input_name: s.input_name.clone(),
                        output_name: s.output_name.clone(),
                        datatype: DataType::from_config(s.data_type)?,
                        dims: s.dims.iter().map(|&d| if d < 0 { 1 } else { d }).collect(),
                    })
                })
                .collect(),
        })
    }

    pub fn control(&self, kind: ControlKind) -> Option<&ControlInput> {
        self.controls.iter().find(|c| c.kind == kind)
    }
}

fn controls(sb: &ModelSequenceBatching) -> Vec<ControlInput> {
    let mut out = Vec::new();
    for input in &sb.control_input {
        let Some(control) = input.control.first() else { continue };
        let kind = match Kind::try_from(control.kind) {
            Ok(Kind::ControlSequenceStart) => ControlKind::Start,
            Ok(Kind::ControlSequenceEnd) => ControlKind::End,
            Ok(Kind::ControlSequenceReady) => ControlKind::Ready,
            Ok(Kind::ControlSequenceCorrid) => ControlKind::CorrId,
            Err(_) => continue,
        };
        let (datatype, false_value, true_value) = if kind == ControlKind::CorrId {
            let Some(datatype) = DataType::from_config(control.data_type) else { continue };
            (datatype, Bytes::new(), Bytes::new())
        } else if let [f, t] = control.int32_false_true[..] {
            (DataType::Int32, le(&f.to_le_bytes()), le(&t.to_le_bytes()))
        } else if let [f, t] = control.fp32_false_true[..] {
            (DataType::Fp32, le(&f.to_le_bytes()), le(&t.to_le_bytes()))
        } else if let [f, t] = control.bool_false_true[..] {
            (DataType::Bool, le(&[u8::from(f)]), le(&[u8::from(t)]))
        } else {
            continue;
        };
        out.push(ControlInput { name: input.name.clone(), kind, datatype, false_value, true_value });
    }
    out
}

fn le(bytes: &[u8]) -> Bytes {
    Bytes::copy_from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::inference::model_sequence_batching::{
        Control, ControlInput as ConfigControl, State, StrategyDirect, StrategyOldest,
    };

    fn config(max_batch_size: i32, sb: ModelSequenceBatching) -> ModelConfig {
        ModelConfig {
            max_batch_size,
            scheduling_choice: Some(SchedulingChoice::SequenceBatching(sb)),
            ..Default::default()
        }
    }

    #[test]
    fn slots_and_defaults_as_triton_sizes_them() {
        let c = SequenceConfig::from_model_config(&config(4, ModelSequenceBatching::default()))
            .expect("sequence");
        assert_eq!(c.strategy, Strategy::Direct { max_queue_delay: Duration::ZERO, min_ready: 0 });
        assert_eq!(c.slots_per_instance, 4, "Direct: one slot per batch row");
        assert_eq!(c.max_sequence_idle, Duration::from_secs(1));
        let oldest = |n| ModelSequenceBatching {
            strategy_choice: Some(StrategyChoice::Oldest(StrategyOldest {
                max_candidate_sequences: n,
                ..Default::default()
            })),
            ..Default::default()
        };
        let slots = |mbs, n| {
            SequenceConfig::from_model_config(&config(mbs, oldest(n))).expect("seq").slots_per_instance
        };
        assert_eq!(slots(4, 16), 16);
        assert_eq!(slots(4, 0), 4, "0 candidates: max(1, max_batch_size)");
        assert_eq!(slots(0, 0), 1);
        let direct = ModelSequenceBatching {
            strategy_choice: Some(StrategyChoice::Direct(StrategyDirect {
                max_queue_delay_microseconds: 100,
                minimum_slot_utilization: 0.5,
            })),
            ..Default::default()
        };
        let c = SequenceConfig::from_model_config(&config(8, direct)).expect("sequence");
        assert_eq!(
            c.strategy,
            Strategy::Direct { max_queue_delay: Duration::from_micros(100), min_ready: 4 }
        );
        assert!(SequenceConfig::from_model_config(&ModelConfig::default()).is_none());
    }

    #[test]
    fn controls_and_states_from_the_config() {
        let control = |name: &str, c: Control| ConfigControl { name: name.into(), control: vec![c] };
        let sb = ModelSequenceBatching {
            control_input: vec![
                control(
                    "S",
                    Control {
                        kind: Kind::ControlSequenceStart as i32,
                        fp32_false_true: vec![0.0, 1.0],
                        ..Default::default()
                    },
                ),
                control(
                    "R",
                    Control {
                        kind: Kind::ControlSequenceReady as i32,
                        bool_false_true: vec![false, true],
                        ..Default::default()
                    },
                ),
                control(
                    "C",
                    Control { kind: Kind::ControlSequenceCorrid as i32, data_type: 13, ..Default::default() },
                ),
            ],
            state: vec![State {
                input_name: "in".into(),
                output_name: "out".into(),
                data_type: 8,
                dims: vec![-1, 3],
                ..Default::default()
            }],
            ..Default::default()
        };
        let c = SequenceConfig::from_model_config(&config(2, sb)).expect("sequence");
        let start = c.control(ControlKind::Start).expect("start");
        assert_eq!(
            (start.datatype, start.true_value.to_vec()),
            (DataType::Fp32, 1.0f32.to_le_bytes().to_vec())
        );
        let ready = c.control(ControlKind::Ready).expect("ready");
        assert_eq!((ready.datatype, ready.false_value.to_vec()), (DataType::Bool, vec![0]));
        assert_eq!(c.control(ControlKind::CorrId).expect("corrid").datatype, DataType::Bytes);
        assert!(c.control(ControlKind::End).is_none());
        // A wildcard state dim is 1 for a sequence's first request (Triton's SequenceStates).
        assert_eq!(c.states[0].dims, vec![1, 3]);
        assert_eq!(c.states[0].datatype, DataType::Int32);
    }
}
