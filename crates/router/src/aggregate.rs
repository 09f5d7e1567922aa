//! Cluster-wide answers built from every node's: ModelStatistics summed per (model, version),
//! RepositoryIndex merged with the nodes holding each model.

use std::collections::BTreeMap;

use tern_core::ModelState;
use tern_proto::inference::{
    InferResponseStatistics, InferStatistics, ModelStatistics, StatisticDuration,
    repository_index_response::ModelIndex,
};

fn add_duration(into: &mut Option<StatisticDuration>, from: &Option<StatisticDuration>) {
    if let Some(from) = from {
        let d = into.get_or_insert_with(StatisticDuration::default);
        d.count += from.count;
        d.ns += from.ns;
    }
}

fn add_infer(into: &mut InferStatistics, from: &InferStatistics) {
    add_duration(&mut into.success, &from.success);
    add_duration(&mut into.fail, &from.fail);
    add_duration(&mut into.queue, &from.queue);
    add_duration(&mut into.compute_input, &from.compute_input);
    add_duration(&mut into.compute_infer, &from.compute_infer);
    add_duration(&mut into.compute_output, &from.compute_output);
    add_duration(&mut into.cache_hit, &from.cache_hit);
    add_duration(&mut into.cache_miss, &from.cache_miss);
}

fn add_response(into: &mut InferResponseStatistics, from: &InferResponseStatistics) {
    add_duration(&mut into.compute_infer, &from.compute_infer);
    add_duration(&mut into.compute_output, &from.compute_output);
    add_duration(&mut into.success, &from.success);
    add_duration(&mut into.fail, &from.fail);
    add_duration(&mut into.empty_response, &from.empty_response);
    add_duration(&mut into.cancel, &from.cancel);
}

/// Sums the statistics of the same (model, version) across nodes; sorted by name and version.
pub fn merge_statistics(per_node: impl IntoIterator<Item = Vec<ModelStatistics>>) -> Vec<ModelStatistics> {
    let mut merged: BTreeMap<(String, String), ModelStatistics> = BTreeMap::new();
    for stats in per_node {
        for s in stats {
            let m = merged.entry((s.name.clone(), s.version.clone())).or_insert_with(|| ModelStatistics {
                name: s.name.clone(),
                version: s.version.clone(),
                ..Default::default()
            });
            m.last_inference = m.last_inference.max(s.last_inference);
            m.inference_count += s.inference_count;
            m.execution_count += s.execution_count;
            if let Some(from) = &s.inference_stats {
                add_infer(m.inference_stats.get_or_insert_with(InferStatistics::default), from);
            }
            for b in &s.batch_stats {
                match m.batch_stats.iter_mut().find(|x| x.batch_size == b.batch_size) {
                    Some(x) => {
                        add_duration(&mut x.compute_input, &b.compute_input);
                        add_duration(&mut x.compute_infer, &b.compute_infer);
                        add_duration(&mut x.compute_output, &b.compute_output);
                    }
                    None => m.batch_stats.push(*b),
                }
            }
            m.batch_stats.sort_by_key(|b| b.batch_size);
            m.memory_usage.extend(s.memory_usage.iter().cloned());
            for (key, r) in &s.response_stats {
                add_response(m.response_stats.entry(key.clone()).or_default(), r);
            }
        }
    }
    merged.into_values().collect()
}

/// Triton's states from most to least servable; a merged row shows the best state of any node.
fn rank(state: &str) -> u8 {
    match ModelState::parse(state) {
        Some(ModelState::Ready) => 4,
        Some(ModelState::Loading) => 3,
        Some(ModelState::Unloading) => 2,
        Some(ModelState::Unavailable) => 1,
        Some(ModelState::Unknown) | None => 0,
    }
}

