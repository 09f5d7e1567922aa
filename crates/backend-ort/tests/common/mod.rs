//! Shared by the test binaries: where ONNX Runtime is, and the generated test models.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tern_backend_ort::{RuntimeInfo, init_runtime};

/// `ORT_DYLIB_PATH`, else the library `make setup` installs. Fails (never skips) when missing.
pub fn ort_library() -> PathBuf {
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
    path
}

/// Loads the runtime once for this test binary.
pub fn runtime() -> &'static RuntimeInfo {
    static INFO: OnceLock<RuntimeInfo> = OnceLock::new();
    INFO.get_or_init(|| match init_runtime(Some(&ort_library())) {
        Ok(info) => info,
        Err(e) => panic!("cannot load ONNX Runtime: {e}"),
    })
}

/// The models `tests/make_models.py` writes, generated once per test binary.
pub fn models() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = manifest.join("../../.venv/bin/python");
        assert!(
            python.is_file(),
            "these tests generate ONNX models with {} (onnx installed): run `make setup` (scripts/setup.sh)",
            python.display()
        );
        let status = Command::new(&python)
            .arg(manifest.join("tests/make_models.py"))
            .arg(dir.path())
            .status()
            .expect("run tests/make_models.py");
        assert!(status.success(), "tests/make_models.py failed: {status}");
        dir
    })
    .path()
}

pub fn model(name: &str) -> PathBuf {
    models().join(format!("{name}.onnx"))
}
