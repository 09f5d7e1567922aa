//! Hugging Face chat templates rendered with minijinja.

use serde_json::Value;

use super::OpenAiError;

/// A chat template compiled once (per model and template text, kept with the model's facts):
/// a request only renders it. Jinja as transformers' `apply_chat_template` runs it:
/// `trim_blocks` and `lstrip_blocks`, Python's string methods, `raise_exception`.
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `template`; one that does not compile is the model's fault (500).
    pub fn compile(model: &str, template: &str) -> Result<ChatTemplate, OpenAiError> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(NAME, template.to_owned()).map_err(|e| {
            OpenAiError::internal(format!("the chat template of model '{model}' does not compile: {e:#}"))
        })?;
        Ok(ChatTemplate { env })
    }

    /// The prompt for `messages`, with `bos_token`, `eos_token` and
    /// `add_generation_prompt=true`. A template that fails on these messages (its
    /// `raise_exception`, most often) is the request's fault (400).
    pub fn render(
        &self,
        model: &str,
        bos_token: &str,
        eos_token: &str,
        messages: &[Value],
    ) -> Result<String, OpenAiError> {
        let compiled = self
            .env
            .get_template(NAME)
            .map_err(|e| OpenAiError::internal(format!("model '{model}': {e}")))?;
        compiled
            .render(minijinja::context! {
                messages => messages,
                bos_token => bos_token,
                eos_token => eos_token,
                add_generation_prompt => true,
            })
            .map_err(|e| {
                let detail = e.detail().map(str::to_owned).unwrap_or_else(|| e.to_string());
                OpenAiError::invalid(
                    "messages",
                    format!("the chat template of model '{model}' cannot render these messages: {detail}"),
                )
            })
    }
}

/// Compiles and renders `template` (a Hugging Face chat template) for `messages` in one step,
/// as [`ChatTemplate`] does.
pub fn render_chat(
    model: &str,
    template: &str,
    bos_token: &str,
    eos_token: &str,
    messages: &[Value],
) -> Result<String, OpenAiError> {
    ChatTemplate::compile(model, template)?.render(model, bos_token, eos_token, messages)
}
