//! Bearer tokens and what each may do: the token file, operation groups and model scopes.
//!
//! The token file holds one token per line, hashed (the server never stores a usable token):
//!
//! ```text
//! # name     hash                    operations                         models (default *)
//! predictor  sha256:<64 hex digits>  groups=inference,metadata          models=tiny_add,resnet*
//! operator   sha256:<64 hex digits>  groups=*
//! ```
//!
//! Groups are the names of Triton's `--grpc-restricted-protocol` (health, metadata, inference,
//! shared-memory, model-config, model-repository, statistics, trace, logging) plus Tern's
//! `cluster` (router/node control plane) and `metrics` (the HTTP /metrics endpoint). A model
//! pattern is a name or a prefix ending in `*`.
//!
//! Tokens are random 256-bit strings made by [`new_token`], so one SHA-256 is the right hash
//! (a password hash's slowness buys nothing against 256 bits of entropy and would cost every
//! request); lookups are by digest, which says nothing about any token's text.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;

use crate::EdgeError;

/// A family of RPCs a token may be allowed, named as Triton's restricted protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    Health,
    Metadata,
    Inference,
    SharedMemory,
    ModelConfig,
    ModelRepository,
    Statistics,
    Trace,
    Logging,
    /// Router <-> node control plane (Membership, NodeControl).
    Cluster,
    /// The HTTP /metrics endpoint.
    Metrics,
}

impl Group {
    pub const ALL: [Group; 11] = [
        Group::Health,
        Group::Metadata,
        Group::Inference,
        Group::SharedMemory,
        Group::ModelConfig,
        Group::ModelRepository,
        Group::Statistics,
        Group::Trace,
        Group::Logging,
        Group::Cluster,
        Group::Metrics,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Group::Health => "health",
            Group::Metadata => "metadata",
            Group::Inference => "inference",
            Group::SharedMemory => "shared-memory",
            Group::ModelConfig => "model-config",
            Group::ModelRepository => "model-repository",
            Group::Statistics => "statistics",
            Group::Trace => "trace",
            Group::Logging => "logging",
            Group::Cluster => "cluster",
            Group::Metrics => "metrics",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// The group of a request path (gRPC `/package.Service/Method`, or an HTTP path of the
    /// metrics port); `None` for paths Tern does not serve.
    pub fn of_path(path: &str) -> Option<Group> {
        if let Some(method) = path.strip_prefix("/inference.GRPCInferenceService/") {
            return Some(match method {
                "ServerLive" | "ServerReady" | "ModelReady" => Group::Health,
                "ServerMetadata" | "ModelMetadata" => Group::Metadata,
                "ModelInfer" | "ModelStreamInfer" => Group::Inference,
                "ModelConfig" => Group::ModelConfig,
                "RepositoryIndex" | "RepositoryModelLoad" | "RepositoryModelUnload" => Group::ModelRepository,
                "ModelStatistics" => Group::Statistics,
                "TraceSetting" => Group::Trace,
                "LogSettings" => Group::Logging,
                m if m.contains("SharedMemory") => Group::SharedMemory,
                _ => return None,
            });
        }
        if path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/v2/health/") {
            return Some(Group::Health);
        }
        // Reflection describes the services: metadata about the server.
        if path.starts_with("/grpc.reflection.") {
            return Some(Group::Metadata);
        }
        if path.starts_with("/tern.cluster.v1.") {
            return Some(Group::Cluster);
        }
        if path == "/metrics" {
            return Some(Group::Metrics);
        }
        None
    }
}

impl std::str::FromStr for Group {
    type Err = EdgeError;

    fn from_str(s: &str) -> Result<Group, EdgeError> {
        Group::ALL.into_iter().find(|g| g.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = Group::ALL.iter().map(|g| g.as_str()).collect();
            EdgeError::Token(format!("unknown group '{s}' (known: {}, or * for all)", names.join(", ")))
        })
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Groups(u16);

impl Groups {
    pub const NONE: Groups = Groups(0);

    pub fn all() -> Groups {
        Groups(Group::ALL.iter().fold(0, |bits, g| bits | g.bit()))
    }

    pub fn contains(self, group: Group) -> bool {
        self.0 & group.bit() != 0
    }

    pub fn with(self, group: Group) -> Groups {
        Groups(self.0 | group.bit())
    }

    /// A comma-separated list of group names; `*` is every group, `none` (or empty) no group.
    pub fn parse(list: &str) -> Result<Groups, EdgeError> {
        let mut groups = Groups::NONE;
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "*" => groups = Groups::all(),
                "none" => {}
                name => groups = groups.with(name.parse()?),
            }
        }
        Ok(groups)
    }
}

