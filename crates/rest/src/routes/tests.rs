use super::*;

#[test]
fn path_segments_are_percent_decoded() {
    assert_eq!(decode_segment("a%20b%2Fc").expect("decode"), "a b/c");
    assert!(decode_segment("bad%zz").is_err());
    assert!(decode_segment("cut%2").is_err());
}

#[test]
fn repository_parameters_decode_files_and_config() {
    let options: Map<String, Value> = serde_json::from_str(
            r#"{"parameters":{"config":"{\"max_batch_size\":0}","file:1/model.onnx":"AAEC","unload_dependents":true}}"#,
        )
        .expect("json");
    let params = repository_parameters("m", &options).expect("params");
    use pb::model_repository_parameter::ParameterChoice as C;
    assert_eq!(params["file:1/model.onnx"].parameter_choice, Some(C::BytesParam(vec![0, 1, 2])));
    assert!(matches!(params["config"].parameter_choice, Some(C::StringParam(_))));
    let bad: Map<String, Value> = serde_json::from_str(r#"{"parameters":{"file:x":"!!"}}"#).expect("json");
    let e = repository_parameters("m", &bad).expect_err("base64");
    assert!(e.message.contains("'file:x'"), "{e:?}");
}
