//! In-process ONNX Runtime throughput for one model at several batch sizes: the ceiling a server
//! on this machine can approach. Same backend crate, same session settings as tern-node.
//!
//! `cargo run --release -p tern-benches --bin ceiling -- --model examples/model_repository/light_resnet50/1/model.onnx`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use tern_backend::Backend;
use tern_backend_ort::{OrtBackend, SessionSettings};
use tern_core::{DataType, Tensor};

#[derive(Parser)]
struct Args {
    /// ONNX model file; its first input must be FP32 with a dynamic batch dimension.
    #[arg(long)]
    model: PathBuf,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    batch: Vec<usize>,
    /// Measuring time per batch size, after one warm-up run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Intra-op threads (the node's default for one instance is every core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let info = tern_backend_ort::init_runtime(None)?;
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let settings = SessionSettings { intra_op_threads: Some(threads), ..Default::default() };
    let mut backend = OrtBackend::load(&args.model, &settings)?;
    let sig = backend.signature();
    let input = sig.inputs.first().ok_or_else(|| anyhow::anyhow!("model has no inputs"))?.clone();
    anyhow::ensure!(input.datatype == DataType::Fp32, "first input must be FP32");
    println!(
        "model {} | onnxruntime {} | intra-op threads {threads} | {:.0} s per batch size",
        args.model.display(),
        info.version,
        args.seconds
    );
    println!("| batch | runs | inferences/s | ms per run |");
    println!("|---:|---:|---:|---:|");
    for &batch in &args.batch {
        let mut shape = input.dims.clone();
        if let Some(first) = shape.first_mut() {
            *first = batch as i64;
        }
        anyhow::ensure!(
            shape.iter().all(|&d| d > 0),
            "input {} has symbolic dims besides the batch",
            input.name
        );
        let n: usize = shape.iter().product::<i64>() as usize;
        let data: Vec<u8> = (0..n).flat_map(|i| ((i % 1000) as f32 / 1000.0).to_le_bytes()).collect();
        let tensor =
            Tensor { name: input.name.clone(), datatype: DataType::Fp32, shape, data: Bytes::from(data) };
        backend.infer(vec![tensor.clone()], &[])?; // warm-up
        let start = Instant::now();
        let mut runs = 0u64;
        while start.elapsed() < Duration::from_secs_f64(args.seconds) {
            backend.infer(vec![tensor.clone()], &[])?;
            runs += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "| {batch} | {runs} | {:.1} | {:.1} |",
            (runs as f64 * batch as f64) / secs,
            secs * 1000.0 / runs as f64
        );
    }
    Ok(())
}
