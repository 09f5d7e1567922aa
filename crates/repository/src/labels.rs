//! Classification labels: an output's `label_filename`, one label per line, used by the
//! classification extension of the infer API.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Component, Path};
use std::sync::Arc;

use tern_proto::inference::ModelConfig;

use crate::error::RepositoryError;

/// Reads the label file of every output that names one, keyed by output name. The file name
/// is relative to the model directory `dir` and may not leave it. Each line is one label,
/// empty lines included (label i is line i, as Triton reads them).
pub fn load_labels(
    dir: &Path,
    config: &ModelConfig,
) -> Result<HashMap<String, Arc<Vec<String>>>, RepositoryError> {
    let mut labels = HashMap::new();
    for output in &config.output {
        let file = output.label_filename.as_str();
        if file.is_empty() {
            continue;
        }
        let error = |message: String| RepositoryError::Labels {
            model: config.name.clone(),
            output: output.name.clone(),
            file: file.to_owned(),
            message,
        };
        let relative = Path::new(file);
        let inside = relative.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !inside {
            return Err(error("must be a path relative to the model directory, without '..'".to_owned()));
        }
        let path = dir.join(relative);
        let text = fs::read_to_string(&path).map_err(|err| {
            if err.kind() == io::ErrorKind::NotFound {
                error(format!("no such file {}", path.display()))
            } else {
                error(format!("cannot read {}: {err}", path.display()))
            }
        })?;
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        labels.insert(output.name.clone(), Arc::new(lines));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::inference::ModelOutput;

    fn config(outputs: &[(&str, &str)]) -> ModelConfig {
        ModelConfig {
            name: "m".to_owned(),
            output: outputs
                .iter()
                .map(|(name, file)| ModelOutput {
                    name: (*name).to_owned(),
                    label_filename: (*file).to_owned(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn reads_one_label_per_line() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("labels.txt"), "cat\ndog\r\n\nbird\n")?;
        let labels = load_labels(dir.path(), &config(&[("probs", "labels.txt"), ("raw", "")]))?;
        assert_eq!(labels.len(), 1);
        let probs = labels.get("probs").map(|l| l.as_slice().to_vec());
        assert_eq!(probs, Some(vec!["cat".to_owned(), "dog".to_owned(), String::new(), "bird".to_owned()]));
        Ok(())
    }

    #[test]
    fn missing_file_is_an_error() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let err = load_labels(dir.path(), &config(&[("probs", "labels.txt")])).expect_err("no file");
        let expected = format!(
            "model 'm': output 'probs': label_filename 'labels.txt': no such file {}",
            dir.path().join("labels.txt").display()
        );
        assert_eq!(err.to_string(), expected);
        Ok(())
    }

    #[test]
    fn label_file_may_not_leave_the_model_directory() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        for file in ["../labels.txt", "/etc/passwd", "a/../../b"] {
            let err = load_labels(dir.path(), &config(&[("probs", file)])).expect_err(file);
            assert!(err.to_string().contains("without '..'"), "{err}");
        }
        Ok(())
    }
}
