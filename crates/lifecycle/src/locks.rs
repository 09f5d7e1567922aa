//! Per-model async locks, by name, that exist only while someone holds or waits for them: the
//! names come from clients (a load or unload of any well-formed name), so a map that kept every
//! name ever seen would grow without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

type Lock = Arc<tokio::sync::Mutex<()>>;

/// Serializes loads and unloads of one model; different models do not wait for each other.
#[derive(Default)]
pub struct ModelLocks {
    map: Mutex<HashMap<String, Lock>>,
}

/// Held while one model's load or unload runs; dropping it releases the lock and forgets the
/// name when nobody else holds or waits for it.
pub struct ModelLockGuard<'a> {
    locks: &'a ModelLocks,
    name: String,
    lock: Lock,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl ModelLocks {
    /// Waits for `name`'s lock.
    pub async fn lock(&self, name: &str) -> ModelLockGuard<'_> {
        let lock = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            // Names whose only reference is the map's (left by a caller cancelled while it
            // waited) go here; the common case is handled when a guard drops.
            map.retain(|_, l| Arc::strong_count(l) > 1);
            map.entry(name.to_owned()).or_default().clone()
        };
        // The guard exists before the wait, so a caller cancelled while waiting cleans up too.
        let mut guard = ModelLockGuard { locks: self, name: name.to_owned(), lock: lock.clone(), held: None };
        guard.held = Some(lock.lock_owned().await);
        guard
    }

    /// Names with a lock now (held or waited for).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for ModelLockGuard<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut map = self.locks.map.lock().unwrap_or_else(PoisonError::into_inner);
        // Clones are made only under the map's mutex: two references (the map's and ours)
        // mean nobody else holds or waits for this name.
        if map.get(&self.name).is_some_and(|l| Arc::ptr_eq(l, &self.lock) && Arc::strong_count(l) == 2) {
            map.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn names_are_forgotten_when_no_one_uses_them() {
        let locks = Arc::new(ModelLocks::default());
        for i in 0..1000 {
            let _guard = locks.lock(&format!("unknown_{i}")).await;
            assert_eq!(locks.len(), 1);
        }
        assert_eq!(locks.len(), 0, "no lock kept for names no one uses");

        // Held by one, waited for by another: kept until both are done.
        let first = locks.lock("m").await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _second = locks.lock("m").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the second caller waits for the first");
        drop(first);
        waiter.await.expect("join");
        assert_eq!(locks.len(), 0);

        // A caller cancelled while it waits leaves nothing behind either.
        let held = locks.lock("n").await;
        let cancelled = tokio::time::timeout(Duration::from_millis(20), locks.lock("n")).await;
        assert!(cancelled.is_err());
        drop(held);
        assert_eq!(locks.len(), 0);
    }
}
