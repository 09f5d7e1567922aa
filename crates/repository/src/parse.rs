//! config.pbtxt (protobuf text format) and the load API's JSON config, both parsed against the
//! `inference.ModelConfig` descriptor and transcoded to the prost type.

use std::sync::OnceLock;

use prost_reflect::text_format::ParseError;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use tern_proto::inference::ModelConfig;

use crate::error::{RepositoryError, TextPosition};

const MODEL_CONFIG_MESSAGE: &str = "inference.ModelConfig";

/// The descriptor of `inference.ModelConfig`, decoded once from the descriptor set that
/// tern-proto embeds at build time.
fn model_config_descriptor() -> MessageDescriptor {
    static DESCRIPTOR: OnceLock<MessageDescriptor> = OnceLock::new();
    DESCRIPTOR
        .get_or_init(|| {
            let pool = DescriptorPool::decode(tern_proto::FILE_DESCRIPTOR_SET)
                .expect("tern-proto's embedded descriptor set decodes; this is a bug");
            pool.get_message_by_name(MODEL_CONFIG_MESSAGE)
                .expect("tern-proto's descriptor set has inference.ModelConfig; this is a bug")
        })
        .clone()
}

/// Parses config.pbtxt text. `#` comments, `[ ... ]` lists, optional `:` before messages and
/// every other form of the protobuf text format are accepted; unknown fields and enum values
/// are errors (Triton rejects them too). Errors carry the line and column where found.
pub fn parse_config(text: &str) -> Result<ModelConfig, RepositoryError> {
    // Editors on some platforms write a byte-order mark; it is not part of the text format.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let patched = ListColons::insert(text);
    let message =
        DynamicMessage::parse_text_format(model_config_descriptor(), &patched.text).map_err(|err| {
            RepositoryError::ConfigText {
                position: error_offset(&err, &patched.text)
                    .and_then(|offset| position_at(text, patched.original_offset(offset))),
                message: err.to_string(),
            }
        })?;
    message
        .transcode_to::<ModelConfig>()
        .map_err(|err| RepositoryError::ConfigText { position: None, message: err.to_string() })
}

/// Parses a model config in protobuf's JSON mapping, as Triton's load API takes it in the
/// `config` parameter. Field names may be written as in the .proto (`max_batch_size`) or in
/// lowerCamelCase; 64-bit integers as numbers or strings.
pub fn config_override_from_json(json: &str) -> Result<ModelConfig, RepositoryError> {
    let json_error = |message: String| RepositoryError::ConfigJson { message };
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let message = DynamicMessage::deserialize(model_config_descriptor(), &mut deserializer)
        .map_err(|err| json_error(err.to_string()))?;
    deserializer.end().map_err(|err| json_error(err.to_string()))?;
    message.transcode_to::<ModelConfig>().map_err(|err| json_error(err.to_string()))
}

/// The text with the `:` that Triton's config files leave out before a list of messages
/// (`input [ { ... } ]`): protobuf's C++ parser, which Triton uses, takes a field name
/// followed directly by `[`, but prost-reflect wants `input: [ ... ]`.
struct ListColons {
    text: String,
    /// Offsets in `text` of the inserted colons, ascending.
    inserted: Vec<usize>,
}

impl ListColons {
    fn insert(original: &str) -> ListColons {
        #[derive(Clone, Copy, PartialEq)]
        enum Token {
            Ident,
            Other,
            Punct(u8),
        }
        let bytes = original.as_bytes();
        let mut at_original = Vec::new();
        // The two most recent tokens, newest last.
        let mut recent = [Token::Other, Token::Other];
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            let token = match b {
                b'#' => {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                    continue;
                }
                b'"' | b'\'' => {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b && bytes[i] != b'\n' {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                    Token::Other
                }
                b if b.is_ascii_whitespace() => {
                    i += 1;
                    continue;
                }
                b if b.is_ascii_alphanumeric() || b == b'_' => {
                    let start = i;
                    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || b"_.".contains(&bytes[i])) {
                        i += 1;
                    }
                    if bytes[start].is_ascii_digit() { Token::Other } else { Token::Ident }
                }
                b => {
                    // A field name (an identifier not in value position) right before `[`.
                    if b == b'['
                        && recent[1] == Token::Ident
                        && !matches!(recent[0], Token::Punct(b':' | b'-'))
                    {
                        at_original.push(i);
                    }
                    i += 1;
                    Token::Punct(b)
                }
            };
            recent = [recent[1], token];
        }

        let mut text = String::with_capacity(original.len() + at_original.len());
        let mut inserted = Vec::with_capacity(at_original.len());
        let mut copied = 0;
        for &offset in &at_original {
            text.push_str(&original[copied..offset]);
            inserted.push(text.len());
            text.push(':');
            copied = offset;
        }
        text.push_str(&original[copied..]);
        ListColons { text, inserted }
    }

    /// An offset in `text` as an offset in the original text.
    fn original_offset(&self, offset: usize) -> usize {
        offset - self.inserted.iter().take_while(|&&at| at < offset).count()
    }
}

