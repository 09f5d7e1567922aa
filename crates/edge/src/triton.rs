//! The part of Triton's GRPCInferenceService that tern-node and tern-router answer alike:
//! ServerLive, ServerMetadata (name, version, [`EXTENSIONS`]) and the RPCs neither implements,
//! which answer UNIMPLEMENTED naming the RPC ([`triton_common_rpcs!`]).

use std::pin::Pin;

pub use tern_proto::inference as pb;
pub use tonic;

/// Extensions Tern really implements (ServerMetadata lists only these); the router serves
/// those of its nodes, since it forwards to them.
pub const EXTENSIONS: &[&str] =
    &["classification", "model_configuration", "model_repository", "schedule_policy", "statistics"];

/// The response stream of ModelStreamInfer.
pub type StreamInferStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::ModelStreamInferResponse, tonic::Status>> + Send>>;

/// ServerMetadata's answer for a server named `name` (`--server-name`).
pub fn server_metadata(name: &str) -> pb::ServerMetadataResponse {
    pb::ServerMetadataResponse {
        name: name.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        extensions: EXTENSIONS.iter().map(|s| s.to_string()).collect(),
    }
}

/// ModelReady's answer: `ready(name, version)`, asked only for a model the caller may see. One
/// the token may not see answers as one that does not exist (not PERMISSION_DENIED, which would
/// say the name is worth trying with another token).
pub fn model_ready(
    req: tonic::Request<pb::ModelReadyRequest>,
    ready: impl FnOnce(&str, &str) -> bool,
) -> Result<tonic::Response<pb::ModelReadyResponse>, tonic::Status> {
    let visible = crate::may_see_model(crate::principal(&req), &req.get_ref().name);
    let req = req.into_inner();
    let ready = visible && ready(&req.name, &req.version);
    Ok(tonic::Response::new(pb::ModelReadyResponse { ready }))
}

/// UNIMPLEMENTED for `rpc`: "`rpc` is not implemented by `by`".
pub fn unimplemented<T>(rpc: &str, by: &str) -> Result<tonic::Response<T>, tonic::Status> {
    Err(tonic::Status::unimplemented(format!("{rpc} is not implemented by {by}")))
}

/// The GRPCInferenceService methods node and router answer alike, for use inside
/// `#[tonic::async_trait] impl GrpcInferenceService for ...`: ServerLive (live while the process
/// serves at all), ServerMetadata ([`server_metadata`] of the server name at `self.$field...`),
/// and those Tern does not implement (shared memory, trace and log settings), each answering
/// [`unimplemented`] with `by` ("the Tern router"). Written in the form async_trait gives trait
/// methods, since the attribute runs before this macro expands.
#[macro_export]
macro_rules! triton_common_rpcs {
    ($by:expr, server_name: $($field:ident).+) => {
        $crate::triton_common_rpcs!(@fn server_live ServerLiveRequest ServerLiveResponse, _this =>
            ::std::result::Result::Ok($crate::triton::tonic::Response::new(
                $crate::triton::pb::ServerLiveResponse { live: true },
            ))
        );
        $crate::triton_common_rpcs!(@fn server_metadata ServerMetadataRequest ServerMetadataResponse, this =>
            ::std::result::Result::Ok($crate::triton::tonic::Response::new(
                $crate::triton::server_metadata(&this $(.$field)+),
            ))
        );
        $crate::triton_common_rpcs!(@each $by;
            system_shared_memory_status SystemSharedMemoryStatus
                SystemSharedMemoryStatusRequest SystemSharedMemoryStatusResponse;
            system_shared_memory_register SystemSharedMemoryRegister
                SystemSharedMemoryRegisterRequest SystemSharedMemoryRegisterResponse;
            system_shared_memory_unregister SystemSharedMemoryUnregister
                SystemSharedMemoryUnregisterRequest SystemSharedMemoryUnregisterResponse;
            cuda_shared_memory_status CudaSharedMemoryStatus
                CudaSharedMemoryStatusRequest CudaSharedMemoryStatusResponse;
            cuda_shared_memory_register CudaSharedMemoryRegister
                CudaSharedMemoryRegisterRequest CudaSharedMemoryRegisterResponse;
            cuda_shared_memory_unregister CudaSharedMemoryUnregister
                CudaSharedMemoryUnregisterRequest CudaSharedMemoryUnregisterResponse;
            trace_setting TraceSetting TraceSettingRequest TraceSettingResponse;
            log_settings LogSettings LogSettingsRequest LogSettingsResponse;
        );
    };
    (@each $by:expr; $($method:ident $rpc:ident $req:ident $resp:ident;)*) => {
        $(
            $crate::triton_common_rpcs!(@fn $method $req $resp, _this =>
                $crate::triton::unimplemented(stringify!($rpc), $by)
            );
        )*
    };
    // One trait method answering `$answer` at once, with `self` bound to `$this`.
    (@fn $method:ident $req:ident $resp:ident, $this:ident => $answer:expr) => {
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            _request: $crate::triton::tonic::Request<$crate::triton::pb::$req>,
        ) -> ::std::pin::Pin<
            ::std::boxed::Box<
                dyn ::std::future::Future<
                        Output = ::std::result::Result<
                            $crate::triton::tonic::Response<$crate::triton::pb::$resp>,
                            $crate::triton::tonic::Status,
                        >,
                    > + ::std::marker::Send
                    + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            let $this = self;
            ::std::boxed::Box::pin(::std::future::ready($answer))
        }
    };
}

/// The responses of one inference request, in order: one for a plain model; zero or more for a
/// decoupled model, the last carrying the `triton_final_response` parameter set to true.
pub type InferResponses =
    Pin<Box<dyn futures::Stream<Item = Result<pb::ModelInferResponse, tonic::Status>> + Send>>;

/// Runs one request as ModelStreamInfer runs each of its requests, without a gRPC stream around
/// it: what the HTTP generate routes (`/v2/models/{m}/generate`, `/generate_stream`) call on the
/// node (its models, decoupled ones included) and on the router (which forwards to a node).
/// `caller` is the principal the auth layer admitted; the implementation authorizes the model.
pub trait StreamOne: Send + Sync + 'static {
    fn stream_one(
        &self,
        request: pb::ModelInferRequest,
        metadata: tonic::metadata::MetadataMap,
        caller: Option<crate::Principal>,
    ) -> InferResponses;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_unimplemented_answers() {
        let metadata = server_metadata("triton");
        assert_eq!(metadata.name, "triton");
        assert_eq!(metadata.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(metadata.extensions, EXTENSIONS);
        let status = unimplemented::<()>("TraceSetting", "the Tern router")
            .err()
            .map(|s| (s.code(), s.message().to_owned()));
        assert_eq!(
            status,
            Some((
                tonic::Code::Unimplemented,
                "TraceSetting is not implemented by the Tern router".to_owned()
            ))
        );
    }
}
