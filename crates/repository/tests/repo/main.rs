//! Repository tests in one test binary (fewer links in CI).

mod repository;
mod robustness;
