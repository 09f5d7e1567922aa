//! Sentence-embedding models served as plain Triton models: `text` (TYPE_STRING, dims [1]) in,
//! `embedding` (FP32, dims [D]) and `token_count` (INT64, dims [1]) out, batched by the
//! dynamic batcher like any model. The tokenizer, pooling and normalization run on the
//! instance thread, around the ONNX model's `input_ids` / `attention_mask` /
//! `token_type_ids` -> hidden-state run.
//!
//! [`EmbeddingFactory`] wraps the runtime's [`BackendFactory`] (ONNX Runtime's on a node): a
//! model whose config has `parameters { key: "embedding_pooling" }` (or a sentence-transformers
//! `1_Pooling/config.json` beside it) reports the served signature instead of the ONNX one,
//! so the repository's auto-complete and validation see `text -> embedding, token_count`, and
//! each instance is the runtime's backend wrapped in an [`EmbeddingBackend`]. Other models
//! pass through untouched.
//!
//! Layout: [`settings`] (config parameters, sentence-transformers files, the tokenizer, the
//! ONNX model's inputs), `pool` (padding, pooling, normalization: pure functions).
//!
//! Not here: ONNX Runtime (the wrapped factory's), HTTP routes (the OpenAI front end turns
//! `/v1/embeddings` into requests to this model), queues.

mod pool;
pub mod settings;

use std::sync::Arc;

use bytes::Bytes;
use tern_backend::{Backend, BackendError, BackendFactory, LoadTarget, ModelBytes, Placement, VersionLoader};
use tern_core::{DataType, ModelSignature, Tensor, codec};
use tern_proto::inference::ModelConfig;

pub use pool::{Batch, pad_batch, pool};
pub use settings::{EmbeddingSettings, ModelInputs, Pooling};

/// Wraps a runtime's factory so embedding models get tokenization and pooling around it.
#[derive(Debug, Clone)]
pub struct EmbeddingFactory<F> {
    pub inner: F,
}

impl<F> EmbeddingFactory<F> {
    pub fn new(inner: F) -> Self {
        EmbeddingFactory { inner }
    }
}

impl<F: BackendFactory> BackendFactory for EmbeddingFactory<F> {
    fn begin(
        &self,
        target: &LoadTarget,
        config: &ModelConfig,
    ) -> Result<Box<dyn VersionLoader>, BackendError> {
        let inner = self.inner.begin(target, config)?;
        Ok(Box::new(EmbeddingLoader {
            inner,
            model: target.model.clone(),
            config: config.clone(),
            embedder: None,
        }))
    }

    fn release_freed_memory(&self) {
        self.inner.release_freed_memory();
    }
}

struct EmbeddingLoader {
    inner: Box<dyn VersionLoader>,
    model: String,
    /// The config as given (before auto-complete): where the `embedding_*` parameters are.
    config: ModelConfig,
    /// Set when the version is an embedding model; shared by its instances.
    embedder: Option<Arc<Embedder>>,
}

impl VersionLoader for EmbeddingLoader {
    fn signature(&mut self, model: ModelBytes<'_>) -> Result<ModelSignature, BackendError> {
        let onnx = self.inner.signature(model)?;
        let path = match model {
            ModelBytes::File(path) => path,
            ModelBytes::Memory(_) => {
                if self.config.parameters.contains_key(settings::POOLING_KEY) {
                    return Err(BackendError::Load(format!(
                        "model '{}': an embedding model cannot be encrypted (its tokenizer is read \
                         from the model directory)",
                        self.model
                    )));
                }
                return Ok(onnx);
            }
        };
        let Some(settings) =
            settings::resolve(&self.model, &self.config, path).map_err(BackendError::Load)?
        else {
            return Ok(onnx);
        };
        let inputs = settings::model_inputs(&self.model, &onnx, &self.config).map_err(BackendError::Load)?;
        let tokenizer = settings::load_tokenizer(&self.model, path, settings.max_tokens)?;
        tracing::info!(model = %self.model, ?settings, hidden_size = inputs.hidden_size, "embedding model");
        let served = settings::served_signature(&inputs);
        self.embedder = Some(Arc::new(Embedder { settings, inputs, tokenizer }));
        Ok(served)
    }

    fn plan(&mut self, config: &ModelConfig) -> Result<Placement, BackendError> {
        if self.embedder.is_some() && config.max_batch_size <= 0 {
            return Err(BackendError::Load(format!(
                "model '{}': an embedding model needs max_batch_size > 0",
                self.model
            )));
        }
        self.inner.plan(config)
    }

    fn instance(&mut self, index: usize, model: ModelBytes<'_>) -> Result<Box<dyn Backend>, BackendError> {
        let inner = self.inner.instance(index, model)?;
        Ok(self.wrap(inner))
    }

    fn instances(
        &mut self,
        count: usize,
        model: ModelBytes<'_>,
    ) -> Result<Vec<Box<dyn Backend>>, BackendError> {
        let inner = self.inner.instances(count, model)?;
        Ok(inner.into_iter().map(|b| self.wrap(b)).collect())
    }
}

impl EmbeddingLoader {
    /// An embedding model's instance tokenizes and pools around the runtime's; others run as they are.
    fn wrap(&self, inner: Box<dyn Backend>) -> Box<dyn Backend> {
        match &self.embedder {
            Some(embedder) => Box::new(EmbeddingBackend { inner, embedder: embedder.clone() }),
            None => inner,
        }
    }
}

