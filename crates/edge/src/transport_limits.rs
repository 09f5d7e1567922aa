//! Transport limits every Tern gRPC server applies (tern-node, tern-router, `tern serve`):
//! the flags, and the gRPC statuses for them. Every limit that is hit answers
//! RESOURCE_EXHAUSTED with a message naming the flag.
//!
//! - `--grpc-max-message-size`: tonic's decoding and encoding limits. tonic answers a message
//!   over the limit with OUT_OF_RANGE; gRPC's own servers (Triton's) answer RESOURCE_EXHAUSTED,
//!   which is what clients expect, so [`LimitsLayer`] rewrites that status (unary calls) and
//!   [`message_status`] does for messages of a stream.
//! - `--grpc-max-concurrent-streams`: the HTTP/2 setting (requests in flight per connection),
//!   [`DEFAULT_MAX_CONCURRENT_STREAMS`] unless set;
//! - `--grpc-http2-max-header-list-size`: bytes of headers (metadata) per request, refused with
//!   RESOURCE_EXHAUSTED by [`LimitsLayer`];
//! - `--grpc-max-connection-age-secs`: gRPC's MAX_CONNECTION_AGE (off unless set).

use std::task::{Context, Poll};

use futures::TryFutureExt;

/// The largest `--grpc-max-message-size`: gRPC's own bound (2 GiB - 1), Triton's default.
pub const MAX_MESSAGE_SIZE: usize = i32::MAX as usize;
/// The default message limit, 256 MiB. Triton's 2 GiB lets every connection's every stream
/// make the server hold 2 GiB before a byte is validated; real requests are far smaller (a
/// batch of 64 images of 3x224x224 FP32 is 38.5 MB, 8 of 3x1024x1024 is 100 MB) while tonic's
/// own 4 MiB is passed by a batch of 8 such images. Raise it with the flag for larger tensors.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;
/// The default HTTP/2 streams per connection. tonic sets none, so one connection could open
/// as many requests as it likes (each taking a task and up to a message's memory). 1024 is
/// well above what HTTP/2 servers allow by default (Go's net/http2 250, nginx 128) so that one
/// client multiplexing a deep asynchronous load (perf_analyzer --async, a router's connection
/// to a node) is not throttled; a client that wants more waits for a free stream, it is not
/// refused.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// hyper's default: 16 KiB of headers (names and values) per request.
pub const DEFAULT_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// The longest `--grpc-max-connection-age-secs`: 30 days.
pub const MAX_CONNECTION_AGE_SECS: u64 = 30 * 24 * 3600;

/// The transport limit flags of every Tern server.
#[derive(Debug, Clone, clap::Args)]
pub struct TransportLimits {
    /// Largest gRPC message received or sent, bytes (at most 2147483647, Triton's default). A
    /// request over it is refused with RESOURCE_EXHAUSTED before it is read; it bounds the
    /// memory one request can take.
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_SIZE, value_name = "BYTES")]
    pub grpc_max_message_size: usize,

    /// Most requests (HTTP/2 streams) one connection may have in flight; more wait in the
    /// client for a free stream.
    #[arg(long, default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS, value_name = "N")]
    pub grpc_max_concurrent_streams: u32,

    /// Largest HTTP/2 header list (request metadata) accepted, bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_HEADER_LIST_SIZE, value_name = "BYTES")]
    pub grpc_http2_max_header_list_size: u32,

    /// Close each client connection gracefully after this many seconds (gRPC's
    /// MAX_CONNECTION_AGE: GOAWAY, requests in flight finish, the client reconnects), so that
    /// clients behind a Kubernetes Service spread onto routers added by a scale-up. 0: never.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub grpc_max_connection_age_secs: u64,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            grpc_max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            grpc_max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            grpc_http2_max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE,
            grpc_max_connection_age_secs: 0,
        }
    }
}

