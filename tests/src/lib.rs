//! Test harness: starts a real tern-node process on port 0 and connects to it.
