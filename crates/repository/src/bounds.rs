//! Upper bounds on the numbers of a config that size memory, threads or work: one config (a
//! file, or a client's `RepositoryModelLoad` override) must not be able to take the node down.
//! Triton leaves most of these unbounded; Tern refuses a config past them, naming the field and
//! the limit (README, "Model configuration: limits").

use tern_proto::inference::model_config::SchedulingChoice;
use tern_proto::inference::{ModelConfig, ModelQueuePolicy};

use crate::error::RepositoryError;

/// `max_batch_size`: rows one execution may hold.
pub const MAX_BATCH_SIZE: i32 = 65_536;
/// Instances of one model version, all `instance_group`s together (each group's `count`
/// times its number of `gpus`).
pub const MAX_INSTANCES: i64 = 256;
/// `model_warmup` samples.
pub const MAX_WARMUP_SAMPLES: usize = 32;
/// `model_warmup.count`: runs of one sample on each instance.
pub const MAX_WARMUP_COUNT: u32 = 1_000;
/// `dynamic_batching.priority_levels`.
pub const MAX_PRIORITY_LEVELS: u64 = 128;
/// `max_queue_size` of any queue policy (0 means Tern's default of 16,384).
pub const MAX_QUEUE_SIZE: u32 = 65_536;
/// `dynamic_batching.max_queue_delay_microseconds` (60 s).
pub const MAX_QUEUE_DELAY_MICROSECONDS: u64 = 60_000_000;
/// `default_timeout_microseconds` of any queue policy (1 h).
pub const MAX_QUEUE_TIMEOUT_MICROSECONDS: u64 = 3_600_000_000;

/// Checks every bounded number of `config` (a model named `model`). Runs before anything is
/// sized by them: on a client's override before any session loads, and in [`crate::validate`].
pub fn check_bounds(model: &str, config: &ModelConfig) -> Result<(), RepositoryError> {
    let over = |field: &str, value: &dyn std::fmt::Display, limit: &dyn std::fmt::Display| {
        Err(RepositoryError::invalid(model, format!("{field} {value} is over the limit of {limit}")))
    };
    if config.max_batch_size > MAX_BATCH_SIZE {
        return over("max_batch_size", &config.max_batch_size, &MAX_BATCH_SIZE);
    }
    let mut instances: i64 = 0;
    for group in &config.instance_group {
        let count = i64::from(group.count.max(1));
        if count > MAX_INSTANCES {
            return over(&format!("instance_group '{}' count", group.name), &group.count, &MAX_INSTANCES);
        }
        instances = instances.saturating_add(count.saturating_mul(group.gpus.len().max(1) as i64));
    }
    if instances > MAX_INSTANCES {
        return over("instance_group (count x gpus, all groups)", &instances, &MAX_INSTANCES);
    }
    if config.model_warmup.len() > MAX_WARMUP_SAMPLES {
        return over("the number of model_warmup samples", &config.model_warmup.len(), &MAX_WARMUP_SAMPLES);
    }
    for warmup in &config.model_warmup {
        if warmup.count > MAX_WARMUP_COUNT {
            return over(&format!("model_warmup '{}' count", warmup.name), &warmup.count, &MAX_WARMUP_COUNT);
        }
        if i64::from(warmup.batch_size) > i64::from(MAX_BATCH_SIZE) {
            return over(
                &format!("model_warmup '{}' batch_size", warmup.name),
                &warmup.batch_size,
                &MAX_BATCH_SIZE,
            );
        }
    }
    if let Some(SchedulingChoice::DynamicBatching(batching)) = &config.scheduling_choice {
        if batching.priority_levels > MAX_PRIORITY_LEVELS {
            return over("dynamic_batching.priority_levels", &batching.priority_levels, &MAX_PRIORITY_LEVELS);
        }
        if batching.max_queue_delay_microseconds > MAX_QUEUE_DELAY_MICROSECONDS {
            return over(
                "dynamic_batching.max_queue_delay_microseconds",
                &batching.max_queue_delay_microseconds,
                &MAX_QUEUE_DELAY_MICROSECONDS,
            );
        }
        if let Some(policy) = &batching.default_queue_policy {
            check_queue_policy(model, "dynamic_batching.default_queue_policy", policy)?;
        }
        let mut levels: Vec<_> = batching.priority_queue_policy.iter().collect();
        levels.sort_by_key(|(level, _)| **level);
        for (level, policy) in levels {
            check_queue_policy(model, &format!("dynamic_batching.priority_queue_policy[{level}]"), policy)?;
        }
    }
    // Tern's `queue_delay` parameters bound their budget like max_queue_delay_microseconds.
    crate::queue_delay::auto_queue_delay_budget(config)?;
    Ok(())
}