impl fmt::Display for Groups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Groups::all() {
            return f.write_str("*");
        }
        let names: Vec<_> = Group::ALL.iter().filter(|g| self.contains(**g)).map(|g| g.as_str()).collect();
        f.write_str(if names.is_empty() { "none" } else { "" })?;
        f.write_str(&names.join(","))
    }
}

/// Which models a token may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Models {
    All,
    /// Exact names and prefixes (a pattern ending in `*`).
    Only(Vec<String>),
}

impl Models {
    pub fn parse(list: &str) -> Result<Models, EdgeError> {
        let patterns: Vec<String> =
            list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        if patterns.iter().any(|p| p == "*") {
            return Ok(Models::All);
        }
        if let Some(bad) = patterns.iter().find(|p| p.trim_end_matches('*').contains('*')) {
            return Err(EdgeError::Token(format!("model pattern '{bad}': '*' may only end a pattern")));
        }
        Ok(Models::Only(patterns))
    }

    pub fn allows(&self, model: &str) -> bool {
        match self {
            Models::All => true,
            Models::Only(patterns) => patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => model.starts_with(prefix),
                None => p == model,
            }),
        }
    }
}

impl fmt::Display for Models {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Models::All => f.write_str("*"),
            Models::Only(p) => f.write_str(&p.join(",")),
        }
    }
}

/// What one token may do. Its name (never the token) is what logs and errors show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub name: String,
    pub groups: Groups,
    pub models: Models,
}

/// The tokens of a token file, by SHA-256 digest.
#[derive(Debug, Default)]
pub struct TokenTable {
    by_digest: HashMap<[u8; 32], Arc<Grant>>,
}

