//! `tern token`: bearer tokens for `--auth-token-file` (format: tern-edge's `tokens` module).
//!
//! - `tern token new NAME OUT --groups G [--models M]`: a new random token written to OUT (a
//!   new file, mode 0600; `-` prints it), and its token-file line on stdout.
//! - `tern token hash [IN]`: the `sha256:` hash of an existing token (from IN, or stdin).

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token: the token goes to OUT (a new file, mode 0600; `-` prints it first), the
    /// line to append to the token file is printed.
    New {
        /// The token's name in the token file (shown in logs and errors instead of the token).
        name: String,
        /// Where to write the token; must not exist.
        out: PathBuf,
        /// What it may do, comma-separated: health, metadata, inference, model-config,
        /// model-repository, statistics, cluster, metrics, ... or `*`.
        #[arg(long, default_value = "inference,metadata,model-config,health")]
        groups: String,
        /// Models it may name, comma-separated names or prefixes ending in `*`.
        #[arg(long, default_value = "*")]
        models: String,
    },
    /// Print the token-file hash (`sha256:...`) of a token read from IN (default: stdin).
    Hash {
        /// File holding the token; `-` or absent: stdin.
        input: Option<PathBuf>,
    },
}

pub fn main(command: TokenCommand) -> std::process::ExitCode {
    match run(command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern token: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

fn run(command: TokenCommand) -> Result<(), String> {
    match command {
        TokenCommand::New { name, out, groups, models } => {
            // The line must parse as the server will parse it.
            let token = tern_edge::new_token()?;
            let line = format!("{name} {} groups={groups} models={models}", tern_edge::hash_token(&token));
            tern_edge::TokenTable::parse(&line, "the new line")?;
            if out == Path::new("-") {
                println!("{token}");
            } else {
                crate::model::write_new_private(&out, format!("{token}\n").as_bytes())?;
                eprintln!(
                    "tern token: wrote the token '{name}' to {}; add this line to the token file:",
                    out.display()
                );
            }
            println!("{line}");
            Ok(())
        }
        TokenCommand::Hash { input } => {
            let mut text = String::new();
            match input.as_deref().filter(|p| *p != Path::new("-")) {
                Some(path) => {
                    text = std::fs::read_to_string(path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                }
                None => {
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .map_err(|e| format!("cannot read stdin: {e}"))?;
                }
            }
            let token = text.trim();
            if token.is_empty() {
                return Err("no token given".into());
            }
            println!("{}", tern_edge::hash_token(token));
            Ok(())
        }
    }
}
