//! The engine's tests on real ONNX Runtime sessions, in one test binary (fewer links in CI).

#[path = "../common/mod.rs"]
mod common;

mod engine;
mod folder;
