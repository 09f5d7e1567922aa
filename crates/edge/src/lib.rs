//! tern-edge: the serving edge tern-node, tern-router and `tern serve` share, everything
//! between a socket and a service's own work:
//!
//! - the process: [`main!`] (flags → logging → validation before bind → runtime → bind → serve
//!   → exit code), [`server_runtime`], [`shutdown_signal`] ([`process`]);
//! - TLS ([`tls`]: server configuration with certificate reload, the TLS accept loop, client
//!   configuration; [`client_tls`]: the client flags toward another Tern server);
//! - who is calling ([`auth`]: bearer tokens, per-token groups and models; [`tokens`]: the
//!   token file; [`credential`]: the token a server presents upstream);
//! - how much they may send ([`transport_limits`]: message, stream and header limits);
//! - the gRPC server ([`grpc`]: [`FrontDoor`], reflection, serve with a graceful drain), the
//!   HTTP server ([`http`]) and the metrics port on it ([`metrics_endpoint`]);
//! - the Triton protocol surface node and router answer alike ([`triton`]).
//!
//! It must never depend on ONNX Runtime, the scheduler or the model repository (nor on
//! tern-node or tern-router): the router links it and never links ONNX Runtime.

pub mod auth;
pub mod client_tls;
pub mod credential;
pub mod error;
pub mod grpc;
pub mod http;
pub mod metrics_endpoint;
pub mod process;
pub mod tls;
pub mod tokens;
pub mod transport_limits;
pub mod triton;

pub use auth::{
    AuthArgs, AuthLayer, Authenticator, Denial, Principal, authorize_model, may_see_model, principal,
};
pub use client_tls::{ClientTlsArgs, ClientTlsFlags, ClientTlsPeer, Flag};
pub use credential::{Credential, InternalToken};
pub use error::EdgeError;
pub use grpc::FrontDoor;
pub use process::{Runtime, Server, server_runtime, shutdown_signal};
pub use tokens::{Grant, Group, Groups, Models, TokenTable, hash_token, new_token};
