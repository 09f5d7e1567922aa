//! The part of Triton's GRPCInferenceService that tern-node and tern-router answer alike:
//! ServerLive, ServerMetadata (name, version, [`EXTENSIONS`]), the shared-memory RPCs over the
//! server's registry of client regions ([`ClientShmArgs`], `tern_core::shm`), and the RPCs neither
//! implements, which answer UNIMPLEMENTED naming the RPC ([`triton_common_rpcs!`]).

use std::pin::Pin;

pub use tern_proto::inference as pb;
pub use tonic;

/// Extensions Tern really implements (ServerMetadata lists only these); the router serves
/// those of its nodes, since it forwards to them.
/// (`system_shared_memory` is listed as Triton lists it, whether or not `--allow-client-shm`
/// lets clients register regions.)
pub const EXTENSIONS: &[&str] = &[
    "classification",
    "sequence",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "binary_tensor_data",
    "statistics",
    "trace",
    "logging",
];

/// RepositoryModelUnload's `unload_dependents` parameter, read as Triton's gRPC front end reads
/// it (server src/grpc/grpc_server.cc, RepositoryModelUnload): a bool, else INVALID_ARGUMENT in
/// its words; other parameters are ignored.
pub fn unload_dependents(
    parameters: &std::collections::HashMap<String, pb::ModelRepositoryParameter>,
) -> Result<bool, tonic::Status> {
    use pb::model_repository_parameter::ParameterChoice as P;
    match parameters.get("unload_dependents").map(|p| &p.parameter_choice) {
        None => Ok(false),
        Some(Some(P::BoolParam(b))) => Ok(*b),
        Some(_) => Err(tonic::Status::invalid_argument(
            "invalid value type for 'unload_dependents' parameter, expected bool_param.",
        )),
    }
}

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

pub use tern_core::shm::{CLIENT_SHM_DISABLED, SystemShm};

/// [`CLIENT_SHM_DISABLED`] as gRPC status: Triton maps UNSUPPORTED to UNIMPLEMENTED (server
/// src/grpc/grpc_utils.cc `GrpcStatusUtil::CodeToStatus`; HTTP 501 by `HttpCodeFromError`).
/// Triton's GPU build (the released container, with or without a GPU present) answers CUDA
/// registration so too; only a CPU-only build says "GPUs not supported" instead.
pub fn client_shm_disabled() -> tonic::Status {
    tonic::Status::unimplemented(CLIENT_SHM_DISABLED)
}

/// Triton's `--allow-client-shm` (server src/command_line_parser.cc, default false), shared by
/// tern-node, tern-router and `tern serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientShmArgs {
    /// Allow clients to register system shared-memory regions (objects in /dev/shm) and send
    /// and receive tensors through them (Triton's flag).
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub allow_client_shm: bool,

    /// A registry to use instead of a new one: `tern serve`'s router and node share one, so
    /// a region registered through either serves both.
    #[arg(skip)]
    pub shared: Option<std::sync::Arc<SystemShm>>,
}

/// SystemSharedMemoryRegister on `shm`, logged at verbose level 1 as Triton logs it.
pub fn register_system_shm(
    shm: &SystemShm,
    r: &pb::SystemSharedMemoryRegisterRequest,
) -> Result<(), tonic::Status> {
    shm.register(&r.name, &r.key, r.offset, r.byte_size)?;
    tracing::debug!(
        region = %r.name, key = %r.key, offset = r.offset, byte_size = r.byte_size,
        "registered system shared memory region"
    );
    Ok(())
}

impl ClientShmArgs {
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// The server's registry of client shared-memory regions.
    pub fn registry(&self) -> std::sync::Arc<SystemShm> {
        self.shared.clone().unwrap_or_else(|| std::sync::Arc::new(SystemShm::new(self.allow_client_shm)))
    }
}

// === trace and log settings ===

