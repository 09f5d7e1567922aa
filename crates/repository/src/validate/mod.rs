//! Validation of a (completed) config on its own and against the model file's signature: what
//! Triton core's `ValidateModelConfig` and the ONNX Runtime backend's input/output checks
//! reject, with messages that name the model, the tensor and the field.

use std::collections::HashSet;
use std::path::{Component, Path};

use tern_core::{DataType, ModelSignature, TensorSpec};
use tern_proto::inference::model_config::SchedulingChoice;
use tern_proto::inference::{DataType as ConfigType, ModelConfig, ModelTensorReshape};

use crate::complete::check_backend_fields;
use crate::error::{RepositoryError, TensorKind};

/// Checks `config` on its own and against `signature`:
/// - `name` is set; platform/backend are ONNX Runtime's (or empty); no ensemble scheduling;
///   `max_batch_size >= 0`; `default_model_filename` is a plain file name; the numbers that size
///   memory or threads within [`crate::check_bounds`]'s limits;
/// - dynamic batching preferred sizes are in `1..=max_batch_size`, priority levels consistent;
/// - every input/output has a unique name, a data_type, dims of values >= 1 or -1, and a
///   reshape (if any) of the same element count; optional inputs only without batching;
/// - every config input/output exists in the model file with the same datatype
///   (TYPE_STRING is BYTES) and a matching shape (-1 on either side matches anything); with
///   max_batch_size > 0 the model's first dimension must be dynamic and the config's dims (or
///   `reshape.shape`, when given) are compared to the rest;
/// - every model input is listed (model outputs may be left out: they are not computed).
pub fn validate(config: &ModelConfig, signature: &ModelSignature) -> Result<(), RepositoryError> {
    let model = config.name.as_str();
    if model.is_empty() {
        return Err(RepositoryError::invalid(model, "the config must give the model's 'name'"));
    }
    check_backend_fields(config)?;
    let max_batch_size = config.max_batch_size;
    if max_batch_size < 0 {
        return Err(RepositoryError::invalid(
            model,
            format!("max_batch_size {max_batch_size} is invalid: it must be >= 0"),
        ));
    }
    crate::bounds::check_bounds(model, config)?;
    check_model_filename(model, &config.default_model_filename)?;
    check_scheduling(config)?;

    let inputs: Vec<ConfigTensor<'_>> = config
        .input
        .iter()
        .map(|i| ConfigTensor {
            kind: TensorKind::Input,
            name: &i.name,
            data_type: i.data_type,
            dims: &i.dims,
            reshape: i.reshape.as_ref(),
        })
        .collect();
    let outputs: Vec<ConfigTensor<'_>> = config
        .output
        .iter()
        .map(|o| ConfigTensor {
            kind: TensorKind::Output,
            name: &o.name,
            data_type: o.data_type,
            dims: &o.dims,
            reshape: o.reshape.as_ref(),
        })
        .collect();

    for tensors in [&inputs, &outputs] {
        let mut seen = HashSet::new();
        for tensor in tensors.iter() {
            if !seen.insert(tensor.name) {
                return Err(RepositoryError::invalid(
                    model,
                    format!("{} '{}' is listed more than once in config.pbtxt", tensor.kind, tensor.name),
                ));
            }
            tensor.check_shape_fields(model, max_batch_size)?;
        }
    }
    if max_batch_size > 0
        && let Some(input) = config.input.iter().find(|i| i.optional)
    {
        return Err(RepositoryError::invalid(
            model,
            format!("input '{}': optional inputs are not supported when max_batch_size > 0", input.name),
        ));
    }

    check_names(model, TensorKind::Input, &inputs, &signature.inputs)?;
    check_names(model, TensorKind::Output, &outputs, &signature.outputs)?;
    let missing: Vec<&str> = signature
        .inputs
        .iter()
        .filter(|spec| !inputs.iter().any(|t| t.name == spec.name))
        .map(|spec| spec.name.as_str())
        .collect();
    if !missing.is_empty() {
        let (noun, verb) = if missing.len() == 1 { ("input", "is") } else { ("inputs", "are") };
        return Err(RepositoryError::invalid(
            model,
            format!(
                "the model file's {noun} {} {verb} missing from config.pbtxt; every model input \
                 must be listed",
                quote_all(&missing)
            ),
        ));
    }

    for (tensors, specs) in [(&inputs, &signature.inputs), (&outputs, &signature.outputs)] {
        for tensor in tensors.iter() {
            if let Some(spec) = specs.iter().find(|s| s.name == tensor.name) {
                tensor.check_against(model, max_batch_size, spec)?;
            }
        }
    }
    Ok(())
}

