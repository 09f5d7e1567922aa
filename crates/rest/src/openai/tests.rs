use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};
use tern_proto::inference::{self as pb, infer_parameter::ParameterChoice};

use super::engine::{bytes_elements, finish_reason, parameter};
use super::models::embedding_facts;
use super::*;

fn parse_body(kind: Kind, body: &str) -> Result<GenRequest, OpenAiError> {
    parse_generate(kind, body.as_bytes())
}

#[test]
fn completion_requests_map_openai_fields() {
    let r = parse_body(
        Kind::Completion,
        r#"{"model": "m", "prompt": ["Hi"], "max_tokens": 5, "temperature": 0.5, "top_p": 0.9,
                "seed": 7, "stop": "\n", "n": 1, "presence_penalty": 0, "user": "u", "logit_bias": null,
                "stream": true, "stream_options": {"include_usage": true}}"#,
    )
    .expect("parses");
    assert_eq!(r.model, "m");
    assert_eq!(r.prompt, "Hi");
    assert_eq!(r.max_tokens, Some(5));
    assert_eq!((r.temperature, r.top_p, r.seed), (Some(0.5), Some(0.9), Some(7)));
    assert_eq!(r.stop, vec!["\n".to_string()]);
    assert!(r.stream && r.include_usage);
    // OpenAI's default max_tokens for completions.
    assert_eq!(
        parse_body(Kind::Completion, r#"{"model": "m", "prompt": "x"}"#).expect("ok").max_tokens,
        Some(16)
    );
    let chat = parse_body(
        Kind::Chat,
        r#"{"model": "m", "messages": [{"role": "user", "content": "x"}],
                                       "max_completion_tokens": 3, "max_tokens": 9}"#,
    )
    .expect("chat");
    assert_eq!(chat.max_tokens, Some(3));
    assert_eq!(
        parse_body(Kind::Chat, r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#)
            .expect("chat")
            .max_tokens,
        None
    );
}

