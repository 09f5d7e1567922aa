//! The repository index, then a reload of a model with a configuration override (the server
//! must run with `--model-control-mode explicit`), and an unload.
//!
//! ```text
//! cargo run --release -p tern-client --example manage -- localhost:8001 tiny_add
//! ```

use tern_client::{Client, ConnectOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "localhost:8001".into());
    let model = args.next().unwrap_or_else(|| "tiny_add".into());
    let client = Client::connect(&url, ConnectOptions::new()).await?;

    for m in client.repository_index(false).await? {
        println!("{:<24} {:>3} {:<12} {}", m.name, m.version, m.state, m.reason);
    }
    // Triton's load parameter `config`: a JSON model configuration used instead of config.pbtxt.
    let config = r#"{"max_batch_size": 8, "dynamic_batching": {}}"#;
    client.load(&model, Some(config)).await?;
    println!("{model} ready: {}", client.model_ready(&model, "").await?);
    let stats = client.statistics(&model, "").await?;
    println!("{model}: {} inferences", stats.iter().map(|s| s.inference_count).sum::<u64>());
    client.unload(&model).await?;
    println!("{model} ready after unload: {}", client.model_ready(&model, "").await?);
    Ok(())
}
