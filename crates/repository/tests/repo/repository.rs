//! The crate end to end on real directories: scan, auto-complete, validate, labels.

use std::fs;
use std::path::{Path, PathBuf};

use tern_core::{DataType, ModelSignature, TensorSpec};
use tern_repository::{
    ModelConfig, ModelSource, RepositoryError, ScannedModel, auto_complete, config_override_from_json,
    highest_version, load_labels, model_file_path, scan, select_versions, validate,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, text)
}

fn resnet() -> ModelSignature {
    ModelSignature {
        inputs: vec![TensorSpec {
            name: "input".to_owned(),
            datatype: DataType::Fp32,
            dims: vec![-1, 3, 224, 224],
            utf8: false,
        }],
        outputs: vec![TensorSpec {
            name: "output".to_owned(),
            datatype: DataType::Fp32,
            dims: vec![-1, 1000],
            utf8: false,
        }],
    }
}

fn found<'a>(models: &'a [ScannedModel], name: &str) -> &'a ModelSource {
    match models.iter().find(|m| m.name() == name).map(|m| m.as_result()) {
        Some(Ok(source)) => source,
        other => panic!("model '{name}' not found: {other:?}"),
    }
}

fn failed<'a>(models: &'a [ScannedModel], name: &str) -> &'a RepositoryError {
    match models.iter().find(|m| m.name() == name).map(|m| m.as_result()) {
        Some(Err(error)) => error,
        other => panic!("model '{name}' did not fail: {other:?}"),
    }
}

#[test]
fn scan_finds_models_versions_and_failures() -> TestResult {
    let repo = tempfile::tempdir()?;
    let root = repo.path();
    write(
        &root.join("resnet/config.pbtxt"),
        "# doc style\nmax_batch_size: 8\ninput [ { name: \"input\" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]\n",
    )?;
    write(&root.join("resnet/1/model.onnx"), "onnx")?;
    fs::create_dir_all(root.join("resnet/3"))?; // no model file
    fs::create_dir_all(root.join("resnet/10"))?;
    fs::create_dir_all(root.join("resnet/latest"))?; // not a version
    fs::create_dir_all(root.join("resnet/01"))?; // not canonical: not a version
    write(&root.join("resnet/2"), "a file, not a version")?;
    write(&root.join("broken/config.pbtxt"), "name: \"broken\"\nmax_batch_size: [\n")?;
    fs::create_dir_all(root.join("noconfig/1"))?;
    fs::create_dir_all(root.join("bad name"))?;
    fs::create_dir_all(root.join("dir_config/config.pbtxt"))?;
    fs::create_dir_all(root.join(".git/objects"))?;
    write(&root.join("README.md"), "not a model")?;

    let models = scan(&[root.to_path_buf()])?;
    let names: Vec<&str> = models.iter().map(ScannedModel::name).collect();
    assert_eq!(names, vec!["bad name", "broken", "dir_config", "noconfig", "resnet"]);

    let resnet = found(&models, "resnet");
    assert_eq!(resnet.dir, root.join("resnet"));
    assert_eq!(resnet.versions, vec![1, 3, 10]);
    let config = resnet.config.clone().unwrap_or_default();
    assert_eq!(config.max_batch_size, 8);
    assert_eq!(highest_version(resnet, &config), Some(1));
    assert_eq!(model_file_path(resnet, &config, 1), root.join("resnet/1/model.onnx"));
    assert_eq!(select_versions(resnet, &config), vec![10]);

    let noconfig = found(&models, "noconfig");
    assert_eq!(noconfig.config, None);
    assert_eq!(noconfig.versions, vec![1]);
    assert_eq!(highest_version(noconfig, &ModelConfig::default()), None);

    let broken = failed(&models, "broken");
    let path = root.join("broken/config.pbtxt");
    assert_eq!(
        broken.to_string(),
        format!(
            "model 'broken': {}: invalid model config text at line 2, column 17: expected an \
             integer, but found '['",
            path.display()
        )
    );
    assert!(matches!(broken, RepositoryError::ConfigFile { model, .. } if model == "broken"));

    assert!(matches!(failed(&models, "bad name"), RepositoryError::InvalidName { .. }));
    assert!(matches!(failed(&models, "dir_config"), RepositoryError::ConfigFile { .. }));
    Ok(())
}

#[test]
fn duplicate_names_across_repositories_fail_that_model_only() -> TestResult {
    let first = tempfile::tempdir()?;
    let second = tempfile::tempdir()?;
    fs::create_dir_all(first.path().join("shared/1"))?;
    fs::create_dir_all(first.path().join("alpha/1"))?;
    fs::create_dir_all(second.path().join("shared/2"))?;
    fs::create_dir_all(second.path().join("beta/1"))?;

    let repos = [first.path().to_path_buf(), second.path().to_path_buf()];
    let models = scan(&repos)?;
    let names: Vec<&str> = models.iter().map(ScannedModel::name).collect();
    assert_eq!(names, vec!["alpha", "beta", "shared"]);
    assert_eq!(found(&models, "beta").dir, second.path().join("beta"));
    let error = failed(&models, "shared");
    assert_eq!(
        error,
        &RepositoryError::DuplicateModel {
            model: "shared".to_owned(),
            dirs: vec![first.path().join("shared"), second.path().join("shared")],
        }
    );
    assert!(error.to_string().contains("model names must be unique across repositories"));
    Ok(())
}

