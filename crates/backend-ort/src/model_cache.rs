//! The optimized-model cache (`--model-cache-dir`): ONNX Runtime's "offline mode". The first
//! load of a model optimizes its graph as usual and has ORT save the result
//! (`optimized_model_filepath`); later loads open that graph with optimizations off, which
//! skips constant folding, fusions and layout changes (light_resnet50 opens about 5x faster on
//! this kind of machine: benches/RESULTS.md, "Cold start").
//!
//! ORT's documentation ("Graph Optimizations", online/offline mode) says a saved graph is only
//! valid with the same options, execution providers and hardware it was saved with (a layout
//! optimized for AVX2 needs AVX2). So an entry is keyed by the SHA-256 of:
//! - the model file and every other file beside it (external weights; one directory level),
//! - the ONNX Runtime version,
//! - the graph optimization level,
//! - the execution provider (CPU only, see below),
//! - the machine: CPU architecture and the instruction-set features ORT's kernels choose by.
//!
//! A changed model, library, level or machine thus never reuses a stale graph; it gets its
//! own entry. What is not cached:
//! - GPU sessions: TensorRT compiles nodes ORT cannot serialize (it has its own engine cache),
//!   and a graph saved for the CUDA provider carries the provider's layout and copy nodes; that
//!   it reloads correctly is not verified on a GPU yet, so CUDA instances optimize online.
//! - `optimization { graph { level: 2 } }` (optimizations off): nothing to save.
//! - Encrypted models (never decrypted onto disk: the saved graph holds the weights in the
//!   clear) and models a client uploaded with its load request (a client must not fill the
//!   node's disk): the factory does not ask for an entry for them.
//!
//! An entry is a directory `<dir>/<key>/` holding `model.onnx` and its weights in
//! `model.onnx.data` (external, so a model over protobuf's 2 GiB limit saves too). It is
//! written into a temporary directory and published by a rename, so a concurrent load
//! (parallel instances, another node on a shared volume) sees a whole entry or none. An entry
//! that fails to load is removed and the model optimized again. Nothing evicts entries: a
//! changed model leaves its old entry behind, for the operator to clear (docs/operations.md).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ort::session::Session;
use ort::session::builder::SessionBuilder;

use crate::accelerators::Device;
use crate::settings::{GraphOptimization, SessionSettings};

/// The optimized graph's file in an entry.
pub const MODEL_FILE: &str = "model.onnx";
/// Its weights, beside it.
pub const WEIGHTS_FILE: &str = "model.onnx.data";
/// Initializers at least this big go to [`WEIGHTS_FILE`].
const EXTERNAL_MIN_BYTES: &str = "1024";
/// Changes when the layout of an entry or its key changes.
const KEY_VERSION: &str = "tern-optimized-model-v1";

/// The cache directory; shared by every load of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCache {
    dir: PathBuf,
}

/// Where one model's optimized graph lives for one set of session settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub dir: PathBuf,
}

impl CacheEntry {
    /// The optimized graph.
    pub fn model(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }
}

impl ModelCache {
    pub fn new(dir: PathBuf) -> ModelCache {
        ModelCache { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry for a model whose files digest to `model_digest` ([`model_digest`]), opened
    /// with `settings`; `Err` says why such a session is not cached.
    pub fn entry(&self, model_digest: &str, settings: &SessionSettings) -> Result<CacheEntry, &'static str> {
        if settings.device != Device::Cpu {
            return Err("GPU sessions are not cached (see docs/operations.md)");
        }
        if !settings.op_libraries.is_empty() {
            // The saved graph would hold nodes of a library the key does not cover.
            return Err("the model loads custom operations (model_operations)");
        }
        if settings.graph_optimization == GraphOptimization::Disable {
            return Err("graph optimization is off: there is nothing to save");
        }
        let version = crate::runtime::version().ok_or("ONNX Runtime is not loaded")?;
        let material = format!(
            "{KEY_VERSION}\nmodel {model_digest}\nonnxruntime {version}\nlevel {:?}\nprovider CPU\nmachine {}\n",
            settings.graph_optimization,
            machine()
        );
        Ok(CacheEntry {
            dir: self.dir.join(hex(ring::digest::digest(&ring::digest::SHA256, material.as_bytes()))),
        })
    }
}

/// SHA-256 of the model file and of every other regular file in its directory (names and
/// bytes, in name order), so external weights count too.
pub fn model_digest(model: &Path) -> std::io::Result<String> {
    let dir = model.parent().unwrap_or(Path::new("."));
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    files.sort();
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 1 << 20];
    for (name, path) in files {
        context.update(name.as_bytes());
        context.update(&[0]);
        let mut file = std::fs::File::open(&path)?;
        context.update(&file.metadata()?.len().to_le_bytes());
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            context.update(&buffer[..n]);
        }
    }
    Ok(hex(context.finish()))
}

