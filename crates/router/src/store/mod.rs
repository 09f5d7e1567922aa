//! Cluster state shared by routers: what operators asked for (desired state per model) and which
//! nodes are members.
//!
//! Two stores implement [`ClusterStore`]:
//! - [`MemoryStore`] (the default, and `tern serve`'s): the state lives in this router only, as
//!   before there was a store; nothing is watched, so placement behaves exactly as it did.
//! - [`EtcdStore`] (`--cluster-store etcd://host:2379[,host2:2379]`): the state lives in etcd
//!   under `--cluster-store-prefix`; every router watches it and keeps its own copy, so
//!   requests are routed from memory and never wait on etcd. Writes (an operator's load or
//!   unload) go to etcd first and fail with UNAVAILABLE naming etcd when it cannot be reached.
//!
//! Keys (under the prefix): `desired/<model>` holds an [`Intent`] (JSON);
//! `nodes/<address>/<router>` a [`NodeRecord`] (JSON) under a lease that router keeps alive
//! while it receives the node's heartbeats, so a node that dies leaves every router's view when
//! the lease expires (and a node registered with several routers stays while any hears it);
//! `wanted/<model>` a [`Wanted`] placement a follower asked of the leader; `loading/<node>/<model>`
//! a load in progress (under the loading router's lease), so no router starts a second one;
//! `leader` the placement leader's name.

mod etcd;
mod leader;
mod memory;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::nodes::{Cluster, Source};
use crate::placement::Placement;
pub use etcd::{EtcdOptions, EtcdStore, EtcdTls};
pub use memory::MemoryStore;

/// What an operator asked for a model (RepositoryModelLoad / RepositoryModelUnload through a
/// router).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// Loaded by an operator: kept placed whether used or not, never evicted.
    Pinned,
    /// Unloaded by an operator: not loaded lazily again until an operator loads it.
    Unloaded,
}

/// The desired state of one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub desired: Desired,
    /// Replicas asked for when it was pinned (0 for an unload). Every router's placement keeps
    /// this count, whatever its own `--replicas` says.
    #[serde(default)]
    pub replicas: usize,
    /// The configuration override the operator loaded it with (RepositoryModelLoad's `config`
    /// parameter, JSON), which chooses its versions (`version_policy`): every replica placed
    /// later, by whichever router leads, is loaded with it, so all serve the same versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// The router that wrote it, for operators reading etcd.
    #[serde(default)]
    pub router: String,
}

/// A node's membership record, written by the router that receives its heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    /// The node's gRPC address (host:port), the key routers know it by.
    pub address: String,
    /// Models the node reports (any state).
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub memory_budget_bytes: u64,
    #[serde(default)]
    pub memory_used_bytes: u64,
    /// The router keeping its lease alive.
    #[serde(default)]
    pub router: String,
}

/// A lazy load a router asked the placement leader for (`wanted/<model>`): the asking router
/// waits for the model to be READY in its view; the leader deletes the key once placed, or
/// writes the error when it could not place it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wanted {
    /// The router that asked.
    pub router: String,
    /// The leader's answer when placing failed: gRPC code and message.
    #[serde(default)]
    pub error: Option<(i32, String)>,
    /// Names this request, so the asking router knows the answer is to it.
    #[serde(default)]
    pub id: String,
    /// An operator's load (RepositoryModelLoad) rather than a lazy one: the leader places the
    /// model's intent (replicas, config) and answers `done`.
    #[serde(default)]
    pub operator: bool,
    /// The leader's answer when an operator's load succeeded.
    #[serde(default)]
    pub done: bool,
}

impl Wanted {
    /// A new request from `router`.
    pub fn ask(router: &str, operator: bool) -> Wanted {
        Wanted {
            router: router.to_string(),
            error: None,
            id: format!("{:016x}", fastrand::u64(..)),
            operator,
            done: false,
        }
    }

    /// True once the leader answered (an error, or an operator's load done).
    pub fn answered(&self) -> bool {
        self.error.is_some() || self.done
    }
}

