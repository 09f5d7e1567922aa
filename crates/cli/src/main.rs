//! `tern`: the single-machine entry point and client commands.
//!
//! - `tern serve`: a router and a node in one process ([`serve`]).
//! - `tern cluster`: a router's view of its nodes ([`cluster`]).
//! - `tern crypt keygen|encrypt|decrypt`: encrypted model files at rest ([`model`]); `tern model`
//!   is its old name, kept as an alias for one release (it read as model management).
//! - `tern token new|hash`: bearer tokens and their token-file lines ([`token`]).
//! - Client commands toward any KServe v2 gRPC server (node, router, `tern serve`, Triton),
//!   on tern-client: `tern models`, `load`, `unload`, `stats`, `health` ([`manage`]),
//!   `tern infer` ([`infer`]) and `tern generate` ([`generate`]), with the connection flags and
//!   exit codes of [`remote`] (0 success, 1 server error, 2 usage, 3 cannot connect).

mod cluster;
mod commands;
mod generate;
mod infer;
mod manage;
mod model;
mod remote;
mod serve;
mod token;

use clap::Parser;
use commands::{Cli, Command};

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Serve(config) => tern_edge::main!(serve::Serve(*config)),
        Command::Cluster(args) => cluster::main(args),
        Command::Crypt { command } => model::main(command),
        Command::Token { command } => token::main(command),
        Command::Models(args) => manage::models(args),
        Command::Load(args) => manage::load(args),
        Command::Unload(args) => manage::unload(args),
        Command::Infer(args) => infer::infer(args),
        Command::Stats(args) => manage::stats(args),
        Command::Health(args) => manage::health(args),
        Command::Generate(args) => generate::generate(args),
    }
}
