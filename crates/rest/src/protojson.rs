//! Protobuf answers (metadata, model config, statistics, index) as the JSON Triton's HTTP
//! front end sends: protobuf's JSON mapping with the proto field names, every field printed and
//! 64-bit integers as numbers (as Triton's `ModelConfigToJson` in core
//! src/model_config_utils.cc, which then rewrites int64 strings to numbers).

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

use crate::error::RestError;

fn pool() -> Result<&'static DescriptorPool, RestError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(tern_proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| RestError::internal(format!("protocol descriptors: {e}")))
}

/// `message` (of protobuf type `type_name`, e.g. `inference.ModelConfig`) as JSON.
pub fn to_json<M: prost::Message>(
    message: &M,
    type_name: &str,
    skip_defaults: bool,
) -> Result<Value, RestError> {
    let descriptor = pool()?
        .get_message_by_name(type_name)
        .ok_or_else(|| RestError::internal(format!("no descriptor for {type_name}")))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|e| RestError::internal(format!("re-decoding {type_name}: {e}")))?;
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .use_proto_field_name(true)
        .skip_default_fields(skip_defaults);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| RestError::internal(format!("{type_name} as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::inference as pb;

    #[test]
    fn config_prints_proto_names_enums_and_numeric_int64() {
        let config = pb::ModelConfig {
            name: "m".into(),
            max_batch_size: 8,
            input: vec![pb::ModelInput {
                name: "IN".into(),
                data_type: pb::DataType::TypeFp32 as i32,
                dims: vec![3, 224],
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = to_json(&config, "inference.ModelConfig", false).expect("json");
        assert_eq!(json["max_batch_size"], 8);
        assert_eq!(json["input"][0]["data_type"], "TYPE_FP32");
        assert_eq!(json["input"][0]["dims"], serde_json::json!([3, 224]));
        assert_eq!(json["platform"], "", "defaults are printed");
    }
}