#[test]
fn missing_repository_is_an_error() -> TestResult {
    let parent = tempfile::tempdir()?;
    let missing = parent.path().join("nope");
    let err = scan(std::slice::from_ref(&missing)).expect_err("missing repository");
    match &err {
        RepositoryError::Repository { path, .. } => assert_eq!(path, &missing),
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().starts_with("model repository "), "{err}");

    let file = parent.path().join("file");
    fs::write(&file, "")?;
    assert!(matches!(scan(&[file]), Err(RepositoryError::Repository { .. })));
    assert_eq!(scan(&[]), Ok(vec![]));
    Ok(())
}

#[cfg(unix)]
#[test]
fn symlinked_model_directories_are_models() -> TestResult {
    let repo = tempfile::tempdir()?;
    let elsewhere = tempfile::tempdir()?;
    fs::create_dir_all(elsewhere.path().join("real/1"))?;
    std::os::unix::fs::symlink(elsewhere.path().join("real"), repo.path().join("linked"))?;
    std::os::unix::fs::symlink(repo.path().join("gone"), repo.path().join("dangling"))?;
    let models = scan(&[repo.path().to_path_buf()])?;
    assert_eq!(models.len(), 1);
    assert_eq!(found(&models, "linked").versions, vec![1]);
    Ok(())
}

#[test]
fn scan_complete_validate_labels() -> TestResult {
    let repo = tempfile::tempdir()?;
    let dir = repo.path().join("classifier");
    write(
        &dir.join("config.pbtxt"),
        r#"
        max_batch_size: 8
        output [ { name: "output" data_type: TYPE_FP32 dims: [ 1000 ] label_filename: "labels.txt" } ]
        "#,
    )?;
    write(&dir.join("1/model.onnx"), "onnx")?;
    let labels: String = (0..1000).map(|i| format!("class {i}\n")).collect();
    write(&dir.join("labels.txt"), &labels)?;

    let models = scan(&[repo.path().to_path_buf()])?;
    let source = found(&models, "classifier");
    let config = auto_complete(&source.name, source.config.clone(), &resnet(), false)?;
    validate(&config, &resnet())?;
    assert_eq!(config.input.len(), 1);
    assert_eq!(config.input[0].dims, vec![3, 224, 224]);
    assert_eq!(highest_version(source, &config), Some(1));
    let labels = load_labels(&source.dir, &config)?;
    let output = labels.get("output").map(|l| l.len());
    assert_eq!(output, Some(1000));
    assert_eq!(labels.get("output").and_then(|l| l.get(7)).map(String::as_str), Some("class 7"));

    fs::remove_file(dir.join("labels.txt"))?;
    let err = load_labels(&source.dir, &config).expect_err("labels gone");
    assert!(
        err.to_string()
            .starts_with("model 'classifier': output 'output': label_filename 'labels.txt': no such file")
    );
    Ok(())
}

/// `get_model_config.light_resnet50` as a real Triton 2.51 answered it
/// (tests/python/data/triton_responses.json, protobuf JSON), with platform and backend set to the ONNX Runtime values. A config that
/// Triton has completed is complete: auto-complete must give it back unchanged, and it must
/// validate against the model it describes.
const TRITON_LIGHT_RESNET50: &str = r#"{
  "name": "light_resnet50",
  "platform": "onnxruntime_onnx",
  "backend": "onnxruntime",
  "version_policy": {"latest": {"num_versions": 1}},
  "max_batch_size": 8,
  "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": ["3", "224", "224"]}],
  "output": [{"name": "output", "data_type": "TYPE_FP32", "dims": ["1000"]}],
  "instance_group": [{"name": "light_resnet50_0", "count": 1, "kind": "KIND_CPU"}],
  "default_model_filename": "model.py",
  "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": "5000"},
  "optimization": {
    "input_pinned_memory": {"enable": true},
    "output_pinned_memory": {"enable": true}
  }
}"#;

#[test]
fn triton_completed_config_is_a_fixed_point() -> TestResult {
    let triton = config_override_from_json(TRITON_LIGHT_RESNET50)?;
    for strict in [false, true] {
        let completed = auto_complete("light_resnet50", Some(triton.clone()), &resnet(), strict)?;
        assert_eq!(completed, triton, "strict: {strict}");
    }
    validate(&triton, &resnet())?;
    Ok(())
}

#[test]
fn auto_complete_matches_triton_for_a_config_without_defaults() -> TestResult {
    // What the model's author wrote; Triton turned it into TRITON_LIGHT_RESNET50.
    let written = tern_repository::parse_config(
        r#"
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
        output [ { name: "output" data_type: TYPE_FP32 dims: [ 1000 ] } ]
        instance_group [ { count: 1 kind: KIND_CPU } ]
        default_model_filename: "model.py"
        dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 5000 }
        "#,
    )?;
    let completed = auto_complete("light_resnet50", Some(written), &resnet(), false)?;
    assert_eq!(completed, config_override_from_json(TRITON_LIGHT_RESNET50)?);
    Ok(())
}

#[test]
fn highest_version_needs_an_existing_model_file() -> TestResult {
    // A version directory listed by a scan that is gone by the time the file is looked for.
    let source = ModelSource {
        name: "m".to_owned(),
        dir: PathBuf::from("/nonexistent/m"),
        config: None,
        versions: vec![1, 2],
    };
    assert_eq!(highest_version(&source, &ModelConfig::default()), None);
    Ok(())
}
