//! Loads in progress, by model name, that a caller asking for the same load joins instead of
//! loading again: two clients (or routers lazy-loading for their clients) that load one model
//! at once get one load, beside the serving version once, and both see its result. Names are
//! forgotten when their load ends, so the map stays as small as the loads running.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use tern_core::RequestError;
use tokio::sync::watch;

type Outcome = Option<Result<(), RequestError>>;

/// The loads running now.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<String, watch::Receiver<Outcome>>>,
    /// Callers waiting now for a load another caller runs.
    joined: AtomicUsize,
}

enum Role {
    Leader(watch::Sender<Outcome>),
    Follower(watch::Receiver<Outcome>),
}

impl Flights {
    /// Runs `load` for `name`, or waits for the one already running and answers its result.
    /// A follower whose leader was cancelled before it finished loads itself.
    pub async fn join<F>(&self, name: &str, load: impl Fn() -> F) -> Result<(), RequestError>
    where
        F: Future<Output = Result<(), RequestError>>,
    {
        loop {
            let role = {
                let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
                match map.get(name) {
                    Some(rx) => Role::Follower(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        map.insert(name.to_owned(), rx);
                        Role::Leader(tx)
                    }
                }
            };
            match role {
                Role::Follower(mut rx) => {
                    self.joined.fetch_add(1, Ordering::Relaxed);
                    let _joined = Joined(&self.joined);
                    let done = rx.wait_for(Option::is_some).await.ok().and_then(|r| r.clone());
                    if let Some(result) = done {
                        return result;
                    }
                }
                Role::Leader(tx) => {
                    // Forgets the name when the load ends, also when the caller is cancelled.
                    let _entry = Entry { flights: self, name, tx: &tx };
                    let result = load().await;
                    tx.send_replace(Some(result.clone()));
                    return result;
                }
            }
        }
    }

    /// Names with a load running now.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Callers waiting now for a load another caller runs.
    pub fn joined(&self) -> usize {
        self.joined.load(Ordering::Relaxed)
    }
}

/// Counts one follower while it waits (also when it is cancelled).
struct Joined<'a>(&'a AtomicUsize);

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Removes the leader's name from the map when dropped.
struct Entry<'a> {
    flights: &'a Flights,
    name: &'a str,
    tx: &'a watch::Sender<Outcome>,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(self.name).is_some_and(|rx| rx.same_channel(&self.tx.subscribe())) {
            map.remove(self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    async fn until(what: &str, done: impl Fn() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            if Instant::now() > deadline {
                return Err(format!("timed out waiting until {what}"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_whose_load_was_cancelled_leaves_the_next_to_load_itself() -> Result<(), String> {
        let flights = Arc::new(Flights::default());
        let leader = tokio::spawn({
            let flights = flights.clone();
            async move { flights.join("m", std::future::pending::<Result<(), RequestError>>).await }
        });
        until("the first load runs", || flights.len() == 1).await?;
        let follower = tokio::spawn({
            let flights = flights.clone();
            async move { flights.join("m", || async { Err(RequestError::Internal("loaded".into())) }).await }
        });
        until("the second caller joins", || flights.joined() == 1).await?;
        leader.abort();
        let answer = tokio::time::timeout(Duration::from_secs(5), follower).await;
        let answer = answer.map_err(|_| "the follower hangs".to_string())?.map_err(|e| e.to_string())?;
        assert_eq!(answer, Err(RequestError::Internal("loaded".into())), "the follower ran its own load");
        assert_eq!((flights.len(), flights.joined()), (0, 0), "nothing is left behind");
        Ok(())
    }
}
