//! Triton's response cache (`--cache-config local,size=N`, per model `response_cache { enable:
//! true }`): one node-wide store of successful responses, bounded by bytes, least recently used
//! entries evicted first, as Triton's `local` cache (triton-inference-server/local_cache,
//! src/local_cache.cc: `Allocate` evicts LRU entries until the new one fits, and an entry larger
//! than the whole cache is refused).
//!
//! The key follows Triton's hash (core src/cache_manager.cc, `TritonCache::Hash`): model name,
//! model version, and every input sorted by name with its bytes; request parameters are not
//! part of it. Tern adds three things so that a hit can never be a wrong answer:
//! - each input's datatype and shape (Triton hashes names and bytes only, so two reshapes of the
//!   same bytes would share an entry) and the outputs the request asked for;
//! - the load's generation, so a reload or a new load of the same version never sees the
//!   previous load's answers (they are also dropped when the load's scheduler ends);
//! - the full key kept beside the entry and compared on lookup (Triton trusts its 64-bit hash;
//!   its docs list a collision as a known limitation). The input bytes are kept as shared
//!   slices of the request (no copy) and counted against the budget.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use tern_core::{DataType, Tensor};

/// What a response-cache key is made of. Built outside the cache's lock (hashing reads every
/// input byte once); the lock then compares only hashes and, for the matching entry, bytes.
#[derive(Debug, Clone)]
pub struct CacheKey {
    hash: u64,
    model: Arc<str>,
    version: u64,
    generation: u64,
    inputs: Vec<KeyInput>,
    outputs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyInput {
    name: String,
    datatype: DataType,
    shape: Vec<i64>,
    data: bytes::Bytes,
}

impl CacheKey {
    /// The key of a request for `model` version `version`, load `generation`, with `inputs`
    /// (in any order: sorted by name here, as Triton sorts them) asking for `outputs`.
    pub fn new(
        model: Arc<str>,
        version: u64,
        generation: u64,
        inputs: &[Tensor],
        outputs: &[String],
    ) -> CacheKey {
        let mut inputs: Vec<KeyInput> = inputs
            .iter()
            .map(|t| KeyInput {
                name: t.name.clone(),
                datatype: t.datatype,
                shape: t.shape.clone(),
                data: t.data.clone(),
            })
            .collect();
        inputs.sort_by(|a, b| a.name.cmp(&b.name));
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&*model, version, generation).hash(&mut h);
        for i in &inputs {
            (&i.name, i.datatype, &i.shape).hash(&mut h);
            h.write(&i.data);
        }
        outputs.hash(&mut h);
        CacheKey { hash: h.finish(), model, version, generation, inputs, outputs: outputs.to_vec() }
    }

    /// Bytes the key holds alive: the inputs' data (shared with the request) and the names.
    fn byte_size(&self) -> u64 {
        let inputs: usize = self.inputs.iter().map(|i| i.data.len() + i.name.len() + i.shape.len() * 8).sum();
        let outputs: usize = self.outputs.iter().map(String::len).sum();
        (inputs + outputs + self.model.len()) as u64
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && self.version == other.version
            && self.generation == other.generation
            && self.model == other.model
            && self.outputs == other.outputs
            && self.inputs == other.inputs
    }
}

impl Eq for CacheKey {}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// What an insert did, so the caller counts a miss as Triton does (core
/// src/dynamic_batch_scheduler.cc, `DelegateResponse`: every insert but one that finds the key
/// already there is a miss).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Stored,
    /// Another request with the same key stored its response first.
    AlreadyExists,
    /// The response (with its key) is larger than the whole cache: not stored.
    TooLarge,
}

struct Entry {
    outputs: Arc<[Tensor]>,
    bytes: u64,
    /// Position in [`Inner::lru`].
    tick: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Arc<CacheKey>, Entry>,
    /// Least recently used first.
    lru: BTreeMap<u64, Arc<CacheKey>>,
    next_tick: u64,
    used: u64,
}

