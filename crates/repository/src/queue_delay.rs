//! Tern's `queue_delay` parameters: a dynamic batcher whose queue delay is chosen per batch from
//! what the model's traffic shows, instead of Triton's fixed `max_queue_delay_microseconds`.
//!
//! ```text
//! parameters { key: "queue_delay" value { string_value: "auto" } }
//! parameters { key: "queue_delay_budget_microseconds" value { string_value: "2000" } }
//! ```
//!
//! `queue_delay` is `fixed` (the default: Triton's behaviour, `max_queue_delay_microseconds` is
//! the delay) or `auto`. With `auto` a batch waits only while the requests expected to arrive
//! would raise the instance's throughput, and never past the budget: the longest the oldest
//! request of a batch may wait in the queue. The budget is `queue_delay_budget_microseconds`
//! when given; otherwise `max_queue_delay_microseconds` when it is above 0 (Triton's field keeps
//! its meaning of "at most this long"); otherwise [`DEFAULT_QUEUE_DELAY_BUDGET_MICROSECONDS`].

use std::time::Duration;

use tern_proto::inference::ModelConfig;
use tern_proto::inference::model_config::SchedulingChoice;

use crate::bounds::MAX_QUEUE_DELAY_MICROSECONDS;
use crate::error::RepositoryError;

/// `fixed` or `auto`.
pub const QUEUE_DELAY_KEY: &str = "queue_delay";
/// With `queue_delay: auto`: the longest a batch's oldest request may wait, in microseconds.
pub const QUEUE_DELAY_BUDGET_KEY: &str = "queue_delay_budget_microseconds";
/// The budget when neither `queue_delay_budget_microseconds` nor a nonzero
/// `max_queue_delay_microseconds` gives one (1 ms).
pub const DEFAULT_QUEUE_DELAY_BUDGET_MICROSECONDS: u64 = 1_000;

/// The budget of an automatic queue delay, `None` when the delay is fixed (Triton's). Checks
/// the parameters' values and bounds; [`crate::validate`] also requires `dynamic_batching` for
/// `auto`.
pub fn auto_queue_delay_budget(config: &ModelConfig) -> Result<Option<Duration>, RepositoryError> {
    let model = config.name.as_str();
    let param = |key: &str| config.parameters.get(key).map(|p| p.string_value.as_str());
    let auto = match param(QUEUE_DELAY_KEY).map(|v| v.trim().to_ascii_lowercase()) {
        None => false,
        Some(v) if v == "fixed" => false,
        Some(v) if v == "auto" => true,
        Some(_) => {
            return Err(RepositoryError::invalid(
                model,
                format!(
                    "parameters '{QUEUE_DELAY_KEY}': '{}' is not one of 'auto', 'fixed'",
                    param(QUEUE_DELAY_KEY).unwrap_or_default()
                ),
            ));
        }
    };
    let budget = param(QUEUE_DELAY_BUDGET_KEY);
    if !auto {
        return match budget {
            None => Ok(None),
            Some(_) => Err(RepositoryError::invalid(
                model,
                format!(
                    "parameters '{QUEUE_DELAY_BUDGET_KEY}' applies only with parameters \
                     '{QUEUE_DELAY_KEY}' set to 'auto'"
                ),
            )),
        };
    }
    let micros = match budget {
        Some(text) => {
            let value: u64 = text.trim().parse().map_err(|_| {
                RepositoryError::invalid(
                    model,
                    format!("parameters '{QUEUE_DELAY_BUDGET_KEY}': '{text}' is not a whole number"),
                )
            })?;
            if !(1..=MAX_QUEUE_DELAY_MICROSECONDS).contains(&value) {
                return Err(RepositoryError::invalid(
                    model,
                    format!(
                        "parameters '{QUEUE_DELAY_BUDGET_KEY}': {value} is out of range (1 to \
                         {MAX_QUEUE_DELAY_MICROSECONDS})"
                    ),
                ));
            }
            value
        }
        None => match &config.scheduling_choice {
            // Bounded by check_bounds; bounded here too, whatever calls this first.
            Some(SchedulingChoice::DynamicBatching(db)) if db.max_queue_delay_microseconds > 0 => {
                db.max_queue_delay_microseconds.min(MAX_QUEUE_DELAY_MICROSECONDS)
            }
            _ => DEFAULT_QUEUE_DELAY_BUDGET_MICROSECONDS,
        },
    };
    Ok(Some(Duration::from_micros(micros)))
}

