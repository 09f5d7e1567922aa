//! Shared by the test binaries: ONNX Runtime, the example language model, event collection.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tern_generate::{Engine, EngineOptions, FinishReason, GenError, GenEvent, Generation};

/// Loads ONNX Runtime once for this test binary, as the node does: `ORT_DYLIB_PATH`, else the
/// library `make setup` installs. Fails (never skips) when missing.
pub fn runtime() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = match std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tern/onnxruntime/libonnxruntime.so.1.31.1")
            }
        };
        assert!(
            path.is_file(),
            "these tests need ONNX Runtime 1.31 and it is not at {}: run `make setup` (scripts/setup.sh) \
             or set ORT_DYLIB_PATH",
            path.display()
        );
        if let Err(e) = tern_backend_ort::init_runtime(Some(&path)) {
            panic!("cannot load ONNX Runtime: {e}");
        }
    });
}

/// `$TERN_EXAMPLES_REPO/tiny_llm/1`, the folder `examples/build_tiny_llm.py` writes.
pub fn model_dir() -> PathBuf {
    let repo = std::env::var_os("TERN_EXAMPLES_REPO").filter(|p| !p.is_empty()).unwrap_or_else(|| {
        panic!(
            "TERN_EXAMPLES_REPO is not set: these tests need the example language model; run \
             `make examples` and `make test-rust`, or set TERN_EXAMPLES_REPO to a repository holding \
             tiny_llm/1 (examples/build_tiny_llm.py OUT_DIR writes one)"
        )
    });
    let dir = PathBuf::from(repo).join("tiny_llm/1");
    assert!(
        dir.join("genai_config.json").is_file(),
        "{} has no genai_config.json: run `make examples` (examples/build_tiny_llm.py)",
        dir.display()
    );
    dir
}

pub fn engine(options: EngineOptions) -> Arc<Engine> {
    runtime();
    match Engine::load(&model_dir(), options) {
        Ok(e) => e,
        Err(e) => panic!("cannot load tiny_llm: {e}"),
    }
}

pub fn options(max_batch: usize) -> EngineOptions {
    EngineOptions { max_batch, intra_threads: 1, ..EngineOptions::default() }
}

/// What one generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ids: Vec<u32>,
    /// Each token event's text, in order.
    pub texts: Vec<String>,
    pub end: Result<(FinishReason, u32, u32), GenError>,
}

impl Outcome {
    pub fn text(&self) -> String {
        self.texts.concat()
    }

    pub fn reason(&self) -> FinishReason {
        match &self.end {
            Ok((r, _, _)) => *r,
            Err(e) => panic!("the generation failed: {e}"),
        }
    }
}

/// Bound on any one wait in these tests.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The next event, or a panic after [`PATIENCE`].
pub async fn next_event(generation: &mut Generation) -> Option<GenEvent> {
    match tokio::time::timeout(PATIENCE, generation.events.recv()).await {
        Ok(e) => e,
        Err(_) => panic!("no event from the engine within {PATIENCE:?}"),
    }
}

/// Reads a generation to its end, checking the event order.
pub async fn collect(generation: Generation) -> Outcome {
    let out = Outcome { ids: Vec::new(), texts: Vec::new(), end: Err(GenError::Internal("no end".into())) };
    collect_from(generation, out).await
}

/// [`collect`] for a generation whose first tokens are already in `out`.
pub async fn collect_from(mut generation: Generation, mut out: Outcome) -> Outcome {
    loop {
        match next_event(&mut generation).await {
            Some(GenEvent::Token { id, text }) => {
                out.ids.push(id);
                out.texts.push(text);
            }
            Some(GenEvent::Finished { reason, prompt_tokens, generated_tokens }) => {
                assert_eq!(
                    generated_tokens as usize,
                    out.ids.len(),
                    "generated_tokens counts the Token events"
                );
                out.end = Ok((reason, prompt_tokens, generated_tokens));
                assert!(next_event(&mut generation).await.is_none(), "events after Finished");
                return out;
            }
            Some(GenEvent::Failed(e)) => {
                out.end = Err(e);
                assert!(next_event(&mut generation).await.is_none(), "events after Failed");
                return out;
            }
            None => panic!("the channel closed without Finished or Failed after {} tokens", out.ids.len()),
        }
    }
}

/// A prompt of `len` token ids, different for each `salt`, avoiding the special ids below 8.
pub fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32).map(|i| 8 + (i * 37 + salt * 101 + i * i * 3) % 1900).collect()
}
