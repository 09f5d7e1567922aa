//! The lifecycle's state machine, run on real tokio runtimes against real repositories on disk,
//! with [`fake::FakeFactory`] in place of a runtime.

mod ensemble;
pub mod fake;
mod generative;
mod state;
mod unknown_models;