fn check_queue_policy(model: &str, field: &str, policy: &ModelQueuePolicy) -> Result<(), RepositoryError> {
    if policy.max_queue_size > MAX_QUEUE_SIZE {
        return Err(RepositoryError::invalid(
            model,
            format!("{field}.max_queue_size {} is over the limit of {MAX_QUEUE_SIZE}", policy.max_queue_size),
        ));
    }
    if policy.default_timeout_microseconds > MAX_QUEUE_TIMEOUT_MICROSECONDS {
        return Err(RepositoryError::invalid(
            model,
            format!(
                "{field}.default_timeout_microseconds {} is over the limit of {MAX_QUEUE_TIMEOUT_MICROSECONDS}",
                policy.default_timeout_microseconds
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_config;

    fn message(text: &str) -> String {
        let config = parse_config(text).expect("parses");
        match check_bounds("m", &config) {
            Ok(()) => "accepted".to_owned(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn at_the_limits_is_accepted() {
        let text = format!(
            "max_batch_size: {MAX_BATCH_SIZE}
             instance_group [ {{ count: 128 kind: KIND_CPU }}, {{ count: 64 kind: KIND_GPU gpus: [ 0, 1 ] }} ]
             model_warmup [ {{ name: \"w\" batch_size: {MAX_BATCH_SIZE} count: {MAX_WARMUP_COUNT} }} ]
             dynamic_batching {{
               max_queue_delay_microseconds: {MAX_QUEUE_DELAY_MICROSECONDS}
               priority_levels: {MAX_PRIORITY_LEVELS} default_priority_level: 1
               default_queue_policy {{ max_queue_size: {MAX_QUEUE_SIZE} default_timeout_microseconds: {MAX_QUEUE_TIMEOUT_MICROSECONDS} }}
             }}"
        );
        assert_eq!(message(&text), "accepted");
        assert_eq!(
            message("instance_group [ { count: -5 } ]"),
            "accepted",
            "normalized to the default later"
        );
    }

    #[test]
    fn each_bound_names_field_and_limit() {
        let cases = [
            ("max_batch_size: 2147483647", "max_batch_size 2147483647 is over the limit of 65536"),
            ("max_batch_size: 65537", "max_batch_size 65537 is over the limit of 65536"),
            (
                "instance_group [ { name: \"g\" count: 2147483647 } ]",
                "instance_group 'g' count 2147483647 is over the limit of 256",
            ),
            (
                "instance_group [ { count: 200 }, { count: 100 kind: KIND_GPU } ]",
                "instance_group (count x gpus, all groups) 300 is over the limit of 256",
            ),
            (
                "instance_group [ { count: 100 kind: KIND_GPU gpus: [ 0, 1, 2 ] } ]",
                "instance_group (count x gpus, all groups) 300 is over the limit of 256",
            ),
            (
                "model_warmup [ { name: \"w\" count: 4294967295 } ]",
                "model_warmup 'w' count 4294967295 is over the limit of 1000",
            ),
            (
                "model_warmup [ { name: \"w\" batch_size: 100000 } ]",
                "model_warmup 'w' batch_size 100000 is over the limit of 65536",
            ),
            (
                "dynamic_batching { priority_levels: 18446744073709551615 }",
                "dynamic_batching.priority_levels 18446744073709551615 is over the limit of 128",
            ),
            (
                "dynamic_batching { max_queue_delay_microseconds: 18446744073709551615 }",
                "dynamic_batching.max_queue_delay_microseconds 18446744073709551615 is over the limit of 60000000",
            ),
            (
                "dynamic_batching { default_queue_policy { max_queue_size: 4294967295 } }",
                "dynamic_batching.default_queue_policy.max_queue_size 4294967295 is over the limit of 65536",
            ),
            (
                "dynamic_batching { priority_levels: 2 priority_queue_policy { key: 2 value { default_timeout_microseconds: 18446744073709551615 } } }",
                "dynamic_batching.priority_queue_policy[2].default_timeout_microseconds 18446744073709551615 is over the limit of 3600000000",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(message(text), format!("model 'm': {want}"), "{text}");
        }
        let samples: Vec<String> = (0..33).map(|i| format!("{{ name: \"w{i}\" }}")).collect();
        assert_eq!(
            message(&format!("model_warmup [ {} ]", samples.join(", "))),
            "model 'm': the number of model_warmup samples 33 is over the limit of 32"
        );
    }
}
