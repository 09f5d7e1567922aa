//! The control plane's own listener: `Membership` (node registration, heartbeats and
//! `ClusterStatus`) is served here and never on the client port.
//!
//! Who may call it: only a caller that proves it is a node — a client certificate signed by
//! `--cluster-tls-ca` (mutual TLS), or a bearer token that `--cluster-token-file` grants the
//! `cluster` group. Without either proof configured the listener is off and nodes cannot
//! register (routers still find nodes with `--node` / `--node-dns`). What a caller that passed
//! this gate can still not do (claim another node's address, update another node's status) is
//! checked by [`crate::discovery::MembershipService`]. The threat model is in docs/security.md.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use tern_proto::cluster::membership_server::MembershipServer;
use tokio::net::TcpListener;

use crate::discovery::MembershipService;

/// Control-plane port when the control plane is on and `--cluster-port` is not given. (Triton
/// uses 8000-8002 for HTTP, gRPC and metrics.)
pub const DEFAULT_CLUSTER_PORT: u16 = 8003;

/// Largest control-plane message: a NodeStatus of a few thousand models fits many times over.
const MAX_CONTROL_MESSAGE: usize = 4 << 20;

/// The router's control-plane flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlPlaneArgs {
    /// Address the control-plane listener (node registration and heartbeats, ClusterStatus)
    /// binds.
    #[arg(long, default_value = "0.0.0.0")]
    pub cluster_address: IpAddr,

    /// Control-plane port (default 8003 when the control plane is on; 0 picks a free port,
    /// logged at start). Needs --cluster-token-file or --cluster-tls-ca.
    #[arg(long, value_name = "PORT")]
    pub cluster_port: Option<u16>,

    /// Token file (the --auth-token-file format) of the nodes: a caller of the control plane
    /// must present a token this file grants the `cluster` group. Re-read when it changes.
    #[arg(long, value_name = "PATH")]
    pub cluster_token_file: Option<PathBuf>,

    /// PEM certificate chain the control plane presents (TLS on the control plane).
    #[arg(long, value_name = "PEM", requires = "cluster_tls_key")]
    pub cluster_tls_cert: Option<PathBuf>,

    /// PEM private key of --cluster-tls-cert.
    #[arg(long, value_name = "PEM", requires = "cluster_tls_cert")]
    pub cluster_tls_key: Option<PathBuf>,

    /// PEM CA of node certificates: callers must present a client certificate it signed
    /// (mutual TLS). Needs --cluster-tls-cert and --cluster-tls-key.
    #[arg(long, value_name = "PEM")]
    pub cluster_tls_ca: Option<PathBuf>,
}

impl Default for ControlPlaneArgs {
    fn default() -> Self {
        ControlPlaneArgs {
            cluster_address: IpAddr::from([0, 0, 0, 0]),
            cluster_port: None,
            cluster_token_file: None,
            cluster_tls_cert: None,
            cluster_tls_key: None,
            cluster_tls_ca: None,
        }
    }
}

/// What the control-plane listener checks before any work: TLS (perhaps mutual) and tokens.
#[derive(Debug, Clone)]
pub struct ControlFront {
    pub tls: Option<Arc<tern_edge::tls::rustls::ServerConfig>>,
    pub auth: tern_edge::AuthLayer,
}

impl ControlPlaneArgs {
    /// True when a proof of node identity is configured, so the listener runs.
    pub fn enabled(&self) -> bool {
        self.cluster_token_file.is_some() || self.cluster_tls_ca.is_some()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.cluster_address, self.cluster_port.unwrap_or(DEFAULT_CLUSTER_PORT))
    }

    /// Checks the flags without reading files.
    pub fn validate(&self) -> Result<(), String> {
        if self.cluster_tls_ca.is_some() && self.cluster_tls_cert.is_none() {
            return Err("--cluster-tls-ca needs --cluster-tls-cert and --cluster-tls-key (the control \
                        plane's own certificate)"
                .into());
        }
        if !self.enabled() && (self.cluster_port.is_some() || self.cluster_tls_cert.is_some()) {
            return Err("the control plane (--cluster-port, --cluster-tls-cert) needs a proof that callers \
                        are nodes: --cluster-token-file (tokens with the `cluster` group) or \
                        --cluster-tls-ca (mutual TLS)"
                .into());
        }
        Ok(())
    }

    /// The listener's TLS and token check, or `None` when the control plane is off. Reads the
    /// files now, so a bad certificate or token file stops the router before it binds.
    pub fn front(&self) -> Result<Option<ControlFront>, String> {
        self.validate()?;
        if !self.enabled() {
            return Ok(None);
        }
        let tls = match (&self.cluster_tls_cert, &self.cluster_tls_key) {
            (Some(cert), Some(key)) => {
                // The server TLS builder is shared with the client port's; its flags differ.
                let args = tern_edge::tls::TlsArgs {
                    grpc_use_ssl: true,
                    grpc_use_ssl_mutual: self.cluster_tls_ca.is_some(),
                    grpc_server_cert: Some(cert.clone()),
                    grpc_server_key: Some(key.clone()),
                    grpc_root_cert: self.cluster_tls_ca.clone(),
                    metrics_use_ssl: false,
                };
                args.server().map_err(|e| format!("--cluster-tls-*: {e}"))?
            }
            _ => None,
        };
        let auth = match &self.cluster_token_file {
            Some(path) => {
                let nothing_public = tern_edge::Groups::parse("none")?;
                Some(
                    tern_edge::Authenticator::from_file(path, nothing_public, None)
                        .map_err(|e| format!("--cluster-token-file: {e}"))?,
                )
            }
            None => None,
        };
        Ok(Some(ControlFront { tls, auth: tern_edge::AuthLayer { auth } }))
    }
}

/// Serves `membership` on `listener` behind `front` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    front: ControlFront,
    membership: MembershipService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let membership = MembershipServer::new(membership)
        .max_decoding_message_size(MAX_CONTROL_MESSAGE)
        .max_encoding_message_size(MAX_CONTROL_MESSAGE);
    let routes = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(64)
        .max_concurrent_streams(64)
        .layer(front.auth)
        .add_service(membership);
    match front.tls {
        Some(tls) => {
            routes.serve_with_incoming_shutdown(tern_edge::tls::incoming(listener, tls), shutdown).await
        }
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            routes.serve_with_incoming_shutdown(incoming, shutdown).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_without_a_proof_and_refused_when_asked_for_without_one() {
        let off = ControlPlaneArgs::default();
        assert!(!off.enabled());
        assert!(off.front().expect("valid").is_none());

        let port_only = ControlPlaneArgs { cluster_port: Some(9000), ..Default::default() };
        let err = port_only.front().expect_err("a port without a proof is refused");
        assert!(err.contains("--cluster-token-file") && err.contains("--cluster-tls-ca"), "{err}");

        let ca_only = ControlPlaneArgs { cluster_tls_ca: Some("/ca.pem".into()), ..Default::default() };
        let err = ca_only.validate().expect_err("mutual TLS needs the server's own certificate");
        assert!(err.contains("--cluster-tls-cert"), "{err}");
    }

    #[test]
    fn default_port_applies_only_when_not_given() {
        let on = ControlPlaneArgs { cluster_token_file: Some("/t".into()), ..Default::default() };
        assert_eq!(on.addr().port(), DEFAULT_CLUSTER_PORT);
        let chosen = ControlPlaneArgs { cluster_port: Some(0), ..on };
        assert_eq!(chosen.addr().port(), 0);
    }
}