impl Inner {
    fn remove(&mut self, key: &CacheKey) {
        if let Some(e) = self.entries.remove(key) {
            self.lru.remove(&e.tick);
            self.used -= e.bytes;
        }
    }
}

/// The node-wide response cache (Triton's `local` cache).
pub struct ResponseCache {
    budget: u64,
    inner: Mutex<Inner>,
}

impl ResponseCache {
    /// An empty cache holding at most `budget` bytes of responses and keys.
    pub fn new(budget: u64) -> ResponseCache {
        ResponseCache { budget, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics under the lock; the maps stay consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The configured size in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached outputs for `key`, now the most recently used entry. The tensors share the
    /// cached bytes (no copy).
    pub fn lookup(&self, key: &CacheKey) -> Option<Vec<Tensor>> {
        let mut inner = self.lock();
        let tick = inner.next_tick;
        let entry = inner.entries.get_mut(key)?;
        let old = std::mem::replace(&mut entry.tick, tick);
        let outputs = entry.outputs.to_vec();
        inner.next_tick += 1;
        if let Some(k) = inner.lru.remove(&old) {
            inner.lru.insert(tick, k);
        }
        Some(outputs)
    }

    /// Stores `outputs` under `key`, evicting least recently used entries until it fits.
    pub fn insert(&self, key: CacheKey, outputs: &[Tensor]) -> Inserted {
        let bytes = key.byte_size()
            + outputs.iter().map(|t| (t.data.len() + t.name.len() + t.shape.len() * 8) as u64).sum::<u64>();
        if bytes > self.budget {
            return Inserted::TooLarge;
        }
        // One copy per stored response, on a miss only and outside the lock: a request's
        // outputs are slices of its batch's output buffer, and keeping a slice would keep the
        // whole batch's outputs alive, outside the budget. Hits then share this copy.
        let outputs: Vec<Tensor> = outputs
            .iter()
            .map(|t| Tensor {
                name: t.name.clone(),
                datatype: t.datatype,
                shape: t.shape.clone(),
                data: bytes::Bytes::copy_from_slice(&t.data),
            })
            .collect();
        let mut inner = self.lock();
        if inner.entries.contains_key(&key) {
            return Inserted::AlreadyExists;
        }
        while inner.used + bytes > self.budget {
            let Some((_, oldest)) = inner.lru.pop_first() else { break };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.used -= e.bytes;
            }
        }
        let tick = inner.next_tick;
        inner.next_tick += 1;
        let key = Arc::new(key);
        inner.lru.insert(tick, key.clone());
        inner.entries.insert(key, Entry { outputs: outputs.into(), bytes, tick });
        inner.used += bytes;
        Inserted::Stored
    }

    /// Drops every entry of one load of a model (its scheduler is ending: unload or reload).
    pub fn purge(&self, model: &str, generation: u64) {
        let mut inner = self.lock();
        let stale: Vec<Arc<CacheKey>> = inner
            .entries
            .keys()
            .filter(|k| k.generation == generation && &*k.model == model)
            .cloned()
            .collect();
        for key in stale {
            inner.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, shape: &[i64], data: &'static [u8]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: DataType::Uint8,
            shape: shape.to_vec(),
            data: bytes::Bytes::from_static(data),
        }
    }

    fn key(model: &str, generation: u64, inputs: &[Tensor]) -> CacheKey {
        CacheKey::new(model.into(), 1, generation, inputs, &[])
    }

    #[test]
    fn key_is_model_version_generation_and_inputs_in_any_order() {
        let a = tensor("a", &[2], b"xy");
        let b = tensor("b", &[1], b"z");
        let k = key("m", 7, &[a.clone(), b.clone()]);
        assert_eq!(k, key("m", 7, &[b.clone(), a.clone()]), "inputs are sorted by name, as Triton does");
        assert_ne!(k, key("n", 7, &[a.clone(), b.clone()]), "model");
        assert_ne!(k, key("m", 8, &[a.clone(), b.clone()]), "load generation");
        assert_ne!(k, CacheKey::new("m".into(), 2, 7, &[a.clone(), b.clone()], &[]), "version");
        assert_ne!(k, key("m", 7, &[tensor("a", &[2], b"xx"), b.clone()]), "bytes");
        assert_ne!(k, key("m", 7, &[tensor("a", &[1, 2], b"xy"), b.clone()]), "shape");
        assert_ne!(k, key("m", 7, &[tensor("c", &[2], b"xy"), b.clone()]), "name");
        let mut int8 = a.clone();
        int8.datatype = DataType::Int8;
        assert_ne!(k, key("m", 7, &[int8, b.clone()]), "datatype");
        assert_ne!(k, CacheKey::new("m".into(), 1, 7, &[a, b], &["y".into()]), "outputs asked for");
    }

    #[test]
    fn hit_returns_the_stored_outputs_sharing_their_bytes() {
        let cache = ResponseCache::new(1 << 20);
        let k = key("m", 1, &[tensor("a", &[1], b"q")]);
        assert!(cache.lookup(&k).is_none());
        let out = vec![tensor("y", &[3], b"abc")];
        assert_eq!(cache.insert(k.clone(), &out), Inserted::Stored);
        assert_eq!(cache.insert(k.clone(), &out), Inserted::AlreadyExists);
        let hit = cache.lookup(&k).expect("hit");
        assert_eq!(hit, out);
        let again = cache.lookup(&k).expect("hit");
        assert_eq!(hit[0].data.as_ptr(), again[0].data.as_ptr(), "hits share the stored bytes");
    }

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let out = vec![tensor("y", &[], &[0; 100])];
        let k1 = key("m", 1, &[tensor("a", &[], b"1")]);
        let per_entry = {
            let probe = ResponseCache::new(u64::MAX);
            probe.insert(k1.clone(), &out);
            probe.used()
        };
        let cache = ResponseCache::new(per_entry * 2);
        let k2 = key("m", 1, &[tensor("a", &[], b"2")]);
        let k3 = key("m", 1, &[tensor("a", &[], b"3")]);
        cache.insert(k1.clone(), &out);
        cache.insert(k2.clone(), &out);
        assert!(cache.lookup(&k1).is_some(), "k1 is now the most recently used");
        cache.insert(k3.clone(), &out);
        assert!(cache.lookup(&k2).is_none(), "k2 was the least recently used");
        assert!(cache.lookup(&k1).is_some() && cache.lookup(&k3).is_some());
        assert_eq!(cache.used(), per_entry * 2);
        assert!(cache.used() <= cache.budget());
    }

