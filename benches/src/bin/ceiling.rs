//! In-process ONNX Runtime throughput for one model at several batch sizes: the ceiling a server
//! on this machine can approach. Same backend crate, same session settings as tern-node.
//!
//! `cargo run --release -p tern-benches --bin ceiling -- --model examples/model_repository/light_resnet50/1/model.onnx`
//!
//! `--device cuda` / `--device tensorrt` place the session the way a config.pbtxt would
//! (`instance_group { kind: KIND_GPU gpus: [N] }`, plus a `tensorrt` accelerator), through
//! `tern_backend_ort::instance_plan`, so the run also checks that path. `--check` first
//! compares the device's outputs with a CPU session's on the same batch.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use tern_backend::Backend;
use tern_backend_ort::{
    AcceleratorScope, InstancePlan, OrtBackend, SessionSettings, instance_plan, session_settings_for,
};
use tern_core::{DataType, Tensor, TensorSpec};
use tern_proto::inference::model_instance_group::Kind;
use tern_proto::inference::model_optimization_policy::ExecutionAccelerators;
use tern_proto::inference::model_optimization_policy::execution_accelerators::Accelerator;
use tern_proto::inference::{ModelConfig, ModelInstanceGroup, ModelOptimizationPolicy};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
    Tensorrt,
}

#[derive(Parser)]
struct Args {
    /// ONNX model file; its first input must be FP32 with a dynamic batch dimension.
    #[arg(long)]
    model: PathBuf,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    batch: Vec<usize>,
    /// Measuring time per batch size, after the warm-up runs (0: measure nothing, e.g. with
    /// --check).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Warm-up runs per batch size (GPU providers pick kernels on the first runs of a shape).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Intra-op threads (the node's default for one instance is every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Where the session runs.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// The GPU for `--device cuda|tensorrt`.
    #[arg(long, default_value_t = 0)]
    gpu: i32,
    /// TensorRT `precision_mode` (FP32, FP16, BF16, INT8).
    #[arg(long, default_value = "FP16")]
    precision: String,
    /// TensorRT engine cache root (engines in `<root>/ceiling`, as with `--accelerator-cache-dir`); none: no cache.
    #[arg(long)]
    trt_cache: Option<PathBuf>,
    /// Before measuring, compare the outputs with a CPU session's on this batch size (0: no).
    #[arg(long, default_value_t = 0)]
    check: usize,
    /// Largest absolute difference allowed by `--check` (default 2e-3 for CUDA, whose
    /// convolutions may use TF32, and 2e-2 for TensorRT below FP32).
    #[arg(long)]
    atol: Option<f32>,
    /// Run on CPU (or on CUDA without TensorRT) when the device asked for is unusable, as a node
    /// with --allow-cpu-fallback does, instead of failing.
    #[arg(long)]
    allow_fallback: bool,
    /// Print only the table rows (to join the tables of several runs).
    #[arg(long)]
    rows_only: bool,
    /// Run each measured batch size as a bucket through an IO binding with reused buffers, as a
    /// node's GPU instances do (`io_binding`, issue 25).
    #[arg(long)]
    io_binding: bool,
    /// `optimization { cuda { graphs: true } }`: one CUDA graph per batch size (implies
    /// --io-binding; CUDA provider only).
    #[arg(long)]
    cuda_graphs: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let info = tern_backend_ort::init_runtime(None)?;
    anyhow::ensure!(!args.cuda_graphs || args.device == DeviceArg::Cuda, "--cuda-graphs needs --device cuda");
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let cpu_settings = SessionSettings { intra_op_threads: Some(threads), ..Default::default() };
    // A CPU session first: it gives the signature (for TensorRT's shape profile) and the
    // reference outputs for --check.
    let mut cpu = OrtBackend::load(&args.model, &cpu_settings)?;
    let sig = cpu.signature();
    let input = sig.inputs.first().ok_or_else(|| anyhow::anyhow!("model has no inputs"))?.clone();
    anyhow::ensure!(input.datatype == DataType::Fp32, "first input must be FP32");

