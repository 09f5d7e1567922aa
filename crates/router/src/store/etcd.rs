//! The etcd store: intents and node records under a key prefix, watched by every router.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};

use super::{ClusterStore, Intent, Intents, NodeRecord, NodeRecords, StoreError};

/// One etcd request may take this long before the write is reported as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before the watch is opened again after etcd went away.
const REWATCH_AFTER: Duration = Duration::from_millis(500);
/// Bound of one intent or node record (a node reporting thousands of models fits).
const MAX_VALUE_BYTES: usize = 1 << 20;

/// How the router reaches etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Key prefix, normalised (`/tern`).
    pub prefix: String,
    /// etcd user and password (`--etcd-username`, `--etcd-password-file`).
    pub user: Option<(String, String)>,
    /// Lease of a node record: how long it outlives the node's last heartbeat.
    pub node_ttl: Duration,
}

/// Cluster state in etcd. See the module docs of [`super`] for the keys.
pub struct EtcdStore {
    client: Client,
    endpoints: String,
    prefix: String,
    node_ttl: Duration,
    intents: watch::Receiver<Intents>,
    nodes: watch::Receiver<NodeRecords>,
    /// Registered nodes whose lease this router keeps: address -> the beats of its keeper task.
    keepers: Mutex<HashMap<String, mpsc::Sender<NodeRecord>>>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

fn unavailable(endpoints: &str, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("cluster store etcd at {endpoints} is unavailable ({what}): {e}"))
}

impl EtcdStore {
    /// Connects, reads the current state, and starts watching it. Fails when etcd cannot be
    /// reached now: a router must not start from an empty view of a cluster that has state.
    pub async fn connect(endpoints: Vec<String>, options: EtcdOptions) -> Result<EtcdStore, StoreError> {
        let shown = endpoints.join(",");
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), REQUEST_TIMEOUT);
        if let Some((user, password)) = &options.user {
            connect = connect.with_user(user.clone(), password.clone());
        }
        let client = tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(&endpoints, Some(connect)))
            .await
            .map_err(|_| unavailable(&shown, "connect", "timed out"))?
            .map_err(|e| unavailable(&shown, "connect", e))?;
        let (revision, intents, nodes) = load(&client, &options.prefix)
            .await
            .map_err(|e| unavailable(&shown, "reading the cluster state", e))?;
        tracing::info!(
            endpoints = %shown,
            prefix = %options.prefix,
            intents = intents.len(),
            nodes = nodes.len(),
            "cluster store: etcd"
        );
        let (intents_tx, intents_rx) = watch::channel(Arc::new(intents));
        let (nodes_tx, nodes_rx) = watch::channel(Arc::new(nodes));
        let watcher = tokio::spawn(watch_loop(
            client.clone(),
            options.prefix.clone(),
            shown.clone(),
            revision,
            intents_tx,
            nodes_tx,
        ));
        Ok(EtcdStore {
            client,
            endpoints: shown,
            prefix: options.prefix,
            node_ttl: options.node_ttl,
            intents: intents_rx,
            nodes: nodes_rx,
            keepers: Mutex::default(),
            watcher,
        })
    }

    fn intent_key(&self, model: &str) -> String {
        format!("{}/desired/{model}", self.prefix)
    }

    /// One record per (node, router): a node that registers with several routers stays while
    /// any of them hears it, whichever router dies.
    fn node_key(&self, record: &NodeRecord) -> String {
        format!("{}/nodes/{}/{}", self.prefix, record.address, record.router.replace('/', "_"))
    }
}