fn hex(digest: ring::digest::Digest) -> String {
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The CPU as far as ORT's graph layout depends on it: the architecture and the features its
/// kernels (and the NCHWc layout's block size) are chosen by.
fn machine() -> String {
    #[allow(unused_mut)]
    let mut features: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! x86 {
            ($($f:tt),*) => { $( if std::arch::is_x86_feature_detected!($f) { features.push($f); } )* };
        }
        x86!("sse4.1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq");
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! arm {
            ($($f:tt),*) => { $( if std::arch::is_aarch64_feature_detected!($f) { features.push($f); } )* };
        }
        arm!("neon", "dotprod", "i8mm", "bf16", "sve", "fp16");
    }
    format!("{} {}", std::env::consts::ARCH, features.join(","))
}

/// How a session was opened with a cache entry (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Opened from the cached optimized graph.
    Hit,
    /// Optimized from the model file; the graph was saved into the entry.
    Saved,
    /// Optimized from the model file; saving failed (logged), nothing cached.
    Uncached,
}

static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// In an entry instead of the graph: the saved graph did not reopen as the model (the reason).
const UNUSABLE_FILE: &str = "UNUSABLE";

/// Makes the graph ORT saved in `dir` reopen with `session`'s inputs and outputs: drops the
/// dangling inputs ORT leaves in some models ([`without_dangling_inputs`]), then opens it as a
/// later load would and compares. `Err` says what differs.
fn check_saved(
    dir: &Path,
    session: &Session,
    builder: &dyn Fn(bool) -> ort::Result<SessionBuilder>,
) -> Result<(), String> {
    let file = dir.join(MODEL_FILE);
    let bytes = std::fs::read(&file).map_err(|e| format!("cannot read the saved graph: {e}"))?;
    if let Some(fixed) = without_dangling_inputs(&bytes) {
        std::fs::write(&file, fixed).map_err(|e| format!("cannot rewrite the saved graph: {e}"))?;
    }
    let reopened = builder(false)
        .and_then(|mut b| b.commit_from_file(&file))
        .map_err(|e| format!("the saved graph does not load: {e}"))?;
    let io = |s: &Session| -> Vec<String> {
        s.inputs().iter().chain(s.outputs()).map(|o| format!("{}: {:?}", o.name(), o.dtype())).collect()
    };
    let (want, got) = (io(session), io(&reopened));
    if want != got {
        return Err(format!("inputs and outputs {got:?}, the model's {want:?}"));
    }
    Ok(())
}

/// The session builder [`commit`] wants for `settings`: optimizations as configured, or off.
pub(crate) fn builder_for<'a>(
    settings: &'a SessionSettings,
    model: &'a str,
) -> impl Fn(bool) -> ort::Result<SessionBuilder> + 'a {
    move |optimize| {
        let environment = crate::runtime::environment().map_err(|e| ort::Error::new(e.to_string()))?;
        let mut settings = settings.clone();
        if !optimize {
            settings.graph_optimization = GraphOptimization::Disable;
        }
        crate::backend::configure(environment, &settings, model).map_err(|e| ort::Error::new(e.to_string()))
    }
}

