//! Completion and chat request bodies: OpenAI's fields checked and mapped to the engine's.

use serde_json::{Map, Value, json};

use super::{MAX_MESSAGES, MAX_STOP, OpenAiError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Completion,
    Chat,
}

/// A parsed `/v1/completions` or `/v1/chat/completions` body.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenRequest {
    pub model: String,
    /// Completions: the prompt.
    pub prompt: String,
    /// Chat: the messages, each `{role, content}` (content as text), `name` kept.
    pub messages: Vec<Value>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub repetition_penalty: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
}

/// Whether a field holds its default value.
type IsDefault = dyn Fn(&Value) -> bool;

fn is_null_or(v: Option<&Value>, default: impl Fn(&Value) -> bool) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(v) => default(v),
    }
}

/// A JSON body as an object.
pub(super) fn object(body: &[u8]) -> Result<Map<String, Value>, OpenAiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(OpenAiError::bad_request("the request body must be a JSON object")),
        Err(e) => {
            Err(OpenAiError::bad_request(format!("We could not parse the JSON body of your request: {e}")))
        }
    }
}

pub(super) fn model_field(body: &Map<String, Value>) -> Result<String, OpenAiError> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        None | Some(Value::Null) => Err(OpenAiError::invalid("model", "you must provide a model parameter")),
        Some(_) => Err(OpenAiError::invalid("model", "'model' must be a non-empty string")),
    }
}

/// Parses and checks a generation body: OpenAI's fields mapped to the engine's, harmless ones
/// ignored, unsupported ones refused unless they hold their default, naming the parameter.
pub fn parse_generate(kind: Kind, body: &[u8]) -> Result<GenRequest, OpenAiError> {
    let b = object(body)?;
    let mut r = GenRequest { model: model_field(&b)?, ..Default::default() };
    // Parameters Tern does not implement: accepted only at their defaults.
    let unsupported: &[(&str, &IsDefault)] = &[
        ("n", &|v: &Value| v.as_u64() == Some(1)),
        ("best_of", &|v: &Value| v.as_u64() == Some(1)),
        ("echo", &|v: &Value| v == &Value::Bool(false)),
        ("logprobs", &|v: &Value| v == &Value::Bool(false)),
        ("top_logprobs", &|v: &Value| v.as_u64() == Some(0)),
        ("presence_penalty", &|v: &Value| v.as_f64() == Some(0.0)),
        ("frequency_penalty", &|v: &Value| v.as_f64() == Some(0.0)),
        ("logit_bias", &|v: &Value| v.as_object().is_some_and(Map::is_empty)),
        ("suffix", &|v: &Value| v.as_str() == Some("")),
        ("tools", &|v: &Value| v.as_array().is_some_and(Vec::is_empty)),
        ("functions", &|v: &Value| v.as_array().is_some_and(Vec::is_empty)),
        ("tool_choice", &|v: &Value| v.as_str() == Some("none") || v.as_str() == Some("auto")),
        ("function_call", &|v: &Value| v.as_str() == Some("none") || v.as_str() == Some("auto")),
        ("response_format", &|v: &Value| v.get("type").and_then(Value::as_str) == Some("text")),
        ("modalities", &|v: &Value| v == &json!(["text"])),
        ("audio", &|_: &Value| false),
        ("prediction", &|_: &Value| false),
        ("reasoning_effort", &|_: &Value| false),
        ("web_search_options", &|_: &Value| false),
    ];
    for (param, default) in unsupported {
        if !is_null_or(b.get(*param), default) {
            let got = b.get(*param).map(Value::to_string).unwrap_or_default();
            let want = if *param == "n" || *param == "best_of" { " (only 1 is supported)" } else { "" };
            return Err(OpenAiError::invalid(
                param,
                format!("'{param}' is not supported by Tern with the value {got}{want}"),
            ));
        }
    }
    match kind {
        Kind::Completion => {
            r.prompt = match b.get("prompt") {
                Some(Value::String(p)) => p.clone(),
                Some(Value::Array(items)) => match items.as_slice() {
                    [Value::String(p)] => p.clone(),
                    [] => return Err(OpenAiError::invalid("prompt", "'prompt' is an empty list")),
                    items if items.iter().all(Value::is_string) => {
                        return Err(OpenAiError::invalid(
                            "prompt",
                            format!(
                                "'prompt' holds {} prompts: Tern takes one prompt per request",
                                items.len()
                            ),
                        ));
                    }
                    _ => {
                        return Err(OpenAiError::invalid(
                            "prompt",
                            "'prompt' as token ids is not supported: give the prompt as a string",
                        ));
                    }
                },
                None | Some(Value::Null) => {
                    return Err(OpenAiError::invalid("prompt", "you must provide a prompt parameter"));
                }
                Some(_) => return Err(OpenAiError::invalid("prompt", "'prompt' must be a string")),
            };
        }
        Kind::Chat => r.messages = parse_messages(b.get("messages"))?,
    }
    let uint = |name: &str| -> Result<Option<u64>, OpenAiError> {
        match b.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                OpenAiError::invalid(name, format!("'{name}' must be a non-negative integer, got {v}"))
            }),
        }
    };
    let number = |name: &str, range: std::ops::RangeInclusive<f64>| -> Result<Option<f64>, OpenAiError> {
        match b.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if range.contains(&x) => Ok(Some(x)),
                _ => Err(OpenAiError::invalid(
                    name,
                    format!("'{name}' must be a number from {} to {}, got {v}", range.start(), range.end()),
                )),
            },
        }
    };
    // max_completion_tokens replaces max_tokens (OpenAI deprecated the latter for chat).
    for name in ["max_tokens", "max_completion_tokens"] {
        if let Some(n) = uint(name)? {
            if n == 0 || n > u64::from(u32::MAX) {
                return Err(OpenAiError::invalid(name, format!("'{name}' must be at least 1, got {n}")));
            }
            r.max_tokens = Some(n as u32);
        }
    }
    // OpenAI's default for completions is 16 tokens; for chat, up to the context.
    if kind == Kind::Completion && r.max_tokens.is_none() {
        r.max_tokens = Some(16);
    }
    r.temperature = number("temperature", 0.0..=2.0)?;
    r.top_p = number("top_p", 0.0..=1.0)?;
    if r.top_p == Some(0.0) {
        return Err(OpenAiError::invalid("top_p", "'top_p' must be greater than 0"));
    }
    r.repetition_penalty = number("repetition_penalty", f64::MIN_POSITIVE..=100.0)?;
    r.top_k = match b.get("top_k") {
        // vLLM's -1 for "off" is 0 here.
        Some(v) if v.as_i64() == Some(-1) => Some(0),
        _ => uint("top_k")?.map(|k| u32::try_from(k).unwrap_or(u32::MAX)),
    };
    r.seed = match b.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(s), _) => Some(s),
            // OpenAI takes any int64: a negative seed is a seed too.
            (None, Some(s)) => Some(s as u64),
            _ => return Err(OpenAiError::invalid("seed", format!("'seed' must be an integer, got {v}"))),
        },
    };
    r.stop = match b.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| {
                s.as_str().map(str::to_owned).ok_or_else(|| {
                    OpenAiError::invalid("stop", "'stop' must be a string or a list of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(OpenAiError::invalid("stop", "'stop' must be a string or a list of strings")),
    };
    // An empty stop string stops nothing.
    r.stop.retain(|s| !s.is_empty());
    if r.stop.len() > MAX_STOP {
        return Err(OpenAiError::invalid(
            "stop",
            format!("{} stop strings are more than the limit of {MAX_STOP}", r.stop.len()),
        ));
    }
    let boolean = |name: &str| -> Result<bool, OpenAiError> {
        match b.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(v)) => Ok(*v),
            Some(v) => Err(OpenAiError::invalid(name, format!("'{name}' must be true or false, got {v}"))),
        }
    };
    r.ignore_eos = boolean("ignore_eos")?;
    r.stream = boolean("stream")?;
    r.include_usage = match b.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            if !r.stream {
                return Err(OpenAiError::invalid(
                    "stream_options",
                    "'stream_options' is only allowed when 'stream' is true",
                ));
            }
            match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(v)) => *v,
                Some(_) => {
                    return Err(OpenAiError::invalid(
                        "stream_options",
                        "'stream_options.include_usage' must be true or false",
                    ));
                }
            }
        }
        Some(_) => return Err(OpenAiError::invalid("stream_options", "'stream_options' must be an object")),
    };
    Ok(r)
}

