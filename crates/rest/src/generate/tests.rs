use super::*;
use serde_json::json;

fn spec(name: &str, datatype: &str, shape: &[i64]) -> InputSpec {
    InputSpec { name: name.into(), datatype: datatype.into(), shape: shape.to_vec() }
}

fn llm_inputs() -> Vec<InputSpec> {
    vec![
        spec("text_input", "BYTES", &[1]),
        spec("max_tokens", "INT32", &[1]),
        spec("temperature", "FP32", &[1]),
        spec("stop", "BYTES", &[-1]),
        spec("stop_token_ids", "INT32", &[-1]),
        spec("stream", "BOOL", &[1]),
    ]
}

fn input<'a>(r: &'a pb::ModelInferRequest, name: &str) -> (&'a [i64], &'a [u8], &'a str) {
    let i = r.inputs.iter().position(|t| t.name == name).unwrap_or_else(|| panic!("no input {name}"));
    (&r.inputs[i].shape, &r.raw_input_contents[i], &r.inputs[i].datatype)
}

#[test]
fn fields_naming_inputs_become_tensors_and_others_parameters() {
    let body = json!({"id": "42", "text_input": "hi", "max_tokens": 8, "stop": ["a", "bc"],
            "parameters": {"temperature": 0, "top_k": 3, "note": "x", "flag": true, "scale": 0.5}});
    let r =
        parse_request("llm", "1", body.to_string().as_bytes(), &llm_inputs(), false, 1 << 20).expect("parse");
    assert_eq!((r.model_name.as_str(), r.model_version.as_str(), r.id.as_str()), ("llm", "1", "42"));
    assert_eq!(input(&r, "text_input"), (&[1i64][..], &b"\x02\0\0\0hi"[..], "BYTES"));
    assert_eq!(input(&r, "max_tokens"), (&[1i64][..], &8i32.to_le_bytes()[..], "INT32"));
    assert_eq!(input(&r, "temperature"), (&[1i64][..], &0f32.to_le_bytes()[..], "FP32"));
    assert_eq!(input(&r, "stop"), (&[2i64][..], &b"\x01\0\0\0a\x02\0\0\0bc"[..], "BYTES"));
    // Not given: `stream` follows the route (false for /generate).
    assert_eq!(input(&r, "stream"), (&[1i64][..], &[0u8][..], "BOOL"));
    let p = |k: &str| r.parameters[k].parameter_choice.clone();
    assert_eq!(p("top_k"), Some(ParameterChoice::Int64Param(3)));
    assert_eq!(p("note"), Some(ParameterChoice::StringParam("x".into())));
    assert_eq!(p("flag"), Some(ParameterChoice::BoolParam(true)));
    assert_eq!(p("scale"), Some(ParameterChoice::DoubleParam(0.5)));
    assert!(!r.parameters.contains_key("id") && !r.parameters.contains_key("temperature"));
}