    #[test]
    fn an_entry_larger_than_the_cache_is_not_stored_and_evicts_nothing() {
        let cache = ResponseCache::new(200);
        let small = key("m", 1, &[tensor("a", &[], b"1")]);
        assert_eq!(cache.insert(small.clone(), &[tensor("y", &[], &[0; 10])]), Inserted::Stored);
        let big = key("m", 1, &[tensor("a", &[], b"2")]);
        assert_eq!(cache.insert(big.clone(), &[tensor("y", &[], &[0; 300])]), Inserted::TooLarge);
        assert!(cache.lookup(&big).is_none());
        assert!(cache.lookup(&small).is_some());
        let none = ResponseCache::new(0);
        assert_eq!(none.insert(small, &[]), Inserted::TooLarge);
    }

    #[test]
    fn purge_drops_one_load_of_one_model() {
        let cache = ResponseCache::new(1 << 20);
        let input = [tensor("a", &[], b"1")];
        let (old, new, other) = (key("m", 1, &input), key("m", 2, &input), key("n", 1, &input));
        for k in [&old, &new, &other] {
            cache.insert(k.clone(), &[tensor("y", &[], b"v")]);
        }
        let before = cache.used();
        cache.purge("m", 1);
        assert!(cache.lookup(&old).is_none());
        assert!(cache.lookup(&new).is_some() && cache.lookup(&other).is_some());
        assert_eq!(cache.len(), 2);
        assert!(cache.used() < before);
    }
}
