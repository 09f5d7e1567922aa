use super::*;
use tern_proto::inference::{
    InferParameter, InferTensorContents,
    model_infer_request::{InferInputTensor, InferRequestedOutputTensor},
};

fn spec(name: &str, datatype: DataType, dims: &[i64]) -> IoSpec {
    IoSpec {
        name: name.into(),
        datatype,
        dims: dims.to_vec(),
        reshape: None,
        optional: false,
        labels: None,
        utf8: false,
    }
}

fn tiny_add() -> ModelIo {
    ModelIo {
        model: "tiny_add".into(),
        max_batch_size: 64,
        inputs: vec![spec("INPUT0", DataType::Fp32, &[16]), spec("INPUT1", DataType::Fp32, &[16])],
        outputs: vec![spec("OUTPUT0", DataType::Fp32, &[16])],
    }
}

fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        ..Default::default()
    }
}

fn raw_request(rows: i64) -> ModelInferRequest {
    let payload = Bytes::from(vec![0u8; rows as usize * 16 * 4]);
    ModelInferRequest {
        model_name: "tiny_add".into(),
        inputs: vec![input("INPUT0", "FP32", &[rows, 16]), input("INPUT1", "FP32", &[rows, 16])],
        raw_input_contents: vec![payload.clone(), payload],
        ..Default::default()
    }
}