/// A load in progress (`loading/<node>/<model>`): which router started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadingRecord {
    pub router: String,
}

/// Loads in progress cluster-wide: `(model, node address)`.
pub type LoadingSet = Arc<std::collections::BTreeSet<(String, String)>>;

/// Placements asked of the leader, by model.
pub type WantedMap = Arc<BTreeMap<String, Wanted>>;

/// A store refused or could not take a write. Shown to operators as UNAVAILABLE.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

pub type Intents = Arc<BTreeMap<String, Intent>>;
/// Node records by `<address>/<router>`.
pub type NodeRecords = Arc<BTreeMap<String, NodeRecord>>;

/// Shared cluster state. Writes are async (etcd round trips); reads are the watched copies
/// ([`ClusterStore::watch_intents`], [`ClusterStore::watch_nodes`]), never on the request path.
pub trait ClusterStore: Send + Sync + 'static {
    /// "memory" or "etcd at <endpoints>", for logs and errors.
    fn describe(&self) -> String;

    /// Records `intent` for `model` (replacing any); returns once the store has it.
    fn set_intent<'a>(&'a self, model: &'a str, intent: Intent) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Forgets the intent for `model` (nothing to keep, e.g. a name no node knows).
    fn clear_intent<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The intents other routers may change, kept current by a watch; `None` when this router
    /// alone holds them (the memory store: placement's own sets are the state).
    fn watch_intents(&self) -> Option<watch::Receiver<Intents>>;

    /// A registered node was heard from (registration or heartbeat): publish or keep alive its
    /// record. Never blocks; the store works in the background.
    fn node_alive(&self, record: NodeRecord);

    /// A registered node left this router (forgotten, or removed): drop its record now.
    fn node_gone(&self, address: &str);

    /// Node records published by every router, kept current by a watch; `None` for the
    /// memory store (membership is this router's own).
    fn watch_nodes(&self) -> Option<watch::Receiver<NodeRecords>>;

    /// How long a node record outlives the node's last heartbeat.
    fn node_ttl(&self) -> Duration;

    /// True when this router makes placement decisions (always, for the memory store; with
    /// etcd, while it holds the leader key).
    fn is_leader(&self) -> bool;

    /// Asks the leader to place `model` (a follower's lazy load), or records the leader's
    /// answer (`wanted.error`).
    fn want_placed<'a>(&'a self, model: &'a str, wanted: Wanted) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The leader placed `model`: the request is done.
    fn placed<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Placements asked of the leader; `None` for the memory store.
    fn watch_wanted(&self) -> Option<watch::Receiver<WantedMap>>;

    /// This router started loading `model` on `node`: publish it so no router starts a second
    /// load. Never blocks; the writes keep their order.
    fn load_started(&self, _model: &str, _node: &str) {}

    /// The load of `model` on `node` ended (either way).
    fn load_ended(&self, _model: &str, _node: &str) {}

    /// Loads in progress by every router; `None` for the memory store (this router's own
    /// marks are the state).
    fn watch_loading(&self) -> Option<watch::Receiver<LoadingSet>> {
        None
    }
}