impl TransportLimits {
    pub fn validate(&self) -> Result<(), crate::EdgeError> {
        if self.grpc_max_message_size == 0 || self.grpc_max_message_size > MAX_MESSAGE_SIZE {
            return Err(crate::EdgeError::Flags(format!(
                "--grpc-max-message-size must be between 1 and {MAX_MESSAGE_SIZE}"
            )));
        }
        if self.grpc_max_concurrent_streams == 0 {
            return Err(crate::EdgeError::Flags("--grpc-max-concurrent-streams must be at least 1".into()));
        }
        if self.grpc_http2_max_header_list_size < 1024 {
            return Err(crate::EdgeError::Flags(
                "--grpc-http2-max-header-list-size must be at least 1024".into(),
            ));
        }
        if self.grpc_max_connection_age_secs > MAX_CONNECTION_AGE_SECS {
            return Err(crate::EdgeError::Flags(format!(
                "--grpc-max-connection-age-secs must be at most {MAX_CONNECTION_AGE_SECS} (30 days); 0 means never"
            )));
        }
        Ok(())
    }

    /// The layer that words these limits as gRPC statuses.
    pub fn layer(&self) -> LimitsLayer {
        LimitsLayer { max_header_list_size: self.grpc_http2_max_header_list_size }
    }

    /// A server builder with the HTTP/2 settings of these limits.
    pub fn apply<L>(&self, builder: tonic::transport::Server<L>) -> tonic::transport::Server<L> {
        let builder = match self.grpc_max_connection_age_secs {
            0 => builder,
            secs => builder.max_connection_age(std::time::Duration::from_secs(secs)),
        };
        builder
            .max_concurrent_streams(Some(self.grpc_max_concurrent_streams))
            .http2_max_header_list_size(self.layer().http2_max_header_list_size())
            // Rapid reset (CVE-2023-44487): a connection whose client resets streams faster
            // than they are served gets GOAWAY(ENHANCE_YOUR_CALM). h2's default today; set here
            // so a dependency upgrade cannot change it (tests/python/test_abuse.py checks it).
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESET_STREAMS))
    }
}

/// Reset streams a connection may leave waiting to be accepted before it is cut off.
pub const MAX_PENDING_RESET_STREAMS: usize = 20;

/// tonic's refusal of a message over its decoding limit, as gRPC servers answer it:
/// RESOURCE_EXHAUSTED naming the flag. Other statuses pass unchanged.
pub fn message_status(status: tonic::Status) -> tonic::Status {
    let too_large = status.code() == tonic::Code::OutOfRange
        && status.message().starts_with("Error, decoded message length too large");
    if !too_large {
        return status;
    }
    // tonic says "Error, decoded message length too large: found N bytes, the limit is: M bytes".
    let detail = status.message().split_once(": ").map_or(status.message(), |(_, d)| d);
    tonic::Status::resource_exhausted(format!(
        "Received message larger than max ({detail}); the server's limit is --grpc-max-message-size"
    ))
}

/// The limits tonic and hyper cannot word as gRPC statuses, at the HTTP level:
/// - rewrites tonic's message-size refusal (see [`message_status`]) in the response headers of
///   unary calls, where tonic puts the status of a request it could not decode;
/// - refuses requests whose headers (metadata) are over `--grpc-http2-max-header-list-size`
///   with RESOURCE_EXHAUSTED. HTTP/2 itself is given twice that limit, so it resets (HTTP 431)
///   only headers too large to read at all.
#[derive(Debug, Clone, Copy)]
pub struct LimitsLayer {
    pub max_header_list_size: u32,
}

impl LimitsLayer {
    /// What the HTTP/2 server is told: room to read a header list over the limit and answer it.
    pub fn http2_max_header_list_size(&self) -> u32 {
        self.max_header_list_size.saturating_mul(2)
    }
}

impl<S> tower_layer::Layer<S> for LimitsLayer {
    type Service = LimitsService<S>;

    fn layer(&self, inner: S) -> LimitsService<S> {
        LimitsService { inner, max_header_list_size: self.max_header_list_size }
    }
}

/// See [`LimitsLayer`].
#[derive(Debug, Clone)]
pub struct LimitsService<S> {
    inner: S,
    max_header_list_size: u32,
}

type Rewrite<B> = fn(http::Response<B>) -> http::Response<B>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for LimitsService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = futures::future::Either<
        futures::future::MapOk<S::Future, Rewrite<ResBody>>,
        futures::future::Ready<Result<http::Response<ResBody>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let size = header_list_size(req.headers());
        if size > u64::from(self.max_header_list_size) {
            let status = tonic::Status::resource_exhausted(format!(
                "request headers (metadata) are {size} bytes, more than the limit of {} bytes \
                 (--grpc-http2-max-header-list-size)",
                self.max_header_list_size
            ));
            return futures::future::Either::Right(futures::future::ready(Ok(status.into_http())));
        }
        futures::future::Either::Left(
            self.inner.call(req).map_ok(rewrite_headers::<ResBody> as Rewrite<ResBody>),
        )
    }
}