/// Opens the model file at `path` with `settings` through `cache` when the settings can be
/// cached (else as without a cache): for callers that build their own sessions (the
/// generation engine's decoder).
pub fn open_cached(
    cache: &ModelCache,
    path: &Path,
    settings: &SessionSettings,
) -> Result<Session, crate::OrtBackendError> {
    let model = path.display().to_string();
    let builder = builder_for(settings, &model);
    let load_error =
        |e: ort::Error| crate::OrtBackendError::ModelLoad { model: model.clone(), message: e.to_string() };
    let entry = model_digest(path)
        .map_err(|e| e.to_string())
        .and_then(|digest| cache.entry(&digest, settings).map_err(str::to_string));
    match entry {
        Ok(entry) => commit(path, &entry, &builder).map(|(session, _)| session).map_err(load_error),
        Err(reason) => {
            tracing::debug!(model, reason, "not cached");
            builder(true).and_then(|mut b| b.commit_from_file(path)).map_err(load_error)
        }
    }
}

/// Opens `model` through `entry`: the cached graph with optimizations off when there is one,
/// else `model` optimized as `builder` says, saving the graph. `builder(optimize)` makes the
/// session builder: with `false`, graph optimization off (the cached graph has them applied).
pub(crate) fn commit(
    model: &Path,
    entry: &CacheEntry,
    builder: &dyn Fn(bool) -> ort::Result<SessionBuilder>,
) -> ort::Result<(Session, CacheUse)> {
    let cached = entry.model();
    if entry.dir.join(UNUSABLE_FILE).is_file() {
        tracing::debug!(entry = %entry.dir.display(), "this model's optimized graph does not reopen as the model: optimizing online");
        return Ok((builder(true)?.commit_from_file(model)?, CacheUse::Uncached));
    }
    if cached.is_file() {
        match builder(false).and_then(|mut b| b.commit_from_file(&cached)) {
            Ok(session) => {
                tracing::info!(entry = %entry.dir.display(), "opened the optimized graph from the model cache");
                return Ok((session, CacheUse::Hit));
            }
            Err(e) => {
                tracing::warn!(entry = %entry.dir.display(), error = %e, "a cached optimized graph does not load: removing it and optimizing again");
                let _ = std::fs::remove_dir_all(&entry.dir);
            }
        }
    }
    let name = entry.dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let temp = entry.dir.with_file_name(format!(
        ".tmp-{name}-{}-{}",
        std::process::id(),
        NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
    ));
    let saving = std::fs::create_dir_all(&temp).map_err(|e| ort::Error::new(e.to_string())).and_then(|()| {
        builder(true)?
            .with_optimized_model_path(temp.join(MODEL_FILE))?
            .with_config_entry("session.optimized_model_external_initializers_file_name", WEIGHTS_FILE)?
            .with_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes",
                EXTERNAL_MIN_BYTES,
            )?
            .commit_from_file(model)
    });
    match saving {
        Ok(session) => {
            let reopens = check_saved(&temp, &session, builder);
            if let Err(reason) = &reopens {
                // Kept as a marker, so later loads neither reuse nor save it again.
                tracing::warn!(entry = %entry.dir.display(), reason, "the optimized graph does not reopen as the model: this model is not cached");
                let _ = std::fs::remove_dir_all(&temp);
                let _ = std::fs::create_dir_all(&temp)
                    .and_then(|()| std::fs::write(temp.join(UNUSABLE_FILE), reason));
            }
            // A rename publishes the whole entry at once; should another load have published
            // it first, its copy stays and this one goes.
            match std::fs::rename(&temp, &entry.dir) {
                Ok(()) if reopens.is_ok() => {
                    tracing::info!(entry = %entry.dir.display(), "saved the optimized graph in the model cache")
                }
                Ok(()) => {}
                Err(_) => {
                    let _ = std::fs::remove_dir_all(&temp);
                }
            }
            Ok((session, if reopens.is_ok() { CacheUse::Saved } else { CacheUse::Uncached }))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&temp);
            // Saving may be what failed (a full disk, a graph ORT cannot serialize): the model
            // still loads as it would without a cache. A bad model fails here again, with
            // ORT's own error.
            tracing::warn!(entry = %entry.dir.display(), error = %e, "cannot save the optimized graph in the model cache; loading without it");
            let session = builder(true)?.commit_from_file(model)?;
            Ok((session, CacheUse::Uncached))
        }
    }
}

