//! `tern crypt` (old name `tern model`): encrypted model files at rest (format and key: tern-crypto).
//!
//! - `tern crypt keygen OUT`: a new random key, 64 hex digits, written to a new file (mode
//!   0600) that is never overwritten; `-` prints it.
//! - `tern crypt encrypt [--key-file K] IN OUT`: `model.onnx` -> `model.onnx.enc`.
//! - `tern crypt decrypt [--key-file K] IN OUT`: back to the clear model (to inspect it).
//!
//! Without `--key-file` the key comes from `TERN_MODEL_KEY`, as for tern-node.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use tern_crypto::ModelKey;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Write a new random AES-256 key (64 hex digits) to OUT (a new file, mode 0600; `-` prints it).
    Keygen {
        /// Where to write the key; must not exist.
        out: PathBuf,
    },
    /// Encrypt a model file (AES-256-GCM, Tern's TERNENC1 format), e.g. 1/model.onnx -> 1/model.onnx.enc.
    Encrypt {
        /// Key file (hex or base64); default: the TERN_MODEL_KEY environment variable.
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
        /// The clear model file.
        input: PathBuf,
        /// The encrypted file to write (by convention the model file's name plus `.enc`).
        output: PathBuf,
    },
    /// Decrypt a model file encrypted by `tern crypt encrypt` (or check it: OUT `-` discards it).
    Decrypt {
        /// Key file (hex or base64); default: the TERN_MODEL_KEY environment variable.
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
        /// The encrypted file.
        input: PathBuf,
        /// The clear model file to write (mode 0600); `-` only checks the key and the file.
        output: PathBuf,
    },
}

pub fn main(command: ModelCommand) -> std::process::ExitCode {
    match run(command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern crypt: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

fn run(command: ModelCommand) -> Result<(), String> {
    match command {
        ModelCommand::Keygen { out } => {
            let key = ModelKey::generate().map_err(|e| e.to_string())?;
            let text = format!("{}\n", key.to_hex().as_str());
            let text = tern_crypto::Zeroizing::new(text);
            if out == Path::new("-") {
                print!("{}", text.as_str());
                return Ok(());
            }
            write_new_private(&out, text.as_bytes())?;
            eprintln!("tern crypt: wrote a new key to {}", out.display());
            Ok(())
        }
        ModelCommand::Encrypt { key_file, input, output } => {
            let key = key(key_file.as_deref())?;
            let clear = std::fs::read(&input)
                .map(tern_crypto::Zeroizing::new)
                .map_err(|e| format!("cannot read {}: {e}", input.display()))?;
            if tern_crypto::is_encrypted(&clear) {
                return Err(format!("{} is already encrypted", input.display()));
            }
            let sealed =
                tern_crypto::encrypt(&key, &clear).map_err(|e| format!("{}: {e}", input.display()))?;
            write_replacing(&output, &sealed, false)?;
            eprintln!("tern crypt: encrypted {} -> {}", input.display(), output.display());
            Ok(())
        }
        ModelCommand::Decrypt { key_file, input, output } => {
            let key = key(key_file.as_deref())?;
            let sealed =
                std::fs::read(&input).map_err(|e| format!("cannot read {}: {e}", input.display()))?;
            let clear =
                tern_crypto::decrypt(&key, &sealed).map_err(|e| format!("{}: {e}", input.display()))?;
            if output == Path::new("-") {
                eprintln!("tern crypt: {} decrypts with this key ({} bytes)", input.display(), clear.len());
                return Ok(());
            }
            write_replacing(&output, &clear, true)?;
            eprintln!("tern crypt: decrypted {} -> {}", input.display(), output.display());
            Ok(())
        }
    }
}

fn key(file: Option<&Path>) -> Result<ModelKey, String> {
    ModelKey::from_file_or_env(file).map_err(|e| e.to_string())?.ok_or_else(|| {
        format!(
            "no key: give --key-file PATH or set {} (make one with `tern crypt keygen`)",
            tern_crypto::KEY_ENV
        )
    })
}

fn options(private: bool) -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    options
}

/// A key file: created new (never overwrites), readable by its owner only.
pub(crate) fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut file = options(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Writes beside `path` and renames over it, so a model directory polled by a node never
/// holds a half-written file under the final name.
fn write_replacing(path: &Path, bytes: &[u8], private: bool) -> Result<(), String> {
    let name = path.file_name().ok_or_else(|| format!("{}: not a file path", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let written = options(private).create(true).truncate(true).open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot write {}: {e}", path.display()));
    }
    Ok(())
}