/// The router's cluster-store flags.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Where the cluster's shared state lives: `memory` (this router alone, the default) or
    /// `etcd://host:2379[,host2:2379...]` (shared by every router that names the same etcd and
    /// prefix; operators' loads and unloads and node registrations survive restarts).
    #[arg(long, default_value = "memory", value_name = "memory|etcd://HOST:PORT[,...]")]
    pub cluster_store: String,

    /// Key prefix of this cluster's state in etcd (clusters sharing an etcd use different ones).
    #[arg(long, default_value = "/tern", value_name = "PREFIX")]
    pub cluster_store_prefix: String,

    /// Seconds a node's record in etcd outlives its last heartbeat (its lease TTL): a node
    /// that dies leaves every router's view this long after it fell silent.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub node_lease_ttl_secs: u64,

    /// etcd user (etcd's authentication); needs --etcd-password-file.
    #[arg(long, value_name = "NAME", requires = "etcd_password_file")]
    pub etcd_username: Option<String>,

    /// File holding the password of --etcd-username (first line).
    #[arg(long, value_name = "PATH", requires = "etcd_username")]
    pub etcd_password_file: Option<std::path::PathBuf>,

    /// PEM CA that signed etcd's server certificate: connect to etcd over TLS (rustls),
    /// verifying it. Without it, etcd is reached in plain text.
    #[arg(long, value_name = "PEM")]
    pub etcd_ca_file: Option<std::path::PathBuf>,

    /// PEM client certificate for etcd's mutual TLS (`--client-cert-auth`); needs
    /// --etcd-key-file and --etcd-ca-file.
    #[arg(long, value_name = "PEM", requires_all = ["etcd_key_file", "etcd_ca_file"])]
    pub etcd_cert_file: Option<std::path::PathBuf>,

    /// PEM private key of --etcd-cert-file.
    #[arg(long, value_name = "PEM", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<std::path::PathBuf>,
}

impl Default for StoreArgs {
    fn default() -> Self {
        StoreArgs {
            cluster_store: "memory".into(),
            cluster_store_prefix: "/tern".into(),
            node_lease_ttl_secs: 10,
            etcd_username: None,
            etcd_password_file: None,
            etcd_ca_file: None,
            etcd_cert_file: None,
            etcd_key_file: None,
        }
    }
}

/// Longest node lease: a dead node must not linger for long.
const MAX_NODE_LEASE_TTL_SECS: u64 = 300;

impl StoreArgs {
    /// Checks the flags without reading files or connecting.
    pub fn validate(&self) -> Result<(), String> {
        let etcd = parse_spec(&self.cluster_store)?.is_some();
        normalise_prefix(&self.cluster_store_prefix)?;
        // etcd's own minimum lease TTL is about 1.5 s (3/2 of its election timeout).
        if !(2..=MAX_NODE_LEASE_TTL_SECS).contains(&self.node_lease_ttl_secs) {
            return Err(format!("--node-lease-ttl-secs must be between 2 and {MAX_NODE_LEASE_TTL_SECS}"));
        }
        let tls =
            self.etcd_ca_file.is_some() || self.etcd_cert_file.is_some() || self.etcd_key_file.is_some();
        if !etcd && (self.etcd_username.is_some() || self.etcd_password_file.is_some() || tls) {
            return Err(
                "--etcd-username, --etcd-password-file and --etcd-*-file need --cluster-store etcd://..."
                    .into(),
            );
        }
        if self.etcd_cert_file.is_some() != self.etcd_key_file.is_some() {
            return Err("--etcd-cert-file and --etcd-key-file go together".into());
        }
        if self.etcd_cert_file.is_some() && self.etcd_ca_file.is_none() {
            return Err("--etcd-cert-file needs --etcd-ca-file (the CA of etcd's server certificate)".into());
        }
        Ok(())
    }

    /// Opens the store the flags name (connects to etcd and reads its state).
    pub async fn open(&self, router_id: &str) -> Result<Arc<dyn ClusterStore>, String> {
        self.validate()?;
        let user = match (&self.etcd_username, &self.etcd_password_file) {
            (Some(user), Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--etcd-password-file {}: {e}", path.display()))?;
                let password = text.lines().next().unwrap_or_default().to_string();
                Some((user.clone(), password))
            }
            _ => None,
        };
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
        };
        let tls = match &self.etcd_ca_file {
            None => None,
            Some(ca) => {
                let identity = match (&self.etcd_cert_file, &self.etcd_key_file) {
                    (Some(cert), Some(key)) => {
                        Some((read("--etcd-cert-file", cert)?, read("--etcd-key-file", key)?))
                    }
                    _ => None,
                };
                Some(EtcdTls { ca_pem: read("--etcd-ca-file", ca)?, identity })
            }
        };
        let options = EtcdOptions {
            prefix: normalise_prefix(&self.cluster_store_prefix)?,
            user,
            tls,
            node_ttl: Duration::from_secs(self.node_lease_ttl_secs),
            router_id: router_id.to_string(),
        };
        open(&self.cluster_store, options).await.map_err(|e| e.to_string())
    }
}

