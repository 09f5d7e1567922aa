//! TLS for Tern's servers (tern-node, tern-router, tern serve) and for router-to-node
//! connections, with rustls (no OpenSSL). Flags as Triton names them (`--grpc-use-ssl`,
//! `--grpc-use-ssl-mutual`, `--grpc-server-cert`, `--grpc-server-key`, `--grpc-root-cert`).
//!
//! The server certificate and key are re-read when their files change (checked once a second
//! on a blocking thread, never during a handshake on an async worker), so a renewed
//! certificate (cert-manager, a rotated Secret) is served without a restart; a renewal that
//! fails to parse keeps the previous one and logs why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
pub use tokio_rustls::rustls;
use tokio_rustls::rustls::{server::ClientHello, server::ResolvesServerCert, sign::CertifiedKey};

use crate::EdgeError;

/// Server TLS flags, flattened into each server's command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Serve gRPC over TLS (needs --grpc-server-cert and --grpc-server-key).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub grpc_use_ssl: bool,

    /// Also require client certificates signed by --grpc-root-cert (mutual TLS).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub grpc_use_ssl_mutual: bool,

    /// PEM certificate chain the gRPC server presents (re-read when the file changes).
    #[arg(long, value_name = "PEM")]
    pub grpc_server_cert: Option<PathBuf>,

    /// PEM private key of --grpc-server-cert (re-read when the file changes).
    #[arg(long, value_name = "PEM")]
    pub grpc_server_key: Option<PathBuf>,

    /// PEM CA certificates that sign client certificates (mutual TLS).
    #[arg(long, value_name = "PEM")]
    pub grpc_root_cert: Option<PathBuf>,

    /// Serve the metrics endpoint (/metrics, /v2/health/*) over HTTPS too, with
    /// --grpc-server-cert and --grpc-server-key (re-read when they change).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub metrics_use_ssl: bool,
}

