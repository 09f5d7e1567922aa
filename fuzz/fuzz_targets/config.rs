//! Any text as config.pbtxt: parse, auto-complete and validate against a small signature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_core::{DataType, ModelSignature, TensorSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = tern_repository::parse_config(text) else { return };
    let spec = |name: &str| TensorSpec {
        name: name.into(),
        datatype: DataType::Fp32,
        dims: vec![-1, 16],
        utf8: false,
    };
    let signature = ModelSignature { inputs: vec![spec("INPUT0")], outputs: vec![spec("OUTPUT0")] };
    let _ = tern_repository::check_file_names("m", &config);
    let _ = tern_repository::validate(&config, &signature);
    if let Ok(full) = tern_repository::auto_complete("m", Some(config), &signature, false) {
        let _ = tern_repository::validate(&full, &signature);
    }
});