/// Where in `text` a parse error is, as a byte offset. prost-reflect keeps the byte span of
/// the offending token private (it is public only through its optional `miette` feature,
/// which would pull a diagnostics stack into every binary), but prints it in the error's
/// `Debug` form as `span: START..END`, always the last field. A change of that form loses the
/// position, never the error; the tests pin it.
fn error_offset(err: &ParseError, text: &str) -> Option<usize> {
    let debug = format!("{err:?}");
    if let Some(at) = debug.rfind("span: ") {
        let digits: String = debug[at + "span: ".len()..].chars().take_while(char::is_ascii_digit).collect();
        if let Ok(offset) = digits.parse::<usize>() {
            return Some(offset);
        }
    }
    debug.contains("kind: UnexpectedEof").then_some(text.len())
}

/// Byte offset -> 1-based line and column; `None` if the offset is not in `text`.
fn position_at(text: &str, offset: usize) -> Option<TextPosition> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Some(TextPosition {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::inference::DataType as ConfigType;
    use tern_proto::inference::model_config::SchedulingChoice;
    use tern_proto::inference::model_instance_group::Kind;
    use tern_proto::inference::model_version_policy::PolicyChoice;

    // Written the way Triton's documentation and examples write them.
    const DOC_STYLE: &str = r#"
# An image classifier, batched.
name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 8
version_policy: { specific: { versions: [1, 3] } }
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape: { shape: [ 1, 3, 224, 224 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    reshape { shape: [ 1, 1000, 1, 1 ] }
    label_filename: "densenet_labels.txt"  # one label per line
  },
  {
    name: "score"
    data_type: TYPE_FP32
    dims: [ 1 ]
    reshape: { shape: [ ] }
  }
]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
parameters: { key: "inter_op_thread_count" value { string_value: "1" } }
optimization { graph { level: 1 } }
"#;

    #[test]
    fn parses_documentation_style_config() -> Result<(), RepositoryError> {
        let config = parse_config(DOC_STYLE)?;
        assert_eq!(config.name, "densenet_onnx");
        assert_eq!(config.platform, "onnxruntime_onnx");
        assert_eq!(config.max_batch_size, 8);
        match config.version_policy.and_then(|p| p.policy_choice) {
            Some(PolicyChoice::Specific(s)) => assert_eq!(s.versions, vec![1, 3]),
            other => panic!("unexpected version policy {other:?}"),
        }

        assert_eq!(config.input.len(), 1);
        let input = &config.input[0];
        assert_eq!(input.name, "data_0");
        assert_eq!(input.data_type, ConfigType::TypeFp32 as i32);
        assert_eq!(input.dims, vec![3, 224, 224]);
        assert_eq!(input.reshape.as_ref().map(|r| r.shape.clone()), Some(vec![1, 3, 224, 224]));

        assert_eq!(config.output.len(), 2);
        assert_eq!(config.output[0].label_filename, "densenet_labels.txt");
        assert_eq!(config.output[0].reshape.as_ref().map(|r| r.shape.clone()), Some(vec![1, 1000, 1, 1]));
        // `reshape: { shape: [ ] }` is present-but-empty, which means "scalar".
        assert_eq!(config.output[1].reshape.as_ref().map(|r| r.shape.len()), Some(0));

        assert_eq!(config.instance_group.len(), 1);
        assert_eq!(config.instance_group[0].count, 2);
        assert_eq!(config.instance_group[0].kind, Kind::Cpu as i32);

        match &config.scheduling_choice {
            Some(SchedulingChoice::DynamicBatching(db)) => {
                assert_eq!(db.preferred_batch_size, vec![4, 8]);
                assert_eq!(db.max_queue_delay_microseconds, 100);
            }
            other => panic!("unexpected scheduling {other:?}"),
        }

        let threads = config.parameters.get("intra_op_thread_count");
        assert_eq!(threads.map(|p| p.string_value.as_str()), Some("2"));
        let inter = config.parameters.get("inter_op_thread_count");
        assert_eq!(inter.map(|p| p.string_value.as_str()), Some("1"));

        let level = config.optimization.and_then(|o| o.graph).map(|g| g.level);
        assert_eq!(level, Some(1));
        Ok(())
    }

    #[test]
    fn empty_text_is_an_empty_config() -> Result<(), RepositoryError> {
        assert_eq!(parse_config("")?, ModelConfig::default());
        assert_eq!(parse_config("\u{feff}# only a comment\n")?, ModelConfig::default());
        Ok(())
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let text = "name: \"m\"\nmax_batch_size: 8\ninput [ { name: \"x\" dims: [ 1, 2 } ]\n";
        let err = parse_config(text).expect_err("unbalanced brackets");
        let RepositoryError::ConfigText { position, message } = &err else {
            panic!("unexpected error {err:?}");
        };
        assert_eq!(*position, Some(TextPosition { line: 3, column: 34 }));
        assert!(message.contains("expected"), "{message}");
        assert!(err.to_string().contains("at line 3, column 34"), "{err}");
    }

    #[test]
    fn unknown_field_is_named() {
        let err = parse_config("name: \"m\"\n\n  max_batch: 8\n").expect_err("unknown field");
        assert_eq!(
            err.to_string(),
            "invalid model config text at line 3, column 3: field 'max_batch' not found for \
             message 'inference.ModelConfig'"
        );
    }

    #[test]
    fn unknown_enum_value_is_named() {
        let err =
            parse_config("input [ { name: \"x\" data_type: TYPE_FLOAT } ]").expect_err("unknown enum value");
        let text = err.to_string();
        assert!(text.contains("TYPE_FLOAT"), "{text}");
        assert!(text.contains("at line 1, column 32"), "{text}");
    }

    #[test]
    fn truncated_text_points_at_the_end() {
        let err = parse_config("name: \"m\"\ninput [ {\n  name: \"x\"\n").expect_err("eof");
        let RepositoryError::ConfigText { position, message } = &err else {
            panic!("unexpected error {err:?}");
        };
        assert_eq!(*position, Some(TextPosition { line: 4, column: 1 }));
        assert!(message.contains("end of input"), "{message}");
    }

    #[test]
    fn wrong_value_type_is_an_error() {
        let err = parse_config("max_batch_size: \"eight\"").expect_err("string for int");
        assert!(matches!(err, RepositoryError::ConfigText { .. }), "{err:?}");
        let err = parse_config("max_batch_size: 99999999999").expect_err("out of range");
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[test]
    fn position_counts_characters_not_bytes() {
        assert_eq!(position_at("ab\nçé x", "ab\nçé ".len()), Some(TextPosition { line: 2, column: 4 }));
        assert_eq!(position_at("abc", 10), None);
    }

    #[test]
    fn json_override_accepts_proto_and_camel_case_names() -> Result<(), RepositoryError> {
        let config = config_override_from_json(
            r#"{
                "name": "m",
                "backend": "onnxruntime",
                "max_batch_size": 4,
                "input": [{"name": "x", "data_type": "TYPE_INT64", "dims": ["-1", 3]}],
                "dynamicBatching": {"maxQueueDelayMicroseconds": "500"}
            }"#,
        )?;
        assert_eq!(config.name, "m");
        assert_eq!(config.max_batch_size, 4);
        assert_eq!(config.input[0].data_type, ConfigType::TypeInt64 as i32);
        assert_eq!(config.input[0].dims, vec![-1, 3]);
        match config.scheduling_choice {
            Some(SchedulingChoice::DynamicBatching(db)) => {
                assert_eq!(db.max_queue_delay_microseconds, 500)
            }
            other => panic!("unexpected scheduling {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn json_override_errors() {
        let err =
            config_override_from_json(r#"{"name": "m", "no_such_field": 1}"#).expect_err("unknown field");
        assert!(err.to_string().contains("no_such_field"), "{err}");
        let err = config_override_from_json(r#"{"name": "m"} trailing"#).expect_err("trailing");
        assert!(matches!(err, RepositoryError::ConfigJson { .. }), "{err:?}");
        let err = config_override_from_json("{\"name\": ").expect_err("truncated");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn colon_is_optional_before_a_list_of_messages() -> Result<(), RepositoryError> {
        let patched =
            ListColons::insert("input[{name:\"a [\" dims:[1]}] # output [\noutput [ { name: 'b\\' [' } ]");
        assert_eq!(
            patched.text,
            "input:[{name:\"a [\" dims:[1]}] # output [\noutput :[ { name: 'b\\' [' } ]"
        );
        assert_eq!(patched.original_offset(6), 5);
        assert_eq!(patched.original_offset(5), 5);

        let config =
            parse_config("input[{name:\"a\"},{name:\"b\"}]\noutput [ { name: \"y\" dims: [ 2 ] } ]")?;
        let names: Vec<_> = config.input.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(config.output[0].dims, vec![2]);
        // Values in lists keep their colon; nothing is inserted after a value.
        assert_eq!(ListColons::insert("kind: KIND_CPU [x]").inserted, Vec::<usize>::new());
        Ok(())
    }

    #[test]
    fn error_position_after_inserted_colons() {
        let err = parse_config("input [ { } ]\noutput [ { } ]\ninstance_group [ { count: x } ]")
            .expect_err("bad count");
        let RepositoryError::ConfigText { position, .. } = err else {
            panic!("unexpected error {err:?}");
        };
        assert_eq!(position, Some(TextPosition { line: 3, column: 27 }));
    }
}