// === dangling graph inputs ===

/// Removes the graph inputs of an ONNX model (`bytes`, a serialized ModelProto) that no node
/// reads, that have no initializer and that are not graph outputs; `None` when there are none
/// or the bytes do not parse. ORT saves an optimized IR-3 model (where initializers are also
/// listed as graph inputs) with the inputs of the initializers that constant folding consumed
/// still listed and no initializer behind them: reopened, they would be required inputs. Only
/// the fields touched are decoded; every other byte is kept as it is.
fn without_dangling_inputs(bytes: &[u8]) -> Option<Vec<u8>> {
    let fields = proto_fields(bytes)?;
    let (graph_at, graph) = fields.iter().enumerate().find(|(_, f)| f.number == 7 && f.wire == 2)?;
    let graph_bytes = &bytes[graph.value.clone()];
    let graph_fields = proto_fields(graph_bytes)?;
    let mut used = std::collections::HashSet::new();
    collect_node_inputs(graph_bytes, &mut used, 0)?;
    for f in graph_fields.iter().filter(|f| f.wire == 2) {
        match f.number {
            // Initializers (TensorProto.name = 8) and outputs (ValueInfoProto.name = 1) stay needed.
            5 => used.insert(string_field(&graph_bytes[f.value.clone()], 8)?),
            12 => used.insert(string_field(&graph_bytes[f.value.clone()], 1)?),
            _ => false,
        };
    }
    let mut new_graph = Vec::with_capacity(graph_bytes.len());
    let mut removed = 0usize;
    for f in &graph_fields {
        if f.number == 11 && f.wire == 2 && !used.contains(&string_field(&graph_bytes[f.value.clone()], 1)?) {
            removed += 1;
            continue;
        }
        new_graph.extend_from_slice(&graph_bytes[f.whole.clone()]);
    }
    if removed == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len());
    for (i, f) in fields.iter().enumerate() {
        if i == graph_at {
            put_varint(&mut out, 7 << 3 | 2);
            put_varint(&mut out, new_graph.len() as u64);
            out.extend_from_slice(&new_graph);
        } else {
            out.extend_from_slice(&bytes[f.whole.clone()]);
        }
    }
    Some(out)
}

/// Every NodeProto input name in a GraphProto, subgraphs included (a subgraph may read an
/// outer graph's input).
fn collect_node_inputs(graph: &[u8], used: &mut std::collections::HashSet<String>, depth: u32) -> Option<()> {
    if depth > 64 {
        return None;
    }
    for node in proto_fields(graph)?.into_iter().filter(|f| f.number == 1 && f.wire == 2) {
        let node = &graph[node.value];
        for f in proto_fields(node)? {
            match (f.number, f.wire) {
                (1, 2) => {
                    used.insert(String::from_utf8_lossy(&node[f.value]).into_owned());
                }
                // AttributeProto: g = 6, graphs = 11.
                (5, 2) => {
                    let attribute = &node[f.value];
                    for a in proto_fields(attribute)?
                        .into_iter()
                        .filter(|a| (a.number == 6 || a.number == 11) && a.wire == 2)
                    {
                        collect_node_inputs(&attribute[a.value], used, depth + 1)?;
                    }
                }
                _ => {}
            }
        }
    }
    Some(())
}

/// One protobuf field: its number, wire type, the value's bytes (length-delimited) and the
/// whole field's bytes (tag included).
struct ProtoField {
    number: u64,
    wire: u64,
    value: std::ops::Range<usize>,
    whole: std::ops::Range<usize>,
}

