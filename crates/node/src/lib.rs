//! tern-node: serves a model repository over Triton's gRPC protocol
