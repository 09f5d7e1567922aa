//! Scheduling settings read from a model's config: Triton's `dynamic_batching` block and its
//! queue policies. No `dynamic_batching`: Triton's default scheduler (one request per
//! execution, FIFO).

use std::collections::HashMap;
use std::time::Duration;

use tern_proto::inference::{
    ModelConfig, ModelQueuePolicy, model_config::SchedulingChoice, model_queue_policy::TimeoutAction,
};

/// Requests a queue holds at most when the config sets no `max_queue_size`: every queue is
/// bounded, so an overload answers UNAVAILABLE instead of growing memory without limit.
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 16_384;

/// What happens to a request whose queue timeout passes before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTimeout {
    /// Fail it (UNAVAILABLE).
    Reject,
    /// Keep it, behind every request that has not timed out.
    Delay,
}

/// Triton's `ModelQueuePolicy` for one priority level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePolicy {
    pub on_timeout: OnTimeout,
    pub default_timeout: Option<Duration>,
    pub allow_timeout_override: bool,
    pub max_queue_size: usize,
}

impl Default for QueuePolicy {
    fn default() -> QueuePolicy {
        QueuePolicy {
            on_timeout: OnTimeout::Reject,
            default_timeout: None,
            allow_timeout_override: false,
            max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
        }
    }
}

impl QueuePolicy {
    /// The queue timeout of a request that asked for `requested`. As Triton
    /// (core src/scheduler_utils.cc, PolicyQueue::Enqueue): with `allow_timeout_override`, a
    /// request may shorten the default, never lengthen it, and 0 asks for nothing. Where the
    /// level has no default (Triton's 0), a request's own timeout applies: Triton ignores it
    /// there, but its documentation calls it a timeout "less than the default", and no timeout
    /// is the longest there is.
    pub fn timeout(&self, requested: Option<Duration>) -> Option<Duration> {
        match requested.filter(|t| self.allow_timeout_override && !t.is_zero()) {
            Some(t) => Some(self.default_timeout.map_or(t, |d| d.min(t))),
            None => self.default_timeout,
        }
    }

    fn from_config(p: &ModelQueuePolicy) -> QueuePolicy {
        QueuePolicy {
            on_timeout: if p.timeout_action == TimeoutAction::Delay as i32 {
                OnTimeout::Delay
            } else {
                OnTimeout::Reject
            },
            default_timeout: (p.default_timeout_microseconds > 0)
                .then(|| Duration::from_micros(p.default_timeout_microseconds)),
            allow_timeout_override: p.allow_timeout_override,
            max_queue_size: if p.max_queue_size == 0 {
                DEFAULT_MAX_QUEUE_SIZE
            } else {
                p.max_queue_size as usize
            },
        }
    }
}

/// How one model's requests are queued and batched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Rows a batch may hold; 0 when the model does not batch.
    pub max_batch_size: u32,
    /// Whether requests are combined (`dynamic_batching` present and the model batches).
    pub dynamic: bool,
    /// Batch sizes worth sending at once, ascending.
    pub preferred_batch_sizes: Vec<u32>,
    pub max_queue_delay: Duration,
    /// Tern's `queue_delay: auto` (read by the repository crate, set by the loader): each batch's
    /// delay is chosen from the observed traffic, up to this budget for its oldest request;
    /// `max_queue_delay` is then unused. `None`: Triton's fixed `max_queue_delay`.
    pub auto_delay_budget: Option<Duration>,
    /// Responses leave in the order the requests arrived (`preserve_ordering`).
    pub preserve_ordering: bool,
    /// Priority levels (1 is served first); 1 level when the config sets none.
    pub priority_levels: u32,
    pub default_priority: u32,
    /// Indexed by level - 1.
    pub policies: Vec<QueuePolicy>,
    /// Triton's sequence batcher (`sequence_batching`), which then replaces the queue above.
    pub sequence: Option<crate::sequence::SequenceConfig>,
}

