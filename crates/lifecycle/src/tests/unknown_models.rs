//! Loads and unloads of well-formed names no repository holds (what a router sends for every
//! unknown model a client asks for): neither a scan of the repositories for each, nor state
//! kept per name. Real repositories on disk, the real model manager (no load reaches a runtime).

use std::sync::Arc;
use std::time::Duration;

use super::fake::FakeFactory;
use crate::{LoadOptions, ModelManager};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_cost_no_scan_and_leave_nothing_behind() -> Result<(), Box<dyn std::error::Error>> {
    let repo = tempfile::tempdir()?;
    // Fifty models a full scan would read the config of.
    for i in 0..50 {
        let dir = repo.path().join(format!("model_{i:02}"));
        std::fs::create_dir_all(dir.join("1"))?;
        std::fs::write(dir.join("config.pbtxt"), format!("name: \"model_{i:02}\"\nmax_batch_size: 4\n"))?;
    }
    let metrics = Arc::new(tern_telemetry::Metrics::new(&Default::default())?);
    let factory = FakeFactory::default();
    let options = LoadOptions {
        strict_model_config: false,
        backend: Arc::new(factory.clone()),
        model_key: None,
        model_repositories: vec![repo.path().to_path_buf()],
        generative: None,
        response_cache: None,
        summary_quantiles: None,
    };
    let manager = Arc::new(ModelManager::new(
        metrics,
        vec![repo.path().to_path_buf()],
        options,
        2,
        Duration::from_secs(1),
    ));
    let scans_before = manager.full_scans();

    for i in 0..2000 {
        let name = format!("no_such_model_{i}");
        let err = manager.load(&name, None, Vec::new()).await.err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(format!("failed to load '{name}', failed to poll from model repository").as_str())
        );
        manager.unload(&name).await?; // Triton: success for a model it does not have
    }
    assert_eq!(manager.full_scans(), scans_before, "no full scan of the repositories per unknown name");
    assert_eq!(manager.model_locks_in_use(), 0, "no lock kept per name");
    assert_eq!(manager.loads_in_flight(), 0, "no load kept per name");
    assert!(manager.all_ready(), "nothing unknown is recorded against readiness");

    // Still finds what exists: the index lists every model, and a known name is looked up.
    let names: Vec<String> = manager.repository_index().await.into_iter().map(|r| r.name).collect();
    assert_eq!(names.len(), 50, "{names:?}");
    let known =
        manager.load("model_07", None, Vec::new()).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(known.contains("model_07") && !known.contains("failed to poll"), "{known}");
    assert_eq!(
        factory.runtime.loads.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no model file: no runtime"
    );
    Ok(())
}
