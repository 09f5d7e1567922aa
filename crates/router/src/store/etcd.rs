//! The etcd store: intents and node records under a key prefix, watched by every router.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};

use super::leader::{campaign, write_loading};
use super::{
    ClusterStore, Intent, Intents, LoadingSet, NodeRecord, NodeRecords, StoreError, Wanted, WantedMap,
};

/// One etcd request may take this long before the write is reported as failed.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before the watch is opened again after etcd went away.
pub(super) const REWATCH_AFTER: Duration = Duration::from_millis(500);
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
    /// This router's name, in the leader key.
    pub router_id: String,
    /// TLS to etcd (`--etcd-ca-file`, `--etcd-cert-file`, `--etcd-key-file`).
    pub tls: Option<EtcdTls>,
}

/// TLS to etcd, with rustls (no system OpenSSL): the CA that signed etcd's certificate, and
/// for etcd's `--client-cert-auth` a client certificate and key (PEM).
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("EtcdTls").field("client_certificate", &self.identity.is_some()).finish()
    }
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
    wanted: watch::Receiver<WantedMap>,
    /// True while this router holds the leader key (its lease kept alive).
    leading: Arc<AtomicBool>,
    /// Loads in progress by every router (`loading/<node>/<model>`).
    loading: watch::Receiver<LoadingSet>,
    /// This router's loads in progress, to the writer that publishes them in order.
    loading_writes: mpsc::Sender<(String, String, bool)>,
    /// The watch, the campaign and the loading writer.
    tasks: [tokio::task::JoinHandle<()>; 3],
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
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
        if let Some(tls) = &options.tls {
            let mut config = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(config);
        }
        let client = tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(&endpoints, Some(connect)))
            .await
            .map_err(|_| unavailable(&shown, "connect", "timed out"))?
            .map_err(|e| unavailable(&shown, "connect", e))?;
        let (revision, maps) = load(&client, &options.prefix)
            .await
            .map_err(|e| unavailable(&shown, "reading the cluster state", e))?;
        tracing::info!(
            endpoints = %shown,
            prefix = %options.prefix,
            intents = maps.intents.len(),
            nodes = maps.nodes.len(),
            "cluster store: etcd"
        );
        let (intents_tx, intents_rx) = watch::channel(Arc::new(maps.intents.clone()));
        let (nodes_tx, nodes_rx) = watch::channel(Arc::new(maps.nodes.clone()));
        let (wanted_tx, wanted_rx) = watch::channel(Arc::new(maps.wanted.clone()));
        let (leader_tx, leader_rx) = watch::channel(maps.leader.clone());
        let (loading_tx, loading_rx) = watch::channel(Arc::new(maps.loading.clone()));
        let feeds = Feeds {
            intents: intents_tx,
            nodes: nodes_tx,
            wanted: wanted_tx,
            leader: leader_tx,
            loading: loading_tx,
        };
        let watcher = tokio::spawn(watch_loop(
            client.clone(),
            options.prefix.clone(),
            shown.clone(),
            revision,
            maps,
            feeds,
        ));
        // This process's candidacy: its router id and a nonce, so a restarted router does not
        // take its predecessor's unexpired key for its own.
        let candidate = format!("{} {:016x}", options.router_id, fastrand::u64(..));
        let leading = Arc::new(AtomicBool::new(false));
        let session = Arc::new(AtomicI64::new(0));
        let campaign = tokio::spawn(campaign(
            client.clone(),
            format!("{}/leader", options.prefix),
            candidate,
            options.node_ttl,
            leader_rx,
            leading.clone(),
            session.clone(),
        ));
        let (loading_writes, received) = mpsc::channel(4096);
        let writer = tokio::spawn(write_loading(
            client.clone(),
            options.prefix.clone(),
            options.router_id.clone(),
            session,
            received,
        ));
        Ok(EtcdStore {
            client,
            endpoints: shown,
            prefix: options.prefix,
            node_ttl: options.node_ttl,
            intents: intents_rx,
            nodes: nodes_rx,
            keepers: Mutex::default(),
            wanted: wanted_rx,
            leading,
            loading: loading_rx,
            loading_writes,
            tasks: [watcher, campaign, writer],
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

    fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    fn want_placed<'a>(&'a self, model: &'a str, wanted: Wanted) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let value = serde_json::to_vec(&wanted).map_err(|e| StoreError(e.to_string()))?;
            let mut client = self.client.clone();
            let key = format!("{}/wanted/{model}", self.prefix);
            // An answer (an error, or an operator's load done) lives one lease TTL: long
            // enough for the asking router to read it, and it cleans itself up.
            let options = if wanted.answered() {
                let mut lease_client = self.client.clone();
                let ttl = self.node_ttl.as_secs().max(2) as i64;
                let grant = tokio::time::timeout(REQUEST_TIMEOUT, lease_client.lease_grant(ttl, None)).await;
                match grant {
                    Ok(Ok(lease)) => Some(PutOptions::new().with_lease(lease.id())),
                    Ok(Err(e)) => return Err(unavailable(&self.endpoints, "answering a placement", e)),
                    Err(_) => return Err(unavailable(&self.endpoints, "answering a placement", "timed out")),
                }
            } else {
                None
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, client.put(key, value, options)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(unavailable(&self.endpoints, "asking the leader to place a model", e)),
                Err(_) => {
                    Err(unavailable(&self.endpoints, "asking the leader to place a model", "timed out"))
                }
            }
        })
    }

    fn placed<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let delete = client.delete(format!("{}/wanted/{model}", self.prefix), None);
            match tokio::time::timeout(REQUEST_TIMEOUT, delete).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(unavailable(&self.endpoints, "clearing a placement", e)),
                Err(_) => Err(unavailable(&self.endpoints, "clearing a placement", "timed out")),
            }
        })
    }

    fn watch_wanted(&self) -> Option<watch::Receiver<WantedMap>> {
        Some(self.wanted.clone())
    }

    fn load_started(&self, model: &str, node: &str) {
        if self.loading_writes.try_send((model.to_string(), node.to_string(), true)).is_err() {
            tracing::debug!(model, node, "cluster store: too many loads to publish; this one is not");
        }
    }

    fn load_ended(&self, model: &str, node: &str) {
        // Must not be lost (a mark would stay until this router's lease ends): wait for room.
        let writes = self.loading_writes.clone();
        let item = (model.to_string(), node.to_string(), false);
        tokio::spawn(async move {
            let _ = writes.send(item).await;
        });
    }

    fn watch_loading(&self) -> Option<watch::Receiver<LoadingSet>> {
        Some(self.loading.clone())
    }
}