/// `auto` needs a dynamic batcher to tune: `dynamic_batching` and `max_batch_size` above 0.
pub(crate) fn check_auto_needs_batching(config: &ModelConfig) -> Result<(), RepositoryError> {
    if auto_queue_delay_budget(config)?.is_none() {
        return Ok(());
    }
    let dynamic = matches!(config.scheduling_choice, Some(SchedulingChoice::DynamicBatching(_)));
    if dynamic && config.max_batch_size > 0 {
        return Ok(());
    }
    Err(RepositoryError::invalid(
        &config.name,
        format!(
            "parameters '{QUEUE_DELAY_KEY}': 'auto' needs dynamic_batching and max_batch_size > 0 \
             (it chooses the dynamic batcher's queue delay)"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_config;

    fn budget(text: &str) -> Result<Option<Duration>, String> {
        let config = parse_config(&format!("name: \"m\" {text}")).expect("parses");
        auto_queue_delay_budget(&config).map_err(|e| e.to_string())
    }

    fn params(pairs: &[(&str, &str)]) -> String {
        pairs
            .iter()
            .map(|(k, v)| format!("parameters {{ key: \"{k}\" value {{ string_value: \"{v}\" }} }} "))
            .collect()
    }

    #[test]
    fn fixed_unless_auto_and_the_budget_comes_from_the_parameter_the_triton_field_or_the_default() {
        let us = Duration::from_micros;
        assert_eq!(
            budget("max_batch_size: 8 dynamic_batching { max_queue_delay_microseconds: 100 }"),
            Ok(None)
        );
        assert_eq!(budget(&params(&[("queue_delay", " Fixed ")])), Ok(None));
        let auto = params(&[("queue_delay", "auto")]);
        assert_eq!(budget(&auto), Ok(Some(us(DEFAULT_QUEUE_DELAY_BUDGET_MICROSECONDS))));
        assert_eq!(
            budget(&format!("{auto} dynamic_batching {{ max_queue_delay_microseconds: 0 }}")),
            Ok(Some(us(DEFAULT_QUEUE_DELAY_BUDGET_MICROSECONDS)))
        );
        assert_eq!(
            budget(&format!("{auto} dynamic_batching {{ max_queue_delay_microseconds: 300 }}")),
            Ok(Some(us(300))),
            "Triton's field is the budget"
        );
        let both = params(&[("queue_delay", "AUTO"), ("queue_delay_budget_microseconds", "2500")]);
        assert_eq!(
            budget(&format!("{both} dynamic_batching {{ max_queue_delay_microseconds: 300 }}")),
            Ok(Some(us(2500))),
            "the budget parameter wins over max_queue_delay_microseconds"
        );
    }

    #[test]
    fn bad_values_name_the_model_and_the_parameter() {
        let cases = [
            (
                params(&[("queue_delay", "sometimes")]),
                "parameters 'queue_delay': 'sometimes' is not one of 'auto', 'fixed'",
            ),
            (
                params(&[("queue_delay_budget_microseconds", "100")]),
                "parameters 'queue_delay_budget_microseconds' applies only with parameters 'queue_delay' set to 'auto'",
            ),
            (
                params(&[("queue_delay", "auto"), ("queue_delay_budget_microseconds", "1ms")]),
                "parameters 'queue_delay_budget_microseconds': '1ms' is not a whole number",
            ),
            (
                params(&[("queue_delay", "auto"), ("queue_delay_budget_microseconds", "0")]),
                "parameters 'queue_delay_budget_microseconds': 0 is out of range (1 to 60000000)",
            ),
            (
                params(&[
                    ("queue_delay", "auto"),
                    ("queue_delay_budget_microseconds", "18446744073709551616"),
                ]),
                "parameters 'queue_delay_budget_microseconds': '18446744073709551616' is not a whole number",
            ),
            (
                params(&[("queue_delay", "auto"), ("queue_delay_budget_microseconds", "60000001")]),
                "parameters 'queue_delay_budget_microseconds': 60000001 is out of range (1 to 60000000)",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(budget(&text), Err(format!("model 'm': {want}")), "{text}");
        }
    }

    #[test]
    fn auto_needs_a_dynamic_batcher() {
        let check = |text: &str| {
            let config = parse_config(&format!("name: \"m\" {text}")).expect("parses");
            check_auto_needs_batching(&config).map_err(|e| e.to_string())
        };
        let auto = params(&[("queue_delay", "auto")]);
        assert_eq!(check(&format!("max_batch_size: 8 dynamic_batching {{ }} {auto}")), Ok(()));
        let want = "model 'm': parameters 'queue_delay': 'auto' needs dynamic_batching and max_batch_size > 0 \
                    (it chooses the dynamic batcher's queue delay)";
        assert_eq!(check(&format!("max_batch_size: 8 {auto}")), Err(want.to_owned()));
        assert_eq!(check(&format!("max_batch_size: 0 dynamic_batching {{ }} {auto}")), Err(want.to_owned()));
        assert_eq!(check("max_batch_size: 0"), Ok(()), "fixed needs nothing");
    }
}
