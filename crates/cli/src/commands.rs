//! The command line: one subcommand per job, each parsed by the module that runs it.

use crate::{cluster, generate, infer, manage, model, token};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tern", version, about = "Tern: Triton-compatible model serving, one machine or a cluster")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
