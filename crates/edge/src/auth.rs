//! Bearer-token authentication and per-token authorization, checked before any work.
//!
//! - [`AuthArgs`]: `--auth-token-file` and `--auth-public`, flattened into each server's flags.
//! - [`AuthLayer`]: a tower layer in front of every gRPC service (and the metrics endpoint). It
//!   maps the request path to a [`Group`], lets public groups through, and otherwise wants
//!   `authorization: Bearer <token>`: missing or unknown -> UNAUTHENTICATED (HTTP 401), a group
//!   the token lacks -> PERMISSION_DENIED (HTTP 403). The request then carries the token's
//!   [`Principal`] so services can check model names ([`authorize_model`]).
//! - [`Credential`](crate::Credential) (module `credential`): the token a router presents to
//!   nodes, or a node to routers.
//!
//! Token files and credential files are re-read when they change (checked every second), so
//! tokens can be added, revoked and rotated without a restart. Tokens are never logged: logs
//! and errors name a token by its name in the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;

use crate::EdgeError;
use crate::credential::{InternalToken, Reload, WatchedFile, watch};
use crate::tokens::{Grant, Group, Groups, Models, TokenTable};

/// The authentication flags of tern-node, tern-router and `tern serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// Require bearer tokens (`authorization: Bearer <token>`): the file lists each token's
    /// hash, its groups and models (see docs/security.md; `tern token new` makes entries). Re-read
    /// when it changes. Without it, no token is asked for.
    #[arg(long, value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,

    /// Groups served without a token when --auth-token-file is set, comma-separated
    /// (health, metadata, inference, model-config, model-repository, statistics, cluster,
    /// metrics, ...); `none` protects everything.
    #[arg(long, default_value = "health,metrics", value_name = "GROUPS")]
    pub auth_public: String,

    /// Also accept this in-memory token (never a flag: `tern serve` gives its embedded node
    /// the token its router presents).
    #[arg(skip)]
    pub internal: Option<InternalToken>,
}

impl Default for AuthArgs {
    fn default() -> Self {
        AuthArgs { auth_token_file: None, auth_public: "health,metrics".into(), internal: None }
    }
}

impl AuthArgs {
    /// Checks the flags without reading the token file.
    pub fn validate(&self) -> Result<(), EdgeError> {
        Groups::parse(&self.auth_public).map(drop).map_err(auth_public)
    }

    /// The authenticator, or `None` without --auth-token-file. Reads the file now, so a bad
    /// file stops the server before it binds, with the line named.
    pub fn authenticator(&self) -> Result<Option<Arc<Authenticator>>, EdgeError> {
        let public = Groups::parse(&self.auth_public).map_err(auth_public)?;
        match &self.auth_token_file {
            None => Ok(None),
            Some(path) => Authenticator::from_file(path, public, self.internal.clone()).map(Some),
        }
    }
}

fn auth_public(e: EdgeError) -> EdgeError {
    EdgeError::Flag { flag: "--auth-public", source: Box::new(e) }
}

/// Checks requests against the token file.
#[derive(Debug)]
pub struct Authenticator {
    file: WatchedFile,
    public: Groups,
    table: ArcSwap<TokenTable>,
    /// A token that exists only in memory (`tern serve`'s router-to-node token).
    internal: Option<InternalToken>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    Unauthenticated(String),
    PermissionDenied(String),
}

impl Denial {
    pub fn status(&self) -> tonic::Status {
        match self {
            Denial::Unauthenticated(m) => tonic::Status::unauthenticated(m.clone()),
            Denial::PermissionDenied(m) => tonic::Status::permission_denied(m.clone()),
        }
    }
}

impl Authenticator {
    /// Reads `file`; `internal` is accepted besides the file's tokens, in every version of it.
    pub fn from_file(
        file: &Path,
        public: Groups,
        internal: Option<InternalToken>,
    ) -> Result<Arc<Authenticator>, EdgeError> {
        let auth = Authenticator {
            file: WatchedFile::new(file),
            public,
            table: ArcSwap::from_pointee(TokenTable::default()),
            internal,
        };
        let table = auth.read()?;
        if table.is_empty() {
            tracing::warn!(file = %file.display(), "the token file lists no token: only public groups can be used");
        }
        tracing::info!(file = %file.display(), tokens = table.len(), public = %public, "bearer-token authentication on");
        auth.table.store(Arc::new(table));
        let auth = Arc::new(auth);
        watch(&auth);
        Ok(auth)
    }

