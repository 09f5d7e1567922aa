//! `tern`: the single-machine entry point and client commands.
//!
//! - `tern serve`: a router and a node in one process ([`serve`]).
//! - `tern cluster`: a router's view of its nodes ([`cluster`]).
//! - `tern crypt keygen|encrypt|decrypt`: encrypted model files at rest ([`model`]); `tern model`
//!   is its old name, kept as an alias for one release (it read as model management).
//! - `tern token new|hash`: bearer tokens and their token-file lines ([`token`]).

mod cluster;
mod model;
mod serve;
mod token;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tern", version, about = "Tern: Triton-compatible model serving, one machine or a cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a model repository on this machine: a router and a node in one process, with
    /// tern-node's flags (--model-repository, --grpc-port, --model-control-mode, ...).
    Serve(Box<tern_node::Config>),
    /// Print a router's view of the cluster: nodes, health, load and models.
    Cluster(cluster::ClusterArgs),
    /// Encrypted model files: make a key, encrypt `model.onnx` to `model.onnx.enc`, decrypt.
    /// (`tern model ...` is the old name, kept as an alias for one release.)
    #[command(alias = "model")]
    Crypt {
        #[command(subcommand)]
        command: model::ModelCommand,
    },
    /// Bearer tokens: make a new one with its token-file line, or hash an existing one.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Serve(config) => tern_edge::main!(serve::Serve(*config)),
        Command::Cluster(args) => cluster::main(args),
        Command::Crypt { command } => model::main(command),
        Command::Token { command } => token::main(command),
    }
}
