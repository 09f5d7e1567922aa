//! Placement's decisions, as pure functions over a snapshot: where a model goes
//! ([`choose_nodes`]) and which models a node over its memory budget unloads ([`evictions`]).

use std::collections::HashSet;

/// A node as placement sees it.
#[derive(Debug, Clone, Default)]
pub struct NodeLoad {
    pub key: String,
    /// Bytes for models; 0: no budget.
    pub budget: u64,
    pub used: u64,
    /// Models it holds or is loading.
    pub models: HashSet<String>,
}

impl NodeLoad {
    /// Bytes it may still take; unlimited without a budget.
    pub fn free(&self) -> u64 {
        if self.budget == 0 { u64::MAX - self.used } else { self.budget.saturating_sub(self.used) }
    }
}

/// Picks up to `count` nodes for `model` (expected `size` bytes) among those not holding it and
/// not in `exclude`: first where it fits, then the most free memory, then the fewest models,
/// then the key (deterministic). Records each choice in `nodes`, so successive calls spread.
pub fn choose_nodes(
    nodes: &mut [NodeLoad],
    model: &str,
    size: u64,
    count: usize,
    exclude: &HashSet<String>,
) -> Vec<usize> {
    let mut chosen = Vec::with_capacity(count);
    for _ in 0..count {
        let best = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.models.contains(model) && !exclude.contains(&n.key))
            .max_by(|(_, a), (_, b)| {
                let fits = |n: &NodeLoad| n.free() >= size;
                fits(a)
                    .cmp(&fits(b))
                    .then(a.free().cmp(&b.free()))
                    .then(b.models.len().cmp(&a.models.len()))
                    .then(b.key.cmp(&a.key))
            })
            .map(|(i, _)| i);
        let Some(i) = best else { break };
        nodes[i].used = nodes[i].used.saturating_add(size);
        nodes[i].models.insert(model.to_string());
        chosen.push(i);
    }
    chosen
}

/// A model resident on a node, for eviction.
#[derive(Debug, Clone)]
pub struct Resident {
    pub model: String,
    pub bytes: u64,
    /// Last request for the model through this router (ms); 0: never.
    pub last_used_ms: u64,
    /// Requests for it on the node now, queued or executing.
    pub busy: bool,
    /// Kept placed by the operator (--load-model, RepositoryModelLoad): never evicted.
    pub pinned: bool,
}