#[test]
fn bad_and_unsupported_fields_name_the_param() {
    let cases = [
        (Kind::Completion, r#"{"model": "m", "prompt": "x", "n": 2}"#, "n"),
        (Kind::Completion, r#"{"model": "m", "prompt": ["a", "b"]}"#, "prompt"),
        (Kind::Completion, r#"{"model": "m", "prompt": [1, 2]}"#, "prompt"),
        (Kind::Completion, r#"{"model": "m", "prompt": "x", "temperature": 3}"#, "temperature"),
        (Kind::Completion, r#"{"model": "m", "prompt": "x", "top_p": 0}"#, "top_p"),
        (Kind::Completion, r#"{"model": "m", "prompt": "x", "max_tokens": 0}"#, "max_tokens"),
        (Kind::Completion, r#"{"model": "m", "prompt": "x", "logprobs": 2}"#, "logprobs"),
        (Kind::Completion, r#"{"model": "m", "prompt": "x", "stop": [1]}"#, "stop"),
        (Kind::Completion, r#"{"model": "m", "prompt": "x", "stream_options": {}}"#, "stream_options"),
        (Kind::Completion, r#"{"prompt": "x"}"#, "model"),
        (Kind::Chat, r#"{"model": "m", "messages": []}"#, "messages"),
        (Kind::Chat, r#"{"model": "m", "messages": [{"role": "robot", "content": "x"}]}"#, "messages"),
        (
            Kind::Chat,
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}],
                             "tools": [{"type": "function"}]}"#,
            "tools",
        ),
        (
            Kind::Chat,
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}],
                             "frequency_penalty": 0.5}"#,
            "frequency_penalty",
        ),
    ];
    for (kind, body, param) in cases {
        let e = parse_body(kind, body).expect_err(body);
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
        assert_eq!(e.kind, "invalid_request_error");
        assert!(e.message.contains(param), "{body}: {}", e.message);
    }
    let e = parse_body(Kind::Completion, "[1]").expect_err("not an object");
    assert_eq!(e.param, None);
}

#[test]
fn message_content_parts_are_joined() {
    let r = parse_body(
        Kind::Chat,
        r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                {"type": "text", "text": "b"}]}]}"#,
    )
    .expect("parts");
    assert_eq!(r.messages, vec![json!({"role": "user", "content": "ab"})]);
    let e = parse_body(
        Kind::Chat,
        r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
    )
    .expect_err("image");
    assert!(e.message.contains("image_url"), "{}", e.message);
}

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + \
                          message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt \
                          %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

#[test]
fn chat_templates_render_like_transformers() {
    let messages =
        [json!({"role": "system", "content": "Be brief."}), json!({"role": "user", "content": "Hi"})];
    let text = render_chat("m", CHATML, "<s>", "</s>", &messages).expect("render");
    assert_eq!(
        text,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    // Python string methods, bos_token, trim_blocks / lstrip_blocks, raise_exception.
    let template = "{{ bos_token }}\n{% for m in messages %}\n  {% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}\n{{ m['content'].strip().upper() }}{% if m['content'].startswith(' ') %}!{% endif %}\n{% endfor %}";
    let out = render_chat("m", template, "<s>", "</s>", &[json!({"role": "user", "content": " hi "})])
        .expect("render");
    assert_eq!(out, "<s>\nHI!");
    let e = render_chat("m", template, "<s>", "</s>", &messages).expect_err("raise");
    assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some("messages")));
    assert!(e.message.contains("no system role") && e.message.contains("'m'"), "{}", e.message);
    let e = render_chat("llm", "{% for %}", "", "", &messages).expect_err("compile");
    assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(e.message.contains("model 'llm'"), "{}", e.message);
}

/// A model's chat template is compiled once: every request of the facts' lifetime renders the
/// same compiled template, and so do refreshed facts while the template text is unchanged.
#[test]
fn chat_templates_compile_once_per_model() {
    let config = |template: &str| {
        let mut config = pb::ModelConfig::default();
        config
            .parameters
            .insert("chat_template".into(), pb::ModelParameter { string_value: template.into() });
        config
    };
    let facts = ModelFacts::of(&config(CHATML));
    let first = facts.compiled_chat("m").expect("has a template").expect("compiles");
    let again = facts.compiled_chat("m").expect("has a template").expect("compiles");
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    let messages = [json!({"role": "user", "content": "Hi"})];
    assert_eq!(
        first.render("m", "", "", &messages).expect("render"),
        render_chat("m", CHATML, "", "", &messages).expect("render")
    );
    let mut refreshed = ModelFacts::of(&config(CHATML));
    refreshed.keep_compiled(&facts);
    let kept = refreshed.compiled_chat("m").expect("has a template").expect("compiles");
    assert!(std::sync::Arc::ptr_eq(&first, &kept));
    let mut changed = ModelFacts::of(&config("{{ messages[0]['content'] }}"));
    changed.keep_compiled(&facts);
    let other = changed.compiled_chat("m").expect("has a template").expect("compiles");
    assert_eq!(other.render("m", "", "", &messages).expect("render"), "Hi");
    // A template that does not compile fails every request with the same 500.
    let broken = ModelFacts::of(&config("{% for %}"));
    for _ in 0..2 {
        let e = broken.compiled_chat("llm").expect("has a template").expect_err("compile");
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(e.message.contains("the chat template of model 'llm' does not compile"), "{}", e.message);
    }
    assert!(ModelFacts::of(&pb::ModelConfig::default()).compiled_chat("m").is_none());
}

#[test]
fn errors_have_openais_shape() {
    let e = OpenAiError::invalid("n", "bad n");
    assert_eq!(
        e.body(),
        json!({"error": {"message": "bad n", "type": "invalid_request_error", "param": "n", "code": null}})
    );
    let e = OpenAiError::from(tonic::Status::not_found("Request for unknown model: 'x' is not found"));
    assert_eq!(
        (e.status, e.code, e.param.as_deref()),
        (StatusCode::NOT_FOUND, Some("model_not_found"), Some("model"))
    );
    let e = OpenAiError::from(tonic::Status::resource_exhausted("KV budget"));
    assert_eq!((e.status, e.kind), (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"));
    let e = OpenAiError::from(tonic::Status::unauthenticated("no token"));
    assert_eq!((e.status, e.kind), (StatusCode::UNAUTHORIZED, "authentication_error"));
    let e = OpenAiError::from(tonic::Status::permission_denied("not yours"));
    assert_eq!((e.status, e.kind), (StatusCode::FORBIDDEN, "permission_error"));
    let e = OpenAiError::from(tonic::Status::internal("boom"));
    assert_eq!((e.status, e.kind), (StatusCode::INTERNAL_SERVER_ERROR, "server_error"));
}

#[test]
fn sse_frames_and_chunks() {
    assert_eq!(&sse(&json!({"a": 1}))[..], b"data: {\"a\":1}\n\n");
    let mut f = Framer::new(Kind::Chat, "m", true);
    assert!(f.id.starts_with("chatcmpl-"));
    let first = f.chunk("", None);
    assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    assert_eq!(first["usage"], Value::Null);
    assert_eq!(first["object"], "chat.completion.chunk");
    let next = f.chunk("hi", None);
    assert_eq!(next["choices"][0]["delta"], json!({"content": "hi"}));
    let last = f.chunk("", Some("length"));
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    let usage = f.usage_chunk(Usage { prompt_tokens: 3, completion_tokens: 2 });
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 5);
    let c = Framer::new(Kind::Completion, "m", false);
    assert!(c.id.starts_with("cmpl-"));
    let whole = c.whole("t", "stop", Usage::default());
    assert_eq!(whole["object"], "text_completion");
    assert_eq!(whole["choices"][0]["text"], "t");
    assert_ne!(response_id("x"), response_id("x"));
}

#[test]
fn pieces_read_text_ids_and_usage() {
    let mut response = pb::ModelInferResponse::default();
    for (name, raw) in [
        ("text_output", bytes_elements([b"ab".as_slice()])),
        ("output_ids", Bytes::from_static(&[1, 0, 0, 0, 2, 0, 0, 0])),
        ("finish_reason", bytes_elements([b"length".as_slice()])),
    ] {
        response
            .outputs
            .push(pb::model_infer_response::InferOutputTensor { name: name.into(), ..Default::default() });
        response.raw_output_contents.push(raw);
    }
    response.parameters.insert(PROMPT_TOKENS.into(), parameter(ParameterChoice::Int64Param(7)));
    let p = piece(&response).expect("piece");
    assert_eq!(
        (p.text.as_str(), p.tokens, p.finish.as_deref(), p.prompt_tokens, p.last),
        ("ab", 2, Some("length"), Some(7), true)
    );
    assert_eq!(finish_reason("length"), Ok("length"));
    assert_eq!(finish_reason("stop"), Ok("stop"));
    assert_eq!(finish_reason("deadline").map_err(|e| e.status), Err(StatusCode::GATEWAY_TIMEOUT));
}

#[test]
fn engine_requests_carry_inputs_and_parameters() {
    let r = parse_body(
        Kind::Completion,
        r#"{"model": "m", "prompt": "x", "stop": ["a", "bc"], "seed": 3, "temperature": 0}"#,
    )
    .expect("ok");
    let request = infer_request(&r, "x", Some(Duration::from_millis(1500)));
    assert_eq!(request.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["text_input", "stop"]);
    assert_eq!(request.inputs[1].shape, vec![2]);
    assert_eq!(&request.raw_input_contents[1][..], b"\x01\0\0\0a\x02\0\0\0bc");
    let p = |k: &str| request.parameters[k].parameter_choice.clone();
    assert_eq!(p("timeout"), Some(ParameterChoice::Int64Param(1_500_000)));
    assert_eq!(p("stream"), Some(ParameterChoice::BoolParam(true)));
    assert_eq!(p("seed"), Some(ParameterChoice::Uint64Param(3)));
    assert_eq!(p("max_tokens"), Some(ParameterChoice::Int64Param(16)));
    let mut h = HeaderMap::new();
    h.insert("x-stainless-read-timeout", HeaderValue::from_static("2.5"));
    assert_eq!(header_timeout(&h, false).expect("ok"), Some(Duration::from_millis(2500)));
    // A stream's read timeout is per chunk: not a deadline.
    assert_eq!(header_timeout(&h, true).expect("ok"), None);
    h.insert("x-request-timeout", HeaderValue::from_static("soon"));
    assert!(header_timeout(&h, true).is_err());
}

#[test]
fn embeddings_requests_and_entries() {
    let r = parse_embeddings(
        br#"{"model": "e", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 4}"#,
    )
    .expect("ok");
    assert_eq!((r.inputs.len(), r.base64, r.dimensions), (2, true, Some(4)));
    for (body, param) in [
        (r#"{"model": "e", "input": [[1, 2]]}"#, "input"),
        (r#"{"model": "e", "input": [1, 2]}"#, "input"),
        (r#"{"model": "e", "input": []}"#, "input"),
        (r#"{"model": "e", "input": "x", "encoding_format": "int8"}"#, "encoding_format"),
        (r#"{"model": "e", "input": "x", "dimensions": 0}"#, "dimensions"),
    ] {
        let e = parse_embeddings(body.as_bytes()).expect_err(body);
        assert_eq!(e.param.as_deref(), Some(param), "{body}");
    }
    let row: Vec<u8> = [1.0f32, -0.5].iter().flat_map(|f| f.to_le_bytes()).collect();
    assert_eq!(embedding_entry(0, &row, false)["embedding"], json!([1.0, -0.5]));
    assert_eq!(embedding_entry(1, &row, true)["embedding"], json!("AACAPwAAAL8="));
    let mut config = pb::ModelConfig { max_batch_size: 8, ..Default::default() };
    config.input.push(pb::ModelInput {
        name: "text".into(),
        data_type: pb::DataType::TypeString as i32,
        dims: vec![1],
        ..Default::default()
    });
    config.output.push(pb::ModelOutput {
        name: "embedding".into(),
        data_type: pb::DataType::TypeFp32 as i32,
        dims: vec![384],
        ..Default::default()
    });
    config.output.push(pb::ModelOutput {
        name: "token_count".into(),
        data_type: pb::DataType::TypeInt64 as i32,
        dims: vec![1],
        ..Default::default()
    });
    assert_eq!(embedding_facts(&config), Some(EmbeddingFacts { max_batch_size: 8, dimensions: 384 }));
    config.max_batch_size = 0;
    assert_eq!(embedding_facts(&config), None);
}
