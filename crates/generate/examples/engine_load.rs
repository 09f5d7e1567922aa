//! The engine in process, without a server: `concurrency` clients each run `requests`
//! greedy generations (EOS ignored, exactly `max-tokens` tokens) back to back; prints
//! generated tokens per second and time to first token p50/p99 as one JSON line. Compare
//! with the `ceiling` example at concurrency 1, and with `--max-batch 1` (batching off).
//!
//! ```text
//! ORT_DYLIB_PATH=.tern/onnxruntime/libonnxruntime.so.1.31.1 \
//!   cargo run --release --locked -p tern-generate --example engine_load -- \
//!   --model examples/model_repository/tiny_llm/1 --concurrency 16 [--max-batch 16] \
//!   [--prompt-tokens 32] [--max-tokens 128] [--requests 4] [--threads N] [--prompts FILE] [--cuda DEVICE]
//! ```
//!
//! `--cuda DEVICE` runs the engine on ONNX Runtime's CUDA provider on that GPU, the KV cache kept
//! on the device between steps, as a `KIND_GPU` model runs in tern-node (needs ONNX Runtime's
//! GPU build in ORT_DYLIB_PATH).
//!
//! `--prompts FILE` (a JSON list of strings) replaces the synthetic prompts of `--prompt-tokens`
//! tokens: client `c`'s request `r` takes prompt `c + r * concurrency` (round robin), as
//! `benches/llm.py`'s served clients do.

use std::path::PathBuf;
use std::time::Instant;

use tern_generate::{Engine, EngineOptions, GenEvent, GenerateRequest, Prompt, SamplingParams};

struct Args {
    model: PathBuf,
    concurrency: usize,
    max_batch: usize,
    prompt_tokens: usize,
    max_tokens: u32,
    requests: usize,
    threads: usize,
    prompts: Option<PathBuf>,
    cuda: Option<i32>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: PathBuf::new(),
        concurrency: 1,
        max_batch: 16,
        prompt_tokens: 32,
        max_tokens: 128,
        requests: 4,
        threads: 0,
        prompts: None,
        cuda: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--model" => a.model = PathBuf::from(&value),
            "--concurrency" => a.concurrency = number()?.clamp(1, 1024),
            "--max-batch" => a.max_batch = number()?,
            "--prompt-tokens" => a.prompt_tokens = number()?.max(1),
            "--max-tokens" => a.max_tokens = number()?.max(1) as u32,
            "--requests" => a.requests = number()?.clamp(1, 10_000),
            "--threads" => a.threads = number()?,
            "--prompts" => a.prompts = Some(PathBuf::from(&value)),
            "--cuda" => a.cuda = Some(number()?.min(1024) as i32),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.model.as_os_str().is_empty() {
        return Err("--model DIR is required".into());
    }
    Ok(a)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("engine_load: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = tern_backend_ort::init_runtime(None) {
        eprintln!("engine_load: {e}");
        std::process::exit(1);
    }
    let options = EngineOptions {
        max_batch: args.max_batch,
        intra_threads: args.threads,
        cuda_device: args.cuda,
        ..EngineOptions::default()
    };
    let engine = match Engine::load(&args.model, options) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("engine_load: {e}");
            std::process::exit(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("engine_load: {e}");
            std::process::exit(1);
        }
    };
    let texts: Vec<String> = match &args.prompts {
        None => Vec::new(),
        Some(path) => match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).map_err(|e| e.to_string()))
        {
            Ok(t) if !t.is_empty() => t,
            Ok(_) => {
                eprintln!("engine_load: --prompts {}: no prompts", path.display());
                std::process::exit(2);
            }
            Err(e) => {
                eprintln!("engine_load: --prompts {}: {e} (a JSON list of strings)", path.display());
                std::process::exit(2);
            }
        },
    };
    let texts = std::sync::Arc::new(texts);
    let vocab = engine.info().vocab_size as u32;
    let concurrency = args.concurrency;
    let request = move |client: usize, r: usize| GenerateRequest {
        prompt: if texts.is_empty() {
            Prompt::Tokens(
                (0..args.prompt_tokens as u32)
                    .map(|i| 8 + (i * 37 + (client * 1000 + r) as u32 * 101 + i * i * 3) % (vocab - 8))
                    .collect(),
            )
        } else {
            Prompt::Text(texts[(client + r * concurrency) % texts.len()].clone())
        },
        max_tokens: Some(args.max_tokens),
        sampling: SamplingParams::default(),
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: true,
        deadline: None,
    };
    // Warm-up.
    runtime.block_on(async {
        if let Ok(mut g) = engine.submit(request(0, 0)) {
            while g.events.recv().await.is_some() {}
        }
    });
    let start = Instant::now();
    let results = runtime.block_on(async {
        let mut clients = Vec::new();
        for c in 0..args.concurrency {
            let engine = engine.clone();
            let request = request.clone();
            clients.push(tokio::spawn(async move {
                let mut ttfts = Vec::new();
                let mut tokens = 0usize;
                for r in 0..args.requests {
                    let sent = Instant::now();
                    let Ok(mut g) = engine.submit(request(c, r)) else { continue };
                    let mut first = true;
                    while let Some(event) = g.events.recv().await {
                        if let GenEvent::Token { .. } = event {
                            if first {
                                ttfts.push(sent.elapsed().as_secs_f64() * 1e3);
                                first = false;
                            }
                            tokens += 1;
                        }
                    }
                }
                (ttfts, tokens)
            }));
        }
        let mut all = Vec::new();
        for c in clients {
            if let Ok(r) = c.await {
                all.push(r);
            }
        }
        all
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut ttfts: Vec<f64> = results.iter().flat_map(|(t, _)| t.iter().copied()).collect();
    ttfts.sort_by(f64::total_cmp);
    let tokens: usize = results.iter().map(|(_, n)| n).sum();
    let json = serde_json::json!({
        "concurrency": args.concurrency,
        "max_batch": args.max_batch,
        "prompt_tokens": args.prompt_tokens,
        "max_tokens": args.max_tokens,
        "requests": args.concurrency * args.requests,
        "generated_tokens": tokens,
        "tokens_per_s": tokens as f64 / elapsed,
        "ttft_p50_ms": percentile(&ttfts, 0.5),
        "ttft_p99_ms": percentile(&ttfts, 0.99),
        "ttft_ms": ttfts,
    });
    println!("{json}");
}
