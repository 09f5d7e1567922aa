//! `/v1/models`, and the facts the OpenAI routes read from a model's config, cached per model.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::response::Response;
use http::HeaderMap;
use serde_json::json;
use tern_proto::inference as pb;

use super::template::ChatTemplate;
use super::{FACTS_CAPACITY, FACTS_TTL, GENAI_BACKEND, OpenAiError, json_response};
use crate::routes::{Service, Shared, authorize, grpc_request};

/// The READY models the caller's token may see (RepositoryIndex with the caller's principal,
/// which filters by the token's models), one entry per name.
pub(super) async fn models<T: Service>(
    s: &Shared<T>,
    headers: &HeaderMap,
    id: Option<&str>,
) -> Result<Response, OpenAiError> {
    let caller = authorize(s, "ModelStreamInfer", headers)?;
    let request = pb::RepositoryIndexRequest { repository_name: String::new(), ready: true };
    let index = s.service.repository_index(grpc_request(request, headers, caller)).await?.into_inner();
    let mut names: Vec<String> = index
        .models
        .into_iter()
        .filter(|m| m.state.is_empty() || m.state == "READY")
        .map(|m| m.name)
        .collect();
    names.sort();
    names.dedup();
    let entry = |name: &str| json!({"id": name, "object": "model", "created": s.created, "owned_by": "tern"});
    match id {
        None => json_response(&json!({
            "object": "list",
            "data": names.iter().map(|n| entry(n)).collect::<Vec<_>>(),
        })),
        Some(id) if names.iter().any(|n| n == id) => json_response(&entry(id)),
        Some(id) => Err(OpenAiError::model_not_found(id, "no READY model of that name")),
    }
}

// === Model facts (from ModelConfig, cached) ===

/// What the OpenAI routes need from a model's config.
#[derive(Debug, Clone, Default)]
pub struct ModelFacts {
    pub generative: bool,
    pub chat_template: Option<String>,
    pub bos_token: String,
    pub eos_token: String,
    /// `Some` for a model that meets the embedding contract.
    pub embedding: Option<EmbeddingFacts>,
    /// `chat_template` compiled on first use, shared with the next facts of the model while
    /// the template text stays the same.
    compiled_chat: Arc<OnceLock<Result<Arc<ChatTemplate>, OpenAiError>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingFacts {
    pub max_batch_size: usize,
    pub dimensions: usize,
}

impl ModelFacts {
    pub fn of(config: &pb::ModelConfig) -> ModelFacts {
        let param = |key: &str| config.parameters.get(key).map(|p| p.string_value.clone());
        let decoupled = config.model_transaction_policy.as_ref().is_some_and(|p| p.decoupled);
        let generative = config.backend == GENAI_BACKEND
            || (decoupled && config.input.iter().any(|i| i.name == "text_input"));
        ModelFacts {
            generative,
            chat_template: param("chat_template"),
            bos_token: param("bos_token").unwrap_or_default(),
            eos_token: param("eos_token").unwrap_or_default(),
            embedding: embedding_facts(config),
            compiled_chat: Arc::default(),
        }
    }

    /// The compiled chat template (`None`: the model has none), compiled by the first caller
    /// (compiling is CPU work: call it off the async workers).
    pub fn compiled_chat(&self, model: &str) -> Option<Result<Arc<ChatTemplate>, OpenAiError>> {
        let source = self.chat_template.as_deref()?;
        Some(self.compiled_chat.get_or_init(|| ChatTemplate::compile(model, source).map(Arc::new)).clone())
    }

    /// Takes `earlier`'s compiled chat template when the template text is the same, so a
    /// refresh of the facts does not compile it again.
    pub fn keep_compiled(&mut self, earlier: &ModelFacts) {
        if self.chat_template == earlier.chat_template {
            self.compiled_chat = earlier.compiled_chat.clone();
        }
    }
}

/// The embedding contract: max_batch_size > 0, input `text` (TYPE_STRING dims [1]), outputs
/// `embedding` (TYPE_FP32 dims [D]) and `token_count` (TYPE_INT64 dims [1]).
pub(super) fn embedding_facts(config: &pb::ModelConfig) -> Option<EmbeddingFacts> {
    let max_batch_size = usize::try_from(config.max_batch_size).ok().filter(|&b| b > 0)?;
    let text = config.input.iter().find(|i| i.name == "text")?;
    if text.data_type != pb::DataType::TypeString as i32 || text.dims != [1] {
        return None;
    }
    let embedding = config.output.iter().find(|o| o.name == "embedding")?;
    let dimensions = match embedding.dims.as_slice() {
        [d] if *d > 0 && embedding.data_type == pb::DataType::TypeFp32 as i32 => usize::try_from(*d).ok()?,
        _ => return None,
    };
    let count = config.output.iter().find(|o| o.name == "token_count")?;
    (count.data_type == pb::DataType::TypeInt64 as i32)
        .then_some(EmbeddingFacts { max_batch_size, dimensions })
}

/// ModelConfig answers per model, kept [`FACTS_TTL`]. The lock is held only to read or write
/// the map, never across the ModelConfig call.
#[derive(Default)]
pub(crate) struct FactsCache(Mutex<HashMap<String, (Instant, Arc<ModelFacts>)>>);

impl FactsCache {
    fn get(&self, model: &str) -> Option<Arc<ModelFacts>> {
        let map = self.0.lock().ok()?;
        map.get(model).filter(|(at, _)| at.elapsed() < FACTS_TTL).map(|(_, f)| f.clone())
    }

    /// The last facts of `model`, however old.
    fn last(&self, model: &str) -> Option<Arc<ModelFacts>> {
        self.0.lock().ok()?.get(model).map(|(_, f)| f.clone())
    }

    fn put(&self, model: &str, facts: Arc<ModelFacts>) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= FACTS_CAPACITY {
                map.retain(|_, (at, _)| at.elapsed() < FACTS_TTL);
                if map.len() >= FACTS_CAPACITY {
                    map.clear();
                }
            }
            map.insert(model.to_owned(), (Instant::now(), facts));
        }
    }
}

/// The facts of `model` (latest version), the caller authorized for the model first so that
/// the cache never answers for a model the token may not use.
pub(super) async fn facts<T: Service>(
    s: &Shared<T>,
    headers: &HeaderMap,
    caller: &Option<tern_edge::Principal>,
    model: &str,
) -> Result<Arc<ModelFacts>, OpenAiError> {
    tern_edge::authorize_model(caller.as_ref(), model)?;
    if let Some(f) = s.openai.get(model) {
        return Ok(f);
    }
    let request = pb::ModelConfigRequest { name: model.to_owned(), version: String::new() };
    let config = s
        .service
        .model_config(grpc_request(request, headers, caller.clone()))
        .await
        .map_err(|status| match status.code() {
            tonic::Code::NotFound | tonic::Code::Unavailable => {
                OpenAiError::model_not_found(model, status.message())
            }
            _ => OpenAiError::from(status),
        })?
        .into_inner()
        .config
        .unwrap_or_default();
    let mut f = ModelFacts::of(&config);
    if let Some(earlier) = s.openai.last(model) {
        f.keep_compiled(&earlier);
    }
    let f = Arc::new(f);
    s.openai.put(model, f.clone());
    Ok(f)
}