impl ClusterStore for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd at {}", self.endpoints)
    }

    fn set_intent<'a>(&'a self, model: &'a str, intent: Intent) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let value = serde_json::to_vec(&intent).map_err(|e| StoreError(e.to_string()))?;
            let mut client = self.client.clone();
            let put = client.put(self.intent_key(model), value, None);
            match tokio::time::timeout(REQUEST_TIMEOUT, put).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(unavailable(&self.endpoints, "writing the desired state", e)),
                Err(_) => Err(unavailable(&self.endpoints, "writing the desired state", "timed out")),
            }
        })
    }

    fn clear_intent<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let delete = client.delete(self.intent_key(model), None);
            match tokio::time::timeout(REQUEST_TIMEOUT, delete).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(unavailable(&self.endpoints, "clearing the desired state", e)),
                Err(_) => Err(unavailable(&self.endpoints, "clearing the desired state", "timed out")),
            }
        })
    }

    fn watch_intents(&self) -> Option<watch::Receiver<Intents>> {
        Some(self.intents.clone())
    }

    fn node_alive(&self, record: NodeRecord) {
        let mut keepers = self.keepers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(beats) = keepers.get(&record.address).filter(|b| !b.is_closed()) {
            // A full channel already holds a beat the keeper has yet to take: this one adds
            // nothing.
            let _ = beats.try_send(record);
            return;
        }
        let (beats, received) = mpsc::channel(1);
        let key = self.node_key(&record);
        keepers.insert(record.address.clone(), beats);
        drop(keepers);
        tokio::spawn(keep_node(
            self.client.clone(),
            self.endpoints.clone(),
            key,
            self.node_ttl,
            record,
            received,
        ));
    }

    fn node_gone(&self, address: &str) {
        // Dropping the sender ends the keeper, which revokes the lease.
        self.keepers.lock().unwrap_or_else(PoisonError::into_inner).remove(address);
    }

    fn watch_nodes(&self) -> Option<watch::Receiver<NodeRecords>> {
        Some(self.nodes.clone())
    }

    fn node_ttl(&self) -> Duration {
        self.node_ttl
    }
}

/// Everything under `prefix`: the revision read at, the intents and the node records.
async fn load(
    client: &Client,
    prefix: &str,
) -> Result<(i64, BTreeMap<String, Intent>, BTreeMap<String, NodeRecord>), etcd_client::Error> {
    let mut client = client.clone();
    let reply = client.get(format!("{prefix}/"), Some(GetOptions::new().with_prefix())).await?;
    let revision = reply.header().map_or(0, |h| h.revision());
    let mut intents = BTreeMap::new();
    let mut nodes = BTreeMap::new();
    for kv in reply.kvs() {
        apply(prefix, &mut intents, &mut nodes, kv.key(), Some(kv.value()));
    }
    Ok((revision, intents, nodes))
}

/// Applies one key's new value (`None`: deleted) to the maps; keys and values that do not
/// parse are skipped with a warning (another version's record, a hand-written key).
fn apply(
    prefix: &str,
    intents: &mut BTreeMap<String, Intent>,
    nodes: &mut BTreeMap<String, NodeRecord>,
    key: &[u8],
    value: Option<&[u8]>,
) {
    let Ok(key) = std::str::from_utf8(key) else { return };
    let Some(rest) = key.strip_prefix(prefix).and_then(|k| k.strip_prefix('/')) else { return };
    let value = value.filter(|v| v.len() <= MAX_VALUE_BYTES);
    if let Some(model) = rest.strip_prefix("desired/") {
        match value.map(serde_json::from_slice::<Intent>) {
            None => {
                intents.remove(model);
            }
            Some(Ok(intent)) => {
                intents.insert(model.to_string(), intent);
            }
            Some(Err(e)) => tracing::warn!(key, error = %e, "cluster store: ignoring an unreadable intent"),
        }
    } else if let Some(node_and_router) = rest.strip_prefix("nodes/") {
        match value.map(serde_json::from_slice::<NodeRecord>) {
            None => {
                nodes.remove(node_and_router);
            }
            Some(Ok(record)) => {
                nodes.insert(node_and_router.to_string(), record);
            }
            Some(Err(e)) => {
                tracing::warn!(key, error = %e, "cluster store: ignoring an unreadable node record")
            }
        }
    }
}

