//! One config input or output: its own shape fields, and against the model file's tensor.

use tern_core::{DataType, TensorSpec};
use tern_proto::inference::{DataType as ConfigType, ModelTensorReshape};

use super::{config_type_name, shape_string};
use crate::error::{RepositoryError, TensorKind};

/// One input or output of the config, seen the same way for both sides.
pub(super) struct ConfigTensor<'a> {
    pub(super) kind: TensorKind,
    pub(super) name: &'a str,
    pub(super) data_type: i32,
    pub(super) dims: &'a [i64],
    pub(super) reshape: Option<&'a ModelTensorReshape>,
}

impl ConfigTensor<'_> {
    pub(super) fn error(&self, model: &str, message: impl std::fmt::Display) -> RepositoryError {
        RepositoryError::invalid(model, format!("{} '{}': {message}", self.kind, self.name))
    }

    /// Triton's `ValidateIOShape`, less what the model comparison covers.
    pub(super) fn check_shape_fields(&self, model: &str, max_batch_size: i32) -> Result<(), RepositoryError> {
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

    pub(super) fn check_against(
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
pub(super) fn same_element_count(dims: &[i64], reshape: &[i64]) -> bool {
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