impl TokenTable {
    /// Parses a token file's text; errors name `source` and the line.
    pub fn parse(text: &str, source: &str) -> Result<TokenTable, EdgeError> {
        let mut table = TokenTable::default();
        let mut names = std::collections::HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let at = |detail: String| EdgeError::TokenLine { file: source.to_owned(), line: i + 1, detail };
            let line = line.split_once('#').map_or(line, |(before, _)| before).trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let name = fields.next().unwrap_or_default();
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c)) {
                return Err(at(format!("token name '{name}' may hold only letters, digits and _ . @ -")));
            }
            let digest = fields
                .next()
                .ok_or_else(|| at("missing the token's hash (sha256:<64 hex digits>)".into()))
                .and_then(|h| parse_digest(h).map_err(at))?;
            let (mut groups, mut models) = (None, Models::All);
            for field in fields {
                match field.split_once('=') {
                    Some(("groups", list)) => {
                        groups = Some(Groups::parse(list).map_err(|e| at(e.to_string()))?)
                    }
                    Some(("models", list)) => models = Models::parse(list).map_err(|e| at(e.to_string()))?,
                    _ => {
                        return Err(at(format!("unexpected '{field}' (expected groups=... or models=...)")));
                    }
                }
            }
            let groups = groups
                .ok_or_else(|| at("missing groups=... (for example groups=inference,metadata)".into()))?;
            if !names.insert(name.to_string()) {
                return Err(at(format!("token name '{name}' is used twice")));
            }
            let grant = Arc::new(Grant { name: name.to_string(), groups, models });
            if table.by_digest.insert(digest, grant).is_some() {
                return Err(at("the same token hash is listed twice".into()));
            }
        }
        Ok(table)
    }

    /// The grant of a presented token, if it is one of the table's.
    pub fn grant(&self, token: &str) -> Option<&Arc<Grant>> {
        self.by_digest.get(&digest(token))
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Adds a token (`tern serve`'s internal one, not from any file).
    pub fn insert(&mut self, token: &str, grant: Grant) {
        self.by_digest.insert(digest(token), Arc::new(grant));
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn parse_digest(field: &str) -> Result<[u8; 32], String> {
    let hex = field.strip_prefix("sha256:").filter(|h| h.len() == 64).ok_or_else(|| {
        "the second field must be sha256:<64 hex digits>, the token's hash (`tern token hash` prints it); \
         tokens themselves do not belong in the file"
            .to_string()
    })?;
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("'{field}' is not sha256:<64 hex digits>"))?;
    }
    Ok(out)
}

/// The token file's hash field for `token`: `sha256:<hex>`.
pub fn hash_token(token: &str) -> String {
    let hex: String = digest(token).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A new random token: `tern_` and 256 random bits, base64url.
pub fn new_token() -> Result<String, EdgeError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| EdgeError::NoRandomness)?;
    Ok(format!("tern_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_triton_groups() {
        let cases = [
            ("/inference.GRPCInferenceService/ModelInfer", Some(Group::Inference)),
            ("/inference.GRPCInferenceService/ModelStreamInfer", Some(Group::Inference)),
            ("/inference.GRPCInferenceService/ServerReady", Some(Group::Health)),
            ("/inference.GRPCInferenceService/ModelReady", Some(Group::Health)),
            ("/inference.GRPCInferenceService/ModelMetadata", Some(Group::Metadata)),
            ("/inference.GRPCInferenceService/ModelConfig", Some(Group::ModelConfig)),
            ("/inference.GRPCInferenceService/RepositoryModelUnload", Some(Group::ModelRepository)),
            ("/inference.GRPCInferenceService/RepositoryIndex", Some(Group::ModelRepository)),
            ("/inference.GRPCInferenceService/ModelStatistics", Some(Group::Statistics)),
            ("/inference.GRPCInferenceService/CudaSharedMemoryRegister", Some(Group::SharedMemory)),
            ("/inference.GRPCInferenceService/LogSettings", Some(Group::Logging)),
            ("/inference.GRPCInferenceService/Nope", None),
            ("/grpc.health.v1.Health/Check", Some(Group::Health)),
            ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Some(Group::Metadata)),
            ("/tern.cluster.v1.Membership/Heartbeat", Some(Group::Cluster)),
            ("/metrics", Some(Group::Metrics)),
            ("/v2/health/ready", Some(Group::Health)),
            ("/", None),
        ];
        for (path, group) in cases {
            assert_eq!(Group::of_path(path), group, "{path}");
        }
    }

    #[test]
    fn token_file_parses_and_grants() {
        let (a, b) = (new_token().unwrap_or_default(), new_token().unwrap_or_default());
        assert!(a.starts_with("tern_") && a.len() == 48 && a != b, "{a} {b}");
        let text = format!(
            "# comment\n\npredictor {} groups=inference,metadata models=tiny_add,res*  # trailing\n\
             operator {} groups=*\n",
            hash_token(&a),
            hash_token(&b)
        );
        let table = TokenTable::parse(&text, "tokens").unwrap_or_default();
        assert_eq!(table.len(), 2);
        let predictor = table.grant(&a).cloned();
        let predictor = predictor.as_deref();
        assert_eq!(predictor.map(|g| g.name.as_str()), Some("predictor"));
        assert!(predictor.is_some_and(|g| g.groups.contains(Group::Inference)
            && !g.groups.contains(Group::ModelRepository)
            && g.models.allows("tiny_add")
            && g.models.allows("resnet50")
            && !g.models.allows("tiny_add2")
            && !g.models.allows("other")));
        let operator = table.grant(&b).cloned();
        assert!(operator.is_some_and(|g| g.groups == Groups::all() && g.models == Models::All));
        assert!(table.grant("tern_not-a-token").is_none());
        assert!(table.grant("").is_none());
    }

    #[test]
    fn bad_token_files_are_refused_with_the_line() {
        let h = hash_token("x");
        let cases = [
            ("a", "missing the token's hash"),
            ("a tern_plaintext groups=*", "tokens themselves do not belong"),
            ("a sha256:zz groups=*", "sha256:<64 hex digits>"),
            (&format!("a sha256:{} groups=*", "g".repeat(64)), "is not sha256"),
            (&format!("a {h}"), "missing groups="),
            (&format!("a {h} groups=inference,unloading"), "unknown group 'unloading'"),
            (&format!("a {h} groups=* models=a*b"), "may only end"),
            (&format!("a {h} groups=* extra"), "unexpected 'extra'"),
            (&format!("a/b {h} groups=*"), "may hold only"),
            (&format!("a {h} groups=*\nb {h} groups=*"), "listed twice"),
            (&format!("a {h} groups=*\na {} groups=*", hash_token("y")), "used twice"),
        ];
        for (text, expected) in cases {
            let err = TokenTable::parse(text, "tokens.txt").err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.starts_with("tokens.txt line ") && err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn group_lists() {
        assert_eq!(
            Groups::parse("health,metrics").map(|g| g.to_string()).map_err(|e| e.to_string()).as_deref(),
            Ok("health,metrics")
        );
        assert_eq!(
            Groups::parse("none").map(|g| g.to_string()).map_err(|e| e.to_string()).as_deref(),
            Ok("none")
        );
        assert_eq!(Groups::parse("*").map(|g| g.to_string()).map_err(|e| e.to_string()).as_deref(), Ok("*"));
        assert!(Groups::parse("health,bogus").is_err());
    }
}
