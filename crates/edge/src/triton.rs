//! The part of Triton's GRPCInferenceService that tern-node and tern-router answer alike:
//! ServerLive, ServerMetadata (name, version, [`EXTENSIONS`]), the shared-memory RPCs as Triton
//! answers them with client shared memory off ([`ClientShmArgs`]), and the RPCs neither
//! implements, which answer UNIMPLEMENTED naming the RPC ([`triton_common_rpcs!`]).

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

// === client shared memory ===

/// Triton's refusal of shared-memory registration while `--allow-client-shm` is false (its
/// default since server PR #8721): src/common.h `kClientShmDisabledErrorStr`, raised as
/// TRITONSERVER_ERROR_UNSUPPORTED by SystemSharedMemoryRegister/Unregister and
/// CudaSharedMemoryRegister/Unregister (src/grpc/grpc_server.cc `CommonHandler::Register*`,
/// src/http_server.cc `HandleSystemSharedMemory` / `HandleCudaSharedMemory`).
pub const CLIENT_SHM_DISABLED: &str =
    "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable.";

/// [`CLIENT_SHM_DISABLED`] as gRPC status: Triton maps UNSUPPORTED to UNIMPLEMENTED (server
/// src/grpc/grpc_utils.cc `GrpcStatusUtil::CodeToStatus`; HTTP 501 by `HttpCodeFromError`).
/// Triton's GPU build (the released container, with or without a GPU present) answers CUDA
/// registration so too; only a CPU-only build says "GPUs not supported" instead.
pub fn client_shm_disabled() -> tonic::Status {
    tonic::Status::unimplemented(CLIENT_SHM_DISABLED)
}

/// Which shared-memory registry a status request asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShmKind {
    System,
    Cuda,
}

/// A status request answered with no region registered, as Triton's
/// `SharedMemoryManager::GetStatus` (server src/shared_memory_manager.cc) answers it, which
/// `--allow-client-shm=false` does not guard: every region (an empty list) for an empty name,
/// NOT_FOUND "Unable to find system|cuda shared memory region: 'NAME'" for a named one.
pub fn no_shm_region(kind: ShmKind, name: &str) -> Result<(), tonic::Status> {
    if name.is_empty() {
        return Ok(());
    }
    let kind = match kind {
        ShmKind::System => "system",
        ShmKind::Cuda => "cuda",
    };
    Err(tonic::Status::not_found(format!("Unable to find {kind} shared memory region: '{name}'")))
}

/// Triton's `--allow-client-shm` (server src/command_line_parser.cc, default false), shared by
/// tern-node, tern-router and `tern serve`. Tern serves no client shared memory yet, so true
/// is refused at start rather than accepted with every registration still refused.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientShmArgs {
    /// Allow clients to register shared-memory regions (Triton's flag). Only false is accepted:
    /// Tern does not serve client shared memory yet.
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub allow_client_shm: bool,
}

impl ClientShmArgs {
    /// Refuses `--allow-client-shm=true`.
    pub fn validate(&self) -> Result<(), String> {
        if self.allow_client_shm {
            return Err("--allow-client-shm=true: Tern does not serve client shared memory yet; \
                        leave the flag out (or false) and send tensors in the request"
                .into());
        }
        Ok(())
    }
}

