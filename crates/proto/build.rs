//! Compiles proto/ into Rust at build time. protoc comes from the protoc-bin-vendored crate so
//! the build needs nothing installed on the machine; PROTOC in the environment overrides it.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY-free: build scripts are single-threaded; set_var is only unsafe in 2024 for
        // multi-threaded programs.
        #[allow(unsafe_code)]
        unsafe {
            env::set_var("PROTOC", protoc)
        };
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let files = [
        root.join("inference/grpc_service.proto"),
        root.join("inference/model_config.proto"),
        root.join("tern/cluster/v1/cluster.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure()
        // Tensor payloads stay `bytes::Bytes`: slices of the received buffer, never copied.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .bytes(".inference.InferTensorContents.bytes_contents")
        .codec_path("crate::codec::SmallBufferCodec")
        .file_descriptor_set_path(out.join("inference_descriptor.bin"))
        .compile_protos(&files, &[root])?;
    Ok(())
}
