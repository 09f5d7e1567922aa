//! tern-gate: what Tern's servers check at the front door, before any work is done for a
//! request: who is calling ([`auth`]: bearer tokens, per-token groups and models) and how
//! much they may send ([`limits`]: message, stream and header limits). tern-node, tern-router
//! and `tern serve` put the same layers in front of their gRPC services, and in front of
//! their metrics port ([`metrics_endpoint`], which also serves it over TLS).

pub mod auth;
pub mod limits;
pub mod metrics_endpoint;
pub mod tokens;

pub use auth::{
    AuthArgs, AuthLayer, Authenticator, Credential, Denial, InternalToken, Principal, authorize_model,
    may_see_model, principal,
};
pub use tokens::{Grant, Group, Groups, Models, TokenTable, hash_token, new_token};
