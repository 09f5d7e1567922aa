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
mod generate;
mod infer;
mod manage;
mod model;
mod remote;
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
    /// List the repository's models with their version, state and reason.
    Models(manage::ModelsArgs),
    /// Load (or reload) a model, optionally with a JSON configuration instead of config.pbtxt.
    Load(manage::LoadArgs),
    /// Unload a model.
    Unload(manage::UnloadArgs),
    /// Run one inference with inputs from .npy files or JSON; print or save the outputs.
    Infer(infer::InferArgs),
    /// Print inference statistics of one model or all.
    Stats(manage::StatsArgs),
    /// Print whether the server is live and ready, and each model's readiness (exit 1 if not ready).
    Health(manage::HealthArgs),
    /// Generate text with a language model (Triton's generate inputs; --stream as it comes).
    Generate(generate::GenerateArgs),
}

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
