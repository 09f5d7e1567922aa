//! Caps on the router's maps keyed by names a client chose (a model name in a request), so no
//! stream of distinct names can grow the router's memory without bound.

use std::hash::Hash;
use std::time::Duration;

use dashmap::DashMap;

/// Lazy loads in progress at once, distinct models; a request for yet another model answers
/// UNAVAILABLE until one ends.
pub const MAX_LAZY_LOADS: usize = 256;
/// (model, node) pairs whose recent load failure placement remembers (for its backoff).
pub const MAX_FAILED_LOADS: usize = 4096;
/// Names the nodes said they do not have, remembered for [`UNKNOWN_MODEL_TTL`].
pub const MAX_UNKNOWN_MODELS: usize = 4096;
/// How long a name every node refused (NOT_FOUND, INVALID_ARGUMENT) is answered without asking
/// the nodes again: a model added to a repository is served after at most this long.
pub const UNKNOWN_MODEL_TTL: Duration = Duration::from_secs(5);

/// Inserts `key -> value` (stamped `now` ms, read back with `stamp`) into `map`, kept to at
/// most `cap` entries: when full, entries older than `ttl` leave first, then the oldest.
pub fn insert<K, V>(
    map: &DashMap<K, V>,
    key: K,
    value: V,
    now: u64,
    ttl: Duration,
    cap: usize,
    stamp: impl Fn(&V) -> u64,
) where
    K: Eq + Hash + Clone,
{
    if map.len() >= cap && !map.contains_key(&key) {
        let ttl = ttl.as_millis() as u64;
        map.retain(|_, v| now.saturating_sub(stamp(v)) < ttl);
        while map.len() >= cap {
            let oldest = map.iter().min_by_key(|e| stamp(e.value())).map(|e| e.key().clone());
            match oldest {
                Some(k) => {
                    map.remove(&k);
                }
                None => break,
            }
        }
    }
    map.insert(key, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_maps_drop_expired_then_oldest() {
        let map: DashMap<String, u64> = DashMap::new();
        let ttl = Duration::from_millis(100);
        for i in 0..10u64 {
            insert(&map, format!("m{i}"), i, i, ttl, 4, |t| *t);
            assert!(map.len() <= 4, "{} entries", map.len());
        }
        // Nothing had expired (all within 100 ms): the oldest went each time.
        let mut keys: Vec<String> = map.iter().map(|e| e.key().clone()).collect();
        keys.sort();
        assert_eq!(keys, ["m6", "m7", "m8", "m9"]);
        // At 500 ms every entry has expired: one insert clears them.
        insert(&map, "late".to_string(), 500, 500, ttl, 4, |t| *t);
        assert_eq!(map.len(), 1);
        // Updating a present key never evicts.
        for i in 0..3u64 {
            insert(&map, format!("n{i}"), 501, 501, ttl, 4, |t| *t);
        }
        insert(&map, "late".to_string(), 502, 502, ttl, 4, |t| *t);
        assert_eq!(map.len(), 4);
    }
}
