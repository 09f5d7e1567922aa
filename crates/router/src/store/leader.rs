//! The etcd store's background writers: the placement leader's campaign, and this router's
//! loads in progress.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::{mpsc, watch};

use super::LoadingRecord;
use super::etcd::{REQUEST_TIMEOUT, REWATCH_AFTER};

/// Publishes this router's loads in progress (`loading/<node>/<model>`), in the order they
/// start and end, under this router's campaign lease: if the router dies mid-load, its marks
/// go with its lease, and by then the node reports the load itself (LOADING).
pub(super) async fn write_loading(
    client: Client,
    prefix: String,
    router: String,
    session: Arc<AtomicI64>,
    mut writes: mpsc::Receiver<(String, String, bool)>,
) {
    let mut client = client;
    let value = serde_json::to_vec(&LoadingRecord { router }).unwrap_or_default();
    while let Some((model, node, started)) = writes.recv().await {
        let key = format!("{prefix}/loading/{node}/{model}");
        let lease = session.load(Ordering::Relaxed);
        let result = if started {
            if lease == 0 {
                continue;
            }
            let put = client.put(key.as_str(), value.clone(), Some(PutOptions::new().with_lease(lease)));
            tokio::time::timeout(REQUEST_TIMEOUT, put).await.map(|r| r.map(drop))
        } else {
            tokio::time::timeout(REQUEST_TIMEOUT, client.delete(key.as_str(), None))
                .await
                .map(|r| r.map(drop))
        };
        if !matches!(result, Ok(Ok(()))) {
            tracing::debug!(key, "cluster store: cannot publish a load in progress (etcd away)");
        }
    }
}

/// One writer for placement: the router holding `key` (created only if absent, under a lease
/// of `ttl` this task keeps alive) is the leader. The others wait for the key to go (its
/// holder stepped down or died: the lease ends) and try again. A leader that cannot renew its
/// lease (etcd away) steps down at once, so no two routers place at the same time.
pub(super) async fn campaign(
    client: Client,
    key: String,
    candidate: String,
    ttl: Duration,
    mut leader: watch::Receiver<Option<String>>,
    leading: Arc<AtomicBool>,
    // The lease of this term, leader or not: this router's loads in progress live under it.
    session: Arc<AtomicI64>,
) {
    let mut client = client;
    let ttl_secs = ttl.as_secs().max(2) as i64;
    let renew_every = ttl / 3;
    loop {
        let term = async {
            let id = client.lease_grant(ttl_secs, None).await?.id();
            let (keeper, stream) = client.lease_keep_alive(id).await?;
            Ok::<_, etcd_client::Error>((id, keeper, stream))
        };
        let Ok(Ok((id, mut keeper, mut stream))) = tokio::time::timeout(REQUEST_TIMEOUT, term).await else {
            tokio::time::sleep(REWATCH_AFTER).await;
            continue;
        };
        session.store(id, Ordering::Relaxed);
        loop {
            let holder = leader.borrow_and_update().clone();
            if holder.is_none() {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.as_str(),
                        candidate.as_str(),
                        Some(PutOptions::new().with_lease(id)),
                    )]);
                if let Ok(Ok(reply)) = tokio::time::timeout(REQUEST_TIMEOUT, client.txn(txn)).await
                    && reply.succeeded()
                {
                    leading.store(true, Ordering::Relaxed);
                    tracing::info!(router = %candidate, "placement leader: this router");
                }
            } else {
                let mine = holder.as_deref() == Some(candidate.as_str());
                if leading.swap(mine, Ordering::Relaxed) && !mine {
                    tracing::warn!(leader = ?holder, "placement leader: another router now");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(renew_every) => {}
                _ = leader.changed() => continue,
            }
            let renewed = async {
                keeper.keep_alive().await?;
                Ok::<_, etcd_client::Error>(stream.message().await?.is_some_and(|r| r.ttl() > 0))
            };
            if !matches!(tokio::time::timeout(REQUEST_TIMEOUT, renewed).await, Ok(Ok(true))) {
                if leading.swap(false, Ordering::Relaxed) {
                    tracing::warn!("placement leader: cannot renew the lease in etcd; stepping down");
                }
                break;
            }
        }
    }
}