/// Keeps the watched copies current: a watch from the revision read, and after any failure
/// (etcd gone, history compacted) a full read and a new watch. Until then the copies keep the
/// last state, so routing goes on from it.
async fn watch_loop(
    client: Client,
    prefix: String,
    endpoints: String,
    mut revision: i64,
    intents_tx: watch::Sender<Intents>,
    nodes_tx: watch::Sender<NodeRecords>,
) {
    let mut healthy = true;
    loop {
        let mut intents = (**intents_tx.borrow()).clone();
        let mut nodes = (**nodes_tx.borrow()).clone();
        let result: Result<(), etcd_client::Error> = async {
            let mut watch_client = client.clone();
            let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
            let mut stream = watch_client.watch(format!("{prefix}/"), Some(options)).await?;
            if !healthy {
                tracing::info!(endpoints = %endpoints, "cluster store: etcd is back; watching again");
                healthy = true;
            }
            while let Some(reply) = stream.message().await? {
                if reply.compact_revision() > 0 || reply.canceled() {
                    return Err(etcd_client::Error::WatchError(format!(
                        "watch ended (compacted at revision {})",
                        reply.compact_revision()
                    )));
                }
                for event in reply.events() {
                    let Some(kv) = event.kv() else { continue };
                    let value = (event.event_type() == EventType::Put).then(|| kv.value());
                    apply(&prefix, &mut intents, &mut nodes, kv.key(), value);
                    revision = revision.max(kv.mod_revision());
                }
                if !reply.events().is_empty() {
                    publish(&intents_tx, &intents);
                    publish(&nodes_tx, &nodes);
                }
            }
            Err(etcd_client::Error::WatchError("watch stream closed".into()))
        }
        .await;
        if let Err(e) = result
            && healthy
        {
            tracing::warn!(endpoints = %endpoints, error = %e, "cluster store: lost the etcd watch; routing goes on from the last state");
            healthy = false;
        }
        tokio::time::sleep(REWATCH_AFTER).await;
        // Read everything again: events may have been missed or compacted away.
        if let Ok((read_at, fresh_intents, fresh_nodes)) = load(&client, &prefix).await {
            revision = read_at;
            publish(&intents_tx, &fresh_intents);
            publish(&nodes_tx, &fresh_nodes);
        }
    }
}

fn publish<T: PartialEq + Clone>(tx: &watch::Sender<Arc<T>>, value: &T) {
    tx.send_if_modified(|current| {
        if **current == *value {
            return false;
        }
        *current = Arc::new(value.clone());
        true
    });
}

/// A registered node's record under a lease of its own, kept alive while its heartbeats
/// arrive (`beats`). Silent for the lease's TTL, or dropped by the router: the lease is revoked
/// so every router drops the node now; if this router dies the lease expires by itself.
/// The record is written again only when it changes (the models or memory a node reports), so
/// steady heartbeats cost one lease keep-alive each and no write.
async fn keep_node(
    client: Client,
    endpoints: String,
    key: String,
    ttl: Duration,
    mut current: NodeRecord,
    mut beats: mpsc::Receiver<NodeRecord>,
) {
    let mut client = client;
    let mut lease: Option<(i64, etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> = None;
    let mut written: Option<NodeRecord> = None;
    let ttl_secs = ttl.as_secs().max(1) as i64;
    loop {
        if lease.is_none() {
            written = None;
            let granted = async {
                let id = client.lease_grant(ttl_secs, None).await?.id();
                let (keeper, stream) = client.lease_keep_alive(id).await?;
                Ok::<_, etcd_client::Error>((id, keeper, stream))
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, granted).await {
                Ok(Ok(l)) => lease = Some(l),
                Ok(Err(e)) => {
                    tracing::debug!(key, error = %e, endpoints, "cluster store: no lease for a node record")
                }
                Err(_) => tracing::debug!(key, endpoints, "cluster store: lease grant timed out"),
            }
        }
        if let Some((id, _, _)) = &lease
            && written.as_ref() != Some(&current)
        {
            let value = serde_json::to_vec(&current).unwrap_or_default();
            let put = client.put(key.as_str(), value, Some(PutOptions::new().with_lease(*id)));
            match tokio::time::timeout(REQUEST_TIMEOUT, put).await {
                Ok(Ok(_)) => written = Some(current.clone()),
                _ => lease = None,
            }
        }
        match tokio::time::timeout(ttl, beats.recv()).await {
            Ok(Some(record)) => {
                current = record;
                if let Some((_, keeper, stream)) = &mut lease {
                    let renewed = async {
                        keeper.keep_alive().await?;
                        Ok::<_, etcd_client::Error>(stream.message().await?.is_some_and(|r| r.ttl() > 0))
                    };
                    if !matches!(tokio::time::timeout(REQUEST_TIMEOUT, renewed).await, Ok(Ok(true))) {
                        // Expired (etcd was away longer than the TTL) or unreachable: a new
                        // lease and a new write at the next round.
                        lease = None;
                    }
                }
            }
            // Dropped by the router, or silent for the TTL: the node is gone.
            Ok(None) | Err(_) => {
                if let Some((id, _, _)) = lease {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, client.lease_revoke(id)).await;
                }
                tracing::info!(key, "cluster store: node record dropped");
                return;
            }
        }
    }
}