/// Follows a shared store (etcd): its intents become placement's pins and unloads, and its
/// node records this router's members. Returns at once for the memory store.
pub async fn follow(store: Arc<dyn ClusterStore>, placement: Arc<Placement>, cluster: Arc<Cluster>) {
    let (Some(mut intents), Some(mut nodes)) = (store.watch_intents(), store.watch_nodes()) else {
        return;
    };
    placement.apply_intents(&intents.borrow_and_update());
    let ttl = store.node_ttl();
    let mut wanted = store.watch_wanted();
    let mut loading = store.watch_loading();
    let handling: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // `changed()` marks the value seen: remember that it fired.
        let mut intents_changed = false;
        tokio::select! {
            changed = intents.changed() => {
                if changed.is_err() {
                    return;
                }
                intents_changed = true;
            }
            changed = nodes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some(Ok(())) = async { match wanted.as_mut() { Some(w) => Some(w.changed().await), None => None } } => {}
            Some(Ok(())) = async { match loading.as_mut() { Some(l) => Some(l.changed().await), None => None } } => {}
            _ = ticks.tick() => {}
        }
        // Whichever change woke us, the intents are applied first: a follower writes its intent
        // before asking the leader to place it, and the leader must place what it asked for.
        if intents_changed || intents.has_changed().unwrap_or(false) {
            let current = intents.borrow_and_update().clone();
            placement.apply_intents(&current);
        }
        if let Some(loading) = loading.as_mut() {
            let current = loading.borrow_and_update().clone();
            placement.set_loading_elsewhere(current);
        }
        let records = nodes.borrow_and_update().clone();
        sync_members(&cluster, &records, ttl);
        if let Some(wanted) = wanted.as_mut()
            && store.is_leader()
        {
            let asked = wanted.borrow_and_update().clone();
            place_wanted(&placement, &asked, &handling);
        }
    }
}

/// The leader places what followers asked for (each model once at a time): lazy loads, and
/// operators' loads made through another router.
fn place_wanted(
    placement: &Arc<Placement>,
    asked: &BTreeMap<String, Wanted>,
    handling: &Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
) {
    for (model, request) in asked.iter().filter(|(_, w)| !w.answered()) {
        if !handling.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(model.clone()) {
            continue;
        }
        let placement = placement.clone();
        let handling = handling.clone();
        let model = model.clone();
        let request = request.clone();
        tokio::spawn(async move {
            placement.place_for_follower(&model, request).await;
            handling.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&model);
        });
    }
}

/// Adds the nodes other routers recorded, and drops the nodes whose record went: those found
/// through the store, and registered ones silent for longer than the lease (their lease ended,
/// so every router drops them now rather than after the router's own forgetting time).
fn sync_members(cluster: &Cluster, records: &BTreeMap<String, NodeRecord>, ttl: Duration) {
    let now = cluster.now_ms();
    let addresses: std::collections::HashSet<&str> = records.values().map(|r| r.address.as_str()).collect();
    for address in &addresses {
        if cluster.get(address).is_none()
            && let Err(e) = cluster.upsert(address, Source::Store)
        {
            tracing::warn!(node = %address, error = %e, "ignoring a node of the cluster store");
        }
    }
    for node in cluster.nodes() {
        if addresses.contains(node.addr.as_str()) {
            continue;
        }
        let gone = match node.source {
            Source::Store => true,
            Source::Registered => now.saturating_sub(node.last_seen_ms()) > ttl.as_millis() as u64,
            Source::Static | Source::Dns => false,
        };
        if gone {
            tracing::info!(node = %node.addr, "node record gone from the cluster store: node removed");
            cluster.remove(&node.addr);
            cluster.changed.notify_one();
        }
    }
}