impl SchedulerConfig {
    pub fn from_model_config(config: &ModelConfig) -> SchedulerConfig {
        let max_batch_size = u32::try_from(config.max_batch_size).unwrap_or(0);
        match &config.scheduling_choice {
            Some(SchedulingChoice::DynamicBatching(db)) => {
                let levels = u32::try_from(db.priority_levels).unwrap_or(u32::MAX).clamp(1, 1024);
                let default_priority = u32::try_from(db.default_priority_level).unwrap_or(0);
                let default_priority = if (1..=levels).contains(&default_priority) {
                    default_priority
                } else {
                    levels.div_ceil(2)
                };
                let default_policy =
                    db.default_queue_policy.as_ref().map(QueuePolicy::from_config).unwrap_or_default();
                let overrides: HashMap<u64, &ModelQueuePolicy> =
                    db.priority_queue_policy.iter().map(|(k, v)| (*k, v)).collect();
                let policies = (1..=u64::from(levels))
                    .map(|l| {
                        overrides
                            .get(&l)
                            .map_or_else(|| default_policy.clone(), |p| QueuePolicy::from_config(p))
                    })
                    .collect();
                let mut preferred: Vec<u32> = db
                    .preferred_batch_size
                    .iter()
                    .filter_map(|&p| u32::try_from(p).ok())
                    .filter(|&p| p > 0 && p <= max_batch_size)
                    .collect();
                preferred.sort_unstable();
                preferred.dedup();
                SchedulerConfig {
                    max_batch_size,
                    dynamic: max_batch_size > 0,
                    preferred_batch_sizes: preferred,
                    max_queue_delay: Duration::from_micros(db.max_queue_delay_microseconds),
                    auto_delay_budget: None,
                    preserve_ordering: db.preserve_ordering,
                    priority_levels: levels,
                    default_priority,
                    policies,
                    sequence: None,
                }
            }
            _ => SchedulerConfig {
                max_batch_size,
                dynamic: false,
                preferred_batch_sizes: Vec::new(),
                max_queue_delay: Duration::ZERO,
                auto_delay_budget: None,
                preserve_ordering: false,
                priority_levels: 1,
                default_priority: 1,
                policies: vec![QueuePolicy::default()],
                sequence: crate::sequence::SequenceConfig::from_model_config(config),
            },
        }
    }

    /// The level a request's `priority` parameter selects (0 or out of range: the default).
    pub fn level(&self, priority: u64) -> u32 {
        match u32::try_from(priority) {
            Ok(p) if (1..=self.priority_levels).contains(&p) => p,
            _ => self.default_priority,
        }
    }

    pub fn policy(&self, level: u32) -> &QueuePolicy {
        let i = (level.max(1) - 1) as usize;
        &self.policies[i.min(self.policies.len() - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::inference::ModelDynamicBatching;

    #[test]
    fn default_scheduler_without_dynamic_batching() {
        let c = SchedulerConfig::from_model_config(&ModelConfig { max_batch_size: 8, ..Default::default() });
        assert!(!c.dynamic);
        assert_eq!(c.priority_levels, 1);
        assert_eq!(c.policy(1).max_queue_size, DEFAULT_MAX_QUEUE_SIZE);
    }

    #[test]
    fn dynamic_batching_with_priorities_and_policies() {
        let mut db = ModelDynamicBatching {
            preferred_batch_size: vec![8, 4, 16, 0],
            max_queue_delay_microseconds: 500,
            priority_levels: 3,
            default_priority_level: 2,
            default_queue_policy: Some(ModelQueuePolicy {
                max_queue_size: 10,
                default_timeout_microseconds: 1000,
                ..Default::default()
            }),
            ..Default::default()
        };
        db.priority_queue_policy.insert(
            1,
            ModelQueuePolicy {
                timeout_action: TimeoutAction::Delay as i32,
                allow_timeout_override: true,
                ..Default::default()
            },
        );
        let config = ModelConfig {
            max_batch_size: 8,
            scheduling_choice: Some(SchedulingChoice::DynamicBatching(db)),
            ..Default::default()
        };
        let c = SchedulerConfig::from_model_config(&config);
        assert!(c.dynamic);
        assert_eq!(c.preferred_batch_sizes, vec![4, 8]);
        assert_eq!(c.max_queue_delay, Duration::from_micros(500));
        assert_eq!(c.level(0), 2);
        assert_eq!(c.level(1), 1);
        assert_eq!(c.level(9), 2);
        assert_eq!(c.policy(1).on_timeout, OnTimeout::Delay);
        assert!(c.policy(1).allow_timeout_override);
        assert_eq!(c.policy(1).max_queue_size, DEFAULT_MAX_QUEUE_SIZE);
        assert_eq!(c.policy(2).max_queue_size, 10);
        assert_eq!(c.policy(3).default_timeout, Some(Duration::from_millis(1)));
    }

    #[test]
    fn a_request_timeout_only_shortens_the_default() {
        let ms = Duration::from_millis;
        let p = QueuePolicy {
            default_timeout: Some(ms(100)),
            allow_timeout_override: true,
            ..Default::default()
        };
        assert_eq!(p.timeout(None), Some(ms(100)));
        assert_eq!(p.timeout(Some(ms(10))), Some(ms(10)));
        assert_eq!(p.timeout(Some(ms(1000))), Some(ms(100)), "never lengthened");
        assert_eq!(p.timeout(Some(Duration::ZERO)), Some(ms(100)), "0 is no override");
        let fixed = QueuePolicy { allow_timeout_override: false, ..p.clone() };
        assert_eq!(fixed.timeout(Some(ms(10))), Some(ms(100)), "overrides not allowed");
        let none = QueuePolicy { default_timeout: None, ..p };
        assert_eq!(none.timeout(Some(ms(10))), Some(ms(10)));
        assert_eq!(none.timeout(Some(Duration::ZERO)), None);
        assert_eq!(QueuePolicy::default().timeout(Some(ms(10))), None);
    }
}
