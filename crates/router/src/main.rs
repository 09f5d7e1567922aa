//! The `tern-router` binary: parse and validate flags, set up logging, bind, and serve until
//! SIGTERM/SIGINT ([`tern_edge::main!`] with tern-router's configuration).

use clap::Parser;

fn main() -> std::process::ExitCode {
    tern_edge::main!(tern_router::Config::parse())
}