    let (backend, label) = match args.device {
        DeviceArg::Cpu => (cpu, "CPU".to_string()),
        DeviceArg::Cuda | DeviceArg::Tensorrt => {
            let mut plan = gpu_plan(&args, &input, threads)?;
            plan.settings.cuda_graphs = args.cuda_graphs;
            anyhow::ensure!(
                !args.cuda_graphs || plan.settings.uses_cuda_graphs(),
                "--cuda-graphs needs the CUDA provider (not TensorRT)"
            );
            let started = Instant::now();
            let mut device = OrtBackend::load(&args.model, &plan.settings)?;
            eprintln!(
                "placed on {}{}: session created in {:.1} s",
                plan.label,
                if plan.fallback { " (FALLBACK)" } else { "" },
                started.elapsed().as_secs_f64()
            );
            if args.check > 0 {
                check(&args, &input, &mut cpu, &mut device, &plan.label)?;
            }
            drop(cpu);
            (device, plan.label)
        }
    };
    if args.seconds <= 0.0 {
        return Ok(());
    }
    let mut buckets: Vec<u32> = args.batch.iter().filter_map(|&b| u32::try_from(b).ok()).collect();
    buckets.sort_unstable();
    buckets.dedup();
    let mut backend = backend.with_batch_buckets(buckets).with_io_binding(args.io_binding);
    anyhow::ensure!(
        backend.io_binding() == (args.io_binding || args.cuda_graphs),
        "the model cannot run through an IO binding (see the log)"
    );
    let label = match (args.cuda_graphs, backend.io_binding()) {
        (true, _) => format!("{label} (io binding, CUDA graphs)"),
        (false, true) => format!("{label} (io binding)"),
        (false, false) => label,
    };
    if !args.rows_only {
        println!(
            "model {} | onnxruntime {} | {label} | intra-op threads {threads} | {:.0} s per batch size",
            args.model.display(),
            info.version,
            args.seconds
        );
        println!("| device | batch | runs | inferences/s | ms per run |");
        println!("|---|---:|---:|---:|---:|");
    }
    for &batch in &args.batch {
        let tensor = batch_of(&input, batch, 0)?;
        for _ in 0..args.warmup.max(1) {
            backend.infer(vec![tensor.clone()], &[])?;
        }
        let start = Instant::now();
        let mut runs = 0u64;
        while start.elapsed() < Duration::from_secs_f64(args.seconds) {
            backend.infer(vec![tensor.clone()], &[])?;
            runs += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "| {label} | {batch} | {runs} | {:.1} | {:.2} |",
            (runs as f64 * batch as f64) / secs,
            secs * 1000.0 / runs as f64
        );
    }
    Ok(())
}

/// The session a config.pbtxt with `KIND_GPU` (and a `tensorrt` accelerator) would get.
fn gpu_plan(args: &Args, input: &TensorSpec, threads: usize) -> anyhow::Result<InstancePlan> {
    let mut config = ModelConfig {
        name: "ceiling".to_string(),
        instance_group: vec![ModelInstanceGroup {
            kind: Kind::Gpu as i32,
            count: 1,
            gpus: vec![args.gpu],
            ..Default::default()
        }],
        ..Default::default()
    };
    if args.device == DeviceArg::Tensorrt {
        // One engine for every measured batch size: TensorRT rebuilds when a shape leaves the
        // profile, which would otherwise happen at each new batch size.
        let dims = |batch: usize| {
            let mut d: Vec<String> = input.dims.iter().map(|d| d.to_string()).collect();
            if let Some(first) = d.first_mut() {
                *first = batch.to_string();
            }
            format!("{}:{}", input.name, d.join("x"))
        };
        let smallest = args.batch.iter().copied().chain([args.check]).filter(|&b| b > 0).min().unwrap_or(1);
        let largest = args.batch.iter().copied().chain([args.check]).max().unwrap_or(1);
        let mut parameters = vec![
            ("precision_mode", args.precision.clone()),
            ("trt_profile_min_shapes", dims(smallest)),
            ("trt_profile_opt_shapes", dims(largest)),
            ("trt_profile_max_shapes", dims(largest)),
        ];
        if let Some(cache) = &args.trt_cache {
            // Engines go to <cache>/ceiling, as tern-node's --accelerator-cache-dir would put them.
            std::fs::create_dir_all(cache)?;
            parameters.push(("trt_engine_cache_enable", "1".to_string()));
        }
        config.optimization = Some(ModelOptimizationPolicy {
            execution_accelerators: Some(ExecutionAccelerators {
                gpu_execution_accelerator: vec![Accelerator {
                    name: "tensorrt".to_string(),
                    parameters: parameters.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                }],
                cpu_execution_accelerator: vec![],
            }),
            ..Default::default()
        });
    }
    let scope = AcceleratorScope {
        model: config.name.clone(),
        cache_dir: args.trt_cache.clone(),
        ..Default::default()
    };
    let mut base = session_settings_for(&config, &scope)?;
    base.intra_op_threads = Some(threads);
    let plans = instance_plan(&config, &base, args.allow_fallback)?;
    plans.into_iter().next().ok_or_else(|| anyhow::anyhow!("instance_plan placed no instance"))
}

