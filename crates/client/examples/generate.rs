//! Streamed text generation on the example language model `tiny_llm`.
//!
//! ```text
//! cargo run --release -p tern-client --example generate -- localhost:8001 "Once upon a time"
//! ```

use std::io::Write;

use futures::StreamExt;
use tern_client::{Client, ConnectOptions, GenerateEvent, GenerateParams};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "localhost:8001".into());
    let prompt = args.next().unwrap_or_else(|| "Once upon a time".into());
    let client = Client::connect(&url, ConnectOptions::new()).await?;

    let params = GenerateParams { max_tokens: Some(16), temperature: Some(0.0), ..Default::default() };
    let mut generation = client.generate("tiny_llm", &prompt, &params).await?;
    while let Some(event) = generation.next().await {
        match event? {
            GenerateEvent::Text(piece) => {
                print!("{piece}");
                std::io::stdout().flush()?;
            }
            GenerateEvent::Done(summary) => println!(
                "\n[finish_reason {:?}, prompt_tokens {:?}, completion_tokens {:?}]",
                summary.finish_reason, summary.prompt_tokens, summary.completion_tokens
            ),
        }
    }
    Ok(())
}
