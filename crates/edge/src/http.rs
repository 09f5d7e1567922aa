//! The HTTP server of Tern's servers (the metrics port; Triton's REST routes): an axum
//! [`Router`](axum::Router) on a bound listener, plaintext or HTTPS, until shutdown, then a
//! drain of the open connections.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::tls::{TlsListener, rustls};

/// Serves `routes` on `listener` (HTTPS with `tls`) until `shutdown` resolves, then waits for
/// the open connections to finish.
pub async fn serve_http(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    routes: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        Some(tls) => {
            let listener = TlsListener::new(listener, tls)?;
            axum::serve(listener, routes).with_graceful_shutdown(shutdown).await
        }
        None => axum::serve(NoDelay(listener), routes).with_graceful_shutdown(shutdown).await,
    }
}

/// A TCP listener whose connections have Nagle's algorithm off (small responses would
/// otherwise wait ~40 ms for the client's delayed ACK).
struct NoDelay(TcpListener);

impl axum::serve::Listener for NoDelay {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (stream, addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum's own listener does.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// How long [`HttpEndpoint::stop`] waits for open connections before closing them.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// [`serve_http`] on a task of its own, stopped (and drained) by [`HttpEndpoint::stop`].
pub struct HttpEndpoint {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl HttpEndpoint {
    /// Starts serving `routes` on `listener` (HTTPS with `tls`). Call inside a Tokio runtime.
    pub fn start(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        routes: axum::Router,
    ) -> std::io::Result<HttpEndpoint> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve_http(listener, tls, routes, shutdown));
        Ok(HttpEndpoint { addr, stop: Some(stop), task: Some(task) })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits (a few seconds at most) for open connections to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            let Ok(joined) = tokio::time::timeout(STOP_WAIT, task).await else {
                abort.abort();
                tracing::warn!(address = %self.addr, "HTTP connections still open after {STOP_WAIT:?}; closed");
                return;
            };
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(address = %self.addr, error = %e, "HTTP server stopped with an error")
                }
                Err(e) => tracing::warn!(address = %self.addr, error = %e, "HTTP server task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A real listener on loopback: the route answers, and stop() returns once the server has
    /// closed (a new connection is then refused).
    #[tokio::test]
    async fn serves_until_stopped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let routes = axum::Router::new().route("/hello", axum::routing::get(|| async { "hi" }));
        let endpoint = HttpEndpoint::start(listener, None, routes).unwrap_or_else(|e| panic!("{e}"));
        let addr = endpoint.local_addr();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("hi"), "{reply}");
        tokio::time::timeout(std::time::Duration::from_secs(5), endpoint.stop())
            .await
            .unwrap_or_else(|_| panic!("stop did not drain"));
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
