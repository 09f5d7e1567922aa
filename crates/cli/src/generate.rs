//! `tern generate NAME "prompt"`: text from a decoupled language model (Triton's generate
//! inputs over ModelStreamInfer); `--stream` prints the text as it comes. The text goes to
//! stdout, how it ended (finish reason, token counts) to stderr, or everything as JSON.

use std::io::Write;
use std::process::ExitCode;

use futures::StreamExt;
use serde_json::json;
use tern_client::{GenerateEvent, GenerateParams, GenerateSummary};

use crate::remote::{ConnectArgs, Failure, run};

// `tern generate` (a plain comment: a doc comment would replace the command's about).
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The language model.
    name: String,
    /// The prompt.
    prompt: String,
    /// Print the text as it is generated (one response per token).
    #[arg(long)]
    stream: bool,
    /// The most tokens to generate.
    #[arg(long, value_name = "N")]
    max_tokens: Option<i32>,
    /// Sampling temperature (0: greedy).
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    top_k: Option<i32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop at this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// One JSON object {text, finish_reason, prompt_tokens, completion_tokens} at the end.
    #[arg(long, conflicts_with = "stream")]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn generate(args: GenerateArgs) -> ExitCode {
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        stop: args.stop.clone(),
        stream: Some(args.stream),
        ..Default::default()
    };
    run(&args.connect, |client| async move {
        let mut generation = client.generate(&args.name, &args.prompt, &params).await?;
        let mut stdout = std::io::stdout();
        let mut summary: Option<GenerateSummary> = None;
        while let Some(event) = generation.next().await {
            match event? {
                GenerateEvent::Text(piece) if args.stream => {
                    let _ = stdout.write_all(piece.as_bytes());
                    let _ = stdout.flush();
                }
                GenerateEvent::Text(_) => {}
                GenerateEvent::Done(done) => summary = Some(done),
            }
        }
        let summary =
            summary.ok_or_else(|| Failure::Answer("the generation ended without a final response".into()))?;
        if args.json {
            println!(
                "{}",
                json!({
                    "text": summary.text,
                    "finish_reason": summary.finish_reason,
                    "prompt_tokens": summary.prompt_tokens,
                    "completion_tokens": summary.completion_tokens,
                })
            );
            return Ok(());
        }
        if args.stream {
            println!();
        } else {
            println!("{}", summary.text);
        }
        let count = |n: Option<i64>| n.map_or("-".to_string(), |n| n.to_string());
        eprintln!(
            "finish_reason: {}, prompt_tokens: {}, completion_tokens: {}",
            summary.finish_reason.as_deref().unwrap_or("-"),
            count(summary.prompt_tokens),
            count(summary.completion_tokens)
        );
        Ok(())
    })
}
