//! Load, reload beside the serving version, failed reload, unload with a request in flight,
//! and concurrent loads of one model, each on a real multi-threaded tokio runtime with real
//! schedulers and instance threads; every wait is bounded.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tern_core::{DataType, Tensor};
use tern_scheduler::InferJob;

use super::fake::{FakeFactory, FakeGenerativeFactory};
use crate::{LoadOptions, ModelManager};

pub(super) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Two CPU instances of a model with input `x` and output `y`, both FP32 `[2]`.
pub(super) fn write_model(repo: &Path, name: &str, generation: u32) -> std::io::Result<()> {
    let dir = repo.join(name);
    std::fs::create_dir_all(dir.join("1"))?;
    std::fs::write(
        dir.join("config.pbtxt"),
        format!(
            "name: \"{name}\"\nmax_batch_size: 0\n\
             input [ {{ name: \"x\" data_type: TYPE_FP32 dims: [ 2 ] }} ]\n\
             output [ {{ name: \"y\" data_type: TYPE_FP32 dims: [ 2 ] }} ]\n\
             instance_group [ {{ count: 2 kind: KIND_CPU }} ]\n"
        ),
    )?;
    std::fs::write(dir.join("1").join("model.onnx"), generation.to_string())
}

pub(super) struct Harness {
    pub(super) repo: tempfile::TempDir,
    fake: FakeFactory,
    pub(super) generative: FakeGenerativeFactory,
    pub(super) manager: Arc<ModelManager>,
}

impl Harness {
    pub(super) fn new() -> Result<Harness, Box<dyn std::error::Error>> {
        Harness::with_cache(None)
    }

    pub(super) fn with_cache(
        response_cache: Option<Arc<tern_scheduler::ResponseCache>>,
    ) -> Result<Harness, Box<dyn std::error::Error>> {
        let repo = tempfile::tempdir()?;
        let fake = FakeFactory::default();
        let generative = FakeGenerativeFactory::default();
        let options = LoadOptions {
            strict_model_config: true,
            backend: Arc::new(fake.clone()),
            model_key: None,
            model_repositories: vec![repo.path().to_path_buf()],
            generative: Some(Arc::new(generative.clone())),
            response_cache,
            summary_quantiles: None,
        };
        let metrics = Arc::new(tern_telemetry::Metrics::new(&Default::default())?);
        let manager = Arc::new(ModelManager::new(
            metrics,
            vec![repo.path().to_path_buf()],
            options,
            2,
            Duration::from_secs(10),
        ));
        Ok(Harness { repo, fake, generative, manager })
    }

    fn count(&self, which: fn(&super::fake::FakeRuntime) -> &std::sync::atomic::AtomicUsize) -> usize {
        which(&self.fake.runtime).load(Ordering::SeqCst)
    }

    fn alive(&self) -> usize {
        self.count(|r| &r.alive)
    }

    fn loads(&self) -> usize {
        self.count(|r| &r.loads)
    }

    fn set_fail(&self, reason: Option<&str>) {
        *self.fake.runtime.fail.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            reason.map(str::to_string);
    }

    /// The state and reason the repository index shows for `name` version 1.
    pub(super) fn row(&self, name: &str) -> (String, String) {
        let rows = self.manager.index();
        let row = rows.iter().find(|r| r.name == name && r.version == "1");
        row.map(|r| (r.state.map_or("", tern_core::ModelState::as_str).to_string(), r.reason.clone()))
            .unwrap_or_default()
    }
}

/// Runs one request on the version `name` serves now; answers the generation that served it.
async fn infer(manager: &ModelManager, name: &str) -> Result<f32, String> {
    let model = manager.get(name, "").map_err(|e| e.to_string())?;
    let x = Tensor { name: "x".into(), datatype: DataType::Fp32, shape: vec![2], data: vec![0u8; 8].into() };
    let job = InferJob {
        inputs: vec![x],
        batch_size: 0,
        outputs: vec![],
        priority: 0,
        timeout: None,
        sequence: Default::default(),
    };
    let outputs = model.scheduler.infer(job).await.map_err(|e| e.to_string())?;
    let first = outputs.first().and_then(|t| t.data.get(..4)).ok_or("no output")?;
    Ok(f32::from_le_bytes([first[0], first[1], first[2], first[3]]))
}

