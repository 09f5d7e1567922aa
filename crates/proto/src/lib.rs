//! Generated code for the wire protocol: Triton's `inference` package (KServe v2 plus Triton's
//! extensions and the model configuration schema). This crate owns no logic beyond the
//! generated types and the descriptor set used by gRPC reflection and text-format parsing.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// Tern's router <-> node control plane (proto/tern/cluster/v1/cluster.proto).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod cluster {
    tonic::include_proto!("tern.cluster.v1");
}

pub mod codec;

/// Encoded `FileDescriptorSet` of every message above: gRPC server reflection serves it, and
/// config.pbtxt is parsed against it.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("inference_descriptor");
