//! Health, metadata and one inference on the example `tiny_add` model (OUTPUT0 = INPUT0 +
//! INPUT1, FP32 [-1, 16]).
//!
//! ```text
//! tern serve --model-repository examples/model_repository &
//! cargo run --release -p tern-client --example infer -- localhost:8001
//! ```

use tern_client::{Client, ConnectOptions, InferRequest, InputTensor};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "localhost:8001".into());
    // With TLS and a token:
    // ConnectOptions::new().tls(TlsOptions::new("ca.pem")).token(std::env::var("TERN_TOKEN")?)
    let client = Client::connect(&url, ConnectOptions::new()).await?;
    println!("live {} ready {}", client.server_live().await?, client.server_ready().await?);

    let metadata = client.model_metadata("tiny_add", "").await?;
    for input in &metadata.inputs {
        println!("input {} {} {:?}", input.name, input.datatype, input.shape);
    }

    let a: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let b = vec![0.5f32; 16];
    let request = InferRequest::new("tiny_add")
        .input(InputTensor::new("INPUT0", &[1, 16], &a)?)
        .input(InputTensor::new("INPUT1", &[1, 16], &b)?);
    let result = client.infer(request).await?;
    let sum: Vec<f32> = result.output("OUTPUT0")?.to_vec()?;
    println!("OUTPUT0 {sum:?}");

    // Errors carry the server's gRPC code and message.
    if let Err(e) = client.infer(InferRequest::new("no_such_model")).await {
        println!("{e} (code {:?})", e.code());
    }
    Ok(())
}
