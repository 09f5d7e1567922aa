//! Triton's response cache (`--cache-config local,size=N`, per model `response_cache { enable:
//! true }`): one node-wide store of successful responses, bounded by bytes, least recently used
//! entries evicted first, as Triton's `local` cache (triton-inference-server/local_cache,
//! src/local_cache.cc: `Allocate` evicts LRU entries until the new one fits, and an entry larger
//! than the whole cache is refused).
//!
//! The key follows Triton's hash (core src/cache_manager.cc, `TritonCache::Hash`): model name,
//! model version, and every input sorted by name with its bytes; request parameters are not
//! part of it. Tern adds three things so that a hit is never a wrong answer:
//! - each input's datatype and shape (Triton hashes names and bytes only, so two reshapes of the
//!   same bytes would share an entry) and the outputs the request asked for;
//! - the load's generation, so a reload or a new load of the same version never sees the
//!   previous load's answers (they are also dropped when the load's scheduler ends);
//! - a 128-bit digest (two SipHash passes under keys drawn at random when the cache is made,
//!   so a client can neither predict nor aim for a collision) instead of Triton's 64-bit hash,
//!   whose collisions its docs list as a known limitation. The key keeps no request bytes: an
//!   entry holds only its response, and a lookup compares a few words under the lock.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};

use tern_core::Tensor;

/// A response-cache key, made by [`ResponseCache::key`] outside the cache's lock (the digest
/// reads every input byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    digest: [u64; 2],
    model: Arc<str>,
    version: u64,
    generation: u64,
}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest[0]);
    }
}

impl CacheKey {
    /// The load generation the key was made for.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes an entry's key takes.
    fn byte_size(&self) -> u64 {
        (std::mem::size_of::<CacheKey>() + self.model.len()) as u64
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
    /// The digest's two keyed hashers.
    keys: [RandomState; 2],
}

impl ResponseCache {
    /// An empty cache holding at most `budget` bytes of responses and keys.
    pub fn new(budget: u64) -> ResponseCache {
        ResponseCache {
            budget,
            inner: Mutex::new(Inner::default()),
            keys: [RandomState::new(), RandomState::new()],
        }
    }

    /// The key of a request for `model` version `version`, load `generation`, with `inputs`
    /// (in any order: sorted by name here, as Triton sorts them) asking for `outputs`.
    pub fn key(
        &self,
        model: Arc<str>,
        version: u64,
        generation: u64,
        inputs: &[Tensor],
        outputs: &[String],
    ) -> CacheKey {
        let mut sorted: Vec<&Tensor> = inputs.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let digest = self.keys.each_ref().map(|keys| {
            let mut h = keys.build_hasher();
            (&*model, version, generation, sorted.len()).hash(&mut h);
            for t in &sorted {
                (&t.name, t.datatype, &t.shape, t.data.len()).hash(&mut h);
                h.write(&t.data);
            }
            outputs.hash(&mut h);
            h.finish()
        });
        CacheKey { digest, model, version, generation }
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
    use tern_core::DataType;

    fn tensor(name: &str, shape: &[i64], data: &'static [u8]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: DataType::Uint8,
            shape: shape.to_vec(),
            data: bytes::Bytes::from_static(data),
        }
    }

    fn key(cache: &ResponseCache, model: &str, generation: u64, inputs: &[Tensor]) -> CacheKey {
        cache.key(model.into(), 1, generation, inputs, &[])
    }

    #[test]
    fn key_is_model_version_generation_and_inputs_in_any_order() {
        let c = ResponseCache::new(1 << 20);
        let a = tensor("a", &[2], b"xy");
        let b = tensor("b", &[1], b"z");
        let k = key(&c, "m", 7, &[a.clone(), b.clone()]);
        assert_eq!(k, key(&c, "m", 7, &[b.clone(), a.clone()]), "inputs are sorted by name, as Triton does");
        assert_ne!(k, key(&c, "n", 7, &[a.clone(), b.clone()]), "model");
        assert_ne!(k, key(&c, "m", 8, &[a.clone(), b.clone()]), "load generation");
        assert_ne!(k, c.key("m".into(), 2, 7, &[a.clone(), b.clone()], &[]), "version");
        assert_ne!(k, key(&c, "m", 7, &[tensor("a", &[2], b"xx"), b.clone()]), "bytes");
        assert_ne!(k, key(&c, "m", 7, &[tensor("a", &[1, 2], b"xy"), b.clone()]), "shape");
        assert_ne!(k, key(&c, "m", 7, &[tensor("c", &[2], b"xy"), b.clone()]), "name");
        // The same bytes split differently between two inputs.
        let (a2, b2) = (tensor("a", &[2], b"x"), tensor("b", &[1], b"yz"));
        assert_ne!(k, key(&c, "m", 7, &[a2, b2]), "input boundaries");
        let mut int8 = a.clone();
        int8.datatype = DataType::Int8;
        assert_ne!(k, key(&c, "m", 7, &[int8, b.clone()]), "datatype");
        assert_ne!(k, c.key("m".into(), 1, 7, &[a, b], &["y".into()]), "outputs asked for");
    }

    #[test]
    fn hit_returns_the_stored_outputs_sharing_their_bytes() {
        let cache = ResponseCache::new(1 << 20);
        let k = key(&cache, "m", 1, &[tensor("a", &[1], b"q")]);
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
        let per_entry = {
            let probe = ResponseCache::new(u64::MAX);
            probe.insert(key(&probe, "m", 1, &[tensor("a", &[], b"1")]), &out);
            probe.used()
        };
        let cache = ResponseCache::new(per_entry * 2);
        let [k1, k2, k3] =
            [b"1", b"2", b"3"].map(|v: &'static [u8; 1]| key(&cache, "m", 1, &[tensor("a", &[], v)]));
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
        let cache = ResponseCache::new(300);
        let small = key(&cache, "m", 1, &[tensor("a", &[], b"1")]);
        assert_eq!(cache.insert(small.clone(), &[tensor("y", &[], &[0; 10])]), Inserted::Stored);
        let big = key(&cache, "m", 1, &[tensor("a", &[], b"2")]);
        assert_eq!(cache.insert(big.clone(), &[tensor("y", &[], &[0; 300])]), Inserted::TooLarge);
        assert!(cache.lookup(&big).is_none());
        assert!(cache.lookup(&small).is_some());
        let none = ResponseCache::new(0);
        assert_eq!(none.insert(key(&none, "m", 1, &[]), &[]), Inserted::TooLarge);
    }

    #[test]
    fn purge_drops_one_load_of_one_model() {
        let cache = ResponseCache::new(1 << 20);
        let input = [tensor("a", &[], b"1")];
        let (old, new, other) =
            (key(&cache, "m", 1, &input), key(&cache, "m", 2, &input), key(&cache, "n", 1, &input));
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