fn proto_fields(bytes: &[u8]) -> Option<Vec<ProtoField>> {
    let mut fields = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let start = at;
        let tag = get_varint(bytes, &mut at)?;
        let (number, wire) = (tag >> 3, tag & 7);
        let value = match wire {
            0 => {
                let begin = at;
                get_varint(bytes, &mut at)?;
                begin..at
            }
            1 => at..at.checked_add(8)?,
            2 => {
                let len = usize::try_from(get_varint(bytes, &mut at)?).ok()?;
                at..at.checked_add(len)?
            }
            5 => at..at.checked_add(4)?,
            _ => return None,
        };
        if value.end > bytes.len() {
            return None;
        }
        at = value.end;
        fields.push(ProtoField { number, wire, value, whole: start..at });
    }
    Some(fields)
}

/// The first string field `number` of a message (empty when absent).
fn string_field(message: &[u8], number: u64) -> Option<String> {
    let fields = proto_fields(message)?;
    Some(
        fields
            .iter()
            .find(|f| f.number == number && f.wire == 2)
            .map_or_else(String::new, |f| String::from_utf8_lossy(&message[f.value.clone()]).into_owned()),
    )
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_covers_every_file_beside_the_model() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let model = dir.path().join("model.onnx");
        std::fs::write(&model, b"graph")?;
        let first = model_digest(&model)?;
        assert_eq!(first.len(), 64);
        assert_eq!(model_digest(&model)?, first, "deterministic");
        std::fs::write(dir.path().join("weights.bin"), b"w")?;
        let with_weights = model_digest(&model)?;
        assert_ne!(with_weights, first);
        std::fs::write(dir.path().join("weights.bin"), b"W")?;
        assert_ne!(model_digest(&model)?, with_weights, "changed weights change the digest");
        Ok(())
    }

    #[test]
    fn gpu_sessions_and_unoptimized_ones_have_no_entry() {
        let cache = ModelCache::new(PathBuf::from("/cache"));
        let gpu = SessionSettings { device: Device::Cuda { device_id: 0 }, ..Default::default() };
        assert!(cache.entry("d", &gpu).is_err());
        let off = SessionSettings { graph_optimization: GraphOptimization::Disable, ..Default::default() };
        assert!(cache.entry("d", &off).is_err());
    }

    fn field(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, number << 3 | 2);
        put_varint(&mut out, payload.len() as u64);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn dangling_graph_inputs_are_dropped_and_everything_else_kept() {
        let value_info = |name: &str| field(1, name.as_bytes());
        // A node reading `x`, an If whose branch reads `outer`; `w` has an initializer.
        let branch = field(1, &field(1, b"outer"));
        let node_if = [field(1, b"cond"), field(5, &field(6, &branch))].concat();
        let graph = [
            field(1, &field(1, b"x")),
            field(1, &node_if),
            field(5, &field(8, b"w")),
            field(11, &value_info("x")),
            field(11, &value_info("dangling")),
            field(11, &value_info("w")),
            field(11, &value_info("outer")),
            field(11, &value_info("cond")),
            field(12, &value_info("y")),
        ]
        .concat();
        let mut model = vec![0x08, 3]; // ir_version 3
        model.extend(field(7, &graph));
        let fixed = without_dangling_inputs(&model).expect("one input to drop");
        let graph_field =
            proto_fields(&fixed).and_then(|f| f.into_iter().find(|f| f.number == 7)).expect("graph");
        let graph = &fixed[graph_field.value];
        let inputs: Vec<String> = proto_fields(graph)
            .expect("fields")
            .into_iter()
            .filter(|f| f.number == 11)
            .filter_map(|f| string_field(&graph[f.value], 1))
            .collect();
        assert_eq!(inputs, ["x", "w", "outer", "cond"]);
        assert_eq!(&fixed[..2], &[0x08, 3]);
        assert!(without_dangling_inputs(&fixed).is_none(), "nothing left to drop");
        assert!(without_dangling_inputs(b"\xff\xff").is_none(), "garbage is left alone");
    }
}
