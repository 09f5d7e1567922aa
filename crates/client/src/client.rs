//! [`Client`]: one connection to a node, a router or `tern serve` (or Triton), and a method per
//! RPC of `inference.GRPCInferenceService` that a client needs.

use std::path::PathBuf;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tern_edge::Credential;
use tern_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use tern_proto::inference::model_repository_parameter::ParameterChoice as RepositoryChoice;
use tern_proto::inference::repository_index_response::ModelIndex;
use tern_proto::inference::{self as pb, ModelRepositoryParameter};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::error::error_chain;
use crate::{ClientError, InferRequest, InferResult};

/// The largest message sent or received unless [`ConnectOptions::max_message_size`] says
/// otherwise (tonic's own default, 4 MiB, is less than one batch of images).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 256 << 20;

/// TLS toward the server: the CA that signs its certificate, and for servers that require
/// mutual TLS our certificate chain and key (PEM files, the servers' `--grpc-tls-*` peers).
#[derive(Debug, Clone)]
pub struct TlsOptions {
    root_certificates: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
    domain: Option<String>,
}

impl TlsOptions {
    /// Verifies the server with the CA(s) in `root_certificates`.
    pub fn new(root_certificates: impl Into<PathBuf>) -> Self {
        TlsOptions { root_certificates: root_certificates.into(), identity: None, domain: None }
    }

    /// Presents `certificate_chain` with `private_key` (mutual TLS).
    pub fn identity(
        mut self,
        certificate_chain: impl Into<PathBuf>,
        private_key: impl Into<PathBuf>,
    ) -> Self {
        self.identity = Some((certificate_chain.into(), private_key.into()));
        self
    }

    /// The name to verify in the server's certificate instead of the host dialled.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }
}

/// How to connect: TLS, a bearer token, limits.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    tls: Option<TlsOptions>,
    token: Option<String>,
    connect_timeout: Duration,
    max_message_size: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            tls: None,
            token: None,
            connect_timeout: Duration::from_secs(10),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl ConnectOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sends `authorization: Bearer <token>` on every call (the servers' `--auth-token-file`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The largest message sent or received.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }
}

type Inner = GrpcInferenceServiceClient<InterceptedService<Channel, Credential>>;

/// A connection to a KServe v2 gRPC server. Cheap to clone; clones share the connection (one
/// HTTP/2 connection carries concurrent calls).
#[derive(Debug, Clone)]
pub struct Client {
    inner: Inner,
}

/// A stream of responses, one `Result` per response: an in-band error of one request is
/// [`ClientError::InBand`] and the stream goes on; a status ends it.
pub type InferStream = futures::stream::BoxStream<'static, Result<InferResult, ClientError>>;