/// One input or output of the config, seen the same way for both sides.
struct ConfigTensor<'a> {
    kind: TensorKind,
    name: &'a str,
    data_type: i32,
    dims: &'a [i64],
    reshape: Option<&'a ModelTensorReshape>,
}

impl ConfigTensor<'_> {
    fn error(&self, model: &str, message: impl std::fmt::Display) -> RepositoryError {
        RepositoryError::invalid(model, format!("{} '{}': {message}", self.kind, self.name))
    }

    /// Triton's `ValidateIOShape`, less what the model comparison covers.
    fn check_shape_fields(&self, model: &str, max_batch_size: i32) -> Result<(), RepositoryError> {
        if self.name.is_empty() {
            return Err(RepositoryError::invalid(
                model,
                format!("an {} in config.pbtxt has no name", self.kind),
            ));
        }
        match ConfigType::try_from(self.data_type) {
            Ok(ConfigType::TypeInvalid) => {
                return Err(self.error(model, "data_type must be given (it is TYPE_INVALID)"));
            }
            Ok(_) => {}
            Err(_) => {
                return Err(self.error(model, format!("data_type {} is not a known type", self.data_type)));
            }
        }
        if self.dims.is_empty() {
            return Err(self.error(
                model,
                "dims must be given (use dims: [ 1 ] with reshape: { shape: [ ] } for a scalar)",
            ));
        }
        check_dim_values(self, model, "dims", self.dims)?;
        let Some(reshape) = self.reshape else {
            return Ok(());
        };
        if reshape.shape.is_empty() && max_batch_size == 0 {
            return Err(self.error(
                model,
                "reshape.shape is empty, which is only allowed when max_batch_size > 0 \
                 (scalar tensors without a batch dimension are not supported)",
            ));
        }
        check_dim_values(self, model, "reshape.shape", &reshape.shape)?;
        if !same_element_count(self.dims, &reshape.shape) {
            return Err(self.error(
                model,
                format!(
                    "dims {} and reshape.shape {} have different element counts",
                    shape_string(self.dims),
                    shape_string(&reshape.shape)
                ),
            ));
        }
        Ok(())
    }

    fn check_against(
        &self,
        model: &str,
        max_batch_size: i32,
        spec: &TensorSpec,
    ) -> Result<(), RepositoryError> {
        if DataType::from_config(self.data_type) != Some(spec.datatype) {
            return Err(RepositoryError::DataTypeMismatch {
                model: model.to_owned(),
                kind: self.kind,
                tensor: self.name.to_owned(),
                config: config_type_name(self.data_type),
                model_file: spec.datatype.to_config().as_str_name().to_owned(),
            });
        }

        let model_dims: &[i64] = if max_batch_size > 0 {
            match spec.dims.split_first() {
                Some((-1, rest)) => rest,
                Some((batch, _)) => {
                    return Err(RepositoryError::invalid(
                        model,
                        format!(
                            "max_batch_size {max_batch_size} > 0 but {} '{}' has a fixed batch \
                             dimension {batch} in the model file; set max_batch_size: 0 or \
                             re-export with a dynamic batch dimension",
                            self.kind, self.name
                        ),
                    ));
                }
                None => {
                    return Err(RepositoryError::invalid(
                        model,
                        format!(
                            "max_batch_size {max_batch_size} > 0 but {} '{}' is a scalar in the \
                             model file, so it has no batch dimension; set max_batch_size: 0",
                            self.kind, self.name
                        ),
                    ));
                }
            }
        } else {
            &spec.dims
        };

        let (field, expected) = match self.reshape {
            Some(reshape) => ("reshape.shape", reshape.shape.as_slice()),
            None => ("dims", self.dims),
        };
        // A scalar in an unbatched model is written `dims: [ 1 ]` (ONNX Runtime backend).
        if max_batch_size == 0 && spec.dims.is_empty() {
            if expected.iter().all(|&d| d == 1) {
                return Ok(());
            }
            return Err(self.error(
                model,
                format!(
                    "{field} {} in config.pbtxt do not match the model file, where it is a \
                     scalar; write dims: [ 1 ]",
                    shape_string(expected)
                ),
            ));
        }
        let matches = expected.len() == model_dims.len()
            && expected.iter().zip(model_dims).all(|(&c, &m)| c == -1 || m == -1 || c == m);
        if matches {
            return Ok(());
        }
        let batch_note = if max_batch_size > 0 {
            format!(
                " (shape {} without its batch dimension, as max_batch_size {max_batch_size} > 0)",
                shape_string(&spec.dims)
            )
        } else {
            String::new()
        };
        Err(self.error(
            model,
            format!(
                "{field} {} in config.pbtxt do not match {} in the model file{batch_note}",
                shape_string(expected),
                shape_string(model_dims)
            ),
        ))
    }
}

