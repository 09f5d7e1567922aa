//! The JSON objects of a completion (whole or as chunks) and Server-Sent Events.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{Kind, response_id, unix_now};

/// Counts of a finished generation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// Builds the JSON objects of one completion, streamed (chunks) or whole.
pub struct Framer {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
    role_sent: bool,
}

impl Framer {
    pub fn new(kind: Kind, model: &str, include_usage: bool) -> Framer {
        let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        Framer {
            kind,
            id: response_id(prefix),
            created: unix_now(),
            model: model.to_owned(),
            include_usage,
            role_sent: false,
        }
    }

    /// A streamed chunk adding `text`, with `finish` on the last.
    pub fn chunk(&mut self, text: &str, finish: Option<&str>) -> Value {
        let mut chunk = match self.kind {
            Kind::Completion => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
            }),
            Kind::Chat => {
                let mut delta = Map::new();
                if !std::mem::replace(&mut self.role_sent, true) {
                    delta.insert("role".into(), json!("assistant"));
                }
                if !text.is_empty() || finish.is_none() {
                    delta.insert("content".into(), json!(text));
                }
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "system_fingerprint": null,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                })
            }
        };
        if self.include_usage {
            // OpenAI: with include_usage every chunk has `usage: null` but the last.
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// The extra last chunk of `stream_options.include_usage`: empty choices, the usage.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": [], "usage": usage.json(),
        })
    }

    /// The whole (non-streamed) answer.
    pub fn whole(&self, text: &str, finish: &str, usage: Usage) -> Value {
        match self.kind {
            Kind::Completion => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
                "usage": usage.json(),
            }),
            Kind::Chat => json!({
                "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "system_fingerprint": null,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": null},
                    "logprobs": null,
                    "finish_reason": finish,
                }],
                "usage": usage.json(),
            }),
        }
    }
}

/// One Server-Sent Event: `data: <json>\n\n`.
pub fn sse(value: &Value) -> Bytes {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&serde_json::to_vec(value).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The event that ends every OpenAI stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";