/// The store for a `--cluster-store` value: `memory`, or `etcd://host:port[,host:port...]`.
pub async fn open(spec: &str, options: EtcdOptions) -> Result<Arc<dyn ClusterStore>, StoreError> {
    match parse_spec(spec).map_err(StoreError)? {
        None => Ok(Arc::new(MemoryStore::default())),
        Some(endpoints) => {
            // etcd serves TLS on the same client port: the scheme picks it.
            let endpoints = if options.tls.is_some() {
                endpoints.iter().map(|e| e.replacen("http://", "https://", 1)).collect()
            } else {
                endpoints
            };
            Ok(Arc::new(EtcdStore::connect(endpoints, options).await?))
        }
    }
}

/// `None` for `memory`; the etcd endpoints (as `http://host:port`) for `etcd://...`.
pub fn parse_spec(spec: &str) -> Result<Option<Vec<String>>, String> {
    if spec == "memory" {
        return Ok(None);
    }
    let Some(list) = spec.strip_prefix("etcd://") else {
        return Err(format!(
            "--cluster-store {spec}: expected 'memory' or 'etcd://host:port[,host:port...]'"
        ));
    };
    let mut endpoints = Vec::new();
    for endpoint in list.split(',') {
        let endpoint = endpoint.trim().trim_end_matches('/');
        let port_ok = endpoint
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(format!("--cluster-store {spec}: '{endpoint}' is not host:port"));
        }
        endpoints.push(format!("http://{endpoint}"));
    }
    Ok(Some(endpoints))
}

/// The key prefix, normalised to start with `/` and end without one.
pub fn normalise_prefix(prefix: &str) -> Result<String, String> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() || !trimmed.starts_with('/') {
        return Err(format!(
            "--cluster-store-prefix '{prefix}': expected an absolute key prefix such as /tern"
        ));
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_specs_parse() {
        assert_eq!(parse_spec("memory"), Ok(None));
        assert_eq!(
            parse_spec("etcd://127.0.0.1:2379,etcd-1.etcd:2379/"),
            Ok(Some(vec!["http://127.0.0.1:2379".to_string(), "http://etcd-1.etcd:2379".to_string()]))
        );
        for bad in ["redis://x:1", "etcd://", "etcd://host", "etcd://host:0", "etcd://:2379"] {
            assert!(parse_spec(bad).expect_err(bad).contains("--cluster-store"), "{bad}");
        }
        assert_eq!(normalise_prefix("/tern/").as_deref(), Ok("/tern"));
        assert!(normalise_prefix("tern").is_err());
        assert!(normalise_prefix("/").is_err());
    }

    #[tokio::test]
    async fn memory_store_keeps_intents_to_itself() {
        let store = MemoryStore::default();
        assert_eq!(store.describe(), "memory");
        let pin = Intent { desired: Desired::Pinned, replicas: 2, config: None, router: "a".into() };
        store.set_intent("m", pin.clone()).await.expect("memory writes succeed");
        assert_eq!(store.intent("m"), Some(pin));
        store.clear_intent("m").await.expect("clear");
        assert_eq!(store.intent("m"), None);
        // Nothing to watch: placement's own sets are the state, as without a store.
        assert!(store.watch_intents().is_none() && store.watch_nodes().is_none());
        store.node_alive(NodeRecord {
            node_id: "n".into(),
            address: "127.0.0.1:1".into(),
            models: vec![],
            memory_budget_bytes: 0,
            memory_used_bytes: 0,
            router: "a".into(),
        });
        store.node_gone("127.0.0.1:1");
    }

    #[test]
    fn intents_round_trip_as_json() {
        let intent =
            Intent { desired: Desired::Unloaded, replicas: 0, config: Some("{}".into()), router: "r".into() };
        let text = serde_json::to_string(&intent).expect("json");
        assert!(text.contains("\"unloaded\""), "{text}");
        assert_eq!(serde_json::from_str::<Intent>(&text).expect("parse"), intent);
        // Fields added later default, so older records still parse.
        let old: Intent = serde_json::from_str(r#"{"desired":"pinned"}"#).expect("parse");
        assert_eq!(old.desired, Desired::Pinned);
    }
}