/// A header list's size as HTTP/2 counts it (RFC 9113 6.5.2): name, value and 32 per field.
fn header_list_size(headers: &http::HeaderMap) -> u64 {
    headers.iter().map(|(name, value)| (name.as_str().len() + value.len() + 32) as u64).sum()
}

fn rewrite_headers<B>(mut response: http::Response<B>) -> http::Response<B> {
    let Some(status) = tonic::Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() != tonic::Code::OutOfRange {
        return response;
    }
    let rewritten = message_status(status);
    if rewritten.code() != tonic::Code::OutOfRange {
        let headers = response.headers_mut();
        headers.remove("grpc-status");
        headers.remove("grpc-message");
        headers.remove("grpc-status-details-bin");
        if rewritten.add_header(headers).is_err() {
            tracing::debug!("cannot encode a rewritten message-size status");
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_messages_become_resource_exhausted_naming_the_flag() {
        let tonic_says = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 2000000 bytes, the limit is: 1048576 bytes",
        );
        let status = message_status(tonic_says.clone());
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("found 2000000 bytes, the limit is: 1048576 bytes"));
        assert!(status.message().contains("--grpc-max-message-size"));

        let response: http::Response<()> = tonic_says.into_http();
        let rewritten = rewrite_headers(response);
        let status = tonic::Status::from_header_map(rewritten.headers());
        assert_eq!(status.as_ref().map(tonic::Status::code), Some(tonic::Code::ResourceExhausted));
        assert_eq!(rewritten.headers().get_all("grpc-status").iter().count(), 1);

        // Anything else passes as it is.
        let other = tonic::Status::out_of_range("version out of range");
        assert_eq!(message_status(other.clone()).code(), tonic::Code::OutOfRange);
        let untouched = rewrite_headers(other.into_http::<()>());
        let status = tonic::Status::from_header_map(untouched.headers());
        assert_eq!(status.map(|s| s.code()), Some(tonic::Code::OutOfRange));
        let ok = rewrite_headers(http::Response::new(()));
        assert!(ok.headers().is_empty());
    }

    #[tokio::test]
    async fn oversize_headers_are_resource_exhausted_naming_the_flag() {
        use tower_layer::Layer as _;
        use tower_service::Service as _;
        let layer = LimitsLayer { max_header_list_size: 200 };
        assert_eq!(layer.http2_max_header_list_size(), 400);
        let inner = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("served")))
        });
        let mut service = layer.layer(inner);
        let request =
            |value: &str| http::Request::builder().header("x-padding", value).body(()).unwrap_or_default();
        // 9 + 100 + 32 bytes: within the limit.
        let ok = service.call(request(&"a".repeat(100))).await;
        assert_eq!(ok.map(|r| r.into_body()).ok().as_deref(), Some("served"));
        let refused = service.call(request(&"a".repeat(200))).await;
        let status = refused.ok().and_then(|r| tonic::Status::from_header_map(r.headers()));
        let status = status.map(|s| (s.code(), s.message().to_owned()));
        assert!(
            status.as_ref().is_some_and(|(code, message)| *code == tonic::Code::ResourceExhausted
                && message.contains("241 bytes")
                && message.contains("--grpc-http2-max-header-list-size")),
            "{status:?}"
        );
    }

    #[test]
    fn flags_are_validated() {
        let ok = TransportLimits::default();
        assert!(ok.validate().is_ok());
        for bad in [
            TransportLimits { grpc_max_message_size: 0, ..ok.clone() },
            TransportLimits { grpc_max_message_size: MAX_MESSAGE_SIZE + 1, ..ok.clone() },
            TransportLimits { grpc_max_concurrent_streams: 0, ..ok.clone() },
            TransportLimits { grpc_http2_max_header_list_size: 10, ..ok.clone() },
            TransportLimits { grpc_max_connection_age_secs: MAX_CONNECTION_AGE_SECS + 1, ..ok.clone() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