fn invalid(r: Result<ValidatedRequest, RequestError>) -> String {
    match r {
        Err(RequestError::InvalidArgument(m)) => m,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[test]
fn valid_raw_request_shares_the_payload() {
    let req = raw_request(2);
    let ptr = req.raw_input_contents[0].as_ptr();
    let v = validate_request(&tiny_add(), req).expect("valid");
    assert_eq!(v.batch_size, 2);
    assert_eq!(v.inputs[0].shape, vec![2, 16]);
    assert_eq!(v.inputs[0].data.as_ptr(), ptr, "no copy of raw input");
    // None named: the config's outputs, and only those.
    let names: Vec<&str> = v.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, vec!["OUTPUT0"]);
}

#[test]
fn triton_messages_for_common_mistakes() {
    let mut req = raw_request(1);
    req.inputs[0].name = "NOPE".into();
    assert_eq!(
        invalid(validate_request(&tiny_add(), req)),
        "unexpected inference input 'NOPE' for model 'tiny_add'"
    );

    let mut req = raw_request(1);
    req.inputs[0].shape = vec![2, 8];
    let m = invalid(validate_request(&tiny_add(), req));
    assert!(
        m.starts_with("[request id: <id_unknown>] unexpected shape for input 'INPUT0' for model 'tiny_add'. Expected [-1,16], got [2,8]. NOTE:"),
        "{m}"
    );

    let mut req = raw_request(65);
    req.id = "r7".into();
    assert_eq!(
        invalid(validate_request(&tiny_add(), req)),
        "[request id: r7] inference request batch-size must be <= 64 for 'tiny_add'"
    );

    let mut req = raw_request(1);
    req.inputs[1].datatype = "INT32".into();
    let m = invalid(validate_request(&tiny_add(), req));
    assert!(
        m.contains("inference input 'INPUT1' data-type is 'INT32', but model 'tiny_add' expects 'FP32'"),
        "{m}"
    );
}

#[test]
fn payload_and_structure_errors() {
    let mut req = raw_request(1);
    req.raw_input_contents[1] = Bytes::from(vec![0u8; 60]);
    let m = invalid(validate_request(&tiny_add(), req));
    assert!(
        m.contains("input byte size mismatch for input 'INPUT1' for model 'tiny_add'. Expected 64, got 60"),
        "{m}"
    );

    let mut req = raw_request(1);
    req.inputs.pop();
    req.raw_input_contents.pop();
    let m = invalid(validate_request(&tiny_add(), req));
    assert!(m.contains("missing required input(s) ['INPUT1']"), "{m}");

    let mut req = raw_request(1);
    req.inputs[1].name = "INPUT0".into();
    assert!(invalid(validate_request(&tiny_add(), req)).contains("more than once"));

    let mut req = raw_request(1);
    req.inputs[0].contents = Some(InferTensorContents { fp32_contents: vec![1.0; 16], ..Default::default() });
    assert!(invalid(validate_request(&tiny_add(), req)).contains("contents field must not be specified"));

    let mut req = raw_request(1);
    req.raw_input_contents.pop();
    assert!(
        invalid(validate_request(&tiny_add(), req))
            .contains("unable to find data for input tensor 'INPUT1' for model 'tiny_add' in request.")
    );

    let mut req = raw_request(1);
    req.raw_input_contents.push(Bytes::new());
    assert!(invalid(validate_request(&tiny_add(), req)).contains("3 raw input contents but only 2 inputs"));

    let mut req = raw_request(1);
    req.outputs.push(InferRequestedOutputTensor { name: "NOPE".into(), ..Default::default() });
    assert_eq!(
        invalid(validate_request(&tiny_add(), req)),
        "unexpected inference output 'NOPE' for model 'tiny_add'"
    );

    let mut req = raw_request(1);
    req.inputs[0].shape = vec![1, -16];
    assert!(invalid(validate_request(&tiny_add(), req)).contains("unexpected shape"));

    let mut req = raw_request(1);
    req.inputs[0].datatype = "FLOAT".into();
    assert!(invalid(validate_request(&tiny_add(), req)).contains("unknown datatype 'FLOAT'"));
}

#[test]
fn typed_contents_are_accepted_and_counted() {
    let mut req = raw_request(1);
    req.raw_input_contents.clear();
    for i in &mut req.inputs {
        i.contents = Some(InferTensorContents { fp32_contents: vec![2.0; 16], ..Default::default() });
    }
    let v = validate_request(&tiny_add(), req.clone()).expect("typed is valid");
    assert_eq!(v.inputs[0].data.len(), 64);
    assert_eq!(&v.inputs[0].data[..4], &2.0f32.to_le_bytes());
    req.inputs[0].contents = Some(InferTensorContents { fp32_contents: vec![2.0; 15], ..Default::default() });
    assert!(invalid(validate_request(&tiny_add(), req)).contains("needs 16, contents has 15"));
}

fn strings_model() -> ModelIo {
    ModelIo {
        model: "s".into(),
        max_batch_size: 0,
        inputs: vec![spec("IN", DataType::Bytes, &[-1])],
        outputs: vec![spec("OUT", DataType::Bytes, &[-1])],
    }
}

#[test]
fn bytes_inputs_are_checked_for_framing_and_count() {
    let good = codec::encode_bytes_elements(["a", "", "ü"]);
    let req = |data: Bytes, n: i64| ModelInferRequest {
        model_name: "s".into(),
        inputs: vec![input("IN", "BYTES", &[n])],
        raw_input_contents: vec![data],
        ..Default::default()
    };
    let v = validate_request(&strings_model(), req(good.clone(), 3)).expect("valid");
    assert_eq!(v.batch_size, 0);
    assert!(
        invalid(validate_request(&strings_model(), req(good.clone(), 2)))
            .contains("expected 2 string elements")
    );
    let truncated = good.slice(..good.len() - 1);
    assert!(invalid(validate_request(&strings_model(), req(truncated, 3))).contains("claims"));
    assert!(
        invalid(validate_request(&strings_model(), req(Bytes::from_static(&[1, 0]), 1)))
            .contains("length prefix")
    );
}

#[test]
fn utf8_inputs_refuse_other_bytes_per_request_naming_model_tensor_and_element() {
    let text_model = ModelIo {
        model: "embedder".into(),
        max_batch_size: 8,
        inputs: vec![IoSpec { utf8: true, ..spec("text", DataType::Bytes, &[1]) }],
        outputs: vec![spec("embedding", DataType::Fp32, &[4])],
    };
    let req = |elements: &[&[u8]]| ModelInferRequest {
        model_name: "embedder".into(),
        id: "r7".into(),
        inputs: vec![input("text", "BYTES", &[elements.len() as i64, 1])],
        raw_input_contents: vec![codec::encode_bytes_elements(elements.iter().copied())],
        ..Default::default()
    };
    let ok: [&[u8]; 3] = [b"plain", "Grüße 東京 🚀".as_bytes(), b""];
    let v = validate_request(&text_model, req(&ok)).expect("UTF-8 text is valid");
    assert_eq!(v.batch_size, 3);

    for (bad, index) in [(&b"caf\xc3"[..], 1), (&b"\xff\xfe"[..], 1), (&b"a\x80"[..], 1)] {
        let msg = invalid(validate_request(&text_model, req(&[b"fine", bad, b"also fine"])));
        assert!(
            msg.contains("[request id: r7]")
                && msg.contains("'embedder'")
                && msg.contains("input 'text'")
                && msg.contains(&format!("element {index}"))
                && msg.contains("not valid UTF-8"),
            "{msg}"
        );
    }
    // The first bad element is the one named.
    let msg = invalid(validate_request(&text_model, req(&[b"\xc0", b"\xff"])));
    assert!(msg.contains("element 0"), "{msg}");

    // Without the flag BYTES stay opaque bytes, as Triton treats them.
    let opaque = ModelIo { inputs: vec![spec("text", DataType::Bytes, &[1])], ..text_model };
    validate_request(&opaque, req(&[b"\xff\xfe"])).expect("opaque BYTES pass");
}

#[test]
fn huge_shapes_are_refused_without_allocating() {
    let mut req = raw_request(1);
    req.inputs[0].shape = vec![1, 16];
    let io = ModelIo {
        inputs: vec![spec("INPUT0", DataType::Fp32, &[-1]), spec("INPUT1", DataType::Fp32, &[16])],
        ..tiny_add()
    };
    req.inputs[0].shape = vec![1, 1 << 62];
    assert!(invalid(validate_request(&io, req)).contains("byte size mismatch"));
}

#[test]
fn reshape_changes_the_shape_the_model_sees() {
    let mut io = tiny_add();
    io.inputs[0].reshape = Some(vec![4, 4]);
    let v = validate_request(&io, raw_request(3)).expect("valid");
    assert_eq!(v.inputs[0].shape, vec![3, 4, 4]);
    assert_eq!(v.inputs[1].shape, vec![3, 16]);
}

#[test]
fn classification_parameter() {
    let mut req = raw_request(1);
    let mut out = InferRequestedOutputTensor { name: "OUTPUT0".into(), ..Default::default() };
    out.parameters.insert(
        "classification".into(),
        InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(3)) },
    );
    req.outputs.push(out.clone());
    let v = validate_request(&tiny_add(), req).expect("valid");
    assert_eq!(v.outputs[0].class_count, Some(3));
    let mut req = raw_request(1);
    out.parameters.insert(
        "classification".into(),
        InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(0)) },
    );
    req.outputs.push(out);
    assert!(invalid(validate_request(&tiny_add(), req)).contains("positive integer"));
}

