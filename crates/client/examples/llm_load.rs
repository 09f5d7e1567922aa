//! A load generator for decoupled language models: `concurrency` clients, each opening one
//! ModelStreamInfer call per request (as tritonclient's streaming clients do) and reading
//! its responses up to the final one, back to back for `warmup` + `seconds`. Prints one JSON
//! line: tokens generated in the measured window (each response's `output_ids`), tokens per
//! second, requests, errors, and time to first token p50/p99 (sending to the first response
//! with a token) of the requests that started in the window.
//!
//! `benches/llm.py` drives it for the served rows: a native client takes little of the
//! machine's CPU (perf_analyzer's role for one-shot models), so on a small machine the figure
//! is the server's, not the client's.
//!
//! ```text
//! cargo run --release -p tern-client --example llm_load -- --url 127.0.0.1:8001 \
//!   --model tiny_llm --prompts prompts.json --concurrency 16 [--seconds 4] [--warmup 1] \
//!   [--max-tokens 64] [--ignore-eos true]
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tern_client::{Client, ConnectOptions, GenerateParams};

struct Args {
    url: String,
    model: String,
    prompts: PathBuf,
    concurrency: usize,
    seconds: f64,
    warmup: f64,
    max_tokens: i32,
    ignore_eos: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: "127.0.0.1:8001".into(),
        model: "tiny_llm".into(),
        prompts: PathBuf::new(),
        concurrency: 1,
        seconds: 4.0,
        warmup: 1.0,
        max_tokens: 64,
        ignore_eos: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--url" => a.url = value,
            "--model" => a.model = value,
            "--prompts" => a.prompts = PathBuf::from(value),
            "--concurrency" => a.concurrency = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => a.seconds = value.parse().map_err(|e| bad(&e))?,
            "--warmup" => a.warmup = value.parse().map_err(|e| bad(&e))?,
            "--max-tokens" => a.max_tokens = value.parse().map_err(|e| bad(&e))?,
            "--ignore-eos" => a.ignore_eos = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if !(1..=4096).contains(&a.concurrency) {
        return Err("--concurrency must be 1 to 4096".into());
    }
    if !(a.seconds > 0.0 && a.seconds <= 3600.0 && (0.0..=3600.0).contains(&a.warmup)) {
        return Err("--seconds must be in (0, 3600] and --warmup in [0, 3600]".into());
    }
    Ok(a)
}

/// What the clients record, shared.
#[derive(Default)]
struct Tally {
    tokens: u64,
    requests: u64,
    ttft_s: Vec<f64>,
    errors: Vec<String>,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("llm_load: {e}");
            std::process::exit(2);
        }
    };
    let prompts: Vec<String> = match std::fs::read(&args.prompts)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("llm_load: --prompts {}: {e} (a JSON list of strings)", args.prompts.display());
            std::process::exit(2);
        }
    };
    if prompts.is_empty() {
        eprintln!("llm_load: --prompts {} is empty", args.prompts.display());
        std::process::exit(2);
    }
    let client = match Client::connect(&args.url, ConnectOptions::new()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("llm_load: cannot connect to {}: {e}", args.url);
            std::process::exit(1);
        }
    };
    let start = Instant::now() + Duration::from_secs_f64(args.warmup);
    let end = start + Duration::from_secs_f64(args.seconds);
    let params = GenerateParams {
        max_tokens: Some(args.max_tokens),
        ignore_eos: Some(args.ignore_eos),
        ..Default::default()
    };
    let tally = Arc::new(Mutex::new(Tally::default()));
    let prompts = Arc::new(prompts);
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let (client, params, tally, prompts, model) =
            (client.clone(), params.clone(), tally.clone(), prompts.clone(), args.model.clone());
        workers.push(tokio::spawn(async move {
            let mut k = w;
            while Instant::now() < end {
                let prompt = &prompts[k % prompts.len()];
                k += args.concurrency;
                let sent = Instant::now();
                let request = match params.request(&model, prompt) {
                    Ok(r) => r,
                    Err(e) => {
                        tally.lock().unwrap_or_else(|p| p.into_inner()).errors.push(e.to_string());
                        return;
                    }
                };
                // The request stream stays open until the final response, as tritonclient's.
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let _ = tx.try_send(request);
                let mut responses = match client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tally.lock().unwrap_or_else(|p| p.into_inner()).errors.push(e.to_string());
                        continue;
                    }
                };
                let mut first = true;
                while let Some(response) = responses.next().await {
                    let now = Instant::now();
                    let response = match response {
                        Ok(r) => r,
                        Err(e) => {
                            tally.lock().unwrap_or_else(|p| p.into_inner()).errors.push(e.to_string());
                            break;
                        }
                    };
                    let n = response.output("output_ids").map(|o| o.len()).unwrap_or(0) as u64;
                    let in_window = now >= start && now < end;
                    if n > 0 || response.is_final() {
                        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                        if in_window {
                            t.tokens += n;
                        }
                        if n > 0 && first {
                            first = false;
                            if sent >= start && now < end {
                                t.ttft_s.push((now - sent).as_secs_f64());
                            }
                        }
                        if response.is_final() && in_window {
                            t.requests += 1;
                        }
                    }
                    if response.is_final() {
                        break;
                    }
                }
                drop(tx);
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    t.ttft_s.sort_by(f64::total_cmp);
    let json = serde_json::json!({
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "tokens": t.tokens,
        "tokens_per_s": t.tokens as f64 / args.seconds,
        "requests": t.requests,
        "ttft_p50_ms": percentile(&t.ttft_s, 50.0) * 1e3,
        "ttft_p99_ms": percentile(&t.ttft_s, 99.0) * 1e3,
        "ttft_ms": t.ttft_s.iter().map(|s| s * 1e3).collect::<Vec<_>>(),
        "errors": t.errors.len(),
        "first_error": t.errors.first(),
    });
    println!("{json}");
}
