//! Triton server flags a Triton deployment commonly passes that have no Tern counterpart of the
//! same name (issue 22, item 5). Each is either acted on, accepted with a one-line warning
//! naming what Tern does instead, or refused with the reason, where accepting it would mislead
//! (a log file that never fills, an API restriction that would not restrict). Names and value
//! forms are Triton's (server src/command_line_parser.cc).

use clap::Args;

/// Triton's flags, flattened into tern-node's (and `tern serve`'s) command line.
#[derive(Debug, Clone, Default, Args)]
pub struct TritonFlags {
    /// Triton: write the log to a file. Refused: Tern logs to stderr only.
    #[arg(long, value_name = "PATH", hide = true)]
    pub log_file: Option<String>,

    /// Triton: turn info logging on or off. Accepted; Tern's level comes from RUST_LOG and
    /// --log-verbose.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", hide = true)]
    pub log_info: Option<bool>,

    /// Triton: turn warning logging on or off. Accepted, as --log-info.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", hide = true)]
    pub log_warning: Option<bool>,

    /// Triton: turn error logging on or off. Accepted, as --log-info.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", hide = true)]
    pub log_error: Option<bool>,

    /// Triton: `<backend>,<setting>=<value>` for a backend. Accepted with a warning: Tern's one
    /// backend (ONNX Runtime) takes its settings from each model's config.pbtxt.
    #[arg(long, value_name = "BACKEND,KEY=VALUE", hide = true)]
    pub backend_config: Vec<String>,

    /// Triton: where backend libraries live. Accepted with a warning: ONNX Runtime is built in.
    #[arg(long, value_name = "DIR", hide = true)]
    pub backend_directory: Option<String>,

    /// Triton: where repository agents live. Accepted with a warning: Tern has none.
    #[arg(long, value_name = "DIR", hide = true)]
    pub repoagent_directory: Option<String>,

    /// Triton: pinned host memory pool size. Accepted with a warning: Tern keeps no pool.
    #[arg(long, value_name = "BYTES", hide = true)]
    pub pinned_memory_pool_byte_size: Option<u64>,

    /// Triton: `<GPU>:<bytes>` CUDA memory pool. Accepted with a warning: Tern keeps no pool.
    #[arg(long, value_name = "GPU:BYTES", hide = true)]
    pub cuda_memory_pool_byte_size: Vec<String>,

    /// Triton: `off` or `execution_count`. `off` is what Tern does; a rate limiter is refused.
    #[arg(long, value_name = "MODE", hide = true)]
    pub rate_limit: Option<String>,

    /// Triton: retries of a failed model load. Accepted with a warning: Tern loads once.
    #[arg(long, value_name = "N", hide = true)]
    pub model_load_retry_count: Option<u64>,

    /// Triton: threads of its buffer manager. Accepted with a warning: Tern has none.
    #[arg(long, value_name = "N", hide = true)]
    pub buffer_manager_thread_count: Option<u64>,

    /// Triton: the lowest CUDA compute capability it uses. Accepted with a warning.
    #[arg(long, value_name = "CC", hide = true)]
    pub min_supported_compute_capability: Option<f64>,

    /// Triton's gRPC keepalive settings. Accepted with a warning: Tern's gRPC server keeps
    /// hyper's HTTP/2 defaults.
    #[arg(long, value_name = "MS", hide = true)]
    pub grpc_keepalive_time: Option<u64>,
    #[arg(long, value_name = "MS", hide = true)]
    pub grpc_keepalive_timeout: Option<u64>,
    #[arg(long, value_name = "BOOL", hide = true)]
    pub grpc_keepalive_permit_without_calls: Option<bool>,
    #[arg(long, value_name = "N", hide = true)]
    pub grpc_http2_max_pings_without_data: Option<u64>,
    #[arg(long, value_name = "MS", hide = true)]
    pub grpc_http2_min_recv_ping_interval_without_data: Option<u64>,
    #[arg(long, value_name = "N", hide = true)]
    pub grpc_http2_max_ping_strikes: Option<u64>,