impl Client {
    /// Connects to `url`: `host:port` as tritonclient takes it, or `http://` / `https://` with
    /// it. TLS when `options` has [`TlsOptions`] (`https://` without them is refused: this
    /// client trusts only the CA it is given).
    pub async fn connect(url: &str, options: ConnectOptions) -> Result<Client, ClientError> {
        let (scheme, authority) = match url.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (Some(scheme), rest),
            Some((scheme, _)) => {
                return Err(ClientError::Invalid(format!(
                    "url '{url}': scheme '{scheme}' is not http or https"
                )));
            }
            None => (None, url),
        };
        if scheme == Some("https") && options.tls.is_none() {
            return Err(ClientError::Invalid(format!(
                "url '{url}' asks for TLS: give the root certificates that sign the server's certificate"
            )));
        }
        let tls = match &options.tls {
            Some(t) => Some(
                tern_edge::tls::client_config(
                    &t.root_certificates,
                    t.identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                    t.domain.as_deref(),
                )
                .map_err(|e| ClientError::Invalid(e.to_string()))?,
            ),
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))
            .map_err(|e| ClientError::Invalid(format!("url '{url}': {}", error_chain(&e))))?
            .connect_timeout(options.connect_timeout);
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| ClientError::Invalid(format!("TLS for {url}: {}", error_chain(&e))))?;
        }
        let credential = match &options.token {
            Some(token) => {
                Credential::token(token).map_err(|e| ClientError::Invalid(format!("token: {e}")))?
            }
            None => Credential::none(),
        };
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ClientError::Connect { url: url.to_owned(), detail: error_chain(&e) })?;
        let inner = GrpcInferenceServiceClient::with_interceptor(channel, credential)
            .max_decoding_message_size(options.max_message_size)
            .max_encoding_message_size(options.max_message_size);
        Ok(Client { inner })
    }

    /// The generated client, for RPCs this type has no method for.
    pub fn raw(&self) -> Inner {
        self.inner.clone()
    }

    pub async fn server_live(&self) -> Result<bool, ClientError> {
        Ok(self.inner.clone().server_live(pb::ServerLiveRequest {}).await?.into_inner().live)
    }

    pub async fn server_ready(&self) -> Result<bool, ClientError> {
        Ok(self.inner.clone().server_ready(pb::ServerReadyRequest {}).await?.into_inner().ready)
    }

    /// Name, version and protocol extensions.
    pub async fn server_metadata(&self) -> Result<pb::ServerMetadataResponse, ClientError> {
        Ok(self.inner.clone().server_metadata(pb::ServerMetadataRequest {}).await?.into_inner())
    }

    /// Whether `name` (at `version`, or the version the policy serves when empty) is ready.
    pub async fn model_ready(&self, name: &str, version: &str) -> Result<bool, ClientError> {
        let request = pb::ModelReadyRequest { name: name.into(), version: version.into() };
        Ok(self.inner.clone().model_ready(request).await?.into_inner().ready)
    }

    /// Inputs and outputs (names, datatypes, shapes), versions and platform.
    pub async fn model_metadata(
        &self,
        name: &str,
        version: &str,
    ) -> Result<pb::ModelMetadataResponse, ClientError> {
        let request = pb::ModelMetadataRequest { name: name.into(), version: version.into() };
        Ok(self.inner.clone().model_metadata(request).await?.into_inner())
    }

    /// The model's configuration as the server completed it.
    pub async fn model_config(&self, name: &str, version: &str) -> Result<pb::ModelConfig, ClientError> {
        let request = pb::ModelConfigRequest { name: name.into(), version: version.into() };
        let config = self.inner.clone().model_config(request).await?.into_inner().config;
        config.ok_or_else(|| ClientError::Response(format!("no config for model '{name}'")))
    }

    /// Every model in the repository with its version, state and reason (only ready ones
    /// when `ready_only`).
    pub async fn repository_index(&self, ready_only: bool) -> Result<Vec<ModelIndex>, ClientError> {
        let request = pb::RepositoryIndexRequest { repository_name: String::new(), ready: ready_only };
        Ok(self.inner.clone().repository_index(request).await?.into_inner().models)
    }

    /// Loads (or reloads) `name`; `config` is a JSON model configuration used instead of the
    /// repository's, sent as Triton's load parameter `config`.
    pub async fn load(&self, name: &str, config: Option<&str>) -> Result<(), ClientError> {
        let mut request = pb::RepositoryModelLoadRequest { model_name: name.into(), ..Default::default() };
        if let Some(config) = config {
            request.parameters.insert(
                "config".into(),
                ModelRepositoryParameter {
                    parameter_choice: Some(RepositoryChoice::StringParam(config.into())),
                },
            );
        }
        self.inner.clone().repository_model_load(request).await?;
        Ok(())
    }

    pub async fn unload(&self, name: &str) -> Result<(), ClientError> {
        let request = pb::RepositoryModelUnloadRequest { model_name: name.into(), ..Default::default() };
        self.inner.clone().repository_model_unload(request).await?;
        Ok(())
    }

    /// Statistics of `name` at `version` (every model when `name` is empty; every version
    /// when `version` is).
    pub async fn statistics(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Vec<pb::ModelStatistics>, ClientError> {
        let request = pb::ModelStatisticsRequest { name: name.into(), version: version.into() };
        Ok(self.inner.clone().model_statistics(request).await?.into_inner().model_stats)
    }

    /// One inference (ModelInfer).
    pub async fn infer(&self, request: InferRequest) -> Result<InferResult, ClientError> {
        let response = self.inner.clone().model_infer(request.into_proto()).await?.into_inner();
        InferResult::from_proto(response)
    }

    /// ModelStreamInfer: `requests` go out as they come, responses come back as the server
    /// sends them (several per request for a decoupled model). The stream of requests ending
    /// half-closes the call; the responses still due arrive before the stream ends.
    pub async fn stream<S>(&self, requests: S) -> Result<InferStream, ClientError>
    where
        S: Stream<Item = InferRequest> + Send + 'static,
    {
        let outbound = requests.map(InferRequest::into_proto);
        let responses = self.inner.clone().model_stream_infer(outbound).await?.into_inner();
        Ok(responses
            .map(|message| {
                let message = message?;
                let response = message.infer_response.unwrap_or_default();
                if !message.error_message.is_empty() {
                    return Err(ClientError::InBand {
                        request_id: response.id,
                        message: message.error_message,
                    });
                }
                InferResult::from_proto(response)
            })
            .boxed())
    }
}
