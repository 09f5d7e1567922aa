//! The integration tests that start real servers in this process, in one test binary: each
//! binary costs a full link of the node and router (with LTO in release), so CI builds one.
//! The tracing tests stay binaries of their own: each installs the process's global tracer.

mod batching;
mod client;
mod generate;
mod lifecycle;
mod node;
mod router_stream;