/// Chat messages with their content as text: a string, or a list of `{"type": "text"}` parts
/// (joined); other part types are refused.
fn parse_messages(messages: Option<&Value>) -> Result<Vec<Value>, OpenAiError> {
    let bad = |m: String| OpenAiError::invalid("messages", m);
    let items = match messages {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => return Err(bad("'messages' must hold at least one message".into())),
        None | Some(Value::Null) => return Err(bad("you must provide a messages parameter".into())),
        Some(_) => return Err(bad("'messages' must be a list of messages".into())),
    };
    if items.len() > MAX_MESSAGES {
        return Err(bad(format!("{} messages are more than the limit of {MAX_MESSAGES}", items.len())));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let Some(m) = m.as_object() else { return Err(bad(format!("messages[{i}] must be an object"))) };
        let role = match m.get("role") {
            Some(Value::String(r))
                if matches!(r.as_str(), "system" | "developer" | "user" | "assistant" | "tool") =>
            {
                r.clone()
            }
            Some(r) => {
                return Err(bad(format!(
                    "messages[{i}].role {r} is not one of 'system', 'developer', 'user', 'assistant', 'tool'"
                )));
            }
            None => return Err(bad(format!("messages[{i}] has no 'role'"))),
        };
        let content = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(bad(format!(
                                "messages[{i}].content[{j}]: content parts of type {} are not supported \
                                 (only 'text')",
                                kind.unwrap_or("<none>")
                            )));
                        }
                    }
                }
                text
            }
            Some(_) => return Err(bad(format!("messages[{i}].content must be a string or a list of parts"))),
        };
        let mut message = Map::new();
        message.insert("role".into(), Value::String(role));
        message.insert("content".into(), Value::String(content));
        if let Some(Value::String(name)) = m.get("name") {
            message.insert("name".into(), Value::String(name.clone()));
        }
        out.push(Value::Object(message));
    }
    Ok(out)
}