#[test]
fn classify_top_k_per_row_with_labels() {
    let values: Vec<f32> = vec![0.1, 0.7, 0.2, 0.5, 0.5, 0.0];
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let t = Tensor { name: "p".into(), datatype: DataType::Fp32, shape: vec![2, 3], data: Bytes::from(data) };
    let labels: Vec<String> = vec!["cat".into(), "dog".into(), "eel".into()];
    let c = classify(&t, 2, true, Some(&labels)).expect("classify");
    assert_eq!(c.shape, vec![2, 2]);
    assert_eq!(c.datatype, DataType::Bytes);
    let got: Vec<String> = codec::bytes_elements(&c.data)
        .map(|e| String::from_utf8(e.expect("framed").to_vec()).expect("utf8"))
        .collect();
    assert_eq!(got, vec!["0.7:1:dog", "0.2:2:eel", "0.5:0:cat", "0.5:1:dog"]);
    let c = classify(&t, 10, false, None).expect("classify");
    assert_eq!(c.shape, vec![6]);
    let first = codec::bytes_elements(&c.data).next().expect("one").expect("framed");
    assert_eq!(first, b"0.7:1");
}

#[test]
fn classifying_bytes_is_refused_with_the_same_message() {
    let t = Tensor {
        name: "text".into(),
        datatype: DataType::Bytes,
        shape: vec![1],
        data: codec::encode_bytes_elements(["a"]),
    };
    let e = classify(&t, 1, false, None).expect_err("BYTES has no scores");
    assert_eq!(e, ClassifyError::NotNumeric { output: "text".into() });
    assert_eq!(e.to_string(), "output 'text' is BYTES and cannot be classified");
}

#[test]
fn sequence_parameters_as_triton_clients_send_them() {
    let param = |c: ParameterChoice| InferParameter { parameter_choice: Some(c) };
    let with = |params: Vec<(&str, ParameterChoice)>| {
        let mut req = raw_request(1);
        for (k, v) in params {
            req.parameters.insert(k.into(), param(v));
        }
        validate_request(&tiny_add(), req)
    };
    let seq = |r: Result<ValidatedRequest, RequestError>| r.expect("valid").sequence;
    assert_eq!(seq(with(vec![])), SequenceParams::default());
    assert!(!SequenceParams::default().id.in_sequence(), "no sequence_id is correlation ID 0");
    let got = seq(with(vec![
        ("sequence_id", ParameterChoice::Int64Param(1000)),
        ("sequence_start", ParameterChoice::BoolParam(true)),
    ]));
    assert_eq!(got, SequenceParams { id: CorrelationId::Uint(1000), start: true, end: false });
    let got = seq(with(vec![
        ("sequence_id", ParameterChoice::StringParam("abc".into())),
        ("sequence_end", ParameterChoice::BoolParam(true)),
    ]));
    assert_eq!(got, SequenceParams { id: CorrelationId::Str("abc".into()), start: false, end: true });
    assert!(!CorrelationId::Str(String::new()).in_sequence());
    let bad = invalid(with(vec![("sequence_start", ParameterChoice::Int64Param(1))]));
    assert!(bad.contains("invalid value type for 'sequence_start' parameter"), "{bad}");
    let bad = invalid(with(vec![("sequence_id", ParameterChoice::BoolParam(true))]));
    assert!(bad.contains("expected int64_param or string_param"), "{bad}");
}