/// Models to unload from a node using `used` of `budget` bytes: least recently used first,
/// never a pinned one, one with requests queued or executing, or one used within `grace_ms` of
/// `now_ms`, until it fits (or nothing else may go).
pub fn evictions(budget: u64, used: u64, residents: &[Resident], now_ms: u64, grace_ms: u64) -> Vec<String> {
    if budget == 0 || used <= budget {
        return Vec::new();
    }
    let mut candidates: Vec<&Resident> = residents
        .iter()
        .filter(|r| !r.pinned && !r.busy && now_ms.saturating_sub(r.last_used_ms) >= grace_ms)
        .collect();
    candidates.sort_by(|a, b| a.last_used_ms.cmp(&b.last_used_ms).then(a.model.cmp(&b.model)));
    let mut over = used - budget;
    let mut out = Vec::new();
    for r in candidates {
        if over == 0 {
            break;
        }
        over = over.saturating_sub(r.bytes.max(1));
        out.push(r.model.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn node(key: &str, budget: u64, used: u64, models: &[&str]) -> NodeLoad {
        NodeLoad { key: key.into(), budget, used, models: models.iter().map(|m| m.to_string()).collect() }
    }

    #[test]
    fn chooses_where_it_fits_then_most_free() {
        let mut nodes = vec![node("a", 100, 90, &[]), node("b", 100, 20, &["m"]), node("c", 100, 50, &[])];
        // b holds m already; c fits (50 free), a does not (10 free).
        assert_eq!(choose_nodes(&mut nodes, "m", 30, 1, &HashSet::new()), vec![2]);
        assert_eq!(nodes[2].used, 80);
        // Two replicas of n: b (80 free) then c is at 80 used (20 free) vs a (10 free): c.
        assert_eq!(choose_nodes(&mut nodes, "n", 10, 2, &HashSet::new()), vec![1, 2]);
        // Nothing fits: the most free still takes it (eviction follows).
        assert_eq!(choose_nodes(&mut nodes, "big", 500, 1, &HashSet::new()), vec![1]);
        // Excluded and holding nodes are never chosen; asking for more than exist stops short.
        let exclude: HashSet<String> = ["a".to_string()].into();
        assert_eq!(choose_nodes(&mut nodes, "big", 1, 3, &exclude), vec![2]);
    }

    #[test]
    fn unlimited_budgets_balance_by_memory() {
        let mut nodes: Vec<NodeLoad> = (0..4).map(|i| node(&format!("n{i}"), 0, 0, &[])).collect();
        for m in 0..40 {
            choose_nodes(&mut nodes, &format!("m{m}"), 10, 1, &HashSet::new());
        }
        assert!(
            nodes.iter().all(|n| n.used == 100),
            "{:?}",
            nodes.iter().map(|n| n.used).collect::<Vec<_>>()
        );
    }

    #[test]
    fn evicts_least_recently_used_idle_models_until_within_budget() {
        let r = |m: &str, bytes, last, busy, pinned| Resident {
            model: m.into(),
            bytes,
            last_used_ms: last,
            busy,
            pinned,
        };
        let residents = vec![
            r("old", 30, 100, false, false),
            r("busy", 30, 50, true, false),
            r("pinned", 30, 0, false, true),
            r("mid", 30, 500, false, false),
            r("new", 30, 9_900, false, false),
        ];
        // 150 used of 100: 50 over -> old (30), then mid (30); busy, pinned (never used, so the
        // least recently used of all) and recent ones stay.
        assert_eq!(evictions(100, 150, &residents, 10_000, 2_000), vec!["old", "mid"]);
        // Far over budget: still only those two may go.
        assert_eq!(evictions(10, 150, &residents, 10_000, 2_000), vec!["old", "mid"]);
        assert!(evictions(200, 120, &residents, 10_000, 2_000).is_empty());
        assert!(evictions(0, 120, &residents, 10_000, 2_000).is_empty(), "no budget, no eviction");
    }

    /// Placement at scale: 1,000 models (2 replicas, 1-100 MiB) onto 100 nodes with 8 GiB
    /// each. Prints the time and the balance; `cargo test -p tern-router --release placement_at_scale -- --nocapture`.
    #[test]
    fn placement_at_scale() {
        const MIB: u64 = 1 << 20;
        let mut nodes: Vec<NodeLoad> =
            (0..100).map(|i| node(&format!("node-{i:03}"), 8 << 30, 0, &[])).collect();
        let mut rng = fastrand::Rng::with_seed(7);
        let sizes: Vec<u64> = (0..1000).map(|_| rng.u64(1..=100) * MIB).collect();
        let started = Instant::now();
        for (m, size) in sizes.iter().enumerate() {
            let chosen = choose_nodes(&mut nodes, &format!("model-{m}"), *size, 2, &HashSet::new());
            assert_eq!(chosen.len(), 2);
            assert_ne!(nodes[chosen[0]].key, nodes[chosen[1]].key, "replicas on distinct nodes");
        }
        let elapsed = started.elapsed();
        let used: Vec<u64> = nodes.iter().map(|n| n.used).collect();
        let total: u64 = sizes.iter().sum::<u64>() * 2;
        assert_eq!(used.iter().sum::<u64>(), total);
        let mean = total as f64 / nodes.len() as f64;
        let max = *used.iter().max().unwrap_or(&0) as f64;
        let min = *used.iter().min().unwrap_or(&0) as f64;
        println!(
            "placement_at_scale: 1000 models x 2 replicas on 100 nodes in {:.1} ms; per node mean {:.0} MiB, min {:.0}, max {:.0} (max/mean {:.3})",
            elapsed.as_secs_f64() * 1e3,
            mean / MIB as f64,
            min / MIB as f64,
            max / MIB as f64,
            max / mean
        );
        assert!(used.iter().all(|&u| u <= 8 << 30), "no node over budget when the total fits");
        // Greedy most-free placement keeps every node within one model (100 MiB) of the others.
        assert!(
            max - min <= (100 * MIB) as f64,
            "spread {} MiB exceeds the largest model",
            (max - min) / MIB as f64
        );
    }
}
