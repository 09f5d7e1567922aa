//! The in-process ceiling for one sequence: the plainest greedy loop on `ort` over a model
//! folder in ONNX Runtime GenAI's layout (no engine, no channels, no tokenizer), printing
//! time to first token and tokens per second as one JSON line. The benchmark's row (c).
//!
//! ```text
//! ORT_DYLIB_PATH=.tern/onnxruntime/libonnxruntime.so.1.31.1 \
//!   cargo run --release --locked -p tern-generate --example ceiling -- \
//!   --model examples/model_repository/tiny_llm/1 --prompt-tokens 32 --max-tokens 128 [--threads N] [--runs R]
//! ```
//!
//! The prompt is `prompt-tokens` fixed ids; generation is greedy and ignores EOS, so every run
//! produces exactly `max-tokens` tokens. With `--runs R` the best run (least total time) is
//! reported, after one warm-up run.

use std::path::PathBuf;
use std::time::Instant;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

struct Args {
    model: PathBuf,
    prompt_tokens: usize,
    max_tokens: usize,
    threads: usize,
    runs: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { model: PathBuf::new(), prompt_tokens: 32, max_tokens: 128, threads: 0, runs: 3 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--model" => args.model = PathBuf::from(value()?),
            "--prompt-tokens" => args.prompt_tokens = number(value()?)?,
            "--max-tokens" => args.max_tokens = number(value()?)?,
            "--threads" => args.threads = number(value()?)?,
            "--runs" => args.runs = number(value()?)?.max(1),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.model.as_os_str().is_empty() {
        return Err("--model DIR is required".into());
    }
    if args.prompt_tokens == 0 || args.max_tokens == 0 {
        return Err("--prompt-tokens and --max-tokens must be at least 1".into());
    }
    Ok(args)
}

struct Model {
    layers: usize,
    kv_heads: usize,
    head_size: usize,
    vocab: usize,
    context: usize,
    past_key: String,
    past_value: String,
    present_key: String,
    present_value: String,
    filename: String,
}

fn read_config(dir: &std::path::Path) -> Result<Model, String> {
    let text = std::fs::read_to_string(dir.join("genai_config.json")).map_err(|e| e.to_string())?;
    let c: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let m = &c["model"];
    let d = &m["decoder"];
    let num =
        |v: &serde_json::Value, name: &str| v.as_u64().map(|n| n as usize).ok_or(format!("missing {name}"));
    let name = |v: &serde_json::Value, default: &str| v.as_str().unwrap_or(default).to_string();
    Ok(Model {
        layers: num(&d["num_hidden_layers"], "num_hidden_layers")?,
        kv_heads: num(&d["num_key_value_heads"], "num_key_value_heads")?,
        head_size: num(&d["head_size"], "head_size")?,
        vocab: num(&m["vocab_size"], "vocab_size")?,
        context: num(&m["context_length"], "context_length")?,
        past_key: name(&d["inputs"]["past_key_names"], "past_key_values.%d.key"),
        past_value: name(&d["inputs"]["past_value_names"], "past_key_values.%d.value"),
        present_key: name(&d["outputs"]["present_key_names"], "present.%d.key"),
        present_value: name(&d["outputs"]["present_value_names"], "present.%d.value"),
        filename: name(&d["filename"], "model.onnx"),
    })
}

/// One greedy generation; returns (time to first token, total time) in seconds.
fn generate(session: &mut Session, m: &Model, prompt: &[i64], max_tokens: usize) -> ort::Result<(f64, f64)> {
    let start = Instant::now();
    let mut past: Vec<DynValue> = (0..m.layers * 2)
        .map(|_| {
            Tensor::<f32>::from_array(([1, m.kv_heads, 0, m.head_size], Vec::<f32>::new()))
                .map(|t| t.into_dyn())
        })
        .collect::<ort::Result<_>>()?;
    let mut ids: Vec<i64> = prompt.to_vec();
    let mut positions: Vec<i64> = (0..prompt.len() as i64).collect();
    let mut total = 0usize;
    let mut ttft = 0.0;
    for step in 0..max_tokens {
        total += ids.len();
        let n = ids.len();
        let mut inputs: Vec<(String, SessionInputValue<'_>)> = vec![
            ("input_ids".into(), Tensor::from_array(([1, n], ids))?.into()),
            ("attention_mask".into(), Tensor::from_array(([1, total], vec![1i64; total]))?.into()),
            ("position_ids".into(), Tensor::from_array(([1, n], positions))?.into()),
        ];
        let mut values = past.into_iter();
        for layer in 0..m.layers {
            let (Some(k), Some(v)) = (values.next(), values.next()) else { unreachable!() };
            inputs.push((m.past_key.replace("%d", &layer.to_string()), k.into()));
            inputs.push((m.past_value.replace("%d", &layer.to_string()), v.into()));
        }
        let mut outputs = session.run(inputs)?;
        let (_, logits) = outputs["logits"].try_extract_tensor::<f32>()?;
        let last = &logits[logits.len() - m.vocab..];
        let mut best = 0;
        for (i, &l) in last.iter().enumerate() {
            if l > last[best] {
                best = i;
            }
        }
        if step == 0 {
            ttft = start.elapsed().as_secs_f64();
        }
        past = Vec::with_capacity(m.layers * 2);
        for layer in 0..m.layers {
            for pattern in [&m.present_key, &m.present_value] {
                let name = pattern.replace("%d", &layer.to_string());
                past.push(outputs.remove(&name).ok_or_else(|| ort::Error::new(format!("no output {name}")))?);
            }
        }
        ids = vec![best as i64];
        positions = vec![total as i64];
    }
    Ok((ttft, start.elapsed().as_secs_f64()))
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "ceiling: {e}\nusage: ceiling --model DIR [--prompt-tokens N] [--max-tokens M] [--threads T] [--runs R]"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("ceiling: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    tern_backend_ort::init_runtime(None).map_err(|e| e.to_string())?;
    let environment = tern_backend_ort::runtime::environment().map_err(|e| e.to_string())?;
    let m = read_config(&args.model)?;
    if args.prompt_tokens + args.max_tokens > m.context {
        return Err(format!(
            "prompt + max tokens ({}) exceed the context ({})",
            args.prompt_tokens + args.max_tokens,
            m.context
        ));
    }
    let mut builder = Session::builder(environment).map_err(|e| e.to_string())?;
    if args.threads > 0 {
        builder = builder.with_intra_threads(args.threads).map_err(|e| e.to_string())?;
    }
    let mut session = builder.commit_from_file(args.model.join(&m.filename)).map_err(|e| e.to_string())?;
    let prompt: Vec<i64> =
        (0..args.prompt_tokens as i64).map(|i| 8 + (i * 37 + i * i * 3) % 1900 % m.vocab as i64).collect();
    generate(&mut session, &m, &prompt, args.max_tokens).map_err(|e| e.to_string())?;
    let mut best: Option<(f64, f64)> = None;
    for _ in 0..args.runs {
        let r = generate(&mut session, &m, &prompt, args.max_tokens).map_err(|e| e.to_string())?;
        if best.is_none_or(|b| r.1 < b.1) {
            best = Some(r);
        }
    }
    let (ttft, total) = best.ok_or("no run")?;
    let json = serde_json::json!({
        "prompt_tokens": args.prompt_tokens,
        "generated_tokens": args.max_tokens,
        "ttft_ms": ttft * 1e3,
        "total_ms": total * 1e3,
        "tokens_per_s": args.max_tokens as f64 / total,
        "decode_tokens_per_s": if args.max_tokens > 1 { (args.max_tokens - 1) as f64 / (total - ttft) } else { 0.0 },
        "threads": args.threads,
        "runs": args.runs,
    });
    println!("{json}");
    Ok(())
}