    /// Exit when a model fails to load at start (Triton's `--exit-on-error`). Tern's default is
    /// to keep serving the models that loaded (Triton's `--exit-on-error=false`).
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub exit_on_error: bool,

    /// Triton: turn off auto-complete of model configs; the same as --strict-model-config=true.
    #[arg(long, hide = true)]
    pub disable_auto_complete_config: bool,

    /// Triton: restrict gRPC protocols to requests carrying a header. Refused: accepting it
    /// without enforcing it would leave the APIs open.
    #[arg(long, value_name = "PROTOCOLS:KEY=VALUE", hide = true)]
    pub grpc_restricted_protocol: Vec<String>,

    /// Triton: restrict HTTP APIs to requests carrying a header. Refused, as
    /// --grpc-restricted-protocol.
    #[arg(long, value_name = "APIS:KEY=VALUE", hide = true)]
    pub http_restricted_api: Vec<String>,
}

impl TritonFlags {
    /// Refuses the flags Tern cannot honour; the warnings to log for the ones it accepts.
    pub fn check(&self) -> Result<Vec<String>, String> {
        if let Some(path) = &self.log_file {
            return Err(format!(
                "--log-file {path}: Tern writes its log to stderr only; redirect it (2>>{path}) or \
                 let the process manager collect it"
            ));
        }
        for (flag, values) in [
            ("--grpc-restricted-protocol", &self.grpc_restricted_protocol),
            ("--http-restricted-api", &self.http_restricted_api),
        ] {
            if let Some(value) = values.first() {
                return Err(format!(
                    "{flag} {value}: not supported; restrict APIs with --auth-token-file (bearer \
                     tokens with per-token groups and models) instead"
                ));
            }
        }
        if let Some(mode) = self.rate_limit.as_deref().filter(|m| *m != "off") {
            return Err(format!(
                "--rate-limit={mode}: Tern has no rate limiter; each model's instance_group count \
                 bounds its concurrent executions (use --rate-limit=off or leave it out)"
            ));
        }
        let mut warnings = Vec::new();
        for (flag, given) in [
            ("--model-load-retry-count", self.model_load_retry_count.is_some()),
            ("--buffer-manager-thread-count", self.buffer_manager_thread_count.is_some()),
            ("--min-supported-compute-capability", self.min_supported_compute_capability.is_some()),
        ] {
            if given {
                warnings
                    .push(format!("{flag} is accepted for Triton compatibility and has no effect in Tern"));
            }
        }
        let keepalive = [
            self.grpc_keepalive_time.is_some(),
            self.grpc_keepalive_timeout.is_some(),
            self.grpc_keepalive_permit_without_calls.is_some(),
            self.grpc_http2_max_pings_without_data.is_some(),
            self.grpc_http2_min_recv_ping_interval_without_data.is_some(),
            self.grpc_http2_max_ping_strikes.is_some(),
        ];
        if keepalive.contains(&true) {
            warnings.push(
                "--grpc-keepalive-* / --grpc-http2-* ping settings are ignored: Tern's gRPC server keeps \
                 hyper's HTTP/2 defaults"
                    .into(),
            );
        }
        for (flag, value) in [
            ("--log-info", self.log_info),
            ("--log-warning", self.log_warning),
            ("--log-error", self.log_error),
        ] {
            if let Some(value) = value {
                warnings.push(format!(
                    "{flag}={value} is accepted for Triton compatibility and has no effect: Tern's log \
                     level comes from RUST_LOG and --log-verbose"
                ));
            }
        }
        for setting in &self.backend_config {
            // Triton's form: `<backend>,<setting>=<value>`, or `<setting>=<value>` for all backends.
            let (backend, pair) = setting.split_once(',').unwrap_or(("", setting));
            if pair.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                return Err(format!(
                    "--backend-config option format is '<backend name>,<setting>=<value>'. Got {setting}"
                ));
            }
            let backend = if backend.is_empty() { "every backend" } else { backend };
            warnings.push(format!(
                "--backend-config {setting} ({backend}) is ignored: Tern's ONNX Runtime backend takes \
                 its settings from each model's config.pbtxt (parameters, optimization, instance_group)"
            ));
        }
        for (flag, given) in [
            ("--backend-directory", self.backend_directory.is_some()),
            ("--repoagent-directory", self.repoagent_directory.is_some()),
        ] {
            if given {
                warnings.push(format!(
                    "{flag} is ignored: Tern's backend (ONNX Runtime, --onnxruntime-lib) is built in \
                     and it has no repository agents"
                ));
            }
        }
        if self.pinned_memory_pool_byte_size.is_some() || !self.cuda_memory_pool_byte_size.is_empty() {
            warnings.push(
                "--pinned-memory-pool-byte-size / --cuda-memory-pool-byte-size are ignored: Tern keeps \
                 no memory pools (ONNX Runtime allocates per session)"
                    .into(),
            );
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::Config;

    fn check(args: &[&str]) -> Result<Vec<String>, String> {
        let mut argv = vec!["tern-node", "--model-repository", "/tmp"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).map_err(|e| e.to_string())?.triton.check()
    }

    #[test]
    fn accepted_flags_warn_once_each() -> Result<(), String> {
        assert_eq!(check(&[])?, Vec::<String>::new());
        let warnings = check(&[
            "--log-info=false",
            "--log-warning",
            "--backend-config=onnxruntime,default-max-batch-size=4",
            "--backend-config",
            "default-max-batch-size=8",
            "--backend-directory",
            "/opt/tritonserver/backends",
            "--pinned-memory-pool-byte-size=268435456",
            "--cuda-memory-pool-byte-size",
            "0:67108864",
        ])?;
        assert_eq!(warnings.len(), 6, "{warnings:#?}");
        let more = check(&[
            "--rate-limit=off",
            "--model-load-retry-count=3",
            "--grpc-keepalive-time=7200000",
            "--grpc-keepalive-timeout",
            "20000",
        ])?;
        assert_eq!(more.len(), 2, "{more:#?}");
        assert!(more[1].contains("hyper's HTTP/2 defaults"), "{}", more[1]);
        assert!(warnings[0].starts_with("--log-info=false is accepted"), "{}", warnings[0]);
        assert!(warnings[2].contains("(onnxruntime) is ignored"), "{}", warnings[2]);
        assert!(warnings[3].contains("(every backend)"), "{}", warnings[3]);
        Ok(())
    }

    #[test]
    fn misleading_flags_are_refused_with_the_reason() {
        for (args, reason) in [
            (&["--log-file", "/var/log/triton.log"][..], "Tern writes its log to stderr only"),
            (&["--grpc-restricted-protocol=model-repository:admin-key=secret"], "--auth-token-file"),
            (&["--http-restricted-api", "shared-memory:k=v"], "not supported"),
            (&["--backend-config", "onnxruntime"], "option format is '<backend name>,<setting>=<value>'"),
            (&["--rate-limit=execution_count"], "Tern has no rate limiter"),
        ] {
            let got = check(args).expect_err("refused");
            assert!(got.contains(reason), "{args:?}: {got}");
        }
    }

    #[test]
    fn exit_on_error_and_disable_auto_complete_parse_as_triton_writes_them() -> Result<(), String> {
        let parse = |args: &[&str]| {
            let mut argv = vec!["tern-node", "--model-repository", "/tmp"];
            argv.extend_from_slice(args);
            Config::try_parse_from(argv).map_err(|e| e.to_string())
        };
        assert!(!parse(&[])?.triton.exit_on_error, "Tern keeps serving by default");
        assert!(parse(&["--exit-on-error"])?.triton.exit_on_error);
        assert!(parse(&["--exit-on-error=true"])?.triton.exit_on_error);
        assert!(!parse(&["--exit-on-error", "false"])?.triton.exit_on_error);
        assert!(parse(&["--disable-auto-complete-config"])?.strict_model_config());
        assert!(!parse(&[])?.strict_model_config());
        Ok(())
    }
}