/// The GRPCInferenceService methods node and router answer alike, for use inside
/// `#[tonic::async_trait] impl GrpcInferenceService for ...`: ServerLive (live while the process
/// serves at all), ServerMetadata ([`server_metadata`] of the server name at `self.$field...`),
/// the shared-memory RPCs ([`no_shm_region`], [`client_shm_disabled`]), and those Tern does not
/// implement (trace and log settings), each answering
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
        // Shared memory as Triton answers with --allow-client-shm=false, the only setting Tern
        // starts with ([`ClientShmArgs`]): status lists no region, the rest are refused.
        $crate::triton_common_rpcs!(@fn system_shared_memory_status
            SystemSharedMemoryStatusRequest SystemSharedMemoryStatusResponse, _this, request =>
            $crate::triton::no_shm_region($crate::triton::ShmKind::System, &request.get_ref().name)
                .map(|()| $crate::triton::tonic::Response::new(::std::default::Default::default()))
        );
        $crate::triton_common_rpcs!(@fn cuda_shared_memory_status
            CudaSharedMemoryStatusRequest CudaSharedMemoryStatusResponse, _this, request =>
            $crate::triton::no_shm_region($crate::triton::ShmKind::Cuda, &request.get_ref().name)
                .map(|()| $crate::triton::tonic::Response::new(::std::default::Default::default()))
        );
        $crate::triton_common_rpcs!(@disabled
            system_shared_memory_register SystemSharedMemoryRegisterRequest
                SystemSharedMemoryRegisterResponse;
            system_shared_memory_unregister SystemSharedMemoryUnregisterRequest
                SystemSharedMemoryUnregisterResponse;
            cuda_shared_memory_register CudaSharedMemoryRegisterRequest
                CudaSharedMemoryRegisterResponse;
            cuda_shared_memory_unregister CudaSharedMemoryUnregisterRequest
                CudaSharedMemoryUnregisterResponse;
        );
        $crate::triton_common_rpcs!(@each $by;
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
    (@disabled $($method:ident $req:ident $resp:ident;)*) => {
        $(
            $crate::triton_common_rpcs!(@fn $method $req $resp, _this =>
                ::std::result::Result::Err($crate::triton::client_shm_disabled())
            );
        )*
    };
    (@fn $method:ident $req:ident $resp:ident, $this:ident => $answer:expr) => {
        $crate::triton_common_rpcs!(@fn $method $req $resp, $this, _request => $answer);
    };
    // One trait method answering `$answer` at once, with `self` bound to `$this` and the
    // request to `$request`.
    (@fn $method:ident $req:ident $resp:ident, $this:ident, $request:ident => $answer:expr) => {
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            $request: $crate::triton::tonic::Request<$crate::triton::pb::$req>,
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

    #[test]
    fn shared_memory_answers_as_triton_with_client_shm_off() {
        let answer = |r: Result<(), tonic::Status>| r.err().map(|s| (s.code(), s.message().to_owned()));
        assert_eq!(answer(no_shm_region(ShmKind::System, "")), None, "status of every region: none");
        assert_eq!(answer(no_shm_region(ShmKind::Cuda, "")), None);
        assert_eq!(
            answer(no_shm_region(ShmKind::Cuda, "in0")),
            Some((tonic::Code::NotFound, "Unable to find cuda shared memory region: 'in0'".to_owned()))
        );
        assert_eq!(
            answer(no_shm_region(ShmKind::System, "in0")),
            Some((tonic::Code::NotFound, "Unable to find system shared memory region: 'in0'".to_owned()))
        );
        let disabled = client_shm_disabled();
        assert_eq!(disabled.code(), tonic::Code::Unimplemented);
        assert_eq!(
            disabled.message(),
            "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
        );
    }

    #[test]
    fn allow_client_shm_parses_as_triton_and_true_is_refused() {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            shm: ClientShmArgs,
        }
        let parse = |args: &[&str]| {
            Flags::try_parse_from(std::iter::once("tern").chain(args.iter().copied())).map(|f| f.shm)
        };
        assert!(parse(&[]).is_ok_and(|f| !f.allow_client_shm && f.validate().is_ok()));
        assert!(parse(&["--allow-client-shm=false"]).is_ok_and(|f| f.validate().is_ok()));
        for on in [&["--allow-client-shm=true"][..], &["--allow-client-shm"], &["--allow-client-shm", "true"]]
        {
            let refused = parse(on).map(|f| f.validate());
            assert!(
                matches!(&refused, Ok(Err(m)) if m.contains("Tern does not serve client shared memory yet")),
                "{on:?}: {refused:?}"
            );
        }
    }
}