    fn read(&self) -> Result<TokenTable, EdgeError> {
        let text = self.file.read()?;
        let mut table = TokenTable::parse(&text, &self.file.path.display().to_string())?;
        self.add_internal(&mut table);
        Ok(table)
    }

    fn add_internal(&self, table: &mut TokenTable) {
        if let Some(internal) = &self.internal {
            let (token, grant) = internal.entry();
            table.insert(&token, grant);
        }
    }

    /// Re-reads the file if its modification time or size changed. A file that no longer
    /// parses keeps the previous tokens (an edit in progress); a deleted file revokes every
    /// token it held (only public groups, and `tern serve`'s in-memory token, remain).
    pub fn reload_if_changed(&self) {
        if !self.file.changed() {
            return;
        }
        match self.read() {
            Ok(table) => {
                tracing::info!(file = %self.file.path.display(), tokens = table.len(), "token file reloaded");
                self.table.store(Arc::new(table));
            }
            Err(_) if self.file.deleted() => {
                let mut table = TokenTable::default();
                self.add_internal(&mut table);
                self.table.store(Arc::new(table));
                tracing::error!(
                    file = %self.file.path.display(),
                    "token file deleted: every token it held is revoked; only public groups can be used"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "token file changed but cannot be used; keeping the previous tokens")
            }
        }
    }

    /// The caller's grant for a request to `path` with `headers`: `None` for a public group.
    pub fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<Option<Arc<Grant>>, Denial> {
        let group = Group::of_path(path);
        if group.is_some_and(|g| self.public.contains(g)) {
            return Ok(None);
        }
        let Some(token) = bearer(headers) else {
            return Err(Denial::Unauthenticated(format!(
                "{path} needs a bearer token: send the header 'authorization: Bearer <token>'"
            )));
        };
        let table = self.table.load();
        let Some(grant) = table.grant(token) else {
            return Err(Denial::Unauthenticated("the bearer token is not valid (unknown or revoked)".into()));
        };
        match group {
            Some(group) if !grant.groups.contains(group) => Err(Denial::PermissionDenied(format!(
                "token '{}' may not use {group} ({path}); it may use: {}",
                grant.name, grant.groups
            ))),
            // /metrics names every model in its labels: only a token that may see every model
            // reads it (simpler and safer than filtering the exposition by label).
            Some(Group::Metrics) if grant.models != Models::All => Err(Denial::PermissionDenied(format!(
                "token '{}' may not read {path}: it lists every model, and the token may use only models {}",
                grant.name, grant.models
            ))),
            _ => Ok(Some(grant.clone())),
        }
    }
}

impl Reload for Authenticator {
    fn reload_if_changed(&self) {
        Authenticator::reload_if_changed(self);
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The authenticated caller of a request (in its extensions).
#[derive(Debug, Clone)]
pub struct Principal(pub Arc<Grant>);

/// PERMISSION_DENIED unless the caller may name `model`. Requests without a [`Principal`]
/// (authentication off, or a public group) may name any model.
pub fn authorize_model(principal: Option<&Principal>, model: &str) -> Result<(), tonic::Status> {
    match principal {
        Some(Principal(grant)) if !grant.models.allows(model) => {
            Err(tonic::Status::permission_denied(format!(
                "token '{}' may not use model '{model}'; it may use models: {}",
                grant.name, grant.models
            )))
        }
        _ => Ok(()),
    }
}

/// Whether lists (repository index, statistics of all models) should show `model` to the caller.
pub fn may_see_model(principal: Option<&Principal>, model: &str) -> bool {
    principal.is_none_or(|Principal(grant)| grant.models.allows(model))
}

/// The principal of a tonic request.
pub fn principal<T>(request: &tonic::Request<T>) -> Option<&Principal> {
    request.extensions().get::<Principal>()
}

/// Authentication in front of a server's routes; a no-op without an authenticator.
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    pub auth: Option<Arc<Authenticator>>,
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { inner, auth: self.auth.clone() }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future =
        futures::future::Either<S::Future, futures::future::Ready<Result<http::Response<ResBody>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let Some(auth) = &self.auth else {
            return futures::future::Either::Left(self.inner.call(req));
        };
        match auth.check(req.uri().path(), req.headers()) {
            Ok(grant) => {
                if let Some(grant) = grant {
                    req.extensions_mut().insert(Principal(grant));
                }
                futures::future::Either::Left(self.inner.call(req))
            }
            Err(denial) => {
                let path = req.uri().path();
                match &denial {
                    Denial::Unauthenticated(m) => tracing::debug!(path, reason = %m, "request refused"),
                    Denial::PermissionDenied(m) => tracing::info!(path, reason = %m, "request refused"),
                }
                futures::future::Either::Right(futures::future::ready(Ok(refusal(&req, &denial))))
            }
        }
    }
}

