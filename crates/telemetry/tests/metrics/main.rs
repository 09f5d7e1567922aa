//! Metrics, exposition and deployment-file tests in one test binary (fewer links in CI);
//! `otlp.rs` stays alone: it installs the process's global tracer.

mod deploy;
mod gpu;
mod http;
