//! `init_runtime`'s failures. Loading is process-global, so this binary is separate from the
//! other tests and runs every step in one test, bad paths before the good one.

mod common;

use std::path::Path;

use tern_backend_ort::{OrtBackendError, init_runtime};

fn init_err(path: &Path) -> OrtBackendError {
    match init_runtime(Some(path)) {
        Ok(info) => panic!("expected {} to fail, got {info:?}", path.display()),
        Err(e) => e,
    }
}

#[test]
fn bad_libraries_are_clean_errors_then_a_good_one_loads() {
    let dir = tempfile::tempdir().expect("create a temporary directory");

    let missing = dir.path().join("libonnxruntime.so.1.31.1");
    let err = init_err(&missing);
    assert!(matches!(err, OrtBackendError::LibraryNotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(
        msg.contains("run `make setup` (scripts/setup.sh) or pass --onnxruntime-lib / set ORT_DYLIB_PATH")
    );

    let err = init_err(dir.path());
    assert!(matches!(err, OrtBackendError::LibraryNotFound { .. }), "a directory: {err:?}");

    let not_a_library = dir.path().join("libonnxruntime.so");
    std::fs::write(&not_a_library, b"not an ELF file").expect("write a fake library");
    let err = init_err(&not_a_library);
    assert!(matches!(err, OrtBackendError::LibraryLoad { .. }), "{err:?}");
    assert!(err.to_string().contains("make setup"), "{err}");

    let good = common::ort_library();
    let info = match init_runtime(Some(&good)) {
        Ok(info) => info,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(info.version, "1.31.1");
    assert_eq!(init_runtime(Some(&good)).ok(), Some(info.clone()), "same library again");
    assert_eq!(init_runtime(None).ok(), Some(info), "no path once loaded");

    let err = init_err(&not_a_library);
    assert!(matches!(err, OrtBackendError::AlreadyInitialized { .. }), "{err:?}");
}