/// What every instance of one embedding model version shares.
pub struct Embedder {
    pub settings: EmbeddingSettings,
    pub inputs: ModelInputs,
    pub tokenizer: tokenizers::Tokenizer,
}

impl Embedder {
    /// Token ids of each text, truncated to `max_tokens` (special tokens included).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<i64>>, BackendError> {
        texts
            .iter()
            .map(|text| {
                let encoding = self
                    .tokenizer
                    .encode_fast(*text, true)
                    .map_err(|e| BackendError::Execution(format!("tokenizer: {e}")))?;
                Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
            })
            .collect()
    }
}

/// One instance: the runtime's backend with tokenization before and pooling after.
pub struct EmbeddingBackend {
    inner: Box<dyn Backend>,
    embedder: Arc<Embedder>,
}

impl EmbeddingBackend {
    pub fn new(inner: Box<dyn Backend>, embedder: Arc<Embedder>) -> Self {
        EmbeddingBackend { inner, embedder }
    }
}

impl Backend for EmbeddingBackend {
    fn infer(&mut self, inputs: Vec<Tensor>, outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
        let text = inputs.iter().find(|t| t.name == settings::TEXT_INPUT).ok_or_else(|| {
            BackendError::InvalidInput(format!("missing required input '{}'", settings::TEXT_INPUT))
        })?;
        if text.datatype != DataType::Bytes {
            return Err(BackendError::InvalidInput(format!(
                "inference input '{}' data-type is '{}', but the model expects 'BYTES'",
                settings::TEXT_INPUT,
                text.datatype
            )));
        }
        let mut texts = Vec::new();
        for (index, element) in codec::bytes_elements(&text.data).enumerate() {
            let element = element
                .map_err(|e| BackendError::InvalidInput(format!("input '{}': {e}", settings::TEXT_INPUT)))?;
            if element.len() > settings::MAX_TEXT_BYTES {
                return Err(BackendError::InvalidInput(format!(
                    "input '{}' element {index} is {} bytes; at most {} are allowed",
                    settings::TEXT_INPUT,
                    element.len(),
                    settings::MAX_TEXT_BYTES
                )));
            }
            // Second line of defence: the served signature marks `text` UTF-8, so request
            // validation already refused such a request alone, before it could join a batch.
            // Reached only by callers that bypass validation (warmup data, direct use).
            let s = std::str::from_utf8(element).map_err(|e| {
                BackendError::InvalidInput(format!(
                    "input '{}' element {index} is not valid UTF-8: {e}",
                    settings::TEXT_INPUT
                ))
            })?;
            texts.push(s);
        }
        if texts.is_empty() {
            return Err(BackendError::InvalidInput(format!(
                "input '{}' holds no text (an empty batch)",
                settings::TEXT_INPUT
            )));
        }
        let embedder = &*self.embedder;
        let ids = embedder.tokenize(&texts)?;
        let batch = pad_batch(&ids);
        let rows = ids.len() as i64;
        let tokens = batch.width as i64;
        let int64 = |name: &str, values: Vec<i64>| Tensor {
            name: name.into(),
            datatype: DataType::Int64,
            shape: vec![rows, tokens],
            data: Bytes::from(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()),
        };
        let mut model_inputs = Vec::with_capacity(3);
        if embedder.inputs.token_type_ids {
            model_inputs.push(int64(settings::TOKEN_TYPE_IDS, vec![0; batch.ids.len()]));
        }
        model_inputs.push(int64(settings::INPUT_IDS, batch.ids));
        model_inputs.push(int64(settings::ATTENTION_MASK, batch.mask.clone()));
        let hidden_name = embedder.inputs.hidden_output.clone();
        let mut produced = self.inner.infer(model_inputs, std::slice::from_ref(&hidden_name))?;
        let hidden = produced
            .pop()
            .ok_or_else(|| BackendError::Execution(format!("the model returned no '{hidden_name}'")))?;
        let d = embedder.inputs.hidden_size;
        if hidden.datatype != DataType::Fp32 || hidden.shape != [rows, tokens, d as i64] {
            return Err(BackendError::Execution(format!(
                "output '{hidden_name}' is {} {:?}; expected FP32 [{rows}, {tokens}, {d}]",
                hidden.datatype, hidden.shape
            )));
        }
        let values: Vec<f32> =
            hidden.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let vectors = pool(
            &values,
            &batch.mask,
            batch.width,
            d,
            embedder.settings.pooling,
            embedder.settings.normalize,
        );

        let embedding = Tensor {
            name: settings::EMBEDDING_OUTPUT.into(),
            datatype: DataType::Fp32,
            shape: vec![rows, d as i64],
            data: Bytes::from(vectors.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()),
        };
        let token_count = Tensor {
            name: settings::TOKEN_COUNT_OUTPUT.into(),
            datatype: DataType::Int64,
            shape: vec![rows, 1],
            data: Bytes::from(ids.iter().flat_map(|t| (t.len() as i64).to_le_bytes()).collect::<Vec<u8>>()),
        };
        let all = [embedding, token_count];
        if outputs.is_empty() {
            return Ok(all.to_vec());
        }
        outputs
            .iter()
            .map(|name| {
                all.iter().find(|t| &t.name == name).cloned().ok_or_else(|| {
                    BackendError::InvalidInput(format!(
                        "unexpected inference output '{name}', the model's outputs are ['{}', '{}']",
                        settings::EMBEDDING_OUTPUT,
                        settings::TOKEN_COUNT_OUTPUT
                    ))
                })
            })
            .collect()
    }
}
