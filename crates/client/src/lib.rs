//! tern-client: a Rust client for the KServe v2 gRPC protocol (`inference.GRPCInferenceService`)
//! as Tern's nodes, routers and `tern serve` speak it, and NVIDIA Triton too.
//!
//! - [`Client`]: connect (TLS with a CA, mutual TLS, a bearer token), health, metadata and
//!   config, the repository index, load (with a JSON config override) and unload,
//!   statistics, [`Client::infer`], [`Client::stream`] (ModelStreamInfer) and
//!   [`Client::generate`] (text generation on a decoupled language model).
//! - [`InputTensor`]: typed tensors from slices (`&[f32]`, `&[i64]`, `&[bool]`, ...; any
//!   [`Element`]), BYTES from strings or byte strings (Triton's 4-byte length framing), JSON,
//!   and `ndarray` arrays with the `ndarray` feature; [`OutputTensor`] reads them back.
//! - [`ClientError`]: the server's gRPC code and message, connection failures, and requests
//!   refused before they are sent.
//!
//! Tensor data always travels in `raw_input_contents` / `raw_output_contents`, as Triton's
//! clients send it; outputs are slices of the response, never copied.
//!
//! Examples (in `crates/client/examples/`): `infer.rs` (health, metadata, an inference),
//! `generate.rs` (streamed generation), `manage.rs` (index, load with a config, unload).
//!
//! This crate owns no server code: TLS and the bearer token come from tern-edge's client side
//! (the same code the servers use toward each other).

mod client;
mod error;
mod generate;
mod infer;
mod json;
mod tensor;

pub use client::{Client, ConnectOptions, DEFAULT_MAX_MESSAGE_SIZE, InferStream, TlsOptions};
pub use error::{ClientError, code_name};
pub use generate::{GenerateEvent, GenerateParams, GenerateSummary, Generation};
pub use infer::{InferRequest, InferResult};
pub use json::json_datatype;
pub use tensor::{Element, InputTensor, OutputTensor, element_count};
pub use tern_core::DataType;
/// The generated protocol types (request parameters, metadata, statistics, ...).
pub use tern_proto::inference as pb;