fn check_dim_values(
    tensor: &ConfigTensor<'_>,
    model: &str,
    field: &str,
    dims: &[i64],
) -> Result<(), RepositoryError> {
    if let Some(bad) = dims.iter().find(|&&d| d < 1 && d != -1) {
        return Err(tensor.error(
            model,
            format!(
                "{field} {} has {bad}; every dimension must be >= 1, or -1 for a variable size",
                shape_string(dims)
            ),
        ));
    }
    Ok(())
}

/// Triton's rule: equal element counts when both are fully known (an empty reshape counts as
/// one element); with variable dimensions, the same number of them, and equal counts between
/// them (`[2,4,-1,6]` reshapes to `[8,-1,1,6]`).
fn same_element_count(dims: &[i64], reshape: &[i64]) -> bool {
    fn chunks(shape: &[i64]) -> Option<Vec<i64>> {
        shape
            .split(|&d| d == -1)
            .map(|chunk| chunk.iter().try_fold(1i64, |acc, &d| acc.checked_mul(d)))
            .collect()
    }
    match (chunks(dims), chunks(reshape)) {
        (Some(a), Some(b)) => a == b,
        // Overflowing products are not a shape anyone can send.
        _ => false,
    }
}

fn check_names(
    model: &str,
    kind: TensorKind,
    tensors: &[ConfigTensor<'_>],
    specs: &[TensorSpec],
) -> Result<(), RepositoryError> {
    let unknown: Vec<&str> =
        tensors.iter().filter(|t| !specs.iter().any(|s| s.name == t.name)).map(|t| t.name).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    Err(RepositoryError::invalid(
        model,
        format!(
            "config.pbtxt lists {kind}{} {} that the model file does not have (its {kind}s: {})",
            plural(unknown.len()),
            quote_all(&unknown),
            if known.is_empty() { "none".to_owned() } else { quote_all(&known) }
        ),
    ))
}

pub(crate) fn check_model_filename(model: &str, filename: &str) -> Result<(), RepositoryError> {
    if filename.is_empty() {
        return Ok(());
    }
    let mut components = Path::new(filename).components();
    let plain = matches!((components.next(), components.next()), (Some(Component::Normal(_)), None))
        && !filename.contains(['/', '\\']);
    if plain {
        Ok(())
    } else {
        Err(RepositoryError::invalid(
            model,
            format!(
                "default_model_filename '{filename}' must be a file name inside the version \
                 directory, without path separators"
            ),
        ))
    }
}

/// Triton's checks of the dynamic batcher's settings; ensembles are not Tern's.
fn check_scheduling(config: &ModelConfig) -> Result<(), RepositoryError> {
    let model = config.name.as_str();
    let batching = match &config.scheduling_choice {
        Some(SchedulingChoice::DynamicBatching(batching)) => batching,
        Some(SchedulingChoice::EnsembleScheduling(_)) => {
            return Err(RepositoryError::invalid(
                model,
                "ensemble_scheduling is not supported; Tern serves ONNX models",
            ));
        }
        Some(SchedulingChoice::SequenceBatching(_)) | None => return Ok(()),
    };
    if let Some(&size) =
        batching.preferred_batch_size.iter().find(|&&size| size < 1 || size > config.max_batch_size)
    {
        return Err(RepositoryError::invalid(
            model,
            format!(
                "dynamic_batching.preferred_batch_size {size} is invalid: it must be in 1..={} \
                 (max_batch_size)",
                config.max_batch_size
            ),
        ));
    }
    let levels = batching.priority_levels;
    if levels != 0 {
        let default = batching.default_priority_level;
        if default == 0 || default > levels {
            return Err(RepositoryError::invalid(
                model,
                format!(
                    "dynamic_batching.default_priority_level {default} must be in 1..={levels} \
                     (priority_levels)"
                ),
            ));
        }
        if let Some(level) =
            batching.priority_queue_policy.keys().find(|&&level| level == 0 || level > levels)
        {
            return Err(RepositoryError::invalid(
                model,
                format!(
                    "dynamic_batching.priority_queue_policy has level {level}, outside \
                     1..={levels} (priority_levels)"
                ),
            ));
        }
    }
    Ok(())
}

/// `[3,224,224]`, as Triton prints shapes.
pub(crate) fn shape_string(dims: &[i64]) -> String {
    let dims: Vec<String> = dims.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(","))
}