/// Everything the watch keeps: intents, node records, placements asked of the leader, and
/// the leader's key.
#[derive(Clone, Default)]
struct Maps {
    intents: BTreeMap<String, Intent>,
    nodes: BTreeMap<String, NodeRecord>,
    wanted: BTreeMap<String, Wanted>,
    leader: Option<String>,
    loading: std::collections::BTreeSet<(String, String)>,
}

/// Everything under `prefix`: the revision read at, and the maps.
async fn load(client: &Client, prefix: &str) -> Result<(i64, Maps), etcd_client::Error> {
    let mut client = client.clone();
    let reply = client.get(format!("{prefix}/"), Some(GetOptions::new().with_prefix())).await?;
    let revision = reply.header().map_or(0, |h| h.revision());
    let mut maps = Maps::default();
    for kv in reply.kvs() {
        apply(prefix, &mut maps, kv.key(), Some(kv.value()));
    }
    Ok((revision, maps))
}

fn parse_into<T: serde::de::DeserializeOwned>(
    map: &mut BTreeMap<String, T>,
    key: &str,
    name: &str,
    value: Option<&[u8]>,
) {
    match value.map(serde_json::from_slice::<T>) {
        None => {
            map.remove(name);
        }
        Some(Ok(parsed)) => {
            map.insert(name.to_string(), parsed);
        }
        Some(Err(e)) => tracing::warn!(key, error = %e, "cluster store: ignoring an unreadable value"),
    }
}

/// Applies one key's new value (`None`: deleted) to the maps; keys and values that do not
/// parse are skipped with a warning (another version's record, a hand-written key).
fn apply(prefix: &str, maps: &mut Maps, key: &[u8], value: Option<&[u8]>) {
    let Ok(key) = std::str::from_utf8(key) else { return };
    let Some(rest) = key.strip_prefix(prefix).and_then(|k| k.strip_prefix('/')) else { return };
    let value = value.filter(|v| v.len() <= MAX_VALUE_BYTES);
    if let Some(model) = rest.strip_prefix("desired/") {
        parse_into(&mut maps.intents, key, model, value);
    } else if let Some(node_and_router) = rest.strip_prefix("nodes/") {
        parse_into(&mut maps.nodes, key, node_and_router, value);
    } else if let Some(model) = rest.strip_prefix("wanted/") {
        parse_into(&mut maps.wanted, key, model, value);
    } else if let Some((node, model)) = rest.strip_prefix("loading/").and_then(|r| r.split_once('/')) {
        let entry = (model.to_string(), node.to_string());
        if value.is_some() {
            maps.loading.insert(entry);
        } else {
            maps.loading.remove(&entry);
        }
    } else if rest == "leader" {
        maps.leader = value.map(|v| String::from_utf8_lossy(v).into_owned());
    }
}

/// The channels the watch feeds.
struct Feeds {
    intents: watch::Sender<Intents>,
    nodes: watch::Sender<NodeRecords>,
    wanted: watch::Sender<WantedMap>,
    leader: watch::Sender<Option<String>>,
    loading: watch::Sender<LoadingSet>,
}

impl Feeds {
    fn publish(&self, maps: &Maps) {
        publish(&self.intents, &maps.intents);
        publish(&self.nodes, &maps.nodes);
        publish(&self.wanted, &maps.wanted);
        publish(&self.loading, &maps.loading);
        self.leader.send_if_modified(|current| {
            let changed = *current != maps.leader;
            if changed {
                current.clone_from(&maps.leader);
            }
            changed
        });
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
    mut maps: Maps,
    feeds: Feeds,
) {
    let mut healthy = true;
    loop {
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
                    apply(&prefix, &mut maps, kv.key(), value);
                    revision = revision.max(kv.mod_revision());
                }
                if !reply.events().is_empty() {
                    feeds.publish(&maps);
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
        if let Ok((read_at, fresh)) = load(&client, &prefix).await {
            revision = read_at;
            maps = fresh;
            feeds.publish(&maps);
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