/// Compares `device` with `cpu` on one batch of distinct rows; fails beyond the tolerance.
fn check(
    args: &Args,
    input: &TensorSpec,
    cpu: &mut OrtBackend,
    device: &mut OrtBackend,
    label: &str,
) -> anyhow::Result<()> {
    let atol = args.atol.unwrap_or(match (args.device, args.precision.as_str()) {
        (DeviceArg::Tensorrt, p) if p != "FP32" => 2e-2,
        _ => 2e-3,
    });
    let tensor = batch_of(input, args.check, 1)?;
    let want = cpu.infer(vec![tensor.clone()], &[])?;
    let got = device.infer(vec![tensor], &[])?;
    anyhow::ensure!(want.len() == got.len(), "{label}: {} outputs, CPU gave {}", got.len(), want.len());
    for (w, g) in want.iter().zip(&got) {
        anyhow::ensure!(
            w.shape == g.shape,
            "{label}: output {} has shape {:?}, CPU {:?}",
            g.name,
            g.shape,
            w.shape
        );
        anyhow::ensure!(w.datatype == DataType::Fp32, "--check compares FP32 outputs only");
        let (w, g): (Vec<f32>, Vec<f32>) = (floats(&w.data), floats(&g.data));
        let max_diff = w.iter().zip(&g).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let max_value = w.iter().copied().fold(0f32, f32::max);
        let rows = args.check;
        let per_row = w.len() / rows.max(1);
        let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
        let same_top1 = (0..rows)
            .filter(|r| {
                argmax(&w[r * per_row..(r + 1) * per_row]) == argmax(&g[r * per_row..(r + 1) * per_row])
            })
            .count();
        let verdict = if max_diff <= atol { "OK" } else { "FAIL" };
        println!(
            "check {label} vs CPU, batch {rows}: max |diff| {max_diff:.2e} (atol {atol:.0e}, largest CPU value \
             {max_value:.3}), top-1 agrees on {same_top1}/{rows} rows: {verdict}"
        );
        anyhow::ensure!(max_diff <= atol, "{label}: outputs differ from CPU by {max_diff:.3e} > {atol:.0e}");
    }
    Ok(())
}

fn floats(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// `batch` rows of the input; `variant` 0 repeats one pattern, 1 gives each row its own.
fn batch_of(input: &TensorSpec, batch: usize, variant: usize) -> anyhow::Result<Tensor> {
    let mut shape = input.dims.clone();
    if let Some(first) = shape.first_mut() {
        *first = batch as i64;
    }
    anyhow::ensure!(shape.iter().all(|&d| d > 0), "input {} has symbolic dims besides the batch", input.name);
    let n: usize = shape.iter().product::<i64>() as usize;
    let per_row = n / batch.max(1);
    let data: Vec<u8> = (0..n)
        .flat_map(|i| {
            let (row, j) = (i / per_row.max(1), i % per_row.max(1));
            let v = if variant == 0 {
                (i % 1000) as f32 / 1000.0
            } else {
                // A smooth pattern per row, different rows shifted: outputs differ by row.
                ((j as f32 * 0.001 + row as f32 * 0.37).sin() + 1.0) * 0.5
            };
            v.to_le_bytes()
        })
        .collect();
    Ok(Tensor { name: input.name.clone(), datatype: DataType::Fp32, shape, data: Bytes::from(data) })
}
