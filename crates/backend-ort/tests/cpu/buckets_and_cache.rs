//! Batch buckets and the optimized-model cache through `OrtFactory`, as the model lifecycle
//! opens a version's instances, on real ONNX Runtime sessions.

use std::path::{Path, PathBuf};

use tern_backend::{Backend, BackendFactory, BatchJob, LoadTarget, ModelBytes};
use tern_backend_ort::{CacheUse, ModelCache, OrtBackend, OrtFactory, SessionSettings};
use tern_core::Tensor;
use tern_proto::inference::model_instance_group::Kind;
use tern_proto::inference::{ModelConfig, ModelInstanceGroup, ModelParameter};

use crate::common::{model, runtime};
use crate::rows;

fn config(buckets: Option<&str>, count: i32) -> ModelConfig {
    ModelConfig {
        name: "mlp".into(),
        max_batch_size: 8,
        instance_group: vec![ModelInstanceGroup { kind: Kind::Cpu as i32, count, ..Default::default() }],
        parameters: buckets
            .map(|v| [("batch_buckets".to_string(), ModelParameter { string_value: v.to_string() })].into())
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// What the lifecycle does: begin, signature, plan, then every instance.
fn open(
    factory: &OrtFactory,
    target: &LoadTarget,
    config: &ModelConfig,
    bytes: ModelBytes<'_>,
) -> Vec<Box<dyn Backend>> {
    runtime();
    let mut loader = factory.begin(target, config).expect("begin");
    loader.signature(bytes).expect("signature");
    let placement = loader.plan(config).expect("plan");
    loader.instances(placement.instances.len(), bytes).expect("instances")
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn target(dir: Option<&Path>, encrypted: bool) -> LoadTarget {
    LoadTarget { model: "mlp".into(), version: 1, trusted_dir: dir.map(Path::to_path_buf), encrypted }
}

#[test]
fn padded_batches_equal_unbatched_runs_and_padding_rows_never_leak() {
    let path = model("mlp");
    let factory = OrtFactory::default();
    let mut backends = open(&factory, &target(None, false), &config(Some("on"), 2), ModelBytes::File(&path));
    assert_eq!(backends.len(), 2);
    assert!(backends.iter().all(|b| b.batch_buckets() == [1, 2, 4, 8]));
    let requests = [rows(1, 0.0), rows(2, 10.0), rows(2, 20.0)];
    let job = BatchJob {
        requests: requests.iter().map(|t| vec![t.clone()]).collect(),
        batch_sizes: vec![1, 2, 2],
        outputs: vec![],
    };
    // 5 rows run as a batch of 8 on the first instance; each request alone on the second.
    let (result, _) = tern_backend::run(backends[0].as_mut(), job);
    let batched = result.expect("batched run");
    for (request, answer) in requests.iter().zip(&batched) {
        assert_eq!(answer[0].shape, vec![request.shape[0], 3], "exactly the request's rows");
        let alone = backends[1].infer(vec![request.clone()], &[]).expect("alone");
        let (a, b) = (f32s(&answer[0]), f32s(&alone[0]));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "batched {a:?} vs alone {b:?}");
        }
    }
    // On the CPU buckets are opt-in: the default ("auto") and "off" pad nothing.
    for mode in [None, Some("off"), Some("auto")] {
        let backends = open(&factory, &target(None, false), &config(mode, 1), ModelBytes::File(&path));
        assert!(backends[0].batch_buckets().is_empty(), "{mode:?}");
    }
}

/// A repository-like copy of `name`'s model: `<tmp>/mlp/1/model.onnx`.
fn repository_copy(tmp: &Path, name: &str) -> (PathBuf, PathBuf) {
    let dir = tmp.join("mlp");
    std::fs::create_dir_all(dir.join("1")).expect("mkdir");
    let file = dir.join("1/model.onnx");
    std::fs::copy(model(name), &file).expect("copy");
    (dir, file)
}

fn entries(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.retain(|n| !n.starts_with('.'));
    names.sort();
    names
}

#[test]
fn the_cache_is_written_on_the_first_load_and_reused_with_identical_outputs() {
    runtime();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, file) = repository_copy(tmp.path(), "mlp");
    let cache = ModelCache::new(tmp.path().join("cache"));
    let digest = tern_backend_ort::model_cache::model_digest(&file).expect("digest");
    let settings = SessionSettings { intra_op_threads: Some(1), ..Default::default() };
    let entry = cache.entry(&digest, &settings).expect("a CPU session is cached");
    let input = || vec![rows(3, 1.0)];

    let (mut cold, used) = OrtBackend::load_cached(&file, &settings, &entry).expect("cold");
    assert_eq!(used, CacheUse::Saved);
    assert!(entry.model().is_file(), "the optimized graph is saved");
    let (mut warm, used) = OrtBackend::load_cached(&file, &settings, &entry).expect("warm");
    assert_eq!(used, CacheUse::Hit);
    assert_eq!(warm.signature(), cold.signature());
    let mut plain = OrtBackend::load(&file, &settings).expect("no cache");
    let want = plain.infer(input(), &[]).expect("plain");
    assert_eq!(
        cold.infer(input(), &[]).expect("cold").first().map(|t| t.data.clone()),
        Some(want[0].data.clone())
    );
    assert_eq!(
        warm.infer(input(), &[]).expect("warm").first().map(|t| t.data.clone()),
        Some(want[0].data.clone())
    );

    // A broken entry is removed and the model optimized again.
    std::fs::write(entry.model(), b"not a model").expect("corrupt the entry");
    let (_, used) = OrtBackend::load_cached(&file, &settings, &entry).expect("recovers");
    assert_eq!(used, CacheUse::Saved);
    let (_, used) = OrtBackend::load_cached(&file, &settings, &entry).expect("warm again");
    assert_eq!(used, CacheUse::Hit);
}

#[test]
fn the_factory_caches_repository_models_only_and_a_changed_model_gets_a_new_entry() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, file) = repository_copy(tmp.path(), "mlp");
    let cache_dir = tmp.path().join("cache");
    std::fs::create_dir_all(&cache_dir).expect("mkdir");
    let factory = OrtFactory { model_cache: Some(ModelCache::new(cache_dir.clone())), ..Default::default() };

    // Encrypted (decrypted in memory) and uploaded models never reach the disk.
    let bytes = std::fs::read(&file).expect("read");
    let encrypted = open(&factory, &target(Some(&dir), true), &config(None, 2), ModelBytes::Memory(&bytes));
    assert_eq!(encrypted.len(), 2);
    open(&factory, &target(None, false), &config(None, 2), ModelBytes::File(&file));
    assert!(entries(&cache_dir).is_empty(), "{:?}", entries(&cache_dir));

    // A repository model: one entry, shared by both instances and by the next load.
    let mut first = open(&factory, &target(Some(&dir), false), &config(None, 2), ModelBytes::File(&file));
    assert_eq!(entries(&cache_dir).len(), 1);
    let mut again = open(&factory, &target(Some(&dir), false), &config(None, 2), ModelBytes::File(&file));
    assert_eq!(entries(&cache_dir).len(), 1);
    let out = |b: &mut Box<dyn Backend>| b.infer(vec![rows(2, 5.0)], &[]).expect("infer")[0].data.clone();
    assert_eq!(out(&mut first[0]), out(&mut again[1]));

    // The file changes (another model): a new entry, never the stale graph.
    std::fs::copy(model("identity_FP32"), &file).expect("replace the model");
    let changed = open(&factory, &target(Some(&dir), false), &config(None, 1), ModelBytes::File(&file));
    assert_eq!(entries(&cache_dir).len(), 2);
    drop(changed);
}
