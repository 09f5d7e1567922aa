//! Client TLS flags, one struct for every Tern process that dials another: a router toward
//! its nodes (`--node-tls-*`), a node toward its routers (`--router-tls-*`), `tern cluster`
//! toward a router's control plane (`--tls-*`). The names and help come from a [`ClientTlsPeer`]
//! (clap's derive cannot prefix a flattened struct's flags, so [`clap::Args`] is written out).

use std::marker::PhantomData;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};

/// One flag: its long name (also its clap id) and its help.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    pub long: &'static str,
    pub help: &'static str,
}

/// The flags of one kind of peer.
#[derive(Debug, Clone, Copy)]
pub struct ClientTlsFlags {
    /// The PEM CA that signs the peer's certificate; without it, plaintext.
    pub ca: Flag,
    /// Our certificate, for peers that require mutual TLS (needs `key`).
    pub cert: Flag,
    /// The private key of `cert`.
    pub key: Flag,
    /// The name to verify in the peer's certificate instead of the host dialled, if offered.
    pub domain: Option<Flag>,
}

/// Which flags a [`ClientTlsArgs`] takes.
pub trait ClientTlsPeer {
    const FLAGS: ClientTlsFlags;
}

/// Client TLS flags toward `P`, flattened into a command line (`#[command(flatten)]`).
pub struct ClientTlsArgs<P> {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub domain: Option<String>,
    peer: PhantomData<fn() -> P>,
}

impl<P> Default for ClientTlsArgs<P> {
    fn default() -> Self {
        ClientTlsArgs { ca: None, cert: None, key: None, domain: None, peer: PhantomData }
    }
}

impl<P> Clone for ClientTlsArgs<P> {
    fn clone(&self) -> Self {
        ClientTlsArgs {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            domain: self.domain.clone(),
            peer: PhantomData,
        }
    }
}

impl<P> std::fmt::Debug for ClientTlsArgs<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTlsArgs")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("domain", &self.domain)
            .finish()
    }
}

impl<P: ClientTlsPeer> ClientTlsArgs<P> {
    /// The client TLS configuration, or `None` without a CA (a certificate without a CA is
    /// refused: it would silently go out in plaintext). Text errors still: the router's
    /// configuration check returns this one as it is.
    pub fn config(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
        let flags = P::FLAGS;
        let Some(ca) = &self.ca else {
            if self.cert.is_some() {
                return Err(format!("--{} needs --{}", flags.cert.long, flags.ca.long));
            }
            return Ok(None);
        };
        crate::tls::client_config(ca, self.cert.as_deref().zip(self.key.as_deref()), self.domain.as_deref())
            .map(Some)
            .map_err(String::from)
    }
}

fn path_arg(flag: Flag) -> Arg {
    Arg::new(flag.long)
        .long(flag.long)
        .help(flag.help)
        .value_name("PEM")
        .action(ArgAction::Set)
        .value_parser(clap::value_parser!(PathBuf))
}

impl<P: ClientTlsPeer> clap::Args for ClientTlsArgs<P> {
    fn augment_args(cmd: Command) -> Command {
        let f = P::FLAGS;
        let cmd = cmd
            .arg(path_arg(f.ca))
            .arg(path_arg(f.cert).requires(f.key.long))
            .arg(path_arg(f.key).requires(f.cert.long));
        match f.domain {
            Some(d) => cmd.arg(
                Arg::new(d.long)
                    .long(d.long)
                    .help(d.help)
                    .value_name("NAME")
                    .action(ArgAction::Set)
                    .value_parser(clap::value_parser!(String)),
            ),
            None => cmd,
        }
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl<P: ClientTlsPeer> clap::FromArgMatches for ClientTlsArgs<P> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Self::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let f = P::FLAGS;
        let path = |flag: Flag| matches.get_one::<PathBuf>(flag.long).cloned();
        if let Some(ca) = path(f.ca) {
            self.ca = Some(ca);
        }
        if let Some(cert) = path(f.cert) {
            self.cert = Some(cert);
        }
        if let Some(key) = path(f.key) {
            self.key = Some(key);
        }
        if let Some(domain) = f.domain.and_then(|d| matches.get_one::<String>(d.long)) {
            self.domain = Some(domain.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    struct Upstream;
    impl ClientTlsPeer for Upstream {
        const FLAGS: ClientTlsFlags = ClientTlsFlags {
            ca: Flag { long: "up-tls-ca", help: "CA" },
            cert: Flag { long: "up-tls-cert", help: "certificate" },
            key: Flag { long: "up-tls-key", help: "key" },
            domain: Some(Flag { long: "up-tls-domain", help: "name" }),
        };
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        tls: ClientTlsArgs<Upstream>,
    }

    #[test]
    fn flags_parse_under_the_peers_names() {
        let cli = Cli::try_parse_from(["x", "--up-tls-ca", "/ca.pem", "--up-tls-domain", "node.local"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cli.tls.ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert_eq!(cli.tls.domain.as_deref(), Some("node.local"));
        assert!(cli.tls.cert.is_none());
        // A certificate without its key is refused by clap; without a CA by config().
        assert!(Cli::try_parse_from(["x", "--up-tls-cert", "/c.pem"]).is_err());
        let no_ca = Cli::try_parse_from(["x", "--up-tls-cert", "/c.pem", "--up-tls-key", "/k.pem"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(no_ca.tls.config().err().as_deref(), Some("--up-tls-cert needs --up-tls-ca"));
        let none = Cli::try_parse_from(["x"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(none.tls.config(), Ok(None)));
    }
}
