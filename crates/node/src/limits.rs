//! Limits on what clients may send to a node: the transport limits every Tern server shares
//! ([`tern_gate::limits`]: message size, streams per connection, header size) and the node's
//! own, on what a request's shapes claim (`--max-tensor-bytes`, `--max-request-bytes`), checked
//! by [`tern_core::limits::check_request`] before anything is sized from them. Every limit that
//! is hit answers RESOURCE_EXHAUSTED or INVALID_ARGUMENT with a message naming the flag.

use tern_core::limits::RequestLimits;
pub use tern_gate::limits::{DEFAULT_MAX_MESSAGE_SIZE, TransportLimits, message_status};

/// The limit flags of tern-node (and `tern serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitsConfig {
    #[command(flatten)]
    pub transport: TransportLimits,

    /// Largest input tensor a request's shape may claim, bytes (elements times element size).
    /// A larger claim is refused with INVALID_ARGUMENT before anything is allocated.
    #[arg(long, default_value_t = i32::MAX as u64, value_name = "BYTES")]
    pub max_tensor_bytes: u64,

    /// Largest total of a request's inputs, bytes; larger requests get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = i32::MAX as u64, value_name = "BYTES")]
    pub max_request_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            transport: TransportLimits::default(),
            max_tensor_bytes: i32::MAX as u64,
            max_request_bytes: i32::MAX as u64,
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.transport.validate()?;
        if self.max_tensor_bytes == 0 {
            return Err("--max-tensor-bytes must be at least 1".into());
        }
        if self.max_request_bytes == 0 {
            return Err("--max-request-bytes must be at least 1".into());
        }
        Ok(())
    }

    /// What the service checks on each request.
    pub fn limits(&self) -> Limits {
        Limits {
            request: RequestLimits {
                max_tensor_bytes: self.max_tensor_bytes,
                max_request_bytes: self.max_request_bytes,
            },
            max_message_size: self.transport.grpc_max_message_size,
        }
    }
}

/// The limits the inference service checks itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub request: RequestLimits,
    /// Responses larger than this are refused before tonic would fail to encode them.
    pub max_message_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        LimitsConfig::default().limits()
    }
}

impl Limits {
    /// RESOURCE_EXHAUSTED when a response would be over `--grpc-max-message-size`.
    pub fn check_response(&self, model: &str, encoded_len: usize) -> Result<(), tern_core::RequestError> {
        if encoded_len > self.max_message_size {
            return Err(tern_core::RequestError::ResourceExhausted(format!(
                "response of model '{model}' is {encoded_len} bytes, more than the limit of {} bytes \
                 (--grpc-max-message-size)",
                self.max_message_size
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_over_the_message_limit_are_refused() {
        let limits = Limits { max_message_size: 100, ..Limits::default() };
        assert!(limits.check_response("m", 100).is_ok());
        let err = limits.check_response("m", 101).err().map(|e| (e.error_type(), e.to_string()));
        assert!(err.is_some_and(|(t, m)| t == "resource_exhausted" && m.contains("--grpc-max-message-size")));
    }

    #[test]
    fn flags_are_validated() {
        let ok = LimitsConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            LimitsConfig { max_tensor_bytes: 0, ..ok.clone() },
            LimitsConfig { max_request_bytes: 0, ..ok.clone() },
            LimitsConfig {
                transport: TransportLimits { grpc_max_message_size: 0, ..Default::default() },
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
