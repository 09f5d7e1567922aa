//! The metrics port (/metrics, /v2/health/*) behind the same front door as gRPC: the token
//! check of [`AuthLayer`](crate::AuthLayer) (the `metrics` and `health` groups) and, with
//! `--metrics-use-ssl`, HTTPS.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running metrics endpoint (or none, with `--allow-metrics false`).
pub struct MetricsEndpoint {
    /// Where it listens, or `off`.
    pub addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl MetricsEndpoint {
    /// Binds `config`'s address and serves there until [`MetricsEndpoint::stop`].
    pub async fn start(
        config: &tern_telemetry::MetricsConfig,
        metrics: Arc<tern_telemetry::Metrics>,
        auth: crate::AuthLayer,
        tls: Option<Arc<tern_tls::rustls::ServerConfig>>,
    ) -> Result<MetricsEndpoint, String> {
        if !config.allow_metrics {
            return Ok(MetricsEndpoint { addr: "off".into(), stop: None, task: None });
        }
        let listener = TcpListener::bind(config.metrics_addr())
            .await
            .map_err(|e| format!("cannot bind metrics address {}: {e}", config.metrics_addr()))?;
        let local = listener.local_addr().map_err(|e| format!("metrics address: {e}"))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let routes = tern_telemetry::router(metrics.clone()).layer(auth);
        let task = match tls {
            Some(tls) => {
                let listener =
                    tern_tls::TlsListener::new(listener, tls).map_err(|e| format!("metrics TLS: {e}"))?;
                tracing::info!(address = %local, "metrics endpoint over HTTPS");
                tokio::spawn(tern_telemetry::serve_metrics(listener, metrics, routes, shutdown))
            }
            None => tokio::spawn(tern_telemetry::serve_metrics(listener, metrics, routes, shutdown)),
        };
        Ok(MetricsEndpoint { addr: local.to_string(), stop: Some(stop), task: Some(task) })
    }

    /// Stops accepting and waits for open connections to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}