/// Merges the nodes' repository indexes: one row per (model, version) with the best state;
/// with `holders`, the reason of a READY row lists the nodes holding it ("ready on: a, b"),
/// other rows keep a node's reason.
pub fn merge_index(
    per_node: impl IntoIterator<Item = (String, Vec<ModelIndex>)>,
    holders: bool,
) -> Vec<ModelIndex> {
    let mut merged: BTreeMap<(String, String), (ModelIndex, Vec<String>)> = BTreeMap::new();
    for (node, rows) in per_node {
        for row in rows {
            let key = (row.name.clone(), row.version.clone());
            let ready = row.state == ModelState::Ready.as_str();
            let slot = merged.entry(key).or_insert_with(|| (row.clone(), Vec::new()));
            if rank(&row.state) > rank(&slot.0.state) {
                slot.0 = row;
            }
            if ready {
                slot.1.push(node.clone());
            }
        }
    }
    // A name-only row (a model never loaded) adds nothing once a versioned row exists.
    let versioned: std::collections::HashSet<String> =
        merged.keys().filter(|(_, v)| !v.is_empty()).map(|(n, _)| n.clone()).collect();
    merged
        .into_iter()
        .filter(|((name, version), (row, _))| {
            !(version.is_empty() && row.state.is_empty() && versioned.contains(name))
        })
        .map(|(_, (mut row, mut nodes))| {
            if holders && row.state == ModelState::Ready.as_str() {
                nodes.sort();
                row.reason = format!("ready on: {}", nodes.join(", "));
            }
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::inference::InferBatchStatistics;

    fn dur(count: u64, ns: u64) -> Option<StatisticDuration> {
        Some(StatisticDuration { count, ns })
    }

    fn stats(name: &str, version: &str, n: u64, last: u64) -> ModelStatistics {
        ModelStatistics {
            name: name.into(),
            version: version.into(),
            last_inference: last,
            inference_count: n,
            execution_count: n,
            inference_stats: Some(InferStatistics {
                success: dur(n, n * 100),
                queue: dur(n, n * 10),
                ..Default::default()
            }),
            batch_stats: vec![InferBatchStatistics {
                batch_size: 1,
                compute_infer: dur(n, n * 50),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn statistics_sum_per_model_version() {
        let merged = merge_statistics([
            vec![stats("a", "1", 3, 10), stats("b", "1", 1, 5)],
            vec![stats("a", "1", 4, 20), stats("a", "2", 2, 7)],
        ]);
        assert_eq!(merged.len(), 3);
        let a1 = &merged[0];
        assert_eq!((a1.name.as_str(), a1.version.as_str()), ("a", "1"));
        assert_eq!(a1.inference_count, 7);
        assert_eq!(a1.last_inference, 20);
        let s = a1.inference_stats.as_ref().and_then(|s| s.success.as_ref()).map(|d| (d.count, d.ns));
        assert_eq!(s, Some((7, 700)));
        assert_eq!(a1.batch_stats.len(), 1);
        assert_eq!(a1.batch_stats[0].compute_infer.as_ref().map(|d| d.count), Some(7));
        assert_eq!(merged[1].version, "2");
        assert_eq!(merged[2].name, "b");
    }

    #[test]
    fn index_keeps_best_state_and_lists_holders() {
        let row = |n: &str, v: &str, s: &str| ModelIndex {
            name: n.into(),
            version: v.into(),
            state: s.into(),
            reason: String::new(),
        };
        let merged = merge_index(
            [
                ("node-b".to_string(), vec![row("m", "1", "READY"), row("x", "", "")]),
                ("node-a".to_string(), vec![row("m", "1", "READY"), row("x", "1", "UNAVAILABLE")]),
                ("node-c".to_string(), vec![row("m", "1", "LOADING"), row("y", "", "")]),
            ],
            true,
        );
        let got: Vec<(&str, &str, &str, &str)> = merged
            .iter()
            .map(|r| (r.name.as_str(), r.version.as_str(), r.state.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("m", "1", "READY", "ready on: node-a, node-b"),
                ("x", "1", "UNAVAILABLE", ""),
                ("y", "", "", ""),
            ]
        );
    }
}