/// TraceSetting as Triton answers it (server src/grpc/grpc_server.cc `RegisterTrace`): applies
/// the request's changes to `model`'s or the global settings, answers the settings in force.
/// `model_ready` says whether a named model is served (else INVALID_ARGUMENT, as Triton).
pub fn trace_setting(
    req: pb::TraceSettingRequest,
    model_ready: impl FnOnce(&str) -> bool,
) -> Result<tonic::Response<pb::TraceSettingResponse>, tonic::Status> {
    use tern_telemetry::settings::{TraceUpdate, update_trace_settings};
    use tonic::Status;
    let model = req.model_name.as_str();
    if !model.is_empty() && !model_ready(model) {
        return Err(Status::invalid_argument(format!("Request for unknown model : {model}")));
    }
    let mut update = TraceUpdate::default();
    let values = |key: &str| req.settings.get(key).map(|v| v.value.as_slice());
    if values("trace_file").is_some() {
        // Triton: UNSUPPORTED (gRPC UNIMPLEMENTED).
        return Err(Status::unimplemented("trace file location can not be updated through network protocol"));
    }
    if let Some(levels) = values("trace_level") {
        if levels.is_empty() {
            update.level_on = Some(None);
        } else if levels.iter().any(|l| l == "OFF") {
            if levels.len() != 1 {
                return Err(Status::invalid_argument("Expect only one trace level 'OFF' is specified"));
            }
            update.level_on = Some(Some(false));
        } else if levels.iter().any(|l| l == "TIMESTAMPS" || l == "TENSORS") {
            // Tern's spans carry timestamps; TENSORS adds no tensor data to them.
            update.level_on = Some(Some(true));
        }
    }
    let one = |key: &str| -> Result<Option<Option<i64>>, Status> {
        match values(key) {
            None => Ok(None),
            Some([]) => Ok(Some(None)),
            Some([v]) => v
                .trim()
                .parse::<i64>()
                .map(|n| Some(Some(n)))
                .map_err(|_| Status::invalid_argument(format!("Unable to parse '{key}', got: {v}"))),
            Some(_) => Err(Status::invalid_argument(format!("expect only 1 value for '{key}'"))),
        }
    };
    let out_of_range = |key: &str, min: i64, max: i64, got: i64| {
        Status::invalid_argument(format!(
            "Unable to parse '{key}', value is out of range [ {min}, {max} ], got: {got}"
        ))
    };
    if let Some(rate) = one("trace_rate")? {
        update.rate = Some(match rate {
            None => None,
            // Rate 0 would trace nothing while the level says otherwise: 1 is the least.
            Some(r) => Some(
                u32::try_from(r)
                    .ok()
                    .filter(|r| *r > 0)
                    .ok_or_else(|| out_of_range("trace_rate", 1, i64::from(u32::MAX), r))?,
            ),
        });
    }
    if let Some(count) = one("trace_count")? {
        update.count = Some(match count {
            None => None,
            Some(c) if c < -1 => {
                return Err(Status::invalid_argument(format!(
                    "Unable to parse 'trace_count'. Expecting value >= -1, got: {c}"
                )));
            }
            Some(c) => {
                Some(i32::try_from(c).map_err(|_| out_of_range("trace_count", -1, i64::from(i32::MAX), c))?)
            }
        });
    }
    // log_frequency belongs to Triton's file mode; parsed as Triton parses it, then unused.
    if let Some(Some(f)) = one("log_frequency")?
        && u32::try_from(f).is_err()
    {
        return Err(out_of_range("log_frequency", 0, i64::from(u32::MAX), f));
    }
    let now = update_trace_settings(model, update).map_err(Status::resource_exhausted)?;
    let value = |v: &str| pb::trace_setting_response::SettingValue { value: vec![v.to_string()] };
    let settings = std::collections::HashMap::from([
        ("trace_level".to_string(), value(if now.level_on { "TIMESTAMPS" } else { "OFF" })),
        ("trace_rate".to_string(), value(&now.rate.to_string())),
        ("trace_count".to_string(), value(&now.count.to_string())),
        // OpenTelemetry mode: Triton leaves out trace_file and log_frequency.
        ("trace_mode".to_string(), value("opentelemetry")),
    ]);
    Ok(tonic::Response::new(pb::TraceSettingResponse { settings }))
}

/// LogSettings as Triton answers it (server src/grpc/grpc_server.cc `RegisterLogging`).
pub fn log_settings(
    req: pb::LogSettingsRequest,
) -> Result<tonic::Response<pb::LogSettingsResponse>, tonic::Status> {
    use pb::log_settings_request::setting_value::ParameterChoice as P;
    use tern_telemetry::settings::{LogUpdate, update_log_settings};
    use tonic::Status;
    if req.settings.contains_key("log_file") {
        return Err(Status::unimplemented("log file location can not be updated through network protocol"));
    }
    let get = |key: &str| req.settings.get(key).map(|v| v.parameter_choice.clone());
    let boolean = |key: &str| match get(key) {
        None => Ok(None),
        Some(Some(P::BoolParam(b))) => Ok(Some(b)),
        Some(_) => Err(Status::invalid_argument(format!("expect boolean for '{key}'"))),
    };
    let update = LogUpdate {
        info: boolean("log_info")?,
        warning: boolean("log_warning")?,
        error: boolean("log_error")?,
        verbose_level: match get("log_verbose_level") {
            None => None,
            Some(Some(P::Uint32Param(n))) => Some(n),
            Some(_) => return Err(Status::invalid_argument("expect int32 for 'log_verbose_level'")),
        },
        format: match get("log_format") {
            None => None,
            Some(Some(P::StringParam(s))) => Some(s),
            Some(_) => return Err(Status::invalid_argument("expect string for 'log_format'")),
        },
    };
    let now = update_log_settings(update).map_err(Status::invalid_argument)?;
    use pb::log_settings_response::{SettingValue, setting_value::ParameterChoice as R};
    let value = |choice| SettingValue { parameter_choice: Some(choice) };
    let settings = std::collections::HashMap::from([
        // Logs go to stderr: Tern writes no log file.
        ("log_file".to_string(), value(R::StringParam(String::new()))),
        ("log_info".to_string(), value(R::BoolParam(now.info))),
        ("log_warning".to_string(), value(R::BoolParam(now.warning))),
        ("log_error".to_string(), value(R::BoolParam(now.error))),
        ("log_verbose_level".to_string(), value(R::Uint32Param(now.verbose_level))),
        ("log_format".to_string(), value(R::StringParam(now.format.to_string()))),
    ]);
    Ok(tonic::Response::new(pb::LogSettingsResponse { settings }))
}

