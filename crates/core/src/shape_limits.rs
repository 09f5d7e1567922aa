//! Size limits on inference requests, checked before anything is allocated from the sizes a
//! request claims: a shape is only numbers, so a request may claim 2^40 elements in a few
//! bytes. [`check_request`] refuses, naming the limit, any input whose shape claims more
//! than `max_tensor_bytes` (or more elements than fit in 64 bits) and any request whose inputs
//! claim more than `max_request_bytes` together. [`crate::validate_request`] then checks that
//! the payloads match the shapes.

use tern_proto::inference::ModelInferRequest;

use crate::{DataType, RequestError};

/// Limits on what one inference request may carry. The names are the tern-node flags that set
/// them, so refusals can name the flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Bytes one input tensor may hold (`--max-tensor-bytes`).
    pub max_tensor_bytes: u64,
    /// Bytes all inputs of one request may hold together (`--max-request-bytes`).
    pub max_request_bytes: u64,
}

impl Default for RequestLimits {
    /// As large as a gRPC message can be (2 GiB - 1): no limit beyond the message's own.
    fn default() -> Self {
        RequestLimits { max_tensor_bytes: i32::MAX as u64, max_request_bytes: i32::MAX as u64 }
    }
}

/// The bytes an input claims: elements times the element size (for BYTES, the 4-byte length
/// prefix each element needs at least). `None` when that does not fit in 64 bits.
fn claimed_bytes(datatype: Option<DataType>, elements: u64) -> Option<u64> {
    let size = datatype.and_then(DataType::element_size).unwrap_or(4) as u64;
    elements.checked_mul(size)
}

/// Refuses a request whose shapes claim more than `limits` allow, before any buffer is sized
/// from them. Shapes with a negative dimension and unknown datatypes are left to
/// [`crate::validate_request`], which refuses them in Triton's wording.
pub fn check_request(req: &ModelInferRequest, limits: &RequestLimits) -> Result<(), RequestError> {
    let model = &req.model_name;
    let mut total: u64 = 0;
    for input in &req.inputs {
        if input.shape.iter().any(|&d| d < 0) {
            continue;
        }
        // Formatted only for an error message: most requests pass.
        let shape = || format!("{:?}", input.shape).replace(' ', "");
        let datatype = DataType::from_wire_name(&input.datatype);
        let too_many = || {
            RequestError::InvalidArgument(format!(
                "input '{}' for model '{model}': shape {} has more than 2^64 elements",
                input.name,
                shape()
            ))
        };
        let elements = crate::request::element_count(&input.shape).ok_or_else(too_many)?;
        let bytes = claimed_bytes(datatype, elements).ok_or_else(|| {
            RequestError::InvalidArgument(format!(
                "input '{}' for model '{model}': shape {} of {} claims more than 2^64 bytes",
                input.name,
                shape(),
                input.datatype
            ))
        })?;
        if bytes > limits.max_tensor_bytes {
            return Err(RequestError::InvalidArgument(format!(
                "input '{}' for model '{model}': shape {} of {} claims {bytes} bytes, more than \
                 the limit of {} bytes per tensor (--max-tensor-bytes)",
                input.name,
                shape(),
                input.datatype,
                limits.max_tensor_bytes
            )));
        }
        total = total.saturating_add(bytes);
    }
    // What the payloads hold, where they hold more than the shapes claim (the validation
    // refuses the mismatch, but the limit is about what arrived).
    let raw: u64 = req.raw_input_contents.iter().map(|r| r.len() as u64).sum();
    let total = total.max(raw);
    if total > limits.max_request_bytes {
        return Err(RequestError::ResourceExhausted(format!(
            "request for model '{model}' carries {total} bytes of inputs, more than the limit of {} \
             bytes per request (--max-request-bytes)",
            limits.max_request_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::inference::model_infer_request::InferInputTensor;

    fn request(inputs: &[(&str, &[i64])]) -> ModelInferRequest {
        ModelInferRequest {
            model_name: "m".into(),
            inputs: inputs
                .iter()
                .map(|(datatype, shape)| InferInputTensor {
                    name: "x".into(),
                    datatype: (*datatype).into(),
                    shape: shape.to_vec(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn refusal(req: &ModelInferRequest, limits: &RequestLimits) -> RequestError {
        check_request(req, limits).err().unwrap_or_else(|| RequestError::Internal("accepted".into()))
    }

    #[test]
    fn a_shape_claiming_2_pow_40_elements_is_refused_naming_the_limit() {
        let e = refusal(&request(&[("FP32", &[1, 1 << 40])]), &RequestLimits::default());
        let RequestError::InvalidArgument(m) = e else { panic!("expected INVALID_ARGUMENT, got {e:?}") };
        assert!(m.contains("--max-tensor-bytes") && m.contains("4398046511104 bytes"), "{m}");
        assert!(m.contains("[1,1099511627776]"), "{m}");
    }

    #[test]
    fn shapes_overflowing_64_bits_are_refused() {
        let limits = RequestLimits { max_tensor_bytes: u64::MAX, max_request_bytes: u64::MAX };
        for (datatype, shape, says) in [
            ("FP32", &[1i64 << 32, 1 << 32, 1 << 32][..], "more than 2^64 elements"),
            ("FP64", &[1 << 61, 4][..], "more than 2^64 bytes"),
            ("BYTES", &[1 << 62, 8][..], "more than 2^64 elements"),
            ("BYTES", &[1 << 62, 2][..], "more than 2^64 bytes"),
        ] {
            let e = refusal(&request(&[(datatype, shape)]), &limits);
            let RequestError::InvalidArgument(m) = e else { panic!("{shape:?}: got {e:?}") };
            assert!(m.contains(says), "{shape:?}: {m}");
        }
    }

    #[test]
    fn the_request_limit_is_resource_exhausted() {
        let limits = RequestLimits { max_tensor_bytes: 1000, max_request_bytes: 1500 };
        assert!(check_request(&request(&[("FP32", &[250]), ("UINT8", &[500])]), &limits).is_ok());
        let e = refusal(&request(&[("FP32", &[250]), ("FP32", &[250])]), &limits);
        let RequestError::ResourceExhausted(m) = e else { panic!("got {e:?}") };
        assert!(m.contains("2000 bytes") && m.contains("--max-request-bytes"), "{m}");
        // Raw payloads count even when the shapes claim less.
        let mut small = request(&[("UINT8", &[1])]);
        small.raw_input_contents = vec![bytes::Bytes::from(vec![0u8; 2000])];
        assert!(matches!(refusal(&small, &limits), RequestError::ResourceExhausted(_)));
    }

    #[test]
    fn negative_dims_and_unknown_types_are_left_to_validation() {
        let limits = RequestLimits { max_tensor_bytes: 16, max_request_bytes: 16 };
        assert!(check_request(&request(&[("FP32", &[-1, 1 << 40])]), &limits).is_ok());
        // An unknown datatype counts 4 bytes per element, so huge shapes are still refused.
        assert!(check_request(&request(&[("NOPE", &[1 << 40])]), &limits).is_err());
        assert!(check_request(&request(&[("NOPE", &[2])]), &limits).is_ok());
        assert!(check_request(&request(&[("FP32", &[0, 1 << 40])]), &limits).is_ok());
    }
}
