//! The in-memory store: state held by this router alone (the default).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

use super::{ClusterStore, Intent, Intents, NodeRecord, NodeRecords, StoreError, Wanted, WantedMap};

/// Keeps intents in a map that nothing else reads: placement's own sets already hold them, so
/// a router with this store behaves as one without a store. Membership is the router's own.
#[derive(Default)]
pub struct MemoryStore {
    intents: Mutex<HashMap<String, Intent>>,
}

impl MemoryStore {
    /// The intent recorded for `model` (tests).
    pub fn intent(&self, model: &str) -> Option<Intent> {
        self.intents.lock().unwrap_or_else(PoisonError::into_inner).get(model).cloned()
    }
}

impl ClusterStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".to_string()
    }

    fn set_intent<'a>(&'a self, model: &'a str, intent: Intent) -> BoxFuture<'a, Result<(), StoreError>> {
        self.intents.lock().unwrap_or_else(PoisonError::into_inner).insert(model.to_string(), intent);
        Box::pin(async { Ok(()) })
    }

    fn clear_intent<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.intents.lock().unwrap_or_else(PoisonError::into_inner).remove(model);
        Box::pin(async { Ok(()) })
    }

    fn watch_intents(&self) -> Option<watch::Receiver<Intents>> {
        None
    }

    fn node_alive(&self, _record: NodeRecord) {}

    fn node_gone(&self, _address: &str) {}

    fn watch_nodes(&self) -> Option<watch::Receiver<NodeRecords>> {
        None
    }

    fn node_ttl(&self) -> Duration {
        Duration::ZERO
    }

    fn is_leader(&self) -> bool {
        true
    }

    fn want_placed<'a>(&'a self, model: &'a str, _wanted: Wanted) -> BoxFuture<'a, Result<(), StoreError>> {
        // Never asked: this router is the only one, so always the leader.
        Box::pin(async move {
            Err(StoreError(format!("model '{model}': the memory store has no other router to ask")))
        })
    }

    fn placed<'a>(&'a self, _model: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn watch_wanted(&self) -> Option<watch::Receiver<WantedMap>> {
        None
    }
}