/// The GRPCInferenceService methods node and router answer alike, for use inside
/// `#[tonic::async_trait] impl GrpcInferenceService for ...`: ServerLive (live while the process
/// serves at all), ServerMetadata ([`server_metadata`] of the server name at `self.$field...`),
/// the shared-memory RPCs (from the [`SystemShm`] at `self.$shm...`) and LogSettings
/// ([`log_settings`]); TraceSetting needs the server's models ([`trace_setting`]). Written in the form async_trait gives trait
/// methods, since the attribute runs before this macro expands.
#[macro_export]
macro_rules! triton_common_rpcs {
    ($by:expr, server_name: $($field:ident).+, shm: $($shm:ident).+) => {
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
        // Shared memory from the server's registry ([`SystemShm`]).
        $crate::triton_common_rpcs!(@fn system_shared_memory_status
            SystemSharedMemoryStatusRequest SystemSharedMemoryStatusResponse, this, request =>
            this $(.$shm)+.status(&request.get_ref().name).map($crate::triton::tonic::Response::new)
        );
        $crate::triton_common_rpcs!(@fn cuda_shared_memory_status
            CudaSharedMemoryStatusRequest CudaSharedMemoryStatusResponse, this, request =>
            this $(.$shm)+.cuda_status(&request.get_ref().name).map($crate::triton::tonic::Response::new)
        );
        $crate::triton_common_rpcs!(@fn system_shared_memory_register
            SystemSharedMemoryRegisterRequest SystemSharedMemoryRegisterResponse, this, request => {
            $crate::triton::register_system_shm(&this $(.$shm)+, request.get_ref())
                .map(|()| $crate::triton::tonic::Response::new(::std::default::Default::default()))
        });
        $crate::triton_common_rpcs!(@fn system_shared_memory_unregister
            SystemSharedMemoryUnregisterRequest SystemSharedMemoryUnregisterResponse, this, request =>
            this $(.$shm)+.unregister(&request.get_ref().name)
                .map(|()| $crate::triton::tonic::Response::new(::std::default::Default::default()))
        );
        $crate::triton_common_rpcs!(@fn cuda_shared_memory_register
            CudaSharedMemoryRegisterRequest CudaSharedMemoryRegisterResponse, this, request =>
            this $(.$shm)+.cuda_register(&request.get_ref().name)
                .map(|()| $crate::triton::tonic::Response::new(::std::default::Default::default()))
        );
        $crate::triton_common_rpcs!(@fn cuda_shared_memory_unregister
            CudaSharedMemoryUnregisterRequest CudaSharedMemoryUnregisterResponse, this, _request =>
            this $(.$shm)+.cuda_unregister()
                .map(|()| $crate::triton::tonic::Response::new(::std::default::Default::default()))
        );
        $crate::triton_common_rpcs!(@fn log_settings LogSettingsRequest LogSettingsResponse, _this, request =>
            $crate::triton::log_settings(request.into_inner())
        );
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

    /// Triton's gRPC front end: a bool parameter, false without it, INVALID_ARGUMENT in its
    /// words for any other type.
    #[test]
    fn unload_dependents_is_a_bool_parameter() {
        use pb::model_repository_parameter::ParameterChoice as P;
        let with = |choice: P| {
            std::collections::HashMap::from([(
                "unload_dependents".to_string(),
                pb::ModelRepositoryParameter { parameter_choice: Some(choice) },
            )])
        };
        assert_eq!(unload_dependents(&Default::default()).ok(), Some(false));
        assert_eq!(unload_dependents(&with(P::BoolParam(true))).ok(), Some(true));
        let refused = unload_dependents(&with(P::StringParam("true".into()))).expect_err("a string");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            refused.message(),
            "invalid value type for 'unload_dependents' parameter, expected bool_param."
        );
    }

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
    fn allow_client_shm_parses_as_triton() {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            shm: ClientShmArgs,
        }
        let parse = |args: &[&str]| {
            Flags::try_parse_from(std::iter::once("tern").chain(args.iter().copied()))
                .map(|f| f.shm.registry().enabled())
                .ok()
        };
        assert_eq!(parse(&[]), Some(false));
        assert_eq!(parse(&["--allow-client-shm=false"]), Some(false));
        for on in [&["--allow-client-shm=true"][..], &["--allow-client-shm"], &["--allow-client-shm", "true"]]
        {
            assert_eq!(parse(on), Some(true), "{on:?}");
        }
        let disabled = client_shm_disabled();
        assert_eq!((disabled.code(), disabled.message()), (tonic::Code::Unimplemented, CLIENT_SHM_DISABLED));
    }
}