/// Waits (at most 5 s) until `done` holds.
pub(super) async fn eventually(what: &str, done: impl Fn() -> bool) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_serves_the_model_on_its_instances() -> TestResult {
    let h = Harness::new()?;
    write_model(h.repo.path(), "m", 1)?;
    assert!(h.manager.get("m", "").is_err(), "nothing loads before it is asked to");
    h.manager.load("m", None, Vec::new()).await?;
    assert_eq!(infer(&h.manager, "m").await?, 1.0);
    assert_eq!((h.loads(), h.alive()), (1, 2), "one load, the config's two instances");
    assert_eq!(h.row("m"), ("READY".to_string(), String::new()));
    assert_eq!(h.manager.ready_versions("m"), ["1"]);
    assert!(h.manager.all_ready());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_opens_beside_the_old_version_which_serves_until_the_new_one_is_ready() -> TestResult {
    let h = Harness::new()?;
    write_model(h.repo.path(), "m", 1)?;
    h.manager.load("m", None, Vec::new()).await?;
    let old = h.manager.get("m", "")?;

    write_model(h.repo.path(), "m", 2)?;
    h.fake.runtime.load_gate.close();
    let reload = tokio::spawn({
        let manager = h.manager.clone();
        async move { manager.load("m", None, Vec::new()).await }
    });
    eventually("the reload has opened its first instance", || {
        h.fake.runtime.load_gate.waiting.load(Ordering::SeqCst) == 1
    })
    .await?;
    // Beside: the old version's two instances and the new one's first, all alive.
    assert_eq!(h.alive(), 3);
    assert_eq!(infer(&h.manager, "m").await?, 1.0, "the old version serves while the new one loads");
    assert_eq!(h.row("m"), ("READY".to_string(), String::new()));
    assert!(Arc::ptr_eq(&old, &h.manager.get("m", "")?));
    drop(old);

    h.fake.runtime.load_gate.open();
    reload.await??;
    assert_eq!(infer(&h.manager, "m").await?, 2.0, "traffic switched to the new version");
    assert_eq!(h.row("m"), ("READY".to_string(), String::new()));
    eventually("the old version's instances are freed", || h.alive() == 2).await?;
    assert!(h.count(|r| &r.releases) >= 1, "freed memory handed back after the drain");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_keeps_the_old_version_serving_and_reports_why() -> TestResult {
    let h = Harness::new()?;
    write_model(h.repo.path(), "m", 1)?;
    h.manager.load("m", None, Vec::new()).await?;

    write_model(h.repo.path(), "m", 2)?;
    h.set_fail(Some("fake: out of device memory"));
    let err = h.manager.load("m", None, Vec::new()).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("failed to load 'm'") && err.contains("fake: out of device memory"), "{err}");
    assert_eq!(infer(&h.manager, "m").await?, 1.0, "the previous load still serves");
    let (state, reason) = h.row("m");
    assert_eq!(state, "READY");
    assert!(
        reason.contains("reload failed, serving the previous load")
            && reason.contains("out of device memory"),
        "{reason}"
    );
    assert_eq!(h.alive(), 2, "nothing of the failed load is left");
    assert!(h.manager.all_ready(), "a failed reload that kept its version serving stays ready, as in Triton");

    // Once the cause is gone, a reload switches and the reason clears.
    h.set_fail(None);
    h.manager.load("m", None, Vec::new()).await?;
    assert_eq!(infer(&h.manager, "m").await?, 2.0);
    assert_eq!(h.row("m"), ("READY".to_string(), String::new()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unload_lets_the_request_in_flight_finish_then_frees_the_model() -> TestResult {
    let h = Harness::new()?;
    write_model(h.repo.path(), "m", 1)?;
    h.manager.load("m", None, Vec::new()).await?;

    h.fake.runtime.request_gate.close();
    let request = tokio::spawn({
        let manager = h.manager.clone();
        async move {
            let served = infer(&manager, "m").await;
            (served, Instant::now())
        }
    });
    eventually("the request runs on an instance", || {
        h.fake.runtime.request_gate.waiting.load(Ordering::SeqCst) == 1
    })
    .await?;
    let unload = tokio::spawn({
        let manager = h.manager.clone();
        async move { manager.unload("m").await.map(|()| Instant::now()) }
    });
    eventually("the model stops taking requests", || h.manager.get("m", "").is_err()).await?;
    assert_eq!(h.row("m"), ("UNAVAILABLE".to_string(), "unloaded".to_string()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!unload.is_finished(), "the unload waits for the request in flight");
    assert_eq!(h.alive(), 2, "the instances stay while the request runs");

    h.fake.runtime.request_gate.open();
    let (served, answered) = request.await?;
    assert_eq!(served?, 1.0, "the request in flight completes");
    let unloaded = unload.await??;
    assert!(answered <= unloaded, "the request completed before the unload returned");
    assert_eq!(h.alive(), 0, "the model is gone once the unload returns");
    assert_eq!(h.count(|r| &r.releases), 1);
    assert!(h.manager.all_ready(), "an unloaded model does not hold readiness back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_of_one_model_share_one_load_and_its_result() -> TestResult {
    let h = Harness::new()?;
    write_model(h.repo.path(), "m", 1)?;
    write_model(h.repo.path(), "n", 1)?;
    let load_twice = |name: &'static str| {
        let first = tokio::spawn({
            let manager = h.manager.clone();
            async move { manager.load(name, None, Vec::new()).await }
        });
        let manager = h.manager.clone();
        let runtime = h.fake.runtime.clone();
        async move {
            eventually("the first load runs", || runtime.load_gate.waiting.load(Ordering::SeqCst) == 1)
                .await?;
            let second = tokio::spawn({
                let manager = manager.clone();
                async move { manager.load(name, None, Vec::new()).await }
            });
            eventually("the second caller joins the held load", || manager.loads_joined() == 1).await?;
            runtime.load_gate.open();
            let results = (first.await?, second.await?);
            Ok::<_, Box<dyn std::error::Error>>(results)
        }
    };

    h.fake.runtime.load_gate.close();
    let (first, second) = load_twice("m").await?;
    assert!(first.is_ok() && second.is_ok(), "{first:?} {second:?}");
    assert_eq!((h.loads(), h.alive()), (1, 2), "one load happened");
    assert_eq!(infer(&h.manager, "m").await?, 1.0);

    // A failure is both callers' answer too.
    h.set_fail(Some("fake: cannot open"));
    h.fake.runtime.load_gate.close();
    let (first, second) = load_twice("n").await?;
    let first = first.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(first.contains("fake: cannot open"), "{first}");
    assert_eq!(second.err().map(|e| e.to_string()).unwrap_or_default(), first);
    assert_eq!(h.loads(), 2, "one load of 'n'");
    assert_eq!((h.manager.loads_in_flight(), h.manager.loads_joined()), (0, 0));
    Ok(())
}

/// A model with `response_cache { enable: true }`, answering its file's generation.
fn write_cached_model(repo: &Path, generation: u32) -> std::io::Result<()> {
    write_model(repo, "m", generation)?;
    let config = repo.join("m").join("config.pbtxt");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(config, text + "response_cache { enable: true }\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_never_answers_from_the_previous_loads_cache_entries() -> TestResult {
    let cache = Arc::new(tern_scheduler::ResponseCache::new(1 << 20));
    let h = Harness::with_cache(Some(cache.clone()))?;
    write_cached_model(h.repo.path(), 1)?;
    h.manager.load("m", None, Vec::new()).await?;
    assert_eq!(infer(&h.manager, "m").await?, 1.0);
    assert_eq!(infer(&h.manager, "m").await?, 1.0);
    let stats = h.manager.get("m", "")?.scheduler.stats().snapshot();
    assert_eq!((stats.cache_hit.count, stats.cache_miss.count, stats.execution_count), (1, 1, 1));
    assert_eq!(cache.len(), 1);

    write_cached_model(h.repo.path(), 2)?;
    h.manager.load("m", None, Vec::new()).await?;
    assert_eq!(infer(&h.manager, "m").await?, 2.0, "the new load runs, whatever the cache holds");
    // The old load's entries go with its scheduler.
    eventually("the old load's entries are dropped", || cache.len() == 1).await?;
    h.manager.unload("m").await?;
    eventually("the unloaded model's entries are dropped", || cache.is_empty()).await
}

/// Triton serves a model whose config enables the cache uncached when the server has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_node_cache_a_cached_model_is_served_uncached() -> TestResult {
    let h = Harness::new()?;
    write_cached_model(h.repo.path(), 1)?;
    h.manager.load("m", None, Vec::new()).await?;
    assert!(!h.manager.get("m", "")?.scheduler.response_cache_enabled());
    assert_eq!(infer(&h.manager, "m").await?, 1.0);
    assert_eq!(infer(&h.manager, "m").await?, 1.0);
    let stats = h.manager.get("m", "")?.scheduler.stats().snapshot();
    assert_eq!((stats.cache_hit.count, stats.cache_miss.count, stats.execution_count), (0, 0, 2));
    Ok(())
}
