//! `tern models`, `tern load`, `tern unload`, `tern stats` and `tern health`: the repository
//! and health RPCs of any KServe v2 server, printed for people (tables) or scripts (`--json`).

use std::process::ExitCode;

use serde_json::json;
use tern_client::{Client, pb};

use crate::remote::{ConnectArgs, Failure, print_table, run};

// `tern models` (plain comments here and below: a doc comment would replace the command's about).
#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    /// Only the models that are ready.
    #[arg(long)]
    ready: bool,
    /// One JSON array of {name, version, state, reason} instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn models(args: ModelsArgs) -> ExitCode {
    run(&args.connect, |client| async move {
        let index = client.repository_index(args.ready).await?;
        if args.json {
            let models: Vec<_> = index
                .iter()
                .map(|m| json!({"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}))
                .collect();
            println!("{}", serde_json::Value::Array(models));
            return Ok(());
        }
        let rows: Vec<Vec<String>> =
            index.into_iter().map(|m| vec![m.name, m.version, m.state, m.reason]).collect();
        print_table(&["NAME", "VERSION", "STATE", "REASON"], &rows);
        Ok(())
    })
}

// `tern load`
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The model to load (or reload).
    name: String,
    /// A JSON model configuration used instead of the repository's config.pbtxt (Triton's
    /// load parameter `config`), e.g. '{"max_batch_size": 8}'.
    #[arg(long, value_name = "JSON")]
    config: Option<String>,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn load(args: LoadArgs) -> ExitCode {
    if let Some(config) = &args.config
        && let Err(e) = serde_json::from_str::<serde_json::Value>(config)
    {
        eprintln!("error: --config is not valid JSON: {e}");
        return ExitCode::from(crate::remote::EXIT_USAGE);
    }
    run(&args.connect, |client| async move {
        client.load(&args.name, args.config.as_deref()).await?;
        println!("loaded {}", args.name);
        Ok(())
    })
}

// `tern unload`
#[derive(Debug, clap::Args)]
pub struct UnloadArgs {
    /// The model to unload.
    name: String,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn unload(args: UnloadArgs) -> ExitCode {
    run(&args.connect, |client| async move {
        client.unload(&args.name).await?;
        println!("unloaded {}", args.name);
        Ok(())
    })
}

// `tern stats`
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// One model (all models when left out).
    name: Option<String>,
    /// One version of it (all versions when left out).
    #[arg(long, default_value = "")]
    model_version: String,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Mean microseconds of a duration statistic ("-" when nothing was counted).
fn mean_us(d: Option<pb::StatisticDuration>) -> Option<f64> {
    d.filter(|d| d.count > 0).map(|d| d.ns as f64 / d.count as f64 / 1e3)
}

pub fn stats(args: StatsArgs) -> ExitCode {
    run(&args.connect, |client| async move {
        let stats = client.statistics(args.name.as_deref().unwrap_or(""), &args.model_version).await?;
        let summary = |s: &pb::ModelStatistics| {
            let i = s.inference_stats.unwrap_or_default();
            let count = |d: Option<pb::StatisticDuration>| d.map_or(0, |d| d.count);
            let compute = [i.compute_input, i.compute_infer, i.compute_output]
                .iter()
                .map(|d| mean_us(*d).unwrap_or(0.0))
                .sum::<f64>();
            (count(i.success), count(i.fail), mean_us(i.queue), compute)
        };
        if args.json {
            let models: Vec<_> = stats
                .iter()
                .map(|s| {
                    let (success, fail, queue_us, compute_us) = summary(s);
                    json!({
                        "name": s.name, "version": s.version,
                        "inference_count": s.inference_count, "execution_count": s.execution_count,
                        "success": success, "fail": fail, "last_inference_ms": s.last_inference,
                        "queue_avg_us": queue_us, "compute_avg_us": compute_us,
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(models));
            return Ok(());
        }
        let rows: Vec<Vec<String>> = stats
            .iter()
            .map(|s| {
                let (success, fail, queue_us, compute_us) = summary(s);
                vec![
                    s.name.clone(),
                    s.version.clone(),
                    s.inference_count.to_string(),
                    s.execution_count.to_string(),
                    success.to_string(),
                    fail.to_string(),
                    queue_us.map_or("-".into(), |q| format!("{q:.1}")),
                    if success > 0 { format!("{compute_us:.1}") } else { "-".into() },
                ]
            })
            .collect();
        print_table(
            &["MODEL", "VERSION", "INFERENCES", "EXECUTIONS", "SUCCESS", "FAIL", "QUEUE_US", "COMPUTE_US"],
            &rows,
        );
        Ok(())
    })
}

// `tern health`
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn health(args: HealthArgs) -> ExitCode {
    run(&args.connect, |client| async move {
        let live = client.server_live().await?;
        let ready = client.server_ready().await?;
        // Health is public by default, the index is not: without a token, live and ready only.
        let models = match model_readiness(&client).await {
            Ok(models) => Some(models),
            Err(Failure::Client(e))
                if matches!(e.code(), Some(tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)) =>
            {
                eprintln!("models not listed: {e}");
                None
            }
            Err(e) => return Err(e),
        };
        if args.json {
            let models: Option<Vec<_>> = models.as_ref().map(|models| {
                models
                    .iter()
                    .map(|(name, version, ready)| json!({"name": name, "version": version, "ready": ready}))
                    .collect()
            });
            println!("{}", json!({"live": live, "ready": ready, "models": models}));
        } else {
            println!("live: {live}");
            println!("ready: {ready}");
            if let Some(models) = models {
                let rows: Vec<Vec<String>> = models
                    .into_iter()
                    .map(|(name, version, ready)| vec![name, version, ready.to_string()])
                    .collect();
                print_table(&["MODEL", "VERSION", "READY"], &rows);
            }
        }
        // For scripts (`tern health && ...`): success only when the server is live and ready.
        if live && ready { Ok(()) } else { Err(Failure::Answer("the server is not ready".into())) }
    })
}

/// Each model of the index with whether it is ready to serve.
async fn model_readiness(client: &Client) -> Result<Vec<(String, String, bool)>, Failure> {
    let mut out = Vec::new();
    for m in client.repository_index(false).await? {
        let ready = m.state == "READY" && client.model_ready(&m.name, &m.version).await?;
        out.push((m.name, m.version, ready));
    }
    Ok(out)
}