impl TlsArgs {
    /// The server TLS configuration, or `None` without --grpc-use-ssl. Reads the files now, so
    /// a bad certificate fails the start with the file named.
    pub fn server(&self) -> Result<Option<Arc<rustls::ServerConfig>>, EdgeError> {
        if !self.grpc_use_ssl {
            if self.grpc_use_ssl_mutual {
                return Err(EdgeError::Flags("--grpc-use-ssl-mutual needs --grpc-use-ssl=true".into()));
            }
            return Ok(None);
        }
        let resolver = self.resolver("--grpc-use-ssl")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| EdgeError::Tls(format!("TLS: {e}")))?;
        let builder = if self.grpc_use_ssl_mutual {
            let Some(ca) = &self.grpc_root_cert else {
                return Err(EdgeError::Flags(
                    "--grpc-use-ssl-mutual needs --grpc-root-cert (the CA of client certificates)".into(),
                ));
            };
            let roots = root_store(ca)?;
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| EdgeError::Tls(format!("--grpc-root-cert {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(Arc::new(config)))
    }

    /// The metrics endpoint's TLS configuration (HTTP/1.1, no client certificates: Prometheus
    /// authenticates with a bearer token there), or `None` without --metrics-use-ssl.
    pub fn metrics_server(&self) -> Result<Option<Arc<rustls::ServerConfig>>, EdgeError> {
        if !self.metrics_use_ssl {
            return Ok(None);
        }
        let resolver = self.resolver("--metrics-use-ssl")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| EdgeError::Tls(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }

    fn resolver(&self, flag: &str) -> Result<Arc<ReloadingCert>, EdgeError> {
        let (Some(cert), Some(key)) = (&self.grpc_server_cert, &self.grpc_server_key) else {
            return Err(EdgeError::Flags(format!("{flag} needs --grpc-server-cert and --grpc-server-key")));
        };
        let resolver = Arc::new(ReloadingCert::new(cert.clone(), key.clone())?);
        ReloadingCert::watch(&resolver);
        Ok(resolver)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, EdgeError> {
    std::fs::read(path).map_err(|source| EdgeError::Read { path: path.to_owned(), source })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, EdgeError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| certificate(path, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(certificate(path, "no certificate in the file".into()));
    }
    Ok(certs)
}

fn root_store(path: &Path) -> Result<rustls::RootCertStore, EdgeError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(path)? {
        roots.add(cert).map_err(|e| certificate(path, e.to_string()))?;
    }
    Ok(roots)
}

fn certificate(path: &Path, detail: String) -> EdgeError {
    EdgeError::Certificate { path: path.to_owned(), detail }
}

fn load_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, EdgeError> {
    let chain = certs(cert)?;
    let pem = read(key)?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| certificate(key, format!("not a PEM private key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| certificate(key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| EdgeError::Tls(format!("{} and {}: {e}", cert.display(), key.display())))?;
    Ok(Arc::new(certified))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The server certificate, re-read from its files when they change.
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    /// What handshakes use; swapped by [`ReloadingCert::reload_if_changed`] only.
    current: Mutex<Arc<CertifiedKey>>,
    /// The files' modification times last seen (only the watcher's blocking thread uses it).
    stamps: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

/// How often the files' modification times are looked at.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

impl ReloadingCert {
    fn new(cert: PathBuf, key: PathBuf) -> Result<ReloadingCert, EdgeError> {
        let current = load_key(&cert, &key)?;
        let stamps = (modified(&cert), modified(&key));
        Ok(ReloadingCert { cert, key, current: Mutex::new(current), stamps: Mutex::new(stamps) })
    }

    /// Checks the files every [`RELOAD_CHECK`] on a blocking thread (file reads can stall:
    /// a slow or hung mount), until `this` is dropped; nothing outside a Tokio runtime.
    fn watch(this: &Arc<ReloadingCert>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let weak = Arc::downgrade(this);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_CHECK).await;
                let Some(this) = weak.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
            }
        });
    }

    fn reload_if_changed(&self) {
        let stamps = (modified(&self.cert), modified(&self.key));
        {
            let mut seen = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == stamps {
                return;
            }
            *seen = stamps;
        }
        match load_key(&self.cert, &self.key) {
            Ok(fresh) => {
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate changed but cannot be loaded; keeping the previous one")
            }
        }
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A handshake that takes longer than this is dropped (a client that opens and stalls).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// Accepts TCP connections on `listener` and yields them after the TLS handshake, for
/// `tonic::transport::Server::serve_with_incoming*`. Handshakes run concurrently (a slow
/// client does not hold up the others); failed ones are logged at debug level and dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl futures::Stream<Item = Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>> + Send + 'static
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    accept_loop(listener, config, tx, |stream| Ok(Ok(stream)));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A TLS listener for axum (the metrics endpoint): connections after their handshake.
pub struct TlsListener {
    connections: tokio::sync::mpsc::Receiver<(TlsStream, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

impl TlsListener {
    /// Starts accepting on `listener` (handshakes as in [`incoming`]).
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        accept_loop(listener, config, tx, |stream: TlsStream| {
            let peer = stream.get_ref().0.peer_addr()?;
            Ok((stream, peer))
        });
        Ok(TlsListener { connections: rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (TlsStream, std::net::SocketAddr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop ended (the runtime is shutting down): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        Ok(self.local)
    }
}

/// Accepts on `listener`, runs handshakes concurrently (bounded, with a timeout) and sends
/// `wrap(stream)` of each established one to `tx` until `tx` is closed.
fn accept_loop<T: Send + 'static>(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    tx: tokio::sync::mpsc::Sender<T>,
    wrap: fn(TlsStream) -> std::io::Result<T>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => {
                    // Small answers must not wait for the peer's delayed ACK (Nagle).
                    let _ = c.0.set_nodelay(true);
                    c
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => match wrap(stream) {
                        Ok(item) => {
                            let _ = tx.send(item).await;
                        }
                        Err(e) => tracing::debug!(%peer, error = %e, "connection lost after the handshake"),
                    },
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
}

/// Client TLS toward another Tern server: the CA that signs its certificate, and optionally
/// our own certificate for servers that require mutual TLS.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    domain: Option<&str>,
) -> Result<tonic::transport::ClientTlsConfig, EdgeError> {
    let mut config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = identity {
        config = config.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(domain) = domain {
        config = config.domain_name(domain);
    }
    Ok(config)
}
