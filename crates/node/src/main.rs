//! The `tern-node` binary: parse and validate flags, set up logging, load ONNX Runtime, bind,
//! and serve until SIGTERM/SIGINT ([`tern_edge::main!`] with tern-node's configuration).

use clap::Parser;

fn main() -> std::process::ExitCode {
    tern_edge::main!(tern_node::Config::parse())
}