/// The refusal as the client's protocol words it: a gRPC status, or HTTP 401 / 403.
fn refusal<B, R: Default>(req: &http::Request<B>, denial: &Denial) -> http::Response<R> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return denial.status().into_http();
    }
    let mut response = http::Response::new(R::default());
    *response.status_mut() = match denial {
        Denial::Unauthenticated(_) => http::StatusCode::UNAUTHORIZED,
        Denial::PermissionDenied(_) => http::StatusCode::FORBIDDEN,
    };
    response
        .headers_mut()
        .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer realm=\"tern\""));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::hash_token;
    use tower_layer::Layer as _;
    use tower_service::Service as _;

    fn headers(token: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(t) = token.and_then(|t| http::HeaderValue::try_from(format!("Bearer {t}")).ok()) {
            h.insert(http::header::AUTHORIZATION, t);
        }
        h
    }

    const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
    const UNLOAD: &str = "/inference.GRPCInferenceService/RepositoryModelUnload";
    const READY: &str = "/inference.GRPCInferenceService/ServerReady";

    fn setup(public: &str) -> (tempfile::TempDir, PathBuf, Arc<Authenticator>) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let file = dir.path().join("tokens");
        let text = format!(
            "predictor {} groups=inference,metadata models=tiny_*\nadmin {} groups=*\n",
            hash_token("p-token"),
            hash_token("a-token")
        );
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("write: {e}"));
        let public = Groups::parse(public).unwrap_or_default();
        let auth = Authenticator::from_file(&file, public, None).unwrap_or_else(|e| panic!("{e}"));
        (dir, file, auth)
    }

    fn code(r: Result<Option<Arc<Grant>>, Denial>) -> Result<Option<String>, tonic::Code> {
        r.map(|g| g.map(|g| g.name.clone())).map_err(|d| d.status().code())
    }

    #[test]
    fn requests_are_checked_by_group() {
        let (_dir, _file, auth) = setup("health");
        assert_eq!(code(auth.check(READY, &headers(None))), Ok(None));
        assert_eq!(code(auth.check(INFER, &headers(None))), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(auth.check(INFER, &headers(Some("wrong")))), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(auth.check(INFER, &headers(Some("p-token")))), Ok(Some("predictor".into())));
        assert_eq!(code(auth.check(UNLOAD, &headers(Some("p-token")))), Err(tonic::Code::PermissionDenied));
        assert_eq!(code(auth.check(UNLOAD, &headers(Some("a-token")))), Ok(Some("admin".into())));
        assert_eq!(code(auth.check("/metrics", &headers(None))), Err(tonic::Code::Unauthenticated));
        // Lower-case scheme, extra spaces; other schemes are not bearer tokens.
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, http::HeaderValue::from_static("bearer   p-token "));
        assert_eq!(code(auth.check(INFER, &h)), Ok(Some("predictor".into())));
        h.insert(http::header::AUTHORIZATION, http::HeaderValue::from_static("Basic p-token"));
        assert_eq!(code(auth.check(INFER, &h)), Err(tonic::Code::Unauthenticated));
        // The message never holds the token.
        let denial = auth.check(UNLOAD, &headers(Some("p-token"))).err();
        let message = denial.map(|d| d.status().message().to_owned()).unwrap_or_default();
        assert!(
            message.contains("token 'predictor' may not use model-repository")
                && !message.contains("p-token")
        );
    }

    #[test]
    fn metrics_need_a_token_that_may_see_every_model() {
        let (_dir, file, _) = setup("health");
        let text = format!(
            "scraper {} groups=metrics\ntenant {} groups=metrics,inference models=tiny_*\n",
            hash_token("s-token"),
            hash_token("t-token")
        );
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("write: {e}"));
        let auth = Authenticator::from_file(&file, Groups::parse("health").unwrap_or_default(), None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(code(auth.check("/metrics", &headers(Some("s-token")))), Ok(Some("scraper".into())));
        let denied = auth.check("/metrics", &headers(Some("t-token"))).err();
        let status = denied.map(|d| d.status());
        assert!(
            status.as_ref().is_some_and(|s| s.code() == tonic::Code::PermissionDenied
                && s.message().contains("token 'tenant' may not read /metrics")),
            "{status:?}"
        );
        // The model scope only matters for /metrics.
        assert_eq!(code(auth.check(INFER, &headers(Some("t-token")))), Ok(Some("tenant".into())));
    }

    #[test]
    fn models_are_checked_per_principal() {
        let grant = Arc::new(Grant {
            name: "p".into(),
            groups: Groups::all(),
            models: Models::parse("tiny_*").unwrap_or(Models::All),
        });
        let p = Principal(grant);
        assert!(authorize_model(Some(&p), "tiny_add").is_ok());
        let denied = authorize_model(Some(&p), "resnet50").err();
        assert!(
            denied.is_some_and(
                |s| s.code() == tonic::Code::PermissionDenied && s.message().contains("'resnet50'")
            )
        );
        assert!(authorize_model(None, "resnet50").is_ok());
        assert!(
            may_see_model(Some(&p), "tiny_x") && !may_see_model(Some(&p), "r") && may_see_model(None, "r")
        );
    }

    #[tokio::test]
    async fn token_file_changes_apply_without_restart() {
        let (_dir, file, auth) = setup("health");
        assert!(auth.check(INFER, &headers(Some("new-token"))).is_err());
        // Rotate: the predictor's token is replaced; the admin is revoked.
        std::fs::write(&file, format!("predictor {} groups=inference\n", hash_token("new-token")))
            .unwrap_or_else(|e| panic!("write: {e}"));
        auth.reload_if_changed();
        assert!(auth.check(INFER, &headers(Some("new-token"))).is_ok());
        assert!(auth.check(INFER, &headers(Some("p-token"))).is_err());
        assert!(auth.check(INFER, &headers(Some("a-token"))).is_err());
        // A broken edit keeps the last good tokens.
        std::fs::write(&file, "predictor sha256:broken groups=inference\n")
            .unwrap_or_else(|e| panic!("write: {e}"));
        auth.reload_if_changed();
        assert!(auth.check(INFER, &headers(Some("new-token"))).is_ok());
    }

    #[tokio::test]
    async fn deleting_the_token_file_revokes_its_tokens() {
        let (_dir, file, auth) = setup("health");
        assert!(auth.check(INFER, &headers(Some("p-token"))).is_ok());
        std::fs::remove_file(&file).unwrap_or_else(|e| panic!("remove: {e}"));
        auth.reload_if_changed();
        assert_eq!(code(auth.check(INFER, &headers(Some("p-token")))), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(auth.check(UNLOAD, &headers(Some("a-token")))), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(auth.check(READY, &headers(None))), Ok(None), "public groups stay open");
        // Written again: its tokens count again.
        std::fs::write(&file, format!("admin {} groups=*\n", hash_token("a-token")))
            .unwrap_or_else(|e| panic!("write: {e}"));
        auth.reload_if_changed();
        assert_eq!(code(auth.check(UNLOAD, &headers(Some("a-token")))), Ok(Some("admin".into())));
    }

    #[tokio::test]
    async fn the_layer_refuses_in_the_callers_protocol() {
        let (_dir, _file, auth) = setup("none");
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let who = req.extensions().get::<Principal>().map(|p| p.0.name.clone()).unwrap_or_default();
            Ok::<_, std::convert::Infallible>(http::Response::new(who))
        });
        let mut service = AuthLayer { auth: Some(auth) }.layer(inner);
        let request = |path: &str, grpc: bool, token: Option<&str>| {
            let mut b = http::Request::builder().uri(path);
            if grpc {
                b = b.header("content-type", "application/grpc");
            }
            if let Some(t) = token {
                b = b.header("authorization", format!("Bearer {t}"));
            }
            b.body(()).unwrap_or_default()
        };
        let ok = service.call(request(INFER, true, Some("p-token"))).await.ok();
        assert_eq!(ok.map(|r| r.into_body()).as_deref(), Some("predictor"));
        let grpc = service.call(request(INFER, true, None)).await.ok();
        let status = grpc.and_then(|r| tonic::Status::from_header_map(r.headers()));
        assert_eq!(status.map(|s| s.code()), Some(tonic::Code::Unauthenticated));
        let http401 = service.call(request("/metrics", false, None)).await.ok();
        assert_eq!(http401.map(|r| r.status()), Some(http::StatusCode::UNAUTHORIZED));
        let http403 = service.call(request("/metrics", false, Some("p-token"))).await.ok();
        assert_eq!(http403.map(|r| r.status()), Some(http::StatusCode::FORBIDDEN));
        let metrics = service.call(request("/metrics", false, Some("a-token"))).await.ok();
        assert_eq!(metrics.map(|r| r.into_body()).as_deref(), Some("admin"));
    }
}
