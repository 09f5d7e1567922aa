//! What every client command shares: the connection flags (as the servers and tritonclient
//! name them), the runtime, and exit codes fit for scripts: 0 success, 1 the server answered
//! an error, 2 a usage error (clap's own code), 3 the server could not be reached.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use tern_client::{Client, ClientError, ConnectOptions, TlsOptions};

/// The server answered with an error (or one the client could not read).
pub const EXIT_SERVER_ERROR: u8 = 1;
/// Wrong flags, an unreadable or malformed input file (clap exits 2 for its own errors too).
pub const EXIT_USAGE: u8 = 2;
/// The server could not be reached.
pub const EXIT_CONNECT: u8 = 3;

// The flags toward the server (a plain comment: a doc comment would become the command's about).
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// The server's gRPC address: a node, a router or `tern serve` (Triton too).
    #[arg(short = 'u', long, default_value = "localhost:8001", value_name = "HOST:PORT")]
    url: String,
    /// Connect over TLS; needs --root-certificates (the CA that signs the server's certificate).
    #[arg(long, requires = "root_certificates")]
    ssl: bool,
    /// PEM file of the CA(s) that sign the server's certificate (implies --ssl).
    #[arg(long, value_name = "PEM")]
    root_certificates: Option<PathBuf>,
    /// PEM private key of --certificate-chain, for servers that require mutual TLS.
    #[arg(long, value_name = "PEM", requires_all = ["certificate_chain", "root_certificates"])]
    private_key: Option<PathBuf>,
    /// PEM client certificate chain, for servers that require mutual TLS.
    #[arg(long, value_name = "PEM", requires_all = ["private_key", "root_certificates"])]
    certificate_chain: Option<PathBuf>,
    /// Bearer token sent as `authorization: Bearer <token>`.
    #[arg(long, env = "TERN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,
    /// File holding the bearer token (used instead of --token / TERN_TOKEN).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
}

/// Why a command failed, and so its exit code.
#[derive(Debug)]
pub enum Failure {
    Client(ClientError),
    Usage(String),
    /// The server answered, but not what the command checks for (e.g. not ready).
    Answer(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::Usage(message.into())
    }

    fn exit_code(&self) -> u8 {
        match self {
            Failure::Client(ClientError::Connect { .. }) => EXIT_CONNECT,
            Failure::Client(ClientError::Invalid(_)) | Failure::Usage(_) => EXIT_USAGE,
            Failure::Client(_) | Failure::Answer(_) => EXIT_SERVER_ERROR,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Client(e) => e.fmt(f),
            Failure::Usage(m) | Failure::Answer(m) => f.write_str(m),
        }
    }
}

impl ConnectArgs {
    fn options(&self) -> Result<ConnectOptions, Failure> {
        let mut options = ConnectOptions::new();
        if let Some(ca) = &self.root_certificates {
            let mut tls = TlsOptions::new(ca);
            if let (Some(cert), Some(key)) = (&self.certificate_chain, &self.private_key) {
                tls = tls.identity(cert, key);
            }
            options = options.tls(tls);
        }
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| Failure::usage(format!("--token-file {}: {e}", path.display())))?,
            ),
            None => self.token.clone(),
        };
        if let Some(token) = token {
            options = options.token(token.trim());
        }
        Ok(options)
    }
}

/// Connects, runs `command`, prints its error as `error: ...` and returns the exit code.
pub fn run<F, Fut>(connect: &ConnectArgs, command: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<(), Failure>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_SERVER_ERROR);
        }
    };
    let result = runtime.block_on(async {
        let options = connect.options()?;
        let client = Client::connect(&connect.url, options).await?;
        command(client).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Prints `rows` under `header` in columns as wide as their widest cell (the last column is
/// left unpadded).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