fn config_type_name(data_type: i32) -> String {
    ConfigType::try_from(data_type)
        .map(|t| t.as_str_name().to_owned())
        .unwrap_or_else(|_| data_type.to_string())
}

fn quote_all(names: &[&str]) -> String {
    names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_config;

    fn spec(name: &str, datatype: DataType, dims: &[i64]) -> TensorSpec {
        TensorSpec { name: name.to_owned(), datatype, dims: dims.to_vec() }
    }

    fn resnet() -> ModelSignature {
        ModelSignature {
            inputs: vec![spec("data", DataType::Fp32, &[-1, 3, 224, 224])],
            outputs: vec![spec("prob", DataType::Fp32, &[-1, 1000])],
        }
    }

    /// A completed config for [`resnet`], with `extra` appended to its text.
    fn resnet_config(extra: &str) -> ModelConfig {
        let text = format!(
            r#"
            name: "m"
            platform: "onnxruntime_onnx"
            backend: "onnxruntime"
            max_batch_size: 8
            input [ {{ name: "data" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] }} ]
            output [ {{ name: "prob" data_type: TYPE_FP32 dims: [ 1000 ] }} ]
            {extra}
            "#
        );
        parse_config(&text).unwrap_or_else(|err| panic!("test config does not parse: {err}"))
    }

    fn message(config: &ModelConfig, signature: &ModelSignature) -> String {
        match validate(config, signature) {
            Ok(()) => "ok".to_owned(),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn numbers_that_size_memory_are_bounded() {
        // max_batch_size near 2^31 once sized a statistics vector of ~100 GB (issue 17).
        let mut huge = resnet_config("");
        huge.max_batch_size = i32::MAX;
        assert_eq!(
            message(&huge, &resnet()),
            "model 'm': max_batch_size 2147483647 is over the limit of 65536"
        );
        let queue = resnet_config("dynamic_batching { default_queue_policy { max_queue_size: 4000000000 } }");
        assert_eq!(
            message(&queue, &resnet()),
            "model 'm': dynamic_batching.default_queue_policy.max_queue_size 4000000000 is over the limit of 65536"
        );
        let instances = resnet_config("instance_group [ { name: \"g\" count: 100000 kind: KIND_CPU } ]");
        assert_eq!(
            message(&instances, &resnet()),
            "model 'm': instance_group 'g' count 100000 is over the limit of 256"
        );
    }

    #[test]
    fn valid_configs() {
        assert_eq!(message(&resnet_config(""), &resnet()), "ok");
        let dynamic = resnet_config("dynamic_batching { preferred_batch_size: [ 4, 8 ] }");
        assert_eq!(message(&dynamic, &resnet()), "ok");
        // -1 on either side matches anything.
        let mut wildcard = resnet_config("");
        wildcard.input[0].dims = vec![3, -1, -1];
        assert_eq!(message(&wildcard, &resnet()), "ok");
        let symbolic = ModelSignature {
            inputs: vec![spec("data", DataType::Fp32, &[-1, 3, -1, -1])],
            outputs: vec![spec("prob", DataType::Fp32, &[-1, -1])],
        };
        assert_eq!(message(&resnet_config(""), &symbolic), "ok");
        // Unbatched: the config's dims are the model's full shape.
        let mut unbatched = resnet_config("");
        unbatched.max_batch_size = 0;
        unbatched.input[0].dims = vec![-1, 3, 224, 224];
        unbatched.output[0].dims = vec![-1, 1000];
        assert_eq!(message(&unbatched, &resnet()), "ok");
        // Model outputs may be left out of the config.
        let mut fewer_outputs = resnet_config("");
        fewer_outputs.output.clear();
        assert_eq!(message(&fewer_outputs, &resnet()), "ok");
    }

    #[test]
    fn datatype_mismatch() {
        let signature =
            ModelSignature { inputs: vec![spec("x", DataType::Int64, &[-1, 3])], outputs: vec![] };
        let config = parse_config(
            r#"name: "m" max_batch_size: 4
               input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]"#,
        )
        .unwrap_or_default();
        assert_eq!(
            message(&config, &signature),
            "model 'm': input 'x': data_type TYPE_FP32 in config.pbtxt does not match \
             TYPE_INT64 in the model file"
        );
        assert!(matches!(
            validate(&config, &signature),
            Err(RepositoryError::DataTypeMismatch { kind: TensorKind::Input, .. })
        ));
    }

    #[test]
    fn string_is_bytes() {
        let signature = ModelSignature {
            inputs: vec![spec("text", DataType::Bytes, &[-1])],
            outputs: vec![spec("ids", DataType::Int32, &[-1])],
        };
        let config = parse_config(
            r#"name: "m"
               input [ { name: "text" data_type: TYPE_STRING dims: [ -1 ] } ]
               output [ { name: "ids" data_type: TYPE_INT32 dims: [ -1 ] } ]"#,
        )
        .unwrap_or_default();
        assert_eq!(message(&config, &signature), "ok");
    }

    #[test]
    fn dims_mismatch() {
        let mut config = resnet_config("");
        config.input[0].dims = vec![3, 224, 225];
        assert_eq!(
            message(&config, &resnet()),
            "model 'm': input 'data': dims [3,224,225] in config.pbtxt do not match \
             [3,224,224] in the model file (shape [-1,3,224,224] without its batch dimension, \
             as max_batch_size 8 > 0)"
        );
        // The batch dimension written into dims while max_batch_size > 0.
        let mut config = resnet_config("");
        config.output[0].dims = vec![-1, 1000];
        assert_eq!(
            message(&config, &resnet()),
            "model 'm': output 'prob': dims [-1,1000] in config.pbtxt do not match [1000] in \
             the model file (shape [-1,1000] without its batch dimension, as max_batch_size 8 \
             > 0)"
        );
        // Unbatched: compared with the full shape.
        let mut config = resnet_config("");
        config.max_batch_size = 0;
        assert_eq!(
            message(&config, &resnet()),
            "model 'm': input 'data': dims [3,224,224] in config.pbtxt do not match \
             [-1,3,224,224] in the model file"
        );
    }

    #[test]
    fn fixed_batch_dimension() {
        let signature = ModelSignature {
            inputs: vec![spec("data", DataType::Fp32, &[1, 3, 224, 224])],
            outputs: vec![spec("prob", DataType::Fp32, &[-1, 1000])],
        };
        assert_eq!(
            message(&resnet_config(""), &signature),
            "model 'm': max_batch_size 8 > 0 but input 'data' has a fixed batch dimension 1 in \
             the model file; set max_batch_size: 0 or re-export with a dynamic batch dimension"
        );
        let scalar = ModelSignature {
            inputs: vec![spec("data", DataType::Fp32, &[-1, 3, 224, 224])],
            outputs: vec![spec("prob", DataType::Fp32, &[])],
        };
        assert_eq!(
            message(&resnet_config(""), &scalar),
            "model 'm': max_batch_size 8 > 0 but output 'prob' is a scalar in the model file, so \
             it has no batch dimension; set max_batch_size: 0"
        );
    }

    #[test]
    fn reshape_is_compared_instead_of_dims() {
        let signature = ModelSignature {
            inputs: vec![spec("data", DataType::Fp32, &[-1, 1, 3, 224, 224])],
            outputs: vec![spec("prob", DataType::Fp32, &[-1])],
        };
        let mut config = resnet_config("");
        config.input[0].reshape = Some(ModelTensorReshape { shape: vec![1, 3, 224, 224] });
        config.output[0].dims = vec![1];
        config.output[0].reshape = Some(ModelTensorReshape { shape: vec![] });
        assert_eq!(message(&config, &signature), "ok");

        config.input[0].reshape = Some(ModelTensorReshape { shape: vec![3, 1, 224, 224] });
        assert_eq!(
            message(&config, &signature),
            "model 'm': input 'data': reshape.shape [3,1,224,224] in config.pbtxt do not match \
             [1,3,224,224] in the model file (shape [-1,1,3,224,224] without its batch \
             dimension, as max_batch_size 8 > 0)"
        );
    }

    #[test]
    fn reshape_element_count() {
        let mut config = resnet_config("");
        config.input[0].reshape = Some(ModelTensorReshape { shape: vec![3, 224, 225] });
        assert_eq!(
            message(&config, &resnet()),
            "model 'm': input 'data': dims [3,224,224] and reshape.shape [3,224,225] have \
             different element counts"
        );
        assert!(same_element_count(&[2, 4, -1, 6], &[8, -1, 1, 6]));
        assert!(!same_element_count(&[2, 4, -1, 6], &[8, -1, 2, 3, 2]));
        assert!(!same_element_count(&[-1, 4], &[4]));
        assert!(same_element_count(&[1], &[]));
        assert!(!same_element_count(&[2], &[]));
        assert!(!same_element_count(&[i64::MAX, 4], &[4, i64::MAX]));

        let mut empty_unbatched = resnet_config("");
        empty_unbatched.max_batch_size = 0;
        empty_unbatched.output[0].dims = vec![1];
        empty_unbatched.output[0].reshape = Some(ModelTensorReshape { shape: vec![] });
        assert_eq!(
            message(&empty_unbatched, &resnet()),
            "model 'm': output 'prob': reshape.shape is empty, which is only allowed when \
             max_batch_size > 0 (scalar tensors without a batch dimension are not supported)"
        );
    }

    #[test]
    fn scalar_in_unbatched_model() {
        let signature = ModelSignature {
            inputs: vec![spec("x", DataType::Fp32, &[])],
            outputs: vec![spec("y", DataType::Fp32, &[])],
        };
        let config = parse_config(
            r#"name: "m"
               input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
               output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]"#,
        )
        .unwrap_or_default();
        assert_eq!(
            message(&config, &signature),
            "model 'm': output 'y': dims [2] in config.pbtxt do not match the model file, where \
             it is a scalar; write dims: [ 1 ]"
        );
    }

    #[test]
    fn negative_max_batch_size() {
        let mut config = resnet_config("");
        config.max_batch_size = -1;
        assert_eq!(message(&config, &resnet()), "model 'm': max_batch_size -1 is invalid: it must be >= 0");
    }

    #[test]
    fn unknown_and_missing_tensors() {
        let mut config = resnet_config("");
        config.input[0].name = "image".to_owned();
        let mut extra = config.input[0].clone();
        extra.name = "mask".to_owned();
        config.input.push(extra);
        assert_eq!(
            message(&config, &resnet()),
            "model 'm': config.pbtxt lists inputs 'image', 'mask' that the model file does not \
             have (its inputs: 'data')"
        );

        let mut config = resnet_config("");
        config.output[0].name = "scores".to_owned();
        assert_eq!(
            message(&config, &resnet()),
            "model 'm': config.pbtxt lists output 'scores' that the model file does not have \
             (its outputs: 'prob')"
        );

        let two_inputs = ModelSignature {
            inputs: vec![
                spec("data", DataType::Fp32, &[-1, 3, 224, 224]),
                spec("mask", DataType::Bool, &[-1, 224, 224]),
            ],
            outputs: resnet().outputs,
        };
        assert_eq!(
            message(&resnet_config(""), &two_inputs),
            "model 'm': the model file's input 'mask' is missing from config.pbtxt; every model \
             input must be listed"
        );
    }

    #[test]
    fn duplicate_names() {
        let mut config = resnet_config("");
        config.output.push(config.output[0].clone());
        assert_eq!(
            message(&config, &resnet()),
            "model 'm': output 'prob' is listed more than once in config.pbtxt"
        );
    }

    #[test]
    fn bad_dims_values() {
        for (dims, shown, bad) in [(vec![3, 0, 224], "[3,0,224]", 0), (vec![3, -2, 224], "[3,-2,224]", -2)] {
            let mut config = resnet_config("");
            config.input[0].dims = dims;
            assert_eq!(
                message(&config, &resnet()),
                format!(
                    "model 'm': input 'data': dims {shown} has {bad}; every dimension must be \
                     >= 1, or -1 for a variable size"
                )
            );
        }
        let mut config = resnet_config("");
        config.output[0].dims.clear();
        assert_eq!(
            message(&config, &resnet()),
            "model 'm': output 'prob': dims must be given (use dims: [ 1 ] with reshape: { \
             shape: [ ] } for a scalar)"
        );
    }

    #[test]
    fn missing_data_type() {
        let mut config = resnet_config("");
        config.input[0].data_type = ConfigType::TypeInvalid as i32;
        assert_eq!(
            message(&config, &resnet()),
            "model 'm': input 'data': data_type must be given (it is TYPE_INVALID)"
        );
        config.input[0].data_type = 99;
        assert_eq!(message(&config, &resnet()), "model 'm': input 'data': data_type 99 is not a known type");
    }

    #[test]
    fn batching_settings() {
        let config = resnet_config("dynamic_batching { preferred_batch_size: [ 4, 16 ] }");
        assert_eq!(
            message(&config, &resnet()),
            "model 'm': dynamic_batching.preferred_batch_size 16 is invalid: it must be in \
             1..=8 (max_batch_size)"
        );
        let config = resnet_config("dynamic_batching { priority_levels: 2 }");
        assert_eq!(
            message(&config, &resnet()),
            "model 'm': dynamic_batching.default_priority_level 0 must be in 1..=2 \
             (priority_levels)"
        );
        let config = resnet_config(
            "dynamic_batching { priority_levels: 2 default_priority_level: 1 \
             priority_queue_policy { key: 3 value: { } } }",
        );
        assert_eq!(
            message(&config, &resnet()),
            "model 'm': dynamic_batching.priority_queue_policy has level 3, outside 1..=2 \
             (priority_levels)"
        );
        let config = resnet_config("ensemble_scheduling { }");
        assert_eq!(
            message(&config, &resnet()),
            "model 'm': ensemble_scheduling is not supported; Tern serves ONNX models"
        );
    }

    #[test]
    fn optional_inputs_need_no_batching() {
        let mut config = resnet_config("");
        config.input[0].optional = true;
        assert_eq!(
            message(&config, &resnet()),
            "model 'm': input 'data': optional inputs are not supported when max_batch_size > 0"
        );
    }

    #[test]
    fn other_fields() {
        let mut config = resnet_config("");
        config.name.clear();
        assert_eq!(message(&config, &resnet()), "model '': the config must give the model's 'name'");
        let mut config = resnet_config("");
        config.backend = "pytorch".to_owned();
        assert!(matches!(validate(&config, &resnet()), Err(RepositoryError::UnsupportedBackend { .. })));
        for bad in ["../model.onnx", "a/model.onnx", "/model.onnx", "..", "a\\b"] {
            let mut config = resnet_config("");
            config.default_model_filename = bad.to_owned();
            assert_eq!(
                message(&config, &resnet()),
                format!(
                    "model 'm': default_model_filename '{bad}' must be a file name inside the \
                     version directory, without path separators"
                )
            );
        }
        let mut config = resnet_config("");
        config.default_model_filename = "resnet.v2.onnx".to_owned();
        assert_eq!(message(&config, &resnet()), "ok");
    }
}