#[test]
fn stream_input_follows_the_route_unless_given() {
    let r = parse_request("llm", "", br#"{"text_input":"a"}"#, &llm_inputs(), true, 1 << 20).expect("parse");
    assert_eq!(input(&r, "stream").1, &[1u8]);
    let r = parse_request("llm", "", br#"{"text_input":"a","stream":false}"#, &llm_inputs(), true, 1 << 20)
        .expect("parse");
    assert_eq!(input(&r, "stream").1, &[0u8]);
    let r = parse_request(
        "llm",
        "",
        br#"{"text_input":"a","parameters":{"stream":true}}"#,
        &llm_inputs(),
        false,
        1 << 20,
    )
    .expect("parse");
    assert_eq!(input(&r, "stream").1, &[1u8]);
    assert_eq!(r.inputs.iter().filter(|i| i.name == "stream").count(), 1);
    // A model without a `stream` input gets none.
    let r = parse_request(
        "m",
        "",
        br#"{"INPUT0":[1.0,2.0]}"#,
        &[spec("INPUT0", "FP32", &[-1, 2])],
        true,
        1 << 20,
    )
    .expect("parse");
    assert_eq!(r.inputs.len(), 1);
    assert_eq!(input(&r, "INPUT0").0, &[1i64, 2][..]);
}

#[test]
fn empty_body_is_an_empty_request() {
    let r = parse_request("m", "", b"  ", &[], false, 1 << 20).expect("parse");
    assert!(r.inputs.is_empty() && r.parameters.is_empty());
}

#[test]
fn bad_bodies_are_400_naming_the_field() {
    let inputs = llm_inputs();
    let cases: &[(&str, &str)] = &[
        (r#"[1]"#, "must be a JSON object"),
        (r#"{"text_input":"#, "malformed generate request JSON"),
        (r#"{"id":7}"#, "Unable to parse 'id'"),
        (r#"{"parameters":[1]}"#, "Expected JSON object for keyword: 'parameters'"),
        (r#"{"max_tokens":"many"}"#, "input 'max_tokens'"),
        (r#"{"max_tokens":[1,2]}"#, "can not convert input 'max_tokens'"),
        (r#"{"stop":[["a"]]}"#, "scalar or a flat array"),
        (r#"{"text_input":null}"#, "input 'text_input'"),
        (r#"{"other":{"a":1}}"#, "parameter 'other' has invalid type"),
        (r#"{"text_input":"a","parameters":{"text_input":"b"}}"#, "input 'text_input' already exists"),
        (r#"{"text_input":"a","text_input":"b"}"#, "input 'text_input' already exists"),
        (r#"{"note":"a","parameters":{"note":"b"}}"#, "parameter 'note' is given twice"),
        (r#"{"parameters":{"a":1},"parameters":{"b":1}}"#, "given twice"),
        (r#"{"triton_x":1}"#, "reserved for Triton"),
        (r#"{"max_tokens":3000000000}"#, "INT32"),
    ];
    for (body, want) in cases {
        let e = parse_request("llm", "", body.as_bytes(), &inputs, false, 1 << 20).expect_err(body);
        assert_eq!(e.status, http::StatusCode::BAD_REQUEST, "{body}");
        assert!(e.message.contains(want), "{body}: {e:?}");
    }
    let e =
        parse_request("m", "", br#"{"parameters":{}}"#, &[spec("parameters", "INT32", &[1])], false, 1 << 20)
            .expect_err("nested name");
    assert!(e.message.contains("Keyword 'parameters'"), "{e:?}");
}

#[test]
fn inputs_are_bounded_together() {
    let long = "x".repeat(600);
    let body = json!({"text_input": long, "stop": [long]});
    let e =
        parse_request("llm", "", body.to_string().as_bytes(), &llm_inputs(), false, 1000).expect_err("limit");
    assert!(e.message.contains("maximum allowed input size"), "{e:?}");
    assert!(parse_request("llm", "", body.to_string().as_bytes(), &llm_inputs(), false, 2000).is_ok());
}

#[test]
fn elements_are_placed_as_triton_places_them() {
    assert_eq!(place_elements(&[1], 1), Some(vec![1]));
    assert_eq!(place_elements(&[-1], 3), Some(vec![3]));
    assert_eq!(place_elements(&[-1, 1], 1), Some(vec![1, 1]));
    assert_eq!(place_elements(&[-1, -1], 4), Some(vec![1, 4]));
    assert_eq!(place_elements(&[-1, 2], 6), Some(vec![3, 2]));
    assert_eq!(place_elements(&[2], 3), None);
    assert_eq!(place_elements(&[1], 2), None);
    assert_eq!(place_elements(&[-1], 0), Some(vec![0]));
}

fn text_response(text: &str, last: bool) -> pb::ModelInferResponse {
    let mut raw = (text.len() as u32).to_le_bytes().to_vec();
    raw.extend_from_slice(text.as_bytes());
    let ids: Vec<u8> = [5i32, 6].iter().flat_map(|x| x.to_le_bytes()).collect();
    pb::ModelInferResponse {
        model_name: "llm".into(),
        model_version: "1".into(),
        id: "r1".into(),
        parameters: [(
            FINAL_RESPONSE.to_string(),
            pb::InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(last)) },
        )]
        .into(),
        outputs: vec![
            pb::model_infer_response::InferOutputTensor {
                name: "text_output".into(),
                datatype: "BYTES".into(),
                shape: vec![1],
                ..Default::default()
            },
            pb::model_infer_response::InferOutputTensor {
                name: "output_ids".into(),
                datatype: "INT32".into(),
                shape: vec![2],
                ..Default::default()
            },
        ],
        raw_output_contents: vec![Bytes::from(raw), Bytes::from(ids)],
    }
}

#[test]
fn responses_are_flat_objects_with_scalars_for_single_elements() {
    let m = response_json(&text_response("héllo", false)).expect("json");
    assert_eq!(
        Value::Object(m),
        json!({"id": "r1", "model_name": "llm", "model_version": "1", "text_output": "héllo", "output_ids": [5, 6]})
    );
}

#[test]
fn events_are_sse_data_lines() {
    let event = response_event(&text_response("a", true));
    let text = std::str::from_utf8(&event).expect("utf-8");
    assert!(text.starts_with("data: {") && text.ends_with("}\n\n"), "{text}");
    assert_eq!(text.matches('\n').count(), 2, "one line per event: {text}");
    let json: Value = serde_json::from_str(&text[6..]).expect("json");
    assert_eq!(json["text_output"], "a");
    assert_eq!(&error_event("bad \"x\"\nnext")[..], b"data: {\"error\":\"bad \\\"x\\\"\\nnext\"}\n\n");
    // A malformed response becomes an error event, not a panic.
    let mut broken = text_response("a", false);
    broken.raw_output_contents.pop();
    assert!(std::str::from_utf8(&response_event(&broken)).expect("utf-8").starts_with("data: {\"error\":"));
}

#[test]
fn flags_only_final_responses_are_recognised() {
    let mut r = text_response("a", true);
    assert!(!is_flags_only(&r));
    r.outputs.clear();
    r.raw_output_contents.clear();
    assert!(is_flags_only(&r));
    r.parameters.clear();
    assert!(!is_flags_only(&r));
}
