//! The metrics port (/metrics, /v2/health/*) behind the same front door as gRPC: the token
//! check of [`AuthLayer`](crate::AuthLayer) (the `metrics` and `health` groups) and, with
//! `--metrics-use-ssl`, HTTPS. Served by [`HttpEndpoint`], with the resource poller beside it.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::http::HttpEndpoint;

/// A running metrics endpoint (or none, with `--allow-metrics false`).
pub struct MetricsEndpoint {
    /// Where it listens, or `off`.
    pub addr: String,
    server: Option<(HttpEndpoint, JoinHandle<()>)>,
}

impl MetricsEndpoint {
    /// Binds `config`'s address and serves there (over HTTPS with `tls`' --metrics-use-ssl)
    /// until [`MetricsEndpoint::stop`].
    pub async fn start(
        config: &tern_telemetry::MetricsConfig,
        metrics: Arc<tern_telemetry::Metrics>,
        auth: crate::AuthLayer,
        tls: &crate::tls::TlsArgs,
    ) -> Result<MetricsEndpoint, crate::EdgeError> {
        // Checked even with metrics off: a bad --metrics-use-ssl setup is an error regardless.
        let tls = tls.metrics_server()?;
        if !config.allow_metrics {
            return Ok(MetricsEndpoint { addr: "off".into(), server: None });
        }
        let listener = TcpListener::bind(config.metrics_addr()).await.map_err(|source| {
            crate::EdgeError::Bind { what: "metrics", addr: config.metrics_addr(), source }
        })?;
        let local = listener
            .local_addr()
            .map_err(|source| crate::EdgeError::Serve { context: "metrics address".into(), source })?;
        let routes = tern_telemetry::router(metrics.clone()).layer(auth);
        if tls.is_some() {
            tracing::info!(address = %local, "metrics endpoint over HTTPS");
        }
        tern_telemetry::first_resource_reading(metrics.clone()).await;
        let poller = tokio::spawn(tern_telemetry::resource_task(metrics));
        let endpoint = match HttpEndpoint::start(listener, tls, routes) {
            Ok(endpoint) => endpoint,
            Err(source) => {
                poller.abort();
                return Err(crate::EdgeError::Serve { context: "metrics TLS".into(), source });
            }
        };
        Ok(MetricsEndpoint { addr: local.to_string(), server: Some((endpoint, poller)) })
    }

    /// Stops accepting and waits for open connections to finish.
    pub async fn stop(self) {
        if let Some((endpoint, poller)) = self.server {
            endpoint.stop().await;
            poller.abort();
        }
    }
}
