//! Limits on what clients may send to a node: the transport limits every Tern server shares
//! ([`tern_edge::limits`]: message size, streams per connection, header size) and the node's
//! own, on what a request's shapes claim (`--max-tensor-bytes`, `--max-request-bytes`), checked
//! by [`tern_core::shape_limits::check_request`] before anything is sized from them, and on the
//! bytes of all requests it holds at once (`--max-pending-request-bytes`, [`PendingBytes`]).
//! Every limit that is hit answers RESOURCE_EXHAUSTED or INVALID_ARGUMENT with a message naming
//! the flag.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tern_core::RequestError;
use tern_core::shape_limits::RequestLimits;
pub use tern_edge::transport_limits::{DEFAULT_MAX_MESSAGE_SIZE, TransportLimits, message_status};

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

    /// Most bytes of input tensors the node holds for requests it has accepted and not yet
    /// answered (queued or running), across all models. A request that would pass it is refused
    /// at once with RESOURCE_EXHAUSTED, so a flood of large requests cannot exhaust memory.
    #[arg(long, default_value_t = DEFAULT_MAX_PENDING_REQUEST_BYTES, value_name = "BYTES")]
    pub max_pending_request_bytes: u64,
}

/// 4 GiB: sixteen requests at the default message limit, thousands of ordinary ones (a queue
/// of 16,384 one-image resnet requests holds 9.9 GB, which is what this stops). Size it to
/// the node's memory less its models'.
pub const DEFAULT_MAX_PENDING_REQUEST_BYTES: u64 = 4 << 30;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            transport: TransportLimits::default(),
            max_tensor_bytes: i32::MAX as u64,
            max_request_bytes: i32::MAX as u64,
            max_pending_request_bytes: DEFAULT_MAX_PENDING_REQUEST_BYTES,
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
        if self.max_pending_request_bytes == 0 {
            return Err("--max-pending-request-bytes must be at least 1".into());
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

/// The bytes of input tensors held by requests admitted and not yet answered, against
/// `--max-pending-request-bytes`.
#[derive(Debug)]
pub struct PendingBytes {
    held: AtomicU64,
    limit: u64,
}

/// One request's share of [`PendingBytes`], given back when dropped (answered, failed or
/// cancelled alike).
#[derive(Debug)]
pub struct PendingGuard<'a> {
    held: &'a AtomicU64,
    bytes: u64,
}

impl PendingBytes {
    pub fn new(limit: u64) -> PendingBytes {
        PendingBytes { held: AtomicU64::new(0), limit }
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Relaxed)
    }

    /// Takes `bytes` for a request for `model`, or refuses it with RESOURCE_EXHAUSTED when that
    /// would pass the limit.
    pub fn admit(&self, model: &str, bytes: u64) -> Result<PendingGuard<'_>, RequestError> {
        let mut held = self.held.load(Relaxed);
        loop {
            let after = held.saturating_add(bytes);
            if after > self.limit {
                return Err(RequestError::ResourceExhausted(format!(
                    "request for model '{model}' carries {bytes} bytes of inputs; with the {held} bytes \
                     of requests this node holds (queued or running) that is more than the limit of {} \
                     bytes (--max-pending-request-bytes): retry later",
                    self.limit
                )));
            }
            match self.held.compare_exchange_weak(held, after, Relaxed, Relaxed) {
                Ok(_) => return Ok(PendingGuard { held: &self.held, bytes }),
                Err(now) => held = now,
            }
        }
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Relaxed);
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
    fn pending_bytes_are_bounded_and_given_back() {
        let pending = PendingBytes::new(1000);
        let a = pending.admit("m", 600).expect("within");
        let refused = pending.admit("m", 500).err().map(|e| (e.error_type(), e.to_string()));
        assert!(
            refused.as_ref().is_some_and(|(t, m)| *t == "resource_exhausted"
                && m.contains("'m'")
                && m.contains("600 bytes")
                && m.contains("--max-pending-request-bytes")),
            "{refused:?}"
        );
        let b = pending.admit("m", 400).expect("exactly at the limit");
        assert_eq!(pending.held(), 1000);
        drop(a);
        drop(b);
        assert_eq!(pending.held(), 0);
        assert!(pending.admit("m", 1001).is_err(), "more than the limit alone");
    }

    #[test]
    fn flags_are_validated() {
        let ok = LimitsConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            LimitsConfig { max_tensor_bytes: 0, ..ok.clone() },
            LimitsConfig { max_request_bytes: 0, ..ok.clone() },
            LimitsConfig { max_pending_request_bytes: 0, ..ok.clone() },
            LimitsConfig {
                transport: TransportLimits { grpc_max_message_size: 0, ..Default::default() },
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
