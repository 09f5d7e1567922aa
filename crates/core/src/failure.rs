//! Why a request failed, as statistics and metrics count it.

/// Triton's `triton::core::FailureReason` (core src/infer_stats.h), the `reason` label of
/// `nv_inference_request_failure`. The scheduler records it; the metrics exporter renders it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureReason {
    /// Refused before execution: queue full, queue timeout, admission.
    Rejected,
    /// Cancelled by the client or by the server (deadline, shutdown) before it ran.
    Canceled,
    /// The backend (ONNX Runtime) failed executing it.
    Backend,
    /// Anything else (validation after enqueue, internal errors).
    #[default]
    Other,
}

impl FailureReason {
    /// All reasons, in the order Tern exports them; every model exports all four, zero or not.
    pub const ALL: [FailureReason; 4] =
        [FailureReason::Other, FailureReason::Backend, FailureReason::Canceled, FailureReason::Rejected];

    /// The label value Triton uses: the enumerator's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureReason::Rejected => "REJECTED",
            FailureReason::Canceled => "CANCELED",
            FailureReason::Backend => "BACKEND",
            FailureReason::Other => "OTHER",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
